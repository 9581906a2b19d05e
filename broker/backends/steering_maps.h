// SteeringMaps: the rule maps ("macs", "flows") of the steering program
// (vfdrivers/net/xdp/steer.bpf.c, layout in steer_maps.h) on one lease's device, found either
// through the XdpSteering object that attached it, or - after a broker restart, when the
// program is still attached but nobody holds its maps - through the device itself: the XDP
// program attached to it (bpf_xdp_query_id), checked to be "vfb_steer", and its maps by id.
//
// xdp_nic writes every lease's rules through this, so fresh and re-adopted leases change
// their filters the same way. Rules steer to slot 0, queue 0 (the lease's own socket).
// Broker side (CAP_BPF). Thread-compatible.
#ifndef VFBROKER_BROKER_BACKENDS_STEERING_MAPS_H_
#define VFBROKER_BROKER_BACKENDS_STEERING_MAPS_H_

#include <array>
#include <cstdint>

#include "absl/status/statusor.h"
#include "broker/journal/journal.pb.h"
#include "common/unique_fd.h"
#include "vfdrivers/net/xdp_program.h"

namespace vfbroker {

class SteeringMaps {
 public:
  static constexpr uint16_t kUntagged = 0xFFFF;

  // Duplicates the descriptors of `program`'s maps.
  static absl::StatusOr<SteeringMaps> Of(const vfdrivers::net::XdpProgram& program);
  // The steering program attached to `ifindex` in generic mode. NOT_FOUND if none;
  // FAILED_PRECONDITION if the attached program is not the broker's.
  static absl::StatusOr<SteeringMaps> Attached(int ifindex);

  // ALREADY_EXISTS if the key is steered already; NOT_FOUND on removing a missing key.
  absl::Status AddMac(const std::array<uint8_t, 6>& mac, uint16_t vlan);
  absl::Status RemoveMac(const std::array<uint8_t, 6>& mac, uint16_t vlan);
  absl::Status AddFlow(const journal::NicFilter& filter, uint16_t vlan);
  absl::Status RemoveFlow(const journal::NicFilter& filter, uint16_t vlan);

 private:
  UniqueFd macs_;
  UniqueFd flows_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_STEERING_MAPS_H_
