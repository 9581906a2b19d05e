#include "vfdrivers/vfio/vfio_device.h"

#include <fcntl.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace vfdrivers::vfio {

using vfbroker::UniqueFd;

namespace {

// Caps the VFIO_IOMMU_GET_INFO buffer: the kernel's reply is a few hundred bytes; a larger
// argsz means something is wrong.
constexpr uint32_t kMaxIommuInfoBytes = 64 * 1024;
// Used when the kernel predates the IOVA-range capability (before Linux 5.4): 39 bits is the
// smallest address width an Intel VT-d or AMD-Vi IOMMU supports.
constexpr IovaRange kFallbackIovaRange = {0, (uint64_t{1} << 39) - 1};

absl::Status SysError(absl::string_view call, int err, absl::string_view what = {}) {
  return absl::ErrnoToStatus(
      err, absl::StrCat(call, what.empty() ? "" : " ", what, " (errno ", err, ")"));
}

std::string FdPath(int fd) {
  char buf[PATH_MAX];
  std::string link = absl::StrCat("/proc/self/fd/", fd);
  ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) return {};
  return std::string(buf, static_cast<size_t>(n));
}

bool Exists(const std::string& path, bool want_dir) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return false;
  return want_dir ? S_ISDIR(st.st_mode) : true;
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  }
  return true;
}

// VFIO_GROUP_GET_STATUS; then, if the group has no container yet, VFIO_GROUP_SET_CONTAINER and
// VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU). The container must already be known to offer type1v2.
absl::Status AttachGroup(int container, int group) {
  vfio_group_status status = {};
  status.argsz = sizeof(status);
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) != 0) {
    return SysError("VFIO_GROUP_GET_STATUS", errno);
  }
  if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
    return absl::FailedPreconditionError(
        "VFIO_GROUP_GET_STATUS: group is not viable (some device in its IOMMU group is bound "
        "to a host driver other than vfio-pci)");
  }
  if (status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET) return absl::OkStatus();  // broker did it
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) != 0) {
    return SysError("VFIO_GROUP_SET_CONTAINER", errno);
  }
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0) {
    return SysError("VFIO_SET_IOMMU", errno, "(VFIO_TYPE1v2_IOMMU)");
  }
  return absl::OkStatus();
}

// Checks the container's API version and that it offers type1v2; refuses no-IOMMU.
absl::Status CheckContainer(int container) {
  int version = ioctl(container, VFIO_GET_API_VERSION);
  if (version < 0) return SysError("VFIO_GET_API_VERSION", errno);
  if (version != VFIO_API_VERSION) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VFIO_GET_API_VERSION: kernel speaks ", version, ", we speak ", VFIO_API_VERSION));
  }
  int type1v2 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  if (type1v2 < 0) return SysError("VFIO_CHECK_EXTENSION", errno, "(VFIO_TYPE1v2_IOMMU)");
  if (type1v2 == 0) {
    // VFIO_NOIOMMU_IOMMU reports whether no-IOMMU mode is enabled in the kernel; with it and
    // without type1v2, the only thing this container could do is unprotected DMA.
    int noiommu = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU);
    if (noiommu > 0) {
      return absl::FailedPreconditionError(
          "VFIO container offers only no-IOMMU mode (VFIO_NOIOMMU_IOMMU), which gives the "
          "device DMA to all memory; refused");
    }
    return absl::FailedPreconditionError(
        "VFIO container does not offer VFIO_TYPE1v2_IOMMU (VFIO_CHECK_EXTENSION returned 0)");
  }
  return absl::OkStatus();
}

