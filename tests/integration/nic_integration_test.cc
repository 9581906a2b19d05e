// xdp_nic end to end: the real vfbrokerd with an xdp_nic pool on a veth pair, NIC tenants
// (tests/integration/nic_probe) under uids 60001 and 60002 driving their AF_XDP leases with the
// project's AfXdpPort, and the test playing the wire at the veth's peer end.
//
// Before any test, the process moves into a network namespace of its own
// (unshare(CLONE_NEWNET)) and creates veth0 (the pool's interface, no address) and veth1 (the
// peer). The broker and the tenants are its children and inherit that namespace, so nothing
// touches the host's interfaces, and every device (veth, macvlans, VLAN devices, XDP and tc
// programs) disappears with the process however it ends. Needs root; skips otherwise.
#include <arpa/inet.h>
#include <linux/nsfs.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "broker/backends/lease_netns.h"
#include "broker/backends/rtnetlink.h"
#include "common/unique_fd.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"
#include "vfdrivers/net/packet.h"

namespace vfbroker::testing {
namespace {

namespace packet = vfdrivers::net::packet;
using packet::MacAddress;

const char kPeerMacText[] = "02:76:66:00:00:02";
const MacAddress kPeerMac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x02}};
constexpr uint32_t kPeerIp = packet::Ipv4(10, 77, 0, 2);
constexpr uint32_t kLeaseIp = packet::Ipv4(10, 77, 0, 10);

int Ip(const std::string& args) { return RunIp(args); }

MacAddress Mac(const std::string& text) {
  MacAddress mac{};
  unsigned b[6] = {};
  std::sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]);
  for (int i = 0; i < 6; ++i) mac.bytes[i] = static_cast<uint8_t>(b[i]);
  return mac;
}

// The namespace and the veth pair, once per process, before any test (and any thread).
class NetnsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (::geteuid() != 0) return;
    absl::Status entered = EnterVethNamespace(kPeerMacText, "10.77.0.2/24");
    if (!entered.ok()) std::fprintf(stderr, "%s\n", std::string(entered.message()).c_str());
    ready_ = entered.ok();
  }
  static bool ready() { return ready_; }

 private:
  static inline bool ready_ = false;
};

// Raw frames at the peer end, both ways.
class Wire {
 public:
  Wire() {
    fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
    sockaddr_ll addr{};
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_ALL);
    addr.sll_ifindex = static_cast<int>(::if_nametoindex("veth1"));
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    // A frame's 802.1Q tag reaches us out of band (the kernel has moved it out of the data):
    // ask for it.
    const int on = 1;
    ::setsockopt(fd_, SOL_PACKET, PACKET_AUXDATA, &on, sizeof(on));
  }
  ~Wire() { ::close(fd_); }

  // UDP from the peer to `dst` (dst_ip 10.77.0.10), `count` frames "<prefix><i>".
  void Send(const MacAddress& dst, uint16_t dst_port, const std::string& prefix, int count,
            uint16_t vlan = 0) {
    for (int i = 0; i < count; ++i) {
      packet::UdpSpec spec;
      spec.src_mac = kPeerMac;
      spec.dst_mac = dst;
      spec.src_ip = kPeerIp;
      spec.dst_ip = kLeaseIp;
      spec.src_port = 7000;
      spec.dst_port = dst_port;
      if (vlan != 0) {
        spec.has_vlan = true;
        spec.vlan_tci = vlan;
      }
      const std::string payload = absl::StrCat(prefix, i);
      std::vector<uint8_t> frame(packet::UdpFrameLength(spec, payload.size()));
      packet::BuildUdp(spec, reinterpret_cast<const uint8_t*>(payload.data()), payload.size(),
                       frame.data(), frame.size());
      ASSERT_EQ(::send(fd_, frame.data(), frame.size(), 0), static_cast<ssize_t>(frame.size()));
    }
  }

  // Drops what arrived so far.
  void Drain() {
    uint8_t buf[2048];
    while (::recv(fd_, buf, sizeof(buf), 0) > 0) {
    }
  }

  struct Seen {
    std::string payload;
    bool tagged = false;  // a tag still in the data (under the outer one, if any)
    uint16_t vid = 0;
    bool outer_tagged = false;  // the (outer) tag the frame arrived with, out of band
    uint16_t outer_vid = 0;
    MacAddress src;
  };
  // UDP frames that leave toward the peer (arriving at veth1) during `window`.
  std::vector<Seen> Receive(absl::Duration window) {
    std::vector<Seen> out;
    const absl::Time end = absl::Now() + window;
    uint8_t buf[2048];
    while (absl::Now() < end) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 10) <= 0) continue;
      sockaddr_ll from{};
      iovec iov{buf, sizeof(buf)};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(tpacket_auxdata))];
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof(from);
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t n = ::recvmsg(fd_, &msg, 0);
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
      bool outer_tagged = false;
      uint16_t outer_vid = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA) continue;
        tpacket_auxdata aux;
        std::memcpy(&aux, CMSG_DATA(c), sizeof(aux));
        if (aux.tp_status & TP_STATUS_VLAN_VALID) {
          outer_tagged = true;
          outer_vid = aux.tp_vlan_tci & 0x0fff;
        }
      }
      packet::UdpView view;
      if (packet::ParseUdp(buf, static_cast<size_t>(n), &view) != packet::ParseResult::kOk) {
        continue;
      }
      Seen seen;
      seen.payload.assign(reinterpret_cast<const char*>(view.payload), view.payload_length);
      // The kernel hands an AF_PACKET reader the tag out of band (PACKET_AUXDATA); a frame
      // that still carries it in the data was tagged twice.
      seen.tagged = view.eth.has_vlan;
      seen.vid = view.eth.vlan_tci & 0x0fff;
      seen.outer_tagged = outer_tagged;
      seen.outer_vid = outer_vid;
      seen.src = view.eth.src;
      out.push_back(seen);
    }
    return out;
  }

 private:
  int fd_ = -1;
};

std::string Expected(const std::string& prefix, int count) {
  std::multiset<std::string> all;
  for (int i = 0; i < count; ++i) all.insert(absl::StrCat(prefix, i));
  return absl::StrJoin(all, ",");
}
std::string Join(std::multiset<std::string> a, const std::string& b) {
  for (absl::string_view s : absl::StrSplit(b, ',', absl::SkipEmpty())) a.insert(std::string(s));
  return absl::StrJoin(a, ",");
}

// A lease's macvlan lives in a network namespace of the lease's own, which the broker pins
// under netns::kDefaultPinBase (xdp_nic.h); the test (root) enters it through the pin.
std::string PinPath(const std::string& device) {
  absl::StatusOr<std::string> dir = netns::PinDirectory(netns::kDefaultPinBase);
  return dir.ok() ? absl::StrCat(*dir, "/", device) : "";
}

struct LeaseLink {
  std::string name;
  int ifindex = 0;
  bool up = false;
  int addr_gen_mode = -1;  // /proc/sys/net/ipv6/conf/<name>/addr_gen_mode there
};

