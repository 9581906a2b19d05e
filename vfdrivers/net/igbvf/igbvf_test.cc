// IgbvfPort against the register-level model: reset handshake, mailbox, RX, TX, echo, bad
// buffers, and a hostile device (bad lengths, DD in slots never given, no EOP, TX head beyond
// the ring or ahead of the tail, garbage / wrong-id / silent mailbox, RSTI stuck). Run under
// ASan by hand (--config=asan or -fsanitize=address) to show no out-of-bounds access.
#include "vfdrivers/net/igbvf/igbvf.h"

#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "vfdrivers/net/igbvf/igbvf_device_model.h"

namespace vfdrivers::net::igbvf {
namespace {

using testing::Hostile;
using testing::IgbvfDeviceModel;
using testing::ModelOptions;

Options SmallOptions() {
  Options o;
  o.rx_ring_size = 64;
  o.tx_ring_size = 64;
  o.buffer_count = 256;
  o.huge_pages = memory::HugePages::kNever;
  o.mailbox_timeout = absl::Milliseconds(20);
  o.reset_timeout = absl::Milliseconds(5);
  return o;
}

std::vector<uint8_t> Frame(uint32_t seq, uint32_t len) {
  std::vector<uint8_t> f(len);
  for (uint32_t i = 0; i < len; ++i) f[i] = static_cast<uint8_t>(seq * 7 + i);
  std::memcpy(f.data(), &seq, 4);
  return f;
}

// Every buffer is somewhere: free, posted to RX, in flight on TX, or in the caller's hands.
void ExpectConserved(const IgbvfPort& p, uint32_t held) {
  EXPECT_EQ(p.free_buffers() + p.rx_posted() + p.tx_in_flight() + held, p.info().buffer_count);
}

TEST(Igbvf, ResetHandshakeGetsMacAndSetsUpQueues) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok()) << port.status();
  IgbvfPort& p = **port;
  EXPECT_EQ(p.mac(), ModelOptions().mac);
  EXPECT_EQ(m.resets(), 1u);
  EXPECT_TRUE(m.cts());
  EXPECT_TRUE(p.LinkUp());
  EXPECT_EQ(m.Reg(kRdlen), 64u * 16);
  EXPECT_EQ(m.Reg(kTdlen), 64u * 16);
  EXPECT_TRUE(m.Reg(kRxdctl) & kQueueEnable);
  EXPECT_TRUE(m.Reg(kTxdctl) & kQueueEnable);
  EXPECT_EQ(m.Reg(kSrrctl) & 0x7F, 2u);  // 2 KiB buffers
  EXPECT_EQ(p.rx_posted(), 63u);
  EXPECT_EQ(m.Reg(kRdt), 63u);
  ExpectConserved(p, 0);
  EXPECT_EQ(m.live_mappings(), 1u);
  port->reset();
  EXPECT_EQ(m.live_mappings(), 0u);  // unmapped at the end
  EXPECT_EQ(m.resets(), 2u);         // the VF was reset before the unmap
  EXPECT_EQ(m.dma_errors(), 0u);
}