// VFIO_IOMMU_GET_INFO with the capability chain: ask once with the bare struct; the kernel
// sets argsz to the size it needs; ask again with a buffer that large.
absl::StatusOr<IommuInfo> QueryIommuInfo(int container) {
  std::vector<uint8_t> buffer(sizeof(vfio_iommu_type1_info));
  for (int attempt = 0; attempt < 2; ++attempt) {
    vfio_iommu_type1_info head = {};
    head.argsz = static_cast<uint32_t>(buffer.size());
    std::memcpy(buffer.data(), &head, sizeof(head));
    if (ioctl(container, VFIO_IOMMU_GET_INFO, buffer.data()) != 0) {
      return SysError("VFIO_IOMMU_GET_INFO", errno);
    }
    std::memcpy(&head, buffer.data(), sizeof(head));
    if (head.argsz <= buffer.size()) return ParseIommuInfo(buffer);
    if (head.argsz > kMaxIommuInfoBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "VFIO_IOMMU_GET_INFO: kernel asks for ", head.argsz, " bytes (limit ",
          kMaxIommuInfoBytes, ")"));
    }
    buffer.assign(head.argsz, 0);
  }
  return absl::InternalError("VFIO_IOMMU_GET_INFO: argsz kept growing");
}

}  // namespace

IommuModel DetectIommuModel(absl::string_view dev_root) {
  std::string root(dev_root);
  IommuModel m;
  m.container = Exists(root + "/vfio/vfio", false);
  m.iommufd = Exists(root + "/iommu", false);
  m.vfio_cdev = Exists(root + "/vfio/devices", true);
  return m;
}

std::string DescribeIommuModel(const IommuModel& m) {
  std::string out = m.container ? "type1 container (/dev/vfio/vfio)" : "no VFIO container";
  if (m.iommufd && m.vfio_cdev) {
    absl::StrAppend(&out, "; iommufd + vfio cdev (/dev/iommu, /dev/vfio/devices) present but "
                          "not supported yet");
  } else if (m.iommufd) {
    absl::StrAppend(&out, "; iommufd (/dev/iommu) present without vfio cdevs");
  }
  return out;
}

absl::Status ValidatePciAddress(absl::string_view a) {
  // DDDD:BB:DD.F: 4 hex, ':', 2 hex, ':', 2 hex, '.', 1 octal digit 0-7.
  bool ok = a.size() == 12 && a[4] == ':' && a[7] == ':' && a[10] == '.' &&
            IsLowerHex(a.substr(0, 4)) && IsLowerHex(a.substr(5, 2)) &&
            IsLowerHex(a.substr(8, 2)) && a[11] >= '0' && a[11] <= '7';
  if (ok) {
    // Device numbers run 0..0x1f.
    int dev_hi = a[8] - '0';
    ok = dev_hi >= 0 && dev_hi <= 1;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", a, "' is not a PCI address of the form dddd:bb:dd.f"));
  }
  return absl::OkStatus();
}

absl::Status RefuseNoIommuGroup(absl::string_view group_path) {
  size_t slash = group_path.rfind('/');
  absl::string_view name = slash == absl::string_view::npos ? group_path
                                                            : group_path.substr(slash + 1);
  if (absl::StartsWith(name, "noiommu-")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VFIO group ", group_path, " is a no-IOMMU group: the device could DMA to all "
        "memory; refused (bind it behind an enabled IOMMU)"));
  }
  return absl::OkStatus();
}

bool RegionInfo::readable() const { return flags & VFIO_REGION_INFO_FLAG_READ; }
bool RegionInfo::writable() const { return flags & VFIO_REGION_INFO_FLAG_WRITE; }
bool RegionInfo::mappable() const { return flags & VFIO_REGION_INFO_FLAG_MMAP; }

