// AF_XDP end to end with real kernel objects, the test playing the broker.
//
// Each test moves the test process into a network namespace of its own (unshare(CLONE_NEWNET))
// and builds its devices there, so nothing touches the host's network and everything (veth,
// macvlan, the XDP program, the sockets) disappears with the process, even if it crashes.
// As root (the broker) it creates the UMEM memfd and the AF_XDP socket, binds it, attaches the
// redirect program, and passes the two descriptors over a Unix socket (SCM_RIGHTS) to a child
// that drops to uid/gid 60001 with no groups and no capabilities (the tenant). The tenant
// adopts them as an AfXdpPort; frames sent by the peer end must arrive at the port intact, and
// frames the port sends must reach a kernel UDP socket at the peer (whose stack verifies the
// IPv4 and UDP checksums we computed).
//
// Needs root (skips otherwise); tagged local/exclusive.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/fd_passing.h"
#include "common/unique_fd.h"
#include "gtest/gtest.h"
#include "vfdrivers/net/af_xdp_port.h"
#include "vfdrivers/net/af_xdp_socket.h"
#include "vfdrivers/net/packet.h"
#include "vfdrivers/net/tc_egress_guard.h"
#include "vfdrivers/net/xdp/xdp_objects.h"
#include "vfdrivers/net/xdp_program.h"
#include "vfdrivers/net/xdp_steering.h"

namespace vfdrivers::net {
namespace {

using packet::Ipv4;
using packet::MacAddress;
using vfbroker::UniqueFd;

constexpr uid_t kTenantUid = 60001;
constexpr gid_t kTenantGid = 60001;

const MacAddress kPortMac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x01}};
const MacAddress kPeerMac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x02}};
const MacAddress kTenantBMac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x0b}};
constexpr uint32_t kPortIp = Ipv4(10, 77, 0, 1);
constexpr uint32_t kPeerIp = Ipv4(10, 77, 0, 2);
constexpr uint32_t kTenantBIp = Ipv4(10, 77, 0, 11);
constexpr uint16_t kPortUdp = 6000;
constexpr uint16_t kPeerUdp = 7000;

// A UDP frame from a tenant (its MAC and IPv4 address, port kPortUdp) to the peer on veth1.
packet::UdpSpec TenantToPeer(const MacAddress& mac, uint32_t ip) {
  packet::UdpSpec spec;
  spec.src_mac = mac;
  spec.dst_mac = kPeerMac;
  spec.src_ip = ip;
  spec.dst_ip = kPeerIp;
  spec.src_port = kPortUdp;
  spec.dst_port = kPeerUdp;
  return spec;
}

std::string MacString(const MacAddress& m) {
  char s[18];
  snprintf(s, sizeof(s), "%02x:%02x:%02x:%02x:%02x:%02x", m.bytes[0], m.bytes[1], m.bytes[2],
           m.bytes[3], m.bytes[4], m.bytes[5]);
  return s;
}

// Runs `ip ...` (iproute2) in the current network namespace; returns its exit status.
int Ip(const std::string& args) {
  std::string cmd = "ip " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return -1;
  char buf[512];
  std::string out;
  while (fgets(buf, sizeof(buf), f) != nullptr) out += buf;
  int st = pclose(f);
  if (st != 0) fprintf(stderr, "`%s` failed: %s\n", cmd.c_str(), out.c_str());
  return st;
}

void WriteFile(const char* path, const char* value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!write(fd, value, strlen(value));
  close(fd);
}

// A fresh network namespace for this process with veth0 (the tenant's device, no address)
// and veth1 (the peer, 10.77.0.2/24).
bool EnterFreshNetnsWithVeth() {
  if (unshare(CLONE_NEWNET) != 0) {
    perror("unshare(CLONE_NEWNET)");
    return false;
  }
  // No IPv6 chatter (router solicitations, DAD) on the new devices.
  WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
  WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
  return Ip("link add veth0 type veth peer name veth1") == 0 &&
         Ip("link set veth0 address " + MacString(kPortMac)) == 0 &&
         Ip("link set veth1 address " + MacString(kPeerMac)) == 0 &&
         Ip("addr add 10.77.0.2/24 dev veth1") == 0 && Ip("link set veth0 up") == 0 &&
         Ip("link set veth1 up") == 0 && Ip("link set lo up") == 0;
}

std::string EncodeLayout(const AfXdpLayout& l) {
  return absl::StrCat(l.frame_size, " ", l.frame_count, " ", l.frame_headroom, " ", l.fill_size,
                      " ", l.completion_size, " ", l.rx_size, " ", l.tx_size, " ",
                      l.need_wakeup ? 1 : 0, " ", l.queue_id);
}

bool DecodeLayout(const std::string& s, AfXdpLayout* l) {
  unsigned v[9];
  if (sscanf(s.c_str(), "%u %u %u %u %u %u %u %u %u", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
             &v[6], &v[7], &v[8]) != 9) {
    return false;
  }
  *l = AfXdpLayout{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7] != 0, v[8]};
  return true;
}

std::string RxPayload(int i) { return absl::StrCat("vfbroker-rx-", i); }
std::string TxPayload(int i) { return absl::StrCat("vfbroker-tx-", i); }

// What a tenant does, in the child. Returns "" or what went wrong.
struct TenantPlan {
  std::string name;
  MacAddress mac;     // the tenant's device address (source of its frames)
  uint32_t ip = 0;
  int expect_rx = 0;  // frames with RxPayload(i) it must receive (i in [0, expect_rx))
  std::string rx_tag; // prefix every received payload must carry
  int tx = 0;         // frames to send to the peer
  bool vlan_odd = false;  // odd-numbered received frames carry VLAN 42
  // Small rings: frames the kernel could not place (XDP_STATISTICS rx_dropped, rx_ring_full)
  // count as accounted for; every frame must be received once or counted, none twice.
  bool account_drops = false;
};