// The devices in the namespace of the lease whose device is `device` (none: no such pin).
std::vector<LeaseLink> LeaseLinks(const std::string& device) {
  std::vector<LeaseLink> links;
  absl::StatusOr<UniqueFd> fd = netns::OpenPinned(PinPath(device));
  if (!fd.ok()) return links;
  absl::Status listed = netns::RunIn(fd->get(), [&]() -> absl::Status {
    UniqueFd probe(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));  // in the lease namespace
    struct if_nameindex* names = ::if_nameindex();
    for (struct if_nameindex* n = names; n != nullptr && n->if_index != 0; ++n) {
      LeaseLink link;
      link.name = n->if_name;
      link.ifindex = static_cast<int>(n->if_index);
      ifreq req{};
      std::snprintf(req.ifr_name, sizeof(req.ifr_name), "%s", n->if_name);
      if (probe && ::ioctl(probe.get(), SIOCGIFFLAGS, &req) == 0) {
        link.up = (req.ifr_flags & IFF_UP) != 0;
      }
      std::ifstream mode("/proc/sys/net/ipv6/conf/" + link.name + "/addr_gen_mode");
      mode >> link.addr_gen_mode;
      links.push_back(link);
    }
    if (names != nullptr) ::if_freenameindex(names);
    return absl::OkStatus();
  });
  EXPECT_TRUE(listed.ok()) << listed;
  return links;
}

// The lease device's ifindex in its namespace; 0 if it (or its pinned namespace) is gone.
int LeaseIfindex(const std::string& device) {
  for (const LeaseLink& link : LeaseLinks(device)) {
    if (link.name == device) return link.ifindex;
  }
  return 0;
}

bool WaitLeaseGone(const std::string& device, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (LeaseIfindex(device) != 0) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

class NicIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (netns, macvlans, AF_XDP, other uids)";
    ASSERT_TRUE(NetnsEnvironment::ready()) << "could not build the test's network namespace";
    BrokerOptions options;
    options.nic_interface = "veth0";
    options.notify_socket = notify_socket_;
    absl::StatusOr<std::unique_ptr<BrokerProcess>> broker = BrokerProcess::Start(options);
    ASSERT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
  }
  void TearDown() override {
    if (HasFailure() && broker_ != nullptr) {
      std::cerr << "---- vfbrokerd log ----\n" << broker_->log() << "---- end ----\n";
    }
  }

  struct Holder {
    std::unique_ptr<Tenant> tenant;
    std::string lease, mac, device, filter_id;
  };
  // A tenant holding a NIC lease, ready to receive.
  Holder Hold(uid_t uid, const std::string& mac, int vlan = 0,
              const std::vector<std::string>& filters = {}) {
    std::vector<std::string> args = {"hold", "net", mac, std::to_string(vlan)};
    args.insert(args.end(), filters.begin(), filters.end());
    Holder h;
    h.tenant = broker_->StartNicTenant(uid, args);
    auto value = [&](const std::string& key) -> std::string {
      absl::StatusOr<std::string> line = h.tenant->WaitForLine(key + "=", absl::Seconds(20));
      EXPECT_TRUE(line.ok()) << key << ": " << line.status() << "\n" << h.tenant->output();
      return line.ok() ? line->substr(key.size() + 1) : "";
    };
    h.lease = value("lease");
    h.mac = value("mac");
    h.device = value("device");
    if (!filters.empty()) h.filter_id = value("filter_id");
    EXPECT_EQ(value("ready"), "1") << h.tenant->output();
    return h;
  }
  // "report": what the tenant received since the last report, as (count, sorted payloads).
  std::pair<int, std::string> Report(Holder& h) {
    EXPECT_TRUE(h.tenant->WriteLine("report").ok());
    absl::StatusOr<std::string> line = h.tenant->WaitForLine("report ", absl::Seconds(10));
    EXPECT_TRUE(line.ok()) << line.status();
    if (!line.ok()) return {-1, ""};
    int count = -1;
    std::sscanf(line->c_str(), "report count=%d", &count);
    const size_t at = line->find("payloads=");
    return {count, at == std::string::npos ? "" : line->substr(at + 9)};
  }
  std::string Command(Holder& h, const std::string& command, const std::string& answer_key) {
    EXPECT_TRUE(h.tenant->WriteLine(command).ok());
    absl::StatusOr<std::string> line = h.tenant->WaitForLine(answer_key + "=", absl::Seconds(10));
    EXPECT_TRUE(line.ok()) << command << ": " << line.status();
    return line.ok() ? line->substr(answer_key.size() + 1) : "";
  }
  void Finish(Holder& h) {
    h.tenant->CloseStdin();
    absl::StatusOr<std::map<std::string, std::string>> result = h.tenant->Finish();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ((*result)["status"], "OK") << h.tenant->output();
  }
  v1::Pool NetPool() {
    auto op = broker_->Operator();
    EXPECT_TRUE(op.ok());
    auto pools = (*op)->ListPools();
    EXPECT_TRUE(pools.ok());
    for (const v1::Pool& p : *pools) {
      if (p.name() == "net") return p;
    }
    ADD_FAILURE() << "no pool net";
    return {};
  }

  std::unique_ptr<BrokerProcess> broker_;
  std::string notify_socket_;  // the broker's $NOTIFY_SOCKET, if set before SetUp
};

TEST_F(NicIntegrationTest, TwoTenantsOnOneInterfaceEachReceiveExactlyTheirOwnFrames) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:0a");
  Holder b = Hold(kTenantB, "-");  // the broker picks
  ASSERT_FALSE(b.mac.empty());
  EXPECT_EQ(Mac(b.mac).bytes[0] & 0x03, 0x02) << b.mac << ": not locally administered unicast";
  EXPECT_NE(a.device, b.device);
  // The host's stack sends nothing from a lease's MAC: no IPv6 link-local address is made.
  for (const std::string& device : {a.device, b.device}) {
    int value = -1;
    for (const LeaseLink& link : LeaseLinks(device)) {
      if (link.name == device) value = link.addr_gen_mode;
    }
    EXPECT_EQ(value, 1) << device << ": addr_gen_mode (1: IN6_ADDR_GEN_MODE_NONE)";
  }  v1::Pool pool = NetPool();
  EXPECT_EQ(pool.kind(), v1::POOL_KIND_NIC);
  EXPECT_EQ(pool.backend(), "xdp_nic");
  EXPECT_EQ(pool.capacity_slots(), 4u);
  EXPECT_EQ(pool.free_slots(), 2u);

  Wire wire;
  wire.Send(Mac(a.mac), 5000, "a-", 20);
  wire.Send(Mac(b.mac), 5000, "b-", 20);
  wire.Send(Mac("02:76:66:00:00:77"), 5000, "x-", 20);            // nobody's
  wire.Send(Mac("ff:ff:ff:ff:ff:ff"), 5000, "bc-", 5);            // broadcast: the kernel's
  auto [a_count, a_got] = Report(a);
  auto [b_count, b_got] = Report(b);
  EXPECT_EQ(a_count, 20);
  EXPECT_EQ(a_got, Expected("a-", 20));
  EXPECT_EQ(b_count, 20);
  EXPECT_EQ(b_got, Expected("b-", 20));
  Finish(a);
  Finish(b);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(NetPool().free_slots(), 4u);
  EXPECT_EQ(LeaseIfindex(a.device), 0u);
  EXPECT_EQ(LeaseIfindex(b.device), 0u);
}

