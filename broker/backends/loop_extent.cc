#include "broker/backends/loop_extent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "broker/backends/loop_device.h"
#include "common/logging.h"

namespace vfbroker {
namespace {

constexpr uint64_t kDefaultAlignment = 1 << 20;
constexpr uint64_t kPageBytes = 4096;
// How long a LOOP_CTL_REMOVE keeps being retried on EBUSY before "someone holds it" is
// believed: our own last close detaches synchronously, but a udev probe of a device may hold it
// for a few milliseconds.
constexpr absl::Duration kRemovePatience = absl::Milliseconds(50);
// A fresh device can be taken by another process (losetup -f picks the first unbound device)
// between our LOOP_CTL_ADD and our bind; then we leave it to them and create another.
constexpr int kBindAttempts = 4;

struct BoundDevice {
  int index = -1;
  UniqueFd fd;  // O_RDWR, the descriptor the device was bound through
  bool direct_io = false;
};

int64_t Millis(absl::Duration d) { return absl::ToInt64Milliseconds(d); }

// lo_device / lo_rdevice are the kernel's huge_encode_dev() of the dev_t, which equals glibc's
// makedev() encoding for every major < 4096 and minor < 2^20 (all loop devices).
uint64_t EncodeDev(dev_t dev) { return static_cast<uint64_t>(dev); }

// Takes a brand-new loop device from `next_device` (a spare, or one LOOP_CTL_ADD creates now)
// and binds it to `backing_fd` with `options`.
absl::StatusOr<BoundDevice> BindFreshDevice(
    const std::string& pool, absl::string_view role, int backing_fd,
    const loopdev::BindOptions& options,
    const std::function<absl::StatusOr<int>(bool*)>& next_device) {
  for (int attempt = 0; attempt < kBindAttempts;) {
    bool from_stock = false;
    absl::StatusOr<int> index = next_device(&from_stock);
    if (!index.ok()) return index.status();
    // A spare someone else removed or took meanwhile costs no attempt: the stock is finite.
    if (!from_stock) ++attempt;
    absl::StatusOr<UniqueFd> fd = loopdev::Open(*index, O_RDWR);
    if (!fd.ok()) {
      if (from_stock && absl::IsNotFound(fd.status())) {
        spdlog::warn("pool={}: spare loop{} is gone; taking another", pool, *index);
        continue;
      }
      (void)loopdev::RemoveIfUnused(*index, kRemovePatience);
      return fd.status();
    }
    absl::StatusOr<bool> direct_io = loopdev::Bind(fd->get(), *index, backing_fd, options);
    if (absl::IsAlreadyExists(direct_io.status())) {
      spdlog::warn("pool={}: {} loop{} was bound by another process before us; leaving it "
                   "to them", pool, from_stock ? "spare" : "fresh", *index);
      continue;
    }
    if (!direct_io.ok()) {
      fd->reset();
      (void)loopdev::RemoveIfUnused(*index, kRemovePatience);
      return direct_io.status();
    }
    // Read the binding back: the window above means "we bound it" must be checked, not assumed.
    absl::StatusOr<loop_info64> info = loopdev::GetInfo(fd->get(), *index);
    if (!info.ok() || info->lo_offset != options.offset_bytes ||
        info->lo_sizelimit != options.size_limit_bytes) {
      (void)loopdev::DetachAndRemove(*index, std::move(*fd), kRemovePatience);
      return info.ok() ? absl::InternalError(absl::StrCat(
                             "pool=", pool, ": loop", *index, " (", role,
                             ") is not bound as configured"))
                       : info.status();
    }
    if (options.direct_io && !*direct_io) {
      spdlog::warn("pool={}: {} loop{}: direct I/O unavailable on this backing; buffered", pool,
                   role, *index);
    }
    return BoundDevice{*index, std::move(*fd), *direct_io};
  }
  return absl::UnavailableError(absl::StrCat("pool=", pool, ": every fresh loop device (",
                                             kBindAttempts, " tries) was taken by another "
                                             "process before it could be bound"));
}

void LogRemoval(const std::string& pool, absl::string_view what, int index,
                const absl::StatusOr<loopdev::RemoveOutcome>& outcome) {
  if (!outcome.ok()) {
    spdlog::error("pool={}: removing {} loop{} failed: {}", pool, what, index, outcome.status());
  } else if (*outcome == loopdev::RemoveOutcome::kBusy) {
    spdlog::error("pool={}: {} loop{} is still held open; left in place", pool, what, index);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<LoopExtentBackend>> LoopExtentBackend::Open(
    const std::string& pool_name, const config::LoopExtentPool& config) {
  const std::string& path = config.backing_path();
  auto invalid = [&](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool ", pool_name, ": loop_extent.", field, ": ", why));
  };
  if (path.empty()) return invalid("backing_path", "empty");
  const uint64_t alignment =
      config.alignment_bytes() == 0 ? kDefaultAlignment : config.alignment_bytes();
  if (alignment < kPageBytes || (alignment & (alignment - 1)) != 0) {
    return invalid("alignment_bytes",
                   absl::StrCat(alignment, " is not a power of two >= ", kPageBytes));
  }

  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid() && errno == ENOENT && config.create()) {
    if (config.size_bytes() == 0) {
      return invalid("size_bytes", "needed to create " + path);
    }
    fd.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  }
  if (!fd.valid()) {
    const int err = errno;
    if (err == ENOENT) return invalid("backing_path", path + " does not exist (set create?)");
    if (err == EISDIR) return invalid("backing_path", path + " is a directory");
    return loopdev::ErrnoError("open", path, err);
  }

  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return loopdev::ErrnoError("fstat", path, errno);
  BackingIdentity identity;
  identity.device = st.st_dev;
  identity.inode = st.st_ino;
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
    if (config.size_bytes() > 0) {
      if (size < config.size_bytes()) {
        if (!config.create()) {
          return invalid("size_bytes", absl::StrCat(path, " has ", size, " bytes, fewer than ",
                                                    config.size_bytes(), " (set create?)"));
        }
        // Sparse: no blocks are allocated until an extent is written.
        if (::ftruncate(fd.get(), static_cast<off_t>(config.size_bytes())) != 0) {
          return loopdev::ErrnoError("ftruncate", path, errno);
        }
      }
      size = config.size_bytes();
    }
  } else if (S_ISBLK(st.st_mode)) {
    identity.is_block_device = true;
    absl::StatusOr<uint64_t> device_size = loopdev::SizeBytes(fd.get(), path);
    if (!device_size.ok()) return device_size.status();
    size = *device_size;
    if (config.size_bytes() > 0) {
      if (config.size_bytes() > size) {
        return invalid("size_bytes", absl::StrCat(path, " has only ", size, " bytes"));
      }
      size = config.size_bytes();
    }
  } else {
    return invalid("backing_path", path + " is neither a regular file nor a block device");
  }
  const uint64_t capacity = size / alignment * alignment;
  if (capacity == 0) {
    return invalid("size_bytes", absl::StrCat(size, " bytes hold no ", alignment,
                                              "-byte aligned extent"));
  }

  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    return loopdev::ErrnoError("realpath", path, errno);
  }
  identity.kernel_path = resolved;
  spdlog::info("pool={}: loop_extent over {} ({}), capacity {} bytes, alignment {}", pool_name,
               identity.kernel_path, identity.is_block_device ? "block device" : "file",
               capacity, alignment);
  return std::unique_ptr<LoopExtentBackend>(new LoopExtentBackend(
      pool_name, path, std::move(fd), capacity, std::move(identity)));
}

LoopExtentBackend::LoopExtentBackend(std::string pool_name, std::string backing_path,
                                     UniqueFd backing_fd, uint64_t capacity_bytes,
                                     BackingIdentity identity)
    : pool_name_(std::move(pool_name)),
      backing_path_(std::move(backing_path)),
      backing_fd_(std::move(backing_fd)),
      capacity_bytes_(capacity_bytes),
      backing_(std::move(identity)) {}

// The held outer descriptors close with the map. After a broker exit the kernel keeps the
// devices (and the tenant's descriptors) as they are; Readopt takes them back.
// Spares, unlike extents, are removed.
LoopExtentBackend::~LoopExtentBackend() { StopSpares(); }

absl::Status LoopExtentBackend::CheckRange(uint64_t offset, uint64_t size) const {
  if (size == 0 || offset % kPageBytes != 0 || size % kPageBytes != 0 ||
      offset > capacity_bytes_ || size > capacity_bytes_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool=", pool_name_, ": extent [", offset, ", +", size, ") is not a non-empty, ",
        kPageBytes, "-aligned range inside the pool's ", capacity_bytes_, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status LoopExtentBackend::CheckState(const journal::LoopExtentState& state) const {
  if (state.inner_loop_index() < 0 || state.outer_loop_index() < 0 ||
      state.inner_loop_index() == state.outer_loop_index()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool=", pool_name_, ": bad device indexes inner=", state.inner_loop_index(),
        " outer=", state.outer_loop_index()));
  }
  return CheckRange(state.offset_bytes(), state.size_bytes());
}

absl::Status LoopExtentBackend::VerifyInner(int fd, const journal::LoopExtentState& state) const {
  const int inner = state.inner_loop_index();
  absl::StatusOr<loop_info64> info = loopdev::GetInfo(fd, inner);
  if (!info.ok()) return info.status();
  if (info->lo_device != EncodeDev(backing_.device) || info->lo_inode != backing_.inode ||
      info->lo_offset != state.offset_bytes() || info->lo_sizelimit != state.size_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool=", pool_name_, ": loop", inner, " is bound to dev ", info->lo_device, " inode ",
        info->lo_inode, " at [", info->lo_offset, ", +", info->lo_sizelimit,
        "), not to the pool's backing (dev ", EncodeDev(backing_.device), " inode ",
        backing_.inode, ") at [", state.offset_bytes(), ", +", state.size_bytes(), ")"));
  }
  return absl::OkStatus();
}

