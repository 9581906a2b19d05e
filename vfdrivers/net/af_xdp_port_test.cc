// AfXdpPort against rings and a UMEM in plain memory: the test is the kernel, and a hostile
// one (addresses outside the UMEM, chunks it was never given, chunks returned twice, lengths
// that cross a chunk, corrupt ring indices).
#include "vfdrivers/net/af_xdp_port.h"

#include <linux/if_xdp.h>

#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace vfdrivers::net {
namespace {

struct FakeRing {
  uint32_t producer = 0;
  uint32_t consumer = 0;
  uint32_t flags = 0;
  std::vector<uint8_t> descs;
  uint32_t size = 0;
  FakeRing(uint32_t n, size_t entry) : descs(n * entry), size(n) {}
  AfXdpPort::TestRing View() { return {&producer, &consumer, &flags, descs.data()}; }
  uint64_t* Addr(uint32_t i) { return reinterpret_cast<uint64_t*>(descs.data()) + (i & (size - 1)); }
  xdp_desc* Desc(uint32_t i) { return reinterpret_cast<xdp_desc*>(descs.data()) + (i & (size - 1)); }
};

class FakeKernel {
 public:
  explicit FakeKernel(const AfXdpLayout& l)
      : layout(l),
        fill(l.fill_size, 8),
        completion(l.completion_size, 8),
        rx(l.rx_size, sizeof(xdp_desc)),
        tx(l.tx_size, sizeof(xdp_desc)),
        umem(l.umem_bytes()) {}

  AfXdpPort::TestMemory Memory() {
    return {fill.View(), completion.View(), rx.View(), tx.View(), umem.data()};
  }
  // Takes one chunk address from the fill ring.
  bool TakeFill(uint64_t* addr) {
    if (fill.consumer == fill.producer) return false;
    *addr = *fill.Addr(fill.consumer++);
    return true;
  }
  void PostRx(uint64_t addr, uint32_t len, uint32_t options = 0) {
    *rx.Desc(rx.producer) = xdp_desc{addr, len, options};
    ++rx.producer;
  }
  // Receives `payload` into the next fill chunk, the way copy mode lays it out.
  uint64_t Receive(const std::vector<uint8_t>& payload) {
    uint64_t chunk = 0;
    EXPECT_TRUE(TakeFill(&chunk));
    uint64_t addr = chunk + layout.frame_headroom + kXdpPacketHeadroom;
    std::memcpy(umem.data() + addr, payload.data(), payload.size());
    PostRx(addr, static_cast<uint32_t>(payload.size()));
    return addr;
  }
  // Consumes every TX descriptor and completes it.
  std::vector<xdp_desc> SendAll() {
    std::vector<xdp_desc> sent;
    while (tx.consumer != tx.producer) {
      xdp_desc d = *tx.Desc(tx.consumer++);
      sent.push_back(d);
      *completion.Addr(completion.producer++) = d.addr;
    }
    return sent;
  }

  AfXdpLayout layout;
  FakeRing fill, completion, rx, tx;
  std::vector<uint8_t> umem;
};

AfXdpLayout SmallLayout() {
  AfXdpLayout l;
  l.frame_size = 2048;
  l.frame_count = 64;
  l.frame_headroom = 0;
  l.fill_size = 16;
  l.completion_size = 16;
  l.rx_size = 16;
  l.tx_size = 8;
  return l;
}

class AfXdpPortTest : public ::testing::Test {
 protected:
  AfXdpPortTest() : layout(SmallLayout()), kernel(layout) {
    auto p = AfXdpPort::CreateForTesting(kernel.Memory(), layout);
    EXPECT_TRUE(p.ok()) << p.status();
    port = std::move(*p);
  }
  // Every chunk is somewhere: free, posted for RX, in TX, or held by the test.
  void ExpectConserved(size_t held) {
    EXPECT_EQ(port->free_frames() + port->fill_frames() + port->tx_frames() + held,
              layout.frame_count);
  }