TEST_F(NicIntegrationTest, FlowFiltersAddedAndRemovedLiveChangeWhatArrives) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:0b", 0, {"10.77.0.10:5000"});
  ASSERT_EQ(a.filter_id, "f1");
  Wire wire;
  const MacAddress mac = Mac(a.mac);
  wire.Send(mac, 5000, "p5000-", 5);
  wire.Send(mac, 5001, "p5001-", 5);
  EXPECT_EQ(Report(a).second, Expected("p5000-", 5));

  EXPECT_EQ(Command(a, "add 10.77.0.10 5001", "added"), "f2");
  EXPECT_EQ(Command(a, "add 10.77.0.10 5001", "added"), "INVALID_ARGUMENT");  // overlaps f2
  wire.Send(mac, 5000, "p5000-", 5);
  wire.Send(mac, 5001, "p5001-", 5);
  wire.Send(mac, 5002, "p5002-", 5);
  EXPECT_EQ(Report(a).second, Join({}, Expected("p5000-", 5) + "," + Expected("p5001-", 5)));

  EXPECT_EQ(Command(a, "remove f1", "removed"), "OK");
  EXPECT_EQ(Command(a, "remove f1", "removed"), "NOT_FOUND");
  wire.Send(mac, 5000, "p5000-", 5);
  wire.Send(mac, 5001, "p5001-", 5);
  EXPECT_EQ(Report(a).second, Expected("p5001-", 5));

  // No filter left: every frame to the lease's MAC again.
  EXPECT_EQ(Command(a, "remove f2", "removed"), "OK");
  wire.Send(mac, 5002, "p5002-", 5);
  wire.Send(mac, 9, "p9-", 5);
  EXPECT_EQ(Report(a).second, Join({}, Expected("p5002-", 5) + "," + Expected("p9-", 5)));

  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  auto leases = (*op)->ListLeases();
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].nic().filters_size(), 0);
  Finish(a);
}

TEST_F(NicIntegrationTest, KilledTenantsDeviceIsGoneAtOnceAndItsMacFreeAgain) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:0c");
  ASSERT_NE(LeaseIfindex(a.device), 0u);
  const auto killed_at = std::chrono::steady_clock::now();
  a.tenant->Kill();
  while (LeaseIfindex(a.device) != 0 &&
         std::chrono::steady_clock::now() - killed_at < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double gone_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_EQ(LeaseIfindex(a.device), 0u);
  EXPECT_LT(gone_ms, 100.0) << "the macvlan outlived its killed tenant";
  std::printf("killed tenant's macvlan gone %.1f ms after SIGKILL\n", gone_ms);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  // Its MAC is free again: another uid gets it, and with it the frames.
  Holder b = Hold(kTenantB, "02:76:66:00:00:0c");
  Wire wire;
  wire.Send(Mac(b.mac), 5000, "b-", 10);
  EXPECT_EQ(Report(b).second, Expected("b-", 10));
  Finish(b);
  std::ifstream log_file;
  std::string log = broker_->log();
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "granted NIC slot") || absl::StrContains(line, "steering program")) {
      std::printf("%s\n", std::string(line).c_str());
    }
    if (absl::StrContains(line, "reclaimed") && absl::StrContains(line, a.lease)) {
      std::printf("%s\n", std::string(line).c_str());
    }
  }
}

TEST_F(NicIntegrationTest, MalformedAndForeignRequestsGetClearCodesAndChangeNothing) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:0d", 0, {"10.77.0.10:5000"});
  std::unique_ptr<Tenant> bad =
      broker_->StartNicTenant(kTenantB, {"bad", "net", a.lease, a.filter_id, a.mac});
  absl::StatusOr<std::map<std::string, std::string>> r = bad->Finish();
  ASSERT_TRUE(r.ok()) << r.status();
  std::map<std::string, std::string> want = {
      {"mac_garbage", "INVALID_ARGUMENT"},     {"mac_short", "INVALID_ARGUMENT"},
      {"mac_multicast", "INVALID_ARGUMENT"},   {"mac_broadcast", "INVALID_ARGUMENT"},
      {"mac_zero", "INVALID_ARGUMENT"},        {"vlan_4095", "INVALID_ARGUMENT"},
      {"vlan_5000", "INVALID_ARGUMENT"},       {"queues_2", "UNIMPLEMENTED"},
      {"overlapping_filters", "INVALID_ARGUMENT"}, {"filter_bad_ip", "INVALID_ARGUMENT"},
      {"filter_ipv6", "UNIMPLEMENTED"},        {"mac_in_use", "ALREADY_EXISTS"},
      {"unknown_pool", "NOT_FOUND"},           {"nic_on_block_pool", "FAILED_PRECONDITION"},
      {"add_filter_foreign", "NOT_FOUND"},     {"remove_filter_foreign", "NOT_FOUND"},
      {"add_filter_missing", "NOT_FOUND"},     {"release_foreign", "NOT_FOUND"},
      {"leases_after", "0"},
  };
  for (const auto& [key, code] : want) EXPECT_EQ((*r)[key], code) << key;
  // The interface's own MAC is taken too (the kernel refuses it for a macvlan).
  // (sysfs would show the host's namespace: this process only unshared its network.)
  std::string own_mac;
  {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "veth0", IFNAMSIZ - 1);
    ASSERT_EQ(::ioctl(fd, SIOCGIFHWADDR, &ifr), 0);
    ::close(fd);
    const auto* b = reinterpret_cast<const uint8_t*>(ifr.ifr_hwaddr.sa_data);
    char text[18];
    std::snprintf(text, sizeof(text), "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3],
                  b[4], b[5]);
    own_mac = text;
  }
  std::unique_ptr<Tenant> own = broker_->StartNicTenant(kTenantB, {"hold", "net", own_mac, "0"});
  absl::StatusOr<std::map<std::string, std::string>> own_result = own->Finish();
  ASSERT_TRUE(own_result.ok()) << own_result.status();
  EXPECT_EQ((*own_result)["status"], "ALREADY_EXISTS") << own->output();
  // Nothing changed: one lease (A's) with its one filter, three slots free, A still served.
  EXPECT_EQ(NetPool().free_slots(), 3u);
  auto op = broker_->Operator();
  ASSERT_TRUE(op.ok());
  auto leases = (*op)->ListLeases();
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].nic().filters_size(), 1);
  auto stats = (*op)->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->grants_total(), 1u);
  EXPECT_GE(stats->denied_total(), 18u);
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "still-", 5);
  EXPECT_EQ(Report(a).second, Expected("still-", 5));
  Finish(a);
}

TEST_F(NicIntegrationTest, TransmitWithAForeignSourceMacOrVlanIsDropped) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:0e");
  Wire wire;
  wire.Drain();
  auto send = [&](const std::string& src_mac, int vlan, const std::string& payload) {
    EXPECT_EQ(Command(a, absl::StrCat("send ", src_mac, " ", kPeerMacText, " 10.77.0.10 "
                                      "10.77.0.2 ", vlan, " ", payload),
                      "sent"),
              "1");
  };
  send(a.mac, 0, "legit");
  send("02:76:66:00:00:0a", 0, "spoofed-mac");
  send(a.mac, 7, "spoofed-vlan");
  send(a.mac, 0, "legit-again");
  std::set<std::string> got;
  for (const Wire::Seen& seen : wire.Receive(absl::Milliseconds(400))) got.insert(seen.payload);
  EXPECT_EQ(got, (std::set<std::string>{"legit", "legit-again"}));
  Finish(a);
}

// Whether this kernel can make 802.1Q VLAN devices (Debian's can; the development machine's
// 6.18 has CONFIG_VLAN_8021Q off).
bool KernelHasVlanDevices() {
  const bool made = Ip("link add link veth0 name vfbprobe type vlan id 4000") == 0;
  if (made) Ip("link del vfbprobe");
  return made;
}

