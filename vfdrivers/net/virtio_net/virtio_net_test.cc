// VirtioNetPort against the register-level model: the §3.1.1 init sequence, features, MAC,
// control queue, RX/TX round trips across ring wraps, burst sizes, notifies, buffer accounting,
// bad buffers, and a hostile device (used idx jumps, ids out of range / duplicated / never
// given, RX lengths too big or short, capabilities outside the BAR or looping, features
// missing, FEATURES_OK refused, reset never completing, queue size 0, a notify offset outside
// the structure, control commands refused or never answered). Run under ASan/UBSan by hand to
// show no out-of-bounds access.
#include "vfdrivers/net/virtio_net/virtio_net.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "vfdrivers/net/virtio_net/virtio_net_device_model.h"

namespace vfdrivers::net::virtio_net {
namespace {

using testing::Hostile;
using testing::ModelOptions;
using testing::VirtioNetDeviceModel;

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }

Options SmallOptions() {
  Options o;
  o.rx_ring_size = 64;
  o.tx_ring_size = 64;
  o.buffer_count = 256;
  o.huge_pages = memory::HugePages::kNever;
  o.reset_timeout = absl::Milliseconds(5);
  o.ctrl_timeout = absl::Milliseconds(20);
  return o;
}

std::vector<uint8_t> Frame(uint32_t seq, uint32_t len) {
  std::vector<uint8_t> f(len);
  for (uint32_t i = 0; i < len; ++i) f[i] = static_cast<uint8_t>(seq * 7 + i);
  std::memcpy(f.data(), &seq, 4);
  return f;
}

// Every buffer is somewhere: free, posted to RX, in flight on TX, or in the caller's hands.
void ExpectConserved(const VirtioNetPort& p, uint32_t held) {
  EXPECT_EQ(p.free_buffers() + p.rx_posted() + p.tx_in_flight() + held, p.info().buffer_count);
}

std::unique_ptr<VirtioNetPort> MustCreate(VirtioNetDeviceModel& m,
                                          const Options& o = SmallOptions()) {
  auto port = VirtioNetPort::Create(m.MakeTransport(), o);
  EXPECT_TRUE(port.ok()) << port.status();
  return port.ok() ? *std::move(port) : nullptr;
}

TEST(VirtioNet, InitSequenceNegotiatesAndSetsUpQueues) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  EXPECT_EQ(m.status(),
            kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  // Exactly what the driver supports: no offloads, no mergeable buffers, no event index.
  const uint64_t want = Bit(kFeatureVersion1) | Bit(kFeatureAccessPlatform) | Bit(kFeatureMac) |
                        Bit(kFeatureStatus) | Bit(kFeatureCtrlVq) | Bit(kFeatureCtrlRx) |
                        Bit(kFeatureCtrlMacAddr);
  EXPECT_EQ(m.driver_features(), want);
  EXPECT_EQ(p.features(), want);
  EXPECT_EQ(m.queue_size(kRxQueue), 64);
  EXPECT_EQ(m.queue_size(kTxQueue), 64);
  EXPECT_EQ(m.queue_size(kCtrlQueue), 8);
  for (uint16_t q : {kRxQueue, kTxQueue, kCtrlQueue}) {
    EXPECT_TRUE(m.queue_enabled(q)) << q;
    EXPECT_EQ(m.queue_msix_vector(q), kNoMsixVector) << q;
    EXPECT_GE(m.queue_desc(q), uint64_t{1} << 32) << "IOVAs, not virtual addresses";
  }
  EXPECT_EQ(p.mac(), ModelOptions().mac);
  EXPECT_TRUE(p.link_up());
  EXPECT_TRUE(p.promiscuous_off());
  EXPECT_FALSE(m.promiscuous());
  EXPECT_EQ(p.rx_posted(), 64u);  // every RX descriptor given
  EXPECT_EQ(m.TakeNotifies(kRxQueue), 1u);
  EXPECT_EQ(m.ctrl_commands(), 1u);
  EXPECT_EQ(p.info().buffer_capacity, VirtioNetPort::kBufferSize - VirtioNetPort::kHeadroom);
  EXPECT_TRUE(p.info().zero_copy);
  ExpectConserved(p, 0);
  port.reset();
  EXPECT_EQ(m.status(), 0) << "destructor resets the device";
  EXPECT_EQ(m.live_mappings(), 0u);
  EXPECT_EQ(m.dma_errors(), 0u);
  EXPECT_EQ(m.driver_errors(), 0u);
}

TEST(VirtioNet, RejectsBadOptions) {
  VirtioNetDeviceModel m;
  Options o = SmallOptions();
  o.rx_ring_size = 48;  // not a power of two
  EXPECT_EQ(VirtioNetPort::Create(m.MakeTransport(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = SmallOptions();
  o.buffer_count = 64;  // not more than the RX ring
  EXPECT_EQ(VirtioNetPort::Create(m.MakeTransport(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = SmallOptions();
  o.rx_ring_size = 512;  // beyond the device's queue_size (256)
  o.buffer_count = 1024;
  auto s = VirtioNetPort::Create(m.MakeTransport(), o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "maximum 256")) << s;
  EXPECT_EQ(VirtioNetPort::Create(std::unique_ptr<Transport>(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.live_mappings(), 0u);
}

TEST(VirtioNet, ReceivesAcrossManyRingWraps) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  uint32_t next = 0, got = 0;
  PacketBuffer out[32];
  for (int round = 0; round < 200; ++round) {  // 200 * 20 frames: ~60 wraps of a 64 ring
    for (int i = 0; i < 20; ++i) {
      auto f = Frame(next, 60 + next % 1400);
      ASSERT_TRUE(m.Deliver(f.data(), f.size())) << next;
      ++next;
    }
    size_t n;
    while ((n = p.RxBurst(absl::MakeSpan(out))) != 0) {
      for (size_t i = 0; i < n; ++i) {
        auto want = Frame(got, 60 + got % 1400);
        ASSERT_EQ(out[i].length, want.size());
        ASSERT_EQ(std::memcmp(out[i].data, want.data(), want.size()), 0) << got;
        ASSERT_EQ(out[i].capacity, VirtioNetPort::kBufferSize - VirtioNetPort::kHeadroom);
        ++got;
      }
      ExpectConserved(p, n);
      ASSERT_EQ(p.FreeBurst(absl::MakeSpan(out, n)), n);
    }
  }
  EXPECT_EQ(got, next);
  EXPECT_EQ(p.stats().rx_packets, next);
  EXPECT_EQ(p.stats().bad_descriptors, 0u);
  ExpectConserved(p, 0);
  EXPECT_EQ(m.dma_errors(), 0u);
  EXPECT_EQ(m.rx_dropped(), 0u);
}

TEST(VirtioNet, BurstSizesAndOrder) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  for (uint32_t i = 0; i < 60; ++i) {
    auto f = Frame(i, 100);
    ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  }
  std::vector<PacketBuffer> out(64);
  uint32_t seq = 0;
  for (size_t burst : {1, 7, 32, 64}) {
    const size_t n = p.RxBurst(absl::MakeSpan(out.data(), burst));
    EXPECT_EQ(n, std::min<size_t>(burst, 60 - seq));
    for (size_t i = 0; i < n; ++i, ++seq) {
      uint32_t s;
      std::memcpy(&s, out[i].data, 4);
      EXPECT_EQ(s, seq);
    }
    EXPECT_EQ(p.FreeBurst(absl::MakeSpan(out.data(), n)), n);
  }
  EXPECT_EQ(seq, 60u);
  EXPECT_EQ(p.RxBurst(absl::MakeSpan(out)), 0u);
  ExpectConserved(p, 0);
}

TEST(VirtioNet, RxRingFullDropsAtTheDeviceAndRecovers) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  auto f = Frame(1, 64);
  for (int i = 0; i < 64; ++i) ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  EXPECT_FALSE(m.Deliver(f.data(), f.size()));  // no buffer left
  PacketBuffer out[32];
  size_t total = 0, n;
  while ((n = p.RxBurst(absl::MakeSpan(out))) != 0) {
    total += n;
    p.FreeBurst(absl::MakeSpan(out, n));
  }
  EXPECT_EQ(total, 64u);
  EXPECT_TRUE(m.Deliver(f.data(), f.size()));
  EXPECT_EQ(p.RxBurst(absl::MakeSpan(out)), 1u);
  p.FreeBurst(absl::MakeSpan(out, 1));
  ExpectConserved(p, 0);
}

TEST(VirtioNet, TransmitsWithZeroedHeaderAndReclaims) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  uint32_t seq = 0, checked = 0;
  for (int round = 0; round < 300; ++round) {  // 300 * 24: > 100 wraps of a 64 ring
    PacketBuffer b[24];
    ASSERT_EQ(p.AllocBurst(absl::MakeSpan(b)), 24u);
    for (PacketBuffer& x : b) {
      // Garbage where the header goes: the driver must zero it.
      std::memset(x.data - kNetHdrSize, 0xAB, kNetHdrSize);
      auto f = Frame(seq, 60 + seq % 1000);
      ++seq;
      std::memcpy(x.data, f.data(), f.size());
      x.length = static_cast<uint32_t>(f.size());
    }
    ASSERT_EQ(p.TxBurst(absl::MakeSpan(b)), 24u);
    EXPECT_EQ(m.TakeNotifies(kTxQueue), 1u) << "one notify per burst";
    m.Step();
    while (!m.sent().empty()) {
      auto want = Frame(checked, 60 + checked % 1000);
      ASSERT_EQ(m.sent().front(), want) << checked;
      m.sent().pop_front();
      ++checked;
    }
    ExpectConserved(p, 0);
  }
  p.Service();
  EXPECT_EQ(checked, seq);
  EXPECT_EQ(p.stats().tx_packets, seq);
  EXPECT_EQ(p.stats().tx_completed, seq);
  EXPECT_EQ(p.tx_in_flight(), 0u);
  EXPECT_EQ(m.tx_nonzero_headers(), 0u);
  EXPECT_EQ(p.free_buffers(), 256u - 64u);
  EXPECT_EQ(m.dma_errors(), 0u);
  EXPECT_EQ(m.driver_errors(), 0u);
}

TEST(VirtioNet, TxRingFullLeavesTheRestToTheCaller) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  std::vector<PacketBuffer> b(80);
  ASSERT_EQ(p.AllocBurst(absl::MakeSpan(b)), 80u);
  for (PacketBuffer& x : b) x.length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(b)), 64u);
  EXPECT_EQ(p.stats().tx_ring_full, 16u);
  ExpectConserved(p, 16);
  m.Step();
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(b).subspan(64)), 16u);  // reclaimed first
  m.Step();
  p.Service();
  EXPECT_EQ(m.sent().size(), 80u);
  ExpectConserved(p, 0);
}

