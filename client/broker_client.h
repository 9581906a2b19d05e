// libvfclient: a tenant's connection to vfbrokerd.
//
//   vfclient::ConnectOptions options;  // socket_dir defaults to /run/vfbroker
//   absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
//       vfclient::BrokerClient::Connect(options);
//   absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> extent =
//       (*client)->AllocateExtent("scratch", 64 << 20);
//   // (*extent)->fd() is a block device covering exactly the extent, opened O_RDWR|O_DIRECT.
//   // Drive it with vfdrivers::block::IoUringQueue; the lease is released when it is destroyed.
//   // From an nvme_sriov pool the lease carries VFIO descriptors instead (fd() is -1):
//   //   absl::StatusOr<vfclient::VfioDescriptors> vfio = (*extent)->TakeVfioDescriptors();
//   //   vfdrivers::vfio::VfioDevice::Adopt(std::move(vfio->container), std::move(vfio->group),
//   //                                      std::move(vfio->device));
//   // and drive the VF with vfdrivers/block/nvme on namespace info().extent().nvme_namespace_id().
//
// NICs (xdp_nic pools): an AF_XDP socket on a device of the lease's own and its UMEM memfd.
//   v1::AllocateNicRequest request;  // pool, optional mac / vlan / filters
//   absl::StatusOr<std::unique_ptr<vfclient::NicLease>> nic = (*client)->AllocateNic(request);
//   // client/nic_port.h: vfclient::AdoptNicPort(**nic) -> vfdrivers::net::AfXdpPort, or by hand:
//   //   vfclient::XdpDescriptors d = *(*nic)->TakeXdpDescriptors();
//   //   vfdrivers::net::AfXdpPort::Adopt(std::move(d.socket), std::move(d.umem), layout from
//   //                                    (*nic)->info().nic(): frame_size, ring sizes, ...)
//   (*client)->AddFlowFilter((*nic)->id(), filter);  // live steering changes
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
class NicLease;

// The descriptors of an xdp_nic lease, for vfdrivers::net::AfXdpPort::Adopt.
struct XdpDescriptors {
  UniqueFd socket;  // FD_ROLE_XSK: bound AF_XDP socket
  UniqueFd umem;    // FD_ROLE_UMEM: sealed memfd of its UMEM
};

// One descriptor of a grant and what it is.
struct LeaseFd {
  v1::FdRole role = v1::FD_ROLE_UNSPECIFIED;
  UniqueFd fd;
};

// The VFIO descriptors of an nvme_sriov or sriov_nic lease, for vfdrivers::vfio::VfioDevice::Adopt.
struct VfioDescriptors {
  UniqueFd container;
  UniqueFd group;
  UniqueFd device;
};

class BrokerClient : public std::enable_shared_from_this<BrokerClient> {
 public:
  static absl::StatusOr<std::shared_ptr<BrokerClient>> Connect(ConnectOptions options = {});
  ~BrokerClient();

  absl::StatusOr<std::unique_ptr<ExtentLease>> AllocateExtent(absl::string_view pool,
                                                              uint64_t size_bytes);
  // A NIC slice (xdp_nic: an AF_XDP socket + UMEM on a device of its own). The request's
  // fields are checked by the broker (bad MAC, VLAN 4095, overlapping filters: INVALID_ARGUMENT).
  absl::StatusOr<std::unique_ptr<NicLease>> AllocateNic(const v1::AllocateNicRequest& request);
  // Live changes to a NIC lease's receive steering. The answer carries the broker's filter id.
  absl::StatusOr<v1::FlowFilter> AddFlowFilter(absl::string_view lease_id,
                                               const v1::FlowFilter& filter);
  absl::Status RemoveFlowFilter(absl::string_view lease_id, absl::string_view filter_id);
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
  friend class NicLease;
  explicit BrokerClient(ConnectOptions options);
  // Receives a grant's descriptors and checks they have exactly the roles `want`; releases the
  // lease otherwise.
  absl::StatusOr<std::vector<LeaseFd>> ReceiveExpected(const std::string& lease_id,
                                                       const std::vector<v1::FdRole>& want);

  absl::Status OpenSession();
  bool SessionAlive() const;
  // Runs `call` with fresh metadata; if the broker went away, reopens the session and retries.
  absl::Status Invoke(const std::function<grpc::Status(grpc::ClientContext&)>& call);
  absl::StatusOr<std::vector<LeaseFd>> ReceiveGrant(const std::string& lease_id);
  void Forget(const std::string& lease_id);

