// BrokerCore: the broker's domain logic: sessions, leases, grants, releases, reclaims, recovery.
//
// It knows nothing of gRPC or of sockets: the session server tells it who connected (as the
// kernel reported it) and hands it a SessionLink to send descriptors on; the gRPC service calls it
// with a session token and maps its absl::Status to the wire. Device work is the backends'.
//
// Life of a lease:
//   AllocateExtent  allocator reserves a range -> backend provisions devices -> journal "granted"
//                   (durable) -> descriptors sent on the session -> answer
//   Release / session end
//                   allocator: live -> ending -> journal "ended" (durable) -> answer; the reaper
//                   thread cuts the tenant off and scrubs (ExtentBackend::ScrubForReuse),
//                   retrying while a descriptor is still held open somewhere -> journal "freed"
//                   -> range free; then the remover thread removes the dead kernel objects
//                   (ExtentBackend::RemoveDevices, batched, off the reclaim path) -> journal
//                   "freed" a second time
//   broker restart  Recover(): leases whose owner process (pid + start time) is alive are kept
//                   and re-bound to that process's next session; all others are torn down;
//                   slices freed once but not twice get their dead objects removed
//
// Thread-safe. Device work and journal writes happen outside the core's lock.
#ifndef VFBROKER_BROKER_CORE_BROKER_CORE_H_
#define VFBROKER_BROKER_CORE_BROKER_CORE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "broker/allocator/allocator.h"
#include "broker/backends/extent_backend.h"
#include "broker/core/event_hub.h"
#include "broker/journal/journal.h"
#include "common/unique_fd.h"
#include "proto/vfbroker/v1/broker.pb.h"

namespace vfbroker {

// Who is on the other end of a session socket, as the kernel reported it.
struct PeerCredentials {
  Tenant tenant;
  pid_t pid = 0;
  uint64_t start_time = 0;  // see common/process_identity.h
};

// The broker's side of one session socket: where a grant's descriptors go.
class SessionLink {
 public:
  virtual ~SessionLink() = default;
  virtual absl::Status SendGrant(const v1::SessionGrant& grant, absl::Span<const int> fds) = 0;
};

struct CoreOptions {
  std::vector<uint32_t> operator_uids;  // besides root
  uint32_t max_sessions = 4096;
  uint32_t max_leases_per_session = 256;
};

class BrokerCore {
 public:
  BrokerCore(CoreOptions options, std::unique_ptr<Allocator> allocator,
             std::map<std::string, std::unique_ptr<ExtentBackend>> backends,
             std::unique_ptr<Journal> journal);
  ~BrokerCore();

  // Rebuilds state from the journal: keeps leases whose owner is alive, tears down the rest,
  // removes devices no record names, and compacts the journal. Call once, before Start().
  absl::Status Recover(const JournalReplay& replay);
  // Starts the reaper thread (teardowns, retries, orphan owners) and the remover thread (dead
  // devices). Stop() joins both; the remover first makes one last attempt at what it still has.
  void Start();
  void Stop();

  struct OpenedSession {
    std::string token;
    std::vector<std::string> readopted_lease_ids;
  };
  absl::StatusOr<OpenedSession> OpenSession(const PeerCredentials& peer,
                                            std::shared_ptr<SessionLink> link);
  // The session's socket closed: every lease it holds is reclaimed.
  void CloseSession(absl::string_view token);

  absl::StatusOr<v1::Lease> AllocateExtent(absl::string_view token,
                                           const v1::AllocateExtentRequest& request);
  // A NIC slice of an xdp_nic pool: slot -> validated MAC / VLAN / filters -> backend
  // (macvlan, steering, socket) -> journal -> [FD_ROLE_XSK, FD_ROLE_UMEM] -> answer.
  // Of a sriov_nic pool: slot (VF) -> MAC / VLAN / TX rate -> backend (FLR, PF-set VF config,
  // vfio-pci) -> journal -> [FD_ROLE_VFIO_CONTAINER, _GROUP, _DEVICE], Nic.pci_address -> answer.
  absl::StatusOr<v1::Lease> AllocateNic(absl::string_view token,
                                        const v1::AllocateNicRequest& request);
  // Live steering changes of the caller's NIC lease, durable before they are answered.
  absl::StatusOr<v1::FlowFilter> AddFlowFilter(absl::string_view token, absl::string_view lease_id,
                                               const v1::FlowFilter& filter);
  absl::Status RemoveFlowFilter(absl::string_view token, absl::string_view lease_id,
                                absl::string_view filter_id);
  absl::Status Release(absl::string_view token, absl::string_view lease_id);
  absl::StatusOr<std::vector<v1::Lease>> ListLeases(absl::string_view token);
  absl::StatusOr<std::vector<v1::Pool>> ListPools(absl::string_view token);
  absl::StatusOr<v1::GetStatsResponse> GetStats(absl::string_view token);
  absl::StatusOr<std::shared_ptr<EventSubscription>> Watch(absl::string_view token);

