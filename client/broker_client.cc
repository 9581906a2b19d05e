#include "client/broker_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/fd_passing.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/session_metadata.h"

namespace vfclient {
namespace {

using vfbroker::kAnsweredByBrokerKey;
using vfbroker::kSessionMetadataKey;

constexpr absl::Duration kHelloTimeout = absl::Seconds(5);
constexpr absl::Duration kGrantTimeout = absl::Seconds(10);
constexpr size_t kMaxEarlyGrants = 64;

absl::StatusOr<UniqueFd> ConnectSeqpacket(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    return absl::UnavailableError(
        absl::StrCat("cannot reach vfbrokerd at ", path, ": ", std::strerror(err)));
  }
  return fd;
}


int FindFd(const std::vector<LeaseFd>& fds, v1::FdRole role) {
  for (const LeaseFd& fd : fds) {
    if (fd.role == role) return fd.fd.get();
  }
  return -1;
}

// Moves the lease's three VFIO descriptors out; `other_kind` names what a lease without them is.
absl::StatusOr<VfioDescriptors> TakeVfio(std::vector<LeaseFd>& fds, const std::string& lease_id,
                                         absl::string_view other_kind) {
  VfioDescriptors out;
  int found = 0;
  for (LeaseFd& fd : fds) {
    if (!fd.fd) continue;
    if (fd.role == v1::FD_ROLE_VFIO_CONTAINER) out.container = std::move(fd.fd), ++found;
    if (fd.role == v1::FD_ROLE_VFIO_GROUP) out.group = std::move(fd.fd), ++found;
    if (fd.role == v1::FD_ROLE_VFIO_DEVICE) out.device = std::move(fd.fd), ++found;
  }
  if (found != 3) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease ", lease_id, ": no VFIO descriptors (", other_kind, ", or taken already)"));
  }
  return out;
}

}  // namespace