absl::StatusOr<std::unique_ptr<VfioDevice>> VfioDevice::Adopt(UniqueFd container_fd,
                                                              UniqueFd group_fd,
                                                              UniqueFd device_fd) {
  if (!container_fd.valid() || !group_fd.valid() || !device_fd.valid()) {
    return absl::InvalidArgumentError("VfioDevice::Adopt needs container, group and device fds");
  }
  std::unique_ptr<VfioDevice> d(new VfioDevice());
  d->container_ = std::move(container_fd);
  d->group_ = std::move(group_fd);
  d->device_ = std::move(device_fd);
  d->group_path_ = FdPath(d->group_.get());
  if (absl::Status s = RefuseNoIommuGroup(d->group_path_); !s.ok()) return s;
  if (absl::Status s = CheckContainer(d->container_.get()); !s.ok()) return s;
  if (absl::Status s = AttachGroup(d->container_.get(), d->group_.get()); !s.ok()) return s;

  absl::StatusOr<IommuInfo> info = QueryIommuInfo(d->container_.get());
  if (!info.ok()) return info.status();
  d->iommu_info_ = *std::move(info);
  std::vector<IovaRange> ranges = d->iommu_info_.has_iova_ranges
                                      ? d->iommu_info_.iova_ranges
                                      : std::vector<IovaRange>{kFallbackIovaRange};
  absl::StatusOr<IovaAllocator> iova =
      IovaAllocator::Create(ranges, SmallestIommuPage(d->iommu_info_.iova_pgsizes));
  if (!iova.ok()) return iova.status();
  d->iova_ = *std::move(iova);

  vfio_device_info dinfo = {};
  dinfo.argsz = sizeof(dinfo);
  if (ioctl(d->device_.get(), VFIO_DEVICE_GET_INFO, &dinfo) != 0) {
    return SysError("VFIO_DEVICE_GET_INFO", errno);
  }
  if (!(dinfo.flags & VFIO_DEVICE_FLAGS_PCI)) {
    return absl::FailedPreconditionError("VFIO_DEVICE_GET_INFO: not a vfio-pci device");
  }
  d->num_regions_ = dinfo.num_regions;
  d->num_irqs_ = dinfo.num_irqs;
  d->supports_reset_ = dinfo.flags & VFIO_DEVICE_FLAGS_RESET;
  if (d->num_regions_ <= VFIO_PCI_CONFIG_REGION_INDEX) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VFIO_DEVICE_GET_INFO: only ", d->num_regions_, " regions, no config space region"));
  }
  absl::StatusOr<RegionInfo> config = d->GetRegionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
  if (!config.ok()) return config.status();
  d->config_ = *config;
  return d;
}

absl::StatusOr<std::unique_ptr<VfioDevice>> VfioDevice::OpenByPciAddress(
    absl::string_view pci_address) {
  if (absl::Status s = ValidatePciAddress(pci_address); !s.ok()) return s;
  std::string link = absl::StrCat("/sys/bus/pci/devices/", pci_address, "/iommu_group");
  char buf[PATH_MAX];
  ssize_t n = readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) {
    int e = errno;
    if (e == ENOENT) {
      return absl::FailedPreconditionError(absl::StrCat(
          link, " does not exist: the device has no IOMMU group (no IOMMU, or no device)"));
    }
    return SysError("readlink", e, link);
  }
  absl::string_view target(buf, static_cast<size_t>(n));
  absl::string_view group_number = target.substr(target.rfind('/') + 1);
  std::string group_path = absl::StrCat("/dev/vfio/", group_number);
  if (!Exists(group_path, false) &&
      Exists(absl::StrCat("/dev/vfio/noiommu-", group_number), false)) {
    return RefuseNoIommuGroup(absl::StrCat("/dev/vfio/noiommu-", group_number));
  }

  UniqueFd container(open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC));
  if (!container) return SysError("open", errno, "/dev/vfio/vfio");
  UniqueFd group(open(group_path.c_str(), O_RDWR | O_CLOEXEC));
  if (!group) return SysError("open", errno, group_path);
  if (absl::Status s = RefuseNoIommuGroup(FdPath(group.get())); !s.ok()) return s;
  if (absl::Status s = CheckContainer(container.get()); !s.ok()) return s;
  if (absl::Status s = AttachGroup(container.get(), group.get()); !s.ok()) return s;
  std::string name(pci_address);
  UniqueFd device(ioctl(group.get(), VFIO_GROUP_GET_DEVICE_FD, name.c_str()));
  if (!device) return SysError("VFIO_GROUP_GET_DEVICE_FD", errno, name);
  return Adopt(std::move(container), std::move(group), std::move(device));
}

VfioDevice::~VfioDevice() {
  if (msix_enabled_) (void)DisableMsix();
  for (const auto& [iova, size] : dma_) {
    vfio_iommu_type1_dma_unmap unmap = {};
    unmap.argsz = sizeof(unmap);
    unmap.iova = iova;
    unmap.size = size;
    (void)ioctl(container_.get(), VFIO_IOMMU_UNMAP_DMA, &unmap);
  }
  bars_.clear();
}

