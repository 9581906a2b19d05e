// Virtio-net driver: see virtio_net.h. Section numbers are of OASIS Virtio 1.2 (cs01).
#include "vfdrivers/net/virtio_net/virtio_net.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "vfdrivers/vfio/mmio_region.h"

namespace vfdrivers::net::virtio_net {
namespace {

#define RETURN_IF_ERROR(expr)              \
  do {                                     \
    absl::Status _st = (expr);             \
    if (!_st.ok()) return _st;             \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr)        \
  auto lhs##_or = (expr);                  \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = *lhs##_or

constexpr uint32_t kNotOutstanding = 0xFFFFFFFFu;
// RX: the descriptor points kNetHdrSize before the frame; the device may write this many bytes.
constexpr uint32_t kRxDescLen =
    VirtioNetPort::kBufferSize - (VirtioNetPort::kHeadroom - kNetHdrSize);
// Largest frame a used RX entry may report (its length minus the header).
constexpr uint32_t kRxMaxFrame = kRxDescLen - kNetHdrSize;
constexpr uint32_t kCtrlAckOffset = 32;  // in the control buffer: class, command, data before it
constexpr uint32_t kCtrlMaxData = kCtrlAckOffset - 2;
constexpr uint32_t kCtrlQueueMax = 8;
// §5.1.6.5 control classes and commands; ack values.
constexpr uint8_t kCtrlClassRx = 0, kCtrlRxPromisc = 0;
constexpr uint8_t kCtrlClassMac = 1, kCtrlMacAddrSet = 1;
constexpr uint8_t kCtrlOk = 0;

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }

bool PowerOfTwo(uint32_t n) { return n != 0 && (n & (n - 1)) == 0; }

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

std::string MacString(const MacAddress& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

// ---- Transport over VFIO ------------------------------------------------------------------------

class VfioTransport final : public Transport {
 public:
  explicit VfioTransport(vfio::VfioDevice& device) : device_(device) {}
  absl::StatusOr<uint8_t> ReadConfig8(uint32_t offset) override {
    return device_.ReadConfig8(offset);
  }
  absl::StatusOr<uint16_t> ReadConfig16(uint32_t offset) override {
    return device_.ReadConfig16(offset);
  }
  absl::StatusOr<uint32_t> ReadConfig32(uint32_t offset) override {
    return device_.ReadConfig32(offset);
  }
  absl::Status EnableBusMastering() override { return device_.EnableBusMastering(); }
  absl::StatusOr<uint64_t> BarSize(uint32_t bar) override {
    if (bar > 5) return 0;
    if (bars_[bar] == nullptr) {
      absl::StatusOr<vfio::RegionInfo> info = device_.GetRegionInfo(bar);
      if (!info.ok() || info->size == 0 || !info->mappable()) return 0;
      absl::StatusOr<const vfio::MmioRegion*> region = device_.MapBar(bar);
      if (!region.ok()) return 0;
      bars_[bar] = *region;
    }
    return bars_[bar]->size();
  }
  absl::StatusOr<uint32_t> ReadBar(uint32_t bar, uint64_t offset, int width) override {
    ASSIGN_OR_RETURN(region, Region(bar));
    switch (width) {
      case 1: {
        ASSIGN_OR_RETURN(v, region->Read8(offset));
        return v;
      }
      case 2: {
        ASSIGN_OR_RETURN(v, region->Read16(offset));
        return v;
      }
      case 4:
        return region->Read32(offset);
    }
    return absl::InvalidArgumentError(absl::StrCat("virtio_net: access width ", width));
  }
  absl::Status WriteBar(uint32_t bar, uint64_t offset, int width, uint32_t value) override {
    ASSIGN_OR_RETURN(region, Region(bar));
    switch (width) {
      case 1:
        return region->Write8(offset, static_cast<uint8_t>(value));
      case 2:
        return region->Write16(offset, static_cast<uint16_t>(value));
      case 4:
        return region->Write32(offset, value);
    }
    return absl::InvalidArgumentError(absl::StrCat("virtio_net: access width ", width));
  }
  absl::StatusOr<volatile uint16_t*> Register16(uint32_t bar, uint64_t offset) override {
    ASSIGN_OR_RETURN(region, Region(bar));
    if (offset % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("virtio_net: notify offset ", offset));
    }
    // MmioRegion checks whole dwords: take the dword holding the 2 bytes (a BAR is at least a
    // page, so the dword lies inside it when the 2 bytes do).
    ASSIGN_OR_RETURN(dword, region->Register32(offset & ~uint64_t{3}));
    return reinterpret_cast<volatile uint16_t*>(dword) + ((offset & 2) >> 1);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    constexpr uint64_t kHuge = uint64_t{2} << 20;
    const bool huge = reinterpret_cast<uintptr_t>(vaddr) % kHuge == 0 && size % kHuge == 0 &&
                      (device_.iommu_info().iova_pgsizes & kHuge) != 0;
    absl::StatusOr<vfio::DmaMapping> m = device_.MapDma(vaddr, size, huge ? kHuge : 0);
    if (!m.ok()) return m.status();
    return m->iova;
  }
  absl::Status UnmapDma(uint64_t iova) override { return device_.UnmapDma(iova); }
  void Idle() override {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

 private:
  absl::StatusOr<const vfio::MmioRegion*> Region(uint32_t bar) {
    if (bar > 5 || bars_[bar] == nullptr) {
      return absl::OutOfRangeError(absl::StrCat("virtio_net: BAR ", bar, " not mapped"));
    }
    return bars_[bar];
  }
  vfio::VfioDevice& device_;
  const vfio::MmioRegion* bars_[6] = {};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> OpenVfioTransport(vfio::VfioDevice& device) {
  // The device reads rings and buffers by DMA (PCI Local Bus 3.0 §6.2.2: Bus Master Enable).
  RETURN_IF_ERROR(device.EnableBusMastering());
  return std::unique_ptr<Transport>(new VfioTransport(device));
}

// ---- Creation -----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<VirtioNetPort>> VirtioNetPort::Create(vfio::VfioDevice& device,
                                                                     const Options& options) {
  absl::StatusOr<std::unique_ptr<Transport>> t = OpenVfioTransport(device);
  if (!t.ok()) return t.status();
  return Create(*std::move(t), options);
}

absl::StatusOr<std::unique_ptr<VirtioNetPort>> VirtioNetPort::Create(
    std::unique_ptr<Transport> transport, const Options& options) {
  if (transport == nullptr) return absl::InvalidArgumentError("virtio_net: null transport");
  for (uint32_t n : {options.rx_ring_size, options.tx_ring_size}) {
    // §2.7: a split virtqueue's size is a power of two, at most 32768.
    if (n < 8 || n > 32768 || !PowerOfTwo(n)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("virtio_net: ring size %u is not a power of two in 8..32768", n));
    }
  }
  if (options.buffer_count <= options.rx_ring_size || options.buffer_count > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "virtio_net: buffer_count %u must exceed rx_ring_size %u (and be at most 2^20)",
        options.buffer_count, options.rx_ring_size));
  }
  std::unique_ptr<VirtioNetPort> port(new VirtioNetPort(std::move(transport), options));
  RETURN_IF_ERROR(port->Init());
  return port;
}

