#include "broker/allocator/allocator.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kPage = 4 * kKiB;

// EXPECT that `status` has `code` and a message containing `text`.
#define EXPECT_STATUS(status_expr, expected_code, expected_text)           \
  do {                                                                     \
    const absl::Status status_ = (status_expr);                            \
    EXPECT_EQ(status_.code(), (expected_code)) << status_;                 \
    EXPECT_THAT(std::string(status_.message()), HasSubstr(expected_text)); \
  } while (0)

// =============================================================================================
// ExtentMap

TEST(ExtentMapTest, CapacityIsRoundedDownToAlignment) {
  ExtentMap map(10 * kPage + 100, kPage);
  EXPECT_EQ(map.capacity(), 10 * kPage);
  EXPECT_EQ(map.alignment(), kPage);
  EXPECT_EQ(map.free_bytes(), 10 * kPage);
  EXPECT_EQ(map.largest_free(), 10 * kPage);
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 10 * kPage)));
}

TEST(ExtentMapTest, CapacityBelowAlignmentLeavesNothingToAllocate) {
  ExtentMap map(kPage - 1, kPage);
  EXPECT_EQ(map.capacity(), 0u);
  EXPECT_EQ(map.free_bytes(), 0u);
  EXPECT_EQ(map.largest_free(), 0u);
  EXPECT_THAT(map.FreeRanges(), IsEmpty());
  EXPECT_STATUS(map.Allocate(kPage).status(), absl::StatusCode::kResourceExhausted,
                "no free range of 4096 bytes (largest free: 0)");
}

TEST(ExtentMapTest, ZeroCapacity) {
  ExtentMap map(0, kPage);
  EXPECT_EQ(map.capacity(), 0u);
  EXPECT_STATUS(map.Reserve(0, kPage), absl::StatusCode::kInvalidArgument, "beyond the capacity");
}

TEST(ExtentMapTest, CheckGeometry) {
  EXPECT_TRUE(ExtentMap::CheckGeometry(kMiB, 1).ok());
  EXPECT_TRUE(ExtentMap::CheckGeometry(kMiB, kPage).ok());
  EXPECT_TRUE(ExtentMap::CheckGeometry(0, uint64_t{1} << 63).ok());
  EXPECT_STATUS(ExtentMap::CheckGeometry(kMiB, 0), absl::StatusCode::kInvalidArgument,
                "power of two, got 0");
  EXPECT_STATUS(ExtentMap::CheckGeometry(kMiB, 3000), absl::StatusCode::kInvalidArgument,
                "power of two, got 3000");
  EXPECT_STATUS(ExtentMap::CheckGeometry(kMiB, kMax), absl::StatusCode::kInvalidArgument,
                "power of two");
}

TEST(ExtentMapDeathTest, ConstructorRefusesBadAlignment) {
  EXPECT_DEATH(ExtentMap(kMiB, 3000), "power of two");
  EXPECT_DEATH(ExtentMap(kMiB, 0), "power of two");
}

TEST(ExtentMapTest, AllocateIsFirstFit) {
  ExtentMap map(8 * kPage, kPage);
  EXPECT_EQ(*map.Allocate(kPage), 0u);
  EXPECT_EQ(*map.Allocate(kPage), kPage);
  EXPECT_EQ(*map.Allocate(kPage), 2 * kPage);
  ASSERT_TRUE(map.Free(kPage, kPage).ok());
  // The hole at kPage is too small for two pages: they go after the used part.
  EXPECT_EQ(*map.Allocate(2 * kPage), 3 * kPage);
  // One page fits the hole, the lowest free range.
  EXPECT_EQ(*map.Allocate(kPage), kPage);
  EXPECT_EQ(*map.Allocate(3 * kPage), 5 * kPage);
  EXPECT_EQ(map.free_bytes(), 0u);
  EXPECT_THAT(map.FreeRanges(), IsEmpty());
}

TEST(ExtentMapTest, AllocateReturnsAlignedOffsets) {
  ExtentMap map(64 * kMiB + 12345, kMiB);
  uint64_t total = 0;
  for (uint64_t blocks : {1, 3, 2, 7, 1, 5}) {
    absl::StatusOr<uint64_t> offset = map.Allocate(blocks * kMiB);
    ASSERT_TRUE(offset.ok()) << offset.status();
    EXPECT_EQ(*offset % kMiB, 0u);
    EXPECT_EQ(*offset, total);
    total += blocks * kMiB;
  }
  EXPECT_EQ(map.free_bytes(), 64 * kMiB - total);
}

TEST(ExtentMapTest, AllocateRejectsBadSizes) {
  ExtentMap map(16 * kPage, kPage);
  EXPECT_STATUS(map.Allocate(0).status(), absl::StatusCode::kInvalidArgument,
                "non-zero multiple of the alignment (4096), got 0");
  EXPECT_STATUS(map.Allocate(kPage + 1).status(), absl::StatusCode::kInvalidArgument, "got 4097");
  EXPECT_STATUS(map.Allocate(kMax).status(), absl::StatusCode::kInvalidArgument, "multiple");
  EXPECT_EQ(map.free_bytes(), 16 * kPage);
}

TEST(ExtentMapTest, AllocateExhaustedNamesLargestFree) {
  ExtentMap map(4 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(kPage, kPage).ok());
  ASSERT_TRUE(map.Reserve(3 * kPage, kPage).ok());
  EXPECT_EQ(map.free_bytes(), 2 * kPage);
  EXPECT_EQ(map.largest_free(), kPage);
  EXPECT_STATUS(map.Allocate(2 * kPage).status(), absl::StatusCode::kResourceExhausted,
                "no free range of 8192 bytes (largest free: 4096)");
  // A too-large size that is aligned fails the same way, without arithmetic trouble.
  EXPECT_STATUS(map.Allocate(kMax & ~(kPage - 1)).status(), absl::StatusCode::kResourceExhausted,
                "largest free: 4096");
}

TEST(ExtentMapTest, FreeCoalescesWithNeitherNeighbour) {
  ExtentMap map(5 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(0, 5 * kPage).ok());
  ASSERT_TRUE(map.Free(2 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(2 * kPage, kPage)));
}

TEST(ExtentMapTest, FreeCoalescesWithLeftNeighbour) {
  ExtentMap map(5 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(0, 5 * kPage).ok());
  ASSERT_TRUE(map.Free(kPage, kPage).ok());
  ASSERT_TRUE(map.Free(2 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(kPage, 2 * kPage)));
  EXPECT_EQ(map.largest_free(), 2 * kPage);
}

TEST(ExtentMapTest, FreeCoalescesWithRightNeighbour) {
  ExtentMap map(5 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(0, 5 * kPage).ok());
  ASSERT_TRUE(map.Free(3 * kPage, kPage).ok());
  ASSERT_TRUE(map.Free(2 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(2 * kPage, 2 * kPage)));
}