std::string DropPrivileges() {
  if (setgroups(0, nullptr) != 0) return "setgroups";
  if (setgid(kTenantGid) != 0) return "setgid";
  if (setuid(kTenantUid) != 0) return "setuid";
  if (getuid() != kTenantUid || geteuid() != kTenantUid || getegid() != kTenantGid) {
    return "still privileged";
  }
  return "";
}

std::string TenantMain(int session, const TenantPlan& plan) {
  std::string payload;
  std::vector<UniqueFd> fds;
  if (auto s = vfbroker::ReceiveWithFds(session, absl::Seconds(20), &payload, &fds); !s.ok()) {
    return "receive: " + s.ToString();
  }
  if (fds.size() != 2) return absl::StrCat("got ", fds.size(), " fds");
  AfXdpLayout layout;
  if (!DecodeLayout(payload, &layout)) return "bad layout message";
  if (std::string e = DropPrivileges(); !e.empty()) return e;

  // What the tenant must not be able to do with what it holds.
  if (socket(AF_XDP, SOCK_RAW, 0) >= 0 || errno != EPERM) {
    return "an unprivileged tenant could create an AF_XDP socket";
  }
  uint32_t ring = 64;
  if (setsockopt(fds[0].get(), SOL_XDP, XDP_RX_RING, &ring, sizeof(ring)) == 0) {
    return "a bound socket accepted a new ring size";
  }
  sockaddr_xdp sxdp{};
  sxdp.sxdp_family = AF_XDP;
  sxdp.sxdp_ifindex = 1;  // lo
  if (bind(fds[0].get(), reinterpret_cast<sockaddr*>(&sxdp), sizeof(sxdp)) == 0) {
    return "a bound socket could be bound again";
  }
  if (ftruncate(fds[1].get(), 4096) == 0) return "the UMEM memfd could be shrunk";
  int mark = 0;
  if (setsockopt(fds[0].get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0) {
    return "the tenant could change its socket's mark (the egress guard's key)";
  }

  auto port_or = AfXdpPort::Adopt(std::move(fds[0]), std::move(fds[1]), layout);
  if (!port_or.ok()) return "adopt: " + port_or.status().ToString();
  AfXdpPort& port = **port_or;
  if (auto s = vfbroker::SendWithFds(session, "ready", {}); !s.ok()) return "ready: " + s.ToString();

  // Receive.
  std::set<int> got;
  int foreign = 0;
  uint64_t kernel_drops = 0;
  PacketBuffer bufs[32];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (static_cast<int>(got.size() + kernel_drops) < plan.expect_rx &&
         std::chrono::steady_clock::now() < deadline) {
    size_t n = port.RxBurst(absl::MakeSpan(bufs));
    for (size_t i = 0; i < n; ++i) {
      packet::UdpView v;
      packet::ParseResult r = packet::ParseUdp(bufs[i].data, bufs[i].length, &v);
      std::string p = r == packet::ParseResult::kOk
                          ? std::string(reinterpret_cast<const char*>(v.payload), v.payload_length)
                          : std::string();
      const std::string want = plan.rx_tag + "vfbroker-rx-";
      if (p.rfind(want, 0) != 0) {
        // Not one of this tenant's frames. Must never be another tenant's.
        if (!p.empty()) return "received someone else's frame: " + p;
        ++foreign;
        continue;
      }
      if (v.eth.dst != plan.mac || v.dst_ip != plan.ip || v.dst_port != kPortUdp) {
        return "frame with wrong addresses: " + p;
      }
      int idx = atoi(p.c_str() + want.size());
      const bool tagged = plan.vlan_odd && (idx % 2 == 1);
      if (v.eth.has_vlan != tagged || (tagged && (v.eth.vlan_tci & 0x0FFF) != 42)) {
        return "VLAN tag not as sent: " + p;
      }
      if (!got.insert(idx).second) return "received twice: " + p;
    }
    if (port.FreeBurst(absl::MakeConstSpan(bufs, n)) != n) return "FreeBurst refused buffers";
    if (n == 0) {
      pollfd pfd{port.fd(), POLLIN, 0};
      poll(&pfd, 1, 10);
      if (plan.account_drops) {
        auto k = port.KernelStatistics();
        if (!k.ok()) return k.status().ToString();
        kernel_drops = k->rx_dropped + k->rx_ring_full;
      }
    }
  }
  if (kernel_drops > 0) fprintf(stderr, "tenant %s: kernel dropped %llu (rings full)\n",
                                plan.name.c_str(), static_cast<unsigned long long>(kernel_drops));
  if (static_cast<int>(got.size() + kernel_drops) != plan.expect_rx || got.empty()) {
    auto k = port.KernelStatistics();
    return absl::StrCat("received ", got.size(), " of ", plan.expect_rx, " frames (", foreign,
                        " others); kernel: ",
                        k.ok() ? absl::StrCat("rx_dropped ", k->rx_dropped, " rx_ring_full ",
                                              k->rx_ring_full, " fill_ring_empty ",
                                              k->rx_fill_ring_empty_descs)
                               : k.status().ToString());
  }

  // Transmit, in bursts, building each frame in place in its buffer.
  packet::UdpSpec spec = TenantToPeer(plan.mac, plan.ip);
  int sent = 0;
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (sent < plan.tx && std::chrono::steady_clock::now() < deadline) {
    size_t want = std::min<size_t>(16, plan.tx - sent);
    size_t n = port.AllocBurst(absl::MakeSpan(bufs, want));
    for (size_t i = 0; i < n; ++i) {
      std::string p = plan.rx_tag + TxPayload(sent + static_cast<int>(i));
      spec.ip_id = static_cast<uint16_t>(sent + i);
      bufs[i].length = static_cast<uint32_t>(packet::BuildUdp(
          spec, reinterpret_cast<const uint8_t*>(p.data()), p.size(), bufs[i].data,
          bufs[i].capacity));
      if (bufs[i].length == 0) return "BuildUdp failed";
    }
    size_t queued = port.TxBurst(absl::MakeConstSpan(bufs, n));
    port.FreeBurst(absl::MakeConstSpan(bufs + queued, n - queued));
    sent += static_cast<int>(queued);
    port.Service();
  }
  // One more frame whose UDP checksum is wrong: the peer's stack must drop it, which shows
  // that it checks the checksums the frames above carried.
  {
    PacketBuffer bad;
    if (port.AllocBurst(absl::MakeSpan(&bad, 1)) != 1) return "no buffer";
    std::string p = plan.rx_tag + "bad-checksum";
    bad.length = static_cast<uint32_t>(packet::BuildUdp(
        spec, reinterpret_cast<const uint8_t*>(p.data()), p.size(), bad.data, bad.capacity));
    bad.data[bad.length - 1] ^= 0x01;
    if (port.TxBurst(absl::MakeConstSpan(&bad, 1)) != 1) return "TxBurst of the bad frame";
  }
  while (port.tx_frames() > 0 && std::chrono::steady_clock::now() < deadline) port.Service();
  if (port.tx_frames() != 0) return absl::StrCat(port.tx_frames(), " frames never completed");

  const PortStats& st = port.stats();
  if (st.bad_descriptors != 0 || st.bad_buffers != 0) {
    return absl::StrCat("bad descriptors ", st.bad_descriptors, ", bad buffers ", st.bad_buffers);
  }
  if (st.tx_completed != static_cast<uint64_t>(plan.tx) + 1) {
    return absl::StrCat("tx_completed ", st.tx_completed);
  }
  std::string report = absl::StrCat("done rx=", st.rx_packets, " tx=", st.tx_packets,
                                    " wakeups=", st.wakeups, " zc=", port.info().zero_copy);
  (void)vfbroker::SendWithFds(session, report, {});
  return "";
}

// The broker's side for one tenant device: socket + UMEM + program, handed to a child.
struct Tenant {
  pid_t pid = -1;
  UniqueFd session;  // our end of the socketpair
  AfXdpSocket xsk;
  std::unique_ptr<XdpProgram> program;
};

AfXdpLayout TestLayout() {
  AfXdpLayout l;
  l.frame_size = 4096;
  l.frame_count = 512;
  l.fill_size = 256;
  l.completion_size = 256;
  l.rx_size = 256;
  l.tx_size = 256;
  return l;
}

// Forks the tenant first (so it inherits none of the descriptors made afterwards), then sets
// up its socket on `ifname` and sends the descriptors.
// `install` is the broker's steering for the new socket (t->xsk is set when it runs).
using Installer = std::function<absl::Status(Tenant* t, int ifindex)>;

::testing::AssertionResult StartTenant(const std::string& ifname, const Installer& install,
                                       const TenantPlan& plan, Tenant* t,
                                       const AfXdpLayout& layout = TestLayout()) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
    return ::testing::AssertionFailure() << "socketpair";
  }
  fflush(nullptr);
  t->pid = fork();
  if (t->pid == 0) {
    // Like a separate tenant process: nothing but stdio and the session socket.
    int keep = sp[1];
    syscall(SYS_close_range, 3u, static_cast<unsigned>(keep - 1), 0u);
    syscall(SYS_close_range, static_cast<unsigned>(keep + 1), ~0u, 0u);
    std::string err = TenantMain(sp[1], plan);
    if (!err.empty()) {
      fprintf(stderr, "tenant %s: %s\n", plan.name.c_str(), err.c_str());
      (void)vfbroker::SendWithFds(sp[1], "FAIL " + err, {});
      _exit(1);
    }
    _exit(0);
  }
  close(sp[1]);
  t->session = UniqueFd(sp[0]);
  if (t->pid < 0) return ::testing::AssertionFailure() << "fork";

  AfXdpSocketOptions o;
  o.ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
  o.queue_id = 0;
  o.mode = XdpBindMode::kCopy;
  o.layout = layout;
  auto xsk = CreateAfXdpSocket(o);
  if (!xsk.ok()) return ::testing::AssertionFailure() << xsk.status();
  t->xsk = std::move(*xsk);
  if (auto s = install(t, o.ifindex); !s.ok()) return ::testing::AssertionFailure() << s;
  int fds[2] = {t->xsk.socket.get(), t->xsk.umem.get()};
  if (auto s = vfbroker::SendWithFds(t->session.get(), EncodeLayout(t->xsk.layout), fds);
      !s.ok()) {
    return ::testing::AssertionFailure() << s;
  }
  std::string msg;
  std::vector<UniqueFd> none;
  if (auto s = vfbroker::ReceiveWithFds(t->session.get(), absl::Seconds(20), &msg, &none);
      !s.ok() || msg != "ready") {
    return ::testing::AssertionFailure() << "tenant not ready: " << msg << " " << s;
  }
  return ::testing::AssertionSuccess();
}