VirtioNetPort::VirtioNetPort(std::unique_ptr<Transport> transport, const Options& options)
    : transport_(std::move(transport)), options_(options) {}

absl::Status VirtioNetPort::Init() {
  RETURN_IF_ERROR(FindCapabilities());
  // From here on the destructor resets the device before the memory goes away.
  device_live_ = true;
  RETURN_IF_ERROR(ResetDevice());
  absl::Status s = [&]() -> absl::Status {
    // §3.1.1 steps 2-3: ACKNOWLEDGE (we noticed the device), DRIVER (we can drive it).
    RETURN_IF_ERROR(WriteCommon(kCommonDeviceStatus, 1, kStatusAcknowledge));
    RETURN_IF_ERROR(WriteCommon(kCommonDeviceStatus, 1, kStatusAcknowledge | kStatusDriver));
    RETURN_IF_ERROR(NegotiateFeatures());
    RETURN_IF_ERROR(SetupQueues());
    // §3.1.1 step 8: DRIVER_OK; the device is live from here.
    RETURN_IF_ERROR(WriteCommon(kCommonDeviceStatus, 1,
                                kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk |
                                    kStatusDriverOk));
    ASSIGN_OR_RETURN(status, ReadCommon(kCommonDeviceStatus, 1));
    if (status & (kStatusNeedsReset | kStatusFailed)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "virtio_net: device_status 0x%02x after DRIVER_OK (DEVICE_NEEDS_RESET or FAILED)",
          status));
    }
    RETURN_IF_ERROR(ReadMac());
    RefillRx();
    if (options_.promiscuous_off && have_ctrl_ && (features_ & Bit(kFeatureCtrlRx))) {
      RETURN_IF_ERROR(SetPromiscuous(false));
    }
    if (options_.mac.has_value()) RETURN_IF_ERROR(SetMac(*options_.mac));
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    // §3.1.1: something went irrecoverably wrong: FAILED, then the destructor resets.
    (void)WriteCommon(kCommonDeviceStatus, 1, kStatusFailed);
    return s;
  }
  if (options_.link_timeout > absl::ZeroDuration()) {
    RETURN_IF_ERROR(WaitForLink(options_.link_timeout));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> VirtioNetPort::ReadCommon(uint32_t offset, int width) {
  return transport_->ReadBar(common_bar_, common_off_ + offset, width);
}

absl::Status VirtioNetPort::WriteCommon(uint32_t offset, int width, uint32_t value) {
  return transport_->WriteBar(common_bar_, common_off_ + offset, width, value);
}

// §4.1.4: virtio structures are found through vendor-specific capabilities (struct
// virtio_pci_cap: cap_vndr 0x09, cap_next, cap_len, cfg_type, bar, id, padding[2], offset,
// length; the notify capability adds notify_off_multiplier). The driver uses the first instance
// of each type it can use (§4.1.4.1) and ignores the rest, and unknown types.
absl::Status VirtioNetPort::FindCapabilities() {
  // PCI Local Bus 3.0 §6.2.3 / §6.7: Status bit 4 says a capability list exists; its head is
  // at 0x34; entries lie in 0x40..0xFF, dword aligned (low two bits of a pointer reserved).
  ASSIGN_OR_RETURN(pci_status, transport_->ReadConfig16(0x06));
  if ((pci_status & (1u << 4)) == 0) {
    return absl::FailedPreconditionError("virtio_net: no PCI capability list (Status bit 4)");
  }
  ASSIGN_OR_RETURN(head, transport_->ReadConfig8(0x34));
  uint32_t ptr = head & 0xFCu;
  bool have_common = false, have_notify = false;
  std::string rejected;  // why the last unusable virtio capability was skipped
  // At most (256 - 64) / 4 capabilities fit: more means the list loops.
  for (int visited = 0; ptr != 0; ++visited) {
    if (visited >= 48 || ptr < 0x40 || ptr > 0x100 - 20) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "virtio_net: PCI capability list broken at 0x%02x (after %d entries)", ptr, visited));
    }
    ASSIGN_OR_RETURN(vendor, transport_->ReadConfig8(ptr));
    ASSIGN_OR_RETURN(next, transport_->ReadConfig8(ptr + 1));
    if (vendor == kPciCapVendor) {
      ASSIGN_OR_RETURN(cap_len, transport_->ReadConfig8(ptr + 2));
      ASSIGN_OR_RETURN(type, transport_->ReadConfig8(ptr + 3));
      ASSIGN_OR_RETURN(bar, transport_->ReadConfig8(ptr + 4));
      ASSIGN_OR_RETURN(offset, transport_->ReadConfig32(ptr + 8));
      ASSIGN_OR_RETURN(length, transport_->ReadConfig32(ptr + 12));
      const bool wanted = (type == kCapCommonCfg && !have_common) ||
                          (type == kCapNotifyCfg && !have_notify) ||
                          (type == kCapDeviceCfg && !have_device_cfg_);
      if (wanted) {
        uint64_t bar_size = 0;
        if (bar <= 5) {
          ASSIGN_OR_RETURN(size, transport_->BarSize(bar));
          bar_size = size;
        }
        const uint32_t min_len = type == kCapCommonCfg ? kCommonCfgMinLength
                                 : type == kCapNotifyCfg ? 2
                                                         : 1;
        std::string why;
        if (cap_len < (type == kCapNotifyCfg ? 20 : 16)) {
          why = absl::StrFormat("cap_len %u too short", cap_len);
        } else if (bar > 5 || bar_size == 0) {
          why = absl::StrFormat("BAR %u is not a usable memory BAR", bar);
        } else if (uint64_t{offset} + length > bar_size || length < min_len) {
          why = absl::StrFormat("offset 0x%x + length 0x%x outside BAR %u (0x%x bytes)", offset,
                                length, bar, bar_size);
        } else if (type == kCapCommonCfg && offset % 4 != 0) {
          why = absl::StrFormat("common config offset 0x%x not dword aligned", offset);
        } else if (type == kCapNotifyCfg && offset % 2 != 0) {
          why = absl::StrFormat("notify offset 0x%x not 2-byte aligned", offset);
        }
        uint32_t multiplier = 0;
        if (why.empty() && type == kCapNotifyCfg) {
          ASSIGN_OR_RETURN(m, transport_->ReadConfig32(ptr + 16));
          // §4.1.4.4: an even power of 2, or 0 (every queue notifies at the same address).
          if (m != 0 && (!PowerOfTwo(m) || m < 2)) {
            why = absl::StrFormat("notify_off_multiplier %u not 0 or an even power of 2", m);
          }
          multiplier = m;
        }
        if (!why.empty()) {
          rejected = absl::StrFormat("capability at 0x%02x (cfg_type %u): %s", ptr, type, why);
        } else if (type == kCapCommonCfg) {
          have_common = true;
          common_bar_ = bar;
          common_off_ = offset;
        } else if (type == kCapNotifyCfg) {
          have_notify = true;
          notify_bar_ = bar;
          notify_off_ = offset;
          notify_len_ = length;
          notify_multiplier_ = multiplier;
        } else {
          have_device_cfg_ = true;
          device_bar_ = bar;
          device_off_ = offset;
          device_len_ = length;
        }
      }
    }
    ptr = next & 0xFCu;
  }
  if (!have_common || !have_notify) {
    return absl::FailedPreconditionError(absl::StrCat(
        "virtio_net: no usable ", !have_common ? "common" : "notify",
        " configuration capability (a modern virtio PCI device has one, §4.1.4)",
        rejected.empty() ? "" : "; rejected ", rejected));
  }
  return absl::OkStatus();
}

