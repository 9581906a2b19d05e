// Parsing of the VFIO_IOMMU_GET_INFO reply (struct vfio_iommu_type1_info in linux/vfio.h).
//
// The kernel appends a chain of capabilities after the fixed struct: each starts with struct
// vfio_info_cap_header {id, version, next}, where `next` is an offset from the start of the
// whole buffer (0 ends the chain). This parser treats the buffer as untrusted: every offset is
// checked against the buffer, offsets must strictly increase (so a chain cannot loop), and a
// capability's declared element count must fit in the bytes that remain. It extracts the
// supported page sizes and the valid IOVA ranges (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE).
//
// Thread safety: pure functions; safe to call from any thread.
#ifndef VFBROKER_VFDRIVERS_VFIO_IOMMU_INFO_H_
#define VFBROKER_VFDRIVERS_VFIO_IOMMU_INFO_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "vfdrivers/vfio/iova_allocator.h"

namespace vfdrivers::vfio {

struct IommuInfo {
  uint64_t iova_pgsizes = 0;  // bitmap of supported IOMMU page sizes (0 if not reported)
  bool has_iova_ranges = false;  // the kernel sent VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
  std::vector<IovaRange> iova_ranges;
};

// Parses a complete VFIO_IOMMU_GET_INFO buffer, `buffer.size()` bytes of which the kernel
// filled (min(argsz as returned, the size the caller supplied)). INVALID_ARGUMENT (naming the
// offset) for anything malformed: truncated header or capability, an offset outside the
// buffer or not past the previous one, a misaligned offset, more IOVA ranges than fit, a range
// with start > end, or two IOVA-range capabilities. Unknown capabilities are skipped.
absl::StatusOr<IommuInfo> ParseIommuInfo(absl::Span<const uint8_t> buffer);

// The smallest page size in `pgsizes` that is at least 4096, or 4096 when none is reported.
uint64_t SmallestIommuPage(uint64_t pgsizes);

}  // namespace vfdrivers::vfio

#endif  // VFBROKER_VFDRIVERS_VFIO_IOMMU_INFO_H_