BrokerClient::BrokerClient(ConnectOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  channel_ = grpc::CreateCustomChannel(absl::StrCat("unix:", options_.socket_dir, "/grpc.sock"),
                                       grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Broker::NewStub(channel_);
}

BrokerClient::~BrokerClient() = default;

absl::StatusOr<std::shared_ptr<BrokerClient>> BrokerClient::Connect(ConnectOptions options) {
  std::shared_ptr<BrokerClient> client(new BrokerClient(std::move(options)));
  if (absl::Status opened = client->OpenSession(); !opened.ok()) return opened;
  return client;
}

absl::Status BrokerClient::OpenSession() {
  absl::StatusOr<UniqueFd> fd =
      ConnectSeqpacket(absl::StrCat(options_.socket_dir, "/session.sock"));
  if (!fd.ok()) return fd.status();
  std::string payload;
  std::vector<UniqueFd> unexpected_fds;
  if (absl::Status got = vfbroker::ReceiveWithFds(fd->get(), kHelloTimeout, &payload,
                                                  &unexpected_fds);
      !got.ok()) {
    return absl::UnavailableError(absl::StrCat("no session from vfbrokerd: ", got.message()));
  }
  v1::SessionHello hello;
  if (!hello.ParseFromString(payload)) {
    return absl::InternalError("vfbrokerd sent a malformed session hello");
  }
  if (!hello.error().empty() || hello.token().empty()) {
    return absl::UnavailableError(absl::StrCat("vfbrokerd refused the session: ", hello.error()));
  }
  std::vector<std::string> strays;
  {
    absl::MutexLock lock(&session_mu_);
    session_ = *std::move(fd);
    hello_ = hello;
    // A lease the broker kept for us that we never learned of (the broker died between
    // granting and answering) has no owner here: give it back.
    for (const std::string& id : hello.readopted_lease_ids()) {
      if (!my_leases_.contains(id)) strays.push_back(id);
    }
  }
  {
    absl::MutexLock lock(&receive_mu_);
    early_grants_.clear();
  }
  for (const std::string& id : strays) {
    grpc::ClientContext context;
    context.AddMetadata(kSessionMetadataKey, hello.token());
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
    v1::ReleaseRequest request;
    request.set_lease_id(id);
    v1::ReleaseResponse response;
    grpc::Status released = stub_->Release(&context, request, &response);
    spdlog::info("lease={}: re-adopted but unknown to this client; released: {}", id,
                 released.ok() ? "ok" : released.error_message());
  }
  return absl::OkStatus();
}

bool BrokerClient::SessionAlive() const {
  absl::MutexLock lock(&session_mu_);
  if (!session_) return false;
  pollfd pfd{session_.get(), POLLRDHUP, 0};
  if (::poll(&pfd, 1, 0) < 0) return false;
  return (pfd.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) == 0;
}

v1::SessionHello BrokerClient::hello() const {
  absl::MutexLock lock(&session_mu_);
  return hello_;
}

std::string BrokerClient::session_token() const {
  absl::MutexLock lock(&session_mu_);
  return hello_.token();
}

absl::Status BrokerClient::Invoke(
    const std::function<grpc::Status(grpc::ClientContext&)>& call) {
  const absl::Time give_up = absl::Now() + options_.reconnect_window;
  absl::Duration backoff = absl::Milliseconds(20);
  while (true) {
    absl::Status status = absl::OkStatus();
    if (!SessionAlive()) status = OpenSession();
    if (status.ok()) {
      grpc::ClientContext context;
      context.AddMetadata(kSessionMetadataKey, session_token());
      // Right after a broker restart the channel may still be backing off from the refused
      // connection; wait for it (within the deadline) instead of failing fast.
      context.set_wait_for_ready(true);
      context.set_deadline(absl::ToChronoTime(
          absl::Now() + std::min(options_.call_timeout,
                                 std::max(give_up - absl::Now(), absl::Milliseconds(100)))));
      grpc::Status result = call(context);
      if (result.ok()) return absl::OkStatus();
      status = vfbroker::FromGrpcStatus(result);
      // Retry only what the broker did not answer itself: a connection to a broker that died
      // (broken pipe, refused, timed out) or a session token a restarted broker does not know.
      const bool answered = context.GetServerTrailingMetadata().count(kAnsweredByBrokerKey) > 0;
      const bool broker_gone =
          (!answered && (result.error_code() == grpc::StatusCode::UNAVAILABLE ||
                         result.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) ||
          (result.error_code() == grpc::StatusCode::UNAUTHENTICATED && !SessionAlive());
      if (!broker_gone) return status;
    }
    if (absl::Now() + backoff > give_up) return status;
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(backoff));
    backoff = std::min(backoff * 2, absl::Milliseconds(500));
  }
}

absl::StatusOr<std::vector<LeaseFd>> BrokerClient::ReceiveGrant(const std::string& lease_id) {
  absl::MutexLock lock(&receive_mu_);
  if (auto early = early_grants_.find(lease_id); early != early_grants_.end()) {
    std::vector<LeaseFd> fds = std::move(early->second);
    early_grants_.erase(early);
    return fds;
  }
  int socket_fd;
  {
    absl::MutexLock session_lock(&session_mu_);
    socket_fd = session_.get();
  }
  const absl::Time deadline = absl::Now() + kGrantTimeout;
  while (true) {
    std::string payload;
    std::vector<UniqueFd> fds;
    absl::Status got = vfbroker::ReceiveWithFds(
        socket_fd, std::max(deadline - absl::Now(), absl::ZeroDuration()), &payload, &fds);
    if (!got.ok()) {
      return absl::UnavailableError(absl::StrCat("lease ", lease_id,
                                                 ": its descriptors did not arrive: ",
                                                 got.message()));
    }
    v1::SessionGrant grant;
    if (!grant.ParseFromString(payload)) continue;
    // Each descriptor with the role the broker named; one without a role stays unspecified
    // (and makes AllocateExtent refuse the grant).
    std::vector<LeaseFd> with_roles;
    for (size_t i = 0; i < fds.size(); ++i) {
      LeaseFd fd;
      if (i < static_cast<size_t>(grant.fd_roles_size())) {
        fd.role = grant.fd_roles(static_cast<int>(i));
      }
      fd.fd = std::move(fds[i]);
      with_roles.push_back(std::move(fd));
    }
    if (grant.lease_id() == lease_id) return with_roles;
    // A grant for a concurrent allocation on another thread: keep it for that thread.
    if (early_grants_.size() < kMaxEarlyGrants) {
      early_grants_[grant.lease_id()] = std::move(with_roles);
    }
  }
}

absl::StatusOr<std::unique_ptr<ExtentLease>> BrokerClient::AllocateExtent(
    absl::string_view pool, uint64_t size_bytes) {
  v1::AllocateExtentRequest request;
  request.set_pool(std::string(pool));
  request.set_size_bytes(size_bytes);
  v1::AllocateExtentResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->AllocateExtent(&context, request, &response);
  });
  if (!status.ok()) return status;
  const std::string lease_id = response.lease().id();
  absl::StatusOr<std::vector<LeaseFd>> fds = ReceiveGrant(lease_id);
  // A block extent comes as one block device; an NVMe VF as container, group and device.
  std::vector<v1::FdRole> want = {v1::FD_ROLE_BLOCK_DEVICE};
  if (!response.lease().extent().pci_address().empty()) {
    want = {v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP, v1::FD_ROLE_VFIO_DEVICE};
  }
  bool as_expected = fds.ok() && fds->size() == want.size();
  for (size_t i = 0; as_expected && i < want.size(); ++i) {
    as_expected = (*fds)[i].role == want[i] && (*fds)[i].fd.get() >= 0;
  }
  if (!as_expected) {
    if (fds.ok()) fds->clear();  // closed before the release, so the broker can scrub
    (void)Release(lease_id);
    if (!fds.ok()) return fds.status();
    return absl::InternalError(absl::StrCat("lease ", lease_id, ": expected ", want.size(),
                                            " descriptors with the roles of its kind, got ",
                                            fds->size()));
  }
  {
    absl::MutexLock lock(&session_mu_);
    my_leases_.insert(lease_id);
  }
  return std::unique_ptr<ExtentLease>(
      new ExtentLease(shared_from_this(), response.lease(), *std::move(fds)));
}