// §4.1.4.3.2 / §3.1.1 step 1: write 0 to device_status, then wait until it reads 0.
absl::Status VirtioNetPort::ResetDevice() {
  RETURN_IF_ERROR(WriteCommon(kCommonDeviceStatus, 1, 0));
  const absl::Time deadline = absl::Now() + options_.reset_timeout;
  for (;;) {
    ASSIGN_OR_RETURN(status, ReadCommon(kCommonDeviceStatus, 1));
    if (status == 0) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "virtio_net: device_status still 0x%02x %s after the reset (writing 0)", status,
          absl::FormatDuration(options_.reset_timeout)));
    }
    transport_->Idle();
  }
}

// §3.1.1 steps 4-6, §4.1.4.3: 64 feature bits read and written 32 at a time.
absl::Status VirtioNetPort::NegotiateFeatures() {
  uint64_t offered = 0;
  for (uint32_t word = 0; word < 2; ++word) {
    RETURN_IF_ERROR(WriteCommon(kCommonDeviceFeatureSelect, 4, word));
    ASSIGN_OR_RETURN(bits, ReadCommon(kCommonDeviceFeature, 4));
    offered |= uint64_t{bits} << (32 * word);
  }
  if ((offered & Bit(kFeatureVersion1)) == 0) {
    // Without VERSION_1 this is a legacy-only device (or interface), which we do not drive.
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: device does not offer VIRTIO_F_VERSION_1 (features 0x%016x): legacy "
        "devices are not supported",
        offered));
  }
  if ((offered & Bit(kFeatureAccessPlatform)) == 0) {
    // §6.1: without ACCESS_PLATFORM the device uses physical addresses and bypasses the IOMMU
    // (in a guest: guest-physical), so the IOVAs VFIO gives would point at the wrong memory.
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: device does not offer VIRTIO_F_ACCESS_PLATFORM (features 0x%016x): it "
        "would bypass the IOMMU and our IOVAs mean nothing to it (QEMU: iommu_platform=on)",
        offered));
  }
  uint64_t wanted = Bit(kFeatureVersion1) | Bit(kFeatureAccessPlatform) | Bit(kFeatureCtrlVq) |
                    Bit(kFeatureCtrlRx) | Bit(kFeatureCtrlMacAddr);
  // MAC and STATUS only when the device config is there and long enough to hold them.
  if (have_device_cfg_ && device_len_ >= kNetCfgMac + 6) wanted |= Bit(kFeatureMac);
  if (have_device_cfg_ && device_len_ >= kNetCfgStatus + 2) wanted |= Bit(kFeatureStatus);
  features_ = offered & wanted;
  for (uint32_t word = 0; word < 2; ++word) {
    RETURN_IF_ERROR(WriteCommon(kCommonDriverFeatureSelect, 4, word));
    RETURN_IF_ERROR(
        WriteCommon(kCommonDriverFeature, 4, static_cast<uint32_t>(features_ >> (32 * word))));
  }
  // §3.1.1 steps 5-6: FEATURES_OK, then re-read: still set means the device accepts them.
  const uint32_t st = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk;
  RETURN_IF_ERROR(WriteCommon(kCommonDeviceStatus, 1, st));
  ASSIGN_OR_RETURN(status, ReadCommon(kCommonDeviceStatus, 1));
  if ((status & kStatusFeaturesOk) == 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: device refused features 0x%016x (FEATURES_OK not set on re-read)",
        features_));
  }
  have_ctrl_ = (features_ & Bit(kFeatureCtrlVq)) != 0;
  if ((features_ & Bit(kFeatureMac)) == 0 && !options_.mac.has_value()) {
    return absl::FailedPreconditionError(
        "virtio_net: device has no MAC (VIRTIO_NET_F_MAC not offered) and Options::mac is unset");
  }
  return absl::OkStatus();
}