  AfXdpLayout layout;
  FakeKernel kernel;
  std::unique_ptr<AfXdpPort> port;
};

TEST_F(AfXdpPortTest, PostsHalfTheChunksForReceive) {
  EXPECT_EQ(kernel.fill.producer, 16u);  // min(fill_size, frames / 2)
  EXPECT_EQ(port->fill_frames(), 16u);
  std::vector<bool> seen(layout.frame_count);
  for (uint32_t i = 0; i < 16; ++i) {
    uint64_t a = *kernel.fill.Addr(i);
    ASSERT_EQ(a % layout.frame_size, 0u);
    ASSERT_LT(a, layout.umem_bytes());
    EXPECT_FALSE(seen[a / layout.frame_size]);
    seen[a / layout.frame_size] = true;
  }
  EXPECT_EQ(port->info().buffer_count, 64u);
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, ReceivesFramesZeroCopyAndRefills) {
  std::vector<uint8_t> a(60, 0xAA), b(1000, 0xBB);
  uint64_t addr_a = kernel.Receive(a);
  uint64_t addr_b = kernel.Receive(b);
  PacketBuffer bufs[8];
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 2u);
  EXPECT_EQ(bufs[0].device_address, addr_a);
  EXPECT_EQ(bufs[0].data, kernel.umem.data() + addr_a);
  EXPECT_EQ(bufs[0].length, 60u);
  EXPECT_EQ(bufs[0].capacity, layout.frame_size - kXdpPacketHeadroom);
  EXPECT_EQ(bufs[1].device_address, addr_b);
  EXPECT_EQ(bufs[1].length, 1000u);
  EXPECT_EQ(std::memcmp(bufs[1].data, b.data(), b.size()), 0);
  EXPECT_EQ(kernel.rx.consumer, 2u);
  EXPECT_EQ(kernel.fill.producer, 18u);  // refilled to the target
  ExpectConserved(2);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 2)), 2u);
  ExpectConserved(0);
  EXPECT_EQ(port->stats().rx_packets, 2u);
  EXPECT_EQ(port->stats().rx_bytes, 1060u);
  EXPECT_EQ(port->stats().bad_descriptors, 0u);
}

TEST_F(AfXdpPortTest, HostileRxDescriptorsAreDroppedNotUsed) {
  uint64_t good_chunk = 0, chunk2 = 0, chunk3 = 0, chunk4 = 0, chunk5 = 0;
  ASSERT_TRUE(kernel.TakeFill(&good_chunk));
  ASSERT_TRUE(kernel.TakeFill(&chunk5));
  ASSERT_TRUE(kernel.TakeFill(&chunk2));
  ASSERT_TRUE(kernel.TakeFill(&chunk3));
  ASSERT_TRUE(kernel.TakeFill(&chunk4));
  const uint64_t never_given = uint64_t{63} * layout.frame_size;  // still in the free stack
  kernel.PostRx(layout.umem_bytes(), 64);                // past the UMEM
  kernel.PostRx(~uint64_t{0} - 10, 64);                  // wraps
  kernel.PostRx(never_given + 256, 64);                  // not given to the kernel
  kernel.PostRx(chunk2 + 2000, 100);                     // crosses the chunk's end
  kernel.PostRx(chunk3 + 256, 0);                        // empty
  kernel.PostRx(chunk4 + 256, 64, /*XDP_PKT_CONTD*/ 1);  // multi-buffer, never enabled
  kernel.PostRx(chunk5 + 256, 64, 0x80000000u);          // an option bit no kernel sets
  kernel.PostRx(good_chunk + 256, 64);                   // the only good one
  kernel.PostRx(good_chunk + 256, 64);                   // same chunk again
  PacketBuffer bufs[16];
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 1u);
  EXPECT_EQ(bufs[0].device_address, good_chunk + 256);
  EXPECT_EQ(port->stats().bad_descriptors, 8u);
  // chunk2..5 were identified as the kernel's and taken back; nothing was lost.
  ExpectConserved(1);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 1)), 1u);
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, CorruptProducerIndexIsBounded) {
  kernel.rx.producer = kernel.rx.consumer + 1000000;  // claims a million frames
  PacketBuffer bufs[64];
  for (int i = 0; i < 100; ++i) port->RxBurst(absl::MakeSpan(bufs));
  // Stale entries (all zero: chunk 0, length 0) were read within the ring and rejected.
  EXPECT_EQ(port->stats().rx_packets, 0u);
  EXPECT_GT(port->stats().bad_descriptors, 0u);
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, TransmitsAndReclaimsWithWakeupOnlyWhenAsked) {
  PacketBuffer bufs[4];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs)), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(bufs[i].capacity, layout.frame_size);
    std::memset(bufs[i].data, i, 100);
    bufs[i].length = 100 + i;
  }
  kernel.tx.flags = 0;  // kernel busy polling: no wakeup needed
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 2)), 2u);
  EXPECT_EQ(port->stats().wakeups, 0u);
  kernel.tx.flags = XDP_RING_NEED_WAKEUP;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs + 2, 2)), 2u);
  EXPECT_EQ(port->stats().wakeups, 1u);
  std::vector<xdp_desc> sent = kernel.SendAll();
  ASSERT_EQ(sent.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(sent[i].addr, bufs[i].device_address);
    EXPECT_EQ(sent[i].len, 100u + i);
  }
  EXPECT_EQ(port->tx_frames(), 4u);
  port->Service();
  EXPECT_EQ(port->tx_frames(), 0u);
  EXPECT_EQ(port->stats().tx_completed, 4u);
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, RxWakesTheKernelOnlyWhenTheFillRingAsksAndNothingCame) {
  PacketBuffer bufs[4];
  EXPECT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 0u);
  EXPECT_EQ(port->stats().wakeups, 0u);
  kernel.fill.flags = XDP_RING_NEED_WAKEUP;
  EXPECT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 0u);
  EXPECT_EQ(port->stats().wakeups, 1u);
  kernel.Receive(std::vector<uint8_t>(64, 2));
  EXPECT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 1u);  // frames came: no system call
  EXPECT_EQ(port->stats().wakeups, 1u);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 1)), 1u);
}

