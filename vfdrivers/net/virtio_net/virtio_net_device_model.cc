// Virtio-net device model: see virtio_net_device_model.h. Layouts from Virtio 1.2 §4.1.4
// (capabilities, common config), §5.1.4 (device config), §2.7 (split virtqueues).
#include "vfdrivers/net/virtio_net/virtio_net_device_model.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vfdrivers::net::virtio_net::testing {
namespace {

constexpr uint64_t Bit(int n) { return uint64_t{1} << n; }
constexpr uint16_t kNotifyIdle = 0xFFFF;  // what a notify slot holds when no store is pending

void Put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
void Put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

// struct virtio_pci_cap (+ notify_off_multiplier for the notify capability) at `at`.
void PutCap(uint8_t* config, uint32_t at, uint8_t next, uint8_t type, uint8_t bar, uint32_t offset,
            uint32_t length) {
  config[at] = kPciCapVendor;
  config[at + 1] = next;
  config[at + 2] = type == kCapNotifyCfg ? 20 : 16;
  config[at + 3] = type;
  config[at + 4] = bar;
  Put32(config + at + 8, offset);
  Put32(config + at + 12, length);
  if (type == kCapNotifyCfg) Put32(config + at + 16, VirtioNetDeviceModel::kNotifyMultiplier);
}

class ModelTransport final : public Transport {
 public:
  explicit ModelTransport(VirtioNetDeviceModel* m) : m_(m) {}
  absl::StatusOr<uint8_t> ReadConfig8(uint32_t off) override {
    if (off >= 256) return Bad("config", off);
    return static_cast<uint8_t>(m_->ConfigRead(off, 1));
  }
  absl::StatusOr<uint16_t> ReadConfig16(uint32_t off) override {
    if (off >= 255 || off % 2) return Bad("config", off);
    return static_cast<uint16_t>(m_->ConfigRead(off, 2));
  }
  absl::StatusOr<uint32_t> ReadConfig32(uint32_t off) override {
    if (off >= 253 || off % 4) return Bad("config", off);
    return m_->ConfigRead(off, 4);
  }
  absl::Status EnableBusMastering() override { return absl::OkStatus(); }
  absl::StatusOr<uint64_t> BarSize(uint32_t bar) override {
    return bar == VirtioNetDeviceModel::kBar ? VirtioNetDeviceModel::kBarSize : 0;
  }
  absl::StatusOr<uint32_t> ReadBar(uint32_t bar, uint64_t off, int width) override {
    if (!Valid(bar, off, width)) return Bad("BAR", off);
    return m_->BarRead(off, width);
  }
  absl::Status WriteBar(uint32_t bar, uint64_t off, int width, uint32_t value) override {
    if (!Valid(bar, off, width)) return Bad("BAR", off);
    m_->BarWrite(off, width, value);
    return absl::OkStatus();
  }
  absl::StatusOr<volatile uint16_t*> Register16(uint32_t bar, uint64_t off) override {
    if (!Valid(bar, off, 2) || off < VirtioNetDeviceModel::kNotifyAt) return Bad("notify", off);
    return m_->NotifyPtr(off);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    if (size == 0 || size % 4096 != 0 || reinterpret_cast<uintptr_t>(vaddr) % 4096 != 0) {
      return absl::InvalidArgumentError("virtio-net model: DMA range not page-aligned");
    }
    return m_->Map(vaddr, size);
  }
  absl::Status UnmapDma(uint64_t iova) override {
    if (m_->Unmap(iova)) return absl::OkStatus();
    return absl::NotFoundError("virtio-net model: no such mapping");
  }
  // A busy-waiting driver gives the device time to run.
  void Idle() override { m_->Step(); }

 private:
  static bool Valid(uint32_t bar, uint64_t off, int width) {
    return bar == VirtioNetDeviceModel::kBar && (width == 1 || width == 2 || width == 4) &&
           off % width == 0 && off + width <= VirtioNetDeviceModel::kBarSize;
  }
  static absl::Status Bad(const char* what, uint64_t off) {
    return absl::OutOfRangeError(absl::StrCat("virtio-net model: bad ", what, " access at ", off));
  }
  VirtioNetDeviceModel* m_;
};

}  // namespace