// One DMA region: each queue's descriptor table, driver area and device area (§2.7: 16-, 2-
// and 4-byte alignment; each starts on its own cache line here), the control buffer, then the
// packet buffers on kBufferSize boundaries.
absl::Status VirtioNetPort::SetupQueues() {
  const uint32_t nrx = options_.rx_ring_size, ntx = options_.tx_ring_size;
  // The control queue: as small as will do (one command at a time, 2 descriptors).
  uint32_t nctrl = 0;
  if (have_ctrl_) {
    RETURN_IF_ERROR(WriteCommon(kCommonQueueSelect, 2, kCtrlQueue));
    ASSIGN_OR_RETURN(max, ReadCommon(kCommonQueueSize, 2));
    nctrl = kCtrlQueueMax;
    while (nctrl > max) nctrl /= 2;
    if (nctrl < 2) {
      return absl::FailedPreconditionError(
          absl::StrFormat("virtio_net: control queue size %u (need 2 descriptors)", max));
    }
  }
  auto queue_bytes = [](uint32_t n) {
    return AlignUp(16 * n, 64) + AlignUp(6 + 2 * n, 64) + AlignUp(6 + 8 * n, 64);
  };
  const size_t ctrl_off = queue_bytes(nrx) + queue_bytes(ntx) + (nctrl ? queue_bytes(nctrl) : 0);
  const size_t buf_off = AlignUp(ctrl_off + 64, kBufferSize);
  const size_t total = buf_off + size_t{options_.buffer_count} * kBufferSize;
  absl::StatusOr<memory::MemoryRegion> region =
      memory::MemoryRegion::Allocate(total, {options_.huge_pages});
  if (!region.ok()) return region.status();
  region_ = *std::move(region);
  absl::StatusOr<uint64_t> iova = transport_->MapDma(region_.base(), region_.size());
  if (!iova.ok()) return iova.status();
  iova_ = *iova;
  mapped_ = true;
  uint8_t* base = static_cast<uint8_t*>(region_.base());
  pool_.Init(this, base + buf_off, iova_ + buf_off, options_.buffer_count);
  ctrl_buf_ = base + ctrl_off;
  ctrl_iova_ = iova_ + ctrl_off;

  size_t off = 0;
  RETURN_IF_ERROR(SetupQueue(rx_, kRxQueue, nrx, base, &off));
  RETURN_IF_ERROR(SetupQueue(tx_, kTxQueue, ntx, base, &off));
  if (have_ctrl_) RETURN_IF_ERROR(SetupQueue(ctrl_, kCtrlQueue, nctrl, base, &off));

  // RX descriptors are device-writable and always kRxDescLen long; only addr changes on refill.
  for (uint32_t i = 0; i < nrx; ++i) {
    rx_.desc[i].len = kRxDescLen;
    rx_.desc[i].flags = kDescFWrite;
  }
  rx_refill_batch_ = nrx / 2 < kBurst ? nrx / 2 : kBurst;

  rx_data0_ = pool_.base() + kHeadroom;
  tx_hdr_base_ = reinterpret_cast<uintptr_t>(pool_.base()) + kNetHdrSize;
  to_iova_ = pool_.iova() - reinterpret_cast<uintptr_t>(pool_.base());
  info_.queue_id = 0;
  info_.buffer_count = options_.buffer_count;
  info_.buffer_capacity = kBufferSize - kHeadroom;
  info_.rx_ring_size = nrx;
  info_.tx_ring_size = ntx;
  info_.zero_copy = true;
  return absl::OkStatus();
}

