#include "vfdrivers/vfio/mmio_region.h"

#include <sys/mman.h>
#include <unistd.h>

#include "common/unique_fd.h"
#include "gtest/gtest.h"

namespace vfdrivers::vfio {
namespace {

using vfbroker::UniqueFd;

// A memfd stands in for a BAR: MAP_SHARED, so a second mapping sees the stores.
class MmioRegionTest : public ::testing::Test {
 protected:
  static constexpr size_t kSize = 3 * 4096;
  void SetUp() override {
    fd_ = UniqueFd(memfd_create("fake_bar", MFD_CLOEXEC));
    ASSERT_TRUE(fd_.valid());
    ASSERT_EQ(ftruncate(fd_.get(), 4 * 4096), 0);
    // The "BAR" starts one page into the file, as a VFIO region's offset would.
    auto r = MmioRegion::Map(fd_.get(), 4096, kSize);
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = *std::move(r);
  }
  UniqueFd fd_;
  MmioRegion region_;
};

TEST_F(MmioRegionTest, ReadsAndWritesEveryWidth) {
  EXPECT_EQ(region_.size(), kSize);
  ASSERT_TRUE(region_.Write32(0x10, 0xdeadbeef).ok());
  EXPECT_EQ(*region_.Read32(0x10), 0xdeadbeefu);
  EXPECT_EQ(*region_.Read16(0x10), 0xbeefu);
  EXPECT_EQ(*region_.Read8(0x13), 0xdeu);
  ASSERT_TRUE(region_.Write64(0x18, 0x0123456789abcdefULL).ok());
  EXPECT_EQ(*region_.Read64(0x18), 0x0123456789abcdefULL);
  ASSERT_TRUE(region_.Write16(0x20, 0x5a5a).ok());
  ASSERT_TRUE(region_.Write8(0x22, 0x77).ok());
  EXPECT_EQ(*region_.Read32(0x20), 0x00775a5au);
  // The store went to the file at offset 4096 + 0x10.
  uint32_t on_file = 0;
  ASSERT_EQ(pread(fd_.get(), &on_file, 4, 4096 + 0x10), 4);
  EXPECT_EQ(on_file, 0xdeadbeefu);
}

TEST_F(MmioRegionTest, LastValidOffsets) {
  EXPECT_TRUE(region_.Write32(kSize - 4, 1).ok());
  EXPECT_TRUE(region_.Read64(kSize - 8).ok());
  EXPECT_TRUE(region_.Read8(kSize - 1).ok());
}

TEST_F(MmioRegionTest, RejectsOutOfBounds) {
  EXPECT_EQ(region_.Read32(kSize).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Read64(kSize - 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region_.Read64(kSize).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Write32(kSize, 0).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Write64(kSize, 0).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Read8(kSize).status().code(), absl::StatusCode::kOutOfRange);
  // Offsets that would wrap a naive `offset + width <= size` check.
  EXPECT_EQ(region_.Read32(UINT64_MAX - 3).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Write64(UINT64_MAX - 7, 0).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Read16(UINT64_MAX - 1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_.Register32(kSize).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(MmioRegionTest, RejectsMisaligned) {
  EXPECT_EQ(region_.Read32(2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region_.Write32(1, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region_.Read64(4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region_.Write16(3, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(region_.Register32(6).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(MmioRegionTest, Register32PointsIntoTheRegion) {
  auto reg = region_.Register32(0x100);
  ASSERT_TRUE(reg.ok());
  **reg = 42;
  EXPECT_EQ(*region_.Read32(0x100), 42u);
}

TEST_F(MmioRegionTest, MoveLeavesSourceUnmapped) {
  MmioRegion moved = std::move(region_);
  EXPECT_TRUE(moved.mapped());
  EXPECT_FALSE(region_.mapped());  // NOLINT(bugprone-use-after-move): checking moved-from state
  EXPECT_EQ(region_.Read32(0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(moved.Write32(0, 7).ok());
}

TEST(MmioRegionMapTest, RejectsBadArguments) {
  UniqueFd fd(memfd_create("fake_bar", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(fd.get(), 8192), 0);
  EXPECT_EQ(MmioRegion::Map(fd.get(), 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MmioRegion::Map(fd.get(), 100, 4096).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MmioRegion::Map(fd.get(), -4096, 4096).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_fd = MmioRegion::Map(-1, 0, 4096);
  EXPECT_FALSE(bad_fd.ok());
  EXPECT_NE(bad_fd.status().message().find("mmap"), absl::string_view::npos);
}

TEST(MmioRegionMapTest, DefaultIsUnmapped) {
  MmioRegion r;
  EXPECT_FALSE(r.mapped());
  EXPECT_EQ(r.Read8(0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.Write64(0, 0).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace vfdrivers::vfio
