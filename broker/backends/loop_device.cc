#include "broker/backends/loop_device.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace vfbroker {
namespace loopdev {
namespace {

constexpr char kLoopControl[] = "/dev/loop-control";

std::string SysfsDir(int index) { return absl::StrCat("/sys/block/loop", index); }

// Reads a small sysfs attribute, without its trailing newline. NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadAttribute(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError("open", path, errno);
  std::string value;
  char buffer[4096];
  while (true) {
    ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read", path, errno);
    }
    if (n == 0) break;
    value.append(buffer, static_cast<size_t>(n));
  }
  while (!value.empty() && value.back() == '\n') value.pop_back();
  return value;
}

absl::StatusOr<uint64_t> ReadNumber(const std::string& path) {
  absl::StatusOr<std::string> text = ReadAttribute(path);
  if (!text.ok()) return text.status();
  uint64_t value = 0;
  if (!absl::SimpleAtoi(*text, &value)) {
    return absl::InternalError(absl::StrCat(path, ": not a number: \"", *text, "\""));
  }
  return value;
}

absl::StatusOr<UniqueFd> OpenControl() {
  UniqueFd control(::open(kLoopControl, O_RDWR | O_CLOEXEC));
  if (!control.valid()) return ErrnoError("open", kLoopControl, errno);
  return control;
}

bool SysfsExists(int index) {
  struct stat st;
  return ::stat(SysfsDir(index).c_str(), &st) == 0;
}

absl::Status WriteZeroes(int fd, absl::string_view what, uint64_t offset, uint64_t length) {
  constexpr size_t kChunk = 1 << 20;
  // Aligned so that this also works on a descriptor opened with O_DIRECT.
  void* raw = nullptr;
  if (::posix_memalign(&raw, 4096, kChunk) != 0) {
    return absl::ResourceExhaustedError("cannot allocate a zero buffer");
  }
  std::unique_ptr<void, decltype(&std::free)> buffer(raw, &std::free);
  std::memset(buffer.get(), 0, kChunk);
  uint64_t done = 0;
  while (done < length) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, length - done));
    ssize_t n = ::pwrite(fd, buffer.get(), want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("pwrite(zeroes)", what, errno);
    }
    if (n == 0) return ErrnoError("pwrite(zeroes)", what, EIO);
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ErrnoError(absl::string_view call, absl::string_view what, int err) {
  std::string message = absl::StrCat(call, " ", what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EBUSY:
      return absl::UnavailableError(message);
    case ENOSPC:
    case ENOMEM:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string DevicePath(int index) { return absl::StrCat("/dev/loop", index); }

absl::StatusOr<int> CreateFresh() {
  absl::StatusOr<UniqueFd> control = OpenControl();
  if (!control.ok()) return control.status();
  // linux/loop.h LOOP_CTL_ADD: a negative argument asks for any free index (loop_add(-1)).
  int index = ::ioctl(control->get(), LOOP_CTL_ADD, -1);
  if (index < 0) return ErrnoError("ioctl(LOOP_CTL_ADD)", kLoopControl, errno);
  return index;
}

absl::StatusOr<UniqueFd> Open(int index, int flags) {
  const std::string path = DevicePath(index);
  // devtmpfs creates the node before LOOP_CTL_ADD returns; without devtmpfs (udev alone) the
  // node appears shortly after, so give it a moment while sysfs says the device exists.
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (true) {
    UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC));
    if (fd.valid()) return fd;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == ENOENT && SysfsExists(index) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
      continue;
    }
    return ErrnoError("open", path, err);
  }
}