VirtioNetDeviceModel::VirtioNetDeviceModel(const ModelOptions& options)
    : options_(options), hostile_(options.hostile), mac_(options.mac) {
  for (uint16_t& n : notify_) n = kNotifyIdle;
  // PCI header: virtio vendor 0x1af4, modern virtio-net 0x1041 (§4.1.2.1), class 0x020000,
  // Status.CapabilitiesList, capabilities pointer.
  Put16(config_ + 0x00, 0x1af4);
  Put16(config_ + 0x02, 0x1041);
  Put16(config_ + 0x06, 1u << 4);
  config_[0x08] = 1;     // revision 1: modern
  config_[0x0B] = 0x02;  // network controller
  config_[0x34] = 0x40;
  const uint8_t common_bar = hostile_ == Hostile::kCapBadBar ? 9 : kBar;
  const uint32_t common_off = hostile_ == Hostile::kCapOffsetOutsideBar ? 0x3800 : kCommonAt;
  PutCap(config_, 0x40, 0x50, kCapCommonCfg, common_bar, common_off, 0x1000);
  PutCap(config_, 0x50, 0x60, kCapIsrCfg, kBar, kIsrAt, 0x1000);
  PutCap(config_, 0x60, 0x70, kCapDeviceCfg, kBar, kDeviceAt, 0x1000);
  PutCap(config_, 0x70, hostile_ == Hostile::kCapListLoop ? 0x40 : 0, kCapNotifyCfg, kBar,
         kNotifyAt, 0x1000);
  if (hostile_ == Hostile::kCapFirstCommonBad) {
    // Listed first, unusable (length beyond the BAR); the good one at 0x40 follows.
    PutCap(config_, 0x90, 0x40, kCapCommonCfg, kBar, 0x2000, 0x4000);
    config_[0x34] = 0x90;
  }
  if (hostile_ == Hostile::kCapPointerOutOfRange) config_[0x34] = 0xFC;

  offered_ = Bit(kFeatureVersion1) | Bit(kFeatureAccessPlatform);
  if (options_.offer_mac) offered_ |= Bit(kFeatureMac);
  if (options_.offer_status) offered_ |= Bit(kFeatureStatus);
  if (options_.offer_ctrl) {
    offered_ |= Bit(kFeatureCtrlVq) | Bit(kFeatureCtrlRx) | Bit(kFeatureCtrlMacAddr);
  }
  // Features the driver must not take (it asks for none of them): mergeable buffers, checksum
  // offload, event index, indirect descriptors.
  offered_ |= Bit(15) | Bit(0) | Bit(1) | Bit(29) | Bit(28);
  if (hostile_ == Hostile::kNoVersion1) offered_ &= ~Bit(kFeatureVersion1);
  if (hostile_ == Hostile::kNoAccessPlatform) offered_ &= ~Bit(kFeatureAccessPlatform);
  net_status_ = options_.link_up ? kNetStatusLinkUp : 0;
  Reset();
  resets_ = 0;
}

std::unique_ptr<Transport> VirtioNetDeviceModel::MakeTransport() {
  return std::make_unique<ModelTransport>(this);
}

void VirtioNetDeviceModel::set_link(bool up) {
  net_status_ = up ? kNetStatusLinkUp : 0;
  ++generation_;
}

void VirtioNetDeviceModel::Reset() {
  ++resets_;
  rx_held_ = tx_held_ = -1;
  status_ = 0;
  driver_features_ = 0;
  device_feature_select_ = driver_feature_select_ = 0;
  queue_select_ = 0;
  for (uint16_t q = 0; q < 3; ++q) {
    Queue& Q = queues_[q];
    Q = Queue{};
    Q.max = q == kCtrlQueue ? 64 : options_.queue_max;
    if (q == kRxQueue && hostile_ == Hostile::kQueueSizeZero) Q.max = 0;
    if (q == kCtrlQueue && !options_.offer_ctrl) Q.max = 0;
    Q.size = Q.max;
    Q.msix = 0;
  }
  promisc_ = true;
  mac_ = options_.mac;
}