// Every frame of the device's queue 0 to the tenant's socket (a device of its own).
::testing::AssertionResult StartTenant(const std::string& ifname, XdpAttachMode mode,
                                       const TenantPlan& plan, Tenant* t,
                                       const AfXdpLayout& layout = TestLayout()) {
  Installer redirect_all = [mode](Tenant* t, int ifindex) -> absl::Status {
    auto prog = XdpProgram::Attach(xdp::kXskRedirectBpf, xdp::kXskRedirectBpfSize,
                                   "xsk_redirect", ifindex, mode);
    if (!prog.ok()) return prog.status();
    t->program = std::move(*prog);
    return t->program->SetXsk("xsks", 0, t->xsk.socket.get());
  };
  return StartTenant(ifname, redirect_all, plan, t, layout);
}

::testing::AssertionResult FinishTenant(Tenant* t) {
  std::string msg;
  std::vector<UniqueFd> none;
  absl::Status s = vfbroker::ReceiveWithFds(t->session.get(), absl::Seconds(30), &msg, &none);
  int status = 0;
  waitpid(t->pid, &status, 0);
  t->pid = -1;
  fprintf(stderr, "tenant report: %s\n", msg.c_str());
  if (!s.ok() || msg.rfind("done", 0) != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return ::testing::AssertionFailure() << "tenant: " << msg << " " << s << " status " << status;
  }
  return ::testing::AssertionSuccess();
}