absl::StatusOr<RegionInfo> VfioDevice::GetRegionInfo(uint32_t index) const {
  if (index >= num_regions_) {
    return absl::InvalidArgumentError(
        absl::StrCat("region ", index, " >= the device's ", num_regions_, " regions"));
  }
  vfio_region_info info = {};
  info.argsz = sizeof(info);
  info.index = index;
  if (ioctl(device_.get(), VFIO_DEVICE_GET_REGION_INFO, &info) != 0) {
    return SysError("VFIO_DEVICE_GET_REGION_INFO", errno, absl::StrCat("(region ", index, ")"));
  }
  return RegionInfo{index, info.flags, info.size, info.offset};
}

absl::StatusOr<const MmioRegion*> VfioDevice::MapBar(uint32_t bar) {
  if (bar > VFIO_PCI_BAR5_REGION_INDEX) {
    return absl::InvalidArgumentError(absl::StrCat("BAR ", bar, " does not exist (0..5)"));
  }
  if (auto it = bars_.find(bar); it != bars_.end()) return it->second.get();
  absl::StatusOr<RegionInfo> info = GetRegionInfo(VFIO_PCI_BAR0_REGION_INDEX + bar);
  if (!info.ok()) return info.status();
  if (info->size == 0) {
    return absl::FailedPreconditionError(absl::StrCat("BAR ", bar, " is not implemented"));
  }
  if (!info->mappable() || !info->readable() || !info->writable()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "BAR ", bar, " cannot be mapped read-write (region flags 0x", absl::Hex(info->flags),
        "; an I/O-port BAR or one with MSI-X table holes)"));
  }
  if (info->offset > static_cast<uint64_t>(INT64_MAX) || info->size > SIZE_MAX) {
    return absl::OutOfRangeError(absl::StrCat("BAR ", bar, " offset/size out of range"));
  }
  absl::StatusOr<MmioRegion> region = MmioRegion::Map(
      device_.get(), static_cast<off_t>(info->offset), static_cast<size_t>(info->size));
  if (!region.ok()) {
    return absl::Status(region.status().code(),
                        absl::StrCat("BAR ", bar, ": ", region.status().message()));
  }
  auto owned = std::make_unique<MmioRegion>(*std::move(region));
  const MmioRegion* out = owned.get();
  bars_.emplace(bar, std::move(owned));
  return out;
}

absl::Status VfioDevice::ConfigAccess(bool write, uint32_t offset, void* data,
                                      size_t width) const {
  if (offset % width != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config offset 0x", absl::Hex(offset),
                                                   " is not ", width, "-byte aligned"));
  }
  if (config_.size < width || offset > config_.size - width) {
    return absl::OutOfRangeError(absl::StrCat("config access at 0x", absl::Hex(offset),
                                              " is outside the ", config_.size,
                                              "-byte config space"));
  }
  off_t at = static_cast<off_t>(config_.offset + offset);
  ssize_t n = write ? pwrite(device_.get(), data, width, at) : pread(device_.get(), data, width, at);
  if (n < 0) {
    return SysError(write ? "pwrite" : "pread", errno,
                    absl::StrCat("(config space offset 0x", absl::Hex(offset), ")"));
  }
  if (static_cast<size_t>(n) != width) {
    return absl::DataLossError(absl::StrCat("config space ", write ? "write" : "read", " at 0x",
                                            absl::Hex(offset), ": ", n, " of ", width,
                                            " bytes"));
  }
  return absl::OkStatus();
}

// PCI config space is little-endian; so are the hosts this runs on (x86-64, arm64 LE).
absl::StatusOr<uint8_t> VfioDevice::ReadConfig8(uint32_t offset) const {
  uint8_t v = 0;
  if (absl::Status s = ConfigAccess(false, offset, &v, 1); !s.ok()) return s;
  return v;
}
absl::StatusOr<uint16_t> VfioDevice::ReadConfig16(uint32_t offset) const {
  uint16_t v = 0;
  if (absl::Status s = ConfigAccess(false, offset, &v, 2); !s.ok()) return s;
  return v;
}
absl::StatusOr<uint32_t> VfioDevice::ReadConfig32(uint32_t offset) const {
  uint32_t v = 0;
  if (absl::Status s = ConfigAccess(false, offset, &v, 4); !s.ok()) return s;
  return v;
}
absl::Status VfioDevice::WriteConfig16(uint32_t offset, uint16_t value) const {
  return ConfigAccess(true, offset, &value, 2);
}
absl::Status VfioDevice::WriteConfig32(uint32_t offset, uint32_t value) const {
  return ConfigAccess(true, offset, &value, 4);
}