uint32_t VirtioNetDeviceModel::ConfigRead(uint32_t off, int width) const {
  uint32_t v = 0;
  std::memcpy(&v, config_ + off, width);
  return v;
}

bool VirtioNetDeviceModel::Live(uint16_t q) const {
  return (status_ & kStatusDriverOk) != 0 && queues_[q].enable != 0 && queues_[q].size != 0;
}

uint32_t VirtioNetDeviceModel::BarRead(uint64_t off, int width) {
  if (off >= kNotifyAt) {
    uint32_t v = 0;
    std::memcpy(&v, reinterpret_cast<uint8_t*>(notify_) + (off - kNotifyAt), width);
    return v;
  }
  if (off >= kDeviceAt) {
    uint8_t cfg[16] = {};
    std::memcpy(cfg, mac_.data(), 6);  // §5.1.4: mac, status, max_virtqueue_pairs, mtu
    Put16(cfg + 6, net_status_);
    Put16(cfg + 8, 1);
    Put16(cfg + 10, 1500);
    const uint64_t at = off - kDeviceAt;
    if (at + width > sizeof cfg) return 0;
    uint32_t v = 0;
    std::memcpy(&v, cfg + at, width);
    return v;
  }
  if (off >= kIsrAt) return 0;
  const Queue& Q = queues_[queue_select_ < 3 ? queue_select_ : 0];
  const bool q_ok = queue_select_ < 3;
  switch (off) {
    case kCommonDeviceFeatureSelect:
      return device_feature_select_;
    case kCommonDeviceFeature:
      return device_feature_select_ < 2
                 ? static_cast<uint32_t>(offered_ >> (32 * device_feature_select_))
                 : 0;
    case kCommonDriverFeatureSelect:
      return driver_feature_select_;
    case kCommonDriverFeature:
      return driver_feature_select_ < 2
                 ? static_cast<uint32_t>(driver_features_ >> (32 * driver_feature_select_))
                 : 0;
    case kCommonMsixConfig:
      return msix_config_;
    case kCommonNumQueues:
      return 3;
    case kCommonDeviceStatus:
      // A device that never finishes its reset: reads back as still acknowledged.
      if (hostile_ == Hostile::kResetNeverCompletes && status_ == 0) return kStatusAcknowledge;
      return status_;
    case kCommonConfigGeneration:
      return generation_;
    case kCommonQueueSelect:
      return queue_select_;
    case kCommonQueueSize:
      return q_ok ? Q.size : 0;
    case kCommonQueueMsixVector:
      return q_ok ? Q.msix : 0;
    case kCommonQueueEnable:
      return q_ok ? Q.enable : 0;
    case kCommonQueueNotifyOff:
      if (!q_ok) return 0;
      return hostile_ == Hostile::kNotifyOffOutside ? 0x7FFF : queue_select_;
    case kCommonQueueDesc:
      return static_cast<uint32_t>(Q.desc);
    case kCommonQueueDesc + 4:
      return static_cast<uint32_t>(Q.desc >> 32);
    case kCommonQueueDriver:
      return static_cast<uint32_t>(Q.driver);
    case kCommonQueueDriver + 4:
      return static_cast<uint32_t>(Q.driver >> 32);
    case kCommonQueueDevice:
      return static_cast<uint32_t>(Q.device);
    case kCommonQueueDevice + 4:
      return static_cast<uint32_t>(Q.device >> 32);
  }
  return 0;
}