TEST(Igbvf, RejectsBadOptions) {
  IgbvfDeviceModel m;
  Options o = SmallOptions();
  o.rx_ring_size = 100;
  EXPECT_EQ(IgbvfPort::Create(m.MakeBar(), o).status().code(), absl::StatusCode::kInvalidArgument);
  o = SmallOptions();
  o.buffer_count = 64;
  EXPECT_EQ(IgbvfPort::Create(m.MakeBar(), o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Igbvf, ResetNackWithoutPfMacIsAClearError) {
  ModelOptions mo;
  mo.mac_set_by_pf = false;
  IgbvfDeviceModel m(mo);
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(port.status().message(), "no MAC")) << port.status();
  EXPECT_EQ(m.live_mappings(), 0u);
}

TEST(Igbvf, MailboxRequests) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok()) << port.status();
  IgbvfPort& p = **port;
  // Another MAC without trust: NACK, reported as such, MAC unchanged.
  MacAddress other{{0x02, 1, 2, 3, 4, 5}};
  absl::Status st = p.SetMac(other);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(st.message(), "NACK")) << st;
  EXPECT_EQ(p.mac(), ModelOptions().mac);
  EXPECT_TRUE(p.SetMac(ModelOptions().mac).ok());
  MacAddress mc1{{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}}, mc2{{0x33, 0x33, 0, 0, 0, 1}};
  ASSERT_TRUE(p.SetMulticast({mc1, mc2}).ok());
  ASSERT_EQ(m.multicast_hashes().size(), 2u);
  EXPECT_EQ(m.multicast_hashes()[0], (0x00 >> 4 | 0xfb << 4) & 0xFFF);
  ASSERT_TRUE(p.SetVlan(100, true).ok());
  ASSERT_EQ(m.vlans().size(), 1u);
  EXPECT_EQ(m.vlans()[0], 100);
  ASSERT_TRUE(p.SetVlan(100, false).ok());
  EXPECT_TRUE(m.vlans().empty());
  ASSERT_TRUE(p.SetMaxFrame(1522).ok());
  EXPECT_EQ(m.max_frame(), 1522u);
  EXPECT_EQ(p.SetMaxFrame(9000).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.SetVlan(5000, true).code(), absl::StatusCode::kInvalidArgument);

  ModelOptions trusted;
  trusted.trust = true;
  IgbvfDeviceModel m2(trusted);
  auto port2 = IgbvfPort::Create(m2.MakeBar(), SmallOptions());
  ASSERT_TRUE(port2.ok());
  ASSERT_TRUE((*port2)->SetMac(other).ok());
  EXPECT_EQ((*port2)->mac(), other);
  EXPECT_EQ(m2.vf_mac(), other);
}

TEST(Igbvf, ReceivesAcrossManyRingWraps) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok()) << port.status();
  IgbvfPort& p = **port;
  uint32_t next_rx = 0, seq = 0;
  PacketBuffer bufs[IgbvfPort::kBurst];
  for (int round = 0; round < 200; ++round) {
    const uint32_t n = 1 + round % 40;
    uint32_t delivered = 0;
    for (uint32_t i = 0; i < n; ++i) {
      auto f = Frame(seq, 60 + (seq * 13) % 1455);
      if (m.Deliver(f.data(), f.size())) {
        ++seq;
        ++delivered;
      }
    }
    uint32_t got = 0;
    for (;;) {
      size_t k = p.RxBurst(absl::MakeSpan(bufs));
      if (k == 0) break;
      for (size_t i = 0; i < k; ++i) {
        auto want = Frame(next_rx, 60 + (next_rx * 13) % 1455);
        ASSERT_EQ(bufs[i].length, want.size());
        ASSERT_EQ(std::memcmp(bufs[i].data, want.data(), want.size()), 0) << next_rx;
        ASSERT_EQ(bufs[i].capacity, IgbvfPort::kBufferSize);
        ++next_rx;
      }
      ASSERT_EQ(p.FreeBurst(absl::MakeConstSpan(bufs, k)), k);
      got += k;
    }
    ASSERT_EQ(got, delivered);
  }
  EXPECT_EQ(next_rx, seq);
  EXPECT_GT(seq, 3000u);
  EXPECT_EQ(p.stats().rx_packets, seq);
  EXPECT_EQ(p.stats().bad_descriptors, 0u);
  EXPECT_EQ(m.dma_errors(), 0u);
  ExpectConserved(p, 0);
}

TEST(Igbvf, RingFullDropsAtTheDeviceAndRecovers) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  auto f = Frame(1, 100);
  int ok = 0;
  for (int i = 0; i < 100; ++i) ok += m.Deliver(f.data(), f.size());
  EXPECT_EQ(ok, 63);
  EXPECT_EQ(m.rx_dropped(), 37u);
  PacketBuffer bufs[64];
  size_t k = p.RxBurst(absl::MakeSpan(bufs));
  EXPECT_EQ(k, 63u);
  p.FreeBurst(absl::MakeConstSpan(bufs, k));
  p.Service();
  EXPECT_EQ(p.rx_posted(), 63u);
  EXPECT_TRUE(m.Deliver(f.data(), f.size()));
}