absl::Status LoopExtentBackend::VerifyOuter(int fd, int outer_index, int inner_index) const {
  absl::StatusOr<loop_info64> info = loopdev::GetInfo(fd, outer_index);
  if (!info.ok()) return info.status();  // NOT_FOUND: unbound
  absl::StatusOr<dev_t> inner_dev = loopdev::DeviceNumber(inner_index);
  if (!inner_dev.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool=", pool_name_, ": loop", outer_index, " is bound, but inner loop", inner_index,
        " is gone: ", inner_dev.status().message()));
  }
  if (info->lo_rdevice != EncodeDev(*inner_dev)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool=", pool_name_, ": loop", outer_index, " is backed by rdev ", info->lo_rdevice,
        ", not by loop", inner_index, " (", EncodeDev(*inner_dev), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ProvisionedExtent> LoopExtentBackend::Provision(uint64_t offset, uint64_t size) {
  if (absl::Status valid = CheckRange(offset, size); !valid.ok()) return valid;
  const absl::Time start = absl::Now();

  // The inner device gets its own open file of the pool's backing: the loop driver sets
  // O_DIRECT in the flags of the file it is given, which must not leak onto other bindings.
  const std::string reopen_path = absl::StrCat("/proc/self/fd/", backing_fd_.get());
  UniqueFd backing(::open(reopen_path.c_str(), O_RDWR | O_CLOEXEC));
  if (!backing.valid()) return loopdev::ErrnoError("open", reopen_path, errno);

  loopdev::BindOptions inner_options;
  inner_options.offset_bytes = offset;
  inner_options.size_limit_bytes = size;
  // Spares taken stay in the ledger until Provision is done with them (bound, or removed), so
  // that a crash in between leaves nothing the next start does not know of.
  std::vector<int> taken;
  {
    absl::MutexLock lock(&spare_mu_);
    ++provisions_running_;
  }
  absl::Cleanup done_with_spares = [this, &taken] { DoneWithSpares(taken); };
  auto next_device = [this, &taken](bool* spare) {
    absl::StatusOr<int> index = NextDevice(spare);
    if (*spare) taken.push_back(*index);
    return index;
  };
  absl::StatusOr<BoundDevice> inner =
      BindFreshDevice(pool_name_, "inner", backing.get(), inner_options, next_device);
  if (!inner.ok()) {
    spdlog::error("pool={}: provisioning [{}, +{}): inner device: {}", pool_name_, offset, size,
                  inner.status());
    return inner.status();
  }
  backing.reset();  // the inner device holds its own reference to the file
  const int inner_index = inner->index;
  absl::Cleanup undo_inner = [&] {
    LogRemoval(pool_name_, "inner", inner_index,
               loopdev::DetachAndRemove(inner_index, std::move(inner->fd), kRemovePatience));
  };
  absl::StatusOr<uint64_t> inner_size =
      loopdev::SizeBytes(inner->fd.get(), loopdev::DevicePath(inner_index));
  if (!inner_size.ok()) return inner_size.status();
  if (*inner_size != size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool=", pool_name_, ": inner loop", inner_index, " has ", *inner_size,
        " bytes, not ", size, " (backing shorter than the pool?)"));
  }

  // The outer device's backing file is the inner device, so the tenant's LOOP_SET_STATUS64 on
  // the outer can only re-aim within the inner device's bytes, i.e. within the extent.
  absl::StatusOr<BoundDevice> outer =
      BindFreshDevice(pool_name_, "outer", inner->fd.get(), loopdev::BindOptions(), next_device);
  if (!outer.ok()) {
    spdlog::error("pool={}: provisioning [{}, +{}): outer device over loop{}: {}", pool_name_,
                  offset, size, inner_index, outer.status());
    return outer.status();
  }
  const int outer_index = outer->index;
  absl::Cleanup undo_outer = [&] {
    LogRemoval(pool_name_, "outer", outer_index,
               loopdev::DetachAndRemove(outer_index, std::move(outer->fd), kRemovePatience));
  };

  ProvisionedExtent extent;
  absl::StatusOr<UniqueFd> tenant = loopdev::Open(outer_index, O_RDWR | O_DIRECT);
  if (!tenant.ok()) return tenant.status();
  extent.device_path = loopdev::DevicePath(outer_index);
  absl::StatusOr<uint32_t> block_size = loopdev::LogicalBlockSize(tenant->get(), extent.device_path);
  if (!block_size.ok()) return block_size.status();
  extent.fds.push_back(TenantFd{v1::FD_ROLE_BLOCK_DEVICE, std::move(*tenant)});
  extent.logical_block_size = *block_size;
  journal::LoopExtentState* state = extent.state.mutable_loop_extent();
  state->set_offset_bytes(offset);
  state->set_size_bytes(size);
  state->set_inner_loop_index(inner_index);
  state->set_outer_loop_index(outer_index);

  // Success: the broker keeps the descriptor the outer was bound through (so a tenant's
  // LOOP_CLR_FD can only ever be deferred) and needs none of the inner's (the outer's binding
  // holds the inner open, which is what keeps the inner from being removed under it).
  std::move(undo_outer).Cancel();
  std::move(undo_inner).Cancel();
  inner->fd.reset();
  {
    absl::MutexLock lock(&mu_);
    held_outer_[outer_index] = std::move(outer->fd);
  }
  spdlog::info("pool={}: provisioned [{}, +{}) inner=loop{} outer=loop{} dio={}/{} "
               "block={} spares={} in {} us",
               pool_name_, offset, size, inner_index, outer_index, inner->direct_io,
               outer->direct_io, extent.logical_block_size, taken.size(),
               absl::ToInt64Microseconds(absl::Now() - start));
  return extent;
}

