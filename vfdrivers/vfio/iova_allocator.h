// IovaAllocator: hands out I/O virtual addresses for VFIO DMA mappings.
//
// Pure logic, no system calls. The usable IOVA space is the set of ranges the IOMMU reports
// (VFIO_IOMMU_GET_INFO, capability VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE in linux/vfio.h; see
// iommu_info.h for the parser). Each range is shrunk inward to whole pages, overlapping or
// touching ranges are merged, and allocation is page-granular first-fit: the lowest suitably
// aligned run of free pages wins. Free() takes back exactly one earlier allocation and merges it
// with its free neighbours, so the free list is always a set of maximal extents.
//
// Thread safety: not thread-safe. One allocator per container, guarded by its owner.
#ifndef VFBROKER_VFDRIVERS_VFIO_IOVA_ALLOCATOR_H_
#define VFBROKER_VFDRIVERS_VFIO_IOVA_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfdrivers::vfio {

// An inclusive range [start, last] of IOVAs, as struct vfio_iova_range reports it (its `end`
// is the last valid address, so a range can reach 2^64 - 1).
struct IovaRange {
  uint64_t start = 0;
  uint64_t last = 0;
  bool operator==(const IovaRange& o) const { return start == o.start && last == o.last; }
};

class IovaAllocator {
 public:
  // `page_size` must be a power of two >= 4096 (the smallest page the IOMMU maps). Ranges with
  // start > last are INVALID_ARGUMENT; ranges holding no whole page are dropped. Page 0 is never
  // handed out when `reserve_zero_page` is set, so a zero IOVA in a descriptor is always a bug.
  static absl::StatusOr<IovaAllocator> Create(const std::vector<IovaRange>& ranges,
                                              uint64_t page_size, bool reserve_zero_page = true);

  // Allocates ceil(bytes / page_size) pages, starting at a multiple of `alignment` (a power of
  // two; values below page_size mean page_size). INVALID_ARGUMENT for 0 bytes or a bad
  // alignment; RESOURCE_EXHAUSTED when no run of free pages fits.
  absl::StatusOr<uint64_t> Allocate(uint64_t bytes, uint64_t alignment = 0);

  // Returns an allocation: `iova` must be a value Allocate returned and not yet freed
  // (INVALID_ARGUMENT otherwise, and nothing changes).
  absl::Status Free(uint64_t iova);

  // The size in bytes of the live allocation at `iova`, or NOT_FOUND.
  absl::StatusOr<uint64_t> AllocationSize(uint64_t iova) const;

  uint64_t page_size() const { return page_size_; }
  uint64_t free_pages() const { return free_pages_; }
  uint64_t total_pages() const { return total_pages_; }
  size_t allocation_count() const { return allocated_.size(); }
  // The free extents as inclusive IOVA ranges, lowest first (for tests and diagnostics).
  std::vector<IovaRange> FreeRanges() const;

 private:
  IovaAllocator(uint64_t page_size, unsigned page_shift)
      : page_size_(page_size), page_shift_(page_shift) {}
  void InsertFree(uint64_t first, uint64_t end);

  uint64_t page_size_;
  unsigned page_shift_;
  // Free extents in page numbers: first page -> one past the last page. Page numbers are
  // < 2^52 (page_size >= 4096), so `end` never overflows.
  std::map<uint64_t, uint64_t> free_;
  std::map<uint64_t, uint64_t> allocated_;  // first page -> page count
  uint64_t free_pages_ = 0;
  uint64_t total_pages_ = 0;
};

}  // namespace vfdrivers::vfio

#endif  // VFBROKER_VFDRIVERS_VFIO_IOVA_ALLOCATOR_H_