TEST(Igbvf, TransmitsAndReclaims) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  PacketBuffer bufs[IgbvfPort::kBurst];
  uint32_t seq = 0, checked = 0;
  for (int round = 0; round < 100; ++round) {
    size_t n = p.AllocBurst(absl::MakeSpan(bufs, 1 + round % 32));
    ASSERT_GT(n, 0u);
    for (size_t i = 0; i < n; ++i) {
      auto f = Frame(seq + i, 60 + ((seq + i) * 31) % 1455);
      std::memcpy(bufs[i].data, f.data(), f.size());
      bufs[i].length = f.size();
    }
    size_t sent = p.TxBurst(absl::MakeConstSpan(bufs, n));
    ASSERT_EQ(sent, n);
    seq += n;
    m.Step();
    while (!m.sent().empty()) {
      auto want = Frame(checked, 60 + (checked * 31) % 1455);
      ASSERT_EQ(m.sent().front(), want) << checked;
      m.sent().pop_front();
      ++checked;
    }
  }
  EXPECT_EQ(checked, seq);
  p.Service();
  EXPECT_EQ(p.tx_in_flight(), 0u);
  EXPECT_EQ(p.stats().tx_completed, seq);
  EXPECT_EQ(p.stats().tx_packets, seq);
  ExpectConserved(p, 0);
  EXPECT_EQ(m.dma_errors(), 0u);
}

TEST(Igbvf, TxRingFullLeavesTheRestToTheCaller) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  std::vector<PacketBuffer> bufs(80);
  ASSERT_EQ(p.AllocBurst(absl::MakeSpan(bufs)), 80u);
  for (auto& b : bufs) b.length = 64;
  EXPECT_EQ(p.TxBurst(absl::MakeConstSpan(bufs)), 63u);
  EXPECT_EQ(p.stats().tx_ring_full, 17u);
  m.Step();
  EXPECT_EQ(p.TxBurst(absl::MakeConstSpan(bufs).subspan(63)), 17u);
  m.Step();
  p.Service();
  EXPECT_EQ(m.sent().size(), 80u);
  ExpectConserved(p, 0);
}

TEST(Igbvf, EchoesReceivedBuffers) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  PacketBuffer bufs[IgbvfPort::kBurst];
  for (uint32_t i = 0; i < 1000; ++i) {
    auto f = Frame(i, 200);
    ASSERT_TRUE(m.Deliver(f.data(), f.size()));
    ASSERT_EQ(p.RxBurst(absl::MakeSpan(bufs)), 1u);
    bufs[0].data[0] ^= 0xFF;
    ASSERT_EQ(p.TxBurst(absl::MakeConstSpan(bufs, 1)), 1u);
    m.Step();
    ASSERT_EQ(m.sent().size(), 1u);
    f[0] ^= 0xFF;
    ASSERT_EQ(m.sent().front(), f);
    m.sent().pop_front();
  }
  p.Service();
  ExpectConserved(p, 0);
}

TEST(Igbvf, RefusesBadBuffers) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  PacketBuffer b[2];
  ASSERT_EQ(p.AllocBurst(absl::MakeSpan(b)), 2u);
  PacketBuffer foreign = b[0];
  foreign.pool = &m;
  EXPECT_EQ(p.FreeBurst({foreign}), 0u);
  PacketBuffer out_of_range = b[0];
  out_of_range.index = 100000;
  EXPECT_EQ(p.TxBurst({out_of_range}), 0u);
  PacketBuffer too_long = b[0];
  too_long.length = IgbvfPort::kBufferSize + 1;
  EXPECT_EQ(p.TxBurst({too_long}), 0u);
  PacketBuffer shifted = b[0];
  shifted.data += 100;
  shifted.length = IgbvfPort::kBufferSize - 99;
  EXPECT_EQ(p.TxBurst({shifted}), 0u);
  PacketBuffer wrong_data = b[0];
  wrong_data.data = b[1].data;  // another buffer's memory under b[0]'s index
  wrong_data.length = 10;
  EXPECT_EQ(p.TxBurst({wrong_data}), 0u);
  PacketBuffer empty = b[0];
  EXPECT_EQ(p.TxBurst({empty}), 0u);
  EXPECT_EQ(p.stats().bad_buffers, 6u);
  // Headroom: a frame starting 100 bytes in is fine.
  shifted.length = 100;
  EXPECT_EQ(p.TxBurst({shifted}), 1u);
  m.Step();
  ASSERT_EQ(m.sent().size(), 1u);
  EXPECT_EQ(p.FreeBurst({b[1]}), 1u);
  EXPECT_EQ(p.FreeBurst({b[1]}), 0u);  // twice
  p.Service();
  EXPECT_EQ(p.FreeBurst({b[0]}), 0u);  // sent, already back
  EXPECT_EQ(p.stats().bad_buffers, 8u);
  ExpectConserved(p, 0);
  // Pool exhaustion.
  std::vector<PacketBuffer> all(300);
  size_t n = p.AllocBurst(absl::MakeSpan(all));
  EXPECT_EQ(n, 256u - 63u);
  EXPECT_EQ(p.stats().alloc_failed, 300u - n);
  EXPECT_EQ(p.FreeBurst(absl::MakeConstSpan(all.data(), n)), n);
}

