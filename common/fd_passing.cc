#include "common/fd_passing.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vfbroker {
namespace {

absl::Status ErrnoStatus(absl::string_view what, int err) {
  return absl::Status(err == EPIPE || err == ECONNRESET || err == ENOTCONN
                          ? absl::StatusCode::kUnavailable
                          : absl::StatusCode::kInternal,
                      absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

absl::Status SendWithFds(int socket_fd, absl::string_view payload, absl::Span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(absl::StrCat("too many descriptors: ", fds.size()));
  }
  if (payload.size() > kMaxSessionMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("message too large: ", payload.size()));
  }
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(socket_fd, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return ErrnoStatus("sendmsg", errno);
  if (static_cast<size_t>(sent) != payload.size()) {
    return absl::InternalError("sendmsg: short datagram");
  }
  return absl::OkStatus();
}

absl::Status ReceiveWithFds(int socket_fd, absl::Duration timeout, std::string* payload,
                            std::vector<UniqueFd>* fds) {
  fds->clear();
  if (timeout != absl::InfiniteDuration()) {
    pollfd pfd{socket_fd, POLLIN, 0};
    int ready;
    do {
      ready = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) return ErrnoStatus("poll", errno);
    if (ready == 0) return absl::DeadlineExceededError("no message from the peer in time");
  }
  payload->resize(kMaxSessionMessageBytes);
  iovec iov{payload->data(), payload->size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t got;
  do {
    got = ::recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC);
  } while (got < 0 && errno == EINTR);
  if (got < 0) return ErrnoStatus("recvmsg", errno);
  // Take ownership of every descriptor first, so that any error below closes them.
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds->emplace_back(fd);
    }
  }
  if (got == 0) {
    fds->clear();
    return absl::UnavailableError("the peer closed the session");
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    fds->clear();
    return absl::DataLossError("session message or its descriptors were truncated");
  }
  payload->resize(static_cast<size_t>(got));
  return absl::OkStatus();
}

}  // namespace vfbroker
