#include "vfdrivers/net/tc_egress_guard.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "vfdrivers/net/xdp/egress_maps.h"
#include "vfdrivers/net/xdp/xdp_objects.h"

namespace vfdrivers::net {
namespace {

absl::Status Error(const std::string& what, int err) {
  if (err < 0) err = -err;
  if (err == EEXIST) return absl::AlreadyExistsError(absl::StrCat("egress guard: ", what));
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("egress guard: ", what, ": ", strerror(err)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcEgressGuard>> TcEgressGuard::Attach(int ifindex, bool replace_stale) {
  static_assert(kMarkBase == VFB_MARK_BASE && kMaxMarks == VFB_MAX_MARKS, "egress_maps.h");
  static_assert(static_cast<int>(kStatCount) == static_cast<int>(VFB_EGRESS_STAT_COUNT),
                "egress_maps.h");
  std::unique_ptr<TcEgressGuard> g(new TcEgressGuard());
  g->ifindex_ = ifindex;
  g->object_ = bpf_object__open_mem(xdp::kEgressGuardBpf, xdp::kEgressGuardBpfSize, nullptr);
  if (g->object_ == nullptr) return Error("open object", errno);
  if (int err = bpf_object__load(g->object_); err != 0) return Error("load", err);
  bpf_program* prog = bpf_object__find_program_by_name(g->object_, "vfb_egress_guard");
  bpf_map* leases = bpf_object__find_map_by_name(g->object_, "leases");
  bpf_map* stats = bpf_object__find_map_by_name(g->object_, "egress_stats");
  if (prog == nullptr || leases == nullptr || stats == nullptr) {
    return absl::InternalError("egress guard: object lacks its program or maps");
  }
  g->program_fd_ = bpf_program__fd(prog);
  g->leases_ = bpf_map__fd(leases);
  g->stats_ = bpf_map__fd(stats);

  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_EGRESS);
  int err = bpf_tc_hook_create(&hook);
  if (err != 0 && err != -EEXIST) return Error("create clsact", err);
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = g->program_fd_, .handle = kFilterHandle,
              .priority = kFilterPriority);
  int e = bpf_tc_attach(&hook, &opts);
  if (e == -EEXIST && replace_stale) {
    LIBBPF_OPTS(bpf_tc_opts, stale, .handle = kFilterHandle, .priority = kFilterPriority);
    bpf_tc_detach(&hook, &stale);
    opts.prog_id = 0;  // bpf_tc_attach wants it zero on input
    e = bpf_tc_attach(&hook, &opts);
  }
  if (e != 0) return Error(absl::StrCat("attach to ifindex ", ifindex), e);
  g->attached_ = true;
  return g;
}

TcEgressGuard::~TcEgressGuard() {
  if (attached_) {
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex_, .attach_point = BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kFilterHandle, .priority = kFilterPriority);
    bpf_tc_detach(&hook, &opts);
  }
  if (object_ != nullptr) bpf_object__close(object_);
}

absl::Status TcEgressGuard::SetLease(uint32_t mark, const EgressLease& lease) {
  if (mark < kMarkBase || mark - kMarkBase >= kMaxMarks) {
    return absl::InvalidArgumentError(absl::StrCat("egress guard: mark ", mark, " not a tenant's"));
  }
  if (lease.vlan != kUntagged && lease.vlan > 4095) {
    return absl::InvalidArgumentError(absl::StrCat("egress guard: VLAN ", lease.vlan));
  }
  vfb_egress_lease v;
  std::memset(&v, 0, sizeof(v));
  std::memcpy(v.mac, lease.mac.bytes.data(), 6);
  v.vlan = lease.vlan;
  v.src_ip = htonl(lease.src_ip);
  v.flags = lease.allow_other_ethertypes ? VFB_EGRESS_ALLOW_OTHER : 0;
  if (bpf_map_update_elem(leases_, &mark, &v, BPF_ANY) != 0) return Error("set lease", errno);
  return absl::OkStatus();
}

absl::Status TcEgressGuard::RemoveLease(uint32_t mark) {
  if (bpf_map_delete_elem(leases_, &mark) != 0 && errno != ENOENT) {
    return Error("remove lease", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::array<uint64_t, TcEgressGuard::kStatCount>> TcEgressGuard::Stats() const {
  std::array<uint64_t, kStatCount> out{};
  for (uint32_t i = 0; i < kStatCount; ++i) {
    if (bpf_map_lookup_elem(stats_, &i, &out[i]) != 0) return Error("stats", errno);
  }
  return out;
}

}  // namespace vfdrivers::net