TEST_F(AfXdpPortTest, ServiceKicksOnlyForUnsentDescriptors) {
  PacketBuffer buf;
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(&buf, 1)), 1u);
  buf.length = 64;
  kernel.tx.flags = XDP_RING_NEED_WAKEUP;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(&buf, 1)), 1u);
  EXPECT_EQ(port->stats().wakeups, 1u);
  port->Service();  // still in the TX ring (the kernel sent nothing): kick again
  EXPECT_EQ(port->stats().wakeups, 2u);
  kernel.tx.consumer = kernel.tx.producer;  // consumed, completion pending
  port->Service();
  EXPECT_EQ(port->stats().wakeups, 2u);
  kernel.SendAll();
  port->Service();
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, EchoesAReceivedBuffer) {
  kernel.Receive(std::vector<uint8_t>(80, 1));
  PacketBuffer buf;
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(&buf, 1)), 1u);
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(&buf, 1)), 1u);
  std::vector<xdp_desc> sent = kernel.SendAll();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].addr, buf.device_address);
  port->Service();
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, HostileCompletionsAreDropped) {
  PacketBuffer bufs[2];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs)), 2u);
  bufs[0].length = bufs[1].length = 64;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 1)), 1u);
  auto complete = [&](uint64_t addr) { *kernel.completion.Addr(kernel.completion.producer++) = addr; };
  complete(layout.umem_bytes() + 5);  // outside
  complete(bufs[1].device_address);   // held by the application, never sent
  complete(bufs[0].device_address);   // the real one
  complete(bufs[0].device_address);   // twice
  kernel.tx.consumer = kernel.tx.producer;
  port->Service();
  EXPECT_EQ(port->stats().bad_descriptors, 3u);
  EXPECT_EQ(port->stats().tx_completed, 1u);
  ExpectConserved(1);
  // bufs[1] is still the application's.
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs + 1, 1)), 1u);
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, BadBuffersFromTheCallerAreRefused) {
  PacketBuffer bufs[3];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs)), 3u);
  for (auto& b : bufs) b.length = 64;
  PacketBuffer foreign = bufs[0];
  foreign.pool = &foreign;
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(&foreign, 1)), 0u);
  PacketBuffer too_long = bufs[0];
  too_long.length = layout.frame_size + 1;
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(&too_long, 1)), 0u);
  PacketBuffer moved = bufs[0];
  moved.data += layout.frame_size;  // points into the next chunk
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(&moved, 1)), 0u);
  EXPECT_EQ(kernel.tx.producer, 0u);
  // A burst stops at the first bad buffer; the prefix goes out.
  PacketBuffer burst[3] = {bufs[0], foreign, bufs[1]};
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(burst, 3)), 1u);
  EXPECT_EQ(kernel.tx.producer, 1u);
  // bufs[0] is now the port's: freeing or sending it again is refused.
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 1)), 0u);
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 1)), 0u);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs + 1, 2)), 2u);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs + 1, 2)), 0u);  // double free
  EXPECT_EQ(port->stats().bad_buffers, 8u);
  kernel.SendAll();
  port->Service();
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, FullTxRingLeavesTheRestWithTheCaller) {
  PacketBuffer bufs[12];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs)), 12u);
  for (auto& b : bufs) b.length = 64;
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 12)), 8u);  // tx_size
  EXPECT_EQ(port->stats().tx_ring_full, 4u);
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(bufs + 8, 4)), 0u);
  kernel.SendAll();
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(bufs + 8, 4)), 4u);  // completions reclaimed
  kernel.SendAll();
  port->Service();
  ExpectConserved(0);
}