// VFBROKER_NIC_TEST_REQUIRE_VLAN=1 (//tests/vm:vm_nic_test's guest, whose kernel has 8021q):
// a kernel without VLAN devices is a failure there, not a skip.
bool VlanRequired() {
  const char* v = std::getenv("VFBROKER_NIC_TEST_REQUIRE_VLAN");
  return v != nullptr && std::string(v) == "1";
}

// The VLAN cases run only where the kernel makes 802.1Q VLAN devices; elsewhere they say so.
#define SKIP_WITHOUT_VLAN_DEVICES()                                                           \
  do {                                                                                        \
    if (!KernelHasVlanDevices()) {                                                            \
      if (VlanRequired()) FAIL() << "VFBROKER_NIC_TEST_REQUIRE_VLAN=1 but no VLAN devices";   \
      std::printf("SKIPPED: %s: this kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q); " \
                  "//tests/vm:vm_nic_test runs it in a guest that has them\n",                \
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());           \
      GTEST_SKIP() << "no 802.1Q VLAN devices in this kernel";                                \
    }                                                                                         \
  } while (0)

// The pool's VLAN devices present in the namespace ("vfbv...", see xdp_nic.h).
std::set<std::string> VlanDevices() {
  std::set<std::string> out;
  struct if_nameindex* names = ::if_nameindex();
  for (struct if_nameindex* n = names; n != nullptr && n->if_index != 0; ++n) {
    if (std::string(n->if_name).rfind("vfbv", 0) == 0) out.insert(n->if_name);
  }
  if (names != nullptr) ::if_freenameindex(names);
  return out;
}

bool WaitGone(const std::string& device, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (::if_nametoindex(device.c_str()) != 0) {
    if (absl::Now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::string SeenText(const std::vector<Wire::Seen>& seen) {
  std::vector<std::string> parts;
  for (const Wire::Seen& s : seen) {
    parts.push_back(absl::StrCat(s.payload, s.outer_tagged ? absl::StrCat("@", s.outer_vid) : "",
                                 s.tagged ? absl::StrCat("+inner", s.vid) : ""));
  }
  return absl::StrJoin(parts, " ");
}

// A frame tagged with a VLAN but addressed to an untagged lease's MAC must not reach the
// tenant: the kernel moves the tag out of the frame before the macvlan's generic XDP runs (so
// the steering program cannot see it); the pool's tc ingress VLAN guard drops it first.
TEST_F(NicIntegrationTest, UntaggedLeaseGetsNoTaggedFramesToItsMac) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:11");
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "v200-", 3, 200);
  wire.Send(Mac(a.mac), 5000, "v1-", 3, 1);
  wire.Send(Mac(a.mac), 5000, "plain-", 3);
  EXPECT_EQ(Report(a).second, Expected("plain-", 3));
  Finish(a);
}

// A priority-tagged frame (802.1p: a tag with VID 0) is untagged traffic (802.1Q): an untagged
// lease receives it; a VLAN lease does not.
TEST_F(NicIntegrationTest, PriorityTaggedFramesAreUntagged) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:13");
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "prio5-", 3, 0xA000);  // PCP 5, VID 0
  wire.Send(Mac(a.mac), 5000, "plain-", 3);
  EXPECT_EQ(Report(a).second, Join({}, Expected("prio5-", 3) + "," + Expected("plain-", 3)));
  if (KernelHasVlanDevices()) {
    Holder v = Hold(kTenantB, "02:76:66:00:01:69", 100);
    wire.Send(Mac(v.mac), 5000, "v-prio5-", 3, 0xA000);
    wire.Send(Mac(v.mac), 5000, "v-v100-", 3, 100);
    EXPECT_EQ(Report(v).second, Expected("v-v100-", 3));
    Finish(v);
  }
  Finish(a);
}

TEST_F(NicIntegrationTest, VlanLeaseReceivesOnlyItsVlanAndSendsTagged) {
  if (!KernelHasVlanDevices() && !VlanRequired()) {
    // The broker must say so plainly, and change nothing.
    std::unique_ptr<Tenant> t =
        broker_->StartNicTenant(kTenantA, {"hold", "net", "02:76:66:00:00:0f", "100"});
    absl::StatusOr<std::map<std::string, std::string>> r = t->Finish();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)["status"], "FAILED_PRECONDITION") << t->output();
    EXPECT_NE(t->output().find("no 802.1Q VLAN devices"), std::string::npos) << t->output();
    EXPECT_EQ(NetPool().free_slots(), 4u);
    std::printf("SKIPPED: VlanLeaseReceivesOnlyItsVlanAndSendsTagged: no 802.1Q VLAN devices in "
                "this kernel (the refusal was checked); //tests/vm:vm_nic_test runs it\n");
    GTEST_SKIP() << "no 802.1Q VLAN devices in this kernel; the refusal was checked";
  }
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder a = Hold(kTenantA, "02:76:66:00:00:0f", 100);
  Wire wire;
  const MacAddress mac = Mac(a.mac);
  wire.Send(mac, 5000, "v100-", 5, 100);
  wire.Send(mac, 5000, "untagged-", 5);
  wire.Send(mac, 5000, "v200-", 5, 200);
  EXPECT_EQ(Report(a).second, Expected("v100-", 5));
  wire.Drain();
  // The tenant sends untagged; the kernel tags with the lease's VID. A frame it tags itself
  // would leave with two tags: the guard drops it.
  EXPECT_EQ(Command(a, absl::StrCat("send ", a.mac, " ", kPeerMacText,
                                    " 10.77.0.10 10.77.0.2 0 vlan-out"), "sent"), "1");
  EXPECT_EQ(Command(a, absl::StrCat("send ", a.mac, " ", kPeerMacText,
                                    " 10.77.0.10 10.77.0.2 100 double-tagged"), "sent"), "1");
  std::vector<Wire::Seen> seen = wire.Receive(absl::Milliseconds(400));
  std::set<std::string> got;
  for (const Wire::Seen& s : seen) got.insert(s.payload);
  EXPECT_EQ(got, (std::set<std::string>{"vlan-out"})) << SeenText(seen);
  Finish(a);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(NetPool().free_slots(), 4u);
}

