// BrokerCore against a scripted backend and a real journal: the life of leases, reclaim,
// quarantine and recovery, without devices. (The real broker on real loop devices is exercised
// by tests/integration.)
#include "broker/core/broker_core.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "common/process_identity.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class FakeBackend : public ExtentBackend {
 public:
  std::string backend_name() const override { return "fake"; }
  uint64_t capacity_bytes() const override { return 8 * kMiB; }

  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override {
    absl::MutexLock lock(&mu);
    if (!provision_error.ok()) return provision_error;
    ProvisionedExtent extent;
    journal::LoopExtentState* state = extent.state.mutable_loop_extent();
    state->set_offset_bytes(offset);
    state->set_size_bytes(size);
    state->set_inner_loop_index(next_index++);
    state->set_outer_loop_index(next_index++);
    if (vfio_roles) {
      for (v1::FdRole role : {v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                              v1::FD_ROLE_VFIO_DEVICE}) {
        extent.fds.push_back(TenantFd{role, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
      }
      extent.pci_address = "0000:01:00.1";
    } else {
      extent.fds.push_back(
          TenantFd{v1::FD_ROLE_BLOCK_DEVICE, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
      extent.device_path = "/dev/fake";
    }
    return extent;
  }
  absl::Status Readopt(const journal::ExtentState& extent) override {
    const journal::LoopExtentState& state = extent.loop_extent();
    absl::MutexLock lock(&mu);
    readopted.push_back(state.outer_loop_index());
    return readopt_result;
  }
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& extent) override {
    const journal::LoopExtentState& state = extent.loop_extent();
    absl::MutexLock lock(&mu);
    ++teardown_calls;
    if (still_open_rounds > 0) {
      --still_open_rounds;
      return TeardownResult::kStillOpen;
    }
    torn_down.push_back(state.offset_bytes());
    return TeardownResult::kFreed;
  }
  // With `split`, teardown comes in two halves like loop_extent's: the slice is scrubbed
  // (kScrubbed) and its "devices" are removed later, after `held_rounds` refusals.
  absl::StatusOr<TeardownResult> ScrubForReuse(const journal::ExtentState& state) override {
    absl::StatusOr<TeardownResult> result = Teardown(state);
    absl::MutexLock lock(&mu);
    if (split && result.ok() && *result == TeardownResult::kFreed) {
      return TeardownResult::kScrubbed;
    }
    return result;
  }
  std::vector<absl::StatusOr<RemovalResult>> RemoveDevices(
      const std::vector<journal::ExtentState>& extents) override {
    absl::MutexLock lock(&mu);
    ++removal_batches;
    std::vector<absl::StatusOr<RemovalResult>> results;
    for (const journal::ExtentState& extent : extents) {
      const journal::LoopExtentState& state = extent.loop_extent();
      if (held_rounds > 0) {
        --held_rounds;
        results.push_back(RemovalResult::kStillHeld);
        continue;
      }
      removed.push_back(state);
      results.push_back(RemovalResult::kRemoved);
    }
    return results;
  }
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override {
    absl::MutexLock lock(&mu);
    orphan_sweeps.push_back(known.size());
    return absl::OkStatus();
  }

  absl::Mutex mu;
  bool split = false;
  bool vfio_roles = false;  // three VFIO descriptors (like nvme_sriov) instead of a block device
  int held_rounds = 0;
  int removal_batches = 0;
  std::vector<journal::LoopExtentState> removed;
  absl::Status provision_error = absl::OkStatus();
  absl::Status readopt_result = absl::OkStatus();
  int still_open_rounds = 0;
  int teardown_calls = 0;
  int next_index = 100;
  std::vector<int> readopted;
  std::vector<uint64_t> torn_down;
  std::vector<size_t> orphan_sweeps;
};

class FakeLink : public SessionLink {
 public:
  absl::Status SendGrant(const v1::SessionGrant& grant, absl::Span<const int> fds) override {
    absl::MutexLock lock(&mu);
    if (!send_result.ok()) return send_result;
    granted.push_back(grant.lease_id());
    fd_counts.push_back(fds.size());
    roles.emplace_back(grant.fd_roles().begin(), grant.fd_roles().end());
    return absl::OkStatus();
  }
  absl::Mutex mu;
  absl::Status send_result = absl::OkStatus();
  std::vector<std::string> granted;
  std::vector<size_t> fd_counts;
  std::vector<std::vector<int>> roles;
};

PeerCredentials Peer(uint32_t uid, pid_t pid = 4242, uint64_t start_time = 1) {
  PeerCredentials peer;
  peer.tenant.uid = uid;
  peer.tenant.gid = uid;
  peer.pid = pid;
  peer.start_time = start_time;
  return peer;
}

class BrokerCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/core-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }

  // Builds a core over the journal in dir_ (replaying whatever is there).
  void MakeCore(QuotaPolicy quotas = {}) {
    core_.reset();
    JournalReplay replay;
    auto journal = Journal::Open(dir_ + "/journal", &replay);
    ASSERT_TRUE(journal.ok()) << journal.status();
    auto backend = std::make_unique<FakeBackend>();
    backend_ = backend.get();
    if (configure_backend_) configure_backend_(backend_);
    std::map<std::string, std::unique_ptr<ExtentBackend>> backends;
    backends.emplace("scratch", std::move(backend));
    BlockPoolSpec spec;
    spec.name = "scratch";
    spec.capacity_bytes = 8 * kMiB;
    spec.alignment_bytes = kMiB;
    spec.access.any_user = true;
    CoreOptions options;
    options.max_leases_per_session = 3;
    options.max_sessions = 8;
    core_ = std::make_unique<BrokerCore>(
        options, std::make_unique<Allocator>(std::vector<BlockPoolSpec>{spec}, quotas),
        std::move(backends), *std::move(journal));
    ASSERT_TRUE(core_->Recover(replay).ok());
    core_->Start();
  }

  std::string Open(const PeerCredentials& peer, std::shared_ptr<FakeLink> link) {
    auto opened = core_->OpenSession(peer, link);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? opened->token : "";
  }

  absl::StatusOr<v1::Lease> Allocate(const std::string& token, uint64_t size) {
    v1::AllocateExtentRequest request;
    request.set_pool("scratch");
    request.set_size_bytes(size);
    return core_->AllocateExtent(token, request);
  }

  // Used pool bytes (live, ending and quarantined slices), as an operator sees them.
  uint64_t UsedBytes() {
    auto op = core_->OpenSession(Peer(0, 77), std::make_shared<FakeLink>());
    EXPECT_TRUE(op.ok());
    auto stats = core_->GetStats(op->token);
    core_->CloseSession(op->token);
    return stats.ok() ? stats->pools(0).used_bytes() : ~0ull;
  }

  bool WaitForUsedBytes(uint64_t want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (UsedBytes() != want) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  }

  std::string dir_;
  std::unique_ptr<BrokerCore> core_;
  FakeBackend* backend_ = nullptr;
  // Applied to each new FakeBackend before the core recovers over it.
  std::function<void(FakeBackend*)> configure_backend_;
};

