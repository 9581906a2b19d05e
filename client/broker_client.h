// libvfclient: a tenant's connection to vfbrokerd.
//
//   vfclient::ConnectOptions options;  // socket_dir defaults to /run/vfbroker
//   absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
//       vfclient::BrokerClient::Connect(options);
//   absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> extent =
//       (*client)->AllocateExtent("scratch", 64 << 20);
//   // (*extent)->fd() is a block device covering exactly the extent, opened O_RDWR|O_DIRECT.
//   // Drive it with vfdrivers::block::IoUringQueue; the lease is released when it is destroyed.
//
// Connect() opens the session (the broker learns who we are from the kernel) and the gRPC
// channel; descriptors of grants arrive on the session socket and are matched to their lease.
// If the broker restarts, the client notices its session socket closed, opens a new session on
// the next call (the broker gives this process its leases back) and retries; leases and their
// descriptors stay valid throughout.
//
// Thread-safe: one BrokerClient may be shared by the threads of a process.
#ifndef VFBROKER_CLIENT_BROKER_CLIENT_H_
#define VFBROKER_CLIENT_BROKER_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfbroker/v1/broker.grpc.pb.h"

namespace vfclient {

using vfbroker::UniqueFd;
namespace v1 = vfbroker::v1;

struct ConnectOptions {
  std::string socket_dir = "/run/vfbroker";
  // Deadline of each call.
  absl::Duration call_timeout = absl::Seconds(10);
  // How long to keep reconnecting when the broker is gone (e.g. restarting) before giving up.
  absl::Duration reconnect_window = absl::Seconds(20);
};

class ExtentLease;

class BrokerClient : public std::enable_shared_from_this<BrokerClient> {
 public:
  static absl::StatusOr<std::shared_ptr<BrokerClient>> Connect(ConnectOptions options = {});
  ~BrokerClient();

  absl::StatusOr<std::unique_ptr<ExtentLease>> AllocateExtent(absl::string_view pool,
                                                              uint64_t size_bytes);
  // Releases by id (a lease object's Release() is the usual way).
  absl::Status Release(absl::string_view lease_id);
  absl::StatusOr<std::vector<v1::Pool>> ListPools();
  absl::StatusOr<std::vector<v1::Lease>> ListLeases();
  absl::StatusOr<v1::GetStatsResponse> GetStats();
  // Streams events to `on_event` until it returns false, the broker ends the stream, or
  // `duration` passes. `on_subscribed` (optional) runs once the stream is established.
  absl::Status WatchEvents(const std::function<bool(const v1::Event&)>& on_event,
                           absl::Duration duration = absl::InfiniteDuration(),
                           const std::function<void()>& on_subscribed = nullptr);

  // What the broker said when the current session opened (uid/pid as the kernel saw us).
  v1::SessionHello hello() const;
  // The gRPC stub and the current session token, for tools and tests that need raw calls.
  v1::Broker::Stub& stub() { return *stub_; }
  std::string session_token() const;

 private:
  friend class ExtentLease;
  explicit BrokerClient(ConnectOptions options);

  absl::Status OpenSession();
  bool SessionAlive() const;
  // Runs `call` with fresh metadata; if the broker went away, reopens the session and retries.
  absl::Status Invoke(const std::function<grpc::Status(grpc::ClientContext&)>& call);
  absl::StatusOr<std::vector<UniqueFd>> ReceiveGrant(const std::string& lease_id);
  void Forget(const std::string& lease_id);

  const ConnectOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Broker::Stub> stub_;

  mutable absl::Mutex session_mu_;
  UniqueFd session_ ABSL_GUARDED_BY(session_mu_);
  v1::SessionHello hello_ ABSL_GUARDED_BY(session_mu_);
  absl::flat_hash_set<std::string> my_leases_ ABSL_GUARDED_BY(session_mu_);

  absl::Mutex receive_mu_;  // one reader of the session socket at a time
  absl::flat_hash_map<std::string, std::vector<UniqueFd>> early_grants_
      ABSL_GUARDED_BY(receive_mu_);
};

// A disk extent granted to this process. Destroying it releases it (errors are logged).
// Thread-compatible.
class ExtentLease {
 public:
  ~ExtentLease();
  ExtentLease(const ExtentLease&) = delete;
  ExtentLease& operator=(const ExtentLease&) = delete;

  const std::string& id() const { return info_.id(); }
  // Block device covering exactly the extent, O_RDWR|O_DIRECT. Owned by the lease.
  int fd() const { return fd_.get(); }
  uint64_t size_bytes() const { return info_.extent().size_bytes(); }
  uint32_t logical_block_size() const { return info_.extent().logical_block_size(); }
  const v1::Lease& info() const { return info_; }

  // Closes the descriptor, then gives the extent back. Idempotent.
  absl::Status Release();

 private:
  friend class BrokerClient;
  ExtentLease(std::shared_ptr<BrokerClient> client, v1::Lease info, UniqueFd fd)
      : client_(std::move(client)), info_(std::move(info)), fd_(std::move(fd)) {}

  std::shared_ptr<BrokerClient> client_;
  v1::Lease info_;
  UniqueFd fd_;
  bool released_ = false;
};

}  // namespace vfclient

#endif  // VFBROKER_CLIENT_BROKER_CLIENT_H_