TEST(VirtioNet, EchoesReceivedBuffersZeroCopy) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  for (uint32_t i = 0; i < 4992; ++i) {
    auto f = Frame(i, 64 + i % 64);
    ASSERT_TRUE(m.Deliver(f.data(), f.size()));
    if (i % 16 == 15) {
      PacketBuffer out[32];
      size_t n = p.RxBurst(absl::MakeSpan(out));
      ASSERT_EQ(n, 16u);
      ASSERT_EQ(p.TxBurst(absl::MakeSpan(out, n)), n);
      m.Step();
    }
  }
  p.Service();
  ASSERT_EQ(m.sent().size(), 4992u);
  for (uint32_t i = 0; i < 4992; ++i) ASSERT_EQ(m.sent()[i], Frame(i, 64 + i % 64)) << i;
  EXPECT_EQ(m.tx_nonzero_headers(), 0u);
  ExpectConserved(p, 0);
  EXPECT_EQ(p.free_buffers(), 256u - 64u) << "no buffer leaked after 4992 echoes";
}

TEST(VirtioNet, NotifiesOncePerRefillBatch) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  m.TakeNotifies(kRxQueue);
  auto f = Frame(0, 64);
  PacketBuffer out[32];
  // Fewer than a batch (32) of free descriptors: no refill yet, no notify.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  ASSERT_EQ(p.RxBurst(absl::MakeSpan(out)), 10u);
  p.FreeBurst(absl::MakeSpan(out, 10));
  EXPECT_EQ(m.TakeNotifies(kRxQueue), 0u);
  EXPECT_EQ(p.rx_posted(), 54u);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  ASSERT_EQ(p.RxBurst(absl::MakeSpan(out)), 30u);
  p.FreeBurst(absl::MakeSpan(out, 30));
  EXPECT_EQ(m.TakeNotifies(kRxQueue), 1u) << "40 descriptors back: one refill, one notify";
  EXPECT_EQ(p.rx_posted(), 64u);
  ExpectConserved(p, 0);
}