namespace {
absl::StatusOr<const journal::LoopExtentState*> LoopState(const journal::ExtentState& state) {
  if (!state.has_loop_extent()) {
    return absl::InvalidArgumentError("not a loop_extent extent (the journal names another "
                                      "backend's state for this pool)");
  }
  return &state.loop_extent();
}
}  // namespace

absl::Status LoopExtentBackend::Readopt(const journal::ExtentState& state) {
  absl::StatusOr<const journal::LoopExtentState*> loop = LoopState(state);
  if (!loop.ok()) return loop.status();
  return Readopt(**loop);
}

absl::StatusOr<TeardownResult> LoopExtentBackend::Teardown(const journal::ExtentState& state) {
  absl::StatusOr<const journal::LoopExtentState*> loop = LoopState(state);
  if (!loop.ok()) return loop.status();
  return Teardown(**loop);
}

absl::StatusOr<TeardownResult> LoopExtentBackend::ScrubForReuse(
    const journal::ExtentState& state) {
  absl::StatusOr<const journal::LoopExtentState*> loop = LoopState(state);
  if (!loop.ok()) return loop.status();
  return ScrubForReuse(**loop);
}

std::vector<absl::StatusOr<RemovalResult>> LoopExtentBackend::RemoveDevices(
    const std::vector<journal::ExtentState>& states) {
  std::vector<journal::LoopExtentState> loops;
  loops.reserve(states.size());
  for (const journal::ExtentState& state : states) {
    journal::LoopExtentState loop = state.loop_extent();
    if (!state.has_loop_extent()) {  // names no device
      loop.set_inner_loop_index(-1);
      loop.set_outer_loop_index(-1);
    }
    loops.push_back(std::move(loop));
  }
  return RemoveDevices(loops);
}

