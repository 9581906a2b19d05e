// Sending and receiving file descriptors over a Unix socket (SCM_RIGHTS), one datagram at a time.
// Used on the session socket: the broker attaches a lease's descriptors to a SessionGrant.
// Thread-compatible: callers serialize sends (and receives) on one socket.
#ifndef VFBROKER_COMMON_FD_PASSING_H_
#define VFBROKER_COMMON_FD_PASSING_H_

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/unique_fd.h"

namespace vfbroker {

// Most descriptors one datagram carries (a VFIO grant needs three).
inline constexpr int kMaxFdsPerMessage = 8;
// Largest payload of one session datagram.
inline constexpr size_t kMaxSessionMessageBytes = 64 * 1024;

// Sends `payload` with `fds` attached as one datagram (MSG_NOSIGNAL: a vanished peer is an
// error, not a SIGPIPE).
absl::Status SendWithFds(int socket_fd, absl::string_view payload, absl::Span<const int> fds);

// Receives one datagram, waiting at most `timeout` (absl::InfiniteDuration() to block).
// Received descriptors are close-on-exec. A truncated payload or descriptor list is an error
// and any descriptors that did arrive are closed. UNAVAILABLE when the peer has closed.
absl::Status ReceiveWithFds(int socket_fd, absl::Duration timeout, std::string* payload,
                            std::vector<UniqueFd>* fds);

}  // namespace vfbroker

#endif  // VFBROKER_COMMON_FD_PASSING_H_