TEST_F(BrokerCoreTest, GrantSendsDescriptorsBeforeAnsweringAndIsListed) {
  MakeCore();
  auto link = std::make_shared<FakeLink>();
  const std::string token = Open(Peer(1000), link);
  auto lease = Allocate(token, 3 * kMiB);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->extent().size_bytes(), 3 * kMiB);
  EXPECT_EQ(lease->owner_uid(), 1000u);
  ASSERT_EQ(link->granted.size(), 1u);
  EXPECT_EQ(link->granted[0], lease->id());
  EXPECT_EQ(link->fd_counts[0], 1u);
  EXPECT_EQ(link->roles[0], std::vector<int>{v1::FD_ROLE_BLOCK_DEVICE});
  auto listed = core_->ListLeases(token);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id(), lease->id());
}

TEST_F(BrokerCoreTest, GrantSendsEveryDescriptorWithItsRole) {
  configure_backend_ = [](FakeBackend* backend) { backend->vfio_roles = true; };
  MakeCore();
  auto link = std::make_shared<FakeLink>();
  const std::string token = Open(Peer(1000), link);
  auto lease = Allocate(token, kMiB);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(link->roles.size(), 1u);
  EXPECT_EQ(link->roles[0], (std::vector<int>{v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                                              v1::FD_ROLE_VFIO_DEVICE}));
  EXPECT_EQ(link->fd_counts[0], 3u);
}