absl::Status LoopExtentBackend::RemoveOrphans(const std::vector<journal::ExtentState>& known) {
  std::vector<journal::LoopExtentState> loops;
  for (const journal::ExtentState& state : known) {
    if (state.has_loop_extent()) loops.push_back(state.loop_extent());
  }
  return RemoveOrphans(loops);
}

absl::Status LoopExtentBackend::Readopt(const journal::LoopExtentState& state) {
  if (absl::Status valid = CheckState(state); !valid.ok()) return valid;
  const int inner = state.inner_loop_index(), outer = state.outer_loop_index();
  auto refuse = [&](absl::string_view why) {
    spdlog::error("pool={}: cannot re-adopt inner=loop{} outer=loop{} [{}, +{}): {}", pool_name_,
                  inner, outer, state.offset_bytes(), state.size_bytes(), why);
    return absl::FailedPreconditionError(absl::StrCat(
        "pool=", pool_name_, ": cannot re-adopt outer loop", outer, ": ", why));
  };

  // Take the descriptor first, then check: once we hold it, the binding we verify cannot be
  // cleared under us (a detach is deferred to our close). This runs even if the outer device
  // is already held, so that a state that does not describe it is refused either way.
  absl::StatusOr<UniqueFd> fd = loopdev::Open(outer, O_RDONLY);
  if (!fd.ok()) return refuse(fd.status().message());

  // What sysfs says (the documented view) ...
  absl::StatusOr<loopdev::DeviceState> outer_state = loopdev::ReadState(outer);
  if (!outer_state.ok()) return refuse(outer_state.status().message());
  if (!outer_state->bound || outer_state->backing_file != loopdev::DevicePath(inner)) {
    return refuse(absl::StrCat("sysfs: loop", outer, " is backed by \"",
                               outer_state->backing_file, "\", not ",
                               loopdev::DevicePath(inner)));
  }
  absl::StatusOr<loopdev::DeviceState> inner_state = loopdev::ReadState(inner);
  if (!inner_state.ok()) return refuse(inner_state.status().message());
  if (!inner_state->bound || inner_state->backing_file != backing_.kernel_path ||
      inner_state->offset_bytes != state.offset_bytes() ||
      inner_state->size_limit_bytes != state.size_bytes()) {
    return refuse(absl::StrCat("sysfs: loop", inner, " is backed by \"",
                               inner_state->backing_file, "\" at [", inner_state->offset_bytes,
                               ", +", inner_state->size_limit_bytes, "), not ",
                               backing_.kernel_path, " at [", state.offset_bytes(), ", +",
                               state.size_bytes(), ")"));
  }
  // ... and what the kernel says about the very files bound (paths can be reused; inodes and
  // device numbers of held devices cannot).
  if (absl::Status verified = VerifyOuter(fd->get(), outer, inner); !verified.ok()) {
    return refuse(verified.message());
  }
  absl::StatusOr<UniqueFd> inner_fd = loopdev::Open(inner, O_RDONLY);
  if (!inner_fd.ok()) return refuse(inner_fd.status().message());
  if (absl::Status verified = VerifyInner(inner_fd->get(), state); !verified.ok()) {
    return refuse(verified.message());
  }
  {
    absl::MutexLock lock(&mu_);
    if (!held_outer_.try_emplace(outer, std::move(*fd)).second) return absl::OkStatus();
  }
  spdlog::info("pool={}: re-adopted [{}, +{}) inner=loop{} outer=loop{}", pool_name_,
               state.offset_bytes(), state.size_bytes(), inner, outer);
  return absl::OkStatus();
}

absl::StatusOr<bool> LoopExtentBackend::CutOffOuter(const journal::LoopExtentState& state,
                                                    UniqueFd held) {
  const int inner = state.inner_loop_index(), outer = state.outer_loop_index();
  if (!held.valid()) {
    // A retry, or a teardown after a restart: take a descriptor of our own to detach through.
    absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(outer);
    if (!binding.ok()) return binding.status();
    if (*binding != loopdev::Binding::kBound) return true;
    absl::StatusOr<UniqueFd> opened = loopdev::Open(outer, O_RDONLY);
    if (!opened.ok() && !absl::IsNotFound(opened.status())) return opened.status();
    // ENXIO from open: gone, detached meanwhile, or (6.11+) in rundown, still held by the one
    // who asked for the detach. Only sysfs tells them apart.
    absl::Status stacked = opened.ok() ? VerifyOuter(opened->get(), outer, inner)
                                       : opened.status();
    if (absl::IsNotFound(stacked)) {
      opened = UniqueFd();
      absl::StatusOr<loopdev::Binding> again = loopdev::GetBinding(outer);
      if (!again.ok()) return again.status();
      return *again != loopdev::Binding::kBound;
    }
    if (!stacked.ok()) {
      if (!absl::IsFailedPrecondition(stacked)) return stacked;
      // Bound to anything but our inner device: it was unbound, then bound by someone to their
      // own file (or the index was removed and reused); either way it no longer reaches this
      // extent. Left alone.
      spdlog::warn("pool={}: outer loop{} is no longer this extent's ({}); leaving it",
                   pool_name_, outer, stacked.message());
      return true;
    }
    held = std::move(*opened);
  }
  // Our descriptor now asks for the detach. If it is the last one, the detach happens in this
  // LOOP_CLR_FD (6.1) or at our close (6.11+), before close() returns; if anyone else still
  // holds the device, at their last close.
  if (absl::Status detached = loopdev::Detach(held.get(), outer); !detached.ok()) {
    return detached;
  }
  held.reset();
  absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(outer);
  if (!binding.ok()) return binding.status();
  return *binding != loopdev::Binding::kBound;
}

absl::Status LoopExtentBackend::ScrubBackingRange(uint64_t offset, uint64_t size) {
  if (backing_.is_block_device) {
    return loopdev::ZeroRange(backing_fd_.get(), backing_path_, offset, size,
                              /*discard_zeroes=*/false);
  }
  return loopdev::ZeroFileRange(backing_fd_.get(), backing_path_, offset, size);
}