TEST(ExtentMapTest, FreeCoalescesWithBothNeighbours) {
  ExtentMap map(5 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(0, 5 * kPage).ok());
  ASSERT_TRUE(map.Free(kPage, kPage).ok());
  ASSERT_TRUE(map.Free(3 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(kPage, kPage), Pair(3 * kPage, kPage)));
  ASSERT_TRUE(map.Free(2 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(kPage, 3 * kPage)));
  // And at the edges of the map.
  ASSERT_TRUE(map.Free(0, kPage).ok());
  ASSERT_TRUE(map.Free(4 * kPage, kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 5 * kPage)));
  EXPECT_EQ(map.free_bytes(), 5 * kPage);
}

TEST(ExtentMapTest, FreeCoalescesAcrossAllocations) {
  ExtentMap map(6 * kPage, kPage);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < 6; ++i) offsets.push_back(*map.Allocate(kPage));
  for (uint64_t offset : {offsets[4], offsets[0], offsets[2], offsets[5], offsets[1]}) {
    ASSERT_TRUE(map.Free(offset, kPage).ok());
  }
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 3 * kPage), Pair(4 * kPage, 2 * kPage)));
  ASSERT_TRUE(map.Free(offsets[3], kPage).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 6 * kPage)));
}

TEST(ExtentMapTest, ReserveSplitsFreeRuns) {
  ExtentMap map(10 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(4 * kPage, 2 * kPage).ok());  // middle
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 4 * kPage), Pair(6 * kPage, 4 * kPage)));
  ASSERT_TRUE(map.Reserve(0, kPage).ok());          // start of a run
  ASSERT_TRUE(map.Reserve(9 * kPage, kPage).ok());  // end of a run
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(kPage, 3 * kPage), Pair(6 * kPage, 3 * kPage)));
  ASSERT_TRUE(map.Reserve(kPage, 3 * kPage).ok());  // a whole run
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(6 * kPage, 3 * kPage)));
  EXPECT_EQ(map.free_bytes(), 3 * kPage);
}

TEST(ExtentMapTest, ReserveErrors) {
  ExtentMap map(10 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(4 * kPage, 2 * kPage).ok());
  EXPECT_STATUS(map.Reserve(4 * kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "is not free");
  EXPECT_STATUS(map.Reserve(5 * kPage, kPage), absl::StatusCode::kFailedPrecondition, "not free");
  // Starts free, runs into the used part.
  EXPECT_STATUS(map.Reserve(3 * kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "not free");
  // Starts used, runs into free space.
  EXPECT_STATUS(map.Reserve(5 * kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "not free");
  // Spans a used part between two free runs.
  EXPECT_STATUS(map.Reserve(2 * kPage, 6 * kPage), absl::StatusCode::kFailedPrecondition,
                "not free");
  EXPECT_STATUS(map.Reserve(0, 0), absl::StatusCode::kInvalidArgument, "empty range");
  EXPECT_STATUS(map.Reserve(100, kPage), absl::StatusCode::kInvalidArgument, "multiples of 4096");
  EXPECT_STATUS(map.Reserve(0, 100), absl::StatusCode::kInvalidArgument, "multiples of 4096");
  EXPECT_STATUS(map.Reserve(9 * kPage, 2 * kPage), absl::StatusCode::kInvalidArgument,
                "beyond the capacity of 40960 bytes");
  EXPECT_STATUS(map.Reserve(10 * kPage, kPage), absl::StatusCode::kInvalidArgument, "beyond");
  EXPECT_STATUS(map.Reserve(20 * kPage, kPage), absl::StatusCode::kInvalidArgument, "beyond");
  // offset + size would wrap to a small number: must still be refused.
  const uint64_t top = kMax & ~(kPage - 1);
  EXPECT_STATUS(map.Reserve(top, 2 * kPage), absl::StatusCode::kInvalidArgument, "beyond");
  EXPECT_STATUS(map.Reserve(kPage, top), absl::StatusCode::kInvalidArgument, "beyond");
  // Nothing changed.
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 4 * kPage), Pair(6 * kPage, 4 * kPage)));
  EXPECT_EQ(map.free_bytes(), 8 * kPage);
}

TEST(ExtentMapTest, FreeErrors) {
  ExtentMap map(10 * kPage, kPage);
  ASSERT_TRUE(map.Reserve(2 * kPage, 4 * kPage).ok());  // used: [2, 6) pages
  EXPECT_STATUS(map.Free(0, kPage), absl::StatusCode::kFailedPrecondition, "already partly free");
  EXPECT_STATUS(map.Free(kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "partly free");  // overlaps the free run on the left
  EXPECT_STATUS(map.Free(5 * kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "partly free");  // overlaps the free run on the right
  EXPECT_STATUS(map.Free(0, 10 * kPage), absl::StatusCode::kFailedPrecondition, "partly free");
  EXPECT_STATUS(map.Free(0, 0), absl::StatusCode::kInvalidArgument, "empty range");
  EXPECT_STATUS(map.Free(2 * kPage + 1, kPage), absl::StatusCode::kInvalidArgument, "multiples");
  EXPECT_STATUS(map.Free(2 * kPage, kPage + 1), absl::StatusCode::kInvalidArgument, "multiples");
  EXPECT_STATUS(map.Free(10 * kPage, kPage), absl::StatusCode::kInvalidArgument, "beyond");
  const uint64_t top = kMax & ~(kPage - 1);
  EXPECT_STATUS(map.Free(top, 2 * kPage), absl::StatusCode::kInvalidArgument, "beyond");
  EXPECT_STATUS(map.Free(2 * kPage, top), absl::StatusCode::kInvalidArgument, "beyond");
  EXPECT_EQ(map.free_bytes(), 6 * kPage);

  ASSERT_TRUE(map.Free(3 * kPage, kPage).ok());
  EXPECT_STATUS(map.Free(3 * kPage, kPage), absl::StatusCode::kFailedPrecondition,
                "partly free");  // double free
  EXPECT_STATUS(map.Free(2 * kPage, 2 * kPage), absl::StatusCode::kFailedPrecondition,
                "partly free");
  EXPECT_THAT(map.FreeRanges(),
              ElementsAre(Pair(0, 2 * kPage), Pair(3 * kPage, kPage), Pair(6 * kPage, 4 * kPage)));
}

TEST(ExtentMapTest, LargestFreeFollowsChanges) {
  ExtentMap map(10 * kPage, kPage);
  EXPECT_EQ(map.largest_free(), 10 * kPage);
  ASSERT_TRUE(map.Reserve(3 * kPage, kPage).ok());
  EXPECT_EQ(map.largest_free(), 6 * kPage);
  ASSERT_TRUE(map.Reserve(6 * kPage, kPage).ok());
  EXPECT_EQ(map.largest_free(), 3 * kPage);
  ASSERT_TRUE(map.Free(3 * kPage, kPage).ok());
  EXPECT_EQ(map.largest_free(), 6 * kPage);
  ASSERT_TRUE(map.Reserve(0, 10 * kPage).ok() == false);
  ASSERT_TRUE(map.Reserve(0, 6 * kPage).ok());
  ASSERT_TRUE(map.Reserve(7 * kPage, 3 * kPage).ok());
  EXPECT_EQ(map.largest_free(), 0u);
}

TEST(ExtentMapTest, ByteAlignment) {
  ExtentMap map(10, 1);
  EXPECT_EQ(*map.Allocate(3), 0u);
  EXPECT_EQ(*map.Allocate(7), 3u);
  EXPECT_TRUE(absl::IsResourceExhausted(map.Allocate(1).status()));
  ASSERT_TRUE(map.Free(3, 7).ok());
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(3, 7)));
}

