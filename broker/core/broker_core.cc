#include "broker/core/broker_core.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "broker/allocator/nic_request.h"
#include "common/process_identity.h"
#include "common/random_id.h"
#include "common/logging.h"

namespace vfbroker {
namespace {

constexpr size_t kMaxNameBytes = 64;
constexpr size_t kMaxLeaseIdBytes = 64;
constexpr absl::Duration kFirstRetry = absl::Milliseconds(2);
constexpr absl::Duration kMaxRetry = absl::Seconds(1);
// With the backoff above, ~0.5 s after the slice ended: long past a dying tenant's last close.
constexpr int kQuarantineWarnAttempt = 8;
// Dead devices still held open (rare: see loop_extent.h on 6.1): no slice waits for them, and
// each attempt may wait out the backend's own patience, so retry less eagerly.
constexpr absl::Duration kFirstRemovalRetry = absl::Milliseconds(50);
constexpr absl::Duration kMaxRemovalRetry = absl::Seconds(10);

std::string TenantLabel(const PeerCredentials& peer) {
  return absl::StrFormat("uid:%d/pid:%d", peer.tenant.uid, peer.pid);
}

std::string OwnerLabel(const v1::Lease& lease) {
  return absl::StrFormat("uid:%d/pid:%d", lease.owner_uid(), lease.owner_pid());
}

// IFLA_VF_RATE carries Mbps in 32 bits; no NIC is near 1 Tb/s per VF.
constexpr uint64_t kMaxNicTxRateMbps = 1000000;

absl::Duration RetryDelay(int attempts, absl::Duration first = kFirstRetry,
                          absl::Duration max = kMaxRetry) {
  absl::Duration delay = first;
  for (int i = 1; i < attempts && delay < max; ++i) delay *= 2;
  return std::min(delay, max);
}

// What the tenant is told about an xdp_nic lease: enough to adopt its two descriptors.
void FillNicInfo(const journal::XdpNicState& state, v1::Nic* nic) {
  MacBytes mac{};
  if (state.mac().size() == mac.size()) std::copy(state.mac().begin(), state.mac().end(), mac.begin());
  nic->set_mac(FormatMac(mac));
  nic->set_vlan(state.vlan());
  nic->set_queues(1);
  nic->clear_filters();
  for (const journal::NicFilter& filter : state.filters()) *nic->add_filters() = ToApiFilter(filter);
  nic->set_interface(state.interface());
  nic->set_queue_id(0);
  nic->set_device(state.device());
  nic->set_ifindex(static_cast<uint32_t>(state.ifindex()));
  nic->set_frame_size(state.frame_size());
  nic->set_frame_count(state.frame_count());
  nic->set_frame_headroom(state.frame_headroom());
  nic->set_fill_ring_size(state.ring_size());
  nic->set_completion_ring_size(state.ring_size());
  nic->set_rx_ring_size(state.ring_size());
  nic->set_tx_ring_size(state.ring_size());
  nic->set_need_wakeup(state.need_wakeup());
  nic->set_zero_copy(state.zero_copy());
  nic->set_tenant_binds(state.tenant_binds());
  nic->set_bind_flags(state.bind_flags());
}

// What the tenant is told about a sriov_nic lease: the VF to adopt through its VFIO descriptors.
void FillSriovNicInfo(const journal::SriovNicState& state, v1::Nic* nic) {
  MacBytes mac{};
  if (state.mac().size() == mac.size()) std::copy(state.mac().begin(), state.mac().end(), mac.begin());
  nic->set_mac(FormatMac(mac));
  nic->set_vlan(state.vlan());
  nic->set_queues(1);
  nic->set_max_tx_rate_mbps(state.max_tx_rate_mbps());
  nic->set_interface(state.pf_interface());
  nic->set_pci_address(state.vf_pci_address());
  nic->clear_filters();
  for (const journal::NicFilter& filter : state.filters()) *nic->add_filters() = ToApiFilter(filter);
}

// What the tenant is told about a pci_nic lease: the whole function and its own MAC.
void FillPciNicInfo(const journal::PciNicState& state, v1::Nic* nic) {
  MacBytes mac{};
  if (state.mac().size() == mac.size()) {
    std::copy(state.mac().begin(), state.mac().end(), mac.begin());
  }
  nic->set_mac(FormatMac(mac));
  nic->set_queues(1);
  nic->set_pci_address(state.pci_address());
}

v1::Lease LeaseInfo(const journal::LeaseGranted& granted, uint32_t logical_block_size,
                    std::string device_path) {
  v1::Lease info;
  info.set_id(granted.lease_id());
  info.set_pool(granted.pool());
  info.set_owner_uid(granted.owner().uid());
  info.set_owner_pid(granted.owner().pid());
  info.set_granted_unix_ms(granted.granted_unix_ms());
  if (granted.has_xdp_nic()) {
    FillNicInfo(granted.xdp_nic(), info.mutable_nic());
    return info;
  }
  if (granted.has_sriov_nic()) {
    FillSriovNicInfo(granted.sriov_nic(), info.mutable_nic());
    return info;
  }
  if (granted.has_pci_nic()) {
    FillPciNicInfo(granted.pci_nic(), info.mutable_nic());
    return info;
  }
  v1::Extent* extent = info.mutable_extent();
  extent->set_size_bytes(ExtentSize(ExtentStateOf(granted)));
  extent->set_logical_block_size(logical_block_size);
  extent->set_device_path(std::move(device_path));
  if (granted.has_nvme_sriov()) {
    extent->set_pci_address(granted.nvme_sriov().vf_pci_address());
    extent->set_nvme_namespace_id(granted.nvme_sriov().namespace_id());
  }
  return info;
}

// For operators: the loop device the tenant holds (nvme_sriov extents have none).
std::string DevicePathOf(const journal::ExtentState& state) {
  if (!state.has_loop_extent()) return "";
  return absl::StrCat("/dev/loop", state.loop_extent().outer_loop_index());
}

// What a grant log line calls the slice.
std::string SliceLabel(const v1::Lease& lease) {
  if (lease.has_nic() && !lease.nic().pci_address().empty() && lease.nic().interface().empty()) {
    // pci_nic: a whole device, of no PF.
    return absl::StrCat("device ", lease.nic().pci_address(), " mac ", lease.nic().mac());
  }
  if (lease.has_nic() && !lease.nic().pci_address().empty()) {
    return absl::StrCat("VF ", lease.nic().pci_address(), " mac ", lease.nic().mac(),
                        lease.nic().vlan() != 0 ? absl::StrCat(" vlan ", lease.nic().vlan()) : "",
                        " of ", lease.nic().interface());
  }
  if (lease.has_nic()) {
    return absl::StrCat("device ", lease.nic().device(), " mac ", lease.nic().mac(),
                        lease.nic().vlan() != 0 ? absl::StrCat(" vlan ", lease.nic().vlan()) : "",
                        " on ", lease.nic().interface());
  }
  const v1::Extent& extent = lease.extent();
  if (!extent.pci_address().empty()) {
    return absl::StrCat("VF ", extent.pci_address(), " namespace ", extent.nvme_namespace_id());
  }
  return extent.device_path();
}

}  // namespace

BrokerCore::BrokerCore(CoreOptions options, std::unique_ptr<Allocator> allocator,
                       std::map<std::string, std::unique_ptr<ExtentBackend>> backends,
                       std::unique_ptr<Journal> journal)
    : options_(std::move(options)),
      journal_(std::move(journal)),
      backends_(std::move(backends)),
      allocator_(std::move(allocator)),
      wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

BrokerCore::~BrokerCore() { Stop(); }

bool BrokerCore::IsOperator(uint32_t uid) const {
  return uid == 0 || std::find(options_.operator_uids.begin(), options_.operator_uids.end(),
                               uid) != options_.operator_uids.end();
}

absl::StatusOr<PeerCredentials> BrokerCore::PeerForNewLeaseLocked(absl::string_view token) {
  absl::StatusOr<Session*> session = FindSession(token);
  if (!session.ok()) return session.status();
  if ((*session)->lease_ids.size() >= options_.max_leases_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat("this session already holds ",
                                                     (*session)->lease_ids.size(),
                                                     " leases (max_leases_per_session)"));
  }
  return (*session)->peer;
}

