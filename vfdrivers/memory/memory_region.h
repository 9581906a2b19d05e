// Memory for I/O buffers that drivers register once: io_uring fixed buffers today, VFIO DMA
// mappings in the NVMe driver.
//
// MemoryRegion owns one anonymous mapping. It prefers 2 MiB hugepages (fewer IOMMU/TLB entries
// and fewer pages to pin), falls back to prefaulted 4 KiB pages, and says which it got, because
// a DMA mapper needs the real page size. The mapping is excluded from fork() (MADV_DONTFORK): a
// child inheriting pinned pages would make the parent's next write copy-on-write the page away
// from under the device.
//
// BufferPool carves N fixed-size buffers out of a region and hands them out with O(1) Get/Put
// from a preallocated free stack: no allocation, no lock, no atomic.
//
// Thread safety: a MemoryRegion is immutable after creation (the bytes are the caller's
// business). A BufferPool is not thread-safe: one pool per queue thread.
#ifndef VFBROKER_VFDRIVERS_MEMORY_MEMORY_REGION_H_
#define VFBROKER_VFDRIVERS_MEMORY_MEMORY_REGION_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfdrivers::memory {

enum class HugePages {
  kPrefer,   // try 2 MiB hugepages, fall back to 4 KiB pages
  kRequire,  // 2 MiB hugepages or RESOURCE_EXHAUSTED
  kNever,    // 4 KiB pages only
};

struct MemoryRegionOptions {
  HugePages huge_pages = HugePages::kPrefer;
};

class MemoryRegion {
 public:
  static constexpr size_t kHugePageSize = size_t{2} << 20;
  static constexpr size_t kSmallPageSize = 4096;

  // Maps at least `bytes` (rounded up to the page size obtained), zero-filled and prefaulted.
  // INVALID_ARGUMENT for 0 bytes; RESOURCE_EXHAUSTED when the kernel has no memory to give
  // (or no free hugepages under kRequire).
  static absl::StatusOr<MemoryRegion> Allocate(size_t bytes, MemoryRegionOptions options = {});

  MemoryRegion() = default;  // empty: base() == nullptr, size() == 0
  MemoryRegion(MemoryRegion&& other) noexcept;
  MemoryRegion& operator=(MemoryRegion&& other) noexcept;
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  ~MemoryRegion();

  void* base() const { return base_; }
  size_t size() const { return size_; }  // multiple of page_size()
  size_t page_size() const { return page_size_; }
  bool hugepages() const { return page_size_ == kHugePageSize; }
  bool Contains(const void* p, size_t length) const;

 private:
  MemoryRegion(void* base, size_t size, size_t page_size)
      : base_(base), size_(size), page_size_(page_size) {}
  void Reset();

  void* base_ = nullptr;
  size_t size_ = 0;
  size_t page_size_ = 0;
};

// `count` buffers of `buffer_size` bytes each, laid out back to back from the region's base.
// Buffers start at multiples of buffer_size from a page-aligned base, so a buffer_size that is a
// multiple of the device's block size gives block-aligned buffers.
class BufferPool {
 public:
  // Takes ownership of `region`. INVALID_ARGUMENT when count or buffer_size is 0 or the buffers
  // do not fit in the region.
  static absl::StatusOr<BufferPool> Create(MemoryRegion region, size_t buffer_size, uint32_t count);
  // Allocates a region just large enough and builds the pool in it.
  static absl::StatusOr<BufferPool> Allocate(size_t buffer_size, uint32_t count,
                                             MemoryRegionOptions options = {});

  BufferPool(BufferPool&& other) noexcept { *this = std::move(other); }
  BufferPool& operator=(BufferPool&& other) noexcept;  // leaves `other` empty

  // A free buffer, or nullptr when all are in use. O(1).
  void* Get() {
    if (free_top_ == 0) return nullptr;
    uint32_t index = free_[--free_top_];
    in_use_[index] = 1;
    return Buffer(index);
  }
  // Returns a buffer from Get(). INVALID_ARGUMENT for a pointer that is not the start of one of
  // this pool's buffers, FAILED_PRECONDITION for one that is already free. O(1).
  absl::Status Put(void* buffer);

  void* Buffer(uint32_t index) const {
    return static_cast<uint8_t*>(region_.base()) + size_t{index} * buffer_size_;
  }
  // The index of a buffer of this pool (for tags); only meaningful for pointers from Get().
  uint32_t IndexOf(const void* buffer) const {
    return static_cast<uint32_t>(
        (static_cast<const uint8_t*>(buffer) - static_cast<const uint8_t*>(region_.base())) /
        buffer_size_);
  }

  const MemoryRegion& region() const { return region_; }
  size_t buffer_size() const { return buffer_size_; }
  uint32_t count() const { return count_; }
  uint32_t available() const { return free_top_; }

 private:
  BufferPool(MemoryRegion region, size_t buffer_size, uint32_t count);

  MemoryRegion region_;
  size_t buffer_size_ = 0;
  uint32_t count_ = 0;
  std::vector<uint32_t> free_;  // stack of free indices; capacity fixed at count
  uint32_t free_top_ = 0;
  std::vector<uint8_t> in_use_;  // catches double Put without touching buffer memory
};

}  // namespace vfdrivers::memory

#endif  // VFBROKER_VFDRIVERS_MEMORY_MEMORY_REGION_H_
