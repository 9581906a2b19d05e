#include "vfdrivers/net/buffer_pool.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace vfdrivers::net {
namespace {

constexpr uint32_t kSize = 2048, kHeadroom = 64, kCount = 8;
constexpr uint64_t kIova = 0x100000;

class BufferPoolTest : public ::testing::Test {
 protected:
  BufferPoolTest() : area_(size_t{kCount} * kSize) {
    pool_.Init(&owner_, area_.data(), kIova, kCount);
  }
  int owner_ = 0;  // stands for the port: its address is the pool's identity
  std::vector<uint8_t> area_;
  BufferPool<kSize, kHeadroom> pool_;
  PortStats stats_;
};

TEST_F(BufferPoolTest, AllocHandsOutEveryBufferOnceThenCountsFailures) {
  EXPECT_EQ(pool_.count(), kCount);
  EXPECT_EQ(pool_.free_count(), kCount);
  std::vector<PacketBuffer> bufs(kCount + 3);
  EXPECT_EQ(pool_.Alloc(absl::MakeSpan(bufs), &stats_), kCount);
  EXPECT_EQ(stats_.alloc_failed, 3u);
  EXPECT_EQ(pool_.free_count(), 0u);
  std::vector<bool> seen(kCount);
  for (uint32_t i = 0; i < kCount; ++i) {
    const PacketBuffer& p = bufs[i];
    ASSERT_LT(p.index, kCount);
    EXPECT_FALSE(seen[p.index]);
    seen[p.index] = true;
    EXPECT_EQ(p.data, area_.data() + size_t{p.index} * kSize + kHeadroom);
    EXPECT_EQ(p.device_address, kIova + uint64_t{p.index} * kSize + kHeadroom);
    EXPECT_EQ(p.capacity, kSize - kHeadroom);
    EXPECT_EQ(p.length, 0u);
    EXPECT_EQ(p.pool, &owner_);
    EXPECT_TRUE(pool_.CallerHolds(p));
  }
  EXPECT_EQ(bufs[0].index, 0u);  // buffer 0 first out
  EXPECT_EQ(pool_.Free(absl::MakeConstSpan(bufs.data(), kCount), &stats_), kCount);
  EXPECT_EQ(pool_.free_count(), kCount);
  EXPECT_EQ(stats_.bad_buffers, 0u);
}

TEST_F(BufferPoolTest, FreeRefusesForeignStaleDoubleAndOversizedBuffers) {
  PacketBuffer bufs[4];
  ASSERT_EQ(pool_.Alloc(absl::MakeSpan(bufs), &stats_), 4u);
  const uint32_t free_before = pool_.free_count();

  PacketBuffer foreign = bufs[0];
  int other = 0;
  foreign.pool = &other;
  PacketBuffer out_of_range = bufs[0];
  out_of_range.index = kCount;
  PacketBuffer oversized = bufs[1];
  oversized.length = kSize - kHeadroom + 1;
  PacketBuffer outside = bufs[1];
  outside.data = bufs[1].data + kSize;  // points into the next buffer
  PacketBuffer wrong_index = bufs[2];
  wrong_index.index = bufs[3].index;    // data is not inside the buffer it names
  const PacketBuffer bad[] = {foreign, out_of_range, oversized, outside, wrong_index};
  EXPECT_EQ(pool_.Free(bad, &stats_), 0u);
  EXPECT_EQ(stats_.bad_buffers, 5u);
  EXPECT_EQ(pool_.free_count(), free_before);

  // A full-length frame is fine; returning it twice is not.
  bufs[0].length = kSize - kHeadroom;
  EXPECT_EQ(pool_.Free(absl::MakeConstSpan(&bufs[0], 1), &stats_), 1u);
  EXPECT_EQ(pool_.Free(absl::MakeConstSpan(&bufs[0], 1), &stats_), 0u);
  EXPECT_EQ(stats_.bad_buffers, 6u);
  EXPECT_EQ(pool_.free_count(), free_before + 1);

  // Stale: a buffer the driver took (e.g. queued for TX) is no longer the caller's.
  pool_.caller_table()[bufs[1].index] = pool_.kNotCaller;
  EXPECT_FALSE(pool_.CallerHolds(bufs[1]));
  EXPECT_EQ(pool_.Free(absl::MakeConstSpan(&bufs[1], 1), &stats_), 0u);
  EXPECT_EQ(stats_.bad_buffers, 7u);
}

TEST_F(BufferPoolTest, RawStackAccessMatchesPushAndFreeCount) {
  uint32_t* stack = pool_.free_stack();
  EXPECT_EQ(stack[kCount - 1], 0u);  // the top is buffer 0
  const uint32_t b = stack[kCount - 1];
  pool_.set_free_count(kCount - 1);  // a driver posted it to a ring
  EXPECT_EQ(pool_.free_count(), kCount - 1);
  pool_.Push(b);  // and got it back without the caller ever seeing it
  EXPECT_EQ(pool_.free_count(), kCount);
  PacketBuffer p;
  ASSERT_EQ(pool_.Alloc(absl::MakeSpan(&p, 1), &stats_), 1u);
  EXPECT_EQ(p.index, b);
}

TEST_F(BufferPoolTest, PushRingRunReturnsAWrappingRunInRingOrder) {
  pool_.set_free_count(0);  // every buffer posted to a (TX) ring of 6 slots
  const uint32_t ring[6] = {5, 4, 3, 2, 1, 0};
  pool_.PushRingRun(ring, 6, 4, 1);  // no wrap
  EXPECT_EQ(pool_.free_count(), 1u);
  pool_.PushRingRun(ring, 6, 5, 4);  // slot 5, then 0..2 after the wrap
  ASSERT_EQ(pool_.free_count(), 5u);
  const uint32_t* stack = pool_.free_stack();
  EXPECT_EQ(stack[0], 1u);
  EXPECT_EQ(stack[1], 0u);
  EXPECT_EQ(stack[2], 5u);
  EXPECT_EQ(stack[3], 4u);
  EXPECT_EQ(stack[4], 3u);
  pool_.PushRingRun(ring, 6, 3, 0);  // nothing finished
  EXPECT_EQ(pool_.free_count(), 5u);
}

}  // namespace
}  // namespace vfdrivers::net
