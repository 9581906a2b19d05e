#include "vfdrivers/vfio/iova_allocator.h"

#include "absl/strings/str_cat.h"

namespace vfdrivers::vfio {

namespace {
bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
}  // namespace

absl::StatusOr<IovaAllocator> IovaAllocator::Create(const std::vector<IovaRange>& ranges,
                                                    uint64_t page_size, bool reserve_zero_page) {
  if (!IsPowerOfTwo(page_size) || page_size < 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("IOVA page size ", page_size, " is not a power of two >= 4096"));
  }
  unsigned shift = 0;
  while ((uint64_t{1} << shift) != page_size) ++shift;
  IovaAllocator a(page_size, shift);
  for (const IovaRange& r : ranges) {
    if (r.start > r.last) {
      return absl::InvalidArgumentError(
          absl::StrCat("IOVA range start 0x", absl::Hex(r.start), " > last 0x", absl::Hex(r.last)));
    }
    // First whole page at or after start; one past the last whole page at or before last.
    uint64_t first = (r.start >> shift) + ((r.start & (page_size - 1)) != 0 ? 1 : 0);
    uint64_t end = r.last == UINT64_MAX ? (uint64_t{1} << (64 - shift))
                                        : ((r.last + 1) >> shift);
    if (reserve_zero_page && first == 0) first = 1;
    if (first >= end) continue;
    a.InsertFree(first, end);
  }
  a.total_pages_ = a.free_pages_;
  return a;
}

// Adds free pages [first, end), merging with any free extent it overlaps or touches. Used for
// construction (ranges may overlap) and Free (they never do).
void IovaAllocator::InsertFree(uint64_t first, uint64_t end) {
  auto it = free_.upper_bound(first);
  if (it != free_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= first) {  // overlaps or touches the extent before
      first = prev->first;
      if (prev->second > end) end = prev->second;
      free_pages_ -= prev->second - prev->first;
      free_.erase(prev);
    }
  }
  it = free_.lower_bound(first);
  while (it != free_.end() && it->first <= end) {  // overlaps or touches extents after
    if (it->second > end) end = it->second;
    free_pages_ -= it->second - it->first;
    it = free_.erase(it);
  }
  free_.emplace(first, end);
  free_pages_ += end - first;
}

absl::StatusOr<uint64_t> IovaAllocator::Allocate(uint64_t bytes, uint64_t alignment) {
  if (bytes == 0) return absl::InvalidArgumentError("IOVA allocation of 0 bytes");
  if (alignment != 0 && !IsPowerOfTwo(alignment)) {
    return absl::InvalidArgumentError(
        absl::StrCat("IOVA alignment ", alignment, " is not a power of two"));
  }
  uint64_t pages = (bytes >> page_shift_) + ((bytes & (page_size_ - 1)) != 0 ? 1 : 0);
  uint64_t align_pages = alignment > page_size_ ? (alignment >> page_shift_) : 1;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    uint64_t first = (it->first + align_pages - 1) & ~(align_pages - 1);
    if (first < it->first) continue;  // alignment overflowed
    if (first >= it->second || it->second - first < pages) continue;
    uint64_t ext_first = it->first, ext_end = it->second;
    free_.erase(it);
    if (ext_first < first) free_.emplace(ext_first, first);
    if (first + pages < ext_end) free_.emplace(first + pages, ext_end);
    free_pages_ -= pages;
    allocated_.emplace(first, pages);
    return first << page_shift_;
  }
  return absl::ResourceExhaustedError(absl::StrCat("no free IOVA run of ", pages, " pages of ",
                                                   page_size_, " bytes (", free_pages_,
                                                   " pages free, fragmented or too few)"));
}

absl::Status IovaAllocator::Free(uint64_t iova) {
  auto it = (iova & (page_size_ - 1)) == 0 ? allocated_.find(iova >> page_shift_)
                                           : allocated_.end();
  if (it == allocated_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("IOVA 0x", absl::Hex(iova), " is not the start of a live allocation"));
  }
  uint64_t first = it->first, pages = it->second;
  allocated_.erase(it);
  InsertFree(first, first + pages);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> IovaAllocator::AllocationSize(uint64_t iova) const {
  auto it = (iova & (page_size_ - 1)) == 0 ? allocated_.find(iova >> page_shift_)
                                           : allocated_.end();
  if (it == allocated_.end()) {
    return absl::NotFoundError(absl::StrCat("no IOVA allocation at 0x", absl::Hex(iova)));
  }
  return it->second << page_shift_;
}

std::vector<IovaRange> IovaAllocator::FreeRanges() const {
  std::vector<IovaRange> out;
  out.reserve(free_.size());
  for (const auto& [first, end] : free_) {
    out.push_back({first << page_shift_, (end << page_shift_) - 1});
  }
  return out;
}

}  // namespace vfdrivers::vfio