absl::StatusOr<BrokerCore::Session*> BrokerCore::FindSession(absl::string_view token) {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "no session: open one on the session socket and send its token as vfbroker-session");
  }
  auto it = sessions_.find(token);
  if (it == sessions_.end()) {
    return absl::UnauthenticatedError("unknown session token (the session ended or the broker "
                                      "restarted: open a new session)");
  }
  return &it->second;
}

v1::Event BrokerCore::MakeEvent(v1::Event::Kind kind, const v1::Lease& lease,
                                std::string detail) const {
  v1::Event event;
  event.set_kind(kind);
  event.set_unix_ms(absl::ToUnixMillis(absl::Now()));
  event.set_lease_id(lease.id());
  event.set_pool(lease.pool());
  event.set_owner_uid(lease.owner_uid());
  event.set_owner_pid(lease.owner_pid());
  event.set_detail(std::move(detail));
  return event;
}

void BrokerCore::WakeReaper() {
  uint64_t one = 1;
  (void)!::write(wake_fd_.get(), &one, sizeof(one));
}

// ---------------------------------------------------------------------------------------------
// Recovery

absl::Status BrokerCore::Recover(const JournalReplay& replay) {
  absl::flat_hash_map<std::string, JournaledLease> journaled = FoldJournal(replay.records);
  std::map<std::string, std::vector<journal::ExtentState>> known_by_pool;
  std::vector<PendingTeardown> to_end;  // live in the journal, but their owner is gone
  int kept = 0, queued = 0;

  absl::MutexLock lock(&mu_);
  for (auto& [lease_id, entry] : journaled) {
    const journal::LeaseGranted& granted = entry.granted;
    auto backend_it = backends_.find(granted.pool());
    const journal::ExtentState state = ExtentStateOf(granted);
    if (backend_it == backends_.end() || state.kind_case() == journal::ExtentState::KIND_NOT_SET) {
      spdlog::error("lease={} pool={}: the journal names a pool this configuration lacks; its "
                    "devices are left as they are", lease_id, granted.pool());
      continue;
    }
    ExtentBackend& backend = *backend_it->second;
    known_by_pool[granted.pool()].push_back(state);

    ExtentLeaseRecord record;
    record.lease_id = lease_id;
    record.pool = granted.pool();
    record.owner_uid = granted.owner().uid();
    record.offset = ExtentOffset(state);
    record.size = ExtentSize(state);

    v1::Lease info = LeaseInfo(granted, 512, DevicePathOf(state));
    bool keep = false;
    if (!entry.ended) {
      absl::StatusOr<UniqueFd> owner =
          OpenPidfdIfSameProcess(granted.owner().pid(), granted.owner().start_time_ticks());
      if (!owner.ok()) {
        spdlog::info("lease={} tenant={}: owner exited while the broker was down; reclaiming",
                     lease_id, OwnerLabel(info));
      } else if (absl::Status readopted = backend.Readopt(state); !readopted.ok()) {
        spdlog::error("lease={} tenant={}: cannot re-adopt its devices ({}); reclaiming",
                      lease_id, OwnerLabel(info), readopted.message());
      } else {
        keep = true;
        auto same_owner = [&](const OrphanOwner& o) {
          return o.pid == granted.owner().pid() &&
                 o.start_time == granted.owner().start_time_ticks();
        };
        if (std::none_of(orphan_owners_.begin(), orphan_owners_.end(), same_owner)) {
          orphan_owners_.push_back(OrphanOwner{granted.owner().pid(),
                                               granted.owner().start_time_ticks(),
                                               std::move(*owner)});
        }
      }
    }
    record.state = keep ? SliceState::kLive : SliceState::kEnding;
    if (absl::Status restored = allocator_->RestoreExtent(record); !restored.ok()) {
      spdlog::error("lease={}: journal conflicts with another lease ({}); skipped", lease_id,
                    restored.message());
      continue;
    }
    if (keep) {
      leases_.emplace(lease_id, Lease{info, granted, /*session_token=*/""});
      ++kept;
      continue;
    }
    PendingTeardown pending;
    pending.lease_id = lease_id;
    pending.pool = granted.pool();
    pending.state = state;
    pending.info = info;
    pending.reclaimed = entry.ended ? entry.reclaimed : true;
    pending.ended_at = absl::Now();
    pending.next_attempt = absl::Now();
    if (entry.ended) {
      teardowns_.push_back(std::move(pending));
    } else {
      to_end.push_back(std::move(pending));
    }
    ++queued;
  }
  for (auto& [pool, backend] : backends_) {
    if (absl::Status swept = backend->RemoveOrphans(known_by_pool[pool]); !swept.ok()) {
      spdlog::warn("pool={}: removing orphaned devices failed: {}", pool, swept.message());
    }
  }

  // Slices scrubbed and freed whose dead devices a crash kept from being removed: removed now,
  // before anything new is provisioned; what is still held open goes to the remover thread.
  std::vector<PendingRemoval> dead = DeadSlices(replay.records, journaled);
  std::map<std::string, std::vector<PendingRemoval>> dead_by_pool;
  for (PendingRemoval& removal : dead) dead_by_pool[removal.pool].push_back(std::move(removal));
  std::vector<PendingRemoval> still_dead;
  for (auto& [pool, slices] : dead_by_pool) {
    auto backend_it = backends_.find(pool);
    if (backend_it == backends_.end()) {
      spdlog::error("pool={}: the journal names {} freed slices with devices left in a pool this "
                    "configuration lacks; left as they are", pool, slices.size());
      for (PendingRemoval& removal : slices) still_dead.push_back(std::move(removal));
      continue;
    }
    std::vector<journal::ExtentState> states;
    for (const PendingRemoval& removal : slices) states.push_back(removal.state);
    std::vector<absl::StatusOr<RemovalResult>> results = backend_it->second->RemoveDevices(states);
    for (size_t i = 0; i < slices.size(); ++i) {
      if (i < results.size() && results[i].ok() && *results[i] == RemovalResult::kRemoved) {
        spdlog::info("lease={} pool={}: dead devices left by a crash after its scrub removed",
                     slices[i].lease_id, pool);
        continue;
      }
      spdlog::warn("lease={} pool={}: dead devices left by a crash after its scrub not removed "
                   "yet ({}); retrying", slices[i].lease_id, pool,
                   i < results.size() && !results[i].ok() ? results[i].status().message()
                                                          : "still held open");
      slices[i].attempts = 1;
      slices[i].next_attempt = absl::Now() + RetryDelay(1, kFirstRemovalRetry, kMaxRemovalRetry);
      removals_.push_back(slices[i]);
      still_dead.push_back(std::move(slices[i]));
    }
  }

  // Compact to what is known now: kept leases, plus ended ones still to be torn down.
  absl::flat_hash_map<std::string, JournaledLease> snapshot;
  for (const auto& [lease_id, lease] : leases_) snapshot[lease_id].granted = lease.granted;
  for (const PendingTeardown& pending : teardowns_) {
    JournaledLease& entry = snapshot[pending.lease_id];
    entry = journaled[pending.lease_id];
  }
  for (const PendingTeardown& pending : to_end) {
    JournaledLease& entry = snapshot[pending.lease_id];
    entry = journaled[pending.lease_id];
    entry.ended = true;
    entry.reclaimed = true;
  }
  for (PendingTeardown& pending : to_end) teardowns_.push_back(std::move(pending));
  // Freed slices with devices still to remove stay in the journal as a grant naming just those
  // devices, followed by one "freed": invisible to the fold, found again by DeadSlices.
  std::vector<journal::Record> records = SnapshotRecords(snapshot);
  for (const PendingRemoval& removal : still_dead) {
    journal::Record granted;
    granted.mutable_granted()->set_lease_id(removal.lease_id);
    granted.mutable_granted()->set_pool(removal.pool);
    SetExtentState(removal.state, granted.mutable_granted());
    records.push_back(std::move(granted));
    journal::Record freed;
    freed.mutable_freed()->set_lease_id(removal.lease_id);
    records.push_back(std::move(freed));
  }
  absl::Status compacted = journal_->Compact(std::move(records));
  spdlog::info("recovered from journal: {} records ({} torn bytes cut), {} leases kept for "
               "their owners, {} slices to reclaim, {} freed slices with devices left ({} "
               "still to remove)",
               replay.records.size(), replay.truncated_bytes, kept, queued, dead.size(),
               still_dead.size());
  return compacted;
}

