// ExtentBackend: what the broker core needs from a backend that carves disk extents out of a
// pool: provision one, re-adopt it after a restart, tear it down (cut off, scrub, free), and
// clean up what a crash left behind. loop_extent and nvme_sriov implement it.
//
// Extents are described by journal::ExtentState, a oneof of each backend's own state message;
// a backend handed another backend's state answers INVALID_ARGUMENT (Readopt, teardown) or
// ignores it (RemoveOrphans).
//
// Teardown comes whole (Teardown) or in two halves, for backends whose last step is slow but
// no longer protects anything (loop_extent: removing devices that already reach nothing costs
// about 40 ms of kernel grace periods each):
//   ScrubForReuse   cuts the tenant off and scrubs; kScrubbed means the range may be handed
//                   out again at once, and some kernel objects, reaching nothing, remain;
//   RemoveDevices   removes those objects, later and off the reclaim path, batched.
// The core journals "freed" after the first half and a second "freed" after the second, so a
// broker killed in between still knows, at its next start, which objects to remove.
//
// Implementations are thread-safe for distinct extents.
#ifndef VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_
#define VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "broker/journal/journal.pb.h"
#include "proto/vfbroker/v1/broker.pb.h"

namespace vfbroker {

// One descriptor for the tenant and what it is (sent in SessionGrant.fd_roles, in order).
struct TenantFd {
  v1::FdRole role = v1::FD_ROLE_UNSPECIFIED;
  UniqueFd fd;
};

struct ProvisionedExtent {
  journal::ExtentState state;
  // What the tenant gets, in order. loop_extent: one FD_ROLE_BLOCK_DEVICE (O_RDWR|O_DIRECT);
  // nvme_sriov: FD_ROLE_VFIO_CONTAINER, FD_ROLE_VFIO_GROUP, FD_ROLE_VFIO_DEVICE. The core
  // closes them once they are sent.
  std::vector<TenantFd> fds;
  std::string device_path;        // loop_extent: the block device, for operators and benchmarks
  std::string pci_address;        // nvme_sriov: the VF
  uint32_t nvme_namespace_id = 0; // nvme_sriov: the namespace attached to the VF's controller
  uint32_t logical_block_size = 512;
};

// Offset and size of any backend's extent state in the allocator's space (0 for an empty
// state). An xdp_nic lease is one slot: offset = slot, size = 1.
inline uint64_t ExtentOffset(const journal::ExtentState& state) {
  if (state.has_nvme_sriov()) return state.nvme_sriov().offset_bytes();
  if (state.has_xdp_nic()) return state.xdp_nic().slot();
  if (state.has_sriov_nic()) return state.sriov_nic().slot();
  if (state.has_pci_nic()) return state.pci_nic().slot();
  return state.loop_extent().offset_bytes();
}
inline uint64_t ExtentSize(const journal::ExtentState& state) {
  if (state.has_nvme_sriov()) return state.nvme_sriov().size_bytes();
  if (state.has_xdp_nic() || state.has_sriov_nic() || state.has_pci_nic()) return 1;
  return state.loop_extent().size_bytes();
}
// The extent state a grant record carries (kind unset if it carries none).
inline journal::ExtentState ExtentStateOf(const journal::LeaseGranted& granted) {
  journal::ExtentState state;
  if (granted.has_loop_extent()) *state.mutable_loop_extent() = granted.loop_extent();
  if (granted.has_nvme_sriov()) *state.mutable_nvme_sriov() = granted.nvme_sriov();
  if (granted.has_xdp_nic()) *state.mutable_xdp_nic() = granted.xdp_nic();
  if (granted.has_sriov_nic()) *state.mutable_sriov_nic() = granted.sriov_nic();
  if (granted.has_pci_nic()) *state.mutable_pci_nic() = granted.pci_nic();
  return state;
}
inline void SetExtentState(const journal::ExtentState& state, journal::LeaseGranted* granted) {
  if (state.has_loop_extent()) *granted->mutable_loop_extent() = state.loop_extent();
  if (state.has_nvme_sriov()) *granted->mutable_nvme_sriov() = state.nvme_sriov();
  if (state.has_xdp_nic()) *granted->mutable_xdp_nic() = state.xdp_nic();
  if (state.has_sriov_nic()) *granted->mutable_sriov_nic() = state.sriov_nic();
  if (state.has_pci_nic()) *granted->mutable_pci_nic() = state.pci_nic();
}

// A NIC lease as the core asks a NIC backend (xdp_nic) for it, already validated
// (broker/allocator/nic_request.h).
struct NicRequest {
  std::array<uint8_t, 6> mac{};    // a unicast address
  uint32_t vlan = 0;               // 0: untagged; 1..4094
  std::vector<journal::NicFilter> filters;  // normalized, non-overlapping, ids assigned
  uint32_t next_filter_id = 0;
  uint64_t max_tx_rate_mbps = 0;   // 0: unlimited (sriov_nic sets it on the VF)
  bool mac_requested = false;      // the tenant named `mac` (else the broker picked it)
};

enum class TeardownResult {
  kFreed,      // tenant cut off, range scrubbed (reads as zeroes), kernel objects gone
  kStillOpen,  // someone still holds the slice open; nothing is free yet, retry later
  // ScrubForReuse only: tenant provably cut off and range scrubbed, so the range may be reused
  // now; kernel objects that reach nothing remain until RemoveDevices.
  kScrubbed,
};

enum class RemovalResult {
  kRemoved,    // nothing of the extent's is left (or what is left is no longer the extent's)
  kStillHeld,  // an object is still held open somewhere; retry later
};

class ExtentBackend {
 public:
  virtual ~ExtentBackend() = default;