void VirtioNetDeviceModel::BarWrite(uint64_t off, int width, uint32_t value) {
  if (off >= kNotifyAt) {
    std::memcpy(reinterpret_cast<uint8_t*>(notify_) + (off - kNotifyAt), &value, width);
    return;
  }
  if (off >= kDeviceAt) return;  // the driver never writes device config (read-only to us)
  if (off >= kIsrAt) return;
  Queue* Q = queue_select_ < 3 ? &queues_[queue_select_] : nullptr;
  auto set_low = [](uint64_t& f, uint32_t v) { f = (f & ~uint64_t{0xFFFFFFFF}) | v; };
  auto set_high = [](uint64_t& f, uint32_t v) { f = (f & 0xFFFFFFFF) | (uint64_t{v} << 32); };
  switch (off) {
    case kCommonDeviceFeatureSelect:
      device_feature_select_ = value;
      return;
    case kCommonDriverFeatureSelect:
      driver_feature_select_ = value;
      return;
    case kCommonDriverFeature:
      if (driver_feature_select_ == 0) set_low(driver_features_, value);
      if (driver_feature_select_ == 1) set_high(driver_features_, value);
      return;
    case kCommonMsixConfig:
      msix_config_ = static_cast<uint16_t>(value);
      return;
    case kCommonDeviceStatus: {
      const uint8_t v = static_cast<uint8_t>(value);
      if (v == 0) {
        Reset();
        return;
      }
      uint8_t next = v;
      // §3.1.1: FEATURES_OK sticks only for a subset of what was offered.
      if ((v & kStatusFeaturesOk) && ((driver_features_ & ~offered_) != 0 ||
                                      hostile_ == Hostile::kFeaturesOkRefused)) {
        next &= ~kStatusFeaturesOk;
      }
      status_ = next;
      if ((status_ & kStatusDriverOk) && hostile_ == Hostile::kNoNotify) {
        for (uint16_t q = 0; q < 3; ++q) {
          if (uint8_t* f = Dma(queues_[q].device, 2)) Put16(f, kUsedFNoNotify);
        }
      }
      return;
    }
    case kCommonQueueSelect:
      queue_select_ = static_cast<uint16_t>(value);
      return;
  }
  if (Q == nullptr) return;
  switch (off) {
    case kCommonQueueSize:
      // §4.1.4.3.2: the driver may only make it smaller; sizes are powers of two.
      if (value <= Q->max) Q->size = static_cast<uint16_t>(value);
      else ++driver_errors_;
      return;
    case kCommonQueueMsixVector:
      Q->msix = static_cast<uint16_t>(value);
      return;
    case kCommonQueueEnable:
      Q->enable = static_cast<uint16_t>(value);
      return;
    case kCommonQueueDesc:
      set_low(Q->desc, value);
      return;
    case kCommonQueueDesc + 4:
      set_high(Q->desc, value);
      return;
    case kCommonQueueDriver:
      set_low(Q->driver, value);
      return;
    case kCommonQueueDriver + 4:
      set_high(Q->driver, value);
      return;
    case kCommonQueueDevice:
      set_low(Q->device, value);
      return;
    case kCommonQueueDevice + 4:
      set_high(Q->device, value);
      return;
  }
}

volatile uint16_t* VirtioNetDeviceModel::NotifyPtr(uint64_t off) {
  return &notify_[(off - kNotifyAt) / 2];
}

uint64_t VirtioNetDeviceModel::Map(void* vaddr, size_t size) {
  const uint64_t iova = next_iova_;
  dma_[iova] = {static_cast<uint8_t*>(vaddr), size};
  next_iova_ += (size + 0xFFFFF) & ~uint64_t{0xFFFFF};  // 1 MiB granule: gaps between mappings
  next_iova_ += 0x100000;
  return iova;
}

bool VirtioNetDeviceModel::Unmap(uint64_t iova) { return dma_.erase(iova) == 1; }

uint8_t* VirtioNetDeviceModel::Dma(uint64_t iova, size_t length) {
  auto it = dma_.upper_bound(iova);
  if (it != dma_.begin()) {
    --it;
    const uint64_t off = iova - it->first;
    if (off < it->second.second && length <= it->second.second - off) {
      return it->second.first + off;
    }
  }
  ++dma_errors_;
  return nullptr;
}

uint32_t VirtioNetDeviceModel::TakeNotifies(uint16_t q) {
  CollectNotifies();
  const uint32_t n = notifies_[q];
  notifies_[q] = 0;
  return n;
}

void VirtioNetDeviceModel::CollectNotifies() {
  for (uint16_t q = 0; q < 3; ++q) {
    volatile uint16_t* slot = &notify_[q * kNotifyMultiplier / 2];
    if (*slot != kNotifyIdle) {
      if (*slot != q) ++driver_errors_;  // §4.1.5.2: the value stored is the queue index
      ++notifies_[q];
      *slot = kNotifyIdle;
    }
  }
}

