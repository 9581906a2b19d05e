// The admin-command builders and the parsers of Identify replies, fed hostile and short data.
#include "broker/backends/nvme_admin.h"

#include <vector>

#include "gtest/gtest.h"

namespace vfbroker::nvme_admin {
namespace {

std::vector<uint8_t> Page() { return std::vector<uint8_t>(kIdentifyBytes, 0); }
void Put16(std::vector<uint8_t>& d, size_t at, uint16_t v) {
  d[at] = v & 0xff;
  d[at + 1] = v >> 8;
}
void Put32(std::vector<uint8_t>& d, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) d[at + i] = (v >> (8 * i)) & 0xff;
}
void Put64(std::vector<uint8_t>& d, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) d[at + i] = (v >> (8 * i)) & 0xff;
}

TEST(NvmeAdminTest, CommandEncodings) {
  Command id = Identify(kCnsSecondaryList, 0, 7);
  EXPECT_EQ(id.opcode, 0x06);
  EXPECT_EQ(id.cdw10, 0x15u | 7u << 16);
  Command virt = VirtualizationManagement(VirtAction::kSecondaryAssign, VirtResource::kVi, 3, 1);
  EXPECT_EQ(virt.opcode, 0x1c);
  EXPECT_EQ(virt.cdw10, 8u | 1u << 8 | 3u << 16);
  EXPECT_EQ(virt.cdw11, 1u);
  Command detach = NamespaceAttachment(4, true);
  EXPECT_EQ(detach.opcode, 0x15);
  EXPECT_EQ(detach.nsid, 4u);
  EXPECT_EQ(detach.cdw10, 1u);
  std::vector<uint8_t> list = Page();
  const uint16_t ids[] = {0x102};
  ControllerListData(ids, absl::MakeSpan(list));
  EXPECT_EQ(list[0], 1);
  EXPECT_EQ(list[1], 0);
  EXPECT_EQ(list[2], 0x02);
  EXPECT_EQ(list[3], 0x01);
}