std::vector<BrokerCore::PendingRemoval> BrokerCore::DeadSlices(
    const std::vector<journal::Record>& records,
    const absl::flat_hash_map<std::string, JournaledLease>& journaled) const {
  // The core journals "freed" once when a slice is scrubbed (ScrubForReuse said kScrubbed) and
  // once more when its dead devices are gone. Freed exactly once: devices may remain.
  struct Seen {
    journal::LeaseGranted granted;
    int freed = 0;
    size_t first_freed_at = 0;
  };
  absl::flat_hash_map<std::string, Seen> seen;
  absl::flat_hash_map<int, size_t> last_named_at;  // device index -> last grant naming it
  for (size_t n = 0; n < records.size(); ++n) {
    const journal::Record& record = records[n];
    if (record.has_granted()) {
      const journal::LeaseGranted& granted = record.granted();
      if (!granted.has_loop_extent()) continue;
      last_named_at[granted.loop_extent().inner_loop_index()] = n;
      last_named_at[granted.loop_extent().outer_loop_index()] = n;
      seen.try_emplace(granted.lease_id(), Seen{granted});
    } else if (record.has_freed()) {
      auto it = seen.find(record.freed().lease_id());
      if (it != seen.end() && it->second.freed++ == 0) it->second.first_freed_at = n;
    }
  }
  absl::flat_hash_set<int> in_use;  // named by a lease not yet freed: that lease's device
  for (const auto& [lease_id, lease] : journaled) {
    if (!lease.granted.has_loop_extent()) continue;
    in_use.insert(lease.granted.loop_extent().inner_loop_index());
    in_use.insert(lease.granted.loop_extent().outer_loop_index());
  }
  std::vector<PendingRemoval> dead;
  for (const auto& [lease_id, entry] : seen) {
    if (entry.freed != 1 || journaled.contains(lease_id)) continue;
    // Only loop_extent leaves dead devices behind (nvme_sriov frees whole: kFreed).
    journal::LoopExtentState state = entry.granted.loop_extent();
    // An index a later grant names was handed out fresh by LOOP_CTL_ADD after this slice was
    // freed, so this slice's device there had been removed already: not ours to touch.
    auto stale = [&](int index) {
      if (index < 0 || in_use.contains(index)) return true;
      auto named = last_named_at.find(index);
      return named != last_named_at.end() && named->second > entry.first_freed_at;
    };
    if (stale(state.inner_loop_index())) state.set_inner_loop_index(-1);
    if (stale(state.outer_loop_index())) state.set_outer_loop_index(-1);
    if (state.inner_loop_index() < 0 && state.outer_loop_index() < 0) continue;
    PendingRemoval removal;
    removal.lease_id = lease_id;
    removal.pool = entry.granted.pool();
    *removal.state.mutable_loop_extent() = std::move(state);
    removal.next_attempt = absl::Now();
    dead.push_back(std::move(removal));
  }
  std::sort(dead.begin(), dead.end(), [](const PendingRemoval& a, const PendingRemoval& b) {
    return a.lease_id < b.lease_id;
  });
  return dead;
}

// ---------------------------------------------------------------------------------------------
// Sessions

absl::StatusOr<BrokerCore::OpenedSession> BrokerCore::OpenSession(
    const PeerCredentials& peer, std::shared_ptr<SessionLink> link) {
  std::vector<v1::Event> readopted_events;
  OpenedSession opened;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the broker is shutting down");
    if (sessions_.size() >= options_.max_sessions) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the broker already has ", sessions_.size(), " sessions (max_sessions)"));
    }
    opened.token = RandomId("s-", 16);
    Session& session = sessions_[opened.token];
    session.token = opened.token;
    session.peer = peer;
    session.link = std::move(link);
    // A process whose leases survived a broker restart gets them back: identity is the
    // kernel's pid and start time, not anything the tenant says.
    for (auto& [lease_id, lease] : leases_) {
      if (!lease.session_token.empty()) continue;
      if (lease.granted.owner().pid() != peer.pid ||
          lease.granted.owner().start_time_ticks() != peer.start_time) {
        continue;
      }
      lease.session_token = opened.token;
      session.lease_ids.insert(lease_id);
      opened.readopted_lease_ids.push_back(lease_id);
      readopted_events.push_back(
          MakeEvent(v1::Event::KIND_READOPTED, lease.info, "owner reconnected after restart"));
    }
    std::sort(opened.readopted_lease_ids.begin(), opened.readopted_lease_ids.end());
  }
  spdlog::info("session opened tenant={} groups={} readopted={}", TenantLabel(peer),
               peer.tenant.groups.size(), opened.readopted_lease_ids.size());
  for (const v1::Event& event : readopted_events) {
    spdlog::info("lease={} tenant={} re-adopted by its owner", event.lease_id(),
                 TenantLabel(peer));
    events_.Publish(event);
  }
  return opened;
}

