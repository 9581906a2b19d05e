// End-to-end tests of vfbrokerd on this host: the real broker process, tenant processes under
// two unprivileged uids, real loop devices. Run as root (CI is root); skipped otherwise.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace vfbroker::testing {
namespace {

using ::testing::Test;

#define ASSERT_OK(expr)                                   \
  do {                                                    \
    const absl::Status _status = (expr);                  \
    ASSERT_TRUE(_status.ok()) << #expr << ": " << _status; \
  } while (0)

std::string Mb(uint64_t mib) { return std::to_string(mib * kMiB); }

class BrokerIntegrationTest : public Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (loop devices, tenants under other uids)";
    if (::access("/dev/loop-control", W_OK) != 0) GTEST_SKIP() << "no /dev/loop-control";
    absl::StatusOr<std::unique_ptr<BrokerProcess>> broker = BrokerProcess::Start();
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }
  void TearDown() override {
    if (HasFailure() && broker_ != nullptr) {
      std::cerr << "---- vfbrokerd log ----\n" << broker_->log() << "---- end ----\n";
    }
  }

  std::map<std::string, std::string> Run(uid_t uid, const std::vector<std::string>& args) {
    std::unique_ptr<Tenant> tenant = broker_->StartTenant(uid, args);
    absl::StatusOr<std::map<std::string, std::string>> result = tenant->Finish();
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : std::map<std::string, std::string>{};
  }

  std::vector<v1::Lease> AllLeases() {
    auto op = broker_->Operator();
    EXPECT_TRUE(op.ok()) << op.status();
    if (!op.ok()) return {};
    auto leases = (*op)->ListLeases();
    EXPECT_TRUE(leases.ok()) << leases.status();
    return leases.ok() ? *leases : std::vector<v1::Lease>{};
  }

  std::unique_ptr<BrokerProcess> broker_;
};

TEST_F(BrokerIntegrationTest, TwoTenantsAllocateDoVerifiedIoAndRelease) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"alloc-io", "scratch", Mb(16), "1"});
  std::unique_ptr<Tenant> b = broker_->StartTenant(kTenantB, {"alloc-io", "scratch", Mb(8), "2"});
  auto ra = a->Finish();
  auto rb = b->Finish();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  for (auto* r : {&*ra, &*rb}) {
    EXPECT_EQ((*r)["status"], "OK");
    EXPECT_EQ((*r)["wrote"], "yes");
    EXPECT_EQ((*r)["mismatches"], "0");
    EXPECT_EQ((*r)["release"], "OK");
  }
  EXPECT_EQ((*ra)["uid"], std::to_string(kTenantA)) << "identity must come from the kernel";
  EXPECT_EQ((*rb)["uid"], std::to_string(kTenantB));
  EXPECT_EQ((*ra)["size"], Mb(16));
  ASSERT_OK(broker_->WaitForIdle());
  EXPECT_TRUE(AllLeases().empty());
}

TEST_F(BrokerIntegrationTest, ForeignLeaseCannotBeReleasedOrSeen) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"hold", "scratch", Mb(4), "7"});
  auto ready = a->WaitForLine("ready");
  ASSERT_TRUE(ready.ok()) << ready.status();
  const std::string lease_id = ready->substr(ready->find("lease=") + 6, 22);

  auto b = Run(kTenantB, {"release", lease_id});
  EXPECT_EQ(b["release"], "NOT_FOUND") << "a foreign lease looks exactly like a missing one";
  EXPECT_EQ(b["visible_leases"], "0");

  std::vector<v1::Lease> leases = AllLeases();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].id(), lease_id);
  EXPECT_EQ(leases[0].owner_uid(), kTenantA);

  auto done = a->Finish();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)["errors"], "0");
  EXPECT_EQ((*done)["mismatches"], "0");
  EXPECT_EQ((*done)["release"], "OK");
}

