// MmioRegion: one mmap()ed window of device registers (a PCI BAR through VFIO) with
// bounds-checked accessors.
//
// Every accessor checks that the access is naturally aligned and lies wholly inside the
// mapping before touching it, so a bad offset (say, one computed from a value the device
// reported) is an OUT_OF_RANGE / INVALID_ARGUMENT status, never a stray load or store.
// Accesses are single volatile loads and stores of the given width, which is what MMIO needs
// (no tearing of 32-bit registers, no merging by the compiler). For a fast-path register such
// as a doorbell, Register32() checks once and hands back the pointer.
//
// Map() works on any mappable fd (a VFIO device fd at a region offset, or a memfd in tests).
//
// Thread safety: the accessors are safe to call from several threads (the object is immutable
// after construction); what concurrent register accesses mean is the device's business.
#ifndef VFBROKER_VFDRIVERS_VFIO_MMIO_REGION_H_
#define VFBROKER_VFDRIVERS_VFIO_MMIO_REGION_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfdrivers::vfio {

class MmioRegion {
 public:
  // mmap(size, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset). INVALID_ARGUMENT for size 0 or
  // an offset that is not page-aligned; the mmap errno otherwise.
  static absl::StatusOr<MmioRegion> Map(int fd, off_t offset, size_t size);

  MmioRegion() = default;
  MmioRegion(MmioRegion&& other) noexcept;
  MmioRegion& operator=(MmioRegion&& other) noexcept;
  MmioRegion(const MmioRegion&) = delete;
  MmioRegion& operator=(const MmioRegion&) = delete;
  ~MmioRegion();

  absl::StatusOr<uint8_t> Read8(uint64_t offset) const;
  absl::StatusOr<uint16_t> Read16(uint64_t offset) const;
  absl::StatusOr<uint32_t> Read32(uint64_t offset) const;
  absl::StatusOr<uint64_t> Read64(uint64_t offset) const;
  absl::Status Write8(uint64_t offset, uint8_t value) const;
  absl::Status Write16(uint64_t offset, uint16_t value) const;
  absl::Status Write32(uint64_t offset, uint32_t value) const;
  absl::Status Write64(uint64_t offset, uint64_t value) const;

  // A checked pointer to a 32-bit register, for hot paths that store to it repeatedly.
  absl::StatusOr<volatile uint32_t*> Register32(uint64_t offset) const;

  size_t size() const { return size_; }
  bool mapped() const { return base_ != nullptr; }

 private:
  MmioRegion(void* base, size_t size) : base_(static_cast<uint8_t*>(base)), size_(size) {}
  absl::Status Check(uint64_t offset, size_t width) const;

  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace vfdrivers::vfio

#endif  // VFBROKER_VFDRIVERS_VFIO_MMIO_REGION_H_