// §4.1.5.1.3 virtqueue configuration: select, read the maximum size, write ours, the three
// areas' addresses, read queue_notify_off, enable.
absl::Status VirtioNetPort::SetupQueue(Queue& q, uint16_t index, uint32_t size, uint8_t* base,
                                       size_t* offset) {
  RETURN_IF_ERROR(WriteCommon(kCommonQueueSelect, 2, index));
  ASSIGN_OR_RETURN(max, ReadCommon(kCommonQueueSize, 2));
  if (max == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("virtio_net: queue %u is not available (queue_size 0)", index));
  }
  if (size > max) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: queue %u: ring size %u exceeds the device's maximum %u", index, size, max));
  }
  RETURN_IF_ERROR(WriteCommon(kCommonQueueSize, 2, size));
  RETURN_IF_ERROR(WriteCommon(kCommonQueueMsixVector, 2, kNoMsixVector));  // polling
  const size_t desc_off = *offset;
  const size_t avail_off = desc_off + AlignUp(16 * size, 64);
  const size_t used_off = avail_off + AlignUp(6 + 2 * size, 64);
  *offset = used_off + AlignUp(6 + 8 * size, 64);
  struct Area {
    uint32_t reg;
    size_t off;
  };
  for (const Area& a : {Area{kCommonQueueDesc, desc_off}, Area{kCommonQueueDriver, avail_off},
                        Area{kCommonQueueDevice, used_off}}) {
    // §4.1.3.1: a 64-bit field may be written as two 32-bit halves.
    const uint64_t addr = iova_ + a.off;
    RETURN_IF_ERROR(WriteCommon(a.reg, 4, static_cast<uint32_t>(addr)));
    RETURN_IF_ERROR(WriteCommon(a.reg + 4, 4, static_cast<uint32_t>(addr >> 32)));
  }
  // §4.1.4.4: the queue's notify address is cap.offset + queue_notify_off * multiplier, and
  // must lie inside the notify structure (2 bytes written).
  ASSIGN_OR_RETURN(notify_off, ReadCommon(kCommonQueueNotifyOff, 2));
  const uint64_t at = uint64_t{notify_off} * notify_multiplier_;
  if (at + 2 > notify_len_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: queue %u notify address %u * %u outside the notify structure (%u bytes)",
        index, notify_off, notify_multiplier_, notify_len_));
  }
  ASSIGN_OR_RETURN(notify, transport_->Register16(notify_bar_, notify_off_ + at));

  q.index = index;
  q.size = static_cast<uint16_t>(size);
  q.mask = size - 1;
  q.desc = reinterpret_cast<VirtqDesc*>(base + desc_off);
  // §2.7.6 struct virtq_avail { flags; idx; ring[size]; used_event }.
  uint16_t* avail = reinterpret_cast<uint16_t*>(base + avail_off);
  q.avail_flags = avail;
  q.avail_idx = avail + 1;
  q.avail_ring = avail + 2;
  // §2.7.8 struct virtq_used { flags; idx; ring[size] of {id, len}; avail_event }.
  uint16_t* used = reinterpret_cast<uint16_t*>(base + used_off);
  q.used_flags = used;
  q.used_idx = used + 1;
  q.used_ring = reinterpret_cast<const volatile VirtqUsedElem*>(used + 2);
  q.notify = notify;
  // §2.7.7: polling, no interrupts wanted.
  *q.avail_flags = kAvailFNoInterrupt;
  q.desc_buf.assign(size, kNotOutstanding);
  // Avail slot i names descriptor i for good (see RefillRx); the control queue writes its own.
  for (uint32_t i = 0; i < size; ++i) q.avail_ring[i] = static_cast<uint16_t>(i);
  RETURN_IF_ERROR(WriteCommon(kCommonQueueEnable, 2, 1));
  return absl::OkStatus();
}

// §5.1.4: mac at 0 (with VIRTIO_NET_F_MAC), status at 6. §4.1.4.3.1: config_generation read
// before and after, retried while it changes, so the six bytes are one consistent MAC.
absl::Status VirtioNetPort::ReadMac() {
  if ((features_ & Bit(kFeatureMac)) == 0) return absl::OkStatus();
  for (int attempt = 0; attempt < 16; ++attempt) {
    ASSIGN_OR_RETURN(before, ReadCommon(kCommonConfigGeneration, 1));
    MacAddress mac{};
    for (uint32_t i = 0; i < 6; ++i) {
      ASSIGN_OR_RETURN(byte, transport_->ReadBar(device_bar_, device_off_ + kNetCfgMac + i, 1));
      mac[i] = static_cast<uint8_t>(byte);
    }
    ASSIGN_OR_RETURN(after, ReadCommon(kCommonConfigGeneration, 1));
    if (before == after) {
      mac_ = mac;
      return absl::OkStatus();
    }
  }
  return absl::FailedPreconditionError(
      "virtio_net: config_generation kept changing while reading the MAC");
}

bool VirtioNetPort::link_up() {
  // §5.1.4: without VIRTIO_NET_F_STATUS the link is to be assumed active.
  if ((features_ & Bit(kFeatureStatus)) == 0) return true;
  absl::StatusOr<uint32_t> s =
      transport_->ReadBar(device_bar_, device_off_ + kNetCfgStatus, 2);
  return s.ok() && (*s & kNetStatusLinkUp) != 0;
}

absl::Status VirtioNetPort::WaitForLink(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!link_up()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "virtio_net: link not up (VIRTIO_NET_S_LINK_UP) within %s",
          absl::FormatDuration(timeout)));
    }
    transport_->Idle();
  }
  return absl::OkStatus();
}

// ---- Control queue (§5.1.6.5) -------------------------------------------------------------------