// Two VLAN leases (100, 200) and an untagged one on one interface: each receives exactly the
// frames to its MAC with its own VLAN (none: the untagged one); untagged frames, other VLANs'
// frames, frames to other MACs and broadcasts reach no tenant.
TEST_F(NicIntegrationTest, VlanLeasesReceiveExactlyTheirVlansFramesToTheirMac) {
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder v100 = Hold(kTenantA, "02:76:66:00:01:64", 100);
  Holder v200 = Hold(kTenantB, "02:76:66:00:02:c8", 200);
  Holder plain = Hold(kTenantA, "02:76:66:00:00:21");
  const std::set<std::string> vlans = VlanDevices();
  EXPECT_EQ(vlans.size(), 2u) << absl::StrJoin(vlans, ",");
  // Neither the VLAN devices nor the macvlans make IPv6 addresses (no DAD, no solicitations
  // from the host's stack on a tenant's VLAN).
  for (const std::string& device : vlans) {
    std::ifstream mode("/proc/sys/net/ipv6/conf/" + device + "/addr_gen_mode");
    int value = -1;
    mode >> value;
    EXPECT_EQ(value, 1) << device << ": addr_gen_mode (1: IN6_ADDR_GEN_MODE_NONE)";
  }
  for (const std::string& device : {v100.device, v200.device}) {
    int value = -1;
    for (const LeaseLink& link : LeaseLinks(device)) {
      if (link.name == device) value = link.addr_gen_mode;
    }
    EXPECT_EQ(value, 1) << device << ": addr_gen_mode (1: IN6_ADDR_GEN_MODE_NONE)";
  }
  Wire wire;
  for (Holder* h : {&v100, &v200, &plain}) {
    const MacAddress mac = Mac(h->mac);
    const std::string p = h == &v100 ? "a" : h == &v200 ? "b" : "c";
    wire.Send(mac, 5000, p + "-v100-", 4, 100);
    wire.Send(mac, 5000, p + "-v200-", 4, 200);
    wire.Send(mac, 5000, p + "-v101-", 4, 101);
    wire.Send(mac, 5000, p + "-plain-", 4);
  }
  wire.Send(Mac("02:76:66:00:00:77"), 5000, "nobody-v100-", 4, 100);
  wire.Send(Mac("ff:ff:ff:ff:ff:ff"), 5000, "bc-v100-", 4, 100);
  wire.Send(Mac("ff:ff:ff:ff:ff:ff"), 5000, "bc-", 4);
  auto [n100, got100] = Report(v100);
  auto [n200, got200] = Report(v200);
  auto [nplain, gotplain] = Report(plain);
  EXPECT_EQ(got100, Expected("a-v100-", 4));
  EXPECT_EQ(n100, 4);
  EXPECT_EQ(got200, Expected("b-v200-", 4));
  EXPECT_EQ(n200, 4);
  EXPECT_EQ(gotplain, Expected("c-plain-", 4));
  EXPECT_EQ(nplain, 4);
  Finish(v100);
  Finish(v200);
  Finish(plain);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(VlanDevices(), std::set<std::string>{}) << "VLAN devices outlived their leases";
}

// Flow filters on a VLAN lease: its steering program sees the frames untagged (the VLAN
// device took the tag), so a filter selects among that VLAN's flows to the lease's MAC only.
TEST_F(NicIntegrationTest, VlanLeaseFlowFiltersSelectAmongItsVlansFlows) {
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder a = Hold(kTenantA, "02:76:66:00:01:6a", 100, {"10.77.0.10:5000"});
  ASSERT_EQ(a.filter_id, "f1");
  Wire wire;
  const MacAddress mac = Mac(a.mac);
  wire.Send(mac, 5000, "v100-p5000-", 4, 100);
  wire.Send(mac, 5001, "v100-p5001-", 4, 100);
  wire.Send(mac, 5000, "v200-p5000-", 4, 200);
  wire.Send(mac, 5000, "plain-p5000-", 4);
  EXPECT_EQ(Report(a).second, Expected("v100-p5000-", 4));
  EXPECT_EQ(Command(a, "add 10.77.0.10 5001", "added"), "f2");
  EXPECT_EQ(Command(a, "remove f1", "removed"), "OK");
  wire.Send(mac, 5000, "v100-p5000-", 4, 100);
  wire.Send(mac, 5001, "v100-p5001-", 4, 100);
  wire.Send(mac, 5001, "v200-p5001-", 4, 200);
  EXPECT_EQ(Report(a).second, Expected("v100-p5001-", 4));
  Finish(a);
}

// What a VLAN lease sends leaves tagged with its VLAN (the peer sees the tag, from the lease's
// MAC); it cannot send untagged, on another VLAN, double-tagged, or from another MAC. An
// untagged lease beside it sends untagged and cannot send onto the VLAN.
TEST_F(NicIntegrationTest, VlanLeaseTransmitsOnlyTaggedWithItsVlan) {
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder v = Hold(kTenantA, "02:76:66:00:01:65", 100);
  Holder plain = Hold(kTenantB, "02:76:66:00:00:22");
  Wire wire;
  wire.Drain();
  auto send = [&](Holder& h, const std::string& src_mac, int vlan, const std::string& payload) {
    EXPECT_EQ(Command(h, absl::StrCat("send ", src_mac, " ", kPeerMacText, " 10.77.0.10 "
                                      "10.77.0.2 ", vlan, " ", payload),
                      "sent"),
              "1")
        << payload;
  };
  send(v, v.mac, 0, "v-out");                    // tagged 100 by the kernel
  send(v, v.mac, 100, "v-self-tagged-100");      // 100 over 100: two tags
  send(v, v.mac, 200, "v-other-vlan");           // 200 under 100: two tags
  send(v, plain.mac, 0, "v-spoofed-mac");        // the untagged lease's MAC
  send(v, "02:76:66:00:00:99", 0, "v-foreign-mac");
  send(v, v.mac, 0, "v-out-again");
  send(plain, plain.mac, 0, "plain-out");
  send(plain, plain.mac, 100, "plain-onto-v100");
  send(plain, v.mac, 0, "plain-spoofed-v-mac");
  std::vector<Wire::Seen> seen = wire.Receive(absl::Milliseconds(600));
  std::map<std::string, std::string> got;  // payload -> "src@vid" / "src@untagged"
  for (const Wire::Seen& s : seen) {
    char src[18];
    std::snprintf(src, sizeof(src), "%02x:%02x:%02x:%02x:%02x:%02x", s.src.bytes[0],
                  s.src.bytes[1], s.src.bytes[2], s.src.bytes[3], s.src.bytes[4], s.src.bytes[5]);
    std::string how = absl::StrCat(src, "@", s.outer_tagged ? std::to_string(s.outer_vid) :
                                                              "untagged");
    if (s.tagged) absl::StrAppend(&how, "+inner", s.vid);
    EXPECT_TRUE(got.emplace(s.payload, how).second) << "twice: " << s.payload;
  }
  const std::map<std::string, std::string> want = {
      {"v-out", v.mac + "@100"},
      {"v-out-again", v.mac + "@100"},
      {"plain-out", plain.mac + "@untagged"},
  };
  EXPECT_EQ(got, want) << SeenText(seen);
  Finish(v);
  Finish(plain);
}

// A killed VLAN tenant's macvlan goes at once, and its VLAN device with it once no lease uses
// that VLAN any more (not before: a second lease on the VLAN keeps receiving); the VLAN can be
// leased again, by another uid, and works.
TEST_F(NicIntegrationTest, KilledVlanTenantsDevicesGoAndTheVlanCanBeLeasedAgain) {
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder a1 = Hold(kTenantA, "02:76:66:00:01:66", 300);
  Holder a2 = Hold(kTenantA, "02:76:66:00:01:67", 300);
  const std::set<std::string> vlans = VlanDevices();
  ASSERT_EQ(vlans.size(), 1u) << "two leases on one VLAN share its device";
  const std::string vlan_device = *vlans.begin();
  a1.tenant->Kill();
  EXPECT_TRUE(WaitLeaseGone(a1.device, absl::Seconds(5))) << "the macvlan outlived its tenant";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_NE(::if_nametoindex(vlan_device.c_str()), 0u) << "VLAN device removed under a2";
  Wire wire;
  wire.Send(Mac(a2.mac), 5000, "a2-", 5, 300);
  EXPECT_EQ(Report(a2).second, Expected("a2-", 5));
  a2.tenant->Kill();
  EXPECT_TRUE(WaitLeaseGone(a2.device, absl::Seconds(5))) << "the macvlan outlived its tenant";
  EXPECT_TRUE(WaitGone(vlan_device, absl::Seconds(5))) << "the VLAN device outlived its leases";
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(NetPool().free_slots(), 4u);
  // VLAN 300 again, for another uid, with a1's MAC.
  Holder b = Hold(kTenantB, "02:76:66:00:01:66", 300);
  EXPECT_EQ(VlanDevices(), std::set<std::string>{vlan_device});
  wire.Send(Mac(b.mac), 5000, "b-", 5, 300);
  wire.Send(Mac(b.mac), 5000, "b-plain-", 5);
  EXPECT_EQ(Report(b).second, Expected("b-", 5));
  wire.Drain();
  EXPECT_EQ(Command(b, absl::StrCat("send ", b.mac, " ", kPeerMacText,
                                    " 10.77.0.10 10.77.0.2 0 b-out"), "sent"), "1");
  std::vector<Wire::Seen> seen = wire.Receive(absl::Milliseconds(400));
  ASSERT_EQ(seen.size(), 1u) << SeenText(seen);
  EXPECT_EQ(seen[0].payload, "b-out");
  EXPECT_TRUE(seen[0].outer_tagged);
  EXPECT_EQ(seen[0].outer_vid, 300);
  Finish(b);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(VlanDevices(), std::set<std::string>{});
}