TEST(ExtentMapTest, CapacityAtTheTopOfTheAddressSpace) {
  const uint64_t alignment = uint64_t{1} << 60;
  ExtentMap map(kMax, alignment);
  EXPECT_EQ(map.capacity(), 15 * alignment);
  EXPECT_EQ(*map.Allocate(14 * alignment), 0u);
  EXPECT_EQ(*map.Allocate(alignment), 14 * alignment);
  EXPECT_TRUE(absl::IsResourceExhausted(map.Allocate(alignment).status()));
  ASSERT_TRUE(map.Free(14 * alignment, alignment).ok());
  ASSERT_TRUE(map.Reserve(14 * alignment, alignment).ok());
  EXPECT_STATUS(map.Reserve(14 * alignment, 2 * alignment), absl::StatusCode::kInvalidArgument,
                "beyond");
  EXPECT_STATUS(map.Free(15 * alignment, alignment), absl::StatusCode::kInvalidArgument, "beyond");
  ASSERT_TRUE(map.Free(0, 15 * alignment).ok());
  EXPECT_EQ(map.free_bytes(), 15 * alignment);
  EXPECT_THAT(map.FreeRanges(), ElementsAre(Pair(0, 15 * alignment)));
}

// ---------------------------------------------------------------------------------------------
// Differential test: ExtentMap against a bitmap of alignment-sized blocks, which is too slow
// for real pools but obviously right.

class BitmapModel {
 public:
  BitmapModel(uint64_t capacity, uint64_t alignment)
      : alignment_(alignment), used_(capacity / alignment, false) {}

  uint64_t capacity() const { return used_.size() * alignment_; }

  absl::StatusCode Allocate(uint64_t size, uint64_t* offset) {
    if (size == 0 || size % alignment_ != 0) return absl::StatusCode::kInvalidArgument;
    const uint64_t blocks = size / alignment_;
    if (blocks > used_.size()) return absl::StatusCode::kResourceExhausted;
    for (uint64_t start = 0; start + blocks <= used_.size(); ++start) {
      if (AllAre(start, blocks, false)) {
        Set(start, blocks, true);
        *offset = start * alignment_;
        return absl::StatusCode::kOk;
      }
    }
    return absl::StatusCode::kResourceExhausted;
  }

  absl::StatusCode Reserve(uint64_t offset, uint64_t size) { return Mark(offset, size, true); }
  absl::StatusCode Free(uint64_t offset, uint64_t size) { return Mark(offset, size, false); }

  uint64_t free_bytes() const { return std::count(used_.begin(), used_.end(), false) * alignment_; }

  std::vector<std::pair<uint64_t, uint64_t>> FreeRanges() const {
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    for (uint64_t i = 0; i < used_.size();) {
      if (used_[i]) {
        ++i;
        continue;
      }
      uint64_t j = i;
      while (j < used_.size() && !used_[j]) ++j;
      runs.emplace_back(i * alignment_, (j - i) * alignment_);
      i = j;
    }
    return runs;
  }

  uint64_t largest_free() const {
    uint64_t largest = 0;
    for (const auto& run : FreeRanges()) largest = std::max(largest, run.second);
    return largest;
  }

 private:
  absl::StatusCode Mark(uint64_t offset, uint64_t size, bool used) {
    if (size == 0 || offset % alignment_ != 0 || size % alignment_ != 0) {
      return absl::StatusCode::kInvalidArgument;
    }
    const uint64_t start = offset / alignment_;
    const uint64_t blocks = size / alignment_;
    if (start > used_.size() || blocks > used_.size() - start) {
      return absl::StatusCode::kInvalidArgument;
    }
    if (!AllAre(start, blocks, !used)) return absl::StatusCode::kFailedPrecondition;
    Set(start, blocks, used);
    return absl::StatusCode::kOk;
  }
  bool AllAre(uint64_t start, uint64_t blocks, bool value) const {
    for (uint64_t i = start; i < start + blocks; ++i) {
      if (used_[i] != value) return false;
    }
    return true;
  }
  void Set(uint64_t start, uint64_t blocks, bool value) {
    for (uint64_t i = start; i < start + blocks; ++i) used_[i] = value;
  }

  uint64_t alignment_;
  std::vector<bool> used_;
};

struct DifferentialCase {
  uint64_t capacity;
  uint64_t alignment;
  uint64_t seed;
};

class ExtentMapDifferentialTest : public testing::TestWithParam<DifferentialCase> {};

