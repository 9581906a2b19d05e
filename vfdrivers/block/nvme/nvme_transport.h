// Transport: what the NVMe driver needs from below - BAR0 register access and DMA mapping -
// so the same controller and queue-pair code runs over VFIO and over the test device model.
//
// VfioTransport implements it over a vfio::VfioDevice (BAR0 through MmioRegion, whose checked
// accessors make an out-of-range register offset a status, never a stray access).
//
// Thread safety: register accessors as MmioRegion; MapDma only from the setup thread.
#ifndef VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_TRANSPORT_H_
#define VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "vfdrivers/vfio/vfio_device.h"
#include "vfdrivers/vfio/mmio_region.h"

namespace vfdrivers::block::nvme {

class Transport {
 public:
  virtual ~Transport() = default;
  // BAR0 (controller registers and doorbells).
  virtual absl::StatusOr<uint32_t> Read32(uint64_t offset) = 0;
  virtual absl::StatusOr<uint64_t> Read64(uint64_t offset) = 0;
  virtual absl::Status Write32(uint64_t offset, uint32_t value) = 0;
  virtual absl::Status Write64(uint64_t offset, uint64_t value) = 0;
  // A checked pointer to a 32-bit register (doorbells), for the fast path.
  virtual absl::StatusOr<volatile uint32_t*> Register32(uint64_t offset) = 0;
  // Maps [vaddr, vaddr + size) (both multiples of 4096) for device DMA; returns the IOVA.
  virtual absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) = 0;
  // Undoes one MapDma (by the IOVA it returned). After it, the device reaches nothing there: a
  // stray DMA faults in the IOMMU instead of landing in memory that was freed and reused.
  virtual absl::Status UnmapDma(uint64_t iova) = 0;
  // Called from every busy-wait loop of the driver. Hardware: a CPU pause; the test model
  // uses it to run the device.
  virtual void Idle() = 0;
};

// Over VFIO: maps BAR0 and enables bus mastering. The device must outlive the transport.
class VfioTransport : public Transport {
 public:
  static absl::StatusOr<std::unique_ptr<VfioTransport>> Create(vfio::VfioDevice* device);

  absl::StatusOr<uint32_t> Read32(uint64_t offset) override { return bar_->Read32(offset); }
  absl::StatusOr<uint64_t> Read64(uint64_t offset) override;
  absl::Status Write32(uint64_t offset, uint32_t value) override {
    return bar_->Write32(offset, value);
  }
  absl::Status Write64(uint64_t offset, uint64_t value) override;
  absl::StatusOr<volatile uint32_t*> Register32(uint64_t offset) override {
    return bar_->Register32(offset);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override;
  absl::Status UnmapDma(uint64_t iova) override { return device_->UnmapDma(iova); }
  void Idle() override;

  vfio::VfioDevice* device() const { return device_; }

 private:
  VfioTransport(vfio::VfioDevice* device, const vfio::MmioRegion* bar)
      : device_(device), bar_(bar) {}
  vfio::VfioDevice* device_;
  const vfio::MmioRegion* bar_;
};

}  // namespace vfdrivers::block::nvme

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_TRANSPORT_H_