absl::StatusOr<bool> Bind(int device_fd, int index, int backing_fd, const BindOptions& options) {
  const std::string path = DevicePath(index);
  auto direct_io_on = [&]() -> bool {
    absl::StatusOr<loop_info64> info = GetInfo(device_fd, index);
    return info.ok() && (info->lo_flags & LO_FLAGS_DIRECT_IO) != 0;
  };

  // LOOP_CONFIGURE (linux/loop.h, since 5.8) sets backing file, offset, size limit and flags
  // in one step, so the device is never visible bound to the whole backing file.
  struct loop_config config;
  std::memset(&config, 0, sizeof(config));
  config.fd = static_cast<uint32_t>(backing_fd);
  config.info.lo_offset = options.offset_bytes;
  config.info.lo_sizelimit = options.size_limit_bytes;
  config.info.lo_flags = options.direct_io ? LO_FLAGS_DIRECT_IO : 0;
  int err = ENOTTY;
  if (options.use_loop_configure) {
    if (::ioctl(device_fd, LOOP_CONFIGURE, &config) == 0) return direct_io_on();
    err = errno;
  }
  if (err == EBUSY) return absl::AlreadyExistsError(absl::StrCat(path, " is already bound"));
  // EINVAL: an old kernel's answer to an unknown loop ioctl, or a kernel that refuses
  // LO_FLAGS_DIRECT_IO for a backing file without O_DIRECT support. Retry without it.
  if (options.use_loop_configure && options.direct_io && (err == EINVAL || err == ENOTTY)) {
    config.info.lo_flags = 0;
    if (::ioctl(device_fd, LOOP_CONFIGURE, &config) == 0) {
      (void)::ioctl(device_fd, LOOP_SET_DIRECT_IO, 1UL);  // best effort
      return direct_io_on();
    }
    err = errno;
    if (err == EBUSY) return absl::AlreadyExistsError(absl::StrCat(path, " is already bound"));
  }
  if (err != EINVAL && err != ENOTTY) return ErrnoError("ioctl(LOOP_CONFIGURE)", path, err);

  // Pre-5.8 kernels: bind, then narrow. Nobody else has this fresh device open meanwhile.
  if (::ioctl(device_fd, LOOP_SET_FD, backing_fd) != 0) {
    err = errno;
    if (err == EBUSY) return absl::AlreadyExistsError(absl::StrCat(path, " is already bound"));
    return ErrnoError("ioctl(LOOP_SET_FD)", path, err);
  }
  struct loop_info64 info;
  std::memset(&info, 0, sizeof(info));
  info.lo_offset = options.offset_bytes;
  info.lo_sizelimit = options.size_limit_bytes;
  if (::ioctl(device_fd, LOOP_SET_STATUS64, &info) != 0) {
    absl::Status failed = ErrnoError("ioctl(LOOP_SET_STATUS64)", path, errno);
    (void)::ioctl(device_fd, LOOP_CLR_FD, 0);
    return failed;
  }
  if (options.direct_io) (void)::ioctl(device_fd, LOOP_SET_DIRECT_IO, 1UL);  // best effort
  return direct_io_on();
}

absl::StatusOr<DeviceState> ReadState(int index) {
  DeviceState state;
  state.exists = SysfsExists(index);
  if (!state.exists) return state;
  const std::string dir = SysfsDir(index) + "/loop/";
  absl::StatusOr<std::string> backing = ReadAttribute(dir + "backing_file");
  if (!backing.ok()) {
    // The loop/ group is only present while bound; ENOENT means unbound (or just removed).
    if (absl::IsNotFound(backing.status())) {
      state.exists = SysfsExists(index);
      return state;
    }
    return backing.status();
  }
  absl::StatusOr<uint64_t> offset = ReadNumber(dir + "offset");
  absl::StatusOr<uint64_t> size_limit = ReadNumber(dir + "sizelimit");
  absl::StatusOr<uint64_t> direct_io = ReadNumber(dir + "dio");
  absl::StatusOr<uint64_t> autoclear = ReadNumber(dir + "autoclear");
  for (const absl::Status& status : {offset.status(), size_limit.status(), direct_io.status(),
                                     autoclear.status()}) {
    if (absl::IsNotFound(status)) {  // unbound between the reads
      state.exists = SysfsExists(index);
      return state;
    }
    if (!status.ok()) return status;
  }
  state.bound = true;
  state.backing_file = std::move(*backing);
  state.offset_bytes = *offset;
  state.size_limit_bytes = *size_limit;
  state.direct_io = *direct_io != 0;
  state.autoclear = *autoclear != 0;
  return state;
}

