// LeaseVlanGuard: the xdp_nic pool's tc ingress filter (bpf/lease_vlan_guard.bpf.c) on its
// interface: a received frame addressed to a lease's MAC goes on only if it carries the
// lease's VLAN (none for an untagged lease); frames to other MACs are untouched. It closes the
// gap that generic XDP on a macvlan cannot see a received frame's tag (the kernel has moved it
// out of the frame by then). Broker side (CAP_NET_ADMIN, CAP_BPF). Thread-compatible.
#ifndef VFBROKER_BROKER_BACKENDS_LEASE_VLAN_GUARD_H_
#define VFBROKER_BROKER_BACKENDS_LEASE_VLAN_GUARD_H_

#include <array>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

struct bpf_object;

namespace vfbroker {

class LeaseVlanGuard {
 public:
  static constexpr uint32_t kUntagged = 0xFFFF;
  enum Stat { kPassed, kDropVlan, kDropStacked, kStatCount };

  // Loads the program and attaches it to `ifindex`'s ingress (clsact, created if needed and
  // never removed). A filter left by a previous broker (same handle and priority) is replaced.
  static absl::StatusOr<std::unique_ptr<LeaseVlanGuard>> Attach(int ifindex);
  ~LeaseVlanGuard();  // detaches the filter
  LeaseVlanGuard(const LeaseVlanGuard&) = delete;
  LeaseVlanGuard& operator=(const LeaseVlanGuard&) = delete;

  // Frames to `mac` must carry `vid` (1..4094) or kUntagged. Replaces an entry.
  absl::Status SetLease(const std::array<uint8_t, 6>& mac, uint32_t vid);
  absl::Status RemoveLease(const std::array<uint8_t, 6>& mac);
  absl::StatusOr<std::array<uint64_t, kStatCount>> Stats() const;

 private:
  LeaseVlanGuard() = default;
  bpf_object* object_ = nullptr;
  int ifindex_ = 0;
  int leases_ = -1;
  int stats_ = -1;
  bool attached_ = false;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_LEASE_VLAN_GUARD_H_
