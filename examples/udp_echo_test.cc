// udp_echo end to end on a veth pair, as root: the test moves itself into a network namespace
// of its own (unshare(CLONE_NEWNET); the devices and the XDP program vanish with the process),
// starts the udp_echo binary in --self_provision mode on veth0 (no kernel address: every frame
// of its queue goes to the AF_XDP port), and sends datagrams from a kernel UDP socket on the
// peer end veth1 (10.77.2.2). Every datagram must come back with its payload, from the address
// it was sent to (10.77.2.1:7) to the address it came from: the peer's kernel accepts a frame
// only if its destination MAC is veth1's and its IPv4 and UDP checksums verify, and an
// AF_PACKET socket on veth1 checks the headers of every echo explicitly as well.
//
// Needs root (skips otherwise); tagged local/exclusive.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/unique_fd.h"
#include "gtest/gtest.h"
#include "vfdrivers/net/packet.h"

namespace {

namespace packet = vfdrivers::net::packet;
using packet::Ipv4;
using vfbroker::UniqueFd;

const char kEchoMac[] = "02:76:66:00:02:01";
const char kPeerMac[] = "02:76:66:00:02:02";
const packet::MacAddress kEchoMacBytes{{0x02, 0x76, 0x66, 0x00, 0x02, 0x01}};
const packet::MacAddress kPeerMacBytes{{0x02, 0x76, 0x66, 0x00, 0x02, 0x02}};
constexpr uint32_t kEchoIp = Ipv4(10, 77, 2, 1);
constexpr uint32_t kPeerIp = Ipv4(10, 77, 2, 2);
constexpr uint16_t kEchoPort = 7;
constexpr uint16_t kPeerPort = 5000;

int Shell(const std::string& command) {
  std::string cmd = command + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return -1;
  char buf[512];
  std::string out;
  while (fgets(buf, sizeof(buf), f) != nullptr) out += buf;
  int st = pclose(f);
  if (st != 0) fprintf(stderr, "`%s` failed: %s\n", command.c_str(), out.c_str());
  return st;
}

void WriteFile(const char* path, const char* value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!write(fd, value, strlen(value));
  close(fd);
}

// veth TX checksum offload on or off (SIOCETHTOOL ETHTOOL_STXCSUM, as `ethtool -K IF tx`).
// On (veth's default), a local UDP socket's frames carry only the pseudo-header sum in the UDP
// checksum field (CHECKSUM_PARTIAL): fine for the kernel, not for a raw receiver.
bool SetTxChecksumOffload(const char* ifname, bool on) {
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ethtool_value value{};
  value.cmd = ETHTOOL_STXCSUM;
  value.data = on ? 1 : 0;
  ifreq ifr{};
  snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
  ifr.ifr_data = reinterpret_cast<char*>(&value);
  if (ioctl(fd.get(), SIOCETHTOOL, &ifr) != 0) {
    perror("SIOCETHTOOL");
    return false;
  }
  return true;
}

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/vfbroker/", path);
}

// /proc/net/snmp counter `name` of section `section` ("Udp", "Ip") in this namespace.
long Snmp(const std::string& section, const std::string& name) {
  FILE* f = fopen("/proc/net/snmp", "r");
  if (f == nullptr) return -1;
  char line[2048];
  std::vector<std::string> names;
  long value = -1;
  const std::string prefix = section + ":";
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strncmp(line, prefix.c_str(), prefix.size()) != 0) continue;
    std::vector<std::string> fields = absl::StrSplit(
        absl::string_view(line).substr(prefix.size()), ' ', absl::SkipWhitespace());
    if (names.empty()) {
      names = fields;
      continue;
    }
    for (size_t i = 0; i < names.size() && i < fields.size(); ++i) {
      if (names[i] == name) value = atol(fields[i].c_str());
    }
    break;
  }
  fclose(f);
  return value;
}

// The udp_echo process: started with its stdout on a pipe, "ready" awaited.
class EchoProcess {
 public:
  bool Start(const std::vector<std::string>& args) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return false;
    std::vector<std::string> argv_s = {Runfile("examples/udp_echo")};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    fflush(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      std::vector<char*> argv;
      for (std::string& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    out_.reset(out[0]);
    if (pid_ < 0) return false;
    return ReadLine(std::chrono::seconds(20)) == "ready";
  }
  // SIGTERM, then its counters line.
  std::string Stop() {
    if (pid_ <= 0) return "";
    kill(pid_, SIGTERM);
    std::string line = ReadLine(std::chrono::seconds(10));
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return line;
  }
  ~EchoProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

 private:
  std::string ReadLine(std::chrono::milliseconds wait) {
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_.get(), POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char c;
      if (read(out_.get(), &c, 1) != 1) break;
      if (c == '\n') return line;
      line += c;
    }
    return line;
  }
  pid_t pid_ = -1;
  UniqueFd out_;
};

class UdpEchoVethTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespace, AF_XDP, BPF)";
    ASSERT_EQ(unshare(CLONE_NEWNET), 0) << strerror(errno);
    WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    ASSERT_EQ(Shell("ip link add veth0 type veth peer name veth1"), 0);
    ASSERT_EQ(Shell(absl::StrCat("ip link set veth0 address ", kEchoMac)), 0);
    ASSERT_EQ(Shell(absl::StrCat("ip link set veth1 address ", kPeerMac)), 0);
    ASSERT_EQ(Shell("ip addr add 10.77.2.2/24 dev veth1"), 0);
    // The echo side answers no ARP (every frame goes to the port): a static neighbour.
    ASSERT_EQ(Shell(absl::StrCat("ip neigh add 10.77.2.1 lladdr ", kEchoMac,
                               " dev veth1 nud permanent")),
              0);
    ASSERT_EQ(Shell("ip link set veth0 up"), 0);
    ASSERT_EQ(Shell("ip link set veth1 up"), 0);
    ASSERT_EQ(Shell("ip link set lo up"), 0);

    peer_.reset(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    int one = 1;
    ASSERT_EQ(setsockopt(peer_.get(), IPPROTO_IP, IP_RECVTTL, &one, sizeof(one)), 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(kPeerPort);
    a.sin_addr.s_addr = htonl(kPeerIp);
    ASSERT_EQ(bind(peer_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    // Every IPv4 frame veth1 receives, to check the echoes' headers themselves.
    capture_.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP)));
    ASSERT_TRUE(capture_.valid());
    int rcvbuf = 8 << 20;  // the requests are captured too (PACKET_OUTGOING)
    ASSERT_EQ(setsockopt(capture_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)), 0);
    sockaddr_ll ll{};
    ll.sll_family = AF_PACKET;
    ll.sll_protocol = htons(ETH_P_IP);
    ll.sll_ifindex = static_cast<int>(if_nametoindex("veth1"));
    ASSERT_EQ(bind(capture_.get(), reinterpret_cast<sockaddr*>(&ll), sizeof(ll)), 0);
  }

  void SendTo(uint16_t port, const std::string& payload) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(kEchoIp);
    ASSERT_EQ(sendto(peer_.get(), payload.data(), payload.size(), 0,
                     reinterpret_cast<sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(payload.size()))
        << strerror(errno);
  }

  // One datagram from the peer socket: payload, source, TTL. False on timeout.
  bool Receive(std::string* payload, sockaddr_in* from, int* ttl, int timeout_ms = 2000) {
    pollfd p{peer_.get(), POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return false;
    char buf[2048];
    char control[64];
    iovec iov{buf, sizeof(buf)};
    msghdr m{};
    m.msg_name = from;
    m.msg_namelen = sizeof(*from);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(peer_.get(), &m, MSG_DONTWAIT);
    if (n < 0) return false;
    *ttl = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL) {
        memcpy(ttl, CMSG_DATA(c), sizeof(int));
      }
    }
    payload->assign(buf, static_cast<size_t>(n));
    return true;
  }

  // Checks every echo frame captured on veth1 so far; returns how many there were.
  int CheckCapturedEchoes(std::set<std::string>* payloads) {
    int echoes = 0;
    for (;;) {
      uint8_t frame[2048];
      sockaddr_ll from{};
      socklen_t len = sizeof(from);
      ssize_t n = recvfrom(capture_.get(), frame, sizeof(frame), MSG_DONTWAIT,
                           reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) break;
      if (from.sll_pkttype == PACKET_OUTGOING) continue;  // the peer's own requests
      packet::UdpView v;
      EXPECT_EQ(packet::ParseUdp(frame, static_cast<size_t>(n), &v), packet::ParseResult::kOk)
          << "echo whose checksums do not verify";
      EXPECT_EQ(v.eth.dst, kPeerMacBytes);
      EXPECT_EQ(v.eth.src, kEchoMacBytes);
      EXPECT_EQ(v.src_ip, kEchoIp);
      EXPECT_EQ(v.dst_ip, kPeerIp);
      EXPECT_EQ(v.src_port, kEchoPort);
      EXPECT_EQ(v.dst_port, kPeerPort);
      EXPECT_EQ(v.ttl, 64);
      EXPECT_TRUE(v.udp_checksum_present);
      payloads->insert(std::string(reinterpret_cast<const char*>(v.payload), v.payload_length));
      ++echoes;
    }
    return echoes;
  }

  // N datagrams one at a time (each must come back before the next), then a burst of
  // `burst` sent at once; every echo checked at the socket and on the wire.
  void PingPongAndBurst(int n, int burst) {
    const long csum_before = Snmp("Udp", "InCsumErrors");
    const long hdr_before = Snmp("Ip", "InHdrErrors");
    std::set<std::string> sent;
    std::set<std::string> got;
    std::set<std::string> on_wire;
    int captured = 0;
    for (int i = 0; i < n; ++i) {
      const std::string p = absl::StrCat("vfbroker-echo-", i, std::string(i % 64, 'x'));
      SendTo(kEchoPort, p);
      sent.insert(p);
      std::string r;
      sockaddr_in from{};
      int ttl = 0;
      ASSERT_TRUE(Receive(&r, &from, &ttl)) << "no echo of datagram " << i;
      EXPECT_EQ(r, p);
      EXPECT_EQ(ntohl(from.sin_addr.s_addr), kEchoIp);
      EXPECT_EQ(ntohs(from.sin_port), kEchoPort);
      EXPECT_EQ(ttl, 64);
      got.insert(r);
      captured += CheckCapturedEchoes(&on_wire);
    }
    for (int i = 0; i < burst; ++i) {
      const std::string p = absl::StrCat("vfbroker-burst-", i);
      SendTo(kEchoPort, p);
      sent.insert(p);
    }
    for (int i = 0; i < burst; ++i) {
      std::string r;
      sockaddr_in from{};
      int ttl = 0;
      ASSERT_TRUE(Receive(&r, &from, &ttl)) << "burst: " << i << " of " << burst << " back";
      EXPECT_EQ(ntohs(from.sin_port), kEchoPort);
      got.insert(r);
    }
    EXPECT_EQ(got, sent);
    // A datagram to another port is not for the echo (--udp_port): nothing comes back.
    SendTo(kEchoPort + 1, "not-for-the-echo");
    std::string r;
    sockaddr_in from{};
    int ttl = 0;
    EXPECT_FALSE(Receive(&r, &from, &ttl, 300)) << "echoed: " << r;

    captured += CheckCapturedEchoes(&on_wire);
    EXPECT_EQ(captured, n + burst);
    EXPECT_EQ(on_wire, sent);
    EXPECT_EQ(Snmp("Udp", "InCsumErrors"), csum_before);
    EXPECT_EQ(Snmp("Ip", "InHdrErrors"), hdr_before);
  }

  UniqueFd peer_;
  UniqueFd capture_;
};

