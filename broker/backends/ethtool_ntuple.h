// ethtool ntuple rules (receive flow classification) on a network interface, over the
// SIOCETHTOOL ioctl: what the sriov_nic backend uses to steer a lease's flows to its VF.
//
// A rule matches IPv4 TCP/UDP (or any IPv4 protocol) by exact addresses and ports, restricted to
// frames whose destination MAC (and VLAN, when set) is the lease's own (FLOW_MAC_EXT,
// FLOW_EXT), so a rule can never pull in frames addressed to anyone else; its action is the
// VF's queue 0 (ring_cookie's VF field, include/uapi/linux/ethtool.h "ETHTOOL_RX_FLOW_SPEC_RING_VF":
// VF n is n + 1, 0 is the PF itself).
//
// Which drivers can: the PF's driver decides per rule (i40e/ice/ixgbe take some VF actions; igb
// has no ntuple table on the 82576 and never steers to a VF). Every refusal becomes a status
// naming the interface and the kernel's errno: EOPNOTSUPP and EINVAL (the driver cannot express
// the rule) are UNIMPLEMENTED, ENOSPC is RESOURCE_EXHAUSTED.
//
// Thread safety: the functions are independent ioctls; callers serialize changes to one
// interface's table (the backend's mutex).
#ifndef VFBROKER_BROKER_BACKENDS_ETHTOOL_NTUPLE_H_
#define VFBROKER_BROKER_BACKENDS_ETHTOOL_NTUPLE_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfbroker::ethtool {

// The interface's rule table (ETHTOOL_GRXCLSRLCNT).
struct NtupleTable {
  uint32_t size = 0;             // rule locations 0 .. size - 1
  uint32_t rules = 0;            // in use now
  bool special_locations = false;  // the driver picks a location itself (RX_CLS_LOC_ANY)
};

struct NtupleRule {
  uint32_t vf = 0;                  // the VF to steer to (0-based, as in `ip link ... vf N`)
  std::array<uint8_t, 6> dst_mac{};  // only frames to this MAC match
  uint32_t vlan = 0;                // 0: untagged, else only frames of this VLAN match
  uint32_t protocol = 0;            // 17 UDP, 6 TCP, 0 any IPv4
  uint32_t src_ip = 0;              // host order; 0 = any
  uint32_t dst_ip = 0;
  uint16_t src_port = 0;            // 0 = any (TCP/UDP only)
  uint16_t dst_port = 0;
};

// A rule in the table, as the driver reports it.
struct InstalledRule {
  uint32_t location = 0;
  int vf = -1;  // the VF it steers to (0-based), -1: the PF's own queue or a drop
};

// UNIMPLEMENTED (naming the driver's errno) when the interface has no ntuple table.
absl::StatusOr<NtupleTable> Probe(const std::string& interface);
// Inserts the rule at a location the driver picks (or the first free one) and returns it.
absl::StatusOr<uint32_t> Insert(const std::string& interface, const NtupleRule& rule);
absl::Status Delete(const std::string& interface, uint32_t location);
absl::StatusOr<std::vector<InstalledRule>> List(const std::string& interface);

// The ring_cookie of a rule steering to `vf`'s queue 0 (exposed for tests).
uint64_t VfRingCookie(uint32_t vf);

}  // namespace vfbroker::ethtool

#endif  // VFBROKER_BROKER_BACKENDS_ETHTOOL_NTUPLE_H_
