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
// Teardown cuts the tenant off before it scrubs, and scrubs before the range is reused:
//  1. Cut off. The broker detaches the outer device through its own descriptor (LOOP_CLR_FD,
//     then close). The kernel detaches a loop device that others hold open only when the last
//     of them closes it, so while the tenant (or anyone it passed its descriptor to) holds the
//     outer device, it stays bound and the slice stays quarantined: nothing is scrubbed or
//     reused. The cut-off is proven by sysfs reporting the outer device unbound (the detach
//     removes its loop/ group after clearing its backing file, the inner device): it then
//     reaches nothing, and as the broker never binds a device twice, nothing will make it reach
//     the pool again.
//     Not by an ENXIO from LOOP_GET_STATUS64 or open: since 6.11 those also answer for a device
//     whose only opener asked for the detach and still holds it.
//  2. Scrub through the inner device (below), then detach it the same way. It goes unbound
//     only if the broker's descriptor was its last one, which proves nobody else (only root
//     could) held it across the scrub; otherwise the slice stays quarantined and, once the
//     inner device is unbound, the range is zeroed again directly in the backing.
//  3. The range may now be reused (ScrubForReuse answers kScrubbed): ~5 ms for 32 MiB on tmpfs.
//  4. Later, off the reclaim path, RemoveDevices removes the two unbound devices with
//     LOOP_CTL_REMOVE, in parallel (each waits ~40 ms for RCU/SRCU grace periods on 6.18; in
//     parallel they share them). It refuses nothing but devices that are bound (someone else
//     bound them since: no longer ours) or open (retried later).
// Teardown does all four at once.
//
// One difference between kernels: on 6.1 a process that is the *only* holder of the outer
// device may detach it itself (LOOP_CLR_FD acts at once for a sole opener) and keep its
// descriptor. The outer device is then unbound while still open; the slice is freed, since that
// descriptor reaches a device that reaches nothing and is never bound again by the broker (its
// holder can bind it to files it can open itself, no more), and only the device's removal
// waits for the close. Since 6.11 that LOOP_CLR_FD, too, waits for the
// close, and the slice stays quarantined until then.
//
// Scrubbing: over a regular file the inner device is discarded (the loop driver turns that into
// fallocate(PUNCH_HOLE), which reads back as zeroes and gives the space back: BLKZEROOUT would
// allocate the whole range, i.e. RAM for a pool on tmpfs); over a block device it is zeroed
// with BLKZEROOUT. If a retry finds the inner device already unbound or gone, the range is
// zeroed directly in the backing file instead, so a crash between any two steps never frees an
// unscrubbed range.
//
// Identity: a device index from the journal is only trusted after the kernel confirms it
// (LOOP_GET_STATUS64: the inner's backing device/inode, offset and size limit; the outer's
// backing rdev is the inner device), so a stale index that now belongs to someone else is
// never scrubbed or detached as if it were ours. An *unbound* device carries nothing the kernel
// could confirm; RemoveDevices therefore only removes unbound devices at indexes the journal
// says the broker scrubbed but had not yet removed (the core journals "freed" after step 3 and
// again after step 4), and LOOP_CTL_REMOVE itself refuses any that is bound or open.
//
// Spares: LOOP_CTL_ADD costs ~210 us per device on 6.18 and serialises on the kernel's
// loop_ctl_mutex, so once StartSpares has run, a refill thread owned by the backend keeps a
// stock of kDefaultSpareDevices (16: 8 extents' worth) fresh devices created with
// LOOP_CTL_ADD(-1), and Provision takes its two devices from the stock (~2 us each) before
// falling back to creating them inline; a grant never waits for the refill, and the refill
// runs only while no Provision does (in a burst it would only compete for the kernel's
// loop_ctl_mutex and the CPUs), i.e. the stock is rebuilt in the gaps between grants. A spare is still
// "fresh" in the sense above: created by the broker, never bound, handed out at most once
// (popped from the stock under a lock), and, being root:disk 0660 and unbound, opened by
// nobody but root (udev's probe included) in between. If someone else binds or removes a spare
// meanwhile, Provision sees EBUSY or ENOENT, leaves it and takes the next.
// Crash: spares are unbound devices no journal record names, indistinguishable from anyone
// else's, so the backend keeps a ledger file (in the broker's state directory, one per pool)
// listing the stock and the spares a Provision under way has taken but not yet bound: rewritten
// (temp file + rename) after each device the refill creates and after each Provision that took
// spares, so it holds every unbound spare but one created in the instant before a crash (at
// most one, the device being added; the same window as an inline LOOP_CTL_ADD before binding). No fsync: loop devices do not survive a reboot,
// and a process crash loses nothing the page cache holds. At the next start StartSpares, before
// creating anything, removes the listed devices with LOOP_CTL_REMOVE, which the kernel refuses
// for any that is bound or open: a spare a crashed Provision had bound (RemoveOrphans' business
// then, or a live lease's) or a device someone else has bound or holds since is never touched.
// StopSpares (the core's Stop, or the destructor) stops the refill, removes every spare and
// deletes the ledger (or leaves in it what could not be removed yet).
//
// Thread-safe: distinct extents may be provisioned and torn down concurrently. Calls for one
// extent (Readopt, Teardown, ScrubForReuse, RemoveDevices) must not overlap each other.
#ifndef VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
#define VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
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