void BrokerCore::CloseSession(absl::string_view token) {
  std::vector<PendingTeardown> ended;
  PeerCredentials peer;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(token);
    if (it == sessions_.end()) return;
    peer = it->second.peer;
    std::vector<std::string> lease_ids(it->second.lease_ids.begin(), it->second.lease_ids.end());
    for (const std::string& lease_id : lease_ids) {
      ended.push_back(TakeLeaseLocked(lease_id, /*reclaimed=*/true));
    }
    sessions_.erase(it);
  }
  spdlog::info("session closed tenant={} reclaiming={}", TenantLabel(peer), ended.size());
  CommitEnded(std::move(ended));
}

// ---------------------------------------------------------------------------------------------
// Grants and releases

absl::StatusOr<v1::Lease> BrokerCore::AllocateExtent(absl::string_view token,
                                                     const v1::AllocateExtentRequest& request) {
  if (request.pool().empty() || request.pool().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool: must be a pool name of 1..", kMaxNameBytes, " bytes"));
  }
  const std::string lease_id = RandomId("lease-", 8);
  PeerCredentials peer;
  ExtentLeaseRecord record;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<PeerCredentials> admitted = PeerForNewLeaseLocked(token);
    if (!admitted.ok()) return admitted.status();
    peer = *std::move(admitted);
    absl::StatusOr<ExtentLeaseRecord> reserved =
        allocator_->AllocateExtent(peer.tenant, request.pool(), request.size_bytes(), lease_id);
    if (!reserved.ok()) {
      spdlog::info("lease=- tenant={} pool={} size={} refused: {}", TenantLabel(peer),
                   request.pool(), request.size_bytes(), reserved.status().message());
      return reserved.status();
    }
    record = *std::move(reserved);
  }
  auto release_reservation = [&] {
    absl::MutexLock lock(&mu_);
    (void)allocator_->FreeSlice(lease_id);
  };

  ExtentBackend& backend = *backends_.at(record.pool);
  const absl::Time provision_start = absl::Now();
  absl::StatusOr<ProvisionedExtent> provisioned = backend.Provision(record.offset, record.size);
  const absl::Time provisioned_at = absl::Now();
  if (!provisioned.ok()) {
    release_reservation();
    spdlog::error("lease={} tenant={} pool={}: provisioning failed: {}", lease_id,
                  TenantLabel(peer), record.pool, provisioned.status().message());
    // A pool whose device cannot be handed out safely (e.g. a VF sharing its IOMMU group) is a
    // state the operator must fix: FAILED_PRECONDITION; anything else may pass: UNAVAILABLE.
    std::string message = absl::StrCat("pool ", record.pool, ": could not provision the extent: ",
                                       provisioned.status().message());
    if (provisioned.status().code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(std::move(message));
    }
    return absl::UnavailableError(std::move(message));
  }

  return CompleteGrant(token, peer, lease_id, record.pool, *std::move(provisioned),
                       provision_start, provisioned_at,
                       absl::StrCat(record.size, " bytes at offset ", record.offset));
}

absl::StatusOr<v1::Lease> BrokerCore::CompleteGrant(absl::string_view token,
                                                    const PeerCredentials& peer,
                                                    const std::string& lease_id,
                                                    const std::string& pool,
                                                    ProvisionedExtent provisioned,
                                                    absl::Time provision_start,
                                                    absl::Time provisioned_at,
                                                    const std::string& what) {
  ExtentBackend& backend = *backends_.at(pool);
  auto release_reservation = [&] {
    absl::MutexLock lock(&mu_);
    (void)allocator_->FreeSlice(lease_id);
  };
  journal::Record journal_record;
  journal::LeaseGranted* granted = journal_record.mutable_granted();
  granted->set_lease_id(lease_id);
  granted->set_pool(pool);
  granted->mutable_owner()->set_pid(peer.pid);
  granted->mutable_owner()->set_start_time_ticks(peer.start_time);
  granted->mutable_owner()->set_uid(peer.tenant.uid);
  granted->mutable_owner()->set_gid(peer.tenant.gid);
  granted->set_granted_unix_ms(absl::ToUnixMillis(absl::Now()));
  SetExtentState(provisioned.state, granted);
  v1::Lease info = LeaseInfo(*granted, provisioned.logical_block_size, provisioned.device_path);

  absl::Status durable = journal_->Append(journal_record);
  const absl::Time journaled_at = absl::Now();
  if (!durable.ok()) {
    // Nobody has the descriptor yet, so the slice can be taken apart at once.
    provisioned.fds.clear();
    absl::StatusOr<TeardownResult> undone = backend.Teardown(provisioned.state);
    if (undone.ok() && *undone == TeardownResult::kFreed) release_reservation();
    spdlog::error("lease={} tenant={}: journal write failed: {}", lease_id, TenantLabel(peer),
                  durable.message());
    return absl::UnavailableError(
        absl::StrCat("the broker could not record the grant: ", durable.message()));
  }

  std::shared_ptr<SessionLink> link;
  {
    absl::MutexLock lock(&mu_);
    leases_.emplace(lease_id, Lease{info, *granted, std::string(token)});
    auto session = sessions_.find(token);
    if (session != sessions_.end()) {
      session->second.lease_ids.insert(lease_id);
      link = session->second.link;
    }
  }
  absl::Status sent = absl::UnavailableError("the session closed during the allocation");
  if (link != nullptr) {
    v1::SessionGrant grant;
    grant.set_lease_id(lease_id);
    std::vector<int> fds;
    for (const TenantFd& fd : provisioned.fds) {
      grant.add_fd_roles(fd.role);
      fds.push_back(fd.fd.get());
    }
    sent = link->SendGrant(grant, fds);
  }
  // The broker's copies: the tenant has its own now (or none, if the handoff failed).
  provisioned.fds.clear();
  if (!sent.ok()) {
    std::vector<PendingTeardown> ended;
    {
      absl::MutexLock lock(&mu_);
      if (leases_.contains(lease_id)) ended.push_back(TakeLeaseLocked(lease_id, true));
    }
    CommitEnded(std::move(ended));
    spdlog::warn("lease={} tenant={}: descriptors not delivered ({}); reclaimed", lease_id,
                 TenantLabel(peer), sent.message());
    return absl::UnavailableError(
        absl::StrCat("could not deliver the lease's descriptors: ", sent.message()));
  }
  grants_total_.fetch_add(1, std::memory_order_relaxed);
  const absl::Time handed_off_at = absl::Now();
  spdlog::info("lease={} tenant={} pool={} granted {} as {} (provision {} us, journal {} us, "
               "handoff {} us)",
               lease_id, TenantLabel(peer), pool, what, SliceLabel(info),
               absl::ToInt64Microseconds(provisioned_at - provision_start),
               absl::ToInt64Microseconds(journaled_at - provisioned_at),
               absl::ToInt64Microseconds(handed_off_at - journaled_at));
  events_.Publish(MakeEvent(v1::Event::KIND_GRANTED, info, what));
  return info;
}

