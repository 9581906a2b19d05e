// VfioDevice: a PCI device a tenant's driver reaches through VFIO, adopted from the container,
// group and device descriptors the broker sent (or opened directly, for tests run as root).
//
// Model: the legacy container/group ("type1") model of linux/vfio.h, with the
// VFIO_TYPE1v2_IOMMU backend. Adoption checks the API version, that the container offers
// type1v2, that the group is viable (VFIO_GROUP_GET_STATUS: every device in the IOMMU group
// is bound to vfio-pci or unbound), attaches the group to the container and selects the IOMMU
// if nobody has yet (VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU), reads the IOMMU's page sizes and
// valid IOVA ranges (VFIO_IOMMU_GET_INFO) into an IovaAllocator, and reads the device's info.
//
// No-IOMMU mode is refused with FAILED_PRECONDITION: a "noiommu-N" group gives a tenant DMA to
// all of memory. The type1v2 requirement refuses it too, since a no-IOMMU container offers
// only VFIO_NOIOMMU_IOMMU.
//
// The iommufd / vfio cdev model (/dev/iommu, /dev/vfio/devices/vfioN) is only DETECTED here
// (DetectIommuModel), so callers and logs can say what the kernel offers; adopting a device
// through it is not implemented yet. Kernels that offer cdev still offer the container model
// (CONFIG_VFIO_CONTAINER or iommufd's compatibility /dev/vfio/vfio), which this class uses.
//
// Every fallible call returns a status naming the ioctl (or system call) and the errno.
//
// Thread safety: not thread-safe; set the device up from one thread. The MmioRegions MapBar
// returns are immutable and may then be used from any thread (see mmio_region.h).
#ifndef VFBROKER_VFDRIVERS_VFIO_VFIO_DEVICE_H_
#define VFBROKER_VFDRIVERS_VFIO_VFIO_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/unique_fd.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/vfio/iommu_info.h"
#include "vfdrivers/vfio/iova_allocator.h"
#include "vfdrivers/vfio/mmio_region.h"

namespace vfdrivers::vfio {

// What the running kernel offers, from device nodes under `dev_root` (normally "/dev").
struct IommuModel {
  bool container = false;  // /dev/vfio/vfio: the type1 container model (what VfioDevice uses)
  bool iommufd = false;    // /dev/iommu
  bool vfio_cdev = false;  // /dev/vfio/devices/ exists (per-device cdevs; not supported yet)
};
IommuModel DetectIommuModel(absl::string_view dev_root = "/dev");
std::string DescribeIommuModel(const IommuModel& model);

// OK for a canonical PCI address "DDDD:BB:DD.F" (lower-case hex, as sysfs spells it);
// INVALID_ARGUMENT otherwise. Keeps a caller's string from walking out of /sys/bus/pci/devices.
absl::Status ValidatePciAddress(absl::string_view address);

// FAILED_PRECONDITION when `group_path` (e.g. "/dev/vfio/noiommu-3", from the group fd's
// /proc/self/fd link) names a no-IOMMU group; OK otherwise.
absl::Status RefuseNoIommuGroup(absl::string_view group_path);

struct RegionInfo {
  uint32_t index = 0;
  uint32_t flags = 0;   // VFIO_REGION_INFO_FLAG_*
  uint64_t size = 0;    // bytes; 0 for an unimplemented BAR
  uint64_t offset = 0;  // offset of the region within the device fd
  bool readable() const;
  bool writable() const;
  bool mappable() const;
};

struct DmaMapping {
  uint64_t iova = 0;
  uint64_t size = 0;
};

class VfioDevice {
 public:
  // Adopts descriptors the broker sent. `device_fd` came from VFIO_GROUP_GET_DEVICE_FD on
  // `group_fd`. INVALID_ARGUMENT for a closed fd; FAILED_PRECONDITION for no-IOMMU, a group that
  // is not viable, or a non-PCI device; the ioctl's errno otherwise.
  static absl::StatusOr<std::unique_ptr<VfioDevice>> Adopt(vfbroker::UniqueFd container_fd,
                                                           vfbroker::UniqueFd group_fd,
                                                           vfbroker::UniqueFd device_fd);

  // Opens /dev/vfio/vfio and the group of `pci_address` (from
  // /sys/bus/pci/devices/<addr>/iommu_group), sets the container up, gets the device fd and
  // adopts it. Needs root (or access to the group node) and a device bound to vfio-pci.
  static absl::StatusOr<std::unique_ptr<VfioDevice>> OpenByPciAddress(
      absl::string_view pci_address);