absl::Status VfioDevice::EnableBusMastering() const {
  // PCI_COMMAND (0x04) and PCI_COMMAND_MASTER (bit 2) from linux/pci_regs.h.
  absl::StatusOr<uint16_t> command = ReadConfig16(PCI_COMMAND);
  if (!command.ok()) return command.status();
  if (*command & PCI_COMMAND_MASTER) return absl::OkStatus();
  return WriteConfig16(PCI_COMMAND, static_cast<uint16_t>(*command | PCI_COMMAND_MASTER));
}

absl::Status VfioDevice::Reset() const {
  if (!supports_reset_) {
    return absl::FailedPreconditionError(
        "device does not support VFIO_DEVICE_RESET (no VFIO_DEVICE_FLAGS_RESET)");
  }
  if (ioctl(device_.get(), VFIO_DEVICE_RESET) != 0) return SysError("VFIO_DEVICE_RESET", errno);
  return absl::OkStatus();
}

// VFIO type1 pins every mapped page and charges it to the mapping process's locked memory,
// against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (vfio_iommu_type1.c,
// vfio_lock_acct); over the limit, VFIO_IOMMU_MAP_DMA fails with ENOMEM. That is the usual
// failure of an unprivileged tenant (the default limit is 8 MiB since Linux 5.16), so say so.
static absl::Status MemlockError(size_t size, uint64_t iova) {
  struct rlimit limit = {};
  std::string have = "unknown";
  if (getrlimit(RLIMIT_MEMLOCK, &limit) == 0) {
    have = limit.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                           : absl::StrCat(limit.rlim_cur / 1024, " KiB");
  }
  std::string locked = "?";
  if (FILE* f = fopen("/proc/self/status", "re")) {
    char line[256];
    while (fgets(line, sizeof(line), f) != nullptr) {
      absl::string_view l(line);
      if (absl::StartsWith(l, "VmLck:")) {
        locked = std::string(absl::StripAsciiWhitespace(l.substr(6)));
        break;
      }
    }
    fclose(f);
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "VFIO_IOMMU_MAP_DMA of ", size, " bytes at iova 0x", absl::Hex(iova),
      " failed with ENOMEM: the pinned pages would exceed RLIMIT_MEMLOCK (", have,
      "; already locked: ", locked, "); raise the tenant's memlock limit (e.g. LimitMEMLOCK=, "
      "ulimit -l, or setrlimit as root before dropping privileges) or map less"));
}

absl::StatusOr<DmaMapping> VfioDevice::MapDma(void* vaddr, size_t size, uint64_t alignment) {
  uint64_t page = iova_.page_size();
  uint64_t va = reinterpret_cast<uintptr_t>(vaddr);
  if (size == 0 || va % page != 0 || size % page != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DMA mapping of ", size, " bytes at 0x", absl::Hex(va),
        ": address and size must be non-zero multiples of the IOMMU page size ", page));
  }
  absl::StatusOr<uint64_t> iova = iova_.Allocate(size, alignment);
  if (!iova.ok()) return iova.status();
  vfio_iommu_type1_dma_map map = {};
  map.argsz = sizeof(map);
  map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = va;
  map.iova = *iova;
  map.size = size;
  if (ioctl(container_.get(), VFIO_IOMMU_MAP_DMA, &map) != 0) {
    int e = errno;
    (void)iova_.Free(*iova);
    if (e == ENOMEM) return MemlockError(size, *iova);
    return SysError("VFIO_IOMMU_MAP_DMA", e,
                    absl::StrCat("(", size, " bytes at iova 0x", absl::Hex(*iova), ")"));
  }
  dma_.emplace(*iova, size);
  return DmaMapping{*iova, size};
}