  const ConnectOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Broker::Stub> stub_;

  mutable absl::Mutex session_mu_;
  UniqueFd session_ ABSL_GUARDED_BY(session_mu_);
  v1::SessionHello hello_ ABSL_GUARDED_BY(session_mu_);
  absl::flat_hash_set<std::string> my_leases_ ABSL_GUARDED_BY(session_mu_);

  absl::Mutex receive_mu_;  // one reader of the session socket at a time
  absl::flat_hash_map<std::string, std::vector<LeaseFd>> early_grants_
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
  // Block device covering exactly the extent, O_RDWR|O_DIRECT. Owned by the lease. -1 for a
  // lease that carries VFIO descriptors (nvme_sriov).
  int fd() const { return fd(v1::FD_ROLE_BLOCK_DEVICE); }
  // The lease's descriptor with `role`, or -1 (none, or taken).
  int fd(v1::FdRole role) const;
  bool is_vfio() const { return !info_.extent().pci_address().empty(); }
  uint64_t size_bytes() const { return info_.extent().size_bytes(); }
  uint32_t logical_block_size() const { return info_.extent().logical_block_size(); }
  const v1::Lease& info() const { return info_; }

  // Moves the container, group and device descriptors out of the lease (for
  // vfdrivers::vfio::VfioDevice::Adopt). FAILED_PRECONDITION if the lease has none (a block
  // lease) or they were taken already. The lease still releases the slice when destroyed, but
  // the broker scrubs it only once every descriptor is closed: close the adopted device first.
  absl::StatusOr<VfioDescriptors> TakeVfioDescriptors();

  // Closes the descriptors it still holds, then gives the extent back. Idempotent.
  absl::Status Release();

 private:
  friend class BrokerClient;
  ExtentLease(std::shared_ptr<BrokerClient> client, v1::Lease info, std::vector<LeaseFd> fds)
      : client_(std::move(client)), info_(std::move(info)), fds_(std::move(fds)) {}

  std::shared_ptr<BrokerClient> client_;
  v1::Lease info_;
  std::vector<LeaseFd> fds_;
  bool released_ = false;
};

// A NIC slice granted to this process: the AF_XDP socket and UMEM memfd, and info().nic()
// with the layout they were set up with. Destroying it releases it (errors are logged); the
// broker then deletes the lease's device, which revokes the socket even if a copy of the
// descriptor lives on. Thread-compatible.
class NicLease {
 public:
  ~NicLease();
  NicLease(const NicLease&) = delete;
  NicLease& operator=(const NicLease&) = delete;

  const std::string& id() const { return info_.id(); }
  const v1::Lease& info() const { return info_; }
  const v1::Nic& nic() const { return info_.nic(); }
  // The lease's descriptor with `role` (FD_ROLE_XSK, FD_ROLE_UMEM), or -1 (taken).
  int fd(v1::FdRole role) const;
  // Moves both descriptors out (for AfXdpPort::Adopt). FAILED_PRECONDITION if taken already.
  absl::StatusOr<XdpDescriptors> TakeXdpDescriptors();
  // A sriov_nic lease: moves its three VFIO descriptors out (for VfioDevice::Adopt; the VF is
  // nic().pci_address()). FAILED_PRECONDITION if it has none (an xdp_nic lease) or taken already.
  absl::StatusOr<VfioDescriptors> TakeVfioDescriptors();
  absl::StatusOr<v1::FlowFilter> AddFlowFilter(const v1::FlowFilter& filter);
  absl::Status RemoveFlowFilter(absl::string_view filter_id);
  // Closes the descriptors it still holds, then gives the NIC back. Idempotent.
  absl::Status Release();

 private:
  friend class BrokerClient;
  NicLease(std::shared_ptr<BrokerClient> client, v1::Lease info, std::vector<LeaseFd> fds)
      : client_(std::move(client)), info_(std::move(info)), fds_(std::move(fds)) {}

  std::shared_ptr<BrokerClient> client_;
  v1::Lease info_;
  std::vector<LeaseFd> fds_;
  bool released_ = false;
};

}  // namespace vfclient

#endif  // VFBROKER_CLIENT_BROKER_CLIENT_H_