  // Counts a refused request (the service calls this for every error it returns).
  void CountDenied() { denied_total_.fetch_add(1, std::memory_order_relaxed); }

  // Waits until no slice is waiting for teardown and no dead device for removal, or `timeout`
  // passes; true if drained.
  bool WaitForIdleReaper(absl::Duration timeout);

 private:
  struct Session {
    std::string token;
    PeerCredentials peer;
    std::shared_ptr<SessionLink> link;
    absl::flat_hash_set<std::string> lease_ids;
  };
  struct Lease {
    v1::Lease info;
    journal::LeaseGranted granted;
    std::string session_token;  // empty while orphaned after a restart
  };
  struct PendingTeardown {
    std::string lease_id;
    std::string pool;
    journal::ExtentState state;
    v1::Lease info;
    bool reclaimed = false;
    absl::Time ended_at;
    absl::Time next_attempt;
    int attempts = 0;
  };
  // A slice that is free again but whose backend still has dead kernel objects to remove.
  struct PendingRemoval {
    std::string lease_id;
    std::string pool;
    journal::ExtentState state;
    absl::Time next_attempt;
    int attempts = 0;
  };
  struct OrphanOwner {
    pid_t pid;
    uint64_t start_time;
    UniqueFd pidfd;
  };

  bool IsOperator(uint32_t uid) const;
  // The common tail of a grant: journal (durable), lease table, descriptors, answer.
  absl::StatusOr<v1::Lease> CompleteGrant(absl::string_view token, const PeerCredentials& peer,
                                          const std::string& lease_id, const std::string& pool,
                                          ProvisionedExtent provisioned,
                                          absl::Time provision_start, absl::Time provisioned_at,
                                          const std::string& what);
  absl::StatusOr<v1::FlowFilter> ChangeFlowFilter(absl::string_view token,
                                                  absl::string_view lease_id,
                                                  const v1::FlowFilter* add,
                                                  absl::string_view remove_id);
  absl::StatusOr<Session*> FindSession(absl::string_view token)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The session's peer, if the session may take one more lease (max_leases_per_session).
  absl::StatusOr<PeerCredentials> PeerForNewLeaseLocked(absl::string_view token)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `lease_id` out of the lease table and its session and marks it ending in the
  // allocator; the caller passes the result to CommitEnded once it has dropped the lock.
  PendingTeardown TakeLeaseLocked(absl::string_view lease_id, bool reclaimed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Journals "ended" for each slice, announces it, then hands it to the reaper. No lock held.
  void CommitEnded(std::vector<PendingTeardown> ended);
  void ReaperLoop();
  void RunDueTeardowns();
  // Queues a slice's dead objects for the remover thread.
  void QueueRemoval(PendingRemoval removal);
  void RemoverLoop();
  // One RemoveDevices batch per pool; journals the second "freed" of each slice done, requeues
  // the rest with backoff (unless `final_pass`, when they are left to the next start).
  void RunRemovals(std::vector<PendingRemoval> due, bool final_pass);
  // Recover(): the slices `records` say were freed once but not twice, whose devices may remain.
  std::vector<PendingRemoval> DeadSlices(
      const std::vector<journal::Record>& records,
      const absl::flat_hash_map<std::string, JournaledLease>& journaled) const;
  void ReclaimOrphansOf(pid_t pid, uint64_t start_time);
  void WakeReaper();
  v1::Event MakeEvent(v1::Event::Kind kind, const v1::Lease& lease, std::string detail) const;

  const CoreOptions options_;
  const absl::Time started_at_ = absl::Now();
  std::unique_ptr<Journal> journal_;
  const std::map<std::string, std::unique_ptr<ExtentBackend>> backends_;
  EventHub events_;

  absl::Mutex filter_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // serializes flow filter changes
  mutable absl::Mutex mu_;
  std::unique_ptr<Allocator> allocator_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::deque<PendingTeardown> teardowns_ ABSL_GUARDED_BY(mu_);
  std::vector<OrphanOwner> orphan_owners_ ABSL_GUARDED_BY(mu_);
  int teardowns_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<PendingRemoval> removals_ ABSL_GUARDED_BY(mu_);
  int removals_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool remover_wakeup_ ABSL_GUARDED_BY(mu_) = false;
  bool remover_stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  double last_reclaim_ms_ ABSL_GUARDED_BY(mu_) = 0;
  double max_reclaim_ms_ ABSL_GUARDED_BY(mu_) = 0;

  std::atomic<uint64_t> grants_total_{0};
  std::atomic<uint64_t> releases_total_{0};
  std::atomic<uint64_t> reclaims_total_{0};
  std::atomic<uint64_t> scrubs_total_{0};
  std::atomic<uint64_t> denied_total_{0};

  UniqueFd wake_fd_;  // eventfd: new teardown work, new orphan, or stop
  std::thread reaper_;
  std::thread remover_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_CORE_BROKER_CORE_H_
