// nic_vf_tenant: a tenant of a sriov_nic pool, in the tests/vm guest.
//
// As root it raises RLIMIT_MEMLOCK (VFIO charges pinned DMA pages to it) and drops to --uid; then
// connects to vfbrokerd with libvfclient, allocates a NIC (AllocateNic, --mac or broker-picked),
// takes the lease's VFIO descriptors, adopts them and opens the project's igbvf driver on the VF
// (the PF must give it the lease's MAC over the mailbox), waits for link, checks the PF refuses
// another MAC (trust off), and exchanges verified UDP both ways with a kernel socket on the PF's
// address (which any uid may bind: a port above 1024). With --watch_seconds it then keeps
// polling and counts frames that are not its own (another tenant's traffic reaching it), then
// holds until killed (--hold) or releases.
//
// Prints "TENANT OK lease=<id> vf=<bdf> mac=<mac> group=<path> uid=<uid>", then
// "FOREIGN frames=<n> own=<n>" after watching, "HOLDING" / "RELEASED"; "TENANT FAIL: <why>" and
// exit 1 otherwise. --peek=/dev/vfio/N: first try to open another tenant's group node
// (printed as "PEEK <path> errno=<name>").
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/packet.h"
#include "vfdrivers/vfio/vfio_device.h"

ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "the broker's socket directory");
ABSL_FLAG(std::string, pool, "vf", "the sriov_nic pool");
ABSL_FLAG(std::string, mac, "", "the MAC to ask for (empty: the broker picks)");
ABSL_FLAG(int, uid, -1, "drop to this uid (and gid) first");
ABSL_FLAG(std::string, pf_mac, "", "the PF interface's MAC");
ABSL_FLAG(std::string, pf_ip, "10.9.0.1", "the PF interface's IPv4 address");
ABSL_FLAG(std::string, vf_ip, "", "this tenant's IPv4 address (the PF has a neighbour entry)");
ABSL_FLAG(uint32_t, count, 32, "datagrams each way (0: no exchange)");
ABSL_FLAG(uint32_t, watch_seconds, 0, "after the exchange, count foreign frames this long");
ABSL_FLAG(std::string, watch_until_file, "", "stop watching early once this file exists");
ABSL_FLAG(bool, hold, false, "hold the lease until killed");
ABSL_FLAG(std::string, peek, "", "a /dev/vfio group node to try to open first");
ABSL_FLAG(uint32_t, vlan, 0, "the VLAN to ask for (0: untagged)");
ABSL_FLAG(uint32_t, filter_udp_port, 0, "ask for a UDP flow filter to --vf_ip:port (0: none)");
ABSL_FLAG(uint64_t, max_tx_rate_mbps, 0, "the VF's transmit rate limit to ask for (0: none)");

namespace {

using vfdrivers::net::PacketBuffer;
using vfdrivers::net::igbvf::IgbvfPort;
using vfdrivers::net::igbvf::MacAddress;
namespace packet = vfdrivers::net::packet;

int Fail(const std::string& why) {
  std::printf("TENANT FAIL: %s\n", why.c_str());
  std::fflush(stdout);
  return 1;
}

std::string MacStr(const MacAddress& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m.bytes[0], m.bytes[1], m.bytes[2],
                         m.bytes[3], m.bytes[4], m.bytes[5]);
}

bool ParseMac(const std::string& s, MacAddress* m) {
  unsigned b[6];
  if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) m->bytes[i] = static_cast<uint8_t>(b[i]);
  return true;
}

uint32_t ParseIp(const std::string& s) {
  in_addr a{};
  inet_pton(AF_INET, s.c_str(), &a);
  return ntohl(a.s_addr);
}