absl::StatusOr<v1::Lease> BrokerCore::AllocateNic(absl::string_view token,
                                                  const v1::AllocateNicRequest& request) {
  if (request.pool().empty() || request.pool().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool: must be a pool name of 1..", kMaxNameBytes, " bytes"));
  }
  // Hostile input first: nothing is reserved for a malformed request.
  // A sriov_nic VF's TX rate is set on the PF (IFLA_VF_RATE); only xdp_nic refuses a rate.
  auto target = backends_.find(request.pool());
  const bool polices_rate =
      target != backends_.end() && target->second->backend_name() == "sriov_nic";
  // A pci_nic lease is a whole device: its MAC is the device's own, and nothing between it and
  // the wire could enforce a VLAN, a rate or a flow filter.
  if (target != backends_.end() && target->second->backend_name() == "pci_nic") {
    if (!request.mac().empty() || request.vlan() != 0 || request.max_tx_rate_mbps() != 0) {
      return absl::InvalidArgumentError(
          "pool is pci_nic: a whole-device lease carries the device's own MAC and no VLAN or "
          "rate; leave mac, vlan and max_tx_rate_mbps unset");
    }
    if (request.filters_size() != 0) {
      return absl::UnimplementedError(
          "pool is pci_nic: a whole-device lease receives what its wire delivers to it and "
          "takes no flow filters");
    }
  }
  v1::AllocateNicRequest shape_request;
  const v1::AllocateNicRequest* shaped = &request;
  if (polices_rate && request.max_tx_rate_mbps() != 0) {
    if (request.max_tx_rate_mbps() > kMaxNicTxRateMbps) {
      return absl::InvalidArgumentError(absl::StrCat(
          "max_tx_rate_mbps: at most ", kMaxNicTxRateMbps, ", got ", request.max_tx_rate_mbps()));
    }
    shape_request = request;
    shape_request.set_max_tx_rate_mbps(0);
    shaped = &shape_request;
  }
  if (absl::Status shape = ValidateNicShape(*shaped); !shape.ok()) return shape;
  absl::StatusOr<std::vector<journal::NicFilter>> filters = NormalizeFilters(request.filters());
  if (!filters.ok()) return filters.status();
  NicRequest nic;
  nic.vlan = request.vlan();
  nic.max_tx_rate_mbps = request.max_tx_rate_mbps();
  for (journal::NicFilter& filter : *filters) {
    filter.set_id(absl::StrCat("f", ++nic.next_filter_id));
    nic.filters.push_back(std::move(filter));
  }
  const bool pick_mac = request.mac().empty();
  if (!pick_mac) nic.mac = *ParseUnicastMac(request.mac());  // checked by ValidateNicShape
  nic.mac_requested = !pick_mac;

  const std::string lease_id = RandomId("lease-", 8);
  PeerCredentials peer;
  ExtentLeaseRecord record;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<PeerCredentials> admitted = PeerForNewLeaseLocked(token);
    if (!admitted.ok()) return admitted.status();
    peer = *std::move(admitted);
    absl::StatusOr<ExtentLeaseRecord> reserved =
        allocator_->AllocateSlot(peer.tenant, request.pool(), lease_id);
    if (!reserved.ok()) {
      spdlog::info("lease=- tenant={} pool={} NIC refused: {}", TenantLabel(peer), request.pool(),
                   reserved.status().message());
      return reserved.status();
    }
    record = *std::move(reserved);
  }
  ExtentBackend& backend = *backends_.at(record.pool);
  const absl::Time provision_start = absl::Now();
  absl::StatusOr<ProvisionedExtent> provisioned =
      absl::FailedPreconditionError("pool's backend does not hand out NICs");
  if (backend.is_nic()) {
    // A picked MAC that happens to be in use is picked again; a requested one is refused.
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (pick_mac) {
        uint64_t bits = 0;
        const std::string random = RandomId("", 8);  // 16 hex digits from getrandom
        for (char c : random) bits = bits << 4 | static_cast<uint64_t>(c <= '9' ? c - '0' : c - 'a' + 10);
        nic.mac = LocalUnicastMac(bits);
      }
      provisioned = backend.ProvisionNic(record.offset, nic);
      if (!pick_mac || !absl::IsAlreadyExists(provisioned.status())) break;
    }
  }
  const absl::Time provisioned_at = absl::Now();
  if (!provisioned.ok()) {
    {
      absl::MutexLock lock(&mu_);
      (void)allocator_->FreeSlice(lease_id);
    }
    const absl::StatusCode code = provisioned.status().code();
    spdlog::info("lease={} tenant={} pool={}: NIC not provisioned: {}", lease_id,
                 TenantLabel(peer), record.pool, provisioned.status().message());
    std::string message = absl::StrCat("pool ", record.pool, ": ", provisioned.status().message());
    // The tenant's own doing (a MAC in use) or the operator's (a missing interface) keep their
    // codes; anything else may pass.
    if (code == absl::StatusCode::kAlreadyExists || code == absl::StatusCode::kFailedPrecondition ||
        code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented) {
      return absl::Status(code, message);
    }
    return absl::UnavailableError(std::move(message));
  }
  return CompleteGrant(token, peer, lease_id, record.pool, *std::move(provisioned),
                       provision_start, provisioned_at, absl::StrCat("NIC slot ", record.offset));
}