TEST_F(BrokerCoreTest, UnknownOrMissingTokenIsUnauthenticated) {
  MakeCore();
  EXPECT_EQ(Allocate("", kMiB).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Allocate("s-forged", kMiB).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(core_->ListLeases("nope").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(BrokerCoreTest, ForeignLeaseIsNotFoundAndUntouched) {
  MakeCore();
  const std::string a = Open(Peer(1000, 1), std::make_shared<FakeLink>());
  const std::string b = Open(Peer(1001, 2), std::make_shared<FakeLink>());
  auto lease = Allocate(a, kMiB);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(core_->Release(b, lease->id()).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(core_->ListLeases(b)->empty());
  EXPECT_EQ(core_->ListLeases(a)->size(), 1u);
  // Root is an operator: sees and may release it.
  const std::string root = Open(Peer(0, 3), std::make_shared<FakeLink>());
  EXPECT_EQ(core_->ListLeases(root)->size(), 1u);
  EXPECT_TRUE(core_->Release(root, lease->id()).ok());
}

TEST_F(BrokerCoreTest, ReleaseTearsDownAndFreesTheRange) {
  MakeCore();
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  auto watch = core_->Watch(token);
  ASSERT_TRUE(watch.ok());
  auto lease = Allocate(token, 8 * kMiB);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(Allocate(token, kMiB).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(core_->Release(token, lease->id()).ok());
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend_->torn_down.size(), 1u);
  EXPECT_TRUE(Allocate(token, 8 * kMiB).ok()) << "the range must be free after the scrub";
  std::vector<v1::Event::Kind> kinds;
  while (auto event = (*watch)->Next(absl::ZeroDuration())) kinds.push_back(event->kind());
  ASSERT_GE(kinds.size(), 3u);
  EXPECT_EQ(kinds[0], v1::Event::KIND_GRANTED);
  EXPECT_EQ(kinds[1], v1::Event::KIND_RELEASED);
  EXPECT_EQ(kinds[2], v1::Event::KIND_SCRUBBED);
}

TEST_F(BrokerCoreTest, ClosedSessionIsReclaimed) {
  MakeCore();
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  ASSERT_TRUE(Allocate(token, kMiB).ok());
  ASSERT_TRUE(Allocate(token, 2 * kMiB).ok());
  core_->CloseSession(token);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend_->torn_down.size(), 2u);
  const std::string other = Open(Peer(0, 9), std::make_shared<FakeLink>());
  auto stats = core_->GetStats(other);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->reclaims_total(), 2u);
  EXPECT_EQ(stats->scrubs_total(), 2u);
  EXPECT_EQ(stats->leases(), 0u);
  EXPECT_EQ(stats->pools(0).used_bytes(), 0u);
}

TEST_F(BrokerCoreTest, SliceHeldOpenStaysQuarantinedUntilFreed) {
  MakeCore();
  backend_->still_open_rounds = 3;
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  auto lease = Allocate(token, 8 * kMiB);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(core_->Release(token, lease->id()).ok());
  // Ending no longer counts against the tenant, but the range is not reusable yet.
  EXPECT_EQ(Allocate(token, kMiB).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend_->teardown_calls, 4);
  EXPECT_TRUE(Allocate(token, kMiB).ok());
}

TEST_F(BrokerCoreTest, FailedProvisionOrHandoffLeavesNothingBehind) {
  MakeCore();
  auto link = std::make_shared<FakeLink>();
  const std::string token = Open(Peer(1000), link);
  backend_->provision_error = absl::InternalError("boom");
  EXPECT_EQ(Allocate(token, 8 * kMiB).status().code(), absl::StatusCode::kUnavailable);
  backend_->provision_error = absl::FailedPreconditionError("VF shares its IOMMU group");
  absl::Status refused = Allocate(token, 8 * kMiB).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("VF shares its IOMMU group"), std::string::npos) << refused;
  backend_->provision_error = absl::OkStatus();
  link->send_result = absl::UnavailableError("peer gone");
  EXPECT_EQ(Allocate(token, 8 * kMiB).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  link->send_result = absl::OkStatus();
  EXPECT_TRUE(core_->ListLeases(token)->empty());
  EXPECT_TRUE(Allocate(token, 8 * kMiB).ok());
}

TEST_F(BrokerCoreTest, SessionAndLeaseCeilings) {
  MakeCore();
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Allocate(token, kMiB).ok());
  EXPECT_EQ(Allocate(token, kMiB).status().code(), absl::StatusCode::kResourceExhausted);
  for (int i = 1; i < 8; ++i) Open(Peer(1000, 100 + i), std::make_shared<FakeLink>());
  EXPECT_EQ(core_->OpenSession(Peer(1000, 999), std::make_shared<FakeLink>()).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(BrokerCoreTest, RestartKeepsLiveOwnersLeasesAndReclaimsTheRest) {
  // The "live owner" is this test process: its pid and start time are real.
  const pid_t self = ::getpid();
  const uint64_t start = *ProcessStartTime(self);
  std::string kept_id, dead_id, ended_id;
  {
    MakeCore();
    const std::string alive = Open(Peer(1000, self, start), std::make_shared<FakeLink>());
    const std::string dead = Open(Peer(1001, self, start + 1), std::make_shared<FakeLink>());
    kept_id = Allocate(alive, 2 * kMiB)->id();
    dead_id = Allocate(dead, 2 * kMiB)->id();
    backend_->still_open_rounds = 1000000;  // the "crash" comes before this teardown finishes
    ended_id = Allocate(alive, kMiB)->id();
    ASSERT_TRUE(core_->Release(alive, ended_id).ok());
    core_->Stop();  // as abrupt as the core allows: no session is closed
  }
  MakeCore();
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend_->readopted.size(), 1u) << "only the live owner's lease is re-adopted";
  EXPECT_EQ(backend_->torn_down.size(), 2u) << "dead owner's lease and the ended one";
  EXPECT_EQ(backend_->orphan_sweeps.size(), 1u);

  // The owner reconnects (same pid and start time, as the kernel reports them): it gets the
  // lease back in its hello, and may release it.
  auto reopened = core_->OpenSession(Peer(1000, self, start), std::make_shared<FakeLink>());
  ASSERT_TRUE(reopened.ok());
  ASSERT_EQ(reopened->readopted_lease_ids.size(), 1u);
  EXPECT_EQ(reopened->readopted_lease_ids[0], kept_id);
  EXPECT_TRUE(core_->Release(reopened->token, kept_id).ok());
  EXPECT_EQ(core_->Release(reopened->token, dead_id).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_TRUE(Allocate(reopened->token, 8 * kMiB).ok()) << "everything is free again";
}

TEST_F(BrokerCoreTest, RestartWithUnverifiableDevicesReclaims) {
  const pid_t self = ::getpid();
  const uint64_t start = *ProcessStartTime(self);
  {
    MakeCore();
    const std::string alive = Open(Peer(1000, self, start), std::make_shared<FakeLink>());
    ASSERT_TRUE(Allocate(alive, 2 * kMiB).ok());
    core_->Stop();
  }
  // Build the next core with a backend that refuses to re-adopt.
  configure_backend_ = [](FakeBackend* backend) {
    backend->readopt_result = absl::FailedPreconditionError("tampered");
  };
  MakeCore();
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  FakeBackend* raw = backend_;
  absl::MutexLock lock(&raw->mu);
  EXPECT_EQ(raw->torn_down.size(), 1u);
}

TEST_F(BrokerCoreTest, RangeIsFreeBeforeItsDevicesAreRemoved) {
  MakeCore();
  {
    absl::MutexLock lock(&backend_->mu);
    backend_->split = true;
    backend_->held_rounds = 1000000;  // a dead device someone keeps open
  }
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  auto watch = core_->Watch(token);
  ASSERT_TRUE(watch.ok());
  auto lease = Allocate(token, 8 * kMiB);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(core_->Release(token, lease->id()).ok());
  // Scrubbed and free while the removal is still being retried.
  ASSERT_TRUE(WaitForUsedBytes(0));
  EXPECT_FALSE(core_->WaitForIdleReaper(absl::Milliseconds(100)))
      << "idle must wait for the dead devices' removal too";
  auto again = Allocate(token, 8 * kMiB);
  EXPECT_TRUE(again.ok()) << "the scrubbed range must be reusable before its devices are gone";
  std::vector<v1::Event::Kind> kinds;
  while (auto event = (*watch)->Next(absl::ZeroDuration())) kinds.push_back(event->kind());
  ASSERT_GE(kinds.size(), 3u);
  EXPECT_EQ(kinds[1], v1::Event::KIND_RELEASED);
  EXPECT_EQ(kinds[2], v1::Event::KIND_SCRUBBED);
  {
    absl::MutexLock lock(&backend_->mu);
    EXPECT_GE(backend_->removal_batches, 1);
    EXPECT_TRUE(backend_->removed.empty());
    backend_->held_rounds = 0;
  }
  ASSERT_TRUE(core_->Release(token, again->id()).ok());
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(30)));
  absl::MutexLock lock(&backend_->mu);
  ASSERT_EQ(backend_->removed.size(), 2u);
  std::set<int> outers = {backend_->removed[0].outer_loop_index(),
                          backend_->removed[1].outer_loop_index()};
  EXPECT_EQ(outers, (std::set<int>{101, 103}));
}

TEST_F(BrokerCoreTest, HeldSliceStaysQuarantinedAndIsNotScrubbedEarlier) {
  MakeCore();
  {
    absl::MutexLock lock(&backend_->mu);
    backend_->split = true;
    backend_->still_open_rounds = 3;  // the tenant's descriptor is still open somewhere
  }
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  auto lease = Allocate(token, 8 * kMiB);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(core_->Release(token, lease->id()).ok());
  EXPECT_EQ(Allocate(token, kMiB).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  absl::MutexLock lock(&backend_->mu);
  EXPECT_EQ(backend_->teardown_calls, 4);
  EXPECT_EQ(backend_->removed.size(), 1u) << "removal only after the scrub";
}

TEST_F(BrokerCoreTest, CrashBetweenScrubAndRemovalIsFinishedAtTheNextStart) {
  std::string dead_id;
  {
    MakeCore();
    {
      absl::MutexLock lock(&backend_->mu);
      backend_->split = true;
      backend_->held_rounds = 1000000;  // the removal never happens before the "crash"
    }
    const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
    auto lease = Allocate(token, 4 * kMiB);
    ASSERT_TRUE(lease.ok());
    dead_id = lease->id();
    ASSERT_TRUE(core_->Release(token, dead_id).ok());
    ASSERT_TRUE(WaitForUsedBytes(0));
    core_->Stop();  // the remover's last attempt is refused too
    absl::MutexLock lock(&backend_->mu);
    EXPECT_TRUE(backend_->removed.empty());
  }

  // Restart whose first removal attempt is refused again (still held): the slice stays in the
  // journal, and the next start still knows about it.
  configure_backend_ = [](FakeBackend* backend) { backend->held_rounds = 1000000; };
  MakeCore();
  {
    absl::MutexLock lock(&backend_->mu);
    EXPECT_GE(backend_->removal_batches, 1) << "a restart must look for the dead devices";
    EXPECT_TRUE(backend_->removed.empty());
  }
  core_->Stop();

  configure_backend_ = nullptr;
  MakeCore();
  {
    absl::MutexLock lock(&backend_->mu);
    ASSERT_EQ(backend_->removed.size(), 1u);
    EXPECT_EQ(backend_->removed[0].offset_bytes(), 0u);
    EXPECT_EQ(backend_->removed[0].size_bytes(), 4 * kMiB);
    EXPECT_EQ(backend_->removed[0].inner_loop_index(), 100);
    EXPECT_EQ(backend_->removed[0].outer_loop_index(), 101);
  }
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));

  // Done: no later start looks for them again.
  MakeCore();
  absl::MutexLock lock(&backend_->mu);
  EXPECT_EQ(backend_->removal_batches, 0);
  EXPECT_TRUE(backend_->removed.empty());
}

