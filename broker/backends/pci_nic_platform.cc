// The real PciNicPlatform: VFIO through vfio_handout, and the MAC of a modern virtio-net function
// read from its device-specific configuration through the VFIO device (config space and BAR
// regions by pread/pwrite; no mapping). Every offset the device reports is bounds-checked
// against its region before it is used: the function is about to be, or just was, a tenant's.
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "broker/backends/pci_nic.h"

namespace vfbroker {
namespace {

// PCI Local Bus 3.0, 6.1 / 6.7: configuration header and capability list.
constexpr uint32_t kPciVendorId = 0x00;
constexpr uint32_t kPciDeviceId = 0x02;
constexpr uint32_t kPciCommand = 0x04;
constexpr uint32_t kPciStatus = 0x06;
constexpr uint32_t kPciSubsystemId = 0x2e;
constexpr uint32_t kPciCapabilityList = 0x34;
constexpr uint16_t kCommandMemory = 1u << 1;
constexpr uint16_t kStatusCapList = 1u << 4;
constexpr uint8_t kCapVendorSpecific = 0x09;
// Virtio 1.2: 4.1.2.1 PCI device IDs (1041h modern net; 1000h transitional, subsystem 1 = net),
// 4.1.4 struct virtio_pci_cap (cfg_type at +3, bar at +4, offset at +8, length at +12),
// 4.1.4.3 common configuration (device_feature_select at 0, device_feature at 4),
// 5.1.3 VIRTIO_NET_F_MAC (bit 5), 5.1.4 struct virtio_net_config (mac at 0).
constexpr uint16_t kVirtioVendor = 0x1af4;
constexpr uint16_t kVirtioNetModern = 0x1041;
constexpr uint16_t kVirtioNetTransitional = 0x1000;
constexpr uint8_t kCfgCommon = 1;
constexpr uint8_t kCfgDevice = 4;
constexpr uint32_t kVirtioNetFMac = 1u << 5;

absl::Status Errno(int err, const std::string& what) {
  return absl::ErrnoToStatus(err, absl::StrCat(what, ": ", std::strerror(err)));
}

struct Region {
  uint64_t offset = 0;
  uint64_t size = 0;
};

absl::StatusOr<Region> RegionOf(int device, uint32_t index) {
  vfio_region_info info = {};
  info.argsz = sizeof(info);
  info.index = index;
  if (::ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) != 0) {
    return Errno(errno, absl::StrCat("VFIO_DEVICE_GET_REGION_INFO ", index));
  }
  if ((info.flags & VFIO_REGION_INFO_FLAG_READ) == 0) {
    return absl::FailedPreconditionError(absl::StrCat("VFIO region ", index, " is not readable"));
  }
  return Region{info.offset, info.size};
}

// Reads `len` bytes at `at` of a region, refusing anything outside it.
absl::Status ReadAt(int device, const Region& region, uint64_t at, void* out, size_t len) {
  if (at > region.size || len > region.size - at) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the device points outside its region (%#x+%u of %#x bytes)", at, len, region.size));
  }
  const ssize_t n = ::pread(device, out, len, static_cast<off_t>(region.offset + at));
  if (n != static_cast<ssize_t>(len)) return Errno(n < 0 ? errno : EIO, "VFIO region read");
  return absl::OkStatus();
}

absl::Status WriteAt(int device, const Region& region, uint64_t at, const void* in, size_t len) {
  if (at > region.size || len > region.size - at) {
    return absl::FailedPreconditionError("the device points outside its region");
  }
  const ssize_t n = ::pwrite(device, in, len, static_cast<off_t>(region.offset + at));
  if (n != static_cast<ssize_t>(len)) return Errno(n < 0 ? errno : EIO, "VFIO region write");
  return absl::OkStatus();
}

struct VirtioCap {
  uint8_t bar = 0;
  uint32_t offset = 0;
  uint32_t length = 0;
  bool found = false;
};

absl::StatusOr<MacAddress> ReadVirtioNetMac(int device) {
  absl::StatusOr<Region> config = RegionOf(device, VFIO_PCI_CONFIG_REGION_INDEX);
  if (!config.ok()) return config.status();
  uint8_t header[256] = {};
  if (absl::Status s = ReadAt(device, *config, 0, header, sizeof(header)); !s.ok()) return s;
  auto u16 = [&](uint32_t at) { return static_cast<uint16_t>(header[at] | header[at + 1] << 8); };
  auto u32 = [&](uint32_t at) {
    return static_cast<uint32_t>(header[at] | header[at + 1] << 8 | header[at + 2] << 16 |
                                 static_cast<uint32_t>(header[at + 3]) << 24);
  };
  const uint16_t vendor = u16(kPciVendorId);
  const uint16_t id = u16(kPciDeviceId);
  if (vendor != kVirtioVendor ||
      !(id == kVirtioNetModern || (id == kVirtioNetTransitional && u16(kPciSubsystemId) == 1))) {
    return absl::UnimplementedError(
        absl::StrFormat("the broker reads the MAC of virtio-net functions only (this is %04x:%04x)",
                        vendor, id));
  }
  if ((u16(kPciStatus) & kStatusCapList) == 0) {
    return absl::FailedPreconditionError("virtio-net function without a capability list");
  }
  VirtioCap common, device_cfg;
  uint32_t at = header[kPciCapabilityList] & 0xfc;
  // At most 48 capabilities fit in the 192 bytes after the header; a loop is the device lying.
  for (int walked = 0; at != 0 && walked < 48; ++walked) {
    if (at < 0x40 || at + 16 > sizeof(header)) {
      return absl::FailedPreconditionError(absl::StrFormat("capability pointer %#x out of range",
                                                           at));
    }
    if (header[at] == kCapVendorSpecific && header[at + 2] >= 16) {
      VirtioCap cap{header[at + 4], u32(at + 8), u32(at + 12), true};
      if (header[at + 3] == kCfgCommon && !common.found) common = cap;
      if (header[at + 3] == kCfgDevice && !device_cfg.found) device_cfg = cap;
    }
    at = header[at + 1] & 0xfc;
  }
  if (!common.found || !device_cfg.found) {
    return absl::FailedPreconditionError(
        "virtio-net function without common or device configuration capability (no modern "
        "interface)");
  }
  if (common.bar > 5 || device_cfg.bar > 5) {
    return absl::FailedPreconditionError("virtio capability names a BAR above 5");
  }
  // BAR access through VFIO needs memory decoding on (it may be off after a reset).
  uint16_t command = u16(kPciCommand);
  if ((command & kCommandMemory) == 0) {
    command |= kCommandMemory;
    if (absl::Status s = WriteAt(device, *config, kPciCommand, &command, 2); !s.ok()) return s;
  }
  absl::StatusOr<Region> common_bar = RegionOf(device, VFIO_PCI_BAR0_REGION_INDEX + common.bar);
  if (!common_bar.ok()) return common_bar.status();
  if (common.length < 8) {
    return absl::FailedPreconditionError("virtio common configuration shorter than 8 bytes");
  }
  const uint32_t select = 0;
  if (absl::Status s = WriteAt(device, *common_bar, common.offset, &select, 4); !s.ok()) return s;
  uint32_t features = 0;
  if (absl::Status s = ReadAt(device, *common_bar, uint64_t{common.offset} + 4, &features, 4);
      !s.ok()) {
    return s;
  }
  if ((features & kVirtioNetFMac) == 0) {
    return absl::UnimplementedError("the virtio-net device offers no MAC (VIRTIO_NET_F_MAC)");
  }
  if (device_cfg.length < 6) {
    return absl::FailedPreconditionError("virtio-net device configuration shorter than a MAC");
  }
  absl::StatusOr<Region> device_bar =
      RegionOf(device, VFIO_PCI_BAR0_REGION_INDEX + device_cfg.bar);
  if (!device_bar.ok()) return device_bar.status();
  MacAddress mac{};
  for (size_t i = 0; i < mac.size(); ++i) {  // byte reads: the field is u8[6]
    if (absl::Status s = ReadAt(device, *device_bar, uint64_t{device_cfg.offset} + i, &mac[i], 1);
        !s.ok()) {
      return s;
    }
  }
  return mac;
}

class RealPciNicPlatform : public PciNicPlatform {
 public:
  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                      const std::string& group,
                                                      const std::string& pci_address) override {
    return OpenVfioHandles(vfio_dir, group, pci_address);
  }
  absl::Status ResetDevice(const VfioHandles& handles) override {
    return ResetVfioDevice(handles);
  }
  absl::StatusOr<MacAddress> ReadMac(const VfioHandles& handles) override {
    return ReadVirtioNetMac(handles.device.get());
  }
};

}  // namespace

std::unique_ptr<PciNicPlatform> MakeRealPciNicPlatform() {
  return std::make_unique<RealPciNicPlatform>();
}

}  // namespace vfbroker
