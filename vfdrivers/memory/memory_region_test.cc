#include "vfdrivers/memory/memory_region.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace vfdrivers::memory {
namespace {

long FreeHugePages() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long value = 0;
  while (meminfo >> key >> value) {
    if (key == "HugePages_Free:") return value;
    meminfo.ignore(256, '\n');
  }
  return 0;
}

TEST(MemoryRegionTest, ZeroBytesIsInvalid) {
  EXPECT_EQ(MemoryRegion::Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemoryRegionTest, SmallPagesAreAlignedZeroedAndWritable) {
  absl::StatusOr<MemoryRegion> region =
      MemoryRegion::Allocate(10000, MemoryRegionOptions{HugePages::kNever});
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_FALSE(region->hugepages());
  EXPECT_EQ(region->page_size(), 4096u);
  EXPECT_EQ(region->size(), 12288u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(region->base()) % 4096, 0u);
  auto* bytes = static_cast<unsigned char*>(region->base());
  for (size_t i = 0; i < region->size(); ++i) ASSERT_EQ(bytes[i], 0);
  memset(bytes, 0xab, region->size());
}

TEST(MemoryRegionTest, PreferFallsBackOrGetsHugepages) {
  const bool expect_huge = FreeHugePages() >= 2;
  absl::StatusOr<MemoryRegion> region = MemoryRegion::Allocate(3 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  if (expect_huge) {
    EXPECT_TRUE(region->hugepages());
    EXPECT_EQ(region->size(), size_t{4} << 20);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(region->base()) % (2 << 20), 0u);
  } else {
    // Without free hugepages the kernel refuses MAP_HUGETLB; we must still get memory.
    EXPECT_EQ(region->page_size(), 4096u);
    EXPECT_EQ(region->size(), size_t{3} << 20);
  }
  memset(region->base(), 1, region->size());
}

TEST(MemoryRegionTest, RequireHugepagesFailsCleanlyWithoutThem) {
  if (FreeHugePages() > 0) GTEST_SKIP() << "this machine has free hugepages";
  absl::StatusOr<MemoryRegion> region =
      MemoryRegion::Allocate(1 << 20, MemoryRegionOptions{HugePages::kRequire});
  EXPECT_EQ(region.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(MemoryRegionTest, MoveTransfersOwnership) {
  absl::StatusOr<MemoryRegion> region = MemoryRegion::Allocate(4096);
  ASSERT_TRUE(region.ok());
  void* base = region->base();
  MemoryRegion moved = *std::move(region);
  EXPECT_EQ(moved.base(), base);
  EXPECT_EQ(region->base(), nullptr);  // NOLINT(bugprone-use-after-move): checking the contract
  MemoryRegion assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.base(), base);
  EXPECT_EQ(moved.size(), 0u);  // NOLINT(bugprone-use-after-move)
}

TEST(MemoryRegionTest, ContainsIsOverflowSafe) {
  absl::StatusOr<MemoryRegion> region =
      MemoryRegion::Allocate(8192, MemoryRegionOptions{HugePages::kNever});
  ASSERT_TRUE(region.ok());
  auto* base = static_cast<char*>(region->base());
  EXPECT_TRUE(region->Contains(base, 8192));
  EXPECT_TRUE(region->Contains(base + 4096, 4096));
  EXPECT_FALSE(region->Contains(base + 4096, 4097));
  EXPECT_FALSE(region->Contains(base - 1, 1));
  EXPECT_FALSE(region->Contains(base + 1, SIZE_MAX));
  EXPECT_FALSE(MemoryRegion().Contains(nullptr, 0));
}

TEST(MemoryRegionTest, ChildOfForkDoesNotInheritTheMapping) {
  absl::StatusOr<MemoryRegion> region = MemoryRegion::Allocate(4096);
  ASSERT_TRUE(region.ok());
  volatile char* p = static_cast<char*>(region->base());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    *p = 1;  // MADV_DONTFORK: not mapped in the child, so this faults
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) << status;
}

TEST(BufferPoolTest, RejectsBadShapes) {
  EXPECT_FALSE(BufferPool::Allocate(0, 4).ok());
  EXPECT_FALSE(BufferPool::Allocate(4096, 0).ok());
  EXPECT_FALSE(BufferPool::Allocate(SIZE_MAX / 2, 4).ok());
  absl::StatusOr<MemoryRegion> region =
      MemoryRegion::Allocate(8192, MemoryRegionOptions{HugePages::kNever});
  ASSERT_TRUE(region.ok());
  EXPECT_EQ(BufferPool::Create(*std::move(region), 4096, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BufferPoolTest, GetPutAreDistinctAlignedAndExhaustible) {
  absl::StatusOr<BufferPool> pool = BufferPool::Allocate(4096, 64);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->available(), 64u);
  std::set<void*> seen;
  for (int i = 0; i < 64; ++i) {
    void* b = pool->Get();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 4096, 0u);
    EXPECT_TRUE(pool->region().Contains(b, 4096));
    EXPECT_EQ(pool->Buffer(pool->IndexOf(b)), b);
    EXPECT_TRUE(seen.insert(b).second);
    memset(b, i, 4096);
  }
  EXPECT_EQ(pool->Get(), nullptr);
  EXPECT_EQ(pool->available(), 0u);
  for (void* b : seen) ASSERT_TRUE(pool->Put(b).ok());
  EXPECT_EQ(pool->available(), 64u);
}

TEST(BufferPoolTest, PutRejectsForeignAndDoublePut) {
  absl::StatusOr<BufferPool> pool = BufferPool::Allocate(512, 8);
  ASSERT_TRUE(pool.ok());
  auto* b = static_cast<char*>(pool->Get());
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(pool->Put(b + 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Put(b + 512 * 8).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Put(b - 512).code(), absl::StatusCode::kInvalidArgument);
  int local;
  EXPECT_EQ(pool->Put(&local).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(pool->Put(b).ok());
  EXPECT_EQ(pool->Put(b).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Put(pool->Buffer(7)).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(BufferPoolTest, LifoReuseAndMove) {
  absl::StatusOr<BufferPool> pool = BufferPool::Allocate(4096, 4);
  ASSERT_TRUE(pool.ok());
  void* a = pool->Get();
  EXPECT_EQ(a, pool->Buffer(0));
  ASSERT_TRUE(pool->Put(a).ok());
  EXPECT_EQ(pool->Get(), a);  // most recently freed first: still warm in cache
  BufferPool moved = *std::move(pool);
  EXPECT_EQ(moved.available(), 3u);
  EXPECT_EQ(pool->Get(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(pool->Put(a).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(moved.Put(a).ok());
}

}  // namespace
}  // namespace vfdrivers::memory