TEST(VirtioNet, NoNotifyFromTheDeviceSkipsNotifies) {
  ModelOptions mo;
  mo.hostile = Hostile::kNoNotify;
  VirtioNetDeviceModel m(mo);
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  m.TakeNotifies(kRxQueue);
  m.TakeNotifies(kTxQueue);
  PacketBuffer b[8];
  ASSERT_EQ(p.AllocBurst(absl::MakeSpan(b)), 8u);
  for (PacketBuffer& x : b) x.length = 60;
  ASSERT_EQ(p.TxBurst(absl::MakeSpan(b)), 8u);
  EXPECT_EQ(m.TakeNotifies(kTxQueue), 0u);
  m.Step();  // a device that polls still sends them
  p.Service();
  EXPECT_EQ(m.sent().size(), 8u);
  EXPECT_GE(p.virtio_stats().notifies_skipped, 2u);  // RX refill at setup and this TX burst
  ExpectConserved(p, 0);
}

TEST(VirtioNet, RefusesBadBuffers) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  VirtioNetDeviceModel m2;
  auto other = MustCreate(m2);
  ASSERT_NE(port, nullptr);
  ASSERT_NE(other, nullptr);
  VirtioNetPort& p = *port;
  PacketBuffer b[4];
  ASSERT_EQ(p.AllocBurst(absl::MakeSpan(b)), 4u);
  PacketBuffer foreign;
  ASSERT_EQ(other->AllocBurst(absl::MakeSpan(&foreign, 1)), 1u);
  foreign.length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&foreign, 1)), 0u);
  EXPECT_EQ(p.FreeBurst(absl::MakeSpan(&foreign, 1)), 0u);
  PacketBuffer too_long = b[0];
  too_long.length = too_long.capacity + 1;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&too_long, 1)), 0u);
  PacketBuffer zero = b[0];
  zero.length = 0;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&zero, 1)), 0u);
  PacketBuffer no_headroom = b[0];
  no_headroom.data -= VirtioNetPort::kHeadroom - 4;  // 4 bytes into the buffer: no header room
  no_headroom.length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&no_headroom, 1)), 0u);
  PacketBuffer bad_index = b[0];
  bad_index.index = 100000;
  bad_index.length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&bad_index, 1)), 0u);
  // A buffer moved to the front of its headroom (12 bytes left) is fine.
  PacketBuffer moved = b[1];
  moved.data -= VirtioNetPort::kHeadroom - kNetHdrSize;
  moved.length = 60;
  EXPECT_EQ(p.TxBurst(absl::MakeSpan(&moved, 1)), 1u);
  EXPECT_EQ(p.stats().bad_buffers, 6u);
  // Double give-back: once sent, the buffer is no longer the caller's.
  EXPECT_EQ(p.FreeBurst(absl::MakeSpan(&moved, 1)), 0u);
  EXPECT_EQ(p.FreeBurst(absl::MakeSpan(&b[2], 2)), 2u);
  EXPECT_EQ(p.FreeBurst(absl::MakeSpan(&b[2], 2)), 0u);
  EXPECT_EQ(p.stats().bad_buffers, 9u);
  ExpectConserved(p, 1);  // b[0] still held
  other->FreeBurst(absl::MakeSpan(&foreign, 1));
}