TEST_P(ExtentMapDifferentialTest, MatchesBitmapModel) {
  const DifferentialCase& param = GetParam();
  ExtentMap map(param.capacity, param.alignment);
  BitmapModel model(param.capacity, param.alignment);
  ASSERT_EQ(map.capacity(), model.capacity());
  const uint64_t a = param.alignment;
  const uint64_t blocks = map.capacity() / a;

  std::mt19937_64 rng(param.seed);
  auto below = [&rng](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  // Mostly well-formed block-multiples, sometimes misaligned, empty or enormous values.
  auto random_size = [&]() -> uint64_t {
    switch (below(20)) {
      case 0:
        return 0;
      case 1:
        return a * (1 + below(4)) + (a > 1 ? 1 + below(a - 1) : 0);
      case 2:
        return kMax - below(3) * a;
      case 3:
        return (kMax / a - below(3)) * a;
      default:
        return a * (1 + below(std::max<uint64_t>(blocks / 4, 1)));
    }
  };
  auto random_offset = [&]() -> uint64_t {
    switch (below(20)) {
      case 0:
        return a > 1 ? a * below(blocks + 2) + 1 : kMax;
      case 1:
        return (kMax / a - below(2)) * a;
      default:
        return a * below(blocks + 2);
    }
  };

  std::vector<std::pair<uint64_t, uint64_t>> granted;  // likely-valid targets for Free
  int ok_ops = 0;
  for (int step = 0; step < 10000; ++step) {
    const uint64_t op = below(10);
    std::string what;
    absl::StatusCode got;
    absl::StatusCode want;
    if (op < 4) {
      const uint64_t size = random_size();
      what = absl::StrCat("Allocate(", size, ")");
      uint64_t model_offset = 0;
      want = model.Allocate(size, &model_offset);
      absl::StatusOr<uint64_t> offset = map.Allocate(size);
      got = offset.status().code();
      if (offset.ok() && want == absl::StatusCode::kOk) {
        ASSERT_EQ(*offset, model_offset) << "step " << step << ": " << what;
        granted.emplace_back(*offset, size);
      }
    } else if (op < 5) {
      const uint64_t offset = random_offset();
      const uint64_t size = random_size();
      what = absl::StrCat("Reserve(", offset, ", ", size, ")");
      want = model.Reserve(offset, size);
      got = map.Reserve(offset, size).code();
      if (want == absl::StatusCode::kOk) granted.emplace_back(offset, size);
    } else {
      uint64_t offset;
      uint64_t size;
      if (op < 8 && !granted.empty()) {
        const size_t pick = below(granted.size());
        std::tie(offset, size) = granted[pick];
        granted.erase(granted.begin() + pick);
      } else {
        offset = random_offset();
        size = random_size();
      }
      what = absl::StrCat("Free(", offset, ", ", size, ")");
      want = model.Free(offset, size);
      got = map.Free(offset, size).code();
    }
    ASSERT_EQ(got, want) << "step " << step << ": " << what;
    if (got == absl::StatusCode::kOk) ++ok_ops;
    ASSERT_EQ(map.free_bytes(), model.free_bytes()) << "step " << step << ": " << what;
    ASSERT_EQ(map.largest_free(), model.largest_free()) << "step " << step << ": " << what;
    ASSERT_EQ(map.FreeRanges(), model.FreeRanges()) << "step " << step << ": " << what;
  }
  // The mix must actually exercise the map, not just bounce off argument checks.
  EXPECT_GT(ok_ops, 2000);
}

INSTANTIATE_TEST_SUITE_P(Geometries, ExtentMapDifferentialTest,
                         testing::Values(DifferentialCase{200 * 8 + 5, 8, 1},
                                         DifferentialCase{300, 1, 2},
                                         DifferentialCase{64 * kPage, kPage, 3},
                                         DifferentialCase{kMax, uint64_t{1} << 58, 4}),
                         [](const testing::TestParamInfo<DifferentialCase>& info) {
                           return absl::StrCat("alignment_", info.param.alignment, "_seed_",
                                               info.param.seed);
                         });

// =============================================================================================
// Policies

TEST(AccessPolicyTest, RootIsAlwaysAdmitted) {
  AccessPolicy nobody;
  EXPECT_TRUE(nobody.Admits(Tenant{0, 0, {}}));
  EXPECT_TRUE(nobody.Admits(Tenant{0, 1234, {5}}));
  EXPECT_FALSE(nobody.Admits(Tenant{1000, 0, {}}));  // gid 0 alone is not root
}

TEST(AccessPolicyTest, ByUidPrimaryGidOrSupplementaryGid) {
  AccessPolicy policy;
  policy.uids = {1000, 1001};
  policy.gids = {100, 27};
  EXPECT_TRUE(policy.Admits(Tenant{1001, 5000, {}}));
  EXPECT_TRUE(policy.Admits(Tenant{2000, 100, {}}));
  EXPECT_TRUE(policy.Admits(Tenant{2000, 2000, {4, 27}}));
  EXPECT_FALSE(policy.Admits(Tenant{2000, 2000, {4, 5}}));
  EXPECT_FALSE(policy.Admits(Tenant{100, 1000, {1001}}));  // ids are not interchangeable
}

TEST(AccessPolicyTest, AnyUser) {
  AccessPolicy policy;
  policy.any_user = true;
  EXPECT_TRUE(policy.Admits(Tenant{65534, 65534, {}}));
}

TEST(QuotaPolicyTest, PerUidOverridesDefault) {
  QuotaPolicy quotas;
  quotas.default_quota = Quota{kMiB, 2};
  quotas.per_uid[1000] = Quota{0, 0};
  quotas.per_uid[1001] = Quota{8 * kMiB, 1};
  EXPECT_EQ(quotas.For(999).max_bytes, kMiB);
  EXPECT_EQ(quotas.For(999).max_leases, 2u);
  EXPECT_EQ(quotas.For(1000).max_bytes, 0u);
  EXPECT_EQ(quotas.For(1001).max_bytes, 8 * kMiB);
  EXPECT_EQ(quotas.For(1001).max_leases, 1u);
}

// =============================================================================================
// Allocator

constexpr uint32_t kUsersGid = 100;
const Tenant kRoot{0, 0, {}};
const Tenant kAlice{1000, 1000, {kUsersGid}};  // in "users"
const Tenant kBob{1001, kUsersGid, {}};        // "users" as primary group
const Tenant kMallory{1002, 1002, {}};         // in no listed group
const Tenant kOperator{1003, 1003, {}};        // listed by uid in "ops"

BlockPoolSpec Pool(std::string name, uint64_t capacity, AccessPolicy access,
                   uint64_t max_extent = 0) {
  BlockPoolSpec spec;
  spec.name = std::move(name);
  spec.capacity_bytes = capacity;
  spec.alignment_bytes = kMiB;
  spec.max_extent_bytes = max_extent;
  spec.access = std::move(access);
  return spec;
}

AccessPolicy Gids(std::vector<uint32_t> gids) {
  AccessPolicy policy;
  policy.gids = std::move(gids);
  return policy;
}

AccessPolicy Uids(std::vector<uint32_t> uids) {
  AccessPolicy policy;
  policy.uids = std::move(uids);
  return policy;
}

AccessPolicy AnyUser() {
  AccessPolicy policy;
  policy.any_user = true;
  return policy;
}

class AllocatorTest : public testing::Test {
 protected:
  static std::vector<BlockPoolSpec> Specs() {
    return {Pool("scratch", 16 * kMiB, Gids({kUsersGid})),
            Pool("open", 8 * kMiB + 12345, AnyUser()), Pool("ops", 4 * kMiB, Uids({kOperator.uid})),
            Pool("capped", 16 * kMiB, AnyUser(), /*max_extent=*/2 * kMiB)};
  }
  static QuotaPolicy Quotas() {
    QuotaPolicy quotas;
    quotas.default_quota = Quota{4 * kMiB, 3};
    quotas.per_uid[kBob.uid] = Quota{0, 0};  // unlimited
    quotas.per_uid[kOperator.uid] = Quota{2 * kMiB, 0};
    return quotas;
  }

  absl::StatusOr<ExtentLeaseRecord> Allocate(const Tenant& tenant, std::string_view pool,
                                             uint64_t size) {
    return allocator_.AllocateExtent(tenant, pool, size, absl::StrCat("lease-", next_id_++));
  }

  Allocator allocator_{Specs(), Quotas()};
  int next_id_ = 0;
};

TEST_F(AllocatorTest, GrantsAndRecordsALease) {
  absl::StatusOr<ExtentLeaseRecord> lease =
      allocator_.AllocateExtent(kAlice, "scratch", 2 * kMiB, "a1");
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->lease_id, "a1");
  EXPECT_EQ(lease->pool, "scratch");
  EXPECT_EQ(lease->owner_uid, kAlice.uid);
  EXPECT_EQ(lease->offset, 0u);
  EXPECT_EQ(lease->size, 2 * kMiB);
  EXPECT_EQ(lease->state, SliceState::kLive);
  const ExtentLeaseRecord* found = allocator_.Find("a1");
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->offset, 0u);
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 2 * kMiB);
  EXPECT_EQ(allocator_.LeasesHeldBy(kAlice.uid), 1u);
  EXPECT_EQ(allocator_.BytesHeldBy(kBob.uid), 0u);
  EXPECT_EQ(allocator_.Find("nope"), nullptr);
}