absl::StatusOr<Binding> GetBinding(int index) {
  struct stat st;
  const std::string dir = SysfsDir(index);
  const std::string group = dir + "/loop";
  if (::stat(group.c_str(), &st) == 0) return Binding::kBound;
  if (errno != ENOENT) return ErrnoError("stat", group, errno);
  if (::stat(dir.c_str(), &st) == 0) return Binding::kUnbound;
  if (errno != ENOENT) return ErrnoError("stat", dir, errno);
  return Binding::kGone;
}

absl::StatusOr<std::vector<int>> ListDevices() {
  struct CloseDir {
    void operator()(DIR* dir) const { ::closedir(dir); }
  };
  std::unique_ptr<DIR, CloseDir> dir(::opendir("/sys/block"));
  if (dir == nullptr) return ErrnoError("opendir", "/sys/block", errno);
  std::vector<int> indexes;
  while (struct dirent* entry = ::readdir(dir.get())) {
    absl::string_view name(entry->d_name);
    int index = 0;
    if (absl::ConsumePrefix(&name, "loop") && absl::SimpleAtoi(name, &index) && index >= 0) {
      indexes.push_back(index);
    }
  }
  std::sort(indexes.begin(), indexes.end());
  return indexes;
}

absl::StatusOr<dev_t> DeviceNumber(int index) {
  const std::string path = SysfsDir(index) + "/dev";
  absl::StatusOr<std::string> text = ReadAttribute(path);
  if (!text.ok()) return text.status();
  std::vector<absl::string_view> parts = absl::StrSplit(*text, ':');
  unsigned int major_number = 0, minor_number = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &major_number) ||
      !absl::SimpleAtoi(parts[1], &minor_number)) {
    return absl::InternalError(absl::StrCat(path, ": not major:minor: \"", *text, "\""));
  }
  return makedev(major_number, minor_number);
}

absl::StatusOr<loop_info64> GetInfo(int device_fd, int index) {
  struct loop_info64 info;
  std::memset(&info, 0, sizeof(info));
  if (::ioctl(device_fd, LOOP_GET_STATUS64, &info) != 0) {
    return ErrnoError("ioctl(LOOP_GET_STATUS64)", DevicePath(index), errno);
  }
  return info;
}

absl::Status Detach(int device_fd, int index) {
  if (::ioctl(device_fd, LOOP_CLR_FD, 0) == 0 || errno == ENXIO) return absl::OkStatus();
  return ErrnoError("ioctl(LOOP_CLR_FD)", DevicePath(index), errno);
}

absl::StatusOr<RemoveOutcome> RemoveIfUnused(int index, absl::Duration patience) {
  absl::StatusOr<UniqueFd> control = OpenControl();
  if (!control.ok()) return control.status();
  const absl::Time deadline = absl::Now() + patience;
  absl::Duration pause = absl::Milliseconds(1);
  while (true) {
    if (::ioctl(control->get(), LOOP_CTL_REMOVE, index) == 0) return RemoveOutcome::kRemoved;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == ENODEV) return RemoveOutcome::kAlreadyGone;
    if (err != EBUSY) {
      return ErrnoError("ioctl(LOOP_CTL_REMOVE)", DevicePath(index), err);
    }
    if (absl::Now() >= deadline) return RemoveOutcome::kBusy;
    absl::SleepFor(pause);
    pause = std::min(pause * 2, absl::Milliseconds(16));
  }
}

