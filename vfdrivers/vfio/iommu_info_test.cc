#include "vfdrivers/vfio/iommu_info.h"

#include <linux/vfio.h>

#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vfdrivers::vfio {
namespace {

// Builds VFIO_IOMMU_GET_INFO replies byte by byte, the way the kernel lays them out.
class Reply {
 public:
  explicit Reply(uint32_t flags = VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
                 uint64_t pgsizes = 0x40201000) {
    vfio_iommu_type1_info info = {};
    info.flags = flags;
    info.iova_pgsizes = pgsizes;
    Append(&info, sizeof(info));
    // The kernel rounds the fixed struct to 8 bytes before the first capability.
    Pad();
  }
  size_t AddIovaCap(const std::vector<vfio_iova_range>& ranges, uint16_t version = 1,
                    std::optional<uint32_t> nr_override = std::nullopt) {
    size_t at = bytes_.size();
    vfio_iommu_type1_info_cap_iova_range cap = {};
    cap.header.id = VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE;
    cap.header.version = version;
    cap.nr_iovas = nr_override.has_value() ? *nr_override : static_cast<uint32_t>(ranges.size());
    Append(&cap, sizeof(cap));
    for (const auto& r : ranges) Append(&r, sizeof(r));
    Link(at);
    return at;
  }
  size_t AddUnknownCap(uint16_t id, size_t payload) {
    size_t at = bytes_.size();
    vfio_info_cap_header h = {};
    h.id = id;
    h.version = 1;
    Append(&h, sizeof(h));
    bytes_.resize(bytes_.size() + payload, 0xab);
    Pad();
    Link(at);
    return at;
  }
  void SetNext(size_t cap_at, uint32_t next) {
    std::memcpy(bytes_.data() + cap_at + offsetof(vfio_info_cap_header, next), &next, 4);
  }
  void SetCapOffset(uint32_t off) {
    std::memcpy(bytes_.data() + offsetof(vfio_iommu_type1_info, cap_offset), &off, 4);
  }
  std::vector<uint8_t>& bytes() { return bytes_; }
  absl::StatusOr<IommuInfo> Parse() const { return ParseIommuInfo(bytes_); }

 private:
  void Append(const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  void Pad() { bytes_.resize((bytes_.size() + 7) & ~size_t{7}, 0); }
  void Link(size_t at) {
    if (last_cap_ == 0) {
      SetCapOffset(static_cast<uint32_t>(at));
    } else {
      SetNext(last_cap_, static_cast<uint32_t>(at));
    }
    last_cap_ = at;
  }
  std::vector<uint8_t> bytes_;
  size_t last_cap_ = 0;
};

TEST(IommuInfoTest, ParsesTypicalReply) {
  Reply r;
  r.AddIovaCap({{0, 0xfedfffff}, {0xfef00000, 0xffffffffffff}});
  auto info = r.Parse();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->iova_pgsizes, 0x40201000u);
  EXPECT_TRUE(info->has_iova_ranges);
  EXPECT_EQ(info->iova_ranges,
            (std::vector<IovaRange>{{0, 0xfedfffff}, {0xfef00000, 0xffffffffffff}}));
}

TEST(IommuInfoTest, NoCapsFlagMeansNoRanges) {
  Reply r(VFIO_IOMMU_INFO_PGSIZES);
  auto info = r.Parse();
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->has_iova_ranges);
  EXPECT_EQ(info->iova_pgsizes, 0x40201000u);
}

TEST(IommuInfoTest, NoPgsizesFlagIgnoresField) {
  Reply r(0, 0x1000);
  auto info = r.Parse();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->iova_pgsizes, 0u);
}

TEST(IommuInfoTest, CapsFlagWithEmptyChain) {
  Reply r;  // cap_offset stays 0
  auto info = r.Parse();
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->has_iova_ranges);
}

TEST(IommuInfoTest, SkipsUnknownCapabilities) {
  Reply r;
  r.AddUnknownCap(2, 16);  // e.g. VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
  r.AddIovaCap({{0x1000, 0x1fffff}});
  r.AddUnknownCap(3, 8);
  auto info = r.Parse();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->iova_ranges, (std::vector<IovaRange>{{0x1000, 0x1fffff}}));
}

TEST(IommuInfoTest, ZeroRangesIsValid) {
  Reply r;
  r.AddIovaCap({});
  auto info = r.Parse();
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->has_iova_ranges);
  EXPECT_TRUE(info->iova_ranges.empty());
}