TEST_F(AllocatorTest, RoundsSizeUpToAlignment) {
  absl::StatusOr<ExtentLeaseRecord> lease = Allocate(kAlice, "scratch", 1);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->size, kMiB);
  lease = Allocate(kAlice, "scratch", kMiB + 1);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->size, 2 * kMiB);
  EXPECT_EQ(lease->offset, kMiB);
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 3 * kMiB);
}

TEST_F(AllocatorTest, UnknownPool) {
  EXPECT_STATUS(Allocate(kRoot, "nope", kMiB).status(), absl::StatusCode::kNotFound,
                "no pool named \"nope\"");
  EXPECT_FALSE(allocator_.PoolExists("nope"));
  EXPECT_TRUE(allocator_.PoolExists("scratch"));
  EXPECT_FALSE(allocator_.Admits(kRoot, "nope"));
}

TEST_F(AllocatorTest, PolicyDecidesWhoMayAllocate) {
  EXPECT_TRUE(Allocate(kAlice, "scratch", kMiB).ok());  // supplementary gid
  EXPECT_TRUE(Allocate(kBob, "scratch", kMiB).ok());    // primary gid
  EXPECT_TRUE(Allocate(kRoot, "scratch", kMiB).ok());   // root, not listed
  EXPECT_STATUS(Allocate(kMallory, "scratch", kMiB).status(), absl::StatusCode::kPermissionDenied,
                "uid 1002 (gid 1002) may not allocate from pool \"scratch\"");
  EXPECT_TRUE(Allocate(kOperator, "ops", kMiB).ok());  // by uid
  EXPECT_STATUS(Allocate(kAlice, "ops", kMiB).status(), absl::StatusCode::kPermissionDenied,
                "pool \"ops\"");
  EXPECT_TRUE(Allocate(kMallory, "open", kMiB).ok());  // any_user
  EXPECT_TRUE(allocator_.Admits(kAlice, "scratch"));
  EXPECT_FALSE(allocator_.Admits(kMallory, "scratch"));
  EXPECT_EQ(allocator_.BytesHeldBy(kMallory.uid), kMiB);  // the refusal charged nothing
}

TEST_F(AllocatorTest, RejectsBadSizes) {
  EXPECT_STATUS(Allocate(kAlice, "scratch", 0).status(), absl::StatusCode::kInvalidArgument,
                "greater than 0");
  EXPECT_STATUS(Allocate(kAlice, "scratch", kMax).status(), absl::StatusCode::kInvalidArgument,
                "too large to round up");
  // The largest size that still rounds without wrapping, and the smallest that would wrap.
  EXPECT_STATUS(Allocate(kAlice, "scratch", kMax - (kMiB - 1)).status(),
                absl::StatusCode::kInvalidArgument, "larger than pool \"scratch\" allows");
  EXPECT_STATUS(Allocate(kAlice, "scratch", kMax - (kMiB - 2)).status(),
                absl::StatusCode::kInvalidArgument, "too large to round up");
  EXPECT_STATUS(Allocate(kRoot, "scratch", 16 * kMiB + 1).status(),
                absl::StatusCode::kInvalidArgument,
                "extent of 17825792 bytes is larger than pool \"scratch\" allows (16777216 bytes)");
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 0u);
  EXPECT_THAT(allocator_.Leases(), IsEmpty());
}

TEST_F(AllocatorTest, MaxExtentBytes) {
  EXPECT_TRUE(Allocate(kBob, "capped", 2 * kMiB).ok());
  EXPECT_TRUE(Allocate(kBob, "capped", 2 * kMiB - 1).ok());  // rounds to exactly the max
  EXPECT_STATUS(Allocate(kBob, "capped", 2 * kMiB + 1).status(), absl::StatusCode::kInvalidArgument,
                "extent of 3145728 bytes is larger than pool \"capped\" allows (2097152 bytes)");
  // Without max_extent_bytes the pool's (rounded-down) capacity is the limit.
  EXPECT_TRUE(Allocate(kBob, "open", 8 * kMiB).ok());
  EXPECT_STATUS(Allocate(kBob, "open", 9 * kMiB).status(), absl::StatusCode::kInvalidArgument,
                "(8388608 bytes)");
}

TEST_F(AllocatorTest, LeaseIds) {
  EXPECT_STATUS(allocator_.AllocateExtent(kAlice, "scratch", kMiB, "").status(),
                absl::StatusCode::kInvalidArgument, "lease id must not be empty");
  ASSERT_TRUE(allocator_.AllocateExtent(kAlice, "scratch", kMiB, "x").ok());
  EXPECT_STATUS(allocator_.AllocateExtent(kBob, "scratch", kMiB, "x").status(),
                absl::StatusCode::kInvalidArgument, "lease id \"x\" is already in use");
  EXPECT_STATUS(allocator_.AllocateExtent(kBob, "open", kMiB, "x").status(),
                absl::StatusCode::kInvalidArgument, "already in use");  // ids are global
  ASSERT_TRUE(allocator_.EndLease("x").ok());
  EXPECT_STATUS(allocator_.AllocateExtent(kBob, "open", kMiB, "x").status(),
                absl::StatusCode::kInvalidArgument, "already in use");  // ending still counts
  ASSERT_TRUE(allocator_.FreeSlice("x").ok());
  EXPECT_TRUE(allocator_.AllocateExtent(kBob, "open", kMiB, "x").ok());  // reusable once gone
  EXPECT_EQ(allocator_.Find("x")->owner_uid, kBob.uid);
}

TEST_F(AllocatorTest, ByteQuota) {
  ASSERT_TRUE(Allocate(kAlice, "scratch", 3 * kMiB).ok());
  ASSERT_TRUE(Allocate(kAlice, "open", kMiB).ok());  // quotas span pools
  EXPECT_STATUS(Allocate(kAlice, "scratch", 1).status(), absl::StatusCode::kResourceExhausted,
                "uid 1000 holds 4194304 bytes; another 1048576 would exceed its quota of 4194304 "
                "bytes");
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 4 * kMiB);
  // Another uid on the default quota is unaffected.
  EXPECT_TRUE(Allocate(kMallory, "open", 4 * kMiB).ok());
}

TEST_F(AllocatorTest, ByteQuotaRefusesOneBigRequest) {
  EXPECT_STATUS(Allocate(kAlice, "scratch", 5 * kMiB).status(),
                absl::StatusCode::kResourceExhausted, "quota of 4194304 bytes");
}