absl::StatusOr<v1::FlowFilter> BrokerCore::ChangeFlowFilter(absl::string_view token,
                                                           absl::string_view lease_id,
                                                           const v1::FlowFilter* add,
                                                           absl::string_view remove_id) {
  if (lease_id.empty() || lease_id.size() > kMaxLeaseIdBytes) {
    return absl::InvalidArgumentError("lease_id: must be a lease id as returned by a grant");
  }
  std::optional<journal::NicFilter> added;
  if (add != nullptr) {
    absl::StatusOr<journal::NicFilter> normalized = NormalizeFilter(*add);
    if (!normalized.ok()) return normalized.status();
    added = *std::move(normalized);
  } else if (remove_id.empty() || remove_id.size() > kMaxLeaseIdBytes) {
    return absl::InvalidArgumentError("filter_id: must be a filter id as returned by the broker");
  }
  // One filter change at a time: the steering maps, the journal and the lease table move
  // together.
  absl::MutexLock change_lock(&filter_mu_);
  journal::ExtentState before, after;
  std::string pool;
  v1::FlowFilter answer;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<Session*> session = FindSession(token);
    if (!session.ok()) return session.status();
    auto it = leases_.find(lease_id);
    // A lease of another tenant is reported exactly like a missing one.
    if (it == leases_.end() || (it->second.info.owner_uid() != (*session)->peer.tenant.uid &&
                                !IsOperator((*session)->peer.tenant.uid))) {
      return absl::NotFoundError(absl::StrCat("no lease ", lease_id));
    }
    if (it->second.granted.has_sriov_nic()) {
      return absl::UnimplementedError(absl::StrCat(
          "lease ", lease_id, " is a sriov_nic VF: its flow filters are ntuple rules on the PF, "
          "fixed when the VF is granted (ask for them in AllocateNic)"));
    }
    if (it->second.granted.has_pci_nic()) {
      return absl::UnimplementedError(absl::StrCat(
          "lease ", lease_id, " is a whole device (pci_nic): it takes no flow filters"));
    }
    if (!it->second.granted.has_xdp_nic()) {
      return absl::FailedPreconditionError(
          absl::StrCat("lease ", lease_id, " is not a NIC lease; it has no flow filters"));
    }
    pool = it->second.granted.pool();
    *before.mutable_xdp_nic() = it->second.granted.xdp_nic();
    after = before;
    journal::XdpNicState* state = after.mutable_xdp_nic();
    if (added.has_value()) {
      std::vector<journal::NicFilter> existing(state->filters().begin(), state->filters().end());
      if (absl::Status fits = CheckFilterFits(existing, *added); !fits.ok()) return fits;
      state->set_next_filter_id(state->next_filter_id() + 1);
      added->set_id(absl::StrCat("f", state->next_filter_id()));
      *state->add_filters() = *added;
      answer = ToApiFilter(*added);
    } else {
      auto* filters = state->mutable_filters();
      auto found = std::find_if(filters->begin(), filters->end(),
                                [&](const journal::NicFilter& f) { return f.id() == remove_id; });
      if (found == filters->end()) {
        return absl::NotFoundError(
            absl::StrCat("lease ", lease_id, " has no filter ", remove_id));
      }
      filters->erase(found);
    }
  }
  ExtentBackend& backend = *backends_.at(pool);
  if (absl::Status changed = backend.ChangeFilters(before, after); !changed.ok()) {
    if (changed.code() == absl::StatusCode::kFailedPrecondition) return changed;
    return absl::UnavailableError(absl::StrCat("could not change the steering: ", changed.message()));
  }
  journal::Record record;
  record.mutable_updated()->set_lease_id(std::string(lease_id));
  *record.mutable_updated()->mutable_xdp_nic() = after.xdp_nic();
  if (absl::Status durable = journal_->Append(record); !durable.ok()) {
    (void)backend.ChangeFilters(after, before);
    return absl::UnavailableError(
        absl::StrCat("the broker could not record the change: ", durable.message()));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(lease_id);
    if (it != leases_.end()) {
      *it->second.granted.mutable_xdp_nic() = after.xdp_nic();
      FillNicInfo(after.xdp_nic(), it->second.info.mutable_nic());
    }
  }
  spdlog::info("lease={} pool={}: flow filter {} {} ({} filters now)", lease_id, pool,
               added.has_value() ? added->id() : std::string(remove_id),
               added.has_value() ? "added" : "removed", after.xdp_nic().filters_size());
  return answer;
}

absl::StatusOr<v1::FlowFilter> BrokerCore::AddFlowFilter(absl::string_view token,
                                                        absl::string_view lease_id,
                                                        const v1::FlowFilter& filter) {
  return ChangeFlowFilter(token, lease_id, &filter, "");
}

absl::Status BrokerCore::RemoveFlowFilter(absl::string_view token, absl::string_view lease_id,
                                          absl::string_view filter_id) {
  return ChangeFlowFilter(token, lease_id, nullptr, filter_id).status();
}

BrokerCore::PendingTeardown BrokerCore::TakeLeaseLocked(absl::string_view lease_id,
                                                        bool reclaimed) {
  auto it = leases_.find(lease_id);
  PendingTeardown pending;
  pending.lease_id = std::string(lease_id);
  pending.pool = it->second.granted.pool();
  pending.state = ExtentStateOf(it->second.granted);
  pending.info = it->second.info;
  pending.reclaimed = reclaimed;
  pending.ended_at = absl::Now();
  pending.next_attempt = pending.ended_at;
  if (!it->second.session_token.empty()) {
    auto session = sessions_.find(it->second.session_token);
    if (session != sessions_.end()) session->second.lease_ids.erase(lease_id);
  }
  leases_.erase(it);
  if (absl::Status ended = allocator_->EndLease(std::string_view(lease_id.data(), lease_id.size())); !ended.ok()) {
    spdlog::error("lease={}: allocator disagrees: {}", lease_id, ended.message());
  }
  return pending;
}

void BrokerCore::CommitEnded(std::vector<PendingTeardown> ended) {
  if (ended.empty()) return;
  for (PendingTeardown& pending : ended) {
    journal::Record record;
    record.mutable_ended()->set_lease_id(pending.lease_id);
    record.mutable_ended()->set_reclaimed(pending.reclaimed);
    if (absl::Status durable = journal_->Append(record); !durable.ok()) {
      // Tearing down anyway is safe: after a restart the lease would look live, fail to
      // re-adopt its (gone) devices, and be torn down again.
      spdlog::error("lease={}: journal write failed ({}); tearing down anyway",
                    pending.lease_id, durable.message());
    }
    (pending.reclaimed ? reclaims_total_ : releases_total_)
        .fetch_add(1, std::memory_order_relaxed);
    spdlog::info("lease={} tenant={} pool={} {}", pending.lease_id, OwnerLabel(pending.info),
                 pending.pool, pending.reclaimed ? "reclaimed (session ended)" : "released");
    events_.Publish(MakeEvent(
        pending.reclaimed ? v1::Event::KIND_RECLAIMED : v1::Event::KIND_RELEASED, pending.info,
        pending.reclaimed ? "session ended" : "released by its owner"));
  }
  {
    absl::MutexLock lock(&mu_);
    for (PendingTeardown& pending : ended) teardowns_.push_back(std::move(pending));
  }
  WakeReaper();
}

absl::Status BrokerCore::Release(absl::string_view token, absl::string_view lease_id) {
  if (lease_id.empty() || lease_id.size() > kMaxLeaseIdBytes) {
    return absl::InvalidArgumentError("lease_id: must be a lease id as returned by a grant");
  }
  std::vector<PendingTeardown> ended;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<Session*> session = FindSession(token);
    if (!session.ok()) return session.status();
    auto it = leases_.find(lease_id);
    // A lease of another tenant is reported exactly like a missing one.
    if (it == leases_.end() || (it->second.info.owner_uid() != (*session)->peer.tenant.uid &&
                                !IsOperator((*session)->peer.tenant.uid))) {
      return absl::NotFoundError(absl::StrCat("no lease ", lease_id));
    }
    ended.push_back(TakeLeaseLocked(lease_id, /*reclaimed=*/false));
  }
  CommitEnded(std::move(ended));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Queries

absl::StatusOr<std::vector<v1::Lease>> BrokerCore::ListLeases(absl::string_view token) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Session*> session = FindSession(token);
  if (!session.ok()) return session.status();
  const uint32_t uid = (*session)->peer.tenant.uid;
  const bool all = IsOperator(uid);
  std::vector<v1::Lease> leases;
  for (const auto& [lease_id, lease] : leases_) {
    if (all || lease.info.owner_uid() == uid) leases.push_back(lease.info);
  }
  std::sort(leases.begin(), leases.end(),
            [](const v1::Lease& a, const v1::Lease& b) { return a.id() < b.id(); });
  return leases;
}