bool VirtioNetDeviceModel::TakeChain(uint16_t q, uint16_t* head, std::vector<uint8_t>* readable,
                                     uint64_t* write_addr, uint32_t* write_len) {
  Queue& Q = queues_[q];
  const uint8_t* avail_idx = Dma(Q.driver + 2, 2);
  if (avail_idx == nullptr) return false;
  uint16_t idx;
  std::memcpy(&idx, avail_idx, 2);
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  if (idx == Q.last_avail) return false;
  const uint8_t* entry = Dma(Q.driver + 4 + 2 * (Q.last_avail % Q.size), 2);
  if (entry == nullptr) return false;
  std::memcpy(head, entry, 2);
  ++Q.last_avail;
  readable->clear();
  *write_addr = 0;
  *write_len = 0;
  uint16_t id = *head;
  for (uint32_t hops = 0; hops < Q.size; ++hops) {
    if (id >= Q.size) {
      ++driver_errors_;
      return false;
    }
    const uint8_t* d = Dma(Q.desc + 16 * uint64_t{id}, 16);
    if (d == nullptr) return false;
    VirtqDesc desc;
    std::memcpy(&desc, d, 16);
    if (desc.flags & kDescFWrite) {
      if (*write_len == 0) {
        *write_addr = desc.addr;
        *write_len = desc.len;
      }
    } else {
      if (*write_len != 0) ++driver_errors_;  // §2.7.4.2: readable after writable
      const uint8_t* p = Dma(desc.addr, desc.len);
      if (p == nullptr) return false;
      readable->insert(readable->end(), p, p + desc.len);
    }
    if ((desc.flags & kDescFNext) == 0) return true;
    id = desc.next;
  }
  ++driver_errors_;  // a loop
  return false;
}

// Returns a chain in the used ring (§2.7.8), lying as the hostile mode says.
void VirtioNetDeviceModel::PushUsed(uint16_t q, uint32_t id, uint32_t len, bool hostile_ok) {
  Queue& Q = queues_[q];
  const Hostile h = hostile_ok ? hostile_ : Hostile::kNone;
  uint32_t reported = id;
  if (h == Hostile::kUsedIdOutOfRange) reported = 0x10000 + id;
  if (h == Hostile::kUsedIdNotGiven) reported = (id + 1) % Q.size;
  const int copies = h == Hostile::kUsedIdDuplicate ? 2 : 1;
  for (int c = 0; c < copies; ++c) {
    uint8_t* e = Dma(Q.device + 4 + 8 * uint64_t{static_cast<uint16_t>(Q.used_idx % Q.size)}, 8);
    if (e == nullptr) return;
    Put32(e, reported);
    Put32(e + 4, len);
    ++Q.used_idx;
  }
  uint16_t published = Q.used_idx;
  if (h == Hostile::kUsedIdxJump) published = static_cast<uint16_t>(published + Q.size + 5);
  uint8_t* used_idx = Dma(Q.device + 2, 2);
  if (used_idx == nullptr) return;
  __atomic_thread_fence(__ATOMIC_RELEASE);  // entry before idx
  Put16(used_idx, published);
}

