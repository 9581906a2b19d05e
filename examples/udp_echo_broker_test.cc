// udp_echo --broker end to end: the real vfbrokerd (tests/integration/harness.h) with an
// xdp_nic pool on veth0 of a network namespace of the test's own, udp_echo running as an
// unprivileged uid that gets its port from the broker (AllocateNic: a macvlan in a lease
// namespace, the socket handed over unbound and bound by the tenant after mapping its rings),
// and a kernel UDP socket on the peer end veth1 (10.77.0.2) that sends N datagrams of varied
// sizes to the lease (10.77.0.1:7, a static neighbour entry on the lease's MAC) and checks
// every echo byte for byte, one at a time, from the address it was sent to.
//
// Needs root (skips otherwise); tagged local/exclusive.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace vfbroker::testing {
namespace {

const char kPeerMac[] = "02:76:66:00:03:02";
const char kLeaseMac[] = "02:76:66:00:03:01";
const char kLeaseIp[] = "10.77.0.1";
constexpr uint16_t kEchoPort = 7;
constexpr int kDatagrams = 300;

class UdpEchoBrokerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) return;
    absl::Status entered = EnterVethNamespace(kPeerMac, "10.77.0.2/24");
    if (!entered.ok()) std::fprintf(stderr, "%s\n", std::string(entered.message()).c_str());
    ready_ = entered.ok();
  }
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (netns, macvlans, AF_XDP, other uids)";
    ASSERT_TRUE(ready_) << "could not build the test's network namespace";
    BrokerOptions options;
    options.nic_interface = "veth0";
    absl::StatusOr<std::unique_ptr<BrokerProcess>> broker = BrokerProcess::Start(options);
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }
  void TearDown() override {
    if (HasFailure() && broker_ != nullptr) {
      std::cerr << "---- vfbrokerd log ----\n" << broker_->log() << "---- end ----\n";
    }
  }

  static inline bool ready_ = false;
  std::unique_ptr<BrokerProcess> broker_;
};

// Datagram i: its index, then a pattern of a length that varies from 1 to ~1400 bytes.
std::string Payload(int i) {
  std::string p = absl::StrCat("echo-", i, ":");
  const size_t length = 1 + (static_cast<size_t>(i) * 97) % 1400;
  for (size_t k = 0; k < length; ++k) p.push_back(static_cast<char>((i * 31 + k * 7) & 0xff));
  return p;
}

TEST_F(UdpEchoBrokerTest, EveryDatagramComesBackByteForByte) {
  absl::StatusOr<std::string> echo = broker_->TenantExecutable("examples/udp_echo");
  ASSERT_TRUE(echo.ok()) << echo.status();
  absl::StatusOr<std::unique_ptr<Tenant>> tenant = Tenant::Start(
      *echo, kTenantA,
      {"--broker", "--pool=net", absl::StrCat("--socket_dir=", broker_->socket_dir()),
       absl::StrCat("--mac=", kLeaseMac), absl::StrCat("--udp_port=", kEchoPort), "--idle=poll",
       "--seconds=120"});
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  absl::StatusOr<std::string> ready = (*tenant)->WaitForLine("ready", absl::Seconds(20));
  ASSERT_TRUE(ready.ok()) << ready.status() << "\n" << (*tenant)->output();

  // The lease answers no ARP (its frames go to the port): a static neighbour entry.
  ASSERT_EQ(RunIp(absl::StrCat("neigh replace ", kLeaseIp, " lladdr ", kLeaseMac,
                               " dev veth1 nud permanent")),
            0);
  UniqueFd peer(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(peer.valid());
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(kEchoPort);
  ::inet_pton(AF_INET, kLeaseIp, &to.sin_addr);
  // Connected: the kernel delivers only datagrams from 10.77.0.1:7 (the echo's swapped source).
  ASSERT_EQ(::connect(peer.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);

  int echoed = 0;
  int mismatched = 0;
  int lost = 0;
  for (int i = 0; i < kDatagrams; ++i) {
    const std::string payload = Payload(i);
    ASSERT_EQ(::send(peer.get(), payload.data(), payload.size(), 0),
              static_cast<ssize_t>(payload.size()));
    pollfd pfd{peer.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 2000) != 1) {
      ++lost;
      continue;
    }
    char buffer[2048];
    const ssize_t got = ::recv(peer.get(), buffer, sizeof(buffer), 0);
    if (got == static_cast<ssize_t>(payload.size()) &&
        std::string(buffer, static_cast<size_t>(got)) == payload) {
      ++echoed;
    } else {
      ++mismatched;
    }
  }
  EXPECT_EQ(echoed, kDatagrams) << "lost " << lost << ", mismatched " << mismatched;
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(mismatched, 0);

  ::kill((*tenant)->pid(), SIGTERM);
  absl::StatusOr<std::map<std::string, std::string>> counters = (*tenant)->Finish();
  ASSERT_TRUE(counters.ok()) << counters.status();
  EXPECT_EQ((*counters)["echoed"], std::to_string(kDatagrams)) << (*tenant)->output();
  EXPECT_EQ((*counters)["bad_descriptors"], "0");
  std::printf("%s", (*tenant)->output().c_str());
  EXPECT_TRUE(broker_->WaitForIdle().ok()) << "the lease outlived its tenant";
}

}  // namespace
}  // namespace vfbroker::testing