// §2.7.8: a device may use buffers out of order. Every frame still arrives once, in used-ring
// order; a slot whose descriptor is still out is not reused (posting stops there).
TEST(VirtioNet, OutOfOrderCompletionsLoseNothing) {
  ModelOptions mo;
  mo.hostile = Hostile::kOutOfOrder;
  VirtioNetDeviceModel m(mo);
  Options o = SmallOptions();
  o.rx_ring_size = 8;
  o.tx_ring_size = 8;
  o.buffer_count = 64;
  auto port = MustCreate(m, o);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  std::vector<uint32_t> got;
  PacketBuffer out[8];
  for (uint32_t i = 0; i < 3000; ++i) {
    auto f = Frame(i, 64);
    ASSERT_TRUE(m.Deliver(f.data(), f.size())) << i;
    if (i % 2 == 1) {
      const size_t n = p.RxBurst(absl::MakeSpan(out));
      for (size_t k = 0; k < n; ++k) {
        uint32_t seq;
        std::memcpy(&seq, out[k].data, 4);
        got.push_back(seq);
      }
      // Echo them: TX completes out of order too (one chain held back per Step).
      ASSERT_EQ(p.TxBurst(absl::MakeSpan(out, n)), n);
      m.Step();
      p.Service();
      ExpectConserved(p, 0);
    }
  }
  ASSERT_EQ(got.size(), 3000u);
  // Within each pair the device used the second buffer first: frames arrive in delivery order
  // (the model fills the held buffer with the later frame).
  std::vector<uint32_t> sorted = got;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 3000; ++i) ASSERT_EQ(sorted[i], i);
  m.Step();
  p.Service();
  EXPECT_EQ(m.sent().size(), 3000u);
  EXPECT_EQ(p.stats().bad_descriptors, 0u);
  EXPECT_EQ(p.tx_in_flight(), 0u);
  ExpectConserved(p, 0);
  EXPECT_EQ(m.driver_errors(), 0u);
}