bool VirtioNetDeviceModel::Deliver(const uint8_t* frame, uint32_t length) {
  CollectNotifies();
  if (!Live(kRxQueue)) {
    ++rx_dropped_;
    return false;
  }
  uint16_t head;
  std::vector<uint8_t> readable;
  uint64_t addr;
  uint32_t room;
  if (hostile_ == Hostile::kOutOfOrder && rx_held_ >= 0) {
    // Fill the buffer held back last time (its descriptor is re-read: the driver's own).
    head = static_cast<uint16_t>(rx_held_);
    rx_held_ = -1;
    const uint8_t* d = Dma(queues_[kRxQueue].desc + 16 * uint64_t{head}, 16);
    if (d == nullptr) return false;
    VirtqDesc desc;
    std::memcpy(&desc, d, 16);
    addr = desc.addr;
    room = desc.len;
    readable.clear();
  } else {
    if (!TakeChain(kRxQueue, &head, &readable, &addr, &room)) {
      ++rx_dropped_;
      return false;
    }
    if (hostile_ == Hostile::kOutOfOrder) {
      const uint16_t held = head;
      if (TakeChain(kRxQueue, &head, &readable, &addr, &room)) {
        rx_held_ = held;
      } else {  // only one buffer available: use it
        head = held;
        const uint8_t* d = Dma(queues_[kRxQueue].desc + 16 * uint64_t{head}, 16);
        if (d == nullptr) return false;
        VirtqDesc desc;
        std::memcpy(&desc, d, 16);
        addr = desc.addr;
        room = desc.len;
        readable.clear();
      }
    }
  }
  if (!readable.empty() || room < kNetHdrSize + length) {
    ++driver_errors_;
    PushUsed(kRxQueue, head, 0, false);
    return false;
  }
  uint8_t* p = Dma(addr, kNetHdrSize + length);
  if (p == nullptr) return false;
  // §5.1.6.4: flags 0, gso_type NONE, ..., num_buffers 1 (VERSION_1: always present).
  std::memset(p, 0, kNetHdrSize);
  Put16(p + 10, 1);
  std::memcpy(p + kNetHdrSize, frame, length);
  uint32_t len = kNetHdrSize + length;
  if (hostile_ == Hostile::kRxLengthHuge) len = 60000;
  if (hostile_ == Hostile::kRxLengthShort) len = 5;
  if (hostile_ == Hostile::kRxLengthHeaderOnly) len = kNetHdrSize;
  PushUsed(kRxQueue, head, len, true);
  return true;
}

void VirtioNetDeviceModel::Step() {
  CollectNotifies();
  uint16_t head;
  std::vector<uint8_t> readable;
  uint64_t addr;
  uint32_t room;
  std::vector<uint16_t> done;
  if (tx_held_ >= 0) {
    done.push_back(static_cast<uint16_t>(tx_held_));
    tx_held_ = -1;
  }
  bool first = true;
  while (Live(kTxQueue) && TakeChain(kTxQueue, &head, &readable, &addr, &room)) {
    if (readable.size() < kNetHdrSize || room != 0) {
      ++driver_errors_;
    } else {
      bool zero = true;
      for (uint32_t i = 0; i < kNetHdrSize; ++i) zero &= readable[i] == 0;
      if (!zero) ++tx_nonzero_headers_;
      sent_.emplace_back(readable.begin() + kNetHdrSize, readable.end());
    }
    if (hostile_ == Hostile::kOutOfOrder && first) {
      tx_held_ = head;
    } else {
      done.push_back(head);
    }
    first = false;
  }
  if (hostile_ == Hostile::kOutOfOrder) std::reverse(done.begin() + (done.empty() ? 0 : 1), done.end());
  for (uint16_t id : done) PushUsed(kTxQueue, id, 0, true);
  if (hostile_ == Hostile::kCtrlSilent) return;
  while (Live(kCtrlQueue) && TakeChain(kCtrlQueue, &head, &readable, &addr, &room)) {
    ++ctrl_commands_;
    uint8_t ack = 1;  // VIRTIO_NET_ERR
    if (readable.size() >= 2) {
      const uint8_t cls = readable[0], cmd = readable[1];
      const size_t n = readable.size() - 2;
      if (cls == 0 && cmd == 0 && n == 1) {  // VIRTIO_NET_CTRL_RX_PROMISC
        promisc_ = readable[2] != 0;
        ack = 0;
      } else if (cls == 1 && cmd == 1 && n == 6) {  // VIRTIO_NET_CTRL_MAC_ADDR_SET
        std::memcpy(mac_.data(), readable.data() + 2, 6);
        ++generation_;
        ack = 0;
      }
    }
    if (hostile_ == Hostile::kCtrlNack) ack = 1;
    if (room >= 1) {
      if (uint8_t* a = Dma(addr, 1)) *a = ack;
    } else {
      ++driver_errors_;
    }
    PushUsed(kCtrlQueue, head, room >= 1 ? 1 : 0, false);
  }
}

}  // namespace vfdrivers::net::virtio_net::testing