absl::StatusOr<TeardownResult> LoopExtentBackend::Teardown(
    const journal::LoopExtentState& state) {
  absl::StatusOr<TeardownResult> scrubbed = ScrubForReuse(state);
  if (!scrubbed.ok() || *scrubbed != TeardownResult::kScrubbed) return scrubbed;
  std::vector<absl::StatusOr<RemovalResult>> removed = RemoveDevices({state});
  if (!removed[0].ok()) return removed[0].status();
  return *removed[0] == RemovalResult::kRemoved ? TeardownResult::kFreed
                                                : TeardownResult::kStillOpen;
}

absl::StatusOr<TeardownResult> LoopExtentBackend::ScrubForReuse(
    const journal::LoopExtentState& state) {
  if (absl::Status valid = CheckState(state); !valid.ok()) return valid;
  const int inner = state.inner_loop_index(), outer = state.outer_loop_index();
  const uint64_t offset = state.offset_bytes(), size = state.size_bytes();
  const absl::Time start = absl::Now();

  UniqueFd held;
  {
    absl::MutexLock lock(&mu_);
    auto it = held_outer_.find(outer);
    if (it != held_outer_.end()) {
      held = std::move(it->second);
      held_outer_.erase(it);
    }
  }

  // 1. Cut the tenant off: the outer device must be detached, which the kernel defers while
  //    any other descriptor to it is open. Until then nothing is scrubbed.
  absl::StatusOr<bool> cut_off = CutOffOuter(state, std::move(held));
  if (!cut_off.ok()) {
    spdlog::error("pool={}: teardown inner=loop{} outer=loop{}: {}", pool_name_, inner, outer,
                  cut_off.status());
    return cut_off.status();
  }
  if (!*cut_off) {
    spdlog::info("pool={}: teardown [{}, +{}) outer=loop{} still held open elsewhere; "
                 "quarantined, nothing scrubbed", pool_name_, offset, size, outer);
    return TeardownResult::kStillOpen;
  }
  const absl::Time cut_off_at = absl::Now();

  // 2. Scrub through the inner device while it is still ours, then detach it. Anything else
  //    holding the inner device (a device stacked on it counts: its binding holds the inner
  //    open) keeps it bound past our close, which the check after the scrub catches. (No scan
  //    of every loop device for one stacked on it: with thousands of devices on a host that
  //    alone took 400 ms.)
  const std::string inner_path = loopdev::DevicePath(inner);
  auto inner_still_held = [&](absl::string_view when) {
    spdlog::warn("pool={}: teardown [{}, +{}): inner loop{} held open elsewhere {}; "
                 "quarantined", pool_name_, offset, size, inner, when);
    return TeardownResult::kStillOpen;
  };
  absl::StatusOr<UniqueFd> inner_fd = loopdev::Open(inner, O_RDWR);
  if (!inner_fd.ok() && !absl::IsNotFound(inner_fd.status())) return inner_fd.status();
  absl::Status ours = inner_fd.ok() ? VerifyInner(inner_fd->get(), state) : inner_fd.status();
  if (ours.ok()) {
    const absl::Time scrub_start = absl::Now();
    absl::StatusOr<uint64_t> device_size = loopdev::SizeBytes(inner_fd->get(), inner_path);
    if (!device_size.ok()) return device_size.status();
    // Over a file, a discard is fallocate(PUNCH_HOLE) in the backing file: zeroes, no space.
    absl::Status scrubbed = loopdev::ZeroRange(inner_fd->get(), inner_path, 0, *device_size,
                                               /*discard_zeroes=*/!backing_.is_block_device);
    if (!scrubbed.ok()) {
      spdlog::error("pool={}: scrubbing [{}, +{}) through inner loop{} failed: {}", pool_name_,
                    offset, size, inner, scrubbed);
      return scrubbed;
    }
    const absl::Time scrubbed_at = absl::Now();
    // Detached at our close only if ours is the inner's last descriptor: then nobody else held
    // it across the scrub. Otherwise the detach waits for their close, and the next attempt,
    // finding the device unbound, zeroes the range again directly.
    if (absl::Status detached = loopdev::Detach(inner_fd->get(), inner); !detached.ok()) {
      return detached;
    }
    inner_fd->reset();
    absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(inner);
    if (!binding.ok()) return binding.status();
    if (*binding == loopdev::Binding::kBound) return inner_still_held("after the scrub");
    spdlog::info("pool={}: scrubbed [{}, +{}) inner=loop{} outer=loop{} for reuse in {} ms "
                 "(cut off {:.2f} ms, scrub {:.2f} ms); devices to remove",
                 pool_name_, offset, size, inner, outer, Millis(absl::Now() - start),
                 absl::ToDoubleMilliseconds(cut_off_at - start),
                 absl::ToDoubleMilliseconds(scrubbed_at - scrub_start));
    return TeardownResult::kScrubbed;
  }
  if (inner_fd.ok()) inner_fd->reset();
  if (absl::IsNotFound(ours)) {
    // ENXIO: gone, unbound, or (6.11+) in rundown, still held by whoever asked for its detach.
    absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(inner);
    if (!binding.ok()) return binding.status();
    if (*binding == loopdev::Binding::kBound) return inner_still_held("while detaching");
    // Unbound or gone: it reaches nothing any more. Ours (a retry after a crash or after
    // someone's late close); the range is zeroed directly below.
  } else if (absl::IsFailedPrecondition(ours)) {
    // Bound to something else. If that is still a window onto this extent's range (same
    // backing file, overlapping bytes: only a privileged process re-aiming our device can do
    // that), freeing the range would hand it over with a reader attached. Refuse instead.
    absl::StatusOr<UniqueFd> again = loopdev::Open(inner, O_RDONLY);
    absl::StatusOr<loop_info64> info =
        again.ok() ? loopdev::GetInfo(again->get(), inner) : again.status();
    if (info.ok() && info->lo_device == EncodeDev(backing_.device) &&
        info->lo_inode == backing_.inode) {
      const uint64_t begin = info->lo_offset;
      const bool overlaps =
          begin < offset + size &&
          (info->lo_sizelimit == 0 || begin + info->lo_sizelimit > offset);
      if (overlaps) {
        spdlog::error("pool={}: teardown [{}, +{}): inner loop{} was re-aimed to [{}, +{}) of "
                      "the pool; refusing to free the range", pool_name_, offset, size, inner,
                      info->lo_offset, info->lo_sizelimit);
        return absl::FailedPreconditionError(absl::StrCat(
            "pool=", pool_name_, ": inner loop", inner, " was re-aimed within the pool (",
            ours.message(), "); the range stays quarantined"));
      }
    }
    spdlog::warn("pool={}: inner loop{} is no longer this extent's ({}); leaving it",
                 pool_name_, inner, ours.message());
  } else {
    return ours;
  }

  // 3. No device of ours reaches the range any more, but whether it was scrubbed before the
  //    device went away is not known here (a crash between steps): zero it directly.
  if (absl::Status scrubbed = ScrubBackingRange(offset, size); !scrubbed.ok()) {
    spdlog::error("pool={}: scrubbing [{}, +{}) in {} failed: {}", pool_name_, offset, size,
                  backing_path_, scrubbed);
    return scrubbed;
  }
  absl::StatusOr<loopdev::Binding> outer_left = loopdev::GetBinding(outer);
  absl::StatusOr<loopdev::Binding> inner_left = loopdev::GetBinding(inner);
  const bool all_gone = outer_left.ok() && *outer_left == loopdev::Binding::kGone &&
                        inner_left.ok() && *inner_left == loopdev::Binding::kGone;
  spdlog::info("pool={}: scrubbed [{}, +{}) inner=loop{} outer=loop{}: inner device already "
               "unbound or gone, range zeroed in the backing, {} ms{}", pool_name_, offset, size,
               inner, outer, Millis(absl::Now() - start),
               all_gone ? "" : "; devices to remove");
  return all_gone ? TeardownResult::kFreed : TeardownResult::kScrubbed;
}