TEST_F(BrokerIntegrationTest, TenantCannotReachOutsideItsExtentEvenWithLoopIoctls) {
  // B's data sits at the start of the pool; A's extent comes right after it; the rest of the
  // pool file is filled with a marker no tenant wrote.
  std::unique_ptr<Tenant> b = broker_->StartTenant(kTenantB, {"hold", "scratch", Mb(4), "99"});
  ASSERT_TRUE(b->WaitForLine("ready").ok());
  {
    int fd = ::open(broker_->scratch_path().c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::vector<char> marker(kMiB, 'M');
    for (uint64_t at = 12 * kMiB; at < 64 * kMiB; at += kMiB) {
      ASSERT_EQ(::pwrite(fd, marker.data(), marker.size(), at), static_cast<ssize_t>(kMiB));
    }
    ::fsync(fd);
    ::close(fd);
  }
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"escape", "scratch", Mb(8)});
  auto foreign_final = a->WaitForLine("foreign_final=");
  ASSERT_TRUE(foreign_final.ok()) << foreign_final.status();
  const std::string out = a->output();
  EXPECT_NE(out.find("foreign_before=0"), std::string::npos) << out;
  EXPECT_NE(out.find("foreign_after_widen=0"), std::string::npos) << out;
  EXPECT_NE(out.find("foreign_after_offset=0"), std::string::npos) << out;
  EXPECT_EQ(*foreign_final, "foreign_final=0") << out;
  EXPECT_NE(out.find("read_past_end=0"), std::string::npos) << out;

  // The marker outside A's extent is untouched, and B's data is intact.
  int fd = ::open(broker_->scratch_path().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::vector<char> got(kMiB);
  for (uint64_t at = 12 * kMiB; at < 64 * kMiB; at += kMiB) {
    ASSERT_EQ(::pread(fd, got.data(), got.size(), at), static_cast<ssize_t>(kMiB));
    ASSERT_EQ(std::string(got.begin(), got.end()), std::string(kMiB, 'M')) << "at " << at;
  }
  ::close(fd);
  auto b_done = b->Finish();
  ASSERT_TRUE(b_done.ok()) << b_done.status();
  EXPECT_EQ((*b_done)["mismatches"], "0");
  EXPECT_EQ((*b_done)["errors"], "0");
  ASSERT_TRUE(a->Finish().ok());
  ASSERT_OK(broker_->WaitForIdle());
}

TEST_F(BrokerIntegrationTest, KilledTenantIsReclaimedAndScrubbedForTheNext) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"hold", "scratch", Mb(32), "5"});
  ASSERT_TRUE(a->WaitForLine("ready").ok());
  ASSERT_TRUE(a->WaitForLine("progress").ok());
  a->Kill();
  ASSERT_OK(broker_->WaitForIdle(absl::Seconds(5)));
  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  auto stats = (*op)->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->reclaims_total(), 1u);
  EXPECT_EQ(stats->scrubs_total(), 1u);
  std::cout << "reclaim (session end -> scrubbed and free): " << stats->last_reclaim_ms()
            << " ms\n";

  // First fit puts B's extent exactly where A's was: it must read zeroes only.
  auto b = Run(kTenantB, {"read-zeroes", "scratch", Mb(32)});
  EXPECT_EQ(b["status"], "OK");
  EXPECT_EQ(b["nonzero_blocks"], "0");
}

TEST_F(BrokerIntegrationTest, KilledBrokerRestartsWithLeasesIntactAndTenantIoUninterrupted) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"hold", "scratch", Mb(16), "11"});
  auto ready = a->WaitForLine("ready");
  ASSERT_TRUE(ready.ok()) << ready.status();
  const std::string lease_id = ready->substr(ready->find("lease=") + 6, 22);
  ASSERT_TRUE(a->WaitForLine("progress").ok());

  ASSERT_OK(broker_->Kill());
  auto during = a->LatestProgress(absl::Milliseconds(200));
  ASSERT_TRUE(during.ok()) << during.status();
  ASSERT_OK(broker_->Restart());

  // The lease is still there, owned by A, and nobody else can be granted its range.
  std::vector<v1::Lease> leases = AllLeases();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].id(), lease_id);
  auto b = Run(kTenantB, {"alloc-io", "scratch", Mb(16), "12"});
  EXPECT_EQ(b["status"], "OK");
  EXPECT_EQ(b["mismatches"], "0");

  auto after = a->LatestProgress(absl::Milliseconds(200));
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->first, during->first) << "tenant I/O stopped across the broker restart";
  EXPECT_EQ(after->second, 0u) << "tenant saw I/O errors or foreign data";

  // A releases through a new session: the restarted broker recognises it by pid + start time.
  auto done = a->Finish();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)["errors"], "0");
  EXPECT_EQ((*done)["mismatches"], "0");
  EXPECT_EQ((*done)["release"], "OK") << a->output();
  ASSERT_OK(broker_->WaitForIdle());
}

