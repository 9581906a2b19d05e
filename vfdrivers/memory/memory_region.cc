#include "vfdrivers/memory/memory_region.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vfdrivers::memory {
namespace {

// Explicit size so that a system whose default hugepage size is 1 GiB still gives 2 MiB pages.
constexpr int kMapHuge2Mb = 21 << MAP_HUGE_SHIFT;

bool RoundUp(size_t bytes, size_t page, size_t* out) {
  if (bytes > SIZE_MAX - (page - 1)) return false;
  *out = (bytes + page - 1) & ~(page - 1);
  return true;
}

void* Map(size_t size, int extra_flags) {
  // MAP_POPULATE prefaults now, so the first I/O does not take page faults and registration
  // (which pins pages) does not have to fault them in either.
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | extra_flags, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

absl::StatusOr<MemoryRegion> MemoryRegion::Allocate(size_t bytes, MemoryRegionOptions options) {
  if (bytes == 0) return absl::InvalidArgumentError("MemoryRegion: zero bytes");
  size_t size = 0;
  void* base = nullptr;
  size_t page = 0;
  int huge_errno = 0;
  if (options.huge_pages != HugePages::kNever) {
    if (!RoundUp(bytes, kHugePageSize, &size)) {
      return absl::InvalidArgumentError("MemoryRegion: size overflows");
    }
    base = Map(size, MAP_HUGETLB | kMapHuge2Mb);
    page = kHugePageSize;
    if (base == nullptr) huge_errno = errno;
  }
  if (base == nullptr) {
    if (options.huge_pages == HugePages::kRequire) {
      return absl::ResourceExhaustedError(
          absl::StrCat("MemoryRegion: no 2 MiB hugepages for ", bytes,
                       " bytes (see /proc/sys/vm/nr_hugepages): ", strerror(huge_errno)));
    }
    if (!RoundUp(bytes, kSmallPageSize, &size)) {
      return absl::InvalidArgumentError("MemoryRegion: size overflows");
    }
    base = Map(size, 0);
    page = kSmallPageSize;
    if (base == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("MemoryRegion: mmap of ", size, " bytes: ", strerror(errno)));
    }
  }
  if (madvise(base, size, MADV_DONTFORK) != 0) {
    int err = errno;
    munmap(base, size);
    return absl::InternalError(absl::StrCat("MemoryRegion: MADV_DONTFORK: ", strerror(err)));
  }
  return MemoryRegion(base, size, page);
}

MemoryRegion::MemoryRegion(MemoryRegion&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      page_size_(std::exchange(other.page_size_, 0)) {}

MemoryRegion& MemoryRegion::operator=(MemoryRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    page_size_ = std::exchange(other.page_size_, 0);
  }
  return *this;
}

MemoryRegion::~MemoryRegion() { Reset(); }

void MemoryRegion::Reset() {
  if (base_ != nullptr) munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
  page_size_ = 0;
}

bool MemoryRegion::Contains(const void* p, size_t length) const {
  auto start = reinterpret_cast<uintptr_t>(p);
  auto base = reinterpret_cast<uintptr_t>(base_);
  // Written as differences so that a huge length cannot wrap around.
  return base_ != nullptr && start >= base && start - base <= size_ &&
         length <= size_ - (start - base);
}

absl::StatusOr<BufferPool> BufferPool::Create(MemoryRegion region, size_t buffer_size,
                                              uint32_t count) {
  if (buffer_size == 0 || count == 0) {
    return absl::InvalidArgumentError("BufferPool: zero buffers or zero-sized buffers");
  }
  if (buffer_size > region.size() / count) {
    return absl::InvalidArgumentError(absl::StrCat("BufferPool: ", count, " buffers of ",
                                                   buffer_size, " bytes do not fit in ",
                                                   region.size(), " bytes"));
  }
  return BufferPool(std::move(region), buffer_size, count);
}

absl::StatusOr<BufferPool> BufferPool::Allocate(size_t buffer_size, uint32_t count,
                                                MemoryRegionOptions options) {
  if (buffer_size == 0 || count == 0) {
    return absl::InvalidArgumentError("BufferPool: zero buffers or zero-sized buffers");
  }
  if (buffer_size > SIZE_MAX / count) {
    return absl::InvalidArgumentError("BufferPool: size overflows");
  }
  absl::StatusOr<MemoryRegion> region = MemoryRegion::Allocate(buffer_size * count, options);
  if (!region.ok()) return region.status();
  return Create(*std::move(region), buffer_size, count);
}

BufferPool::BufferPool(MemoryRegion region, size_t buffer_size, uint32_t count)
    : region_(std::move(region)),
      buffer_size_(buffer_size),
      count_(count),
      free_(count),
      free_top_(count),
      in_use_(count, 0) {
  // Lowest index on top, so a fresh pool hands out buffers in address order.
  for (uint32_t i = 0; i < count; ++i) free_[i] = count - 1 - i;
}

BufferPool& BufferPool::operator=(BufferPool&& other) noexcept {
  region_ = std::move(other.region_);
  buffer_size_ = std::exchange(other.buffer_size_, 0);
  count_ = std::exchange(other.count_, 0);
  free_ = std::move(other.free_);
  free_top_ = std::exchange(other.free_top_, 0);
  in_use_ = std::move(other.in_use_);
  return *this;
}

absl::Status BufferPool::Put(void* buffer) {
  auto p = reinterpret_cast<uintptr_t>(buffer);
  auto base = reinterpret_cast<uintptr_t>(region_.base());
  if (count_ == 0 || p < base || (p - base) % buffer_size_ != 0 ||
      (p - base) / buffer_size_ >= count_) {
    return absl::InvalidArgumentError("BufferPool::Put: not a buffer of this pool");
  }
  auto index = static_cast<uint32_t>((p - base) / buffer_size_);
  if (!in_use_[index]) {
    return absl::FailedPreconditionError("BufferPool::Put: buffer is already free");
  }
  in_use_[index] = 0;
  free_[free_top_++] = index;
  return absl::OkStatus();
}

}  // namespace vfdrivers::memory