absl::StatusOr<std::vector<LeaseFd>> BrokerClient::ReceiveExpected(
    const std::string& lease_id, const std::vector<v1::FdRole>& want) {
  absl::StatusOr<std::vector<LeaseFd>> fds = ReceiveGrant(lease_id);
  bool as_expected = fds.ok() && fds->size() == want.size();
  for (size_t i = 0; as_expected && i < want.size(); ++i) {
    as_expected = (*fds)[i].role == want[i] && (*fds)[i].fd.get() >= 0;
  }
  if (!as_expected) {
    if (fds.ok()) fds->clear();  // closed before the release
    (void)Release(lease_id);
    if (!fds.ok()) return fds.status();
    return absl::InternalError(absl::StrCat("lease ", lease_id, ": expected ", want.size(),
                                            " descriptors with the roles of its kind, got ",
                                            fds->size()));
  }
  absl::MutexLock lock(&session_mu_);
  my_leases_.insert(lease_id);
  return fds;
}

absl::StatusOr<std::unique_ptr<NicLease>> BrokerClient::AllocateNic(
    const v1::AllocateNicRequest& request) {
  v1::AllocateNicResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->AllocateNic(&context, request, &response);
  });
  if (!status.ok()) return status;
  // An xdp_nic lease comes as socket + UMEM; a sriov_nic VF as container, group and device.
  std::vector<v1::FdRole> want = {v1::FD_ROLE_XSK, v1::FD_ROLE_UMEM};
  if (!response.lease().nic().pci_address().empty()) {
    want = {v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP, v1::FD_ROLE_VFIO_DEVICE};
  }
  absl::StatusOr<std::vector<LeaseFd>> fds = ReceiveExpected(response.lease().id(), want);
  if (!fds.ok()) return fds.status();
  return std::unique_ptr<NicLease>(
      new NicLease(shared_from_this(), response.lease(), *std::move(fds)));
}

absl::StatusOr<v1::FlowFilter> BrokerClient::AddFlowFilter(absl::string_view lease_id,
                                                           const v1::FlowFilter& filter) {
  v1::AddFlowFilterRequest request;
  request.set_lease_id(std::string(lease_id));
  *request.mutable_filter() = filter;
  v1::AddFlowFilterResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->AddFlowFilter(&context, request, &response);
  });
  if (!status.ok()) return status;
  return response.filter();
}

absl::Status BrokerClient::RemoveFlowFilter(absl::string_view lease_id,
                                            absl::string_view filter_id) {
  v1::RemoveFlowFilterRequest request;
  request.set_lease_id(std::string(lease_id));
  request.set_filter_id(std::string(filter_id));
  v1::RemoveFlowFilterResponse response;
  return Invoke([&](grpc::ClientContext& context) {
    return stub_->RemoveFlowFilter(&context, request, &response);
  });
}

void BrokerClient::Forget(const std::string& lease_id) {
  absl::MutexLock lock(&session_mu_);
  my_leases_.erase(lease_id);
}

absl::Status BrokerClient::Release(absl::string_view lease_id) {
  v1::ReleaseRequest request;
  request.set_lease_id(std::string(lease_id));
  v1::ReleaseResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->Release(&context, request, &response);
  });
  if (status.ok()) Forget(std::string(lease_id));
  return status;
}