TEST(IommuInfoTest, RejectsShortHeader) {
  std::vector<uint8_t> tiny(sizeof(vfio_iommu_type1_info) - 1, 0);
  EXPECT_EQ(ParseIommuInfo(tiny).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseIommuInfo({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsSelfLoop) {
  Reply r;
  size_t at = r.AddIovaCap({{0, 0xffff}});
  r.SetNext(at, static_cast<uint32_t>(at));
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsBackwardLoop) {
  Reply r;
  size_t first = r.AddUnknownCap(7, 8);
  size_t second = r.AddUnknownCap(8, 8);
  r.SetNext(second, static_cast<uint32_t>(first));
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsCapOverlappingFixedStruct) {
  Reply r;
  r.AddIovaCap({{0, 0xffff}});
  r.SetCapOffset(8);
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsNextInsidePreviousCapsRanges) {
  Reply r;
  size_t at = r.AddIovaCap({{0, 0xffff}, {0x20000, 0x2ffff}});
  r.AddUnknownCap(9, 8);
  // Point next into the middle of the IOVA ranges just parsed.
  r.SetNext(at, static_cast<uint32_t>(at + sizeof(vfio_iommu_type1_info_cap_iova_range) + 16));
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsOutOfBoundsOffsets) {
  for (uint32_t off : {uint32_t{0xffffffff}, uint32_t{0x80000000}, uint32_t{4096}}) {
    Reply r;
    r.SetCapOffset(off);
    EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument) << off;
  }
  Reply r;
  size_t at = r.AddIovaCap({{0, 0xffff}});
  r.SetNext(at, static_cast<uint32_t>(r.bytes().size()));  // exactly at the end
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsMisalignedOffset) {
  Reply r;
  size_t at = r.AddIovaCap({{0, 0xffff}});
  r.bytes().resize(r.bytes().size() + 64, 0);
  r.SetNext(at, static_cast<uint32_t>(r.bytes().size() - 31));
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsTruncatedCapabilityHeader) {
  Reply r;
  r.AddIovaCap({{0, 0xffff}});
  size_t header_end = sizeof(vfio_iommu_type1_info);
  header_end = (header_end + 7) & ~size_t{7};
  r.bytes().resize(header_end + 4);  // half a cap header
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsTruncatedRanges) {
  Reply r;
  r.AddIovaCap({{0, 0xffff}, {0x20000, 0x2ffff}});
  r.bytes().resize(r.bytes().size() - 1);
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsHugeRangeCount) {
  Reply r;
  r.AddIovaCap({{0, 0xffff}}, 1, 0xffffffff);
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
  Reply s;
  s.AddIovaCap({{0, 0xffff}}, 1, 2);
  EXPECT_EQ(s.Parse().status().code(), absl::StatusCode::kInvalidArgument);
  // A count that, multiplied by 16, would wrap 32 bits.
  Reply t;
  t.AddIovaCap({{0, 0xffff}}, 1, 0x10000001);
  EXPECT_EQ(t.Parse().status().code(), absl::StatusCode::kInvalidArgument);
  // A smaller count than the bytes allow is fine: trailing bytes are ignored.
  Reply u;
  u.AddIovaCap({{0, 0xffff}, {0x10000, 0x1ffff}}, 1, 1);
  auto info = u.Parse();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->iova_ranges.size(), 1u);
}

TEST(IommuInfoTest, RejectsInvertedRange) {
  Reply r;
  r.AddIovaCap({{0x2000, 0x1000}});
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, RejectsUnknownVersionAndDuplicates) {
  Reply r;
  r.AddIovaCap({{0, 0xffff}}, 2);
  EXPECT_EQ(r.Parse().status().code(), absl::StatusCode::kInvalidArgument);
  Reply s;
  s.AddIovaCap({{0, 0xffff}});
  s.AddIovaCap({{0, 0xfffff}});
  EXPECT_EQ(s.Parse().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IommuInfoTest, ParsesUnalignedBuffer) {
  Reply r;
  r.AddIovaCap({{0x1000, 0xffff}});
  std::vector<uint8_t> shifted(r.bytes().size() + 1);
  std::memcpy(shifted.data() + 1, r.bytes().data(), r.bytes().size());
  auto info = ParseIommuInfo(absl::MakeConstSpan(shifted).subspan(1));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->iova_ranges, (std::vector<IovaRange>{{0x1000, 0xffff}}));
}

// Random garbage and random corruption of a valid reply: never crash, never read out of
// bounds (run under ASan to see the second half of that), and any ranges returned are sane.
TEST(IommuInfoTest, SurvivesRandomCorruption) {
  Reply base;
  base.AddUnknownCap(5, 24);
  base.AddIovaCap({{0, 0xfedfffff}, {0xfef00000, 0xffffffffffff}, {1, 2}});
  std::mt19937 rng(1234);
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> b = base.bytes();
    int flips = 1 + rng() % 6;
    for (int f = 0; f < flips; ++f) b[rng() % b.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) b.resize(rng() % (b.size() + 1));
    // Copy to an exactly-sized heap buffer so overreads hit the allocation's end.
    std::vector<uint8_t> exact(b.begin(), b.end());
    auto info = ParseIommuInfo(exact);
    if (info.ok()) {
      for (const auto& range : info->iova_ranges) EXPECT_LE(range.start, range.last);
      EXPECT_LE(info->iova_ranges.size(), exact.size() / sizeof(vfio_iova_range));
    }
  }
}

TEST(IommuInfoTest, SmallestIommuPage) {
  EXPECT_EQ(SmallestIommuPage(0), 4096u);
  EXPECT_EQ(SmallestIommuPage(0x40201000), 4096u);
  EXPECT_EQ(SmallestIommuPage(0x10000 | 0x200000), 0x10000u);
  EXPECT_EQ(SmallestIommuPage(0x800), 4096u);  // sub-4K sizes are ignored
  EXPECT_EQ(SmallestIommuPage(~uint64_t{0}), 4096u);
}

}  // namespace
}  // namespace vfdrivers::vfio
