// TcEgressGuard: the egress guard (xdp/egress_guard.bpf.c) as a tc egress filter on the device
// tenants' frames leave by, and the per-lease rules it enforces (xdp/egress_maps.h).
//
// Why: an AF_XDP socket transmits whatever the tenant writes (any source MAC, VLAN, IP), and
// in copy mode past the tenant device's own qdisc and tc hooks. The broker therefore sets
// SO_MARK on each tenant's socket (AfXdpSocketOptions::mark; a tenant cannot change it without
// CAP_NET_ADMIN) and registers the lease's addresses under that mark here. Measured on 6.18:
// frames an XSK on a macvlan sends reach the lower device's tc egress with the socket's mark.
// For that, tenant macvlans must be in vepa or private mode: bridge mode delivers frames
// between macvlans of one lower device directly, past this filter.
//
// Broker side only (root). Thread-compatible.
#ifndef VFBROKER_VFDRIVERS_NET_TC_EGRESS_GUARD_H_
#define VFBROKER_VFDRIVERS_NET_TC_EGRESS_GUARD_H_

#include <array>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "vfdrivers/net/packet.h"

struct bpf_object;

namespace vfdrivers::net {

struct EgressLease {
  packet::MacAddress mac;     // the only source MAC (also the ARP sender)
  uint16_t vlan = 0xFFFF;     // the only VID, or kUntagged
  uint32_t src_ip = 0;        // host order; 0: any IPv4 source
  bool allow_other_ethertypes = false;  // e.g. IPv6 (not checked beyond MAC and VLAN)
};

class TcEgressGuard {
 public:
  static constexpr uint16_t kUntagged = 0xFFFF;
  static constexpr uint32_t kMarkBase = 0x7f560000u;  // tenant marks: kMarkBase + n
  static constexpr uint32_t kMaxMarks = 65536;
  enum Stat {
    kPassedHost, kPassedTenant, kDropNoLease, kDropMac, kDropVlan, kDropIp, kDropArp,
    kDropEtherType, kDropMalformed, kStatCount
  };

  // Our filter's identity on the egress hook (detach removes exactly this one).
  static constexpr uint32_t kFilterHandle = 0x7f56;
  static constexpr uint32_t kFilterPriority = 1;  // first on the hook

  // Loads the program and attaches it to `ifindex`'s egress (creating the clsact qdisc if
  // needed). A filter with our handle and priority already there (left by a previous process:
  // a crash, or a stop with live leases) is ALREADY_EXISTS, or with replace_stale is detached
  // first and replaced.
  static absl::StatusOr<std::unique_ptr<TcEgressGuard>> Attach(int ifindex,
                                                               bool replace_stale = false);
  ~TcEgressGuard();  // detaches the filter (leaves the clsact qdisc)
  TcEgressGuard(const TcEgressGuard&) = delete;
  TcEgressGuard& operator=(const TcEgressGuard&) = delete;

  // Frames of sockets marked `mark` must match `lease`. INVALID_ARGUMENT for a mark outside
  // [kMarkBase, kMarkBase + kMaxMarks) or a bad VLAN. Replaces an existing entry.
  absl::Status SetLease(uint32_t mark, const EgressLease& lease);
  // After this, frames still sent with `mark` are dropped.
  absl::Status RemoveLease(uint32_t mark);
  absl::StatusOr<std::array<uint64_t, kStatCount>> Stats() const;

 private:
  TcEgressGuard() = default;
  bpf_object* object_ = nullptr;
  int ifindex_ = 0;
  int program_fd_ = -1;
  int leases_ = -1;
  int stats_ = -1;
  bool attached_ = false;
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_TC_EGRESS_GUARD_H_