absl::StatusOr<std::vector<v1::Pool>> BrokerClient::ListPools() {
  v1::ListPoolsResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->ListPools(&context, v1::ListPoolsRequest(), &response);
  });
  if (!status.ok()) return status;
  return std::vector<v1::Pool>(response.pools().begin(), response.pools().end());
}

absl::StatusOr<std::vector<v1::Lease>> BrokerClient::ListLeases() {
  v1::ListLeasesResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->ListLeases(&context, v1::ListLeasesRequest(), &response);
  });
  if (!status.ok()) return status;
  return std::vector<v1::Lease>(response.leases().begin(), response.leases().end());
}

absl::StatusOr<v1::GetStatsResponse> BrokerClient::GetStats() {
  v1::GetStatsResponse response;
  absl::Status status = Invoke([&](grpc::ClientContext& context) {
    return stub_->GetStats(&context, v1::GetStatsRequest(), &response);
  });
  if (!status.ok()) return status;
  return response;
}

absl::Status BrokerClient::WatchEvents(const std::function<bool(const v1::Event&)>& on_event,
                                       absl::Duration duration,
                                       const std::function<void()>& on_subscribed) {
  if (!SessionAlive()) {
    if (absl::Status opened = OpenSession(); !opened.ok()) return opened;
  }
  grpc::ClientContext context;
  context.AddMetadata(kSessionMetadataKey, session_token());
  context.set_wait_for_ready(true);
  if (duration != absl::InfiniteDuration()) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + duration));
  }
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader =
      stub_->WatchEvents(&context, v1::WatchEventsRequest());
  reader->WaitForInitialMetadata();
  if (on_subscribed) on_subscribed();
  v1::Event event;
  bool stopped_by_caller = false;
  while (reader->Read(&event)) {
    if (!on_event(event)) {
      stopped_by_caller = true;
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (stopped_by_caller || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::OkStatus();
  }
  return vfbroker::FromGrpcStatus(status);
}

// ---------------------------------------------------------------------------------------------

ExtentLease::~ExtentLease() {
  if (absl::Status released = Release(); !released.ok()) {
    spdlog::warn("lease={}: release on destruction failed: {}", id(), released);
  }
}

int ExtentLease::fd(v1::FdRole role) const { return FindFd(fds_, role); }

absl::StatusOr<VfioDescriptors> ExtentLease::TakeVfioDescriptors() {
  return TakeVfio(fds_, id(), "a block lease");
}

absl::Status ExtentLease::Release() {
  if (released_) return absl::OkStatus();
  // Close first: the broker scrubs the extent only once no descriptor reaches it.
  fds_.clear();
  absl::Status status = client_->Release(id());
  if (status.ok() || status.code() == absl::StatusCode::kNotFound) released_ = true;
  return status;
}

// ---------------------------------------------------------------------------------------------

NicLease::~NicLease() {
  if (absl::Status released = Release(); !released.ok()) {
    spdlog::warn("lease={}: release on destruction failed: {}", id(), released);
  }
}

int NicLease::fd(v1::FdRole role) const { return FindFd(fds_, role); }

absl::StatusOr<XdpDescriptors> NicLease::TakeXdpDescriptors() {
  XdpDescriptors out;
  for (LeaseFd& fd : fds_) {
    if (!fd.fd) continue;
    if (fd.role == v1::FD_ROLE_XSK) out.socket = std::move(fd.fd);
    if (fd.role == v1::FD_ROLE_UMEM) out.umem = std::move(fd.fd);
  }
  if (!out.socket || !out.umem) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease ", id(), ": its AF_XDP descriptors were taken already"));
  }
  return out;
}

absl::StatusOr<VfioDescriptors> NicLease::TakeVfioDescriptors() {
  return TakeVfio(fds_, id(), "an xdp_nic lease");
}

absl::StatusOr<v1::FlowFilter> NicLease::AddFlowFilter(const v1::FlowFilter& filter) {
  return client_->AddFlowFilter(id(), filter);
}

absl::Status NicLease::RemoveFlowFilter(absl::string_view filter_id) {
  return client_->RemoveFlowFilter(id(), filter_id);
}

absl::Status NicLease::Release() {
  if (released_) return absl::OkStatus();
  fds_.clear();
  absl::Status status = client_->Release(id());
  if (status.ok() || status.code() == absl::StatusCode::kNotFound) released_ = true;
  return status;
}

}  // namespace vfclient
