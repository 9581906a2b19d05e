#include "broker/backends/steering_maps.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_link.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "vfdrivers/net/xdp/steer_maps.h"

namespace vfbroker {
namespace {

absl::Status MapError(const char* what) {
  const int e = errno;
  if (e == EEXIST) return absl::AlreadyExistsError(absl::StrCat("steering: ", what, " exists"));
  if (e == ENOENT) return absl::NotFoundError(absl::StrCat("steering: no such ", what));
  return absl::Status(absl::ErrnoToStatusCode(e),
                      absl::StrCat("steering: ", what, ": ", strerror(e)));
}

vfb_mac_key MacKey(const std::array<uint8_t, 6>& mac, uint16_t vlan) {
  vfb_mac_key k;
  std::memset(&k, 0, sizeof(k));  // padding is part of the hash key
  std::memcpy(k.mac, mac.data(), 6);
  k.vlan = vlan;
  return k;
}

vfb_flow_key FlowKey(const journal::NicFilter& f, uint16_t vlan) {
  vfb_flow_key k;
  std::memset(&k, 0, sizeof(k));
  k.src_ip = htonl(f.src_ip());
  k.dst_ip = htonl(f.dst_ip());
  k.src_port = htons(static_cast<uint16_t>(f.src_port()));
  k.dst_port = htons(static_cast<uint16_t>(f.dst_port()));
  k.vlan = vlan;
  k.proto = static_cast<uint8_t>(f.protocol());
  return k;
}

}  // namespace

absl::StatusOr<SteeringMaps> SteeringMaps::Of(const vfdrivers::net::XdpProgram& program) {
  SteeringMaps maps;
  for (auto [name, out] : {std::pair<const char*, UniqueFd*>{"macs", &maps.macs_},
                           {"flows", &maps.flows_}}) {
    absl::StatusOr<int> fd = program.MapFd(name);
    if (!fd.ok()) return fd.status();
    *out = UniqueFd(fcntl(*fd, F_DUPFD_CLOEXEC, 0));
    if (!*out) return MapError("dup map");
  }
  return maps;
}

absl::StatusOr<SteeringMaps> SteeringMaps::Attached(int ifindex) {
  uint32_t prog_id = 0;
  if (int err = bpf_xdp_query_id(ifindex, XDP_FLAGS_SKB_MODE, &prog_id); err != 0) {
    errno = -err;
    return MapError("query attached XDP program");
  }
  if (prog_id == 0) return absl::NotFoundError("steering: no XDP program on the device");
  UniqueFd prog(bpf_prog_get_fd_by_id(prog_id));
  if (!prog) return MapError("program by id");
  std::vector<uint32_t> map_ids(8);
  bpf_prog_info info;
  std::memset(&info, 0, sizeof(info));
  info.nr_map_ids = static_cast<uint32_t>(map_ids.size());
  info.map_ids = reinterpret_cast<uint64_t>(map_ids.data());
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog.get(), &info, &len) != 0) return MapError("program info");
  if (std::strncmp(info.name, "vfb_steer", sizeof(info.name)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("steering: the device's XDP program is \"", info.name, "\", not ours"));
  }
  SteeringMaps maps;
  for (uint32_t i = 0; i < std::min<uint32_t>(info.nr_map_ids, map_ids.size()); ++i) {
    UniqueFd map(bpf_map_get_fd_by_id(map_ids[i]));
    if (!map) return MapError("map by id");
    bpf_map_info map_info;
    std::memset(&map_info, 0, sizeof(map_info));
    uint32_t map_len = sizeof(map_info);
    if (bpf_obj_get_info_by_fd(map.get(), &map_info, &map_len) != 0) return MapError("map info");
    if (std::strcmp(map_info.name, "macs") == 0 && map_info.key_size == sizeof(vfb_mac_key)) {
      maps.macs_ = std::move(map);
    } else if (std::strcmp(map_info.name, "flows") == 0 &&
               map_info.key_size == sizeof(vfb_flow_key)) {
      maps.flows_ = std::move(map);
    }
  }
  if (!maps.macs_ || !maps.flows_) {
    return absl::FailedPreconditionError("steering: the attached program lacks its rule maps");
  }
  return maps;
}

absl::Status SteeringMaps::AddMac(const std::array<uint8_t, 6>& mac, uint16_t vlan) {
  vfb_mac_key k = MacKey(mac, vlan);
  vfb_target t{0, 0};
  if (bpf_map_update_elem(macs_.get(), &k, &t, BPF_NOEXIST) != 0) return MapError("MAC rule");
  return absl::OkStatus();
}

absl::Status SteeringMaps::RemoveMac(const std::array<uint8_t, 6>& mac, uint16_t vlan) {
  vfb_mac_key k = MacKey(mac, vlan);
  if (bpf_map_delete_elem(macs_.get(), &k) != 0) return MapError("MAC rule");
  return absl::OkStatus();
}

absl::Status SteeringMaps::AddFlow(const journal::NicFilter& filter, uint16_t vlan) {
  if (filter.protocol() != 17 && filter.protocol() != 6) {
    return absl::InvalidArgumentError("steering: protocol must be UDP or TCP");
  }
  vfb_flow_key k = FlowKey(filter, vlan);
  vfb_target t{0, 0};
  if (bpf_map_update_elem(flows_.get(), &k, &t, BPF_NOEXIST) != 0) return MapError("flow rule");
  return absl::OkStatus();
}

absl::Status SteeringMaps::RemoveFlow(const journal::NicFilter& filter, uint16_t vlan) {
  vfb_flow_key k = FlowKey(filter, vlan);
  if (bpf_map_delete_elem(flows_.get(), &k) != 0) return MapError("flow rule");
  return absl::OkStatus();
}

}  // namespace vfbroker