absl::StatusOr<std::vector<v1::Pool>> BrokerCore::ListPools(absl::string_view token) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Session*> session = FindSession(token);
  if (!session.ok()) return session.status();
  const Tenant& tenant = (*session)->peer.tenant;
  std::vector<v1::Pool> pools;
  for (const PoolUsage& usage : allocator_->Pools()) {
    if (!IsOperator(tenant.uid) && !allocator_->Admits(tenant, usage.name)) continue;
    v1::Pool& pool = pools.emplace_back();
    pool.set_name(usage.name);
    auto backend = backends_.find(usage.name);
    pool.set_backend(backend != backends_.end() ? backend->second->backend_name() : "");
    pool.set_leases(usage.live_leases);
    if (usage.slots) {
      pool.set_kind(v1::POOL_KIND_NIC);
      pool.set_capacity_slots(static_cast<uint32_t>(usage.capacity_bytes));
      pool.set_free_slots(static_cast<uint32_t>(usage.free_bytes));
      continue;
    }
    pool.set_kind(v1::POOL_KIND_BLOCK);
    pool.set_capacity_bytes(usage.capacity_bytes);
    pool.set_free_bytes(usage.free_bytes);
    pool.set_largest_free_bytes(usage.largest_free_bytes);
    pool.set_alignment_bytes(usage.alignment_bytes);
    pool.set_leases(usage.live_leases);
  }
  return pools;
}

absl::StatusOr<v1::GetStatsResponse> BrokerCore::GetStats(absl::string_view token) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Session*> session = FindSession(token);
  if (!session.ok()) return session.status();
  v1::GetStatsResponse stats;
  stats.set_sessions(sessions_.size());
  stats.set_leases(leases_.size());
  stats.set_grants_total(grants_total_.load(std::memory_order_relaxed));
  stats.set_releases_total(releases_total_.load(std::memory_order_relaxed));
  stats.set_reclaims_total(reclaims_total_.load(std::memory_order_relaxed));
  stats.set_scrubs_total(scrubs_total_.load(std::memory_order_relaxed));
  stats.set_denied_total(denied_total_.load(std::memory_order_relaxed));
  stats.set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - started_at_));
  stats.set_journal_records(journal_->records_appended());
  stats.set_last_reclaim_ms(last_reclaim_ms_);
  stats.set_max_reclaim_ms(max_reclaim_ms_);
  for (const PoolUsage& usage : allocator_->Pools()) {
    v1::PoolStats* pool = stats.add_pools();
    pool->set_name(usage.name);
    if (usage.slots) {
      pool->set_capacity_slots(static_cast<uint32_t>(usage.capacity_bytes));
      pool->set_used_slots(static_cast<uint32_t>(usage.capacity_bytes - usage.free_bytes));
    } else {
      pool->set_capacity_bytes(usage.capacity_bytes);
      pool->set_used_bytes(usage.capacity_bytes - usage.free_bytes);
    }
    pool->set_leases(usage.live_leases);
    pool->set_quarantined(usage.ending_leases);
  }
  return stats;
}

absl::StatusOr<std::shared_ptr<EventSubscription>> BrokerCore::Watch(absl::string_view token) {
  std::optional<uint32_t> only_uid;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<Session*> session = FindSession(token);
    if (!session.ok()) return session.status();
    const uint32_t uid = (*session)->peer.tenant.uid;
    if (!IsOperator(uid)) only_uid = uid;
  }
  return events_.Subscribe(only_uid);
}

// ---------------------------------------------------------------------------------------------
// The reaper: teardowns (with retries while a descriptor is still held) and orphaned owners.

void BrokerCore::Start() {
  reaper_ = std::thread([this] { ReaperLoop(); });
  remover_ = std::thread([this] { RemoverLoop(); });
}

void BrokerCore::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !reaper_.joinable() && !remover_.joinable()) return;
    stopping_ = true;
  }
  WakeReaper();
  if (reaper_.joinable()) reaper_.join();
  {
    // Only now: the reaper's last teardowns may have queued removals.
    absl::MutexLock lock(&mu_);
    remover_stopping_ = true;
  }
  if (remover_.joinable()) remover_.join();
  // Last: the backends' own background work (loop_extent's spare devices are removed).
  for (auto& [pool, backend] : backends_) backend->StopBackground();
  events_.CloseAll();
}

bool BrokerCore::WaitForIdleReaper(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return teardowns_.empty() && teardowns_in_flight_ == 0 && removals_.empty() &&
           removals_in_flight_ == 0;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void BrokerCore::ReaperLoop() {
  std::vector<pollfd> fds;
  std::vector<std::pair<pid_t, uint64_t>> owners;
  while (true) {
    int timeout_ms = -1;
    fds.assign(1, pollfd{wake_fd_.get(), POLLIN, 0});
    owners.clear();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      // Forget watched owners none of whose leases is still orphaned.
      orphan_owners_.erase(
          std::remove_if(orphan_owners_.begin(), orphan_owners_.end(),
                         [&](const OrphanOwner& owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                           return std::none_of(leases_.begin(), leases_.end(), [&](auto& kv) {
                             const Lease& l = kv.second;
                             return l.session_token.empty() &&
                                    l.granted.owner().pid() == owner.pid &&
                                    l.granted.owner().start_time_ticks() == owner.start_time;
                           });
                         }),
          orphan_owners_.end());
      for (const OrphanOwner& owner : orphan_owners_) {
        fds.push_back(pollfd{owner.pidfd.get(), POLLIN, 0});
        owners.emplace_back(owner.pid, owner.start_time);
      }
      if (!teardowns_.empty()) {
        absl::Time next = absl::InfiniteFuture();
        for (const PendingTeardown& pending : teardowns_) {
          next = std::min(next, pending.next_attempt);
        }
        timeout_ms = static_cast<int>(
            std::max<int64_t>(0, absl::ToInt64Milliseconds(absl::Ceil(
                                     next - absl::Now(), absl::Milliseconds(1)))));
      }
    }
    int ready = ::poll(fds.data(), fds.size(), timeout_ms);
    if (ready > 0) {
      if (fds[0].revents & POLLIN) {
        uint64_t drained;
        (void)!::read(wake_fd_.get(), &drained, sizeof(drained));
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents & (POLLIN | POLLHUP)) {
          ReclaimOrphansOf(owners[i - 1].first, owners[i - 1].second);
        }
      }
    }
    RunDueTeardowns();
  }
}

void BrokerCore::ReclaimOrphansOf(pid_t pid, uint64_t start_time) {
  std::vector<PendingTeardown> ended;
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> orphaned;
    for (const auto& [lease_id, lease] : leases_) {
      if (lease.session_token.empty() && lease.granted.owner().pid() == pid &&
          lease.granted.owner().start_time_ticks() == start_time) {
        orphaned.push_back(lease_id);
      }
    }
    for (const std::string& lease_id : orphaned) {
      ended.push_back(TakeLeaseLocked(lease_id, /*reclaimed=*/true));
    }
    orphan_owners_.erase(std::remove_if(orphan_owners_.begin(), orphan_owners_.end(),
                                        [&](const OrphanOwner& owner) {
                                          return owner.pid == pid &&
                                                 owner.start_time == start_time;
                                        }),
                         orphan_owners_.end());
  }
  spdlog::info("tenant=pid:{}: owner of {} re-adopted leases exited before reconnecting", pid,
               ended.size());
  CommitEnded(std::move(ended));
}

