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
// Scrubbing: over a regular file the inner device is discarded (the loop driver turns that into
// fallocate(PUNCH_HOLE), which reads back as zeroes and gives the space back: BLKZEROOUT would
// allocate the whole range, i.e. RAM for a pool on tmpfs); over a block device it is zeroed
// with BLKZEROOUT. If a retry finds the inner device already unbound or gone, the range is
// zeroed directly in the backing file instead, after the device is removed, so a crash between
// any two steps never frees an unscrubbed range.
//
// Identity: a device index from the journal is only trusted after the kernel confirms it
// (LOOP_GET_STATUS64: the inner's backing device/inode, offset and size limit; the outer's
// backing rdev is the inner device), so a stale index that now belongs to someone else is
// never scrubbed or removed as if it were ours.
//
// Thread-safe: distinct extents may be provisioned and torn down concurrently. Calls for one
// extent (Readopt, Teardown) must not overlap each other.
#ifndef VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
#define VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "broker/backends/extent_backend.h"
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"
#include "common/unique_fd.h"

namespace vfbroker {

// ProvisionedExtent and TeardownResult come from extent_backend.h. Here, tenant_fd is an
// O_RDWR|O_DIRECT|O_CLOEXEC descriptor of the outer device and device_path its "/dev/loopN";
// kFreed means both devices are removed and the range reads as zeroes, kStillOpen that someone
// still holds the outer (or, exceptionally, the inner) device open and nothing was freed.
class LoopExtentBackend : public ExtentBackend {
 public:
  // Opens (and with `create`, creates or extends sparsely) the backing file or block device.
  // INVALID_ARGUMENT naming the field for unusable configuration; the pool's capacity is the
  // backing size rounded down to the alignment.
  static absl::StatusOr<std::unique_ptr<LoopExtentBackend>> Open(
      const std::string& pool_name, const config::LoopExtentPool& config);
  ~LoopExtentBackend() override;

  uint64_t capacity_bytes() const override { return capacity_bytes_; }
  const std::string& backing_path() const { return backing_path_; }

  // Creates the inner and outer devices for [offset, offset+size) (both multiples of 4096).
  // On failure nothing is left behind.
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;

  // After a broker restart: checks that the devices named in `state` still are what the journal
  // says (outer backed by inner, inner backed by this pool at that offset and size) and takes
  // the broker's own descriptor to the outer device again. FAILED_PRECONDITION if they are not.
  // Verifies again, but takes no second descriptor, for an outer device already held.
  absl::Status Readopt(const journal::LoopExtentState& state) override;

  // Cuts the tenant off, scrubs and removes the devices; idempotent (devices already gone are
  // fine), so it can be retried after kStillOpen or after a restart mid-teardown. kStillOpen
  // also when the inner device cannot be removed (someone other than the outer holds it).
  absl::StatusOr<TeardownResult> Teardown(const journal::LoopExtentState& state) override;

  // At start, after replay: removes loop devices stacked on this pool that no journaled lease
  // names (left by a crash between Provision and the journal write; no tenant ever got them).
  // Not scrubbed: their range was free, i.e. already scrubbed, before they were created. A crash
  // between LOOP_CTL_ADD and binding leaves an unbound device that cannot be told apart from
  // anyone else's; those are left alone.
  absl::Status RemoveOrphans(const std::vector<journal::LoopExtentState>& known) override;

 private:
  struct BackingIdentity {
    std::string kernel_path;  // the backing file's path as sysfs prints it (realpath)
    dev_t device = 0;         // st_dev and st_ino, as LOOP_GET_STATUS64 reports them
    ino_t inode = 0;
    bool is_block_device = false;
  };

  LoopExtentBackend(std::string pool_name, std::string backing_path, UniqueFd backing_fd,
                    uint64_t capacity_bytes, BackingIdentity identity);

  absl::Status CheckRange(uint64_t offset, uint64_t size) const;
  absl::Status CheckState(const journal::LoopExtentState& state) const;
  // OK if the bound device open as `fd` is this extent's inner device (kernel's view).
  absl::Status VerifyInner(int fd, const journal::LoopExtentState& state) const;
  // OK if the bound device open as `fd` is stacked on `inner_index`.
  absl::Status VerifyOuter(int fd, int outer_index, int inner_index) const;
  // Teardown, step 1: true once the outer device is gone (or provably not this extent's).
  absl::StatusOr<bool> RemoveOuter(const journal::LoopExtentState& state, UniqueFd held);
  // Zeroes [offset, offset+size) of the backing file or device directly.
  absl::Status ScrubBackingRange(uint64_t offset, uint64_t size);

  const std::string pool_name_;
  const std::string backing_path_;
  UniqueFd backing_fd_;
  const uint64_t capacity_bytes_;
  const BackingIdentity backing_;
  absl::Mutex mu_;
  // The broker's own descriptors to live outer devices, by outer index.
  absl::flat_hash_map<int, UniqueFd> held_outer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