std::vector<absl::StatusOr<RemovalResult>> LoopExtentBackend::RemoveDevices(
    const std::vector<journal::LoopExtentState>& states) {
  std::vector<absl::StatusOr<RemovalResult>> results(states.size(), RemovalResult::kRemoved);
  std::vector<int> indexes;
  std::vector<size_t> owner;  // indexes[i] belongs to states[owner[i]]
  for (size_t i = 0; i < states.size(); ++i) {
    // A negative index names no device (the core passes one for a device a later grant shows
    // was removed already).
    for (int index : {states[i].outer_loop_index(), states[i].inner_loop_index()}) {
      if (index < 0) continue;
      indexes.push_back(index);
      owner.push_back(i);
    }
  }
  const absl::Time start = absl::Now();
  // The kernel refuses (EBUSY) to remove a device that is bound or open, so nothing that is
  // someone's, or still reachable, can go; in parallel, the removals share grace periods.
  std::vector<absl::StatusOr<loopdev::RemoveOutcome>> outcomes =
      loopdev::RemoveAllIfUnused(indexes, kRemovePatience);
  int removed = 0;
  for (size_t k = 0; k < indexes.size(); ++k) {
    absl::StatusOr<RemovalResult>& result = results[owner[k]];
    const int index = indexes[k];
    if (!outcomes[k].ok()) {
      spdlog::error("pool={}: removing loop{} failed: {}", pool_name_, index,
                    outcomes[k].status());
      if (result.ok()) result = outcomes[k].status();
      continue;
    }
    if (*outcomes[k] == loopdev::RemoveOutcome::kRemoved) ++removed;
    if (*outcomes[k] != loopdev::RemoveOutcome::kBusy) continue;
    absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(index);
    if (!binding.ok()) {
      if (result.ok()) result = binding.status();
    } else if (*binding == loopdev::Binding::kBound) {
      // We left it unbound; someone has bound it since. Theirs now: left alone.
      spdlog::warn("pool={}: loop{} (extent [{}, +{})) was bound again by someone else after "
                   "its scrub; left to them", pool_name_, index, states[owner[k]].offset_bytes(),
                   states[owner[k]].size_bytes());
    } else if (*binding == loopdev::Binding::kUnbound) {
      spdlog::info("pool={}: unbound loop{} (extent [{}, +{})) is still held open; removal "
                   "deferred", pool_name_, index, states[owner[k]].offset_bytes(),
                   states[owner[k]].size_bytes());
      if (result.ok()) result = RemovalResult::kStillHeld;
    }
  }
  if (!indexes.empty()) {
    spdlog::info("pool={}: removed {} of {} loop devices of {} torn-down extents in {} ms",
                 pool_name_, removed, indexes.size(), states.size(),
                 Millis(absl::Now() - start));
  }
  return results;
}