TEST_F(BrokerIntegrationTest, TenantDyingWhileBrokerIsDownIsReclaimedAfterRestart) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"hold", "scratch", Mb(8), "3"});
  ASSERT_TRUE(a->WaitForLine("ready").ok());
  ASSERT_OK(broker_->Kill());
  a->Kill();
  ASSERT_OK(broker_->Restart());
  ASSERT_OK(broker_->WaitForIdle(absl::Seconds(5)));
  auto b = Run(kTenantB, {"read-zeroes", "scratch", Mb(8)});
  EXPECT_EQ(b["nonzero_blocks"], "0");
}

TEST_F(BrokerIntegrationTest, OrphanedLeaseIsReclaimedWhenItsOwnerExitsAfterRestart) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"hold", "scratch", Mb(8), "4"});
  ASSERT_TRUE(a->WaitForLine("ready").ok());
  ASSERT_OK(broker_->Kill());
  ASSERT_OK(broker_->Restart());
  ASSERT_EQ(AllLeases().size(), 1u) << "the live owner's lease must survive the restart";
  a->Kill();  // it never reconnected; the broker watches its pidfd
  ASSERT_OK(broker_->WaitForIdle(absl::Seconds(5)));
  auto b = Run(kTenantB, {"read-zeroes", "scratch", Mb(8)});
  EXPECT_EQ(b["nonzero_blocks"], "0");
}

// A broker SIGKILLed at arbitrary instants while two tenants allocate and release as fast as
// they can: after every restart no slice is handed out twice or unscrubbed (each new extent
// reads zeroes where the previous holder wrote), and at the end nothing is leaked: no lease, no
// used byte, no loop device on the pool.
TEST_F(BrokerIntegrationTest, BrokerKilledAtRandomInstantsLosesNothingAndDoubleGrantsNothing) {
  std::unique_ptr<Tenant> a = broker_->StartTenant(kTenantA, {"churn", "scratch", Mb(2)});
  std::unique_ptr<Tenant> b = broker_->StartTenant(kTenantB, {"churn", "scratch", Mb(2)});
  ASSERT_TRUE(a->WaitForLine("progress").ok()) << a->output() << broker_->log();
  ASSERT_TRUE(b->WaitForLine("progress").ok()) << b->output();
  std::mt19937 rng(20261124);
  for (int kill = 0; kill < 6; ++kill) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 250));
    ASSERT_OK(broker_->Kill());
    ASSERT_OK(broker_->Restart());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto ra = a->Finish();
  auto rb = b->Finish();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ((*ra)["dirty"], "0") << a->output();
  EXPECT_EQ((*rb)["dirty"], "0") << b->output();
  uint64_t grants_a = 0, grants_b = 0;
  ASSERT_TRUE(absl::SimpleAtoi((*ra)["grants"], &grants_a));
  ASSERT_TRUE(absl::SimpleAtoi((*rb)["grants"], &grants_b));
  EXPECT_GT(grants_a + grants_b, 20u);
  std::cout << "grants across 6 broker kills: " << grants_a + grants_b << "\n";

  ASSERT_OK(broker_->WaitForIdle(absl::Seconds(20)));
  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  auto pools = (*op)->ListPools();
  ASSERT_TRUE(pools.ok());
  for (const v1::Pool& pool : *pools) EXPECT_EQ(pool.free_bytes(), pool.capacity_bytes());
  // Dead devices are removed in the background; none may stay behind.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int on_pool = 0;
  do {
    on_pool = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/sys/block")) {
      std::ifstream backing(entry.path() / "loop" / "backing_file");
      std::string file;
      if (std::getline(backing, file) && file.rfind(broker_->scratch_path(), 0) == 0) ++on_pool;
    }
    if (on_pool == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (absl::Now() < deadline);
  EXPECT_EQ(on_pool, 0) << "loop devices still bound to the pool";
}