std::vector<absl::StatusOr<RemoveOutcome>> RemoveAllIfUnused(const std::vector<int>& indexes,
                                                             absl::Duration patience) {
  std::vector<absl::StatusOr<RemoveOutcome>> outcomes(
      indexes.size(), absl::InternalError("not attempted"));
  if (indexes.size() == 1) {
    outcomes[0] = RemoveIfUnused(indexes[0], patience);
    return outcomes;
  }
  // Bounded, so that a large batch does not start hundreds of threads.
  constexpr size_t kMaxThreads = 32;
  for (size_t begin = 0; begin < indexes.size(); begin += kMaxThreads) {
    const size_t end = std::min(indexes.size(), begin + kMaxThreads);
    std::vector<std::thread> threads;
    threads.reserve(end - begin);
    for (size_t i = begin; i < end; ++i) {
      threads.emplace_back([&, i] { outcomes[i] = RemoveIfUnused(indexes[i], patience); });
    }
    for (std::thread& thread : threads) thread.join();
  }
  return outcomes;
}

absl::StatusOr<RemoveOutcome> DetachAndRemove(int index, UniqueFd fd, absl::Duration patience) {
  if (!fd.valid()) {
    absl::StatusOr<UniqueFd> opened = Open(index, O_RDONLY);
    if (opened.ok()) {
      fd = std::move(*opened);
    } else if (!absl::IsNotFound(opened.status())) {
      return opened.status();
    }
  }
  if (fd.valid()) {
    if (absl::Status detached = Detach(fd.get(), index); !detached.ok()) return detached;
    fd.reset();  // our close may be the last one, which is when the detach really happens
  }
  return RemoveIfUnused(index, patience);
}

absl::StatusOr<uint64_t> SizeBytes(int fd, absl::string_view what) {
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return ErrnoError("ioctl(BLKGETSIZE64)", what, errno);
  return size;
}

absl::StatusOr<uint32_t> LogicalBlockSize(int fd, absl::string_view what) {
  int size = 0;
  if (::ioctl(fd, BLKSSZGET, &size) != 0) return ErrnoError("ioctl(BLKSSZGET)", what, errno);
  return static_cast<uint32_t>(size);
}

absl::Status ZeroRange(int fd, absl::string_view what, uint64_t offset, uint64_t length,
                       bool discard_zeroes) {
  uint64_t range[2] = {offset, length};
  bool zeroed = false;
  if (discard_zeroes && ::ioctl(fd, BLKDISCARD, range) == 0) zeroed = true;
  // linux/fs.h BLKZEROOUT: the kernel writes zeroes, offloaded (REQ_OP_WRITE_ZEROES) where the
  // device can, else by writing zero pages itself; the range is dropped from the page cache.
  if (!zeroed) {
    range[0] = offset;
    range[1] = length;
    if (::ioctl(fd, BLKZEROOUT, range) == 0) {
      zeroed = true;
    } else if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOTTY) {
      return ErrnoError("ioctl(BLKZEROOUT)", what, errno);
    }
  }
  if (!zeroed) {
    if (absl::Status written = WriteZeroes(fd, what, offset, length); !written.ok()) {
      return written;
    }
  }
  if (::fsync(fd) != 0) return ErrnoError("fsync", what, errno);
  return absl::OkStatus();
}

absl::Status ZeroFileRange(int fd, absl::string_view what, uint64_t offset, uint64_t length) {
  // fallocate(2): after PUNCH_HOLE "subsequent reads from this range will return zeros", and the
  // space is given back (which matters for a pool on tmpfs).
  const off_t off = static_cast<off_t>(offset), len = static_cast<off_t>(length);
  if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0 &&
      ::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len) != 0) {
    if (errno != EOPNOTSUPP) return ErrnoError("fallocate", what, errno);
    if (absl::Status written = WriteZeroes(fd, what, offset, length); !written.ok()) {
      return written;
    }
  }
  if (::fdatasync(fd) != 0) return ErrnoError("fdatasync", what, errno);
  return absl::OkStatus();
}

}  // namespace loopdev
}  // namespace vfbroker