TEST_F(AllocatorTest, LeaseQuota) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Allocate(kAlice, "scratch", kMiB).ok());
  EXPECT_STATUS(Allocate(kAlice, "scratch", kMiB).status(), absl::StatusCode::kResourceExhausted,
                "uid 1000 holds 3 leases, its quota is 3");
  EXPECT_EQ(allocator_.LeasesHeldBy(kAlice.uid), 3u);
}

TEST_F(AllocatorTest, PerUidQuotaOverridesDefault) {
  // Bob's override is unlimited (0, 0): more bytes and leases than the default allows.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Allocate(kBob, "scratch", 2 * kMiB).ok()) << i;
  EXPECT_EQ(allocator_.BytesHeldBy(kBob.uid), 10 * kMiB);
  EXPECT_EQ(allocator_.LeasesHeldBy(kBob.uid), 5u);
  // The operator's override is tighter in bytes, unlimited in leases.
  ASSERT_TRUE(Allocate(kOperator, "ops", kMiB).ok());
  ASSERT_TRUE(Allocate(kOperator, "open", kMiB).ok());
  EXPECT_STATUS(Allocate(kOperator, "ops", kMiB).status(), absl::StatusCode::kResourceExhausted,
                "quota of 2097152 bytes");
}

TEST_F(AllocatorTest, RootHasTheDefaultQuotaUnlessOverridden) {
  ASSERT_TRUE(Allocate(kRoot, "scratch", 4 * kMiB).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(Allocate(kRoot, "scratch", kMiB).status()));
}

TEST_F(AllocatorTest, PoolFull) {
  ASSERT_TRUE(Allocate(kBob, "scratch", 16 * kMiB).ok());
  EXPECT_STATUS(Allocate(kBob, "scratch", kMiB).status(), absl::StatusCode::kResourceExhausted,
                "pool \"scratch\" has no free range of 1048576 bytes (largest free: 0)");
}

TEST_F(AllocatorTest, PoolFragmented) {
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<ExtentLeaseRecord> lease = Allocate(kBob, "scratch", 2 * kMiB);
    ASSERT_TRUE(lease.ok());
    ids.push_back(lease->lease_id);
  }
  ASSERT_TRUE(allocator_.FreeSlice(ids[1]).ok());
  ASSERT_TRUE(allocator_.FreeSlice(ids[5]).ok());
  EXPECT_STATUS(Allocate(kBob, "scratch", 4 * kMiB).status(), absl::StatusCode::kResourceExhausted,
                "pool \"scratch\" has no free range of 4194304 bytes (largest free: 2097152)");
  absl::StatusOr<ExtentLeaseRecord> lease = Allocate(kBob, "scratch", 2 * kMiB);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->offset, 2 * kMiB);  // first fit: the lower hole
}

TEST_F(AllocatorTest, LiveEndingFreed) {
  ASSERT_TRUE(allocator_.AllocateExtent(kAlice, "scratch", 4 * kMiB, "a").ok());
  EXPECT_STATUS(allocator_.AllocateExtent(kAlice, "scratch", kMiB, "b").status(),
                absl::StatusCode::kResourceExhausted, "quota");

  // live -> ending: the quota is given back at once, the range is not.
  ASSERT_TRUE(allocator_.EndLease("a").ok());
  EXPECT_EQ(allocator_.Find("a")->state, SliceState::kEnding);
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 0u);
  EXPECT_EQ(allocator_.LeasesHeldBy(kAlice.uid), 0u);
  EXPECT_EQ(allocator_.Pools()[0].free_bytes, 12 * kMiB);
  absl::StatusOr<ExtentLeaseRecord> b = allocator_.AllocateExtent(kAlice, "scratch", kMiB, "b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->offset, 4 * kMiB);  // not inside the ending lease's range

  EXPECT_STATUS(allocator_.EndLease("a"), absl::StatusCode::kFailedPrecondition,
                "lease \"a\" is already ending");
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), kMiB);  // the second EndLease changed nothing

  // ending -> gone: the range is free again.
  ASSERT_TRUE(allocator_.FreeSlice("a").ok());
  EXPECT_EQ(allocator_.Find("a"), nullptr);
  EXPECT_EQ(allocator_.Pools()[0].free_bytes, 15 * kMiB);
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), kMiB);
  absl::StatusOr<ExtentLeaseRecord> c = allocator_.AllocateExtent(kAlice, "scratch", kMiB, "c");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->offset, 0u);

  EXPECT_STATUS(allocator_.FreeSlice("a"), absl::StatusCode::kNotFound, "no lease \"a\"");
  EXPECT_STATUS(allocator_.EndLease("a"), absl::StatusCode::kNotFound, "no lease \"a\"");
}

TEST_F(AllocatorTest, FreeSliceOfALiveLeaseUnchargesIt) {
  ASSERT_TRUE(allocator_.AllocateExtent(kAlice, "scratch", 2 * kMiB, "a").ok());
  ASSERT_TRUE(allocator_.AllocateExtent(kAlice, "open", kMiB, "b").ok());
  ASSERT_TRUE(allocator_.FreeSlice("a").ok());
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), kMiB);
  EXPECT_EQ(allocator_.LeasesHeldBy(kAlice.uid), 1u);
  EXPECT_EQ(allocator_.Pools()[0].free_bytes, 16 * kMiB);
}

TEST_F(AllocatorTest, PoolsReportsUsageInConfigurationOrder) {
  ASSERT_TRUE(allocator_.AllocateExtent(kBob, "scratch", 2 * kMiB, "a").ok());
  ASSERT_TRUE(allocator_.AllocateExtent(kBob, "scratch", 3 * kMiB, "b").ok());
  ASSERT_TRUE(allocator_.AllocateExtent(kBob, "open", kMiB, "c").ok());
  ASSERT_TRUE(allocator_.EndLease("a").ok());
  std::vector<PoolUsage> pools = allocator_.Pools();
  ASSERT_EQ(pools.size(), 4u);
  EXPECT_EQ(pools[0].name, "scratch");
  EXPECT_EQ(pools[0].capacity_bytes, 16 * kMiB);
  EXPECT_EQ(pools[0].free_bytes, 11 * kMiB);
  EXPECT_EQ(pools[0].largest_free_bytes, 11 * kMiB);
  EXPECT_EQ(pools[0].alignment_bytes, kMiB);
  EXPECT_EQ(pools[0].live_leases, 1u);
  EXPECT_EQ(pools[0].ending_leases, 1u);
  EXPECT_EQ(pools[1].name, "open");
  EXPECT_EQ(pools[1].capacity_bytes, 8 * kMiB);  // 8 MiB + 12345 rounded down
  EXPECT_EQ(pools[1].free_bytes, 7 * kMiB);
  EXPECT_EQ(pools[1].live_leases, 1u);
  EXPECT_EQ(pools[1].ending_leases, 0u);
  EXPECT_EQ(pools[2].name, "ops");
  EXPECT_EQ(pools[3].name, "capped");
  EXPECT_EQ(pools[3].live_leases, 0u);
}

