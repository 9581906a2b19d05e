// Thin wrappers over the kernel loop driver's user API (linux/loop.h) and the block-device
// ioctls the loop_extent backend needs (linux/fs.h): create a brand-new device through
// /dev/loop-control, bind it, read its state back, detach it and remove it.
//
// No policy lives here: what to bind where, what counts as "ours" and when a slice is safe to
// scrub are decided by loop_extent.cc. Every system-call failure comes back as an absl::Status
// whose message names the call, the device and strerror(errno).
//
// Loop semantics these wrappers are written against (measured on 6.18, read in 6.1's loop.c):
//  - LOOP_CTL_ADD with a negative index creates a new, unbound device with the lowest unused
//    index; devtmpfs creates /dev/loopN before the ioctl returns.
//  - LOOP_CLR_FD does not necessarily detach. When others hold the device open it only sets
//    LO_FLAGS_AUTOCLEAR, and the detach happens at the last close, synchronously in the task
//    that closes (lo_release). When the caller is the only opener, 6.1 detaches at once; since
//    6.11 the device only enters "rundown" (new opens and LOOP_GET_STATUS64 fail with ENXIO
//    while the caller's descriptor stays open) and the detach again happens at that last close.
//    So neither LOOP_CLR_FD's answer nor an ENXIO from an open or LOOP_GET_STATUS64 says that a
//    device is detached; sysfs does (GetBinding): the detach itself removes the loop/ group,
//    after it has cleared the device's backing file.
//  - A detach at the last close proves that, at that instant, no descriptor to the device was
//    left. A successful LOOP_CTL_REMOVE proves the same (it fails with EBUSY while the device is
//    bound or open) but costs ~40 ms on 6.18: del_gendisk and the tag set's teardown wait for
//    three RCU/SRCU grace periods (queue freeze, elevator switch, srcu_barrier); removals running
//    in parallel share them.
//  - An fd to a loop device that others also opened counts as one opener; the file a loop
//    device is bound to (another loop device, for stacking) counts as an opener of that device.
//
// Thread-safe: every function is a stateless system-call wrapper.
#ifndef VFBROKER_BROKER_BACKENDS_LOOP_DEVICE_H_
#define VFBROKER_BROKER_BACKENDS_LOOP_DEVICE_H_

#include <linux/loop.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"

