// Lease network namespaces kept in systemd's file descriptor store (sd_notify(3) FDSTORE=1),
// so that a broker restarted by systemd finds them again.
//
// Why: xdp_nic pins each lease's namespace with a bind mount (lease_netns.h), but under the
// shipped unit (deploy/systemd) the mount lives in the unit's private mount namespace, which
// dies with the broker: the pin is gone when the next broker starts. systemd keeps the
// descriptors a service stores across its automatic restarts and hands them to the next
// instance at fd 3.. (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID; sd_listen_fds(3)).
//
// The store talks to systemd only when $NOTIFY_SOCKET is set (the broker runs under systemd);
// otherwise every call does nothing and the pins are all there is. Each namespace is stored
// under FdName(<lease device>); names are unique per broker because device names are (the
// pool's prefix, then the slot).
//
// Thread-safe: the recovered descriptors are behind a mutex; every notification opens its own
// socket (libsystemd).
#ifndef VFBROKER_BROKER_BACKENDS_NETNS_FD_STORE_H_
#define VFBROKER_BROKER_BACKENDS_NETNS_FD_STORE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"

namespace vfbroker {

class NetnsFdStore {
 public:
  // Under systemd ($NOTIFY_SOCKET set): takes the descriptors systemd passed at start
  // (sd_listen_fds_with_names; the LISTEN_* variables are unset), keeps those that are network
  // namespaces named by FdName, and closes and removes from the store anything else. Logs how
  // many namespaces came back. Otherwise: a store that does nothing.
  static std::shared_ptr<NetnsFdStore> FromEnvironment();
  // A store that does nothing (tests, brokers outside systemd).
  static std::shared_ptr<NetnsFdStore> Disabled();

  NetnsFdStore(const NetnsFdStore&) = delete;
  NetnsFdStore& operator=(const NetnsFdStore&) = delete;

  bool enabled() const { return enabled_; }

  // "netns-<device>"; "" if that is no valid FDNAME (longer than 255 bytes, or a character
  // systemd refuses: control characters, non-ASCII, ':').
  static std::string FdName(const std::string& device);

  // Stores (a duplicate of) the lease's namespace descriptor in systemd's store. Failure is
  // logged (the lease still works; only a restart under systemd could not find it).
  void Keep(const std::string& device, int netns_fd);
  // Removes the lease's entry from systemd's store (FDSTOREREMOVE=1) and closes the copy that
  // came back at start, if any. Harmless if there is none.
  void Forget(const std::string& device);

  // A new descriptor of the namespace that came back from the store for `device` (NOT_FOUND:
  // none did).
  absl::StatusOr<UniqueFd> Recovered(const std::string& device) const;
  // The devices whose namespaces came back and are not forgotten yet.
  std::vector<std::string> RecoveredDevices() const;

 private:
  explicit NetnsFdStore(bool enabled) : enabled_(enabled) {}

  const bool enabled_;
  mutable absl::Mutex mu_;
  std::map<std::string, UniqueFd> recovered_ ABSL_GUARDED_BY(mu_);  // by device
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_NETNS_FD_STORE_H_