// One command at a time: a device-readable descriptor {class, command, data} and a
// device-writable one for the ack byte (§2.6.4: the device may not assume a framing beyond
// readable-then-writable). Waits (bounded) for the device to return it.
absl::Status VirtioNetPort::CtrlCommand(uint8_t cls, uint8_t cmd, const void* data,
                                        uint32_t length) {
  if (!have_ctrl_) {
    return absl::FailedPreconditionError("virtio_net: no control queue (VIRTIO_NET_F_CTRL_VQ)");
  }
  if (ctrl_broken_) {
    return absl::FailedPreconditionError(
        "virtio_net: control queue unusable after an earlier command was never answered");
  }
  if (length > kCtrlMaxData) return absl::InvalidArgumentError("virtio_net: command too long");
  ctrl_buf_[0] = cls;
  ctrl_buf_[1] = cmd;
  std::memcpy(ctrl_buf_ + 2, data, length);
  volatile uint8_t* ack = ctrl_buf_ + kCtrlAckOffset;
  *ack = 0xFF;  // neither VIRTIO_NET_OK nor VIRTIO_NET_ERR until the device writes it
  Queue& q = ctrl_;
  q.desc[0] = VirtqDesc{ctrl_iova_, 2 + length, kDescFNext, 1};
  q.desc[1] = VirtqDesc{ctrl_iova_ + kCtrlAckOffset, 1, kDescFWrite, 0};
  q.avail_ring[q.avail_shadow & q.mask] = 0;
  ++q.avail_shadow;
  __atomic_thread_fence(__ATOMIC_RELEASE);  // §2.7.13.3: ring entry before idx
  *q.avail_idx = q.avail_shadow;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  *q.notify = q.index;  // rare: always notify
  ++xstats_.notifies;
  ++xstats_.ctrl_commands;
  const absl::Time deadline = absl::Now() + options_.ctrl_timeout;
  uint16_t done;
  while ((done = static_cast<uint16_t>(*q.used_idx - q.used_seen)) == 0) {
    if (absl::Now() > deadline) {
      ctrl_broken_ = true;
      return absl::DeadlineExceededError(absl::StrFormat(
          "virtio_net: control command class %u cmd %u not answered within %s", cls, cmd,
          absl::FormatDuration(options_.ctrl_timeout)));
    }
    transport_->Idle();
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  const uint32_t id = q.used_ring[q.used_seen & q.mask].id;
  q.used_seen = static_cast<uint16_t>(q.used_seen + done);
  if (done != 1 || id != 0) {
    ++stats_.bad_descriptors;
    ++xstats_.bad_used_id;
    ctrl_broken_ = true;
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: control queue returned %u entries, id %u (gave one, id 0)", done, id));
  }
  if (*ack != kCtrlOk) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "virtio_net: device refused control command class %u cmd %u (ack %u)", cls, cmd, *ack));
  }
  return absl::OkStatus();
}

absl::Status VirtioNetPort::SetPromiscuous(bool on) {
  if ((features_ & Bit(kFeatureCtrlRx)) == 0 || !have_ctrl_) {
    return absl::FailedPreconditionError(
        "virtio_net: device offers no VIRTIO_NET_F_CTRL_RX (promiscuous mode is its own)");
  }
  const uint8_t value = on ? 1 : 0;
  RETURN_IF_ERROR(CtrlCommand(kCtrlClassRx, kCtrlRxPromisc, &value, 1));
  promiscuous_off_ = !on;
  return absl::OkStatus();
}

absl::Status VirtioNetPort::SetMac(const std::array<uint8_t, 6>& mac) {
  if ((mac[0] & 1) != 0 || mac == MacAddress{}) {
    return absl::InvalidArgumentError(
        absl::StrCat("virtio_net: ", MacString(mac), " is not a unicast address"));
  }
  if ((features_ & Bit(kFeatureCtrlMacAddr)) == 0 || !have_ctrl_) {
    return absl::FailedPreconditionError(
        "virtio_net: device offers no VIRTIO_NET_F_CTRL_MAC_ADDR (cannot set the MAC)");
  }
  RETURN_IF_ERROR(CtrlCommand(kCtrlClassMac, kCtrlMacAddrSet, mac.data(), 6));
  mac_ = mac;
  return absl::OkStatus();
}

// ---- Teardown -----------------------------------------------------------------------------------

void VirtioNetPort::StopDevice() {
  if (!device_live_) return;
  // §4.1.4.3.2: reset stops the device's use of the queues; wait (bounded) for it to read 0
  // before the memory goes away.
  (void)ResetDevice();
  device_live_ = false;
}

VirtioNetPort::~VirtioNetPort() {
  StopDevice();
  if (mapped_) (void)transport_->UnmapDma(iova_);
}

// ---- Fast path ----------------------------------------------------------------------------------

// §2.7.13 supplying buffers, §2.7.10 notifications: ring entries, release barrier, idx store,
// full barrier (the idx store must be visible before used->flags is read), then notify unless
// the device said VIRTQ_USED_F_NO_NOTIFY.
inline void VirtioNetPort::Publish(Queue& q, uint16_t new_idx) {
  __atomic_thread_fence(__ATOMIC_RELEASE);
  *q.avail_idx = new_idx;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (__builtin_expect((*q.used_flags & kUsedFNoNotify) != 0, 0)) {
    ++xstats_.notifies_skipped;
    return;
  }
  *q.notify = q.index;
  ++xstats_.notifies;
}

// Descriptor ids follow the avail ring: avail slot i always names descriptor i (written once at
// setup), so posting a buffer writes only its descriptor, and the avail idx store covers the
// ring entries. The device may return descriptors out of order (§2.7.8); a slot whose
// descriptor is still out is never reused: posting stops there until it comes back.

// Gives free buffers to free RX descriptors from avail_shadow on: descriptor address only
// (length and WRITE are fixed), one avail idx store and at most one notify. Runs that do not
// wrap, pointers walking (no index masking).
void VirtioNetPort::RefillRx() {
  Queue& q = rx_;
  uint32_t n = q.size - q.outstanding;
  if (n > pool_.free_count()) n = pool_.free_count();
  if (n == 0) return;
  const uint32_t first = q.avail_shadow & q.mask;
  const uint32_t run1 = n < q.size - first ? n : q.size - first;
  const uint32_t* fb = pool_.free_stack() + pool_.free_count();
  const uint64_t iova = pool_.iova() + (kHeadroom - kNetHdrSize);
  uint32_t posted = 0;
  for (int run = 0; run < 2; ++run) {
    const uint32_t from = run == 0 ? first : 0;
    const uint32_t count = run == 0 ? run1 : n - run1;
    uint32_t* s = q.desc_buf.data() + from;
    uint32_t* const end = s + count;
    VirtqDesc* d = q.desc + from;
    for (; s != end; ++s, ++d) {
      if (__builtin_expect(*s != kNotOutstanding, 0)) break;  // still out (out of order)
      const uint32_t b = *--fb;
      *s = b;
      d->addr = iova + uint64_t{b} * kBufferSize;
    }
    posted += static_cast<uint32_t>(s - (q.desc_buf.data() + from));
    if (s != end) break;
  }
  if (posted == 0) return;
  pool_.set_free_count(pool_.free_count() - posted);
  q.outstanding += posted;
  q.avail_shadow = static_cast<uint16_t>(q.avail_shadow + posted);
  Publish(q, q.avail_shadow);
}