// Sends `count` UDP frames built by us from the peer end, through an AF_PACKET socket.
void SendRawFrames(const std::string& ifname, const MacAddress& dst_mac, uint32_t dst_ip,
                   const std::string& tag, int count, bool vlan_every_other = false,
                   uint16_t dst_port = kPortUdp, int vlan_all = -1, int pace_every = 0) {
  UniqueFd raw(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  ASSERT_TRUE(raw.valid()) << strerror(errno);
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
  ll.sll_protocol = htons(ETH_P_ALL);
  packet::UdpSpec spec;
  spec.src_mac = kPeerMac;
  spec.dst_mac = dst_mac;
  spec.src_ip = kPeerIp;
  spec.dst_ip = dst_ip;
  spec.src_port = kPeerUdp;
  spec.dst_port = dst_port;
  for (int i = 0; i < count; ++i) {
    std::string p = tag + RxPayload(i);
    spec.has_vlan = (vlan_every_other && (i % 2 == 1)) || vlan_all >= 0;
    spec.vlan_tci = static_cast<uint16_t>(vlan_all >= 0 ? vlan_all : 42);
    uint8_t frame[256];
    size_t n = packet::BuildUdp(spec, reinterpret_cast<const uint8_t*>(p.data()), p.size(),
                                frame, sizeof(frame));
    ASSERT_GT(n, 0u);
    ASSERT_EQ(sendto(raw.get(), frame, n, 0, reinterpret_cast<sockaddr*>(&ll), sizeof(ll)),
              static_cast<ssize_t>(n))
        << strerror(errno);
    // Small rings hold few frames: give the tenant time to poll (the kernel drops, and
    // counts, what does not fit; real senders are paced by the wire or the peer).
    if (pace_every > 0 && i % pace_every == pace_every - 1) usleep(2000);
  }
}

// Sends one frame as it is through an AF_PACKET socket (unmarked: the host's own traffic).
void SendFrame(const std::string& ifname, const std::vector<uint8_t>& frame) {
  UniqueFd raw(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  ASSERT_TRUE(raw.valid()) << strerror(errno);
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
  ll.sll_protocol = htons(ETH_P_ALL);
  ASSERT_EQ(sendto(raw.get(), frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&ll),
                   sizeof(ll)),
            static_cast<ssize_t>(frame.size()))
      << strerror(errno);
}

// Receives `count` datagrams on the peer's UDP socket; returns their payloads.
std::set<std::string> ReceiveUdp(int fd, int count,
                                 std::chrono::milliseconds wait = std::chrono::seconds(10)) {
  std::set<std::string> out;
  auto deadline = std::chrono::steady_clock::now() + wait;
  while (static_cast<int>(out.size()) < count && std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    char buf[2048];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) out.insert(std::string(buf, n));
  }
  return out;
}

// Udp InCsumErrors of this network namespace (/proc/net/snmp): datagrams the stack dropped
// for a bad checksum.
long UdpInCsumErrors() {
  FILE* f = fopen("/proc/net/snmp", "r");
  if (f == nullptr) return -1;
  char line[1024];
  std::vector<std::string> names;
  long value = -1;
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strncmp(line, "Udp:", 4) != 0) continue;
    std::vector<std::string> fields = absl::StrSplit(absl::string_view(line).substr(4), ' ',
                                                     absl::SkipWhitespace());
    if (names.empty()) {
      names = fields;
      continue;
    }
    for (size_t i = 0; i < names.size() && i < fields.size(); ++i) {
      if (names[i] == "InCsumErrors") value = atol(fields[i].c_str());
    }
    break;
  }
  fclose(f);
  return value;
}

UniqueFd PeerUdpSocket() {
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPeerUdp);
  a.sin_addr.s_addr = htonl(kPeerIp);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ADD_FAILURE() << "bind peer UDP: " << strerror(errno);
  }
  return fd;
}

class AfXdpVethTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, AF_XDP, BPF)";
    ASSERT_TRUE(EnterFreshNetnsWithVeth());
  }
  void TearDown() override {
    for (Tenant* t : {&a_, &b_}) {
      if (t->pid > 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, nullptr, 0);
      }
    }
  }
  Tenant a_, b_;
};