  // "loop_extent", "nvme_sriov" (v1::Pool.backend).
  virtual std::string backend_name() const = 0;
  virtual uint64_t capacity_bytes() const = 0;
  // Makes [offset, offset+size) of the pool reachable through a fresh descriptor.
  virtual absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) = 0;
  // After a broker restart: verifies the journaled extent still is what the journal says.
  virtual absl::Status Readopt(const journal::ExtentState& state) = 0;
  // The whole teardown. Idempotent; kStillOpen means "retry later". Never kScrubbed.
  virtual absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) = 0;
  // The first half (see the top of this file). Idempotent; kStillOpen means "retry later";
  // kFreed if nothing is left to remove. A backend without a second half tears down whole.
  virtual absl::StatusOr<TeardownResult> ScrubForReuse(const journal::ExtentState& state) {
    return Teardown(state);
  }
  // The second half, for extents ScrubForReuse answered kScrubbed for (in this process, or in
  // an earlier one, as the journal says). Idempotent. One answer per state, in order.
  virtual std::vector<absl::StatusOr<RemovalResult>> RemoveDevices(
      const std::vector<journal::ExtentState>& states) {
    return std::vector<absl::StatusOr<RemovalResult>>(states.size(), RemovalResult::kRemoved);
  }
  // At start: removes provisioned extents no journal record names.
  virtual absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) = 0;
  // At graceful shutdown, after the core's last teardown: stops the backend's own background
  // work and releases what it keeps in reserve (loop_extent: its spare devices). Idempotent.
  virtual void StopBackground() {}

  // NIC backends (xdp_nic) hand out slots, not byte ranges: Provision answers UNIMPLEMENTED
  // and the core calls ProvisionNic with the allocator's slot instead. The provisioned state is
  // an ExtentState too (kind xdp_nic), so teardown, recovery and the journal work unchanged.
  virtual bool is_nic() const { return false; }
  // ALREADY_EXISTS if the MAC is in use on the pool's interface (by a lease, or by the kernel).
  virtual absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t /*slot*/,
                                                         const NicRequest& /*request*/) {
    return absl::UnimplementedError("this pool's backend does not hand out NICs");
  }
  // Changes a live lease's receive steering from `before`'s filters to `after`'s (same lease,
  // same device). On error the steering is as `before` said.
  virtual absl::Status ChangeFilters(const journal::ExtentState& /*before*/,
                                     const journal::ExtentState& /*after*/) {
    return absl::UnimplementedError("this pool's backend has no flow filters");
  }
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_