// Reaps used entries [from, from + count) of the RX used ring (a run that does not wrap) into
// *out; returns bytes handed out and advances *out. Every entry is checked: id in range and
// outstanding, length = header + 1 .. kRxMaxFrame. A bad id is skipped; a bad length's buffer
// goes back to the free stack, never to the caller. Values used once per entry are read from
// members inside the loop (a memory operand, no register held), so the loop's state fits in
// registers.
uint64_t VirtioNetPort::Reap(PacketBuffer** out, uint32_t from, uint32_t count) {
  const VirtqUsedElem* u = const_cast<const VirtqUsedElem*>(rx_.used_ring) + from;
  const VirtqUsedElem* const end = u + count;
  uint32_t* const desc_buf = rx_.desc_buf.data();
  uint8_t* const caller = pool_.caller_table();
  PacketBuffer* p = *out;
  uint64_t bytes = 0;
  for (; u != end; ++u) {
    uint64_t elem;
    std::memcpy(&elem, u, 8);  // id and len in one load (4-byte aligned: memcpy, not a cast)
    const uint32_t id = static_cast<uint32_t>(elem);
    const uint64_t len = elem >> 32;
    // The id must name a descriptor the driver gave and has not had back.
    if (__builtin_expect(id > rx_.mask, 0)) {
      ++xstats_.bad_used_id;
      continue;
    }
    const uint32_t b = desc_buf[id];
    if (__builtin_expect(b == kNotOutstanding, 0)) {
      ++xstats_.bad_used_id;
      continue;
    }
    desc_buf[id] = kNotOutstanding;
    // At least one byte of frame after the header, and no more than the descriptor held.
    if (__builtin_expect(len - (kNetHdrSize + 1) >= kRxMaxFrame, 0)) {
      ++xstats_.bad_rx_length;
      --rx_.outstanding;
      pool_.Push(b);  // never reached the caller
      continue;
    }
    caller[b] = Pool::kCaller;
    uint8_t* const data = rx_data0_ + size_t{b} * kBufferSize;
    p->data = data;
    p->device_address = reinterpret_cast<uintptr_t>(data) + to_iova_;
    // length (len - header) and capacity in one store; len >= header here, so no borrow.
    const uint64_t len_cap = len + ((uint64_t{kBufferSize - kHeadroom} << 32) - kNetHdrSize);
    std::memcpy(&p->length, &len_cap, 8);
    p->index = b;
    p->pool = this;
    ++p;
    bytes += len;  // the headers come off after the loop
  }
  const uint32_t n = static_cast<uint32_t>(p - *out);
  rx_.outstanding -= n;
  *out = p;
  return bytes - uint64_t{n} * kNetHdrSize;
}

size_t VirtioNetPort::RxBurst(absl::Span<PacketBuffer> out) {
  if (tx_.outstanding != 0) ReclaimTx();
  Queue& q = rx_;
  const uint16_t seen = q.used_seen;
  const uint16_t pending = static_cast<uint16_t>(*q.used_idx - seen);
  if (__builtin_expect(pending > q.outstanding, 0)) {
    // §2.7.8: the device may only return what it was given; a used idx past that is a lie.
    // Nothing is read; the queue stays as it was (a device that keeps lying gets nothing, and
    // each poll that sees it counts).
    ++stats_.bad_descriptors;
    ++xstats_.bad_used_idx;
    return 0;
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);  // §2.7.14: entries are read after idx
  const uint32_t limit = pending < out.size() ? pending : static_cast<uint32_t>(out.size());
  const uint32_t first = seen & q.mask;
  const uint32_t run1 = limit < q.size - first ? limit : q.size - first;
  const uint64_t bad_before = xstats_.bad_used_id + xstats_.bad_rx_length;
  PacketBuffer* p = out.data();
  uint64_t bytes = Reap(&p, first, run1);
  if (limit > run1) bytes += Reap(&p, 0, limit - run1);
  const uint32_t n = static_cast<uint32_t>(p - out.data());
  q.used_seen = static_cast<uint16_t>(seen + limit);
  stats_.rx_packets += n;
  stats_.rx_bytes += bytes;
  stats_.bad_descriptors += xstats_.bad_used_id + xstats_.bad_rx_length - bad_before;
  if (q.size - q.outstanding >= rx_refill_batch_) RefillRx();
  return n;
}