// ---- Hostile device: RX used ring ---------------------------------------------------------------

class VirtioNetRxHostile : public ::testing::TestWithParam<Hostile> {};

TEST_P(VirtioNetRxHostile, BadUsedEntriesAreCountedAndNothingLeaks) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  m.set_hostile(GetParam());
  PacketBuffer out[32];
  uint64_t handed = 0;
  for (int i = 0; i < 3000; ++i) {
    auto f = Frame(i, 100);
    m.Deliver(f.data(), f.size());
    const size_t n = p.RxBurst(absl::MakeSpan(out));
    for (size_t k = 0; k < n; ++k) {
      // Whatever reached the caller is a whole frame inside the buffer.
      ASSERT_GE(out[k].length, 1u);
      ASSERT_LE(out[k].length, out[k].capacity);
    }
    handed += n;
    ExpectConserved(p, n);
    ASSERT_EQ(p.FreeBurst(absl::MakeSpan(out, n)), n);
  }
  EXPECT_GT(p.stats().bad_descriptors, 0u);
  switch (GetParam()) {
    case Hostile::kRxLengthHuge:
    case Hostile::kRxLengthShort:
    case Hostile::kRxLengthHeaderOnly:
      EXPECT_EQ(handed, 0u);
      EXPECT_EQ(p.virtio_stats().bad_rx_length, 3000u);
      // The buffers came back: the device still has a full ring, and honest traffic flows.
      m.set_hostile(Hostile::kNone);
      p.Service();
      EXPECT_EQ(p.rx_posted(), 64u);
      for (int i = 0; i < 100; ++i) {
        auto f = Frame(i, 100);
        ASSERT_TRUE(m.Deliver(f.data(), f.size()));
        ASSERT_EQ(p.RxBurst(absl::MakeSpan(out)), 1u);
        ASSERT_EQ(out[0].length, 100u);
        p.FreeBurst(absl::MakeSpan(out, 1));
      }
      break;
    case Hostile::kUsedIdOutOfRange:
      EXPECT_EQ(handed, 0u);
      EXPECT_GT(p.virtio_stats().bad_used_id, 0u);
      break;
    case Hostile::kUsedIdDuplicate:
      // The first copy is honest, the second names a descriptor already back.
      EXPECT_EQ(handed, 3000u);
      EXPECT_EQ(p.virtio_stats().bad_used_id, 3000u);
      break;
    case Hostile::kUsedIdxJump:
      EXPECT_EQ(handed, 0u);
      EXPECT_GT(p.virtio_stats().bad_used_idx, 0u);
      break;
    default:
      break;
  }
  ExpectConserved(p, 0);
  EXPECT_EQ(m.dma_errors(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, VirtioNetRxHostile,
                         ::testing::Values(Hostile::kRxLengthHuge, Hostile::kRxLengthShort,
                                           Hostile::kRxLengthHeaderOnly,
                                           Hostile::kUsedIdOutOfRange, Hostile::kUsedIdDuplicate,
                                           Hostile::kUsedIdxJump));

// ---- Hostile device: TX used ring ---------------------------------------------------------------

class VirtioNetTxHostile : public ::testing::TestWithParam<Hostile> {};

TEST_P(VirtioNetTxHostile, BadUsedEntriesAreCountedNotReclaimedTwice) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  m.set_hostile(GetParam());
  for (int i = 0; i < 2000; ++i) {
    PacketBuffer b;
    if (p.AllocBurst(absl::MakeSpan(&b, 1)) != 1) break;  // the device kept them all
    b.length = 60;
    if (p.TxBurst(absl::MakeSpan(&b, 1)) != 1) {
      p.FreeBurst(absl::MakeSpan(&b, 1));
      continue;
    }
    m.Step();
    p.Service();
    ExpectConserved(p, 0);
    ASSERT_LE(p.tx_in_flight(), 64u);
  }
  EXPECT_GT(p.stats().bad_descriptors, 0u);
  switch (GetParam()) {
    case Hostile::kUsedIdOutOfRange:
      EXPECT_GT(p.virtio_stats().bad_used_id, 0u);
      EXPECT_EQ(p.stats().tx_completed, 0u);
      EXPECT_EQ(p.tx_in_flight(), 64u);  // the device holds the ring: TX stops, nothing breaks
      break;
    case Hostile::kUsedIdDuplicate:  // with one frame in flight, two entries: idx beyond it
    case Hostile::kUsedIdxJump:
      EXPECT_GT(p.virtio_stats().bad_used_idx, 0u);
      EXPECT_EQ(p.stats().tx_completed, 0u);
      EXPECT_EQ(p.tx_in_flight(), 64u);
      break;
    case Hostile::kUsedIdNotGiven:
      // Ids not in flight are refused; once the ring holds stuck descriptors, the "next" id
      // may be one the device was given, which is a lie the driver cannot tell from the truth.
      EXPECT_GT(p.virtio_stats().bad_used_id, 0u);
      break;
    default:
      break;
  }
  ExpectConserved(p, 0);
  EXPECT_EQ(m.dma_errors(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, VirtioNetTxHostile,
                         ::testing::Values(Hostile::kUsedIdOutOfRange, Hostile::kUsedIdDuplicate,
                                           Hostile::kUsedIdNotGiven, Hostile::kUsedIdxJump));

// ---- Hostile device: setup ----------------------------------------------------------------------

struct SetupCase {
  Hostile hostile;
  absl::StatusCode code;
  const char* message;
};

class VirtioNetSetupHostile : public ::testing::TestWithParam<SetupCase> {};

TEST_P(VirtioNetSetupHostile, FailsCleanlyNamingTheProblem) {
  ModelOptions mo;
  mo.hostile = GetParam().hostile;
  VirtioNetDeviceModel m(mo);
  auto port = VirtioNetPort::Create(m.MakeTransport(), SmallOptions());
  ASSERT_FALSE(port.ok());
  EXPECT_EQ(port.status().code(), GetParam().code) << port.status();
  EXPECT_TRUE(absl::StrContains(port.status().message(), GetParam().message)) << port.status();
  EXPECT_EQ(m.live_mappings(), 0u);
  EXPECT_EQ(m.dma_errors(), 0u);
  EXPECT_EQ(m.status() & kStatusDriverOk, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, VirtioNetSetupHostile,
    ::testing::Values(
        SetupCase{Hostile::kCapOffsetOutsideBar, absl::StatusCode::kFailedPrecondition,
                  "outside BAR 4"},
        SetupCase{Hostile::kCapBadBar, absl::StatusCode::kFailedPrecondition,
                  "BAR 9 is not a usable memory BAR"},
        SetupCase{Hostile::kCapListLoop, absl::StatusCode::kFailedPrecondition,
                  "capability list broken"},
        SetupCase{Hostile::kCapPointerOutOfRange, absl::StatusCode::kFailedPrecondition,
                  "capability list broken at 0xfc"},
        SetupCase{Hostile::kNoVersion1, absl::StatusCode::kFailedPrecondition,
                  "VIRTIO_F_VERSION_1"},
        SetupCase{Hostile::kNoAccessPlatform, absl::StatusCode::kFailedPrecondition,
                  "VIRTIO_F_ACCESS_PLATFORM"},
        SetupCase{Hostile::kFeaturesOkRefused, absl::StatusCode::kFailedPrecondition,
                  "FEATURES_OK"},
        SetupCase{Hostile::kResetNeverCompletes, absl::StatusCode::kDeadlineExceeded,
                  "device_status still"},
        SetupCase{Hostile::kQueueSizeZero, absl::StatusCode::kFailedPrecondition,
                  "queue 0 is not available"},
        SetupCase{Hostile::kNotifyOffOutside, absl::StatusCode::kFailedPrecondition,
                  "outside the notify structure"},
        SetupCase{Hostile::kCtrlNack, absl::StatusCode::kFailedPrecondition,
                  "refused control command class 0"},
        SetupCase{Hostile::kCtrlSilent, absl::StatusCode::kDeadlineExceeded,
                  "not answered"}));

TEST(VirtioNet, UsesTheFirstUsableCapabilityOfEachType) {
  ModelOptions mo;
  mo.hostile = Hostile::kCapFirstCommonBad;
  VirtioNetDeviceModel m(mo);
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  EXPECT_EQ(port->mac(), mo.mac);
}

// ---- Control queue, MAC, link -------------------------------------------------------------------

TEST(VirtioNet, SetsMacAndPromiscuousThroughTheControlQueue) {
  VirtioNetDeviceModel m;
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  VirtioNetPort& p = *port;
  const MacAddress mac{{0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE}};
  ASSERT_TRUE(p.SetMac(mac).ok());
  EXPECT_EQ(m.mac(), mac);
  EXPECT_EQ(p.mac(), mac);
  EXPECT_EQ(p.SetMac({{0x01, 0, 0x5e, 0, 0, 1}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.SetMac({}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(p.SetPromiscuous(true).ok());
  EXPECT_TRUE(m.promiscuous());
  EXPECT_FALSE(p.promiscuous_off());
  ASSERT_TRUE(p.SetPromiscuous(false).ok());
  EXPECT_FALSE(m.promiscuous());

  m.set_hostile(Hostile::kCtrlNack);
  absl::Status s = p.SetMac({{0x02, 1, 2, 3, 4, 5}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(p.mac(), mac) << "a refused MAC is not taken";

  m.set_hostile(Hostile::kCtrlSilent);
  s = p.SetPromiscuous(true);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  s = p.SetPromiscuous(true);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "never answered")) << s;
  // The data path does not depend on the control queue.
  m.set_hostile(Hostile::kNone);
  auto f = Frame(7, 80);
  ASSERT_TRUE(m.Deliver(f.data(), f.size()));
  PacketBuffer out[4];
  ASSERT_EQ(p.RxBurst(absl::MakeSpan(out)), 1u);
  p.FreeBurst(absl::MakeSpan(out, 1));
}

TEST(VirtioNet, OptionsMacIsSetAtCreate) {
  VirtioNetDeviceModel m;
  Options o = SmallOptions();
  o.mac = MacAddress{{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}};
  auto port = MustCreate(m, o);
  ASSERT_NE(port, nullptr);
  EXPECT_EQ(port->mac(), *o.mac);
  EXPECT_EQ(m.mac(), *o.mac);
}

TEST(VirtioNet, WithoutControlQueue) {
  ModelOptions mo;
  mo.offer_ctrl = false;
  VirtioNetDeviceModel m(mo);
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  EXPECT_FALSE(port->promiscuous_off());
  EXPECT_TRUE(m.promiscuous());
  EXPECT_EQ(port->features() & Bit(kFeatureCtrlVq), 0u);
  EXPECT_EQ(port->SetMac({{0x02, 1, 2, 3, 4, 5}}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(port->SetPromiscuous(false).code(), absl::StatusCode::kFailedPrecondition);
  Options o = SmallOptions();
  o.mac = MacAddress{{0x02, 1, 2, 3, 4, 5}};
  VirtioNetDeviceModel m2(mo);
  EXPECT_EQ(VirtioNetPort::Create(m2.MakeTransport(), o).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(VirtioNet, WithoutMacNeedsOne) {
  ModelOptions mo;
  mo.offer_mac = false;
  VirtioNetDeviceModel m(mo);
  auto s = VirtioNetPort::Create(m.MakeTransport(), SmallOptions()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  Options o = SmallOptions();
  o.mac = MacAddress{{0x02, 1, 2, 3, 4, 5}};
  VirtioNetDeviceModel m2(mo);
  auto port = MustCreate(m2, o);
  ASSERT_NE(port, nullptr);
  EXPECT_EQ(port->mac(), *o.mac);
}

TEST(VirtioNet, LinkState) {
  ModelOptions mo;
  mo.link_up = false;
  VirtioNetDeviceModel m(mo);
  auto port = MustCreate(m);
  ASSERT_NE(port, nullptr);
  EXPECT_FALSE(port->link_up());
  EXPECT_EQ(port->WaitForLink(absl::Milliseconds(5)).code(),
            absl::StatusCode::kDeadlineExceeded);
  m.set_link(true);
  EXPECT_TRUE(port->link_up());
  EXPECT_TRUE(port->WaitForLink(absl::Milliseconds(5)).ok());

  Options o = SmallOptions();
  o.link_timeout = absl::Milliseconds(5);
  VirtioNetDeviceModel down(mo);
  EXPECT_EQ(VirtioNetPort::Create(down.MakeTransport(), o).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  // §5.1.4: without VIRTIO_NET_F_STATUS the link is assumed up.
  mo.offer_status = false;
  VirtioNetDeviceModel no_status(mo);
  auto p2 = MustCreate(no_status);
  ASSERT_NE(p2, nullptr);
  EXPECT_TRUE(p2->link_up());
}

}  // namespace
}  // namespace vfdrivers::net::virtio_net