TEST_F(AllocatorTest, LeasesAreSortedById) {
  for (const char* id : {"m", "b", "z", "a"}) {
    ASSERT_TRUE(allocator_.AllocateExtent(kBob, "scratch", kMiB, id).ok());
  }
  std::vector<std::string> ids;
  for (const ExtentLeaseRecord* lease : allocator_.Leases()) ids.push_back(lease->lease_id);
  EXPECT_THAT(ids, ElementsAre("a", "b", "m", "z"));
}

ExtentLeaseRecord Record(std::string id, std::string pool, uint32_t uid, uint64_t offset,
                         uint64_t size, SliceState state = SliceState::kLive) {
  ExtentLeaseRecord record;
  record.lease_id = std::move(id);
  record.pool = std::move(pool);
  record.owner_uid = uid;
  record.offset = offset;
  record.size = size;
  record.state = state;
  return record;
}

TEST_F(AllocatorTest, RestoreLiveAndEndingLeases) {
  ASSERT_TRUE(allocator_.RestoreExtent(Record("a", "scratch", kAlice.uid, 0, 2 * kMiB)).ok());
  ASSERT_TRUE(
      allocator_
          .RestoreExtent(Record("b", "scratch", kAlice.uid, 4 * kMiB, kMiB, SliceState::kEnding))
          .ok());
  // Only the live lease is charged.
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 2 * kMiB);
  EXPECT_EQ(allocator_.LeasesHeldBy(kAlice.uid), 1u);
  EXPECT_EQ(allocator_.Find("b")->state, SliceState::kEnding);
  // Both ranges are in use: new grants go around them.
  EXPECT_EQ(Allocate(kAlice, "scratch", 2 * kMiB)->offset, 2 * kMiB);
  EXPECT_EQ(Allocate(kBob, "scratch", kMiB)->offset, 5 * kMiB);
  // The restored lease goes through the normal life cycle.
  ASSERT_TRUE(allocator_.EndLease("a").ok());
  ASSERT_TRUE(allocator_.FreeSlice("a").ok());
  ASSERT_TRUE(allocator_.FreeSlice("b").ok());
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 2 * kMiB);
  EXPECT_EQ(allocator_.Pools()[0].free_bytes, 13 * kMiB);
}

TEST_F(AllocatorTest, RestoreSkipsPolicyAndQuota) {
  // Mallory is not admitted to "scratch", and 8 MiB is over the default quota: the grant was
  // valid when it was made (the config may have changed since), so it is restored anyway.
  ASSERT_TRUE(allocator_.RestoreExtent(Record("m", "scratch", kMallory.uid, 0, 8 * kMiB)).ok());
  EXPECT_EQ(allocator_.BytesHeldBy(kMallory.uid), 8 * kMiB);
  // But new grants see the over-quota holding.
  EXPECT_STATUS(Allocate(kMallory, "open", kMiB).status(), absl::StatusCode::kResourceExhausted,
                "uid 1002 holds 8388608 bytes");
}

TEST_F(AllocatorTest, RestoreErrors) {
  ASSERT_TRUE(
      allocator_.RestoreExtent(Record("a", "scratch", kAlice.uid, 2 * kMiB, 2 * kMiB)).ok());
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 2 * kMiB, 2 * kMiB)),
                absl::StatusCode::kFailedPrecondition,
                "cannot restore lease \"b\" in pool \"scratch\": range");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, kMiB, 2 * kMiB)),
                absl::StatusCode::kFailedPrecondition, "not free");  // overlaps the start
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 3 * kMiB, 2 * kMiB)),
                absl::StatusCode::kFailedPrecondition, "not free");  // overlaps the end
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 0, 8 * kMiB)),
                absl::StatusCode::kFailedPrecondition, "not free");  // covers it
  EXPECT_STATUS(allocator_.RestoreExtent(Record("a", "scratch", kAlice.uid, 8 * kMiB, kMiB)),
                absl::StatusCode::kFailedPrecondition, "lease \"a\" is already known");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("", "scratch", kAlice.uid, 8 * kMiB, kMiB)),
                absl::StatusCode::kInvalidArgument, "lease id must not be empty");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "gone", kAlice.uid, 0, kMiB)),
                absl::StatusCode::kNotFound, "names pool \"gone\", which is not configured");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 100, kMiB)),
                absl::StatusCode::kInvalidArgument, "multiples of 1048576");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 0, 0)),
                absl::StatusCode::kInvalidArgument, "empty range");
  EXPECT_STATUS(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, 15 * kMiB, 2 * kMiB)),
                absl::StatusCode::kInvalidArgument, "beyond the capacity");
  EXPECT_STATUS(
      allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, kMax & ~(kMiB - 1), 2 * kMiB)),
      absl::StatusCode::kInvalidArgument, "beyond the capacity");
  // Failed restores changed nothing.
  EXPECT_EQ(allocator_.Leases().size(), 1u);
  EXPECT_EQ(allocator_.BytesHeldBy(kAlice.uid), 2 * kMiB);
  EXPECT_EQ(allocator_.Pools()[0].free_bytes, 14 * kMiB);
  // Adjacent ranges are fine.
  EXPECT_TRUE(allocator_.RestoreExtent(Record("b", "scratch", kAlice.uid, kMiB, kMiB)).ok());
  EXPECT_TRUE(allocator_.RestoreExtent(Record("c", "scratch", kAlice.uid, 4 * kMiB, kMiB)).ok());
}

TEST(AllocatorCreateTest, ValidatesSpecs) {
  EXPECT_TRUE(Allocator::Create({Pool("a", kMiB, AnyUser()), Pool("b", kMiB, AnyUser())}, {}).ok());
  EXPECT_TRUE(Allocator::Create({}, {}).ok());
  EXPECT_STATUS(
      Allocator::Create({Pool("a", kMiB, AnyUser()), Pool("a", kMiB, AnyUser())}, {}).status(),
      absl::StatusCode::kInvalidArgument, "pool \"a\" is configured more than once");
  EXPECT_STATUS(
      Allocator::Create({Pool("a", kMiB, AnyUser()), Pool("", kMiB, AnyUser())}, {}).status(),
      absl::StatusCode::kInvalidArgument, "pool #1 has an empty name");
  BlockPoolSpec bad = Pool("odd", kMiB, AnyUser());
  bad.alignment_bytes = 3000;
  EXPECT_STATUS(Allocator::Create({bad}, {}).status(), absl::StatusCode::kInvalidArgument,
                "pool \"odd\": alignment must be a non-zero power of two, got 3000");
}

TEST(AllocatorDeathTest, ConstructorRefusesDuplicatePools) {
  EXPECT_DEATH(Allocator({Pool("a", kMiB, AnyUser()), Pool("a", kMiB, AnyUser())}, {}),
               "more than once");
}

// ---------------------------------------------------------------------------------------------
// Randomized invariants: whatever sequence of grants, ends, frees and refusals happens, live
// leases never overlap, quotas hold, and the books balance.