TEST_F(AfXdpPortTest, AllocDrainsThePoolThenFails) {
  std::vector<PacketBuffer> bufs(64);
  size_t n = port->AllocBurst(absl::MakeSpan(bufs));
  EXPECT_EQ(n, 48u);  // 16 are posted for receive
  EXPECT_EQ(port->stats().alloc_failed, 16u);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs.data(), n)), n);
  ExpectConserved(0);
}

// The fast path walks each ring in at most two runs (up to the ring's end, then from slot 0).
// Bursts of 1..7 frames echoed round after round put every ring's wrap point at every position
// of a burst: each frame must come out of RxBurst, and go to the TX ring, in order and intact.
TEST_F(AfXdpPortTest, BurstsAcrossEveryRingEndKeepOrderAndChunks) {
  uint32_t seq = 0;
  for (int round = 0; round < 120; ++round) {
    const uint32_t k = 1 + round % 7;
    std::vector<uint64_t> posted;
    for (uint32_t i = 0; i < k; ++i, ++seq) {
      posted.push_back(kernel.Receive(std::vector<uint8_t>(60 + seq % 50, uint8_t(seq))));
    }
    PacketBuffer bufs[8];
    ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), k) << "round " << round;
    for (uint32_t i = 0; i < k; ++i) {
      const uint32_t s = seq - k + i;
      ASSERT_EQ(bufs[i].device_address, posted[i]) << "round " << round << " frame " << i;
      ASSERT_EQ(bufs[i].data, kernel.umem.data() + posted[i]);
      ASSERT_EQ(bufs[i].length, 60 + s % 50);
      ASSERT_EQ(bufs[i].index, posted[i] / layout.frame_size);
      ASSERT_EQ(bufs[i].capacity, layout.frame_size - kXdpPacketHeadroom);
      ASSERT_EQ(bufs[i].data[0], uint8_t(s));
    }
    ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, k)), k) << "round " << round;
    std::vector<xdp_desc> sent = kernel.SendAll();
    ASSERT_EQ(sent.size(), k);
    for (uint32_t i = 0; i < k; ++i) {
      EXPECT_EQ(sent[i].addr, posted[i]);
      EXPECT_EQ(sent[i].len, 60 + (seq - k + i) % 50);
      EXPECT_EQ(sent[i].options, 0u);
    }
    ExpectConserved(0);
  }
  port->Service();  // the last round's completions
  // Every ring went round many times.
  EXPECT_GT(kernel.rx.producer, 20 * layout.rx_size);
  EXPECT_GT(kernel.tx.producer, 20 * layout.tx_size);
  EXPECT_GT(kernel.fill.producer, 20 * layout.fill_size);
  EXPECT_GT(kernel.completion.producer, 20 * layout.completion_size);
  EXPECT_EQ(port->stats().rx_packets, seq);
  EXPECT_EQ(port->stats().tx_completed, seq);
  EXPECT_EQ(port->stats().bad_descriptors, 0u);
  EXPECT_EQ(port->stats().bad_buffers, 0u);
}

