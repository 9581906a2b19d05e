// ExtentBackend: what the broker core needs from a backend that carves disk extents out of a
// pool: provision one, re-adopt it after a restart, tear it down (cut off, scrub, free), and
// clean up what a crash left behind. loop_extent implements it today; nvme_sriov will.
//
// Implementations are thread-safe for distinct extents.
#ifndef VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_
#define VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "broker/journal/journal.pb.h"

namespace vfbroker {

struct ProvisionedExtent {
  journal::LoopExtentState state;
  UniqueFd tenant_fd;       // O_RDWR|O_DIRECT|O_CLOEXEC descriptor for the tenant
  std::string device_path;  // what tenant_fd refers to, for operators and benchmarks
  uint32_t logical_block_size = 512;
};

enum class TeardownResult {
  kFreed,      // tenant cut off, range scrubbed (reads as zeroes), kernel objects gone
  kStillOpen,  // someone still holds the slice open; nothing scrubbed yet, retry later
};

class ExtentBackend {
 public:
  virtual ~ExtentBackend() = default;

  virtual uint64_t capacity_bytes() const = 0;
  // Makes [offset, offset+size) of the pool reachable through a fresh descriptor.
  virtual absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) = 0;
  // After a broker restart: verifies the journaled extent still is what the journal says.
  virtual absl::Status Readopt(const journal::LoopExtentState& state) = 0;
  // Idempotent; kStillOpen means "retry later".
  virtual absl::StatusOr<TeardownResult> Teardown(const journal::LoopExtentState& state) = 0;
  // At start: removes provisioned extents no journal record names.
  virtual absl::Status RemoveOrphans(const std::vector<journal::LoopExtentState>& known) = 0;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_EXTENT_BACKEND_H_