TEST(AllocatorInvariantTest, RandomOperationsKeepTheBooks) {
  const std::vector<Tenant> tenants = {kRoot, kAlice, kBob, kMallory, kOperator};
  QuotaPolicy quotas;
  quotas.default_quota = Quota{6 * kMiB, 4};
  quotas.per_uid[kBob.uid] = Quota{0, 2};
  quotas.per_uid[kMallory.uid] = Quota{3 * kMiB, 0};
  Allocator allocator(
      {Pool("scratch", 32 * kMiB, Gids({kUsersGid})), Pool("open", 24 * kMiB, AnyUser(), 4 * kMiB)},
      quotas);
  std::mt19937_64 rng(12345);
  auto below = [&rng](uint64_t n) { return rng() % n; };
  int next_id = 0;
  int granted = 0;
  for (int step = 0; step < 5000; ++step) {
    const std::vector<const ExtentLeaseRecord*> leases = allocator.Leases();
    const uint64_t op = below(10);
    if (op < 5 || leases.empty()) {
      const Tenant& tenant = tenants[below(tenants.size())];
      const char* pool = below(2) ? "scratch" : "open";
      const uint64_t size = 1 + below(5 * kMiB);
      if (allocator.AllocateExtent(tenant, pool, size, absl::StrCat("l", next_id++)).ok()) {
        ++granted;
      }
    } else {
      const std::string id = leases[below(leases.size())]->lease_id;
      if (op < 8) {
        const bool was_live = allocator.Find(id)->state == SliceState::kLive;
        EXPECT_EQ(allocator.EndLease(id).ok(), was_live);
      } else {
        ASSERT_TRUE(allocator.FreeSlice(id).ok());
      }
    }

    // Check the books.
    absl::flat_hash_map<uint32_t, std::pair<uint64_t, uint32_t>> live;
    std::map<std::string, uint64_t> used_bytes;
    std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> ranges;
    for (const ExtentLeaseRecord* lease : allocator.Leases()) {
      if (lease->state == SliceState::kLive) {
        live[lease->owner_uid].first += lease->size;
        live[lease->owner_uid].second += 1;
      }
      used_bytes[lease->pool] += lease->size;
      ranges[lease->pool].emplace_back(lease->offset, lease->size);
    }
    for (const Tenant& tenant : tenants) {
      const Quota& quota = quotas.For(tenant.uid);
      ASSERT_EQ(allocator.BytesHeldBy(tenant.uid), live[tenant.uid].first);
      ASSERT_EQ(allocator.LeasesHeldBy(tenant.uid), live[tenant.uid].second);
      if (quota.max_bytes != 0) {
        ASSERT_LE(live[tenant.uid].first, quota.max_bytes);
      }
      if (quota.max_leases != 0) {
        ASSERT_LE(live[tenant.uid].second, quota.max_leases);
      }
    }
    for (const PoolUsage& pool : allocator.Pools()) {
      ASSERT_EQ(pool.free_bytes + used_bytes[pool.name], pool.capacity_bytes) << pool.name;
      auto& pool_ranges = ranges[pool.name];
      std::sort(pool_ranges.begin(), pool_ranges.end());
      for (size_t i = 1; i < pool_ranges.size(); ++i) {
        ASSERT_LE(pool_ranges[i - 1].first + pool_ranges[i - 1].second, pool_ranges[i].first)
            << "overlapping leases in " << pool.name;
      }
    }
  }
  EXPECT_GT(granted, 500);
}

}  // namespace
}  // namespace vfbroker

namespace vfbroker {
namespace {

// NIC pools: leases are slots; only the lease quota counts them.
TEST(AllocatorSlotsTest, SlotsAreLeasesNotBytes) {
  BlockPoolSpec nic;
  nic.name = "nic";
  nic.capacity_bytes = 3;
  nic.alignment_bytes = 1;
  nic.max_extent_bytes = 1;
  nic.slots = true;
  nic.access.any_user = true;
  BlockPoolSpec block;
  block.name = "block";
  block.capacity_bytes = 8 << 20;
  block.access.any_user = true;
  QuotaPolicy quotas;
  quotas.default_quota.max_bytes = 1 << 20;
  quotas.default_quota.max_leases = 3;
  auto allocator = Allocator::Create({nic, block}, quotas);
  ASSERT_TRUE(allocator.ok()) << allocator.status();
  Tenant t{1000, 1000, {}};

  EXPECT_EQ(allocator->AllocateExtent(t, "nic", 1, "x").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator->AllocateSlot(t, "block", "x").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto a = allocator->AllocateSlot(t, "nic", "a");
  auto b = allocator->AllocateSlot(t, "nic", "b");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->offset, 0u);
  EXPECT_EQ(b->offset, 1u);
  EXPECT_EQ(a->size, 1u);
  EXPECT_EQ(allocator->BytesHeldBy(1000), 0u);
  EXPECT_EQ(allocator->LeasesHeldBy(1000), 2u);
  // Bytes quota untouched by slots: a full 1 MiB extent still fits; then the lease quota is used.
  ASSERT_TRUE(allocator->AllocateExtent(t, "block", 1 << 20, "c").ok());
  EXPECT_EQ(allocator->AllocateSlot(t, "nic", "d").status().code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(allocator->EndLease("a").ok());
  EXPECT_EQ(allocator->LeasesHeldBy(1000), 2u);
  // Ending slot still taken: the next slot is 2.
  auto d = allocator->AllocateSlot(t, "nic", "d");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->offset, 2u);
  Tenant u{1001, 1001, {}};
  EXPECT_EQ(allocator->AllocateSlot(u, "nic", "e").status().code(),
            absl::StatusCode::kResourceExhausted);  // all three slots in use
  ASSERT_TRUE(allocator->FreeSlice("a").ok());
  auto e = allocator->AllocateSlot(u, "nic", "e");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->offset, 0u);
  std::vector<PoolUsage> pools = allocator->Pools();
  EXPECT_TRUE(pools[0].slots);
  EXPECT_EQ(pools[0].capacity_bytes, 3u);
  EXPECT_EQ(pools[0].free_bytes, 0u);
  EXPECT_EQ(pools[0].live_leases, 3u);
  // Restored slot leases are charged as leases only.
  auto restored = Allocator::Create({nic}, quotas);
  ASSERT_TRUE(restored.ok());
  ExtentLeaseRecord r{"r", "nic", 7, 1, 1, SliceState::kLive};
  ASSERT_TRUE(restored->RestoreExtent(r).ok());
  EXPECT_EQ(restored->BytesHeldBy(7), 0u);
  EXPECT_EQ(restored->LeasesHeldBy(7), 1u);
  ASSERT_TRUE(restored->EndLease("r").ok());
  EXPECT_EQ(restored->LeasesHeldBy(7), 0u);
}

TEST(AllocatorSlotsTest, SlotPoolGeometryIsChecked) {
  BlockPoolSpec nic;
  nic.name = "nic";
  nic.capacity_bytes = 4;
  nic.alignment_bytes = 4096;
  nic.slots = true;
  EXPECT_EQ(Allocator::Create({nic}, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vfbroker