// The payload names the tenant (its VF address) so that a frame reaching the wrong tenant shows.
std::string Payload(const std::string& tag, const char* dir, uint32_t i) {
  std::string p = absl::StrFormat("vf-%s-%s-%05u:", tag, dir, i);
  for (uint32_t k = 0; k < 40 + i * 17 % 700; ++k) p.push_back(static_cast<char>('a' + (i + k) % 26));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const int uid = absl::GetFlag(FLAGS_uid);
  if (uid >= 0) {
    struct rlimit limit = {64 << 20, 64 << 20};
    if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
      return Fail(absl::StrCat("setrlimit(RLIMIT_MEMLOCK): ", std::strerror(errno)));
    }
    if (::setgroups(0, nullptr) != 0 || ::setresgid(uid, uid, uid) != 0 ||
        ::setresuid(uid, uid, uid) != 0 || ::setresuid(0, 0, 0) == 0) {
      return Fail(absl::StrCat("dropping to uid ", uid, ": ", std::strerror(errno)));
    }
  }
  if (const std::string peek = absl::GetFlag(FLAGS_peek); !peek.empty()) {
    const int fd = ::open(peek.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) return Fail(absl::StrCat("opened ", peek, " as uid ", ::getuid()));
    std::printf("PEEK %s errno=%s\n", peek.c_str(), strerrorname_np(errno));
  }
  MacAddress pf_mac;
  if (!ParseMac(absl::GetFlag(FLAGS_pf_mac), &pf_mac)) return Fail("--pf_mac: not a MAC");
  const uint32_t pf_ip = ParseIp(absl::GetFlag(FLAGS_pf_ip));
  const uint32_t vf_ip = ParseIp(absl::GetFlag(FLAGS_vf_ip));
  const uint32_t count = absl::GetFlag(FLAGS_count);

  vfclient::ConnectOptions options;
  options.socket_dir = absl::GetFlag(FLAGS_socket_dir);
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
      vfclient::BrokerClient::Connect(options);
  if (!client.ok()) return Fail(absl::StrCat("connect: ", client.status().ToString()));
  vfbroker::v1::AllocateNicRequest request;
  request.set_pool(absl::GetFlag(FLAGS_pool));
  request.set_mac(absl::GetFlag(FLAGS_mac));
  request.set_vlan(absl::GetFlag(FLAGS_vlan));
  request.set_max_tx_rate_mbps(absl::GetFlag(FLAGS_max_tx_rate_mbps));
  if (const uint32_t port = absl::GetFlag(FLAGS_filter_udp_port); port != 0) {
    vfbroker::v1::FlowFilter* filter = request.add_filters();
    filter->set_protocol(vfbroker::v1::FlowFilter::PROTOCOL_UDP);
    filter->set_dst_ip(absl::GetFlag(FLAGS_vf_ip));
    filter->set_dst_port(port);
  }
  absl::StatusOr<std::unique_ptr<vfclient::NicLease>> lease = (*client)->AllocateNic(request);
  if (!lease.ok()) return Fail(absl::StrCat("AllocateNic: ", lease.status().ToString()));
  const vfbroker::v1::Nic nic = (*lease)->nic();
  std::printf("LEASE id=%s vf=%s mac=%s vlan=%u pf=%s\n", (*lease)->id().c_str(),
              nic.pci_address().c_str(), nic.mac().c_str(), nic.vlan(), nic.interface().c_str());
  MacAddress mac;
  if (!ParseMac(nic.mac(), &mac)) return Fail("the lease's MAC does not parse: " + nic.mac());

  absl::StatusOr<vfclient::VfioDescriptors> fds = (*lease)->TakeVfioDescriptors();
  if (!fds.ok()) return Fail(fds.status().ToString());
  absl::StatusOr<std::unique_ptr<vfdrivers::vfio::VfioDevice>> device =
      vfdrivers::vfio::VfioDevice::Adopt(std::move(fds->container), std::move(fds->group),
                                         std::move(fds->device));
  if (!device.ok()) return Fail(absl::StrCat("adopt: ", device.status().ToString()));
  std::unique_ptr<IgbvfPort> port;
  {
    vfdrivers::net::igbvf::Options o;
    o.rx_ring_size = 256;
    o.tx_ring_size = 256;
    o.buffer_count = 1024;
    o.reset_timeout = absl::Milliseconds(100);
    o.mailbox_timeout = absl::Seconds(3);
    std::string log;
    for (int attempt = 1; attempt <= 3 && port == nullptr; ++attempt) {
      auto p = IgbvfPort::Open(device->get(), o);
      if (p.ok() && (*p)->mac() == mac) {
        port = *std::move(p);
      } else {
        absl::StrAppend(&log, "; attempt ", attempt, ": ",
                        p.ok() ? "PF gave MAC " + MacStr((*p)->mac()) : p.status().ToString());
      }
    }
    if (port == nullptr) return Fail("igbvf open" + log);
  }
  if (absl::Status s = port->WaitForLink(absl::Seconds(20)); !s.ok()) {
    return Fail("link: " + s.ToString());
  }
  {
    MacAddress other = mac;
    other.bytes[5] ^= 0x55;
    absl::Status s = port->SetMac(other);
    if (s.ok()) return Fail("the PF let the VF take MAC " + MacStr(other) + " (trust is on?)");
    std::printf("MAC-CHANGE refused: %s\n", std::string(s.message()).c_str());
  }
  const std::string tag = nic.pci_address();
  uint64_t own = 0, foreign = 0;
  if (count != 0) {
    const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in pf{};
    pf.sin_family = AF_INET;
    pf.sin_port = htons(static_cast<uint16_t>(20000 + (vf_ip & 0xff)));
    pf.sin_addr.s_addr = htonl(pf_ip);
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&pf), sizeof pf) != 0) {
      return Fail(absl::StrCat("binding the PF-side socket: ", std::strerror(errno)));
    }
    timeval tv{0, 100000};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const uint16_t vf_port = 6000;
    packet::UdpSpec to_pf;
    std::memcpy(to_pf.dst_mac.bytes.data(), pf_mac.bytes.data(), 6);
    std::memcpy(to_pf.src_mac.bytes.data(), mac.bytes.data(), 6);
    to_pf.src_ip = vf_ip;
    to_pf.dst_ip = pf_ip;
    to_pf.src_port = vf_port;
    to_pf.dst_port = ntohs(pf.sin_port);
    // VF -> PF.
    uint32_t sent = 0;
    while (sent < count) {
      PacketBuffer b[8];
      const size_t n = port->AllocBurst(absl::MakeSpan(b, std::min<uint32_t>(8, count - sent)));
      for (size_t i = 0; i < n; ++i) {
        to_pf.ip_id = static_cast<uint16_t>(sent + i);
        const std::string pl = Payload(tag, "tx", static_cast<uint32_t>(sent + i));
        b[i].length = packet::BuildUdp(to_pf, reinterpret_cast<const uint8_t*>(pl.data()),
                                       pl.size(), b[i].data, b[i].capacity);
      }
      const size_t q = port->TxBurst(absl::MakeConstSpan(b, n));
      port->FreeBurst(absl::MakeConstSpan(b + q, n - q));
      sent += static_cast<uint32_t>(q);
      port->Service();
    }
    uint32_t got = 0;
    char buf[2048];
    for (absl::Time end = absl::Now() + absl::Seconds(20); got < count && absl::Now() < end;) {
      sockaddr_in from{};
      socklen_t fl = sizeof from;
      const ssize_t r = ::recvfrom(s, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl);
      port->Service();
      if (r < 0) continue;
      if (std::string(buf, static_cast<size_t>(r)) != Payload(tag, "tx", got)) {
        return Fail(absl::StrCat("VF->PF datagram ", got, " differs"));
      }
      ++got;
    }
    if (got != count) return Fail(absl::StrCat("VF->PF: ", got, " of ", count, " arrived"));
    // PF -> VF.
    sockaddr_in vf{};
    vf.sin_family = AF_INET;
    vf.sin_port = htons(vf_port);
    vf.sin_addr.s_addr = htonl(vf_ip);
    std::vector<bool> seen(count, false);
    got = 0;
    absl::Time next_send = absl::InfinitePast();
    for (absl::Time end = absl::Now() + absl::Seconds(30); got < count && absl::Now() < end;) {
      if (absl::Now() >= next_send) {
        for (uint32_t i = 0; i < count; ++i) {
          if (seen[i]) continue;
          const std::string pl = Payload(tag, "rx", i);
          (void)::sendto(s, pl.data(), pl.size(), 0, reinterpret_cast<sockaddr*>(&vf), sizeof vf);
        }
        next_send = absl::Now() + absl::Seconds(2);
      }
      PacketBuffer b[IgbvfPort::kBurst];
      const size_t n = port->RxBurst(absl::MakeSpan(b));
      for (size_t i = 0; i < n; ++i) {
        packet::UdpView v;
        uint32_t idx = 0;
        if (packet::ParseUdp(b[i].data, b[i].length, &v) == packet::ParseResult::kOk &&
            v.dst_ip == vf_ip && v.dst_port == vf_port) {
          // On a VLAN lease the PF tags what the VF sends and strips what it receives: the
          // tenant never sees its VLAN (a tag here means the PF did not strip it).
          if (v.eth.has_vlan) {
            return Fail(absl::StrCat("PF->VF: a datagram arrived tagged with VLAN ",
                                     v.eth.vlan_tci & 0x0fff, " (the PF should strip the tag)"));
          }
          const std::string pl(reinterpret_cast<const char*>(v.payload), v.payload_length);
          if (std::sscanf(pl.c_str() + tag.size() + 3, "-rx-%05u:", &idx) == 1 && idx < count &&
              pl == Payload(tag, "rx", idx)) {
            if (!seen[idx]) ++got;
            seen[idx] = true;
          } else {
            return Fail("PF->VF: a datagram that is not this tenant's: " + pl.substr(0, 40));
          }
        }
      }
      port->FreeBurst(absl::MakeConstSpan(b, n));
      if (n == 0) ::usleep(1000);
    }
    if (got != count) return Fail(absl::StrCat("PF->VF: ", got, " of ", count, " arrived"));
    ::close(s);
  }
  std::printf("TENANT OK lease=%s vf=%s mac=%s group=%s uid=%u exchanged=%u\n",
              (*lease)->id().c_str(), nic.pci_address().c_str(), nic.mac().c_str(),
              (*device)->group_path().c_str(), static_cast<unsigned>(::getuid()), count);
  // Watch: everything the VF receives now should be addressed to it (its MAC, or broadcast);
  // a UDP frame for another tenant's address, or unicast to another MAC, is foreign.
  if (const uint32_t watch = absl::GetFlag(FLAGS_watch_seconds); watch != 0) {
    const std::string stop_file = absl::GetFlag(FLAGS_watch_until_file);
    std::printf("WATCHING\n");
    for (absl::Time end = absl::Now() + absl::Seconds(watch); absl::Now() < end;) {
      if (!stop_file.empty() && ::access(stop_file.c_str(), F_OK) == 0) break;
      PacketBuffer b[IgbvfPort::kBurst];
      const size_t n = port->RxBurst(absl::MakeSpan(b));
      for (size_t i = 0; i < n; ++i) {
        const bool to_me = b[i].length >= 6 && std::memcmp(b[i].data, mac.bytes.data(), 6) == 0;
        const bool group = b[i].length >= 6 && (b[i].data[0] & 1) != 0;
        packet::UdpView v;
        const bool other_ip = packet::ParseUdp(b[i].data, b[i].length, &v) ==
                                  packet::ParseResult::kOk && v.dst_ip != vf_ip;
        if ((!to_me && !group) || other_ip) {
          ++foreign;
        } else {
          ++own;
        }
      }
      port->FreeBurst(absl::MakeConstSpan(b, n));
      if (n == 0) ::usleep(1000);
    }
    std::printf("FOREIGN frames=%llu own=%llu\n", static_cast<unsigned long long>(foreign),
                static_cast<unsigned long long>(own));
  }
  if (absl::GetFlag(FLAGS_hold)) {
    std::printf("HOLDING\n");
    while (true) ::pause();
  }
  port.reset();
  device->reset();
  if (absl::Status s = (*lease)->Release(); !s.ok()) return Fail("release: " + s.ToString());
  std::printf("RELEASED\n");
  return 0;
}