absl::Status LoopExtentBackend::RemoveOrphans(
    const std::vector<journal::LoopExtentState>& known) {
  absl::flat_hash_set<int> known_inner, known_outer;
  for (const journal::LoopExtentState& state : known) {
    known_inner.insert(state.inner_loop_index());
    known_outer.insert(state.outer_loop_index());
  }
  absl::StatusOr<std::vector<int>> devices = loopdev::ListDevices();
  if (!devices.ok()) return devices.status();
  std::vector<std::pair<int, loopdev::DeviceState>> bound;
  for (int index : *devices) {
    absl::StatusOr<loopdev::DeviceState> state = loopdev::ReadState(index);
    if (state.ok() && state->bound) bound.emplace_back(index, std::move(*state));
  }

  std::vector<std::string> failures;
  int removed = 0;
  auto remove = [&](int index, absl::string_view role, UniqueFd fd) {
    absl::StatusOr<loopdev::RemoveOutcome> outcome =
        loopdev::DetachAndRemove(index, std::move(fd), kRemovePatience);
    LogRemoval(pool_name_, role, index, outcome);
    if (!outcome.ok()) {
      failures.push_back(std::string(outcome.status().message()));
      return false;
    }
    if (*outcome == loopdev::RemoveOutcome::kBusy) {
      failures.push_back(absl::StrCat("loop", index, " is held open"));
      return false;
    }
    ++removed;
    return true;
  };

  for (const auto& [inner, inner_state] : bound) {
    if (inner_state.backing_file != backing_.kernel_path) continue;
    // Same path is not proof: confirm the kernel's backing inode before touching anything.
    absl::StatusOr<UniqueFd> inner_fd = loopdev::Open(inner, O_RDONLY);
    if (!inner_fd.ok()) continue;
    absl::StatusOr<loop_info64> info = loopdev::GetInfo(inner_fd->get(), inner);
    if (!info.ok() || info->lo_device != EncodeDev(backing_.device) ||
        info->lo_inode != backing_.inode) {
      continue;
    }
    bool inner_still_used = false;
    for (const auto& [outer, outer_state] : bound) {
      if (outer_state.backing_file != loopdev::DevicePath(inner)) continue;
      if (known_outer.contains(outer)) {
        inner_still_used = true;
        continue;
      }
      absl::StatusOr<UniqueFd> outer_fd = loopdev::Open(outer, O_RDONLY);
      if (!outer_fd.ok() || !VerifyOuter(outer_fd->get(), outer, inner).ok()) continue;
      spdlog::warn("pool={}: removing orphaned outer loop{} (over inner loop{}, [{}, +{}))",
                   pool_name_, outer, inner, inner_state.offset_bytes,
                   inner_state.size_limit_bytes);
      if (!remove(outer, "orphaned outer", std::move(*outer_fd))) inner_still_used = true;
    }
    if (known_inner.contains(inner)) continue;
    if (inner_still_used) {
      failures.push_back(absl::StrCat("inner loop", inner, " kept: a device over it remains"));
      continue;
    }
    spdlog::warn("pool={}: removing orphaned inner loop{} ([{}, +{}))", pool_name_, inner,
                 inner_state.offset_bytes, inner_state.size_limit_bytes);
    remove(inner, "orphaned inner", std::move(*inner_fd));
  }
  if (removed > 0 || !failures.empty()) {
    spdlog::info("pool={}: orphan sweep removed {} devices, {} problems", pool_name_, removed,
                 failures.size());
  }
  if (!failures.empty()) {
    return absl::UnavailableError(absl::StrCat("pool=", pool_name_, ": orphan sweep: ",
                                               absl::StrJoin(failures, "; ")));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Spares

absl::StatusOr<int> LoopExtentBackend::NextDevice(bool* from_stock) {
  {
    absl::MutexLock lock(&spare_mu_);
    if (!spares_.empty()) {
      const int index = spares_.front();
      spares_.pop_front();
      in_flight_.push_back(index);
      *from_stock = true;
      return index;
    }
  }
  *from_stock = false;
  return loopdev::CreateFresh();
}

void LoopExtentBackend::DoneWithSpares(const std::vector<int>& taken) {
  absl::MutexLock lock(&spare_mu_);
  --provisions_running_;
  if (taken.empty()) return;
  for (int index : taken) {
    auto it = std::find(in_flight_.begin(), in_flight_.end(), index);
    if (it != in_flight_.end()) in_flight_.erase(it);
  }
  ledger_stale_ = true;  // wakes the refill (its condition), which rewrites the ledger
}

std::vector<int> LoopExtentBackend::SpareDevices() {
  absl::MutexLock lock(&spare_mu_);
  return std::vector<int>(spares_.begin(), spares_.end());
}

absl::Status LoopExtentBackend::WriteLedgerLocked(const std::vector<int>& extra) {
  std::vector<int> listed(spares_.begin(), spares_.end());
  listed.insert(listed.end(), in_flight_.begin(), in_flight_.end());
  listed.insert(listed.end(), extra.begin(), extra.end());
  if (listed.empty()) {
    if (::unlink(ledger_path_.c_str()) != 0 && errno != ENOENT) {
      return loopdev::ErrnoError("unlink", ledger_path_, errno);
    }
    return absl::OkStatus();
  }
  const std::string text = absl::StrCat(absl::StrJoin(listed, "\n"), "\n");
  const std::string temp = ledger_path_ + ".tmp";
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return loopdev::ErrnoError("open", temp, errno);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return loopdev::ErrnoError("write", temp, errno);
  }
  fd.reset();
  if (::rename(temp.c_str(), ledger_path_.c_str()) != 0) {
    return loopdev::ErrnoError("rename", ledger_path_, errno);
  }
  return absl::OkStatus();
}

absl::Status LoopExtentBackend::StartSpares(const std::string& ledger_path, int target_devices) {
  // A previous run's spares: unbound devices only the ledger knows to be ours.
  std::vector<int> leftover;
  {
    UniqueFd fd(::open(ledger_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() && errno != ENOENT) return loopdev::ErrnoError("open", ledger_path, errno);
    std::string text;
    char buffer[4096];
    while (fd.valid()) {
      const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return loopdev::ErrnoError("read", ledger_path, errno);
      if (n == 0) break;
      text.append(buffer, static_cast<size_t>(n));
    }
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
      int index = -1;
      if (absl::SimpleAtoi(line, &index) && index >= 0) leftover.push_back(index);
    }
  }
  std::vector<int> kept;
  if (!leftover.empty()) {
    // LOOP_CTL_REMOVE refuses (EBUSY) a device that is bound or open: a spare a crashed
    // Provision had bound, or a device that is someone else's by now, stays.
    std::vector<absl::StatusOr<loopdev::RemoveOutcome>> outcomes =
        loopdev::RemoveAllIfUnused(leftover, kRemovePatience);
    int removed = 0;
    for (size_t i = 0; i < leftover.size(); ++i) {
      if (!outcomes[i].ok()) {
        spdlog::error("pool={}: removing leftover spare loop{} failed: {}", pool_name_,
                      leftover[i], outcomes[i].status());
        kept.push_back(leftover[i]);
      } else if (*outcomes[i] == loopdev::RemoveOutcome::kRemoved) {
        ++removed;
      } else if (*outcomes[i] == loopdev::RemoveOutcome::kBusy) {
        absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(leftover[i]);
        // Bound: provisioned (ours, RemoveOrphans' or a lease's) or someone else's; left alone
        // and forgotten. Unbound but open: only root can have opened it; kept in the ledger
        // for the next start.
        if (binding.ok() && *binding == loopdev::Binding::kUnbound) {
          spdlog::warn("pool={}: leftover spare loop{} is held open; kept for the next start",
                       pool_name_, leftover[i]);
          kept.push_back(leftover[i]);
        }
      }
    }
    spdlog::info("pool={}: removed {} of {} spare loop devices a previous run left", pool_name_,
                 removed, leftover.size());
  }
  absl::MutexLock lock(&spare_mu_);
  if (refill_.joinable() || spares_stopping_) {
    return absl::FailedPreconditionError(
        absl::StrCat("pool=", pool_name_, ": spares already started"));
  }
  ledger_path_ = ledger_path;
  spare_target_ = std::max(0, target_devices);
  if (absl::Status written = WriteLedgerLocked(kept); !written.ok()) return written;
  kept_in_ledger_ = std::move(kept);
  refill_ = std::thread([this] { RefillLoop(); });
  return absl::OkStatus();
}

void LoopExtentBackend::RefillLoop() {
  absl::Duration backoff = absl::ZeroDuration();
  while (true) {
    {
      absl::MutexLock lock(&spare_mu_);
      auto wanted = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(spare_mu_) {
        // Refills only while no Provision runs: during a burst its LOOP_CTL_ADDs would only
        // compete with the grants' own (the kernel's loop_ctl_mutex, the CPUs).
        return spares_stopping_ || ledger_stale_ ||
               (static_cast<int>(spares_.size()) < spare_target_ && provisions_running_ == 0);
      };
      if (backoff > absl::ZeroDuration()) {
        auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(spare_mu_) {
          return spares_stopping_;
        };
        spare_mu_.AwaitWithTimeout(absl::Condition(&stopping), backoff);
      }
      spare_mu_.Await(absl::Condition(&wanted));
      if (spares_stopping_) return;
      if (ledger_stale_) {
        // Drop the spares Provision is done with: bound by now, or removed.
        ledger_stale_ = false;
        if (absl::Status written = WriteLedgerLocked(kept_in_ledger_); !written.ok()) {
          spdlog::error("pool={}: spare ledger: {}", pool_name_, written);
        }
      }
      if (static_cast<int>(spares_.size()) >= spare_target_ || provisions_running_ > 0) continue;
    }
    // The one window a crash can leak a device in: between this LOOP_CTL_ADD and the ledger
    // write below (one device at most).
    absl::StatusOr<int> index = loopdev::CreateFresh();
    if (!index.ok()) {
      spdlog::error("pool={}: creating a spare loop device: {}", pool_name_, index.status());
      backoff = std::min(std::max(backoff * 2, absl::Milliseconds(100)), absl::Seconds(5));
      continue;
    }
    backoff = absl::ZeroDuration();
    absl::MutexLock lock(&spare_mu_);
    spares_.push_back(*index);
    if (absl::Status written = WriteLedgerLocked(kept_in_ledger_); !written.ok()) {
      spdlog::error("pool={}: spare ledger: {}", pool_name_, written);
    }
  }
}

void LoopExtentBackend::StopSpares() {
  {
    absl::MutexLock lock(&spare_mu_);
    spares_stopping_ = true;
  }
  if (refill_.joinable()) refill_.join();
  std::vector<int> stock;
  {
    absl::MutexLock lock(&spare_mu_);
    if (ledger_path_.empty()) return;  // never started, or stopped already
    stock.assign(spares_.begin(), spares_.end());
    spares_.clear();
  }
  std::vector<int> kept;
  if (!stock.empty()) {
    const absl::Time start = absl::Now();
    std::vector<absl::StatusOr<loopdev::RemoveOutcome>> outcomes =
        loopdev::RemoveAllIfUnused(stock, kRemovePatience);
    int removed = 0;
    for (size_t i = 0; i < stock.size(); ++i) {
      if (outcomes[i].ok() && *outcomes[i] != loopdev::RemoveOutcome::kBusy) {
        ++removed;
        continue;
      }
      absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(stock[i]);
      if (binding.ok() && *binding == loopdev::Binding::kBound) continue;  // someone else's now
      spdlog::warn("pool={}: spare loop{} could not be removed ({}); kept in the ledger",
                   pool_name_, stock[i],
                   outcomes[i].ok() ? "held open" : outcomes[i].status().ToString());
      kept.push_back(stock[i]);
    }
    spdlog::info("pool={}: removed {} of {} spare loop devices in {} ms", pool_name_, removed,
                 stock.size(), Millis(absl::Now() - start));
  }
  absl::MutexLock lock(&spare_mu_);
  kept.insert(kept.end(), kept_in_ledger_.begin(), kept_in_ledger_.end());
  if (absl::Status written = WriteLedgerLocked(kept); !written.ok()) {
    spdlog::error("pool={}: spare ledger: {}", pool_name_, written);
  }
  kept_in_ledger_.clear();
  ledger_path_.clear();
}

}  // namespace vfbroker