TEST_F(BrokerCoreTest, SliceTornDownWholeIsNotLookedForAfterARestart) {
  MakeCore();  // the fake tears down whole (kFreed): nothing is left for RemoveDevices
  const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
  auto lease = Allocate(token, 4 * kMiB);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(core_->Release(token, lease->id()).ok());
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  MakeCore();
  absl::MutexLock lock(&backend_->mu);
  EXPECT_EQ(backend_->removal_batches, 0);
}

TEST_F(BrokerCoreTest, RemovedDevicesAreNotLookedForAgainAndReusedIndexesAreLeftAlone) {
  {
    MakeCore();
    {
      absl::MutexLock lock(&backend_->mu);
      backend_->split = true;
    }
    const std::string token = Open(Peer(1000), std::make_shared<FakeLink>());
    auto lease = Allocate(token, 4 * kMiB);
    ASSERT_TRUE(lease.ok());
    ASSERT_TRUE(core_->Release(token, lease->id()).ok());
    ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
    absl::MutexLock lock(&backend_->mu);
    EXPECT_EQ(backend_->removed.size(), 1u);
  }
  MakeCore();
  {
    absl::MutexLock lock(&backend_->mu);
    EXPECT_EQ(backend_->removal_batches, 0) << "the journal says its devices are gone";
  }

  // A slice whose removal a crash interrupted, and whose device indexes a later lease was
  // given (LOOP_CTL_ADD hands out an index only once its device is gone): those indexes are the
  // later lease's, never removed for the dead slice.
  const pid_t self = ::getpid();
  const uint64_t start = *ProcessStartTime(self);
  {
    MakeCore();
    {
      absl::MutexLock lock(&backend_->mu);
      backend_->split = true;
      backend_->held_rounds = 1000000;
    }
    const std::string token = Open(Peer(1000, self, start), std::make_shared<FakeLink>());
    auto dead = Allocate(token, 4 * kMiB);  // inner 100, outer 101
    ASSERT_TRUE(dead.ok());
    ASSERT_TRUE(core_->Release(token, dead->id()).ok());
    ASSERT_TRUE(WaitForUsedBytes(0));
    {
      absl::MutexLock lock(&backend_->mu);
      backend_->next_index = 100;  // the dead slice's devices went after all; indexes reused
    }
    auto live = Allocate(token, 4 * kMiB);
    ASSERT_TRUE(live.ok());
    core_->Stop();
  }
  MakeCore();
  absl::MutexLock lock(&backend_->mu);
  EXPECT_TRUE(backend_->removed.empty()) << "indexes 100 and 101 belong to the live lease";
  EXPECT_EQ(backend_->readopted.size(), 1u);
}

}  // namespace
}  // namespace vfbroker
