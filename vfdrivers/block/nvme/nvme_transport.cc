#include "vfdrivers/block/nvme/nvme_transport.h"

#include "absl/status/status.h"

namespace vfdrivers::block::nvme {

absl::StatusOr<std::unique_ptr<VfioTransport>> VfioTransport::Create(vfio::VfioDevice* device) {
  if (device == nullptr) return absl::InvalidArgumentError("VfioTransport: null device");
  absl::StatusOr<const vfio::MmioRegion*> bar = device->MapBar(0);
  if (!bar.ok()) return bar.status();
  if ((*bar)->size() < 0x2000) {
    return absl::FailedPreconditionError("NVMe BAR0 smaller than registers plus doorbells");
  }
  absl::Status st = device->EnableBusMastering();
  if (!st.ok()) return st;
  return std::unique_ptr<VfioTransport>(new VfioTransport(device, *bar));
}

// 64-bit registers (CAP, ASQ, ACQ) as two 32-bit accesses, low half first: Base §3.1.3 allows
// it and not every platform forwards 64-bit MMIO.
absl::StatusOr<uint64_t> VfioTransport::Read64(uint64_t offset) {
  absl::StatusOr<uint32_t> lo = bar_->Read32(offset);
  if (!lo.ok()) return lo.status();
  absl::StatusOr<uint32_t> hi = bar_->Read32(offset + 4);
  if (!hi.ok()) return hi.status();
  return uint64_t{*hi} << 32 | *lo;
}

absl::Status VfioTransport::Write64(uint64_t offset, uint64_t value) {
  absl::Status st = bar_->Write32(offset, static_cast<uint32_t>(value));
  if (!st.ok()) return st;
  return bar_->Write32(offset + 4, static_cast<uint32_t>(value >> 32));
}

absl::StatusOr<uint64_t> VfioTransport::MapDma(void* vaddr, size_t size) {
  // Memory in 2 MiB hugepages gets a 2 MiB-aligned IOVA, so an IOMMU with 2 MiB pages (VT-d
  // and QEMU's emulation report them) can map it with one entry per hugepage.
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  const uint64_t va = reinterpret_cast<uintptr_t>(vaddr);
  const bool huge = va % kHuge == 0 && size % kHuge == 0 &&
                    (device_->iommu_info().iova_pgsizes & kHuge) != 0;
  absl::StatusOr<vfio::DmaMapping> m = device_->MapDma(vaddr, size, huge ? kHuge : 0);
  if (!m.ok()) return m.status();
  return m->iova;
}

void VfioTransport::Idle() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

}  // namespace vfdrivers::block::nvme