void RunVethRoundTrip(XdpAttachMode mode, Tenant* t, const AfXdpLayout& layout = TestLayout(),
                      int pace_every = 0, bool account_drops = false) {
  constexpr int kFrames = 200;
  UniqueFd peer = PeerUdpSocket();
  const long csum_errors_before = UdpInCsumErrors();
  TenantPlan plan{"a", kPortMac, kPortIp, kFrames, "a:", kFrames, /*vlan_odd=*/true,
                  account_drops};
  ASSERT_TRUE(StartTenant("veth0", mode, plan, t, layout));
  SendRawFrames("veth1", kPortMac, kPortIp, "a:", kFrames, /*vlan_every_other=*/true, kPortUdp,
                -1, pace_every);
  std::set<std::string> got = ReceiveUdp(peer.get(), kFrames);
  ASSERT_TRUE(FinishTenant(t));
  // Anything still in flight (the corrupted frame) has arrived by now, or never will.
  std::set<std::string> late = ReceiveUdp(peer.get(), 1, std::chrono::milliseconds(300));
  got.insert(late.begin(), late.end());
  EXPECT_EQ(got.count("a:bad-checksum"), 0u);
  EXPECT_EQ(UdpInCsumErrors(), csum_errors_before + 1);
  EXPECT_EQ(got.size(), static_cast<size_t>(kFrames));
  for (int i = 0; i < kFrames; ++i) EXPECT_EQ(got.count("a:" + TxPayload(i)), 1u) << i;
}

TEST_F(AfXdpVethTest, UnprivilegedTenantReceivesAndSendsNativeXdp) {
  RunVethRoundTrip(XdpAttachMode::kNative, &a_);
}

TEST_F(AfXdpVethTest, UnprivilegedTenantReceivesAndSendsGenericXdp) {
  RunVethRoundTrip(XdpAttachMode::kGeneric, &a_);
}

// Bound without XDP_USE_NEED_WAKEUP (the kernel never sets the flag): the port kicks TX on
// every burst. Small 2 KiB frames and small rings, so the rings wrap many times.
TEST_F(AfXdpVethTest, UnprivilegedTenantWithoutNeedWakeupAndSmallRings) {
  AfXdpLayout l = TestLayout();
  l.need_wakeup = false;
  l.frame_size = 2048;
  l.frame_count = 64;
  l.fill_size = l.completion_size = l.rx_size = l.tx_size = 16;
  RunVethRoundTrip(XdpAttachMode::kNative, &a_, l, /*pace_every=*/8, /*account_drops=*/true);
}

TEST_F(AfXdpVethTest, AdoptRefusesWrongDescriptorsAndLayouts) {
  AfXdpSocketOptions o;
  o.ifindex = static_cast<int>(if_nametoindex("veth0"));
  o.layout = TestLayout();
  auto xsk = CreateAfXdpSocket(o);
  ASSERT_TRUE(xsk.ok()) << xsk.status();
  auto dup_fd = [](const UniqueFd& f) { return UniqueFd(fcntl(f.get(), F_DUPFD_CLOEXEC, 0)); };
  // The memfd where the socket should be, and the other way round.
  EXPECT_FALSE(AfXdpPort::Adopt(dup_fd(xsk->umem), dup_fd(xsk->socket), xsk->layout).ok());
  // A UMEM size that does not match.
  AfXdpLayout l = xsk->layout;
  l.frame_count *= 2;
  EXPECT_FALSE(AfXdpPort::Adopt(dup_fd(xsk->socket), dup_fd(xsk->umem), l).ok());
  // Rings larger than the socket's: mmap fails.
  l = xsk->layout;
  l.rx_size *= 4;
  EXPECT_FALSE(AfXdpPort::Adopt(dup_fd(xsk->socket), dup_fd(xsk->umem), l).ok());
  // An unsealed memfd of the right size.
  UniqueFd unsealed(memfd_create("x", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(unsealed.get(), xsk->layout.umem_bytes()), 0);
  auto r = AfXdpPort::Adopt(dup_fd(xsk->socket), std::move(unsealed), xsk->layout);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  // The real thing works once; rings that were used cannot be adopted a second time.
  auto first = AfXdpPort::Adopt(dup_fd(xsk->socket), dup_fd(xsk->umem), xsk->layout);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = AfXdpPort::Adopt(dup_fd(xsk->socket), dup_fd(xsk->umem), xsk->layout);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
}

// One macvlan per tenant on the same lower device: the kernel delivers by destination MAC,
// generic XDP on each macvlan redirects into that tenant's socket, and neither tenant ever
// sees the other's frames (the isolation DESIGN.md's xdp_nic relies on).
TEST_F(AfXdpVethTest, MacvlanPerTenantIsolatesFrames) {
  constexpr int kFrames = 100;
  // veth0 becomes the lower device; the tenants' devices are macvlans on it.
  const MacAddress mac_a{{0x02, 0x76, 0x66, 0x00, 0x00, 0x0a}};
  ASSERT_EQ(Ip("link add mva link veth0 address " + MacString(mac_a) +
               " type macvlan mode bridge"), 0);
  ASSERT_EQ(Ip("link add mvb link veth0 address " + MacString(kTenantBMac) +
               " type macvlan mode bridge"), 0);
  ASSERT_EQ(Ip("link set mva up"), 0);
  ASSERT_EQ(Ip("link set mvb up"), 0);
  UniqueFd peer = PeerUdpSocket();
  TenantPlan plan_a{"a", mac_a, kPortIp, kFrames, "a:", kFrames};
  TenantPlan plan_b{"b", kTenantBMac, kTenantBIp, kFrames, "b:", kFrames};
  ASSERT_TRUE(StartTenant("mva", XdpAttachMode::kGeneric, plan_a, &a_));
  ASSERT_TRUE(StartTenant("mvb", XdpAttachMode::kGeneric, plan_b, &b_));
  SendRawFrames("veth1", mac_a, kPortIp, "a:", kFrames);
  SendRawFrames("veth1", kTenantBMac, kTenantBIp, "b:", kFrames);
  std::set<std::string> got = ReceiveUdp(peer.get(), 2 * kFrames);
  for (int i = 0; i < kFrames; ++i) {
    EXPECT_EQ(got.count("a:" + TxPayload(i)), 1u) << i;
    EXPECT_EQ(got.count("b:" + TxPayload(i)), 1u) << i;
  }
  EXPECT_TRUE(FinishTenant(&a_));
  EXPECT_TRUE(FinishTenant(&b_));
}

// The broker's steering program on the tenant's device: only the tenant's flow reaches its
// socket; other ports and other VLANs are dropped before the socket (the tenant would fail on
// the first frame not tagged for it).
TEST_F(AfXdpVethTest, SteeringProgramDeliversOnlyTheLeasedFlow) {
  constexpr int kFrames = 100;
  constexpr int kOthers = 50;
  UniqueFd peer = PeerUdpSocket();
  std::unique_ptr<XdpSteering> steering;
  Installer install = [&steering](Tenant* t, int ifindex) -> absl::Status {
    auto s = XdpSteering::Attach(ifindex, XdpAttachMode::kNative, /*drop_unmatched=*/true);
    if (!s.ok()) return s.status();
    steering = std::move(*s);
    if (auto st = steering->SetSocket(7, t->xsk.socket.get()); !st.ok()) return st;
    return steering->AddFlowRule({0, kPortIp, 0, kPortUdp, 17, XdpSteering::kUntagged},
                                 {/*slot=*/7, /*queue=*/0});
  };
  TenantPlan plan{"a", kPortMac, kPortIp, kFrames, "a:", kFrames};
  ASSERT_TRUE(StartTenant("veth0", install, plan, &a_));
  // Not the tenant's: another port, and the right port on a VLAN the rule does not name.
  SendRawFrames("veth1", kPortMac, kPortIp, "x:", kOthers, false, kPortUdp + 1);
  SendRawFrames("veth1", kPortMac, kPortIp, "x:", kOthers, false, kPortUdp, /*vlan_all=*/42);
  SendRawFrames("veth1", kPortMac, kPortIp, "a:", kFrames);
  std::set<std::string> got = ReceiveUdp(peer.get(), kFrames);
  EXPECT_EQ(got.size(), static_cast<size_t>(kFrames));
  ASSERT_TRUE(FinishTenant(&a_));
  auto stats = steering->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*stats)[XdpSteering::kFlowWildcard], static_cast<uint64_t>(kFrames));
  EXPECT_GE((*stats)[XdpSteering::kUnmatched], static_cast<uint64_t>(2 * kOthers));
  EXPECT_EQ((*stats)[XdpSteering::kWrongQueue], 0u);
}

