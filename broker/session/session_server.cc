#include "broker/session/session_server.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fd_passing.h"
#include "common/process_identity.h"
#include "common/logging.h"
#include "proto/vfbroker/v1/broker.pb.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // linux/socket.h, kernel 6.5+
#endif

namespace vfbroker {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Credentials of the process on the other end of `fd`, from the kernel only.
absl::StatusOr<PeerCredentials> ReadPeer(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Errno("getsockopt(SO_PEERCRED)");
  }
  PeerCredentials peer;
  peer.pid = cred.pid;
  peer.tenant.uid = cred.uid;
  peer.tenant.gid = cred.gid;
  std::vector<gid_t> groups(64);
  len = groups.size() * sizeof(gid_t);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
    if (errno != ERANGE) return Errno("getsockopt(SO_PEERGROUPS)");
    groups.resize(len / sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
      return Errno("getsockopt(SO_PEERGROUPS)");
    }
  }
  groups.resize(len / sizeof(gid_t));
  peer.tenant.groups.assign(groups.begin(), groups.end());

  absl::StatusOr<uint64_t> start_time = ProcessStartTime(cred.pid);
  if (!start_time.ok()) return start_time.status();
  peer.start_time = *start_time;
  // Pin the start time to the peer itself: a pidfd from SO_PEERPIDFD (6.5+) refers to the
  // connecting process even if its pid has been recycled since; confirm it is still alive so
  // the start time we read belongs to it. Older kernels: fall back to pidfd_open by pid.
  int raw_pidfd = -1;
  len = sizeof(raw_pidfd);
  UniqueFd pidfd;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &raw_pidfd, &len) == 0) pidfd.reset(raw_pidfd);
  if (pidfd) {
    if (::syscall(SYS_pidfd_send_signal, pidfd.get(), 0, nullptr, 0) != 0) {
      return absl::NotFoundError("the connecting process already exited");
    }
  } else if (!OpenPidfdIfSameProcess(cred.pid, *start_time).ok()) {
    return absl::NotFoundError("the connecting process already exited");
  }
  return peer;
}

}  // namespace

class SessionServer::Connection : public SessionLink {
 public:
  explicit Connection(UniqueFd fd) : fd_(std::move(fd)) {}

  absl::Status SendGrant(const v1::SessionGrant& grant, absl::Span<const int> fds) override {
    absl::MutexLock lock(&mu_);
    if (!fd_) return absl::UnavailableError("session closed");
    return SendWithFds(fd_.get(), grant.SerializeAsString(), fds);
  }
  absl::Status SendHello(const v1::SessionHello& hello) {
    absl::MutexLock lock(&mu_);
    return SendWithFds(fd_.get(), hello.SerializeAsString(), {});
  }
  int fd() const { return raw_fd_; }
  void Close() {
    absl::MutexLock lock(&mu_);
    fd_.reset();
  }

  std::string token;

 private:
  absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);
  const int raw_fd_ = fd_.get();
};

absl::StatusOr<std::unique_ptr<SessionServer>> SessionServer::Listen(const std::string& path,
                                                                     uint32_t mode,
                                                                     BrokerCore* core) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener) return Errno("socket");
  ::unlink(path.c_str());
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno(absl::StrCat("bind ", path));
  }
  if (::chmod(path.c_str(), mode) != 0) return Errno(absl::StrCat("chmod ", path));
  if (::listen(listener.get(), 512) != 0) return Errno("listen");
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return Errno("epoll_create1");
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Errno("eventfd");
  for (int fd : {listener.get(), wake.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &event) != 0) return Errno("epoll_ctl");
  }
  return std::unique_ptr<SessionServer>(new SessionServer(
      path, std::move(listener), std::move(epoll), std::move(wake), core));
}

SessionServer::SessionServer(std::string path, UniqueFd listener, UniqueFd epoll,
                             UniqueFd wake, BrokerCore* core)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)),
      core_(core) {}

SessionServer::~SessionServer() { Stop(); }

void SessionServer::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void SessionServer::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  thread_.join();
  for (auto& [fd, connection] : connections_) connection->Close();
  connections_.clear();
  ::unlink(path_.c_str());
}

void SessionServer::Loop() {
  epoll_event events[64];
  while (true) {
    int ready = ::epoll_wait(epoll_.get(), events, 64, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::critical("session server: epoll_wait: {}", std::strerror(errno));
      return;
    }
    for (int i = 0; i < ready; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_.get()) return;
      if (fd == listener_.get()) {
        Accept();
        continue;
      }
      if (events[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
        Drop(fd, /*reclaim=*/true);
        continue;
      }
      // Tenants have nothing to say on this socket; drain and ignore whatever they send.
      char discard[512];
      ssize_t got = ::recv(fd, discard, sizeof(discard), MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) Drop(fd, true);
    }
  }
}

void SessionServer::Accept() {
  while (true) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::error("session server: accept4: {}", std::strerror(errno));
      }
      return;
    }
    auto connection = std::make_shared<Connection>(std::move(fd));
    v1::SessionHello hello;
    hello.set_broker_version("vfbroker 0.1");
    absl::StatusOr<PeerCredentials> peer = ReadPeer(connection->fd());
    absl::StatusOr<BrokerCore::OpenedSession> opened =
        peer.ok() ? core_->OpenSession(*peer, connection)
                  : absl::StatusOr<BrokerCore::OpenedSession>(peer.status());
    if (!opened.ok()) {
      spdlog::warn("session refused: {}", opened.status().message());
      hello.set_error(std::string(opened.status().message()));
      (void)connection->SendHello(hello);
      continue;  // the connection closes as it goes out of scope
    }
    hello.set_token(opened->token);
    hello.set_uid(peer->tenant.uid);
    hello.set_gid(peer->tenant.gid);
    hello.set_pid(peer->pid);
    for (const std::string& id : opened->readopted_lease_ids) hello.add_readopted_lease_ids(id);
    connection->token = opened->token;
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.fd = connection->fd();
    if (!connection->SendHello(hello).ok() ||
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, connection->fd(), &event) != 0) {
      core_->CloseSession(opened->token);
      continue;
    }
    connections_[connection->fd()] = std::move(connection);
  }
}

void SessionServer::Drop(int fd, bool reclaim) {
  auto it = connections_.find(fd);
  if (it == connections_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  std::shared_ptr<Connection> connection = std::move(it->second);
  connections_.erase(it);
  if (reclaim) core_->CloseSession(connection->token);
  connection->Close();
}

}  // namespace vfbroker