TEST_F(BrokerIntegrationTest, BadRequestsGetClearCodesAndChangeNothing) {
  auto r = Run(kTenantB, {"bad-requests", "scratch"});
  EXPECT_EQ(r["no_token"], "UNAUTHENTICATED");
  EXPECT_EQ(r["forged_token"], "UNAUTHENTICATED");
  EXPECT_EQ(r["zero_size"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["huge_size"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["near_overflow_size"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["unknown_pool"], "NOT_FOUND");
  EXPECT_EQ(r["restricted_pool"], "PERMISSION_DENIED");
  EXPECT_EQ(r["empty_pool"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["long_pool_name"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["oversize_request"], "RESOURCE_EXHAUSTED");
  EXPECT_EQ(r["nic_on_block_pool"], "FAILED_PRECONDITION");
  EXPECT_EQ(r["release_missing"], "NOT_FOUND");
  EXPECT_EQ(r["release_empty"], "INVALID_ARGUMENT");
  EXPECT_EQ(r["list_no_token"], "UNAUTHENTICATED");
  EXPECT_EQ(r["leases_after"], "0");
  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  auto pools = (*op)->ListPools();
  ASSERT_TRUE(pools.ok());
  for (const v1::Pool& pool : *pools) EXPECT_EQ(pool.free_bytes(), pool.capacity_bytes());
  auto stats = (*op)->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->grants_total(), 0u);
  EXPECT_GE(stats->denied_total(), 12u);
  // The broker is still serving.
  auto a = Run(kTenantA, {"alloc-io", "restricted", Mb(1), "8"});
  EXPECT_EQ(a["status"], "OK");
}

TEST_F(BrokerIntegrationTest, QuotaExhaustionIsResourceExhausted) {
  // Tenant B's quota: 3 leases, 64 MiB.
  auto by_count = Run(kTenantB, {"quota", "scratch", Mb(1)});
  EXPECT_EQ(by_count["granted"], "3");
  EXPECT_EQ(by_count["status"], "RESOURCE_EXHAUSTED");
  ASSERT_OK(broker_->WaitForIdle());
  auto by_bytes = Run(kTenantB, {"quota", "scratch", Mb(40)});
  EXPECT_EQ(by_bytes["granted"], "1");
  EXPECT_EQ(by_bytes["status"], "RESOURCE_EXHAUSTED");
  ASSERT_OK(broker_->WaitForIdle());
}

TEST_F(BrokerIntegrationTest, OperatorWatchSeesGrantReleaseAndScrub) {
  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  std::vector<v1::Event::Kind> kinds;
  absl::Notification subscribed;
  std::thread watcher([&] {
    (void)(*op)->WatchEvents(
        [&](const v1::Event& event) {
          kinds.push_back(event.kind());
          return event.kind() != v1::Event::KIND_SCRUBBED;
        },
        absl::Seconds(20), [&] { subscribed.Notify(); });
  });
  subscribed.WaitForNotification();
  auto a = Run(kTenantA, {"alloc-io", "scratch", Mb(2), "9"});
  EXPECT_EQ(a["status"], "OK");
  watcher.join();
  ASSERT_EQ(kinds.size(), 3u);
  EXPECT_EQ(kinds[0], v1::Event::KIND_GRANTED);
  EXPECT_EQ(kinds[1], v1::Event::KIND_RELEASED);
  EXPECT_EQ(kinds[2], v1::Event::KIND_SCRUBBED);
}

}  // namespace
}  // namespace vfbroker::testing

namespace vfbroker::testing {
namespace {

TEST(BrokerStartupTest, BadConfigIsRefusedNamingTheField) {
  char dir_template[] = "/tmp/vfbc.XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string config = dir + "/bad.textproto";
  std::ofstream(config) << "pools { name: \"scratch\" access { any_user: true }\n"
                        << "  loop_extent { backing_path: \"" << dir
                        << "/pool.img\" size_bytes: 1048576 create: true alignment_bytes: 3000 }"
                        << "\n}\n";
  const std::string command =
      absl::StrCat(Runfile("broker/vfbrokerd"), " --config=", config, " 2>&1");
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = ::pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << status << " " << output;
  EXPECT_NE(output.find("pools[0].loop_extent.alignment_bytes"), std::string::npos) << output;
  EXPECT_EQ(::access((dir + "/pool.img").c_str(), F_OK), -1) << "a refused config created files";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace vfbroker::testing
