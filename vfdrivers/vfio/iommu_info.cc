#include "vfdrivers/vfio/iommu_info.h"

#include <linux/vfio.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace vfdrivers::vfio {

namespace {

template <typename T>
T Load(absl::Span<const uint8_t> buffer, size_t offset) {
  T value;
  std::memcpy(&value, buffer.data() + offset, sizeof(T));  // buffer may be unaligned
  return value;
}

}  // namespace

absl::StatusOr<IommuInfo> ParseIommuInfo(absl::Span<const uint8_t> buffer) {
  const size_t size = buffer.size();
  if (size < sizeof(vfio_iommu_type1_info)) {
    return absl::InvalidArgumentError(absl::StrCat("VFIO_IOMMU_GET_INFO reply of ", size,
                                                   " bytes is shorter than its header (",
                                                   sizeof(vfio_iommu_type1_info), ")"));
  }
  auto info = Load<vfio_iommu_type1_info>(buffer, 0);
  IommuInfo out;
  if (info.flags & VFIO_IOMMU_INFO_PGSIZES) out.iova_pgsizes = info.iova_pgsizes;
  if (!(info.flags & VFIO_IOMMU_INFO_CAPS)) return out;

  size_t offset = info.cap_offset;
  size_t previous_end = sizeof(vfio_iommu_type1_info);  // a cap may not overlap what precedes
  while (offset != 0) {
    if (offset < previous_end) {
      return absl::InvalidArgumentError(
          absl::StrCat("VFIO_IOMMU_GET_INFO capability offset ", offset,
                       " does not lie past the previous structure (ends at ", previous_end,
                       "): overlap or loop"));
    }
    if (offset % 4 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("VFIO_IOMMU_GET_INFO capability offset ", offset, " is misaligned"));
    }
    if (offset > size || size - offset < sizeof(vfio_info_cap_header)) {
      return absl::InvalidArgumentError(
          absl::StrCat("VFIO_IOMMU_GET_INFO capability header at offset ", offset,
                       " runs past the ", size, "-byte buffer"));
    }
    auto header = Load<vfio_info_cap_header>(buffer, offset);
    size_t cap_end = offset + sizeof(vfio_info_cap_header);
    if (header.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
      if (out.has_iova_ranges) {
        return absl::InvalidArgumentError(
            absl::StrCat("second IOVA-range capability at offset ", offset));
      }
      if (header.version != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "IOVA-range capability at offset ", offset, " has unknown version ", header.version));
      }
      if (size - offset < sizeof(vfio_iommu_type1_info_cap_iova_range)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "IOVA-range capability at offset ", offset, " is truncated by the buffer end"));
      }
      auto cap = Load<vfio_iommu_type1_info_cap_iova_range>(buffer, offset);
      size_t ranges_at = offset + sizeof(vfio_iommu_type1_info_cap_iova_range);
      size_t room = (size - ranges_at) / sizeof(vfio_iova_range);
      if (cap.nr_iovas > room) {
        return absl::InvalidArgumentError(absl::StrCat(
            "IOVA-range capability at offset ", offset, " declares ", cap.nr_iovas,
            " ranges but only ", room, " fit in the buffer"));
      }
      out.iova_ranges.reserve(cap.nr_iovas);
      for (uint32_t i = 0; i < cap.nr_iovas; ++i) {
        auto r = Load<vfio_iova_range>(buffer, ranges_at + i * sizeof(vfio_iova_range));
        if (r.start > r.end) {
          return absl::InvalidArgumentError(
              absl::StrCat("IOVA range ", i, " has start 0x", absl::Hex(r.start), " > end 0x",
                           absl::Hex(r.end)));
        }
        out.iova_ranges.push_back({r.start, r.end});
      }
      out.has_iova_ranges = true;
      cap_end = ranges_at + size_t{cap.nr_iovas} * sizeof(vfio_iova_range);
    }
    previous_end = cap_end;
    offset = header.next;
  }
  return out;
}

uint64_t SmallestIommuPage(uint64_t pgsizes) {
  uint64_t usable = pgsizes & ~uint64_t{4095};
  if (usable == 0) return 4096;
  return usable & (~usable + 1);  // lowest set bit
}

}  // namespace vfdrivers::vfio