// Takes back what the device has sent: the same checks on used entries as RX (the length of a
// device-readable buffer means nothing and is ignored, §2.7.8.2). Runs that do not wrap.
void VirtioNetPort::ReclaimTx() {
  Queue& q = tx_;
  const uint16_t seen = q.used_seen;
  const uint16_t pending = static_cast<uint16_t>(*q.used_idx - seen);
  if (pending == 0) return;
  if (__builtin_expect(pending > q.outstanding, 0)) {
    ++stats_.bad_descriptors;
    ++xstats_.bad_used_idx;
    return;
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  const uint32_t mask = q.mask;
  const uint32_t first = seen & mask;
  const uint32_t run1 = pending < q.size - first ? pending : q.size - first;
  uint32_t* const desc_buf = q.desc_buf.data();
  uint32_t* fb = pool_.free_stack() + pool_.free_count();
  uint32_t bad = 0;
  for (int run = 0; run < 2; ++run) {
    const VirtqUsedElem* u = const_cast<const VirtqUsedElem*>(q.used_ring) + (run ? 0 : first);
    const VirtqUsedElem* const end = u + (run ? pending - run1 : run1);
    for (; u != end; ++u) {
      const uint32_t id = u->id;
      if (__builtin_expect(id > mask, 0)) {
        ++bad;
        continue;
      }
      const uint32_t b = desc_buf[id];
      if (__builtin_expect(b == kNotOutstanding, 0)) {
        ++bad;
        continue;
      }
      desc_buf[id] = kNotOutstanding;
      *fb++ = b;  // the caller table stays "not the caller's" (FillTx set it)
    }
  }
  q.used_seen = static_cast<uint16_t>(seen + pending);
  const uint32_t done = static_cast<uint32_t>(fb - (pool_.free_stack() + pool_.free_count()));
  pool_.set_free_count(pool_.free_count() + done);
  q.outstanding -= done;
  stats_.tx_completed += done;
  stats_.bad_descriptors += bad;
  xstats_.bad_used_id += bad;
}

// Queues [p, end) on TX descriptors from `from` on (a run that does not wrap); stops at the
// first bad buffer (counted) or a descriptor still out. Returns where it stopped. Descriptor,
// slot and packet pointers walk together; values used once per frame are members read as
// memory operands, so the loop's state fits in registers.
const PacketBuffer* VirtioNetPort::FillTx(const PacketBuffer* p, const PacketBuffer* end,
                                          uint32_t from) {
  VirtqDesc* d = tx_.desc + from;
  uint32_t* s = tx_.desc_buf.data() + from;
  uint8_t* const caller = pool_.caller_table();
  for (; p != end; ++p, ++d, ++s) {
    const uint32_t b = p->index;
    const uint32_t len = p->length;
    const uintptr_t data = reinterpret_cast<uintptr_t>(p->data);
    // Ours, in the caller's hands, room for the header before data, 0 < length <= room after:
    // the header's offset in the buffer and length - 1 both below 2 KiB (one test), then the
    // header + frame within the buffer. (No test of `pool`: data must lie inside this port's
    // buffer `index`, which the caller holds, so another pool's buffer fails anyway.)
    const uintptr_t hdr_off = data - (tx_hdr_base_ + uintptr_t{b} * kBufferSize);
    if (__builtin_expect(b >= options_.buffer_count ||
                             caller[b] != Pool::kCaller ||
                             (hdr_off | (len - 1)) >= kBufferSize ||
                             hdr_off + len > kBufferSize - kNetHdrSize,
                         0)) {
      ++stats_.bad_buffers;
      break;
    }
    if (__builtin_expect(*s != kNotOutstanding, 0)) break;  // still out (out of order)
    caller[b] = Pool::kNotCaller;
    *s = b;
    // §5.1.6.2: a zeroed virtio_net_hdr (no checksum offload, no GSO, num_buffers 0) in the
    // 12 bytes before the frame; one descriptor covers header and frame.
    uint8_t* const hdr = reinterpret_cast<uint8_t*>(data - kNetHdrSize);
    const uint64_t zero8 = 0;
    const uint32_t zero4 = 0;
    std::memcpy(hdr, &zero8, 8);
    std::memcpy(hdr + 8, &zero4, 4);
    d->addr = data - kNetHdrSize + to_iova_;
    const uint64_t len_flags_next = len + kNetHdrSize;  // flags 0 (device-readable), next 0
    std::memcpy(&d->len, &len_flags_next, 8);
    stats_.tx_bytes += len;
  }
  return p;
}

size_t VirtioNetPort::TxBurst(absl::Span<const PacketBuffer> pkts) {
  if (tx_.outstanding != 0) ReclaimTx();
  Queue& q = tx_;
  const uint32_t room = q.size - q.outstanding;
  const uint32_t n = pkts.size() < room ? static_cast<uint32_t>(pkts.size()) : room;
  const uint16_t start = q.avail_shadow;
  const uint32_t first = start & q.mask;
  // At most two runs: the ring wraps at most once.
  const uint32_t run1 = n < q.size - first ? n : q.size - first;
  const PacketBuffer* const p0 = pkts.data();
  const uint64_t bad_before = stats_.bad_buffers;
  const PacketBuffer* p = FillTx(p0, p0 + run1, first);
  if (p == p0 + run1 && n > run1) p = FillTx(p, p0 + n, 0);
  const uint32_t sent = static_cast<uint32_t>(p - p0);
  if (sent != 0) {
    q.outstanding += sent;
    q.avail_shadow = static_cast<uint16_t>(start + sent);
    stats_.tx_packets += sent;
    Publish(q, q.avail_shadow);  // one avail idx store, at most one notify per burst
  }
  // Not queued for want of a descriptor (ring full, or a slot still out): the caller keeps
  // them. A bad buffer's stop is counted in bad_buffers instead.
  if (sent < pkts.size() && stats_.bad_buffers == bad_before) {
    stats_.tx_ring_full += pkts.size() - sent;
  }
  return sent;
}

size_t VirtioNetPort::AllocBurst(absl::Span<PacketBuffer> out) {
  return pool_.Alloc(out, &stats_);
}

size_t VirtioNetPort::FreeBurst(absl::Span<const PacketBuffer> bufs) {
  return pool_.Free(bufs, &stats_);
}

void VirtioNetPort::Service() {
  if (tx_.outstanding != 0) ReclaimTx();
  if (rx_.outstanding != rx_.size) RefillRx();
}

}  // namespace vfdrivers::net::virtio_net
