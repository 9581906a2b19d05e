// Host integration harness: the real vfbrokerd as a child process, and tenants as real processes
// under unprivileged uids, talking to it over its real sockets on real loop devices.
//
// Needs root (to start the broker and to drop tenants to other uids). Not thread-safe: one
// test thread drives it.
#ifndef VFBROKER_TESTS_INTEGRATION_HARNESS_H_
#define VFBROKER_TESTS_INTEGRATION_HARNESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/broker_client.h"

namespace vfbroker::testing {

inline constexpr uid_t kTenantA = 60001;
inline constexpr uid_t kTenantB = 60002;
inline constexpr uint64_t kMiB = 1 << 20;

// A path inside the test's runfiles (Bazel's TEST_SRCDIR).
std::string Runfile(const std::string& path);

// iproute2's ip with `args`; its exit status (output shown on failure). VFBROKER_TEST_IP names
// it where a shell would find another `ip` first (the tests/vm guest's busybox sh runs its own
// applet).
int RunIp(const std::string& args);

// For NIC tests, once per process before any thread: moves the process into a new network
// namespace (IPv6 off, lo up) with a veth pair: veth0 up without an address (the xdp_nic
// pool's interface) and its peer veth1 up with `peer_mac` and `peer_cidr`, TX checksum offload
// off on veth1 (its kernel UDP frames then carry full checksums, as a raw AF_XDP receiver
// needs).
absl::Status EnterVethNamespace(const std::string& peer_mac, const std::string& peer_cidr);

// A process of the tenant probe (tests/integration/tenant_probe.cc) running as `uid`.
class Tenant {
 public:
  static absl::StatusOr<std::unique_ptr<Tenant>> Start(const std::string& probe, uid_t uid,
                                                       const std::vector<std::string>& args);
  ~Tenant();

  pid_t pid() const { return pid_; }
  // Waits for a line of output starting with `prefix` and returns it.
  absl::StatusOr<std::string> WaitForLine(const std::string& prefix,
                                          absl::Duration timeout = absl::Seconds(30));
  // The latest `progress ops=N errors=E` line's numbers, reading what is available now.
  absl::StatusOr<std::pair<uint64_t, uint64_t>> LatestProgress(absl::Duration wait);
  // Writes one line (a command, for probes that read them) to the probe's stdin.
  absl::Status WriteLine(const std::string& line);
  // Closes the probe's stdin (its signal to finish), then collects its output and exit.
  void CloseStdin();
  // Reads everything until exit; returns key=value pairs (later keys win) and checks exit 0.
  absl::StatusOr<std::map<std::string, std::string>> Finish(
      absl::Duration timeout = absl::Seconds(60));
  void Kill();
  const std::string& output() const { return output_; }

 private:
  Tenant() = default;
  bool ReadSome(absl::Duration timeout);  // false on EOF

  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string output_;
  size_t consumed_ = 0;  // output_ up to here was returned by WaitForLine
  bool exited_ = false;
};

struct BrokerOptions {
  uint64_t scratch_bytes = 256 * kMiB;
  // If set, an xdp_nic pool "net" on this interface (for tenants A and B, 4 slots, a small
  // UMEM), and the NIC probe (tests/integration/nic_probe) beside the tenant probe. The broker
  // runs in the test process's network namespace.
  std::string nic_interface;
  // If set, the broker's $NOTIFY_SOCKET (as under systemd: tests playing systemd's part).
  std::string notify_socket;
};

// A descriptor handed to a restarted broker the way systemd passes its fd store: at fd 3..,
// with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (sd_listen_fds(3)).
struct ListenFd {
  std::string name;
  int fd = -1;  // the caller's; it stays open in the caller
};

// A temporary broker: its own socket and state directories, pool files on /dev/shm.
class BrokerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<BrokerProcess>> Start(BrokerOptions options = {});
  ~BrokerProcess();

  const std::string& socket_dir() const { return socket_dir_; }
  const std::string& probe() const { return probe_; }
  const std::string& scratch_path() const { return scratch_path_; }
  std::string log() const;

  absl::Status Kill();      // SIGKILL, reaped
  absl::Status Restart();   // start again on the same state
  // Start again, passing `fds` as systemd would (see ListenFd).
  absl::Status Restart(const std::vector<ListenFd>& fds);
  absl::Status Terminate();  // SIGTERM, reaped

  // A client running as this (root) test process: an operator, sees every lease.
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> Operator();
  // Waits until the broker holds no live lease and nothing is waiting to be scrubbed.
  absl::Status WaitForIdle(absl::Duration timeout = absl::Seconds(10));

  std::unique_ptr<Tenant> StartTenant(uid_t uid, const std::vector<std::string>& args);
  // A copy of the runfile `path` (an executable) that the tenants' uids can run.
  absl::StatusOr<std::string> TenantExecutable(const std::string& path);
  // The NIC probe (BrokerOptions::nic_interface), with the socket dir as its first argument.
  std::unique_ptr<Tenant> StartNicTenant(uid_t uid, const std::vector<std::string>& args);

 private:
  BrokerProcess() = default;
  absl::Status Launch(const std::vector<ListenFd>& fds = {});

  std::string dir_;
  std::string socket_dir_;
  std::string config_path_;
  std::string log_path_;
  std::string probe_;
  std::string nic_probe_;
  std::string scratch_path_;
  std::string restricted_path_;
  std::string notify_socket_;
  pid_t pid_ = -1;
};

}  // namespace vfbroker::testing

#endif  // VFBROKER_TESTS_INTEGRATION_HARNESS_H_
