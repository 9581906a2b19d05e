#include "broker/backends/netns_fd_store.h"

#include <fcntl.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "broker/backends/lease_netns.h"
#include "common/logging.h"

namespace vfbroker {
namespace {

constexpr char kNamePrefix[] = "netns-";
// sd_pid_notify(3), FDNAME=: at most 255 characters, printable ASCII without ':' (systemd's
// fdname_is_valid).
constexpr size_t kMaxFdName = 255;

bool ValidFdName(const std::string& name) {
  if (name.empty() || name.size() > kMaxFdName) return false;
  for (unsigned char c : name) {
    if (c < ' ' || c > '~' || c == ':') return false;
  }
  return true;
}

void Notify(const std::string& message, const int* fds, unsigned n_fds) {
  const int sent = sd_pid_notify_with_fds(0, 0, message.c_str(), fds, n_fds);
  if (sent <= 0) {
    spdlog::warn("fd store: sd_notify \"{}\": {}", absl::StrReplaceAll(message, {{"\n", " "}}),
                 sent < 0 ? strerror(-sent) : "no NOTIFY_SOCKET");
  }
}

}  // namespace

std::shared_ptr<NetnsFdStore> NetnsFdStore::Disabled() {
  return std::shared_ptr<NetnsFdStore>(new NetnsFdStore(false));
}

std::shared_ptr<NetnsFdStore> NetnsFdStore::FromEnvironment() {
  const char* notify = std::getenv("NOTIFY_SOCKET");
  if (notify == nullptr || *notify == '\0') return Disabled();
  std::shared_ptr<NetnsFdStore> store(new NetnsFdStore(true));
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(/*unset_environment=*/1, &names);
  if (n < 0) {
    spdlog::warn("fd store: reading the descriptors systemd passed: {}", strerror(-n));
  }
  int foreign = 0;
  for (int i = 0; i < n; ++i) {
    UniqueFd fd(SD_LISTEN_FDS_START + i);  // sd_listen_fds set FD_CLOEXEC on it
    const std::string name = names != nullptr && names[i] != nullptr ? names[i] : "";
    const bool ours = absl::StartsWith(name, kNamePrefix) && name.size() > sizeof(kNamePrefix) - 1;
    if (!ours || !netns::Inode(fd.get()).ok()) {
      // Not a lease namespace of ours: nothing of the broker will ever use it.
      ++foreign;
      spdlog::warn("fd store: descriptor {} named \"{}\" is not a lease namespace; closed and "
                   "removed from the store", fd.get(), name);
      if (ValidFdName(name)) Notify(absl::StrCat("FDSTOREREMOVE=1\nFDNAME=", name), nullptr, 0);
      continue;
    }
    absl::MutexLock lock(&store->mu_);
    store->recovered_[name.substr(sizeof(kNamePrefix) - 1)] = std::move(fd);
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) std::free(names[i]);
    std::free(names);
  }
  absl::MutexLock lock(&store->mu_);
  spdlog::info("fd store: under systemd (NOTIFY_SOCKET); {} lease namespaces came back from "
               "systemd's file descriptor store ({} other descriptors dropped)",
               store->recovered_.size(), foreign);
  return store;
}

std::string NetnsFdStore::FdName(const std::string& device) {
  std::string name = absl::StrCat(kNamePrefix, device);
  return ValidFdName(name) ? name : "";
}

void NetnsFdStore::Keep(const std::string& device, int netns_fd) {
  if (!enabled_) return;
  const std::string name = FdName(device);
  if (name.empty()) {
    spdlog::warn("fd store: device {} gives no valid descriptor name; not stored", device);
    return;
  }
  Notify(absl::StrCat("FDSTORE=1\nFDNAME=", name), &netns_fd, 1);
}

void NetnsFdStore::Forget(const std::string& device) {
  if (!enabled_) return;
  {
    absl::MutexLock lock(&mu_);
    recovered_.erase(device);
  }
  const std::string name = FdName(device);
  if (!name.empty()) Notify(absl::StrCat("FDSTOREREMOVE=1\nFDNAME=", name), nullptr, 0);
}

absl::StatusOr<UniqueFd> NetnsFdStore::Recovered(const std::string& device) const {
  absl::MutexLock lock(&mu_);
  auto it = recovered_.find(device);
  if (it == recovered_.end()) {
    return absl::NotFoundError(absl::StrCat("no namespace for ", device, " in the fd store"));
  }
  int fd = fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("dup a stored namespace: ", strerror(errno)));
  }
  return UniqueFd(fd);
}

std::vector<std::string> NetnsFdStore::RecoveredDevices() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> devices;
  for (const auto& [device, fd] : recovered_) devices.push_back(device);
  return devices;
}

}  // namespace vfbroker