// A broker restart keeps a live VLAN lease (its VLAN device too) and removes a VLAN device of
// the pool that no lease uses.
TEST_F(NicIntegrationTest, BrokerRestartKeepsALiveVlanLeaseAndRemovesOrphanVlanDevices) {
  SKIP_WITHOUT_VLAN_DEVICES();
  Holder a = Hold(kTenantA, "02:76:66:00:01:68", 400);
  const std::set<std::string> vlans = VlanDevices();
  ASSERT_EQ(vlans.size(), 1u);
  const std::string vlan_device = *vlans.begin();
  ASSERT_GE(vlan_device.size(), 10u);
  const std::string orphan = vlan_device.substr(0, 10) + "1f4";  // VLAN 500, nobody's
  ASSERT_EQ(Ip(absl::StrCat("link add link veth0 name ", orphan, " type vlan id 500")), 0);
  ASSERT_TRUE(broker_->Kill().ok());
  ASSERT_TRUE(broker_->Restart().ok());
  EXPECT_EQ(::if_nametoindex(orphan.c_str()), 0u) << "orphaned VLAN device survived the restart";
  EXPECT_NE(::if_nametoindex(vlan_device.c_str()), 0u) << "the live lease's VLAN device went";
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "v400-", 5, 400);
  wire.Send(Mac(a.mac), 5000, "plain-", 5);
  EXPECT_EQ(Report(a).second, Expected("v400-", 5));
  Finish(a);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(::if_nametoindex(vlan_device.c_str()), 0u) << "VLAN device outlived the re-adopted lease";
}

TEST_F(NicIntegrationTest, BrokerRestartReadoptsALiveNicLeaseAndRemovesOrphans) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:10");
  ASSERT_GE(a.device.size(), 10u);
  const std::string orphan = a.device.substr(0, 10) + "00ff";
  ASSERT_EQ(Ip(absl::StrCat("link add ", orphan, " link veth0 type macvlan mode private")), 0);
  // And a lease namespace a dead broker pinned that no record names, with a macvlan in it.
  const std::string orphan_ns = a.device.substr(0, 10) + "00fe";
  absl::StatusOr<UniqueFd> orphan_fd = netns::Create();
  ASSERT_TRUE(orphan_fd.ok()) << orphan_fd.status();
  ASSERT_TRUE(netns::Pin(orphan_fd->get(), PinPath(orphan_ns)).ok());
  ASSERT_TRUE(rtnl::CreateMacvlanInNetns(orphan_ns, static_cast<int>(::if_nametoindex("veth0")),
                                         {0x02, 0x76, 0x66, 0x00, 0x00, 0xfe},
                                         MACVLAN_MODE_PRIVATE, orphan_fd->get(), 0)
                  .ok());
  ASSERT_NE(LeaseIfindex(orphan_ns), 0);
  ASSERT_TRUE(broker_->Kill().ok());
  ASSERT_TRUE(broker_->Restart().ok());
  EXPECT_EQ(::if_nametoindex(orphan.c_str()), 0u) << "orphaned macvlan survived the restart";
  EXPECT_TRUE(absl::IsNotFound(netns::OpenPinned(PinPath(orphan_ns)).status()))
      << "an orphaned lease namespace's pin survived the restart";
  EXPECT_TRUE(netns::RunIn(orphan_fd->get(), [&] {
                return ::if_nametoindex(orphan_ns.c_str()) == 0
                           ? absl::OkStatus()
                           : absl::InternalError("still there");
              }).ok())
      << "the orphaned namespace's macvlan survived the restart";
  EXPECT_NE(LeaseIfindex(a.device), 0u) << "the live lease's macvlan was removed";
  // The data path never depended on the broker.
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "after-restart-", 10);
  EXPECT_EQ(Report(a).second, Expected("after-restart-", 10));
  // The restarted broker found the steering maps again: filters still change live.
  EXPECT_EQ(Command(a, "add 10.77.0.10 5000", "added"), "f1");
  wire.Send(Mac(a.mac), 5000, "p5000-", 5);
  wire.Send(Mac(a.mac), 5001, "p5001-", 5);
  EXPECT_EQ(Report(a).second, Expected("p5000-", 5));
  EXPECT_EQ(Command(a, "remove f1", "removed"), "OK");
  wire.Send(Mac(a.mac), 5001, "p5001-", 5);
  EXPECT_EQ(Report(a).second, Expected("p5001-", 5));
  Finish(a);  // releases through a new session
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(LeaseIfindex(a.device), 0u);
}


// A lease's socket belongs to a network namespace of the lease's own (the broker creates it
// there, unbound; the tenant binds it after mapping the rings, which Linux < 6.4 requires).
// That namespace holds the lease's macvlan (up) and a loopback that is down, nothing else; a
// bind to a device of the broker's namespace (the pool's interface) finds no such device, the
// bind to the lease's own device works, and only once.
TEST_F(NicIntegrationTest, HandedSocketIsConfinedToTheLeaseNamespace) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:13");
  std::vector<LeaseLink> links = LeaseLinks(a.device);
  std::set<std::string> seen;
  for (const LeaseLink& link : links) {
    seen.insert(absl::StrCat(link.name, link.up ? ":up" : ":down"));
  }
  EXPECT_EQ(seen, (std::set<std::string>{"lo:down", a.device + ":up"}));
  // The lease's device is not in the broker's namespace.
  EXPECT_EQ(::if_nametoindex(a.device.c_str()), 0u);

  const unsigned veth0 = ::if_nametoindex("veth0");
  ASSERT_NE(veth0, 0u);
  std::unique_ptr<Tenant> t = broker_->StartNicTenant(
      kTenantB, {"confined", "net", "02:76:66:00:00:14", std::to_string(veth0)});
  absl::StatusOr<std::map<std::string, std::string>> result = t->Finish();
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << t->output();
  EXPECT_EQ((*result)["tenant_binds"], "1") << t->output();
  EXPECT_EQ((*result)["foreign_bind"], "NOT_FOUND") << "bind to the pool interface's ifindex";
  EXPECT_EQ((*result)["adopt"], "OK") << t->output();
  EXPECT_NE((*result)["rebind"], "OK") << "a bound socket was bound again";
  Finish(a);
}