// ProvisionedExtent and TeardownResult come from extent_backend.h. Here, fds holds one
// FD_ROLE_BLOCK_DEVICE, an O_RDWR|O_DIRECT|O_CLOEXEC descriptor of the outer device and device_path its "/dev/loopN";
// kFreed means both devices are removed and the range reads as zeroes, kScrubbed that the range
// reads as zeroes and both devices are unbound (or gone), kStillOpen that someone still holds
// the outer (or, exceptionally, the inner) device open and nothing was freed.
class LoopExtentBackend : public ExtentBackend {
 public:
  // Opens (and with `create`, creates or extends sparsely) the backing file or block device.
  // INVALID_ARGUMENT naming the field for unusable configuration; the pool's capacity is the
  // backing size rounded down to the alignment.
  static absl::StatusOr<std::unique_ptr<LoopExtentBackend>> Open(
      const std::string& pool_name, const config::LoopExtentPool& config);
  ~LoopExtentBackend() override;

  std::string backend_name() const override { return "loop_extent"; }
  uint64_t capacity_bytes() const override { return capacity_bytes_; }
  const std::string& backing_path() const { return backing_path_; }
  const std::string& pool_name() const { return pool_name_; }

  // Creates the inner and outer devices for [offset, offset+size) (both multiples of 4096).
  // On failure nothing is left behind.
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;

  // After a broker restart: checks that the devices named in `state` still are what the journal
  // says (outer backed by inner, inner backed by this pool at that offset and size) and takes
  // the broker's own descriptor to the outer device again. FAILED_PRECONDITION if they are not.
  // Verifies again, but takes no second descriptor, for an outer device already held.
  absl::Status Readopt(const journal::LoopExtentState& state);

  // Cuts the tenant off, scrubs and removes the devices: ScrubForReuse, then RemoveDevices.
  // Idempotent (devices already gone are fine), so it can be retried after kStillOpen or after
  // a restart mid-teardown. kStillOpen also when the inner device is held by someone other than
  // the outer, or a device cannot be removed yet.
  absl::StatusOr<TeardownResult> Teardown(const journal::LoopExtentState& state);

  // Steps 1-3 above: cut off and scrub. kScrubbed: the range may be reused now, and the two
  // devices, unbound, wait for RemoveDevices; kFreed if both are already gone. Idempotent.
  absl::StatusOr<TeardownResult> ScrubForReuse(const journal::LoopExtentState& state);