  VfioDevice(const VfioDevice&) = delete;
  VfioDevice& operator=(const VfioDevice&) = delete;
  // Disables MSI-X if enabled, unmaps every DMA mapping still live, unmaps BARs, closes fds.
  ~VfioDevice();

  uint32_t num_regions() const { return num_regions_; }
  uint32_t num_irqs() const { return num_irqs_; }
  bool supports_reset() const { return supports_reset_; }
  const std::string& group_path() const { return group_path_; }
  const IommuInfo& iommu_info() const { return iommu_info_; }
  const IovaAllocator& iova_allocator() const { return iova_; }

  // VFIO_DEVICE_GET_REGION_INFO. INVALID_ARGUMENT for index >= num_regions().
  absl::StatusOr<RegionInfo> GetRegionInfo(uint32_t index) const;

  // Maps BAR `bar` (0..5) once and returns it; later calls return the same mapping.
  // FAILED_PRECONDITION for an unimplemented or unmappable BAR (e.g. an I/O-port BAR).
  absl::StatusOr<const MmioRegion*> MapBar(uint32_t bar);

  // PCI configuration space through the config region (pread/pwrite on the device fd), with
  // the offset checked against the region's size. VFIO virtualizes some fields.
  absl::StatusOr<uint8_t> ReadConfig8(uint32_t offset) const;
  absl::StatusOr<uint16_t> ReadConfig16(uint32_t offset) const;
  absl::StatusOr<uint32_t> ReadConfig32(uint32_t offset) const;
  absl::Status WriteConfig16(uint32_t offset, uint16_t value) const;
  absl::Status WriteConfig32(uint32_t offset, uint32_t value) const;

  // Sets Bus Master Enable (bit 2) in the PCI Command register (config offset 0x04; PCI Local
  // Bus Specification 3.0, section 6.2.2), so the device may issue DMA.
  absl::Status EnableBusMastering() const;

  // VFIO_DEVICE_RESET (a function-level or similar reset). FAILED_PRECONDITION when the device
  // did not report VFIO_DEVICE_FLAGS_RESET.
  absl::Status Reset() const;

  // Maps [vaddr, vaddr + size) for device read and write at a fresh IOVA (VFIO_IOMMU_MAP_DMA).
  // vaddr and size must be multiples of the IOMMU page size; the IOVA is aligned to `alignment`
  // (e.g. the region's page size, so the IOMMU can use large pages). The pages are pinned and
  // count against RLIMIT_MEMLOCK (unless CAP_IPC_LOCK): over it, RESOURCE_EXHAUSTED saying so.
  absl::StatusOr<DmaMapping> MapDma(void* vaddr, size_t size, uint64_t alignment = 0);
  // Maps a whole MemoryRegion, IOVA aligned to its page size.
  absl::StatusOr<DmaMapping> MapDma(const vfdrivers::memory::MemoryRegion& region);
  // VFIO_IOMMU_UNMAP_DMA of a mapping MapDma returned; frees its IOVA.
  absl::Status UnmapDma(uint64_t iova);

  // Optional interrupts: VFIO_DEVICE_SET_IRQS with one eventfd per MSI-X vector 0..count-1 (the
  // device signals the eventfd; read it to consume). Polling drivers need none of this.
  // Enable MSI-X before the device's own enable: QEMU's NVMe, for one, claims a completion
  // queue's vector when the queue is created (the admin CQ's at CC.EN) and only if MSI-X is
  // on then; vectors enabled later stay silent (seen in tests/vm).
  absl::StatusOr<std::vector<vfbroker::UniqueFd>> EnableMsix(uint32_t count);
  absl::Status DisableMsix();

 private:
  VfioDevice() = default;
  absl::Status ConfigAccess(bool write, uint32_t offset, void* data, size_t width) const;

  vfbroker::UniqueFd container_;
  vfbroker::UniqueFd group_;
  vfbroker::UniqueFd device_;
  std::string group_path_;
  uint32_t num_regions_ = 0;
  uint32_t num_irqs_ = 0;
  bool supports_reset_ = false;
  RegionInfo config_;
  IommuInfo iommu_info_;
  IovaAllocator iova_ = *IovaAllocator::Create({}, 4096);
  std::map<uint32_t, std::unique_ptr<MmioRegion>> bars_;
  std::map<uint64_t, uint64_t> dma_;  // iova -> size
  bool msix_enabled_ = false;
};

}  // namespace vfdrivers::vfio

#endif  // VFBROKER_VFDRIVERS_VFIO_VFIO_DEVICE_H_