// An ended lease's namespace is reused for a later lease only once the old socket can never
// bind again: a tenant that never bound its socket and released the lease cannot bind it to
// the next lease's device, which lives in that same namespace (the broker hands out a used
// namespace first).
TEST_F(NicIntegrationTest, AReleasedUnboundSocketCannotBindToTheNextLeasesDevice) {
  std::unique_ptr<Tenant> old = broker_->StartNicTenant(
      kTenantA, {"keep_unbound", "net", "02:76:66:00:00:15"});
  absl::StatusOr<std::string> released = old->WaitForLine("released=", absl::Seconds(20));
  ASSERT_TRUE(released.ok()) << released.status() << "\n" << old->output();
  EXPECT_EQ(*released, "released=OK");
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  // The next lease's socket is not bound yet either: queue 0 of its device is free.
  std::unique_ptr<Tenant> next =
      broker_->StartNicTenant(kTenantB, {"take", "net", "02:76:66:00:00:16"});
  absl::StatusOr<std::string> device = next->WaitForLine("device=", absl::Seconds(20));
  ASSERT_TRUE(device.ok()) << device.status() << "\n" << next->output();
  const int next_ifindex = LeaseIfindex(device->substr(7));
  ASSERT_NE(next_ifindex, 0);
  ASSERT_TRUE(old->WriteLine(absl::StrCat("bind ", next_ifindex)).ok());
  absl::StatusOr<std::string> bound = old->WaitForLine("bound=", absl::Seconds(10));
  ASSERT_TRUE(bound.ok()) << bound.status();
  EXPECT_NE(*bound, "bound=OK") << "a released lease's socket bound to the next lease's device";
  std::printf("old socket, bind to the next lease's device (ifindex %d): %s\n", next_ifindex,
              bound->c_str());
  old->CloseStdin();
  EXPECT_TRUE(old->Finish().ok());
  next->CloseStdin();
  EXPECT_TRUE(next->Finish().ok());
}

// A graceful stop (SIGTERM) leaves live NIC leases working and guarded while no broker runs:
// frames still arrive, spoofed ones still stop at the egress guard; the next broker takes
// the lease back.
TEST_F(NicIntegrationTest, GracefulStopLeavesLeasesLiveAndGuarded) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:12");
  ASSERT_TRUE(broker_->Terminate().ok());
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "down-", 5);
  EXPECT_EQ(Report(a).second, Expected("down-", 5));
  wire.Drain();
  EXPECT_EQ(Command(a, absl::StrCat("send ", a.mac, " ", kPeerMacText,
                                    " 10.77.0.10 10.77.0.2 0 legit"), "sent"), "1");
  EXPECT_EQ(Command(a, absl::StrCat("send 02:76:66:00:00:0a ", kPeerMacText,
                                    " 10.77.0.10 10.77.0.2 0 spoofed"), "sent"), "1");
  std::set<std::string> got;
  for (const Wire::Seen& seen : wire.Receive(absl::Milliseconds(400))) got.insert(seen.payload);
  EXPECT_EQ(got, (std::set<std::string>{"legit"}));
  ASSERT_TRUE(broker_->Restart().ok());
  wire.Send(Mac(a.mac), 5000, "up-", 5);
  EXPECT_EQ(Report(a).second, Expected("up-", 5));
  Finish(a);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(LeaseIfindex(a.device), 0u);
}

// systemd's end of sd_notify(3), played for real: a datagram socket the broker's
// $NOTIFY_SOCKET names, and the messages it sent with the descriptors they carried
// (SCM_RIGHTS), as the service manager receives them.
class FakeSystemd {
 public:
  FakeSystemd() {
    char dir[] = "/tmp/vfbnotify.XXXXXX";
    if (::mkdtemp(dir) == nullptr) return;
    dir_ = dir;
    path_ = dir_ + "/notify";
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) fd_.reset();
  }
  ~FakeSystemd() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  bool ok() const { return fd_.valid(); }
  const std::string& path() const { return path_; }

  struct Message {
    std::string text;
    std::vector<UniqueFd> fds;
    bool Has(const std::string& line) const {
      for (absl::string_view l : absl::StrSplit(text, '\n')) {
        if (l == line) return true;
      }
      return false;
    }
  };
  // The first message received since message number `from` that has every line in `lines`
  // (waiting up to `timeout` for it); null if none came.
  const Message* WaitFor(const std::vector<std::string>& lines, absl::Duration timeout,
                         size_t from = 0) {
    const absl::Time deadline = absl::Now() + timeout;
    Receive(absl::ZeroDuration());  // what was sent already, even with no time to wait
    for (size_t i = from;; ++i) {
      while (i >= messages_.size()) {
        if (absl::Now() > deadline) return nullptr;
        Receive(absl::Milliseconds(20));
      }
      bool all = true;
      for (const std::string& line : lines) all = all && messages_[i].Has(line);
      if (all) return &messages_[i];
    }
  }
  // How many messages arrived so far (after reading what is there).
  size_t count() {
    Receive(absl::ZeroDuration());
    return messages_.size();
  }

 private:
  void Receive(absl::Duration wait) {
    pollfd pfd{fd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(wait))) <= 0) return;
    while (true) {
      char text[4096];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      iovec iov{text, sizeof(text)};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      const ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
      if (n < 0) return;
      Message m;
      m.text.assign(text, static_cast<size_t>(n));
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < count; ++k) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
          m.fds.emplace_back(fd);
        }
      }
      messages_.push_back(std::move(m));
    }
  }

  std::string dir_, path_;
  UniqueFd fd_;
  std::deque<Message> messages_;  // deque: pointers handed out stay valid
};

// The broker run as systemd runs it (deploy/systemd: $NOTIFY_SOCKET set), with the test as
// the service manager.
class NicFdStoreTest : public NicIntegrationTest {
 protected:
  void SetUp() override {
    systemd_ = std::make_unique<FakeSystemd>();
    ASSERT_TRUE(systemd_->ok());
    notify_socket_ = systemd_->path();
    NicIntegrationTest::SetUp();
  }
  std::unique_ptr<FakeSystemd> systemd_;
};

bool IsNetns(int fd) { return ::ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET; }