// Revocation while the tenant keeps its descriptors: the broker deletes the tenant's device.
// The kernel unbinds the socket; the tenant's port keeps its mappings (no crash, nothing
// arrives, transmit kicks fail and are counted, nothing leaves), and the broker can give the
// same MAC to a new device and socket whose frames the old port never sees.
TEST_F(AfXdpVethTest, DeletingTheDeviceRevokesAKeptSocket) {
  const MacAddress mac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x0c}};
  const uint32_t ip = Ipv4(10, 77, 0, 12);
  auto make_device = [&] {
    return Ip("link add mvr link veth0 address " + MacString(mac) +
              " type macvlan mode bridge") == 0 &&
           Ip("link set mvr up") == 0;
  };
  ASSERT_TRUE(make_device());
  UniqueFd peer = PeerUdpSocket();
  auto setup = [&](std::unique_ptr<XdpProgram>* prog) -> absl::StatusOr<AfXdpSocket> {
    AfXdpSocketOptions o;
    o.ifindex = static_cast<int>(if_nametoindex("mvr"));
    o.layout = TestLayout();
    auto xsk = CreateAfXdpSocket(o);
    if (!xsk.ok()) return xsk.status();
    auto p = XdpProgram::Attach(xdp::kXskRedirectBpf, xdp::kXskRedirectBpfSize, "xsk_redirect",
                                o.ifindex, XdpAttachMode::kGeneric);
    if (!p.ok()) return p.status();
    *prog = std::move(*p);
    if (auto s = (*prog)->SetXsk("xsks", 0, xsk->socket.get()); !s.ok()) return s;
    return xsk;
  };
  auto adopt = [](AfXdpSocket& xsk) {
    return AfXdpPort::Adopt(std::move(xsk.socket), std::move(xsk.umem), xsk.layout);
  };
  auto drain = [](AfXdpPort& port, int want) {
    int got = 0;
    PacketBuffer bufs[32];
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (got < want && std::chrono::steady_clock::now() < deadline) {
      size_t n = port.RxBurst(absl::MakeSpan(bufs));
      got += static_cast<int>(n);
      port.FreeBurst(absl::MakeConstSpan(bufs, n));
    }
    return got;
  };

  std::unique_ptr<XdpProgram> old_prog;
  auto old_xsk = setup(&old_prog);
  ASSERT_TRUE(old_xsk.ok()) << old_xsk.status();
  auto old_port = adopt(*old_xsk);
  ASSERT_TRUE(old_port.ok()) << old_port.status();
  SendRawFrames("veth1", mac, ip, "old:", 10);
  EXPECT_EQ(drain(**old_port, 10), 10);

  // Revoke.
  old_prog.reset();
  ASSERT_EQ(Ip("link del mvr"), 0);
  PacketBuffer buf;
  ASSERT_EQ((*old_port)->AllocBurst(absl::MakeSpan(&buf, 1)), 1u);
  packet::UdpSpec spec = TenantToPeer(mac, ip);
  const std::string after = "sent-after-revoke";
  buf.length = static_cast<uint32_t>(packet::BuildUdp(
      spec, reinterpret_cast<const uint8_t*>(after.data()), after.size(), buf.data,
      buf.capacity));
  EXPECT_EQ((*old_port)->TxBurst(absl::MakeConstSpan(&buf, 1)), 1u);  // queued, never sent
  EXPECT_GE((*old_port)->stats().wakeup_errors, 1u);                 // sendto: ENXIO
  EXPECT_TRUE(ReceiveUdp(peer.get(), 1, std::chrono::milliseconds(300)).empty());

  // The next tenant: same MAC, new device, new socket and UMEM.
  ASSERT_TRUE(make_device());
  std::unique_ptr<XdpProgram> new_prog;
  auto new_xsk = setup(&new_prog);
  ASSERT_TRUE(new_xsk.ok()) << new_xsk.status();
  auto new_port = adopt(*new_xsk);
  ASSERT_TRUE(new_port.ok()) << new_port.status();
  SendRawFrames("veth1", mac, ip, "new:", 10);
  EXPECT_EQ(drain(**new_port, 10), 10);
  EXPECT_EQ(drain(**old_port, 1), 0);
  EXPECT_EQ((*old_port)->stats().bad_descriptors, 0u);
}