  // Step 4, for a batch of extents at once: removes their devices if unbound and unopened, all
  // in parallel. kStillHeld while one is unbound but still open (see the 6.1 note above); a
  // device found bound again has been taken by someone else since and is left to them. A
  // negative index names no device (the core's way of saying "already gone").
  std::vector<absl::StatusOr<RemovalResult>> RemoveDevices(
      const std::vector<journal::LoopExtentState>& states);

  // At start, after replay: removes loop devices stacked on this pool that no journaled lease
  // names (left by a crash between Provision and the journal write; no tenant ever got them).
  // Not scrubbed: their range was free, i.e. already scrubbed, before they were created. A crash
  // between LOOP_CTL_ADD and binding leaves an unbound device that cannot be told apart from
  // anyone else's; those are left alone.
  absl::Status RemoveOrphans(const std::vector<journal::LoopExtentState>& known);

  // The ExtentBackend interface: the same, for a journal::ExtentState holding a
  // LoopExtentState (INVALID_ARGUMENT for another backend's state; RemoveOrphans skips those).
  absl::Status Readopt(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> ScrubForReuse(const journal::ExtentState& state) override;
  std::vector<absl::StatusOr<RemovalResult>> RemoveDevices(
      const std::vector<journal::ExtentState>& states) override;
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override;

  // 8 extents' worth (inner + outer each): covers a burst of 8 grants, then the refill (one
  // LOOP_CTL_ADD at a time, ~210 us) catches up while grants fall back to inline creation.
  static constexpr int kDefaultSpareDevices = 16;

  // Removes the unbound, unopened devices listed in the ledger at `ledger_path` (a previous
  // run's spares), then starts the refill thread keeping `target_devices` spares, recorded in
  // that ledger. Call once, after the core's recovery (RemoveOrphans) and before grants; without
  // it Provision creates every device inline. An error reading the ledger is returned (nothing
  // started); failures to remove listed devices are logged and kept in the ledger.
  absl::Status StartSpares(const std::string& ledger_path,
                           int target_devices = kDefaultSpareDevices);
  // Stops the refill thread and removes every spare (in parallel). Idempotent.
  void StopSpares();
  void StopBackground() override { StopSpares(); }
  // The spares in stock now (tests, benchmarks).
  std::vector<int> SpareDevices();

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
  // Step 1: true once the outer device is unbound or gone (or provably not stacked on this
  // extent's inner device any more). Detaches through `held`, or through a descriptor of its
  // own if `held` is invalid.
  absl::StatusOr<bool> CutOffOuter(const journal::LoopExtentState& state, UniqueFd held);
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

  // Next device for Provision: a spare from the stock if there is one (`from_stock` set), else
  // a new one from LOOP_CTL_ADD.
  absl::StatusOr<int> NextDevice(bool* from_stock);
  // Provision is done with these spares (bound them, or removed them): out of the ledger.
  void DoneWithSpares(const std::vector<int>& taken);
  void RefillLoop();
  // Writes the stock to the ledger (temp file + rename). Caller holds spare_mu_.
  absl::Status WriteLedgerLocked(const std::vector<int>& extra) ABSL_EXCLUSIVE_LOCKS_REQUIRED(spare_mu_);

  absl::Mutex spare_mu_;
  std::deque<int> spares_ ABSL_GUARDED_BY(spare_mu_);
  std::vector<int> in_flight_ ABSL_GUARDED_BY(spare_mu_);  // taken by a Provision under way
  int provisions_running_ ABSL_GUARDED_BY(spare_mu_) = 0;  // the refill waits for none
  std::string ledger_path_ ABSL_GUARDED_BY(spare_mu_);
  int spare_target_ ABSL_GUARDED_BY(spare_mu_) = 0;
  bool spares_stopping_ ABSL_GUARDED_BY(spare_mu_) = false;
  bool ledger_stale_ ABSL_GUARDED_BY(spare_mu_) = false;  // a Provision let go of spares
  // Leftovers of a previous run that could not be removed at start; kept in the ledger.
  std::vector<int> kept_in_ledger_ ABSL_GUARDED_BY(spare_mu_);
  std::thread refill_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_LOOP_EXTENT_H_
