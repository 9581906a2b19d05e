// loop_extent: disk extents carved from a backing file or block device with kernel loop devices.
//
// Each extent is two loop devices, both created fresh for it (LOOP_CTL_ADD), never reused:
//   inner  bound to the pool's backing file at [offset, offset+size), direct I/O. The broker
//          alone holds it; it is what gets scrubbed.
//   outer  bound to the inner device, direct I/O. The tenant gets an O_RDWR|O_DIRECT descriptor
//          to it. A read-write loop descriptor lets its holder call LOOP_SET_STATUS64 or
//          LOOP_CLR_FD; on the outer device that can only re-aim it within the inner device, i.e.
//          within the extent. The broker keeps its own descriptor to the outer device open for the
//          lease's lifetime so that a tenant's LOOP_CLR_FD is deferred, not effective.
//
// Teardown cuts the tenant off before it scrubs: the outer device is detached and *removed*
// (LOOP_CTL_REMOVE), which the kernel refuses while anyone still has it open. A descriptor the
// tenant kept (or passed to another process) therefore keeps the slice quarantined: its range is
// not scrubbed or reused until that descriptor is gone, so no stale descriptor can ever reach the
// next tenant's data. Device indexes are never reused while a descriptor may still refer to them
// because a device is only ever created with LOOP_CTL_ADD (brand new) and removed when unopened.
//
// Thread-safe: distinct extents may be provisioned and torn down concurrently.
#ifndef VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
#define VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"

namespace vfbroker {

struct ProvisionedExtent {
  journal::LoopExtentState state;
  UniqueFd tenant_fd;  // O_RDWR|O_DIRECT|O_CLOEXEC descriptor of the outer device
  std::string device_path;  // "/dev/loopN" of the outer device
  uint32_t logical_block_size = 512;
};

enum class TeardownResult {
  kFreed,       // tenant cut off, range scrubbed (reads as zeroes), both devices removed
  kStillOpen,   // someone still holds the outer device open; nothing scrubbed yet, retry later
};

class LoopExtentBackend {
 public:
  // Opens (and with `create`, creates or extends sparsely) the backing file or block device.
  // INVALID_ARGUMENT naming the field for unusable configuration; the pool's capacity is the
  // backing size rounded down to the alignment.
  static absl::StatusOr<std::unique_ptr<LoopExtentBackend>> Open(
      const std::string& pool_name, const config::LoopExtentPool& config);
  ~LoopExtentBackend();

  uint64_t capacity_bytes() const { return capacity_bytes_; }
  const std::string& backing_path() const { return backing_path_; }

  // Creates the inner and outer devices for [offset, offset+size) (both multiples of 4096).
  // On failure nothing is left behind.
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size);

  // After a broker restart: checks that the devices named in `state` still are what the journal
  // says (outer backed by inner, inner backed by this pool at that offset and size) and takes
  // the broker's own descriptor to the outer device again. FAILED_PRECONDITION if they are not.
  absl::Status Readopt(const journal::LoopExtentState& state);

  // Cuts the tenant off, scrubs and removes the devices; idempotent (devices already gone are
  // fine), so it can be retried after kStillOpen or after a restart mid-teardown.
  absl::StatusOr<TeardownResult> Teardown(const journal::LoopExtentState& state);

  // At start, after replay: removes loop devices stacked on this pool that no journaled lease
  // names (left by a crash between Provision and the journal write; no tenant ever got them).
  absl::Status RemoveOrphans(const std::vector<journal::LoopExtentState>& known);

 private:
  LoopExtentBackend(std::string pool_name, std::string backing_path, UniqueFd backing_fd,
                    uint64_t capacity_bytes);

  const std::string pool_name_;
  const std::string backing_path_;
  UniqueFd backing_fd_;
  const uint64_t capacity_bytes_;
  absl::Mutex mu_;
  // The broker's own descriptors to live outer devices, by outer index.
  absl::flat_hash_map<int, UniqueFd> held_outer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