absl::StatusOr<DmaMapping> VfioDevice::MapDma(const vfdrivers::memory::MemoryRegion& region) {
  return MapDma(region.base(), region.size(), region.page_size());
}

absl::Status VfioDevice::UnmapDma(uint64_t iova) {
  auto it = dma_.find(iova);
  if (it == dma_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no DMA mapping starts at iova 0x", absl::Hex(iova)));
  }
  vfio_iommu_type1_dma_unmap unmap = {};
  unmap.argsz = sizeof(unmap);
  unmap.iova = iova;
  unmap.size = it->second;
  if (ioctl(container_.get(), VFIO_IOMMU_UNMAP_DMA, &unmap) != 0) {
    return SysError("VFIO_IOMMU_UNMAP_DMA", errno,
                    absl::StrCat("(iova 0x", absl::Hex(iova), ")"));
  }
  if (unmap.size != it->second) {
    // The kernel reports what it unmapped; keep the IOVA reserved rather than reuse it.
    return absl::InternalError(absl::StrCat("VFIO_IOMMU_UNMAP_DMA unmapped ", unmap.size,
                                            " of ", it->second, " bytes at iova 0x",
                                            absl::Hex(iova)));
  }
  dma_.erase(it);
  return iova_.Free(iova);
}

absl::StatusOr<std::vector<UniqueFd>> VfioDevice::EnableMsix(uint32_t count) {
  if (count == 0) return absl::InvalidArgumentError("EnableMsix of 0 vectors");
  if (msix_enabled_) return absl::FailedPreconditionError("MSI-X is already enabled");
  if (num_irqs_ <= VFIO_PCI_MSIX_IRQ_INDEX) {
    return absl::FailedPreconditionError("device has no MSI-X interrupt index");
  }
  vfio_irq_info irq = {};
  irq.argsz = sizeof(irq);
  irq.index = VFIO_PCI_MSIX_IRQ_INDEX;
  if (ioctl(device_.get(), VFIO_DEVICE_GET_IRQ_INFO, &irq) != 0) {
    return SysError("VFIO_DEVICE_GET_IRQ_INFO", errno, "(MSI-X)");
  }
  if (count > irq.count) {
    return absl::OutOfRangeError(
        absl::StrCat("asked for ", count, " MSI-X vectors; the device has ", irq.count));
  }
  std::vector<UniqueFd> fds;
  fds.reserve(count);
  size_t bytes = sizeof(vfio_irq_set) + sizeof(int32_t) * count;
  std::vector<uint8_t> buffer(bytes, 0);
  vfio_irq_set set = {};
  set.argsz = static_cast<uint32_t>(bytes);
  set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set.index = VFIO_PCI_MSIX_IRQ_INDEX;
  set.start = 0;
  set.count = count;
  std::memcpy(buffer.data(), &set, sizeof(set));
  for (uint32_t i = 0; i < count; ++i) {
    UniqueFd efd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!efd) return SysError("eventfd", errno);
    int32_t raw = efd.get();
    std::memcpy(buffer.data() + sizeof(vfio_irq_set) + i * sizeof(int32_t), &raw, sizeof(raw));
    fds.push_back(std::move(efd));
  }
  if (ioctl(device_.get(), VFIO_DEVICE_SET_IRQS, buffer.data()) != 0) {
    return SysError("VFIO_DEVICE_SET_IRQS", errno, absl::StrCat("(MSI-X, ", count, " eventfds)"));
  }
  msix_enabled_ = true;
  return fds;
}

absl::Status VfioDevice::DisableMsix() {
  vfio_irq_set set = {};
  set.argsz = sizeof(set);
  set.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
  set.index = VFIO_PCI_MSIX_IRQ_INDEX;
  set.start = 0;
  set.count = 0;  // count 0 with DATA_NONE|ACTION_TRIGGER disables the index
  if (ioctl(device_.get(), VFIO_DEVICE_SET_IRQS, &set) != 0) {
    return SysError("VFIO_DEVICE_SET_IRQS", errno, "(disable MSI-X)");
  }
  msix_enabled_ = false;
  return absl::OkStatus();
}

}  // namespace vfdrivers::vfio
