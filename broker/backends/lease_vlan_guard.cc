#include "broker/backends/lease_vlan_guard.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "broker/backends/bpf/lease_vlan_maps.h"
#include "broker/backends/bpf/bpf_objects.h"

namespace vfbroker {
namespace {

// Our filter's identity on the ingress hook (the egress guard uses 0x7f56 on egress).
constexpr uint32_t kHandle = 0x7f57;
constexpr uint32_t kPriority = 1;

absl::Status Error(const std::string& what, int err) {
  if (err < 0) err = -err;
  if (err == EEXIST) return absl::AlreadyExistsError(absl::StrCat("VLAN guard: ", what));
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("VLAN guard: ", what, ": ", strerror(err)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LeaseVlanGuard>> LeaseVlanGuard::Attach(int ifindex) {
  static_assert(static_cast<int>(kStatCount) == static_cast<int>(VFB_LVG_STAT_COUNT),
                "lease_vlan_maps.h");
  std::unique_ptr<LeaseVlanGuard> g(new LeaseVlanGuard());
  g->ifindex_ = ifindex;
  g->object_ = bpf_object__open_mem(bpf::kLeaseVlanGuardBpf,
                                    bpf::kLeaseVlanGuardBpfSize, nullptr);
  if (g->object_ == nullptr) return Error("open object", errno);
  if (int err = bpf_object__load(g->object_); err != 0) return Error("load", err);
  bpf_program* prog = bpf_object__find_program_by_name(g->object_, "vfb_lease_vlan_guard");
  bpf_map* leases = bpf_object__find_map_by_name(g->object_, "lease_vlans");
  bpf_map* stats = bpf_object__find_map_by_name(g->object_, "lvg_stats");
  if (prog == nullptr || leases == nullptr || stats == nullptr) {
    return absl::InternalError("VLAN guard: object lacks its program or maps");
  }
  g->leases_ = bpf_map__fd(leases);
  g->stats_ = bpf_map__fd(stats);

  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
  int err = bpf_tc_hook_create(&hook);
  if (err != 0 && err != -EEXIST) return Error("create clsact", err);
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(prog), .handle = kHandle,
              .priority = kPriority);
  err = bpf_tc_attach(&hook, &opts);
  if (err == -EEXIST) {
    // A previous broker's (crashed, or stopped with live leases): replace it.
    LIBBPF_OPTS(bpf_tc_opts, old, .handle = kHandle, .priority = kPriority);
    bpf_tc_detach(&hook, &old);
    opts.prog_id = 0;
    err = bpf_tc_attach(&hook, &opts);
  }
  if (err != 0) return Error(absl::StrCat("attach to ifindex ", ifindex), err);
  g->attached_ = true;
  return g;
}

LeaseVlanGuard::~LeaseVlanGuard() {
  if (attached_) {
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex_, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kHandle, .priority = kPriority);
    bpf_tc_detach(&hook, &opts);
  }
  if (object_ != nullptr) bpf_object__close(object_);
}

absl::Status LeaseVlanGuard::SetLease(const std::array<uint8_t, 6>& mac, uint32_t vid) {
  if (vid != kUntagged && (vid == 0 || vid > 4094)) {
    return absl::InvalidArgumentError(absl::StrCat("VLAN guard: VLAN ", vid));
  }
  vfb_lvg_key key;
  std::memset(&key, 0, sizeof(key));
  std::memcpy(key.mac, mac.data(), 6);
  if (bpf_map_update_elem(leases_, &key, &vid, BPF_ANY) != 0) return Error("set lease", errno);
  return absl::OkStatus();
}

absl::Status LeaseVlanGuard::RemoveLease(const std::array<uint8_t, 6>& mac) {
  vfb_lvg_key key;
  std::memset(&key, 0, sizeof(key));
  std::memcpy(key.mac, mac.data(), 6);
  if (bpf_map_delete_elem(leases_, &key) != 0 && errno != ENOENT) {
    return Error("remove lease", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::array<uint64_t, LeaseVlanGuard::kStatCount>> LeaseVlanGuard::Stats() const {
  std::array<uint64_t, kStatCount> out{};
  for (uint32_t i = 0; i < kStatCount; ++i) {
    if (bpf_map_lookup_elem(stats_, &i, &out[i]) != 0) return Error("stats", errno);
  }
  return out;
}

}  // namespace vfbroker
