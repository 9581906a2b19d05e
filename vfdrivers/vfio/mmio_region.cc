#include "vfdrivers/vfio/mmio_region.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vfdrivers::vfio {

absl::StatusOr<MmioRegion> MmioRegion::Map(int fd, off_t offset, size_t size) {
  if (size == 0) return absl::InvalidArgumentError("MMIO region of 0 bytes");
  long page = sysconf(_SC_PAGESIZE);
  if (offset < 0 || offset % page != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MMIO region offset 0x", absl::Hex(offset), " is not page-aligned"));
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) {
    int e = errno;
    return absl::ErrnoToStatus(e, absl::StrCat("mmap of ", size, " bytes at offset 0x",
                                               absl::Hex(offset), " of fd ", fd));
  }
  return MmioRegion(p, size);
}

MmioRegion::MmioRegion(MmioRegion&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MmioRegion& MmioRegion::operator=(MmioRegion&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MmioRegion::~MmioRegion() {
  if (base_ != nullptr) munmap(base_, size_);
}

absl::Status MmioRegion::Check(uint64_t offset, size_t width) const {
  if (base_ == nullptr) return absl::FailedPreconditionError("MMIO region is not mapped");
  if (offset % width != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MMIO offset 0x", absl::Hex(offset), " is not ", width, "-byte aligned"));
  }
  if (size_ < width || offset > size_ - width) {
    return absl::OutOfRangeError(absl::StrCat("MMIO access of ", width, " bytes at 0x",
                                              absl::Hex(offset), " is outside the ", size_,
                                              "-byte region"));
  }
  return absl::OkStatus();
}

#define VFIO_MMIO_ACCESSORS(BITS)                                                        \
  absl::StatusOr<uint##BITS##_t> MmioRegion::Read##BITS(uint64_t offset) const {         \
    if (absl::Status s = Check(offset, BITS / 8); !s.ok()) return s;                     \
    return *reinterpret_cast<volatile const uint##BITS##_t*>(base_ + offset);            \
  }                                                                                      \
  absl::Status MmioRegion::Write##BITS(uint64_t offset, uint##BITS##_t value) const {    \
    if (absl::Status s = Check(offset, BITS / 8); !s.ok()) return s;                     \
    *reinterpret_cast<volatile uint##BITS##_t*>(base_ + offset) = value;                 \
    return absl::OkStatus();                                                             \
  }

VFIO_MMIO_ACCESSORS(8)
VFIO_MMIO_ACCESSORS(16)
VFIO_MMIO_ACCESSORS(32)
VFIO_MMIO_ACCESSORS(64)
#undef VFIO_MMIO_ACCESSORS

absl::StatusOr<volatile uint32_t*> MmioRegion::Register32(uint64_t offset) const {
  if (absl::Status s = Check(offset, 4); !s.ok()) return s;
  return reinterpret_cast<volatile uint32_t*>(base_ + offset);
}

}  // namespace vfdrivers::vfio