// Hostile RX descriptors on both sides of the ring's end, between good ones: each is dropped
// (counted) and the burst goes on with the next, in the second run as in the first.
TEST_F(AfXdpPortTest, HostileRxDescriptorsAcrossTheRingEnd) {
  // Move the RX ring to slot 13 of 16.
  PacketBuffer bufs[16];
  for (int i = 0; i < 13; ++i) kernel.Receive(std::vector<uint8_t>(64, 1));
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 13u);
  ASSERT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 13)), 13u);
  ASSERT_EQ(kernel.rx.consumer % layout.rx_size, 13u);
  uint64_t c[4];
  for (uint64_t& a : c) ASSERT_TRUE(kernel.TakeFill(&a));
  kernel.PostRx(c[0] + 256, 64);                 // slot 13: good
  kernel.PostRx(layout.umem_bytes() + 256, 64);  // slot 14: outside the UMEM
  kernel.PostRx(c[1] + 256, 0);                  // slot 15: empty (chunk taken back)
  kernel.PostRx(c[2] + 256, 65);                 // slot 0: good
  kernel.PostRx(c[0] + 256, 64);                 // slot 1: c[0] again
  kernel.PostRx(c[3] + 2047, 2);                 // slot 2: crosses the chunk's end
  kernel.PostRx(c[3] + 256, 66);                 // slot 3: c[3] was taken back: not given now
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 2u);
  EXPECT_EQ(bufs[0].device_address, c[0] + 256);
  EXPECT_EQ(bufs[0].length, 64u);
  EXPECT_EQ(bufs[1].device_address, c[2] + 256);
  EXPECT_EQ(bufs[1].length, 65u);
  EXPECT_EQ(port->stats().bad_descriptors, 5u);
  EXPECT_EQ(kernel.rx.consumer, kernel.rx.producer);
  ExpectConserved(2);
  ASSERT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 2)), 2u);
  ExpectConserved(0);
}

// A bad buffer stops a TX burst also when it lies past the ring's end (the frames before it,
// on both sides of the end, go out), and one in the first run keeps the second from starting.
TEST_F(AfXdpPortTest, BadBufferStopsATxBurstOnEitherSideOfTheRingEnd) {
  PacketBuffer bufs[6];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs)), 6u);
  for (auto& b : bufs) b.length = 64;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 6)), 6u);  // TX ring now at slot 6 of 8
  kernel.SendAll();
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs, 6)), 6u);
  for (auto& b : bufs) b.length = 100;
  PacketBuffer burst[5] = {bufs[0], bufs[1], bufs[2], bufs[3], bufs[4]};
  burst[3].length = layout.frame_size + 1;  // slot 1, in the second run
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(burst, 5)), 3u);
  EXPECT_EQ(kernel.tx.producer, 9u);
  std::vector<xdp_desc> sent = kernel.SendAll();
  ASSERT_EQ(sent.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(sent[i].addr, bufs[i].device_address);
  // TX ring at slot 1; make it 7, then a bad buffer in slot 7 keeps slot 0 unwritten.
  PacketBuffer more[6];
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(more)), 6u);
  for (auto& b : more) b.length = 64;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(more, 6)), 6u);
  kernel.SendAll();
  PacketBuffer burst2[2] = {bufs[3], bufs[4]};
  burst2[0].pool = nullptr;
  EXPECT_EQ(port->TxBurst(absl::MakeConstSpan(burst2, 2)), 0u);
  EXPECT_EQ(kernel.tx.producer, 15u);
  EXPECT_EQ(port->stats().bad_buffers, 2u);
  EXPECT_EQ(port->stats().tx_ring_full, 0u);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs + 3, 3)), 3u);
  port->Service();
  ExpectConserved(0);
}

// Hostile completions on both sides of the completion ring's end, between good ones.
TEST_F(AfXdpPortTest, HostileCompletionsAcrossTheRingEnd) {
  PacketBuffer bufs[8];
  auto complete = [&](uint64_t addr) {
    *kernel.completion.Addr(kernel.completion.producer++) = addr;
  };
  // Completion ring to slot 14 of 16.
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs, 7)), 7u);
    for (int i = 0; i < 7; ++i) bufs[i].length = 64;
    ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 7)), 7u);
    kernel.SendAll();
    port->Service();
  }
  ASSERT_EQ(kernel.completion.consumer % layout.completion_size, 14u);
  ASSERT_EQ(port->AllocBurst(absl::MakeSpan(bufs, 4)), 4u);
  for (int i = 0; i < 4; ++i) bufs[i].length = 64;
  ASSERT_EQ(port->TxBurst(absl::MakeConstSpan(bufs, 3)), 3u);  // bufs[3] stays the app's
  kernel.tx.consumer = kernel.tx.producer;
  complete(bufs[0].device_address);   // slot 14: good
  complete(layout.umem_bytes());      // slot 15: outside
  complete(bufs[1].device_address);   // slot 0: good
  complete(bufs[3].device_address);   // slot 1: never sent
  complete(bufs[0].device_address);   // slot 2: twice
  complete(bufs[2].device_address);   // slot 3: good
  port->Service();
  EXPECT_EQ(port->stats().bad_descriptors, 3u);
  EXPECT_EQ(port->stats().tx_completed, 14u + 3u);
  EXPECT_EQ(port->tx_frames(), 0u);
  ExpectConserved(1);
  EXPECT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs + 3, 1)), 1u);
  ExpectConserved(0);
}