namespace vfbroker {
namespace loopdev {

// "/dev/loop<index>".
std::string DevicePath(int index);

// LOOP_CTL_ADD(-1) on /dev/loop-control: a device nobody has ever opened, so no stale
// descriptor can refer to it. Returns its index.
absl::StatusOr<int> CreateFresh();

// open("/dev/loop<index>", flags | O_CLOEXEC). NOT_FOUND if the device does not exist.
absl::StatusOr<UniqueFd> Open(int index, int flags);

struct BindOptions {
  uint64_t offset_bytes = 0;      // lo_offset: where in the backing file the device starts
  uint64_t size_limit_bytes = 0;  // lo_sizelimit: 0 = to the end of the backing file
  bool direct_io = true;          // LO_FLAGS_DIRECT_IO: bypass the backing file's page cache
  // false: go straight to the pre-5.8 sequence (lets tests exercise it on a new kernel).
  bool use_loop_configure = true;
};

// Binds the device open as `device_fd` to `backing_fd`. Uses LOOP_CONFIGURE (5.8+, one atomic
// step); if the kernel lacks it, LOOP_SET_FD + LOOP_SET_STATUS64 + LOOP_SET_DIRECT_IO (and
// detaches again if a later step fails). Direct I/O is best effort: if the backing file cannot
// do O_DIRECT the device is bound buffered. Returns whether direct I/O is on.
// ALREADY_EXISTS if the device is already bound (EBUSY): someone else took it.
absl::StatusOr<bool> Bind(int device_fd, int index, int backing_fd, const BindOptions& options);

// The device as sysfs shows it (/sys/block/loopN and its loop/ directory, which exists only
// while the device is bound).
struct DeviceState {
  bool exists = false;
  bool bound = false;
  std::string backing_file;  // d_path of the backing file; " (deleted)" appended if unlinked
  uint64_t offset_bytes = 0;
  uint64_t size_limit_bytes = 0;
  bool direct_io = false;
  bool autoclear = false;
};
absl::StatusOr<DeviceState> ReadState(int index);

// Whether the device is bound, from sysfs alone (opening it would make the caller an opener):
// /sys/block/loopN/loop exists from the bind until the detach has released the backing file.
enum class Binding { kGone, kUnbound, kBound };
absl::StatusOr<Binding> GetBinding(int index);

// Indexes of every loop device in /sys/block, ascending.
absl::StatusOr<std::vector<int>> ListDevices();

// The device number (major:minor) of /dev/loop<index>, from /sys/block/loopN/dev.
absl::StatusOr<dev_t> DeviceNumber(int index);

// LOOP_GET_STATUS64: the binding as the kernel holds it, including the backing file's
// device/inode (lo_device, lo_inode) and, for a block-device backing, its rdev (lo_rdevice),
// encoded like stat's st_dev. NOT_FOUND (ENXIO) if the device is not bound.
absl::StatusOr<loop_info64> GetInfo(int device_fd, int index);

// LOOP_CLR_FD. Unbound (ENXIO) is success. See above: this may only schedule the detach.
absl::Status Detach(int device_fd, int index);

enum class RemoveOutcome {
  kRemoved,      // LOOP_CTL_REMOVE succeeded: the device is gone
  kAlreadyGone,  // no such device (ENODEV)
  kBusy,         // still bound or open by someone (EBUSY) for all of `patience`
};

// LOOP_CTL_REMOVE, retrying EBUSY for up to `patience` (a detach scheduled by our own last
// close, or a udev probe, clears within milliseconds). kBusy is how "someone else still holds
// this device" is learned: the kernel has no other interface that reports openers.
absl::StatusOr<RemoveOutcome> RemoveIfUnused(int index, absl::Duration patience);

// RemoveIfUnused for every index at once, one thread each: the grace periods the removals
// wait for overlap, so N devices take about as long as one. Answers in the order of `indexes`.
std::vector<absl::StatusOr<RemoveOutcome>> RemoveAllIfUnused(const std::vector<int>& indexes,
                                                             absl::Duration patience);

// Detach via `fd` (or via a fresh O_RDONLY descriptor if `fd` is invalid), close it, then
// RemoveIfUnused. The usual way to get rid of a device the caller has decided is its own.
absl::StatusOr<RemoveOutcome> DetachAndRemove(int index, UniqueFd fd, absl::Duration patience);

// BLKGETSIZE64 and BLKSSZGET. `what` names the device in errors.
absl::StatusOr<uint64_t> SizeBytes(int fd, absl::string_view what);
absl::StatusOr<uint32_t> LogicalBlockSize(int fd, absl::string_view what);

// Makes [offset, offset+length) of the block device `fd` read as zeroes: BLKDISCARD first when
// `discard_zeroes` (the caller knows a discard zeroes here, e.g. a loop device over a regular
// file, where it becomes fallocate(PUNCH_HOLE) and frees the space), else or if that fails
// BLKZEROOUT, else plain writes of zeroes; then fsync so the zeroes reach the backing store.
absl::Status ZeroRange(int fd, absl::string_view what, uint64_t offset, uint64_t length,
                       bool discard_zeroes);

// The same for a regular file: fallocate(PUNCH_HOLE|KEEP_SIZE), else ZERO_RANGE, else writes;
// then fdatasync.
absl::Status ZeroFileRange(int fd, absl::string_view what, uint64_t offset, uint64_t length);

// errno as a Status naming `call` and `what`, with a code that fits the errno.
absl::Status ErrnoError(absl::string_view call, absl::string_view what, int err);

}  // namespace loopdev
}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_LOOP_DEVICE_H_