constexpr int kPingPong = 200;
constexpr int kBurst = 64;

// The peer computes its UDP checksums in full (TX offload off, as on a wire): the echo
// verifies them and only swaps (the sums stay valid), with the RFC 1624 update for the TTL.
TEST_F(UdpEchoVethTest, EchoesWithSwappedAddressesKeepingChecksums) {
  ASSERT_TRUE(SetTxChecksumOffload("veth1", false));
  EchoProcess echo;
  ASSERT_TRUE(echo.Start({"--self_provision", "--interface=veth0", "--xdp_mode=native",
                          "--udp_port=7", "--verify", "--checksum=keep", "--frames=512",
                          "--ring_size=256"}));
  PingPongAndBurst(kPingPong, kBurst);
  const std::string stats = echo.Stop();
  fprintf(stderr, "%s\n", stats.c_str());
  EXPECT_NE(stats.find(absl::StrCat("echoed=", kPingPong + kBurst, " ")), std::string::npos)
      << stats;
  EXPECT_NE(stats.find("bad_descriptors=0"), std::string::npos) << stats;
}

// veth's default: the peer's frames carry a partial UDP checksum (CHECKSUM_PARTIAL); the echo
// recomputes it in full. Generic XDP this time.
TEST_F(UdpEchoVethTest, EchoesRecomputingPartialChecksumsGenericXdp) {
  EchoProcess echo;
  ASSERT_TRUE(echo.Start({"--self_provision", "--interface=veth0", "--xdp_mode=generic",
                          "--udp_port=7", "--checksum=recompute", "--frames=512",
                          "--ring_size=256"}));
  PingPongAndBurst(kPingPong, kBurst);
  const std::string stats = echo.Stop();
  fprintf(stderr, "%s\n", stats.c_str());
  EXPECT_NE(stats.find(absl::StrCat("echoed=", kPingPong + kBurst, " ")), std::string::npos)
      << stats;
}

}  // namespace