// The kernel publishes its fill-ring consumer index lazily: chunks can come back on the RX ring
// while their fill entries still count as unconsumed. The port then posts only what the fill
// ring has room for, never overwriting an entry the kernel has not consumed, and posts the rest
// when room appears, also across the ring's end.
TEST_F(AfXdpPortTest, RefillPostsOnlyWhatTheFillRingHasRoomFor) {
  ASSERT_EQ(kernel.fill.producer, 16u);  // full: 16 of 16
  auto receive_unpublished = [&](uint32_t k) {
    // Take k entries without publishing the consumer index.
    for (uint32_t i = 0; i < k; ++i) {
      const uint64_t chunk = *kernel.fill.Addr(kernel.fill.consumer + i);
      kernel.PostRx(chunk + 256, 64);
    }
  };
  PacketBuffer bufs[16];
  receive_unpublished(5);
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 5u);
  EXPECT_EQ(kernel.fill.producer, 16u);  // no room: nothing posted, nothing overwritten
  EXPECT_EQ(port->fill_frames(), 11u);
  kernel.fill.consumer += 3;  // published: room for 3
  port->Service();
  EXPECT_EQ(kernel.fill.producer, 19u);
  EXPECT_EQ(port->fill_frames(), 14u);
  kernel.fill.consumer += 2;
  port->Service();
  EXPECT_EQ(kernel.fill.producer, 21u);
  EXPECT_EQ(port->fill_frames(), 16u);
  ASSERT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 5)), 5u);
  // Fill ring at slot 5: take 13 more, publish 6 (slots 5..10 refilled), then 7 more: that
  // refill covers slots 11..15 and 0..1, across the ring's end.
  receive_unpublished(13);
  kernel.fill.consumer += 6;
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 13u);
  EXPECT_EQ(kernel.fill.producer, 27u);
  kernel.fill.consumer += 7;
  ASSERT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 13)), 13u);
  port->Service();
  EXPECT_EQ(kernel.fill.producer, 34u);
  EXPECT_EQ(port->fill_frames(), 16u);
  // The 16 entries now in the ring are 16 distinct chunks the port gave the kernel: receiving
  // into every one of them is accepted.
  std::vector<bool> seen(layout.frame_count);
  for (uint32_t i = kernel.fill.consumer; i != kernel.fill.producer; ++i) {
    const uint64_t a = *kernel.fill.Addr(i);
    ASSERT_EQ(a % layout.frame_size, 0u);
    ASSERT_LT(a, layout.umem_bytes());
    EXPECT_FALSE(seen[a / layout.frame_size]);
    seen[a / layout.frame_size] = true;
  }
  for (int i = 0; i < 16; ++i) kernel.Receive(std::vector<uint8_t>(64, 3));
  ASSERT_EQ(port->RxBurst(absl::MakeSpan(bufs)), 16u);
  EXPECT_EQ(port->stats().bad_descriptors, 0u);
  ASSERT_EQ(port->FreeBurst(absl::MakeConstSpan(bufs, 16)), 16u);
  ExpectConserved(0);
}

TEST(AfXdpLayoutTest, RejectsBadLayouts) {
  AfXdpLayout l = SmallLayout();
  EXPECT_TRUE(ValidateAfXdpLayout(l).ok());
  l.frame_size = 3000;
  EXPECT_FALSE(ValidateAfXdpLayout(l).ok());
  l = SmallLayout();
  l.rx_size = 12;
  EXPECT_FALSE(ValidateAfXdpLayout(l).ok());
  l = SmallLayout();
  l.completion_size = 4;
  EXPECT_FALSE(ValidateAfXdpLayout(l).ok());
  l = SmallLayout();
  l.frame_headroom = 2000;
  EXPECT_FALSE(ValidateAfXdpLayout(l).ok());
}

}  // namespace
}  // namespace vfdrivers::net