// A tenant's socket transmits whatever the tenant writes; the broker's egress guard on the
// lower device lets out only frames with the lease's source MAC, VLAN, IPv4 source and ARP
// sender, keyed by the socket's mark. The host's own (unmarked) traffic is untouched.
TEST_F(AfXdpVethTest, EgressGuardDropsSpoofedFrames) {
  const MacAddress mac{{0x02, 0x76, 0x66, 0x00, 0x00, 0x0d}};
  const uint32_t ip = Ipv4(10, 77, 0, 13);
  const uint32_t mark = TcEgressGuard::kMarkBase + 1;
  // vepa: every frame of the macvlan leaves through the lower device (and its egress hook).
  ASSERT_EQ(Ip("link add mvg link veth0 address " + MacString(mac) + " type macvlan mode vepa"),
            0);
  ASSERT_EQ(Ip("link set mvg up"), 0);
  auto guard = TcEgressGuard::Attach(static_cast<int>(if_nametoindex("veth0")));
  ASSERT_TRUE(guard.ok()) << guard.status();
  EgressLease lease;
  lease.mac = mac;
  lease.src_ip = ip;
  ASSERT_TRUE((*guard)->SetLease(mark, lease).ok());
  UniqueFd peer = PeerUdpSocket();

  AfXdpSocketOptions o;
  o.ifindex = static_cast<int>(if_nametoindex("mvg"));
  o.layout = TestLayout();
  o.mark = mark;
  auto xsk = CreateAfXdpSocket(o);
  ASSERT_TRUE(xsk.ok()) << xsk.status();
  auto port = AfXdpPort::Adopt(std::move(xsk->socket), std::move(xsk->umem), xsk->layout);
  ASSERT_TRUE(port.ok()) << port.status();

  auto send = [&](const packet::UdpSpec& spec, const std::string& payload,
                  bool as_arp = false) {
    PacketBuffer buf;
    ASSERT_EQ((*port)->AllocBurst(absl::MakeSpan(&buf, 1)), 1u);
    if (as_arp) {
      // RFC 826 request: who has the peer, tell <spec.src_ip> at <spec.src_mac>.
      uint8_t arp[42] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
      std::memcpy(arp + 6, spec.src_mac.bytes.data(), 6);
      const uint8_t fixed[] = {0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01};
      std::memcpy(arp + 12, fixed, sizeof(fixed));
      std::memcpy(arp + 22, spec.src_mac.bytes.data(), 6);
      uint32_t spa = htonl(spec.src_ip), tpa = htonl(kPeerIp);
      std::memcpy(arp + 28, &spa, 4);
      std::memcpy(arp + 38, &tpa, 4);
      std::memcpy(buf.data, arp, sizeof(arp));
      buf.length = sizeof(arp);
    } else {
      buf.length = static_cast<uint32_t>(packet::BuildUdp(
          spec, reinterpret_cast<const uint8_t*>(payload.data()), payload.size(), buf.data,
          buf.capacity));
    }
    ASSERT_EQ((*port)->TxBurst(absl::MakeConstSpan(&buf, 1)), 1u);
  };
  packet::UdpSpec good = TenantToPeer(mac, ip);
  packet::UdpSpec bad_mac = good;
  bad_mac.src_mac = kTenantBMac;
  packet::UdpSpec bad_ip = good;
  bad_ip.src_ip = kTenantBIp;
  packet::UdpSpec bad_vlan = good;
  bad_vlan.has_vlan = true;
  bad_vlan.vlan_tci = 5;
  packet::UdpSpec bad_arp = good;
  bad_arp.src_ip = kTenantBIp;
  send(good, "legit");
  send(bad_mac, "spoofed-mac");
  send(bad_ip, "spoofed-ip");
  send(bad_vlan, "spoofed-vlan");
  send(bad_arp, "", /*as_arp=*/true);
  send(good, "", /*as_arp=*/true);  // a truthful ARP request passes
  for (int i = 0; i < 100 && (*port)->tx_frames() > 0; ++i) {
    (*port)->Service();
    usleep(1000);
  }
  // The host's own frame on the lower device, from an address no lease names.
  packet::UdpSpec host = good;
  host.src_mac = MacAddress{{0x02, 0x76, 0x66, 0x00, 0x00, 0x99}};
  host.src_ip = Ipv4(10, 77, 0, 99);
  std::vector<uint8_t> host_frame(packet::UdpFrameLength(host, 4));
  packet::BuildUdp(host, reinterpret_cast<const uint8_t*>("host"), 4, host_frame.data(),
                   host_frame.size());
  SendFrame("veth0", host_frame);

  std::set<std::string> got = ReceiveUdp(peer.get(), 3, std::chrono::milliseconds(500));
  EXPECT_EQ(got, (std::set<std::string>{"legit", "host"}));
  auto st = (*guard)->Stats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ((*st)[TcEgressGuard::kPassedTenant], 2u);
  EXPECT_EQ((*st)[TcEgressGuard::kDropMac], 1u);
  EXPECT_EQ((*st)[TcEgressGuard::kDropIp], 1u);
  EXPECT_EQ((*st)[TcEgressGuard::kDropVlan], 1u);
  EXPECT_EQ((*st)[TcEgressGuard::kDropArp], 1u);
  EXPECT_GE((*st)[TcEgressGuard::kPassedHost], 1u);

  // Lease gone: the same socket's frames stop at the guard.
  ASSERT_TRUE((*guard)->RemoveLease(mark).ok());
  send(good, "after-release");
  for (int i = 0; i < 100 && (*port)->tx_frames() > 0; ++i) {
    (*port)->Service();
    usleep(1000);
  }
  EXPECT_TRUE(ReceiveUdp(peer.get(), 1, std::chrono::milliseconds(300)).empty());
  st = (*guard)->Stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)[TcEgressGuard::kDropNoLease], 1u);
}