TEST(NvmeAdminTest, ShortRepliesAreRefused) {
  std::vector<uint8_t> short_page(100, 0);
  EXPECT_EQ(ParsePrimaryCapabilities(short_page).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSecondaryList(short_page).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseControllerList(short_page).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseAllocatedNamespace({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NvmeAdminTest, PrimaryCapabilities) {
  std::vector<uint8_t> d = Page();
  Put16(d, 0, 0x41);
  Put32(d, 32, 4);
  Put16(d, 40, 4);
  Put16(d, 44, 2);
  Put32(d, 64, 2);
  Put16(d, 72, 2);
  Put16(d, 76, 1);
  absl::StatusOr<PrimaryCapabilities> caps = ParsePrimaryCapabilities(d);
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_EQ(caps->cntlid, 0x41);
  EXPECT_EQ(caps->vq_flexible_total, 4u);
  EXPECT_EQ(caps->vq_flexible_primary, 4);
  EXPECT_EQ(caps->vq_secondary_max, 2);
  EXPECT_EQ(caps->vi_flexible_total, 2u);
  EXPECT_EQ(caps->vi_flexible_primary, 2);
  EXPECT_EQ(caps->vi_secondary_max, 1);
  Put16(d, 0, 0xfff5);
  EXPECT_EQ(ParsePrimaryCapabilities(d).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(NvmeAdminTest, SecondaryListIsBoundedByTheStructure) {
  std::vector<uint8_t> d = Page();
  d[0] = 2;
  Put16(d, 32, 2);
  d[36] = 1;
  Put16(d, 40, 1);
  Put16(d, 42, 2);
  Put16(d, 44, 1);
  Put16(d, 64, 3);
  Put16(d, 72, 2);
  absl::StatusOr<std::vector<SecondaryController>> list = ParseSecondaryList(d);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].scid, 2);
  EXPECT_TRUE((*list)[0].online);
  EXPECT_EQ((*list)[0].vfn, 1);
  EXPECT_EQ((*list)[0].nvq, 2);
  EXPECT_EQ((*list)[1].scid, 3);
  EXPECT_FALSE((*list)[1].online);
  EXPECT_EQ((*list)[1].vfn, 2);
  d[0] = 128;  // 32 + 128 * 32 > 4096: impossible
  EXPECT_EQ(ParseSecondaryList(d).status().code(), absl::StatusCode::kFailedPrecondition);
  d[0] = 255;
  EXPECT_EQ(ParseSecondaryList(d).status().code(), absl::StatusCode::kFailedPrecondition);
  d[0] = 127;  // the most that fits: parsed, every read inside the page
  EXPECT_EQ(ParseSecondaryList(d)->size(), 127u);
}

TEST(NvmeAdminTest, ControllerListIsBoundedByTheStructure) {
  std::vector<uint8_t> d = Page();
  Put16(d, 0, 2);
  Put16(d, 2, 2);
  Put16(d, 4, 9);
  EXPECT_EQ(*ParseControllerList(d), (std::vector<uint16_t>{2, 9}));
  Put16(d, 0, 2048);
  EXPECT_EQ(ParseControllerList(d).status().code(), absl::StatusCode::kFailedPrecondition);
  Put16(d, 0, 0xffff);
  EXPECT_EQ(ParseControllerList(d).status().code(), absl::StatusCode::kFailedPrecondition);
  Put16(d, 0, 2047);
  EXPECT_EQ(ParseControllerList(d)->size(), 2047u);
}

std::vector<uint8_t> Namespace(uint64_t blocks, uint8_t lbads, uint8_t nlbaf = 0,
                               uint8_t flbas = 0, uint8_t nmic = 0) {
  std::vector<uint8_t> d = Page();
  Put64(d, 0, blocks);
  d[25] = nlbaf;
  d[26] = flbas;
  d[30] = nmic;
  for (int i = 0; i <= nlbaf && i < 64; ++i) d[128 + 4 * i + 2] = lbads;
  return d;
}

TEST(NvmeAdminTest, AllocatedNamespace) {
  absl::StatusOr<NamespaceFacts> ns = ParseAllocatedNamespace(Namespace(131072, 9));
  ASSERT_TRUE(ns.ok()) << ns.status();
  EXPECT_TRUE(ns->allocated);
  EXPECT_EQ(ns->block_size, 512u);
  EXPECT_EQ(ns->bytes, 64u << 20);
  EXPECT_FALSE(ns->may_be_shared);
  EXPECT_TRUE(ParseAllocatedNamespace(Namespace(16, 12, 0, 0, 1))->may_be_shared);
  // All zeroes: not allocated (what a controller answers for a free NSID).
  absl::StatusOr<NamespaceFacts> none = ParseAllocatedNamespace(Page());
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->allocated);
}

TEST(NvmeAdminTest, HostileNamespaceDataIsRefused) {
  // Format index beyond NLBAF.
  EXPECT_EQ(ParseAllocatedNamespace(Namespace(8, 9, 0, 3)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Index from the upper FLBAS bits beyond NLBAF too.
  EXPECT_EQ(ParseAllocatedNamespace(Namespace(8, 9, 15, 0x60)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Block sizes a controller cannot mean.
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(8, 0)).ok());
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(8, 8)).ok());
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(8, 63)).ok());
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(8, 255)).ok());
  // A size whose byte count overflows.
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(~uint64_t{0}, 12)).ok());
  EXPECT_FALSE(ParseAllocatedNamespace(Namespace(uint64_t{1} << 60, 12)).ok());
  // NLBAF 255 with the last index: every read stays inside the page.
  EXPECT_TRUE(ParseAllocatedNamespace(Namespace(8, 12, 255, 0x6f)).ok());
}

}  // namespace
}  // namespace vfbroker::nvme_admin