// ---- Hostile device ----------------------------------------------------------------------------

struct RxHostileCase {
  Hostile mode;
  const char* name;
};

class IgbvfRxHostile : public ::testing::TestWithParam<RxHostileCase> {};

TEST_P(IgbvfRxHostile, BadWriteBacksAreCountedAndDropped) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  m.set_hostile(GetParam().mode);
  PacketBuffer bufs[IgbvfPort::kBurst];
  uint64_t delivered = 0;
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 20; ++i) {
      auto f = Frame(i, 100);
      delivered += m.Deliver(f.data(), f.size());
    }
    size_t k;
    while ((k = p.RxBurst(absl::MakeSpan(bufs))) != 0) {
      for (size_t i = 0; i < k; ++i) {
        // Whatever is handed out lies inside its buffer.
        ASSERT_GT(bufs[i].length, 0u);
        ASSERT_LE(bufs[i].length, bufs[i].capacity);
      }
      p.FreeBurst(absl::MakeConstSpan(bufs, k));
    }
  }
  if (GetParam().mode == Hostile::kRxDoneNotGiven) {
    // The genuine frames arrive; the fake write-backs in slots never given are never read.
    EXPECT_EQ(p.stats().rx_packets, delivered);
    EXPECT_EQ(p.stats().bad_descriptors, 0u);
  } else {
    EXPECT_EQ(p.stats().rx_packets, 0u);
    EXPECT_EQ(p.stats().bad_descriptors, delivered);
  }
  EXPECT_GT(delivered, 500u);
  ExpectConserved(p, 0);
  EXPECT_EQ(m.dma_errors(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, IgbvfRxHostile,
    ::testing::Values(RxHostileCase{Hostile::kRxLengthZero, "LengthZero"},
                      RxHostileCase{Hostile::kRxLengthHuge, "LengthHuge"},
                      RxHostileCase{Hostile::kRxNoEop, "NoEop"},
                      RxHostileCase{Hostile::kRxDoneNotGiven, "DoneNotGiven"}),
    [](const ::testing::TestParamInfo<RxHostileCase>& i) { return std::string(i.param.name); });

TEST(Igbvf, FrameErrorsAreDroppedNotHostile) {
  // Write-backs with RXE set (as for a CRC error): dropped and counted apart from hostility.
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  m.set_hostile(Hostile::kRxFrameError);
  auto f = Frame(0, 64);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  m.set_hostile(Hostile::kNone);
  ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  PacketBuffer b[16];
  EXPECT_EQ((*port)->RxBurst(absl::MakeSpan(b)), 1u);
  EXPECT_EQ((*port)->igbvf_stats().rx_frame_errors, 10u);
  EXPECT_EQ((*port)->stats().bad_descriptors, 0u);
  EXPECT_EQ((*port)->FreeBurst({b[0]}), 1u);
  ExpectConserved(**port, 0);
}

class IgbvfTxHostile : public ::testing::TestWithParam<Hostile> {};

TEST_P(IgbvfTxHostile, BadHeadIsCountedAndNothingIsReclaimed) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  m.set_hostile(GetParam());
  PacketBuffer bufs[IgbvfPort::kBurst];
  size_t queued = 0;
  for (int round = 0; round < 10; ++round) {
    size_t n = p.AllocBurst(absl::MakeSpan(bufs, 10));
    for (size_t i = 0; i < n; ++i) bufs[i].length = 60;
    size_t s = p.TxBurst(absl::MakeConstSpan(bufs, n));
    queued += s;
    p.FreeBurst(absl::MakeConstSpan(bufs + s, n - s));  // what the full ring left us
    m.Step();
    p.Service();
  }
  EXPECT_EQ(queued, 63u);             // ring filled and never drained by a lying head
  EXPECT_EQ(p.tx_in_flight(), 63u);
  EXPECT_EQ(p.stats().tx_completed, 0u);
  EXPECT_GT(p.igbvf_stats().bad_tx_head, 0u);
  EXPECT_EQ(p.stats().bad_descriptors, p.igbvf_stats().bad_tx_head);
  ExpectConserved(p, 0);
  // The ring stays full (the driver cannot know what was sent): TxBurst refuses, nothing leaks.
  size_t n = p.AllocBurst(absl::MakeSpan(bufs, 1));
  ASSERT_EQ(n, 1u);
  bufs[0].length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeConstSpan(bufs, 1)), 0u);
  EXPECT_EQ(p.FreeBurst(absl::MakeConstSpan(bufs, 1)), 1u);
  EXPECT_EQ(m.dma_errors(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, IgbvfTxHostile,
                         ::testing::Values(Hostile::kTxHeadBeyondRing, Hostile::kTxHeadAhead));

struct SetupHostileCase {
  Hostile mode;
  absl::StatusCode code;
  const char* text;
  const char* name;
};

class IgbvfSetupHostile : public ::testing::TestWithParam<SetupHostileCase> {};

TEST_P(IgbvfSetupHostile, FailsCleanly) {
  IgbvfDeviceModel m;
  m.set_hostile(GetParam().mode);
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), GetParam().code) << port.status();
  EXPECT_TRUE(absl::StrContains(port.status().message(), GetParam().text)) << port.status();
  EXPECT_EQ(m.live_mappings(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, IgbvfSetupHostile,
    ::testing::Values(
        SetupHostileCase{Hostile::kMailboxGarbage, absl::StatusCode::kFailedPrecondition,
                         "is not RESET|ACK", "Garbage"},
        SetupHostileCase{Hostile::kMailboxWrongId, absl::StatusCode::kFailedPrecondition,
                         "is not RESET|ACK", "WrongId"},
        SetupHostileCase{Hostile::kMailboxSilent, absl::StatusCode::kDeadlineExceeded,
                         "no PFACK for our message", "Silent"},
        SetupHostileCase{Hostile::kRstiStuck, absl::StatusCode::kDeadlineExceeded,
                         "still resetting", "RstiStuck"}),
    [](const ::testing::TestParamInfo<SetupHostileCase>& i) { return std::string(i.param.name); });

TEST(Igbvf, MailboxGarbageAfterSetupIsAnErrorNotACrash) {
  IgbvfDeviceModel m;
  auto port = IgbvfPort::Create(m.MakeBar(), SmallOptions());
  ASSERT_TRUE(port.ok());
  IgbvfPort& p = **port;
  for (Hostile h : {Hostile::kMailboxGarbage, Hostile::kMailboxWrongId, Hostile::kMailboxSilent}) {
    m.set_hostile(h);
    for (int i = 0; i < 5; ++i) {
      EXPECT_FALSE(p.SetMaxFrame(1518).ok());
      EXPECT_FALSE(p.SetVlan(7, true).ok());
      EXPECT_FALSE(p.SetMac(p.mac()).ok());
    }
  }
  m.set_hostile(Hostile::kNone);
  EXPECT_TRUE(p.SetMaxFrame(1518).ok());
  EXPECT_EQ(p.mac(), ModelOptions().mac);
}

TEST(Igbvf, WaitsForLink) {
  ModelOptions mo;
  mo.link_up = false;
  IgbvfDeviceModel m(mo);
  Options o = SmallOptions();
  o.link_timeout = absl::Milliseconds(10);
  auto port = IgbvfPort::Create(m.MakeBar(), o);
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::StrContains(port.status().message(), "VFSTATUS.LU"));
  m.set_link(true);
  EXPECT_TRUE(IgbvfPort::Create(m.MakeBar(), o).ok());
}

}  // namespace
}  // namespace vfdrivers::net::igbvf
