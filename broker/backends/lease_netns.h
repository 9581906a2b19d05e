// Network namespaces for xdp_nic leases: one per lease, holding only the lease's macvlan (and
// the namespace's own loopback, left down). The broker creates the lease's AF_XDP socket from a
// thread inside the namespace, so the socket can only ever be bound to a device there
// (xdp_nic.h says why that matters).
//
// A namespace lives while something refers to it: a descriptor (the broker's, or the tenant's
// socket, whose namespace is fixed at creation) or a bind mount. The broker pins each lease's
// namespace with a bind mount (like `ip netns add`) so that a restarted broker can open it
// again; the pin is named by the lease's device under a directory per broker namespace.
//
// Thread-safe: every call works on its own descriptors. Create and RunIn switch the CALLING
// thread's network namespace (a per-thread property) and switch it back before they return
// (aborting if that fails): a short-lived thread per call did the same at ~1 ms per call under
// load (its exit), measured in run_nic_alloc_bench.sh.
#ifndef VFBROKER_BROKER_BACKENDS_LEASE_NETNS_H_
#define VFBROKER_BROKER_BACKENDS_LEASE_NETNS_H_

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace vfbroker::netns {

// Where xdp_nic pins lease namespaces unless $VFBROKER_NETNS_DIR says otherwise.
inline constexpr char kDefaultPinBase[] = "/run/vfbroker/netns";

// A new network namespace: only a loopback device, down. ~0.4 ms on a 6.18 host (the kernel
// initialises every per-namespace subsystem), which is why xdp_nic keeps a few ready.
absl::StatusOr<UniqueFd> Create();

// Runs `fn` in the namespace `netns_fd`: the calling thread enters it (setns), so that netlink
// and socket() calls in `fn` act there, and returns to its own namespace after `fn`.
absl::Status RunIn(int netns_fd, absl::FunctionRef<absl::Status()> fn);

// Where this process's pins live: `base`/<inode of the caller's own network namespace, hex>.
// Brokers in different network namespaces (tests) never see each other's pins.
absl::StatusOr<std::string> PinDirectory(const std::string& base);

// Bind-mounts the namespace on `path` (a new empty file; its directory is created).
absl::Status Pin(int netns_fd, const std::string& path);
// NOT_FOUND if nothing is pinned there.
absl::StatusOr<UniqueFd> OpenPinned(const std::string& path);
// Unmounts and removes the pin. OK if there was none.
absl::Status Unpin(const std::string& path);
// The names of the pins in `dir` (empty if it does not exist).
absl::StatusOr<std::vector<std::string>> ListPins(const std::string& dir);

// The namespace's identity (its nsfs inode), e.g. to tell two descriptors apart.
absl::StatusOr<uint64_t> Inode(int netns_fd);

}  // namespace vfbroker::netns

#endif  // VFBROKER_BROKER_BACKENDS_LEASE_NETNS_H_
