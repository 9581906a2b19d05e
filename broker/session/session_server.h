// SessionServer: the broker's SOCK_SEQPACKET session socket.
//
// gRPC C++ cannot tell a service who its peer is, so identity lives here: on every connection
// the server asks the kernel for the peer's credentials (SO_PEERCRED, SO_PEERGROUPS, and the
// process's start time through a pidfd), opens a session in the core, and sends the tenant a
// SessionHello with the session's token. The socket then carries grants' descriptors to the
// tenant, and its closing (the tenant exited or was killed) ends the session and reclaims its
// leases at once.
//
// One thread runs an epoll loop over the listening socket and every session. Thread-safe.
#ifndef VFBROKER_BROKER_SESSION_SESSION_SERVER_H_
#define VFBROKER_BROKER_SESSION_SESSION_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "broker/core/broker_core.h"
#include "common/unique_fd.h"

namespace vfbroker {

class SessionServer {
 public:
  // Binds `path` (replacing a stale socket file) with permissions `mode`.
  static absl::StatusOr<std::unique_ptr<SessionServer>> Listen(const std::string& path,
                                                               uint32_t mode, BrokerCore* core);
  ~SessionServer();

  void Start();
  // Stops accepting and closes every session socket without reclaiming (the leases survive,
  // as they do a crash, and are re-adopted by the next broker).
  void Stop();

 private:
  class Connection;
  SessionServer(std::string path, UniqueFd listener, UniqueFd epoll, UniqueFd wake,
                BrokerCore* core);
  void Loop();
  void Accept();
  void Drop(int fd, bool reclaim);

  const std::string path_;
  UniqueFd listener_;
  UniqueFd epoll_;
  UniqueFd wake_;
  BrokerCore* const core_;
  std::thread thread_;
  // Only the loop thread touches this map.
  absl::flat_hash_map<int, std::shared_ptr<Connection>> connections_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_SESSION_SESSION_SERVER_H_
