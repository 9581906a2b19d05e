#include "broker/backends/lease_netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vfbroker::netns {
namespace {

absl::Status Errno(const std::string& what, int err) {
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", strerror(err)));
}

absl::Status MakeDirectories(const std::string& path) {
  for (size_t at = 1; at <= path.size(); ++at) {
    if (at != path.size() && path[at] != '/') continue;
    const std::string prefix = path.substr(0, at);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return Errno(absl::StrCat("mkdir ", prefix), errno);
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// The calling thread's own namespace, to return to.
absl::StatusOr<UniqueFd> OwnNamespace() {
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open /proc/thread-self/ns/net", errno);
  return UniqueFd(fd);
}

// Back to `home`. A thread that cannot return would run the rest of the broker's work in a
// lease's namespace: nothing sensible is left to do.
void Return(int home) {
  if (setns(home, CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "lease_netns: cannot return to the broker's network namespace: %s\n",
                 strerror(errno));
    std::abort();
  }
}

}  // namespace

absl::StatusOr<UniqueFd> Create() {
  absl::StatusOr<UniqueFd> home = OwnNamespace();
  if (!home.ok()) return home.status();
  // unshare(CLONE_NEWNET) moves only the calling thread (network namespaces are per thread),
  // which then returns. A thread of its own for this cost ~1 ms per call under load (its exit).
  if (unshare(CLONE_NEWNET) != 0) return Errno("new network namespace", errno);
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  const int err = errno;
  Return(home->get());
  if (fd < 0) return Errno("open the new network namespace", err);
  return UniqueFd(fd);
}

absl::Status RunIn(int netns_fd, absl::FunctionRef<absl::Status()> fn) {
  absl::StatusOr<UniqueFd> home = OwnNamespace();
  if (!home.ok()) return home.status();
  if (setns(netns_fd, CLONE_NEWNET) != 0) {
    return Errno("entering a lease network namespace", errno);
  }
  absl::Status status = fn();
  Return(home->get());
  return status;
}

absl::StatusOr<std::string> PinDirectory(const std::string& base) {
  struct stat st {};
  if (stat("/proc/self/ns/net", &st) != 0) return Errno("stat /proc/self/ns/net", errno);
  return absl::StrFormat("%s/%x", base, static_cast<uint64_t>(st.st_ino));
}

absl::Status Pin(int netns_fd, const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status s = MakeDirectories(path.substr(0, slash)); !s.ok()) return s;
  }
  int file = open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (file < 0) return Errno(absl::StrCat("create ", path), errno);
  close(file);
  const std::string source = absl::StrCat("/proc/self/fd/", netns_fd);
  if (mount(source.c_str(), path.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return Errno(absl::StrCat("pin a lease network namespace on ", path), err);
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> OpenPinned(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no namespace pinned at ", path));
    return Errno(absl::StrCat("open ", path), errno);
  }
  UniqueFd out(fd);
  // An empty file (a pin whose mount is gone) is not a namespace: setns would fail later.
  if (absl::StatusOr<uint64_t> inode = Inode(fd); !inode.ok()) {
    return absl::NotFoundError(absl::StrCat(path, " is not a pinned network namespace"));
  }
  return out;
}

absl::Status Unpin(const std::string& path) {
  if (umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return Errno(absl::StrCat("unpin ", path), errno);
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Errno(absl::StrCat("remove ", path), errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ListPins(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return names;
    return Errno(absl::StrCat("list ", dir), errno);
  }
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    names.emplace_back(e->d_name);
  }
  closedir(d);
  return names;
}

absl::StatusOr<uint64_t> Inode(int netns_fd) {
  // NS_GET_NSTYPE (linux/nsfs.h, 4.11+) tells a network namespace from any other file, e.g. the
  // empty file left where a pin's mount is gone.
  if (ioctl(netns_fd, NS_GET_NSTYPE) != CLONE_NEWNET) {
    return absl::InvalidArgumentError("not a network namespace descriptor");
  }
  struct stat st {};
  if (fstat(netns_fd, &st) != 0) return Errno("fstat namespace", errno);
  return static_cast<uint64_t>(st.st_ino);
}

}  // namespace vfbroker::netns
