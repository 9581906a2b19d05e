// XdpSteering: the broker's XDP steering program (xdp/steer.bpf.c) on one device, and the
// rules that send a tenant's frames to the tenant's AF_XDP socket: by destination MAC + VLAN
// (a VF-like slice: the tenant's MAC), by destination (IPv4 address, port, protocol) + VLAN, or
// by exact 5-tuple + VLAN (flow filters). Lookup order and maps: xdp/steer_maps.h.
//
// Broker side only (root). A rule is refused (ALREADY_EXISTS) if the same key already steers
// somewhere, so two leases can never claim the same frames; the broker removes a lease's rules
// and its socket slot when the lease ends (frames then get the unmatched action, or are
// dropped if a rule still names the empty slot). A target names the socket's slot and the
// queue it is bound to: frames of a matching flow that arrive on another queue are dropped,
// never passed to the kernel stack.
//
// Lifecycle: Load (open + verify, ~1 ms) then AttachTo (the device this object owns the
// attachment of, detached when it is destroyed, once); Attach does both. AttachShared attaches
// the same program to further devices (not owned: they keep it until they are deleted or
// detach it). Every rule names the device it is for (the frame's ingress ifindex is part of
// every key, xdp/steer_maps.h), so one program serves many devices and a rule never matches a
// frame of another device: rules given no device are for the AttachTo / Adopt device. Why
// share: attaching a program new to the kernel's XDP dispatcher costs a dispatcher update and
// an RCU grace period under the RTNL lock (6-17 ms measured), one it already runs ~50 us.
// Adopt takes over the program a previous process attached (a broker restart) through the
// device: its maps by id, the attachment left as is. Thread-compatible.
#ifndef VFBROKER_VFDRIVERS_NET_XDP_STEERING_H_
#define VFBROKER_VFDRIVERS_NET_XDP_STEERING_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "vfdrivers/net/packet.h"
#include "vfdrivers/net/xdp_program.h"

namespace vfdrivers::net {

struct SteeringTarget {
  uint32_t slot = 0;   // < kMaxSlots
  uint32_t queue = 0;  // the socket's queue
};

// Addresses and ports in host order; src_ip = 0 and src_port = 0 together mean "any source".
// ifindex: the device the rule is for; 0 = the program's own (AttachTo / Adopt) device.
struct FlowRule {
  uint32_t src_ip = 0;
  uint32_t dst_ip = 0;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  uint8_t protocol = 17;  // IPPROTO_UDP or IPPROTO_TCP
  uint16_t vlan = 0xFFFF; // VID, or kUntagged
  uint32_t ifindex = 0;
};

class XdpSteering {
 public:
  static constexpr uint16_t kUntagged = 0xFFFF;
  static constexpr uint32_t kMaxSlots = 4096;
  enum Stat { kFlow, kFlowWildcard, kMac, kUnmatched, kWrongQueue, kMalformed, kStatCount };

  // Loads the program (verified, attached to nothing, no rules). Unmatched frames will go to
  // the kernel stack (XDP_PASS) unless drop_unmatched.
  static absl::StatusOr<std::unique_ptr<XdpSteering>> Load(bool drop_unmatched);
  // Attaches a loaded program to `ifindex` (once; never replaces another program there:
  // ALREADY_EXISTS / BUSY from the kernel). FAILED_PRECONDITION for an adopted program.
  absl::Status AttachTo(int ifindex, XdpAttachMode mode);
  // Attaches the program to one more device `ifindex` (never replacing another program
  // there). Not owned: the device keeps it until it is deleted (or someone detaches it).
  absl::Status AttachShared(int ifindex, XdpAttachMode mode);
  // Load, then AttachTo.
  static absl::StatusOr<std::unique_ptr<XdpSteering>> Attach(int ifindex, XdpAttachMode mode,
                                                             bool drop_unmatched);
  // The steering program attached to `ifindex` in generic (skb) mode by someone else (a
  // previous broker): NOT_FOUND if none, FAILED_PRECONDITION if the attached program is not
  // "vfb_steer" with this build's map layout. Destroying the result leaves it attached.
  static absl::StatusOr<std::unique_ptr<XdpSteering>> Adopt(int ifindex);
  ~XdpSteering();
  XdpSteering(const XdpSteering&) = delete;
  XdpSteering& operator=(const XdpSteering&) = delete;

  // Destroying this object will leave the program attached (e.g. at a broker stop with live
  // leases); it keeps running and can be adopted later.
  void LeaveAttached();
  bool attached() const;

  absl::Status SetSocket(uint32_t slot, int xsk_fd);
  absl::Status ClearSocket(uint32_t slot);
  // Rules for device `ifindex` (0: the program's own device; INVALID_ARGUMENT if it has none).
  absl::Status AddMacRule(const packet::MacAddress& mac, uint16_t vlan, SteeringTarget target,
                          uint32_t ifindex = 0);
  absl::Status RemoveMacRule(const packet::MacAddress& mac, uint16_t vlan, uint32_t ifindex = 0);
  absl::Status AddFlowRule(const FlowRule& rule, SteeringTarget target);
  absl::Status RemoveFlowRule(const FlowRule& rule);
  absl::StatusOr<std::array<uint64_t, kStatCount>> Stats() const;

  // The program's descriptor (e.g. for BPF_PROG_TEST_RUN).
  int program_fd() const;

 private:
  XdpSteering() = default;
  absl::Status FindMaps();  // of program_
  absl::StatusOr<uint32_t> Device(uint32_t ifindex) const;
  std::unique_ptr<XdpProgram> program_;  // null when adopted
  vfbroker::UniqueFd adopted_program_;             // adopted: the program and its maps, by id
  std::vector<vfbroker::UniqueFd> adopted_maps_;
  int xsks_ = -1, macs_ = -1, flows_ = -1, config_ = -1, stats_ = -1;
  uint32_t device_ = 0;  // AttachTo's or Adopt's ifindex
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_XDP_STEERING_H_