void BrokerCore::RunDueTeardowns() {
  std::vector<PendingTeardown> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto it = teardowns_.begin(); it != teardowns_.end();) {
      if (it->next_attempt <= now) {
        due.push_back(std::move(*it));
        it = teardowns_.erase(it);
      } else {
        ++it;
      }
    }
    teardowns_in_flight_ += static_cast<int>(due.size());
  }
  for (PendingTeardown& pending : due) {
    // Cut off and scrub only; removing what is left (about 40 ms per loop device, spent waiting
    // for kernel grace periods) is the remover thread's, after the range is free again.
    absl::StatusOr<TeardownResult> result =
        backends_.at(pending.pool)->ScrubForReuse(pending.state);
    if (result.ok() &&
        (*result == TeardownResult::kFreed || *result == TeardownResult::kScrubbed)) {
      journal::Record record;
      record.mutable_freed()->set_lease_id(pending.lease_id);
      if (absl::Status durable = journal_->Append(record); !durable.ok()) {
        spdlog::error("lease={}: journal write failed ({}); the slice will be scrubbed again "
                      "after a restart", pending.lease_id, durable.message());
      }
      const double elapsed_ms = absl::ToDoubleMilliseconds(absl::Now() - pending.ended_at);
      {
        absl::MutexLock lock(&mu_);
        (void)allocator_->FreeSlice(pending.lease_id);
        if (pending.reclaimed) {
          last_reclaim_ms_ = elapsed_ms;
          max_reclaim_ms_ = std::max(max_reclaim_ms_, elapsed_ms);
        }
      }
      scrubs_total_.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("lease={} tenant={} pool={} scrubbed and free {:.1f} ms after it ended",
                   pending.lease_id, OwnerLabel(pending.info), pending.pool, elapsed_ms);
      events_.Publish(MakeEvent(v1::Event::KIND_SCRUBBED, pending.info,
                                absl::StrFormat("%.1f ms after it ended", elapsed_ms)));
      if (*result == TeardownResult::kScrubbed) {
        PendingRemoval removal;
        removal.lease_id = pending.lease_id;
        removal.pool = pending.pool;
        removal.state = pending.state;
        removal.next_attempt = absl::Now();
        QueueRemoval(std::move(removal));
      } else {
        // Nothing left to remove: the second "freed" at once, so that no later start goes
        // looking for devices at indexes that may belong to someone else by then.
        if (absl::Status durable = journal_->Append(record); !durable.ok()) {
          spdlog::error("lease={}: journal write failed ({}); the next start will look for its "
                        "(removed) devices again", pending.lease_id, durable.message());
        }
      }
      continue;
    }
    ++pending.attempts;
    pending.next_attempt = absl::Now() + RetryDelay(pending.attempts);
    if (!result.ok()) {
      spdlog::error("lease={} pool={}: teardown failed (attempt {}): {}", pending.lease_id,
                    pending.pool, pending.attempts, result.status().message());
    } else if (pending.attempts < kQuarantineWarnAttempt) {
      // Usual right after a kill: the dying tenant's descriptors close a moment after its
      // session socket does.
      spdlog::debug("lease={}: device not closed yet (attempt {}); retrying", pending.lease_id,
                    pending.attempts);
    } else if (pending.attempts == kQuarantineWarnAttempt || pending.attempts % 64 == 0) {
      spdlog::warn("lease={} tenant={}: its device is still held open; quarantined until the "
                   "last descriptor closes (attempt {})",
                   pending.lease_id, OwnerLabel(pending.info), pending.attempts);
    }
    absl::MutexLock lock(&mu_);
    teardowns_.push_back(std::move(pending));
  }
  absl::MutexLock lock(&mu_);
  teardowns_in_flight_ -= static_cast<int>(due.size());
}

// ---------------------------------------------------------------------------------------------
// The remover: dead devices of slices that are already free again.

void BrokerCore::QueueRemoval(PendingRemoval removal) {
  absl::MutexLock lock(&mu_);
  removals_.push_back(std::move(removal));
  remover_wakeup_ = true;
}

void BrokerCore::RemoverLoop() {
  while (true) {
    std::vector<PendingRemoval> due;
    bool final_pass = false;
    {
      absl::MutexLock lock(&mu_);
      absl::Time next = absl::InfiniteFuture();
      for (const PendingRemoval& removal : removals_) {
        next = std::min(next, removal.next_attempt);
      }
      auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return remover_stopping_ || remover_wakeup_;
      };
      mu_.AwaitWithDeadline(absl::Condition(&woken), next);
      remover_wakeup_ = false;
      final_pass = remover_stopping_;
      const absl::Time now = absl::Now();
      for (auto it = removals_.begin(); it != removals_.end();) {
        if (final_pass || it->next_attempt <= now) {
          due.push_back(std::move(*it));
          it = removals_.erase(it);
        } else {
          ++it;
        }
      }
      removals_in_flight_ += static_cast<int>(due.size());
    }
    if (!due.empty()) RunRemovals(std::move(due), final_pass);
    if (final_pass) return;
  }
}

void BrokerCore::RunRemovals(std::vector<PendingRemoval> due, bool final_pass) {
  const size_t count = due.size();
  std::map<std::string, std::vector<PendingRemoval>> by_pool;
  for (PendingRemoval& removal : due) by_pool[removal.pool].push_back(std::move(removal));
  std::vector<PendingRemoval> retry;
  for (auto& [pool, slices] : by_pool) {
    std::vector<journal::ExtentState> states;
    states.reserve(slices.size());
    for (const PendingRemoval& removal : slices) states.push_back(removal.state);
    std::vector<absl::StatusOr<RemovalResult>> results = backends_.at(pool)->RemoveDevices(states);
    for (size_t i = 0; i < slices.size(); ++i) {
      PendingRemoval& removal = slices[i];
      absl::StatusOr<RemovalResult> result =
          i < results.size() ? results[i] : absl::InternalError("backend gave no answer");
      if (result.ok() && *result == RemovalResult::kRemoved) {
        // The second "freed": its devices are gone too, so a restart does not look for them.
        journal::Record record;
        record.mutable_freed()->set_lease_id(removal.lease_id);
        if (absl::Status durable = journal_->Append(record); !durable.ok()) {
          spdlog::error("lease={}: journal write failed ({}); the next start will look for its "
                        "(removed) devices again", removal.lease_id, durable.message());
        }
        continue;
      }
      ++removal.attempts;
      removal.next_attempt =
          absl::Now() + RetryDelay(removal.attempts, kFirstRemovalRetry, kMaxRemovalRetry);
      if (!result.ok()) {
        spdlog::error("lease={} pool={}: removing its dead devices failed (attempt {}): {}",
                      removal.lease_id, pool, removal.attempts, result.status().message());
      } else if (removal.attempts == 1 || removal.attempts % 64 == 0) {
        spdlog::warn("lease={} pool={}: a dead device of its (unbound, reaching nothing) is still "
                     "held open; removal retried (attempt {})",
                     removal.lease_id, pool, removal.attempts);
      }
      retry.push_back(std::move(removal));
    }
  }
  absl::MutexLock lock(&mu_);
  if (final_pass && !retry.empty()) {
    spdlog::warn("stopping with {} slices' dead devices not removed; the next start removes "
                 "them", retry.size());
  }
  for (PendingRemoval& removal : retry) removals_.push_back(std::move(removal));
  removals_in_flight_ -= static_cast<int>(count);
}

}  // namespace vfbroker