// Under systemd the pins live in the unit's private mount namespace and die with the broker.
// The broker stores every lease namespace in systemd's fd store; systemd restarts it with
// those descriptors at fd 3.. (LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID), and it re-adopts the
// lease through them: the test kills the broker, removes the pins (what the mount namespace's
// death does), and restarts it the way systemd would. A stored namespace no journal record
// names is cleaned (its macvlan deleted) and removed from the store.
TEST_F(NicFdStoreTest, RestartedBrokerReadoptsLeasesFromSystemdsFdStoreWithoutPins) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:20");
  ASSERT_GE(a.device.size(), 10u);
  const std::string name = "netns-" + a.device;
  const FakeSystemd::Message* stored =
      systemd_->WaitFor({"FDSTORE=1", "FDNAME=" + name}, absl::Seconds(10));
  ASSERT_NE(stored, nullptr) << "no FDSTORE=1 message for " << name;
  ASSERT_EQ(stored->fds.size(), 1u);
  const int lease_ns = stored->fds[0].get();
  ASSERT_TRUE(IsNetns(lease_ns));
  {
    absl::StatusOr<UniqueFd> pinned = netns::OpenPinned(PinPath(a.device));
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    EXPECT_EQ(*netns::Inode(lease_ns), *netns::Inode(pinned->get()))
        << "the stored descriptor is not the lease's namespace";
  }
  // A namespace in the store that no journal record names (say, of a grant the broker did not
  // live to journal), holding one of the pool's devices.
  const std::string orphan = a.device.substr(0, 10) + "00fd";
  absl::StatusOr<UniqueFd> orphan_ns = netns::Create();
  ASSERT_TRUE(orphan_ns.ok()) << orphan_ns.status();
  ASSERT_TRUE(rtnl::CreateMacvlanInNetns(orphan, static_cast<int>(::if_nametoindex("veth0")),
                                         {0x02, 0x76, 0x66, 0x00, 0x00, 0xfd},
                                         MACVLAN_MODE_PRIVATE, orphan_ns->get(), 0)
                  .ok());
  auto device_in = [](int ns, const std::string& device) {
    bool there = false;
    EXPECT_TRUE(netns::RunIn(ns, [&] {
                  there = ::if_nametoindex(device.c_str()) != 0;
                  return absl::OkStatus();
                }).ok());
    return there;
  };
  ASSERT_TRUE(device_in(orphan_ns->get(), orphan));

  ASSERT_TRUE(broker_->Kill().ok());
  ASSERT_TRUE(netns::Unpin(PinPath(a.device)).ok());
  ASSERT_TRUE(absl::IsNotFound(netns::OpenPinned(PinPath(a.device)).status()));
  const size_t before_restart = systemd_->count();
  ASSERT_TRUE(broker_->Restart({{name, lease_ns}, {"netns-" + orphan, orphan_ns->get()}}).ok());
  const std::string log = broker_->log();
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "fd store") || absl::StrContains(line, "re-adopted") ||
        absl::StrContains(line, "orphaned lease namespace")) {
      std::printf("broker: %s\n", std::string(line).c_str());
    }
  }
  EXPECT_NE(log.find("2 lease namespaces came back from systemd's file descriptor store"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find(absl::StrCat("device=", a.device,
                                  ": lease namespace re-adopted (from systemd's fd store)")),
            std::string::npos)
      << log;

  // The orphan: its macvlan deleted, and out of the store.
  EXPECT_NE(systemd_->WaitFor({"FDSTOREREMOVE=1", "FDNAME=netns-" + orphan}, absl::Seconds(5),
                              before_restart),
            nullptr)
      << "the orphaned namespace was not removed from the store";
  EXPECT_FALSE(device_in(orphan_ns->get(), orphan)) << "the orphaned namespace's macvlan lives";

  // The lease: traffic still arrives, filters still change (the steering program adopted
  // through the device, inside the stored namespace), and nothing asked to drop it yet.
  EXPECT_TRUE(device_in(lease_ns, a.device));
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "stored-", 10);
  EXPECT_EQ(Report(a).second, Expected("stored-", 10));
  EXPECT_EQ(Command(a, "add 10.77.0.10 5000", "added"), "f1");
  wire.Send(Mac(a.mac), 5000, "p5000-", 5);
  wire.Send(Mac(a.mac), 5001, "p5001-", 5);
  EXPECT_EQ(Report(a).second, Expected("p5000-", 5));
  EXPECT_EQ(systemd_->WaitFor({"FDSTOREREMOVE=1", "FDNAME=" + name}, absl::ZeroDuration(),
                              before_restart),
            nullptr)
      << "a live lease's namespace was removed from the store";

  // Released: the macvlan inside the stored namespace is deleted and the entry leaves the
  // store.
  Finish(a);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_FALSE(device_in(lease_ns, a.device)) << "the released lease's macvlan lives";
  EXPECT_NE(systemd_->WaitFor({"FDSTOREREMOVE=1", "FDNAME=" + name}, absl::Seconds(5),
                              before_restart),
            nullptr)
      << "the released lease's namespace stayed in the store";
}

// A tenant that died while no broker ran: the restarted broker reclaims its lease, reaching the
// macvlan through the stored namespace (the pin is gone), deletes it and drops the store entry.
TEST_F(NicFdStoreTest, LeaseOfATenantThatDiedWhileTheBrokerWasDownIsReclaimedThroughTheStore) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:22");
  const std::string name = "netns-" + a.device;
  const FakeSystemd::Message* stored =
      systemd_->WaitFor({"FDSTORE=1", "FDNAME=" + name}, absl::Seconds(10));
  ASSERT_NE(stored, nullptr) << "no FDSTORE=1 message for " << name;
  ASSERT_EQ(stored->fds.size(), 1u);
  const int lease_ns = stored->fds[0].get();
  ASSERT_TRUE(IsNetns(lease_ns));
  ASSERT_TRUE(broker_->Kill().ok());
  ASSERT_TRUE(netns::Unpin(PinPath(a.device)).ok());
  a.tenant->Kill();
  // The namespace lives on through the stored descriptor, and the macvlan in it.
  bool there = false;
  ASSERT_TRUE(netns::RunIn(lease_ns, [&] {
                there = ::if_nametoindex(a.device.c_str()) != 0;
                return absl::OkStatus();
              }).ok());
  ASSERT_TRUE(there);
  const size_t before_restart = systemd_->count();
  ASSERT_TRUE(broker_->Restart({{name, lease_ns}}).ok());
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  ASSERT_TRUE(netns::RunIn(lease_ns, [&] {
                there = ::if_nametoindex(a.device.c_str()) != 0;
                return absl::OkStatus();
              }).ok());
  EXPECT_FALSE(there) << "the dead tenant's macvlan lives in the stored namespace";
  EXPECT_NE(systemd_->WaitFor({"FDSTOREREMOVE=1", "FDNAME=" + name}, absl::Seconds(5),
                              before_restart),
            nullptr)
      << "the reclaimed lease's namespace stayed in the store";
  EXPECT_EQ(broker_->log().find("is neither pinned nor in the fd store"), std::string::npos)
      << broker_->log();
}

// Outside systemd (no $NOTIFY_SOCKET) the broker sends nothing and takes no descriptors:
// LISTEN_FDS alone (e.g. inherited by accident) is left alone. (The pins then are all there
// is: every other test here.)
TEST_F(NicIntegrationTest, WithoutNotifySocketTheFdStoreIsNotUsed) {
  Holder a = Hold(kTenantA, "02:76:66:00:00:21");
  ASSERT_TRUE(broker_->Kill().ok());
  absl::StatusOr<UniqueFd> pinned = netns::OpenPinned(PinPath(a.device));
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(broker_->Restart({{"netns-" + a.device, pinned->get()}}).ok());
  EXPECT_EQ(broker_->log().find("came back from systemd's file descriptor store"),
            std::string::npos);
  EXPECT_NE(broker_->log().find(absl::StrCat("device=", a.device,
                                             ": lease namespace re-adopted (through its pin)")),
            std::string::npos)
      << broker_->log();
  Wire wire;
  wire.Send(Mac(a.mac), 5000, "pinned-", 5);
  EXPECT_EQ(Report(a).second, Expected("pinned-", 5));
  Finish(a);
  ASSERT_TRUE(broker_->WaitForIdle().ok());
  EXPECT_EQ(LeaseIfindex(a.device), 0);
}

}  // namespace
}  // namespace vfbroker::testing

int main(int argc, char** argv) {
  // A probe that died (e.g. its lease could not be adopted) must fail its test, not kill the
  // whole binary with SIGPIPE when the test writes it a command.
  ::signal(SIGPIPE, SIG_IGN);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new vfbroker::testing::NetnsEnvironment);
  return RUN_ALL_TESTS();
}