// Keeps only `keep` in this process's capability sets and bounding set (so programs it runs,
// like ip, get no more either). Stays uid 0.
bool KeepOnlyCapabilities(const std::vector<int>& keep) {
  for (int c = 0; c <= 63; ++c) {
    if (std::find(keep.begin(), keep.end(), c) == keep.end()) prctl(PR_CAPBSET_DROP, c, 0, 0, 0);
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  for (int c : keep) {
    data[c / 32].effective |= 1u << (c % 32);
    data[c / 32].permitted |= 1u << (c % 32);
    data[c / 32].inheritable |= 1u << (c % 32);
  }
  return syscall(SYS_capset, &header, data) == 0;
}

// Everything the broker does for an xdp_nic lease, in a child with only `caps` and Debian's
// default 8 MiB RLIMIT_MEMLOCK. Returns "" or the first step that failed.
std::string BrokerSetupWith(const std::vector<int>& caps) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return "pipe";
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    std::string err = [&]() -> std::string {
      rlimit rl{8 << 20, 8 << 20};
      if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) return "setrlimit";
      if (!KeepOnlyCapabilities(caps)) return "capset";
      if (Ip("link add mvc link veth0 type macvlan mode vepa") != 0 || Ip("link set mvc up") != 0) {
        return "macvlan";
      }
      const int mvc = static_cast<int>(if_nametoindex("mvc"));
      AfXdpSocketOptions o;
      o.ifindex = mvc;
      o.mark = TcEgressGuard::kMarkBase + 9;  // default layout: 16 MiB UMEM
      auto xsk = CreateAfXdpSocket(o);
      if (!xsk.ok()) return "socket: " + xsk.status().ToString();
      auto steering = XdpSteering::Attach(mvc, XdpAttachMode::kAuto, true);
      if (!steering.ok()) return "steering: " + steering.status().ToString();
      if (auto s = (*steering)->SetSocket(0, xsk->socket.get()); !s.ok()) return s.ToString();
      if (auto s = (*steering)->AddMacRule(MacAddress{{2, 0, 0, 0, 0, 9}},
                                           XdpSteering::kUntagged, {0, 0});
          !s.ok()) {
        return s.ToString();
      }
      auto guard = TcEgressGuard::Attach(static_cast<int>(if_nametoindex("veth0")));
      if (!guard.ok()) return "guard: " + guard.status().ToString();
      EgressLease lease;
      if (auto s = (*guard)->SetLease(o.mark, lease); !s.ok()) return s.ToString();
      return "";
    }();
    (void)!write(pipefd[1], err.data(), err.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(pipefd[0]);
  waitpid(pid, nullptr, 0);
  Ip("link del mvc");
  return out;
}

// The capabilities the broker's xdp_nic backend needs, measured: CAP_NET_ADMIN (devices, XDP
// and tc attach, SO_MARK), CAP_NET_RAW (AF_XDP socket), CAP_BPF (programs and maps; the
// programs are written to verify without CAP_PERFMON) and CAP_IPC_LOCK (the UMEM is pinned
// and charged to RLIMIT_MEMLOCK otherwise: 16 MiB does not fit Debian's default 8 MiB).
TEST_F(AfXdpVethTest, BrokerSideNeedsNetAdminNetRawBpfIpcLock) {
  EXPECT_EQ(BrokerSetupWith({CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_IPC_LOCK}), "");
  EXPECT_NE(BrokerSetupWith({CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF}).find("XDP_UMEM_REG"),
            std::string::npos);
  EXPECT_NE(BrokerSetupWith({CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK}).find("steering"),
            std::string::npos);
  EXPECT_NE(BrokerSetupWith({CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK}).find("socket"),
            std::string::npos);
}

}  // namespace
}  // namespace vfdrivers::net
