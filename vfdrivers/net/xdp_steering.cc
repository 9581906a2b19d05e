#include "vfdrivers/net/xdp_steering.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>

#include <cerrno>
#include <cstring>

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

vfb_flow_key FlowKey(const FlowRule& r) {
  vfb_flow_key k;
  std::memset(&k, 0, sizeof(k));  // the padding is part of the hash key
  k.src_ip = htonl(r.src_ip);
  k.dst_ip = htonl(r.dst_ip);
  k.src_port = htons(r.src_port);
  k.dst_port = htons(r.dst_port);
  k.vlan = r.vlan;
  k.proto = r.protocol;
  return k;
}

vfb_mac_key MacKey(const packet::MacAddress& mac, uint16_t vlan) {
  vfb_mac_key k;
  std::memset(&k, 0, sizeof(k));
  std::memcpy(k.mac, mac.bytes.data(), 6);
  k.vlan = vlan;
  return k;
}

absl::Status CheckVlan(uint16_t vlan) {
  if (vlan != XdpSteering::kUntagged && vlan > 4095) {
    return absl::InvalidArgumentError(absl::StrCat("steering: VLAN ", vlan));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<XdpSteering>> XdpSteering::Attach(int ifindex, XdpAttachMode mode,
                                                                  bool drop_unmatched) {
  auto program = XdpProgram::Attach(xdp::kSteerBpf, xdp::kSteerBpfSize, "vfb_steer", ifindex,
                                    mode);
  if (!program.ok()) return program.status();
  std::unique_ptr<XdpSteering> s(new XdpSteering(std::move(*program)));
  for (auto [name, fd] : {std::pair<const char*, int*>{"macs", &s->macs_},
                          {"flows", &s->flows_},
                          {"config", &s->config_},
                          {"stats", &s->stats_}}) {
    auto f = s->program_->MapFd(name);
    if (!f.ok()) return f.status();
    *fd = *f;
  }
  uint32_t zero = 0;
  vfb_config c{drop_unmatched ? uint32_t{XDP_DROP} : uint32_t{XDP_PASS}};
  if (bpf_map_update_elem(s->config_, &zero, &c, BPF_ANY) != 0) return MapError("config");
  return s;
}

absl::Status XdpSteering::SetSocket(uint32_t slot, int xsk_fd) {
  if (slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  return program_->SetXsk("xsks", slot, xsk_fd);
}

absl::Status XdpSteering::ClearSocket(uint32_t slot) {
  if (slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  return program_->ClearXsk("xsks", slot);
}

absl::Status XdpSteering::AddMacRule(const packet::MacAddress& mac, uint16_t vlan,
                                     SteeringTarget target) {
  if (auto s = CheckVlan(vlan); !s.ok()) return s;
  if (target.slot >= kMaxSlots) return absl::InvalidArgumentError("steering: slot out of range");
  vfb_mac_key k = MacKey(mac, vlan);
  vfb_target t{target.slot, target.queue};
  if (bpf_map_update_elem(macs_, &k, &t, BPF_NOEXIST) != 0) return MapError("MAC rule");
  return absl::OkStatus();
}

absl::Status XdpSteering::RemoveMacRule(const packet::MacAddress& mac, uint16_t vlan) {
  vfb_mac_key k = MacKey(mac, vlan);
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
  vfb_flow_key k = FlowKey(rule);
  vfb_target t{target.slot, target.queue};
  if (bpf_map_update_elem(flows_, &k, &t, BPF_NOEXIST) != 0) return MapError("flow rule");
  return absl::OkStatus();
}

absl::Status XdpSteering::RemoveFlowRule(const FlowRule& rule) {
  vfb_flow_key k = FlowKey(rule);
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
