#include "vfdrivers/net/xdp_steering.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "vfdrivers/net/xdp/steer_maps.h"
#include "vfdrivers/net/xdp/xdp_objects.h"

namespace vfdrivers::net {
namespace {

absl::Status MapError(const char* what) {
  int e = errno;
  if (e == EEXIST) return absl::AlreadyExistsError(absl::StrCat("steering: ", what, " exists"));
  if (e == ENOENT) return absl::NotFoundError(absl::StrCat("steering: no such ", what));
  return absl::Status(absl::ErrnoToStatusCode(e),
                      absl::StrCat("steering: ", what, ": ", strerror(e)));
}

vfb_flow_key FlowKey(const FlowRule& r, uint32_t ifindex) {
  vfb_flow_key k;
  std::memset(&k, 0, sizeof(k));  // the padding is part of the hash key
  k.src_ip = htonl(r.src_ip);
  k.dst_ip = htonl(r.dst_ip);
  k.src_port = htons(r.src_port);
  k.dst_port = htons(r.dst_port);
  k.vlan = r.vlan;
  k.proto = r.protocol;
  k.ifindex = ifindex;
  return k;
}

vfb_mac_key MacKey(const packet::MacAddress& mac, uint16_t vlan, uint32_t ifindex) {
  vfb_mac_key k;
  std::memset(&k, 0, sizeof(k));
  std::memcpy(k.mac, mac.bytes.data(), 6);
  k.vlan = vlan;
  k.ifindex = ifindex;
  return k;
}

absl::Status CheckVlan(uint16_t vlan) {
  if (vlan != XdpSteering::kUntagged && vlan > 4095) {
    return absl::InvalidArgumentError(absl::StrCat("steering: VLAN ", vlan));
  }
  return absl::OkStatus();
}

}  // namespace

static_assert(XdpSteering::kMaxSlots == VFB_MAX_SLOTS, "steer_maps.h");
static_assert(XdpSteering::kUntagged == VFB_UNTAGGED, "steer_maps.h");

absl::Status XdpSteering::FindMaps() {
  for (auto [name, fd] : {std::pair<const char*, int*>{"xsks", &xsks_},
                          {"macs", &macs_},
                          {"flows", &flows_},
                          {"config", &config_},
                          {"stats", &stats_}}) {
    auto f = program_->MapFd(name);
    if (!f.ok()) return f.status();
    *fd = *f;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<XdpSteering>> XdpSteering::Load(bool drop_unmatched) {
  auto program = XdpProgram::Load(xdp::kSteerBpf, xdp::kSteerBpfSize, "vfb_steer");
  if (!program.ok()) return program.status();
  std::unique_ptr<XdpSteering> s(new XdpSteering());
  s->program_ = *std::move(program);
  if (absl::Status found = s->FindMaps(); !found.ok()) return found;
  uint32_t zero = 0;
  vfb_config c{drop_unmatched ? uint32_t{XDP_DROP} : uint32_t{XDP_PASS}};
  if (bpf_map_update_elem(s->config_, &zero, &c, BPF_ANY) != 0) return MapError("config");
  return s;
}

absl::Status XdpSteering::AttachTo(int ifindex, XdpAttachMode mode) {
  if (program_ == nullptr) return absl::FailedPreconditionError("steering: adopted program");
  absl::Status s = program_->AttachTo(ifindex, mode);
  if (s.ok()) device_ = static_cast<uint32_t>(ifindex);
  return s;
}

absl::Status XdpSteering::AttachShared(int ifindex, XdpAttachMode mode) {
  uint32_t flags = XDP_FLAGS_UPDATE_IF_NOEXIST;
  switch (mode) {
    case XdpAttachMode::kNative:
      flags |= XDP_FLAGS_DRV_MODE;
      break;
    case XdpAttachMode::kGeneric:
      flags |= XDP_FLAGS_SKB_MODE;
      break;
    case XdpAttachMode::kAuto:
      break;
  }
  if (int err = bpf_xdp_attach(ifindex, program_fd(), flags, nullptr); err != 0) {
    errno = -err;
    return MapError(absl::StrCat("attach to ifindex ", ifindex).c_str());
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> XdpSteering::Device(uint32_t ifindex) const {
  if (ifindex != 0) return ifindex;
  if (device_ == 0) return absl::InvalidArgumentError("steering: a rule needs a device");
  return device_;
}

absl::StatusOr<std::unique_ptr<XdpSteering>> XdpSteering::Attach(int ifindex, XdpAttachMode mode,
                                                                  bool drop_unmatched) {
  absl::StatusOr<std::unique_ptr<XdpSteering>> s = Load(drop_unmatched);
  if (!s.ok()) return s.status();
  if (absl::Status attached = (*s)->AttachTo(ifindex, mode); !attached.ok()) return attached;
  return s;
}

absl::StatusOr<std::unique_ptr<XdpSteering>> XdpSteering::Adopt(int ifindex) {
  uint32_t prog_id = 0;
  if (int err = bpf_xdp_query_id(ifindex, XDP_FLAGS_SKB_MODE, &prog_id); err != 0) {
    errno = -err;
    return MapError("attached XDP program");
  }
  if (prog_id == 0) return absl::NotFoundError("steering: no XDP program on the device");
  std::unique_ptr<XdpSteering> s(new XdpSteering());
  s->device_ = static_cast<uint32_t>(ifindex);
  s->adopted_program_ = vfbroker::UniqueFd(bpf_prog_get_fd_by_id(prog_id));
  if (!s->adopted_program_) return MapError("program by id");
  std::vector<uint32_t> map_ids(8);
  bpf_prog_info info;
  std::memset(&info, 0, sizeof(info));
  info.nr_map_ids = static_cast<uint32_t>(map_ids.size());
  info.map_ids = reinterpret_cast<uint64_t>(map_ids.data());
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(s->adopted_program_.get(), &info, &len) != 0) {
    return MapError("program info");
  }
  if (std::strncmp(info.name, "vfb_steer", sizeof(info.name)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("steering: the device's XDP program is \"", info.name, "\", not ours"));
  }
  // Each map by name, checked against this build's layout (steer_maps.h).
  struct Want {
    const char* name;
    uint32_t key_size, value_size;
    int* fd;
  };
  const Want wanted[] = {
      {"xsks", sizeof(uint32_t), sizeof(uint32_t), &s->xsks_},
      {"macs", sizeof(vfb_mac_key), sizeof(vfb_target), &s->macs_},
      {"flows", sizeof(vfb_flow_key), sizeof(vfb_target), &s->flows_},
      {"config", sizeof(uint32_t), sizeof(vfb_config), &s->config_},
      {"stats", sizeof(uint32_t), sizeof(uint64_t), &s->stats_},
  };
  for (uint32_t i = 0; i < std::min<uint32_t>(info.nr_map_ids, map_ids.size()); ++i) {
    vfbroker::UniqueFd map(bpf_map_get_fd_by_id(map_ids[i]));
    if (!map) return MapError("map by id");
    bpf_map_info map_info;
    std::memset(&map_info, 0, sizeof(map_info));
    uint32_t map_len = sizeof(map_info);
    if (bpf_obj_get_info_by_fd(map.get(), &map_info, &map_len) != 0) return MapError("map info");
    for (const Want& w : wanted) {
      // libbpf names maps after the object's variables, cut to 15 bytes: ours are shorter.
      if (std::strcmp(map_info.name, w.name) != 0) continue;
      if (map_info.key_size != w.key_size || map_info.value_size != w.value_size) {
        return absl::FailedPreconditionError(
            absl::StrCat("steering: attached program's map ", w.name, " has another layout"));
      }
      *w.fd = map.get();
      s->adopted_maps_.push_back(std::move(map));
      break;
    }
  }
  for (const Want& w : wanted) {
    if (*w.fd < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("steering: the attached program lacks its map ", w.name));
    }
  }
  return s;
}

XdpSteering::~XdpSteering() = default;

void XdpSteering::LeaveAttached() {
  if (program_ != nullptr) program_->LeaveAttached();
}

bool XdpSteering::attached() const {
  return program_ == nullptr ? true : program_->attached();
}

int XdpSteering::program_fd() const {
  return program_ != nullptr ? program_->program_fd() : adopted_program_.get();
}

absl::Status XdpSteering::SetSocket(uint32_t slot, int xsk_fd) {
  if (slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  uint32_t value = static_cast<uint32_t>(xsk_fd);
  if (bpf_map_update_elem(xsks_, &slot, &value, BPF_ANY) != 0) return MapError("socket slot");
  return absl::OkStatus();
}

absl::Status XdpSteering::ClearSocket(uint32_t slot) {
  if (slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  if (bpf_map_delete_elem(xsks_, &slot) != 0 && errno != ENOENT) return MapError("socket slot");
  return absl::OkStatus();
}

absl::Status XdpSteering::AddMacRule(const packet::MacAddress& mac, uint16_t vlan,
                                     SteeringTarget target, uint32_t ifindex) {
  if (auto s = CheckVlan(vlan); !s.ok()) return s;
  if (target.slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  absl::StatusOr<uint32_t> device = Device(ifindex);
  if (!device.ok()) return device.status();
  vfb_mac_key k = MacKey(mac, vlan, *device);
  vfb_target t{target.slot, target.queue};
  if (bpf_map_update_elem(macs_, &k, &t, BPF_NOEXIST) != 0) return MapError("MAC rule");
  return absl::OkStatus();
}

absl::Status XdpSteering::RemoveMacRule(const packet::MacAddress& mac, uint16_t vlan,
                                        uint32_t ifindex) {
  absl::StatusOr<uint32_t> device = Device(ifindex);
  if (!device.ok()) return device.status();
  vfb_mac_key k = MacKey(mac, vlan, *device);
  if (bpf_map_delete_elem(macs_, &k) != 0) return MapError("MAC rule");
  return absl::OkStatus();
}

absl::Status XdpSteering::AddFlowRule(const FlowRule& rule, SteeringTarget target) {
  if (auto s = CheckVlan(rule.vlan); !s.ok()) return s;
  if (rule.protocol != 17 && rule.protocol != 6) {
    return absl::InvalidArgumentError("steering: protocol must be UDP or TCP");
  }
  if ((rule.src_ip == 0) != (rule.src_port == 0)) {
    return absl::InvalidArgumentError("steering: wildcard the source address and port together");
  }
  if (target.slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  absl::StatusOr<uint32_t> device = Device(rule.ifindex);
  if (!device.ok()) return device.status();
  vfb_flow_key k = FlowKey(rule, *device);
  vfb_target t{target.slot, target.queue};
  if (bpf_map_update_elem(flows_, &k, &t, BPF_NOEXIST) != 0) return MapError("flow rule");
  return absl::OkStatus();
}

absl::Status XdpSteering::RemoveFlowRule(const FlowRule& rule) {
  absl::StatusOr<uint32_t> device = Device(rule.ifindex);
  if (!device.ok()) return device.status();
  vfb_flow_key k = FlowKey(rule, *device);
  if (bpf_map_delete_elem(flows_, &k) != 0) return MapError("flow rule");
  return absl::OkStatus();
}

absl::StatusOr<std::array<uint64_t, XdpSteering::kStatCount>> XdpSteering::Stats() const {
  static_assert(static_cast<int>(kStatCount) == static_cast<int>(VFB_STAT_COUNT),
                "keep Stat in step with enum vfb_stat");
  std::array<uint64_t, kStatCount> out{};
  for (uint32_t i = 0; i < kStatCount; ++i) {
    if (bpf_map_lookup_elem(stats_, &i, &out[i]) != 0) return MapError("stats");
  }
  return out;
}

}  // namespace vfdrivers::net
