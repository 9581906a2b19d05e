#include "tests/vm/nic_tenant_lib.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "vfdrivers/net/packet.h"

namespace vmtest {
namespace {

using vfdrivers::net::PacketBuffer;
namespace packet = vfdrivers::net::packet;

constexpr uint16_t kTenantPort = 6000;
constexpr size_t kBurst = 32;

std::string Payload(const std::string& tag, const char* dir, uint32_t i) {
  std::string p = absl::StrFormat("nic-%s-%s-%05u:", tag, dir, i);
  for (uint32_t k = 0; k < 40 + i * 17 % 700; ++k) {
    p.push_back(static_cast<char>('a' + (i + k) % 26));
  }
  return p;
}

}  // namespace

absl::Status DropToUid(int uid) {
  struct rlimit limit = {64 << 20, 64 << 20};
  if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
    return absl::ErrnoToStatus(errno, "setrlimit(RLIMIT_MEMLOCK)");
  }
  if (::setgroups(0, nullptr) != 0 || ::setresgid(uid, uid, uid) != 0 ||
      ::setresuid(uid, uid, uid) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("dropping to uid ", uid));
  }
  if (::setresuid(0, 0, 0) == 0) return absl::InternalError("could become root again");
  return absl::OkStatus();
}

absl::Status PeekRefused(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return absl::PermissionDeniedError(absl::StrCat("opened ", path, " as uid ", ::getuid()));
  }
  std::printf("PEEK %s errno=%s\n", path.c_str(), strerrorname_np(errno));
  return absl::OkStatus();
}

absl::Status DropToUidAndPeek(int uid, const std::string& peek) {
  if (uid >= 0) {
    if (absl::Status s = DropToUid(uid); !s.ok()) return s;
  }
  return peek.empty() ? absl::OkStatus() : PeekRefused(peek);
}

absl::StatusOr<std::unique_ptr<vfclient::NicLease>> AllocateNic(
    const std::string& socket_dir, const vfbroker::v1::AllocateNicRequest& request) {
  vfclient::ConnectOptions options;
  options.socket_dir = socket_dir;
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
      vfclient::BrokerClient::Connect(options);
  if (!client.ok()) return absl::UnavailableError("connect: " + client.status().ToString());
  return (*client)->AllocateNic(request);
}

int Fail(const std::string& why) {
  std::printf("TENANT FAIL: %s\n", why.c_str());
  std::fflush(stdout);
  return 1;
}

bool ParseMac(const std::string& text, Mac* mac) {
  unsigned b[6];
  char extra = 0;
  if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4],
                  &b[5], &extra) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) (*mac)[i] = static_cast<uint8_t>(b[i]);
  return true;
}

std::string MacText(const Mac& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

uint32_t ParseIp(const std::string& text) {
  in_addr a{};
  if (inet_pton(AF_INET, text.c_str(), &a) != 1) return 0;
  return ntohl(a.s_addr);
}

absl::Status ExchangeUdp(vfdrivers::net::Port& port, const UdpPeer& peer) {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return absl::ErrnoToStatus(errno, "socket");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{s};
  sockaddr_in peer_addr{};
  peer_addr.sin_family = AF_INET;
  peer_addr.sin_port = htons(static_cast<uint16_t>(20000 + (peer.own_ip & 0xff)));
  peer_addr.sin_addr.s_addr = htonl(peer.peer_ip);
  if (::bind(s, reinterpret_cast<sockaddr*>(&peer_addr), sizeof peer_addr) != 0) {
    return absl::ErrnoToStatus(errno, "binding the peer-side socket");
  }
  timeval tv{0, 100000};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  packet::UdpSpec to_peer;
  std::memcpy(to_peer.dst_mac.bytes.data(), peer.peer_mac.data(), 6);
  std::memcpy(to_peer.src_mac.bytes.data(), peer.own_mac.data(), 6);
  to_peer.src_ip = peer.own_ip;
  to_peer.dst_ip = peer.peer_ip;
  to_peer.src_port = kTenantPort;
  to_peer.dst_port = ntohs(peer_addr.sin_port);

  // Tenant -> peer: everything sent once (the wire is a QEMU hub: nothing is lost but to a full
  // queue, which TxBurst reports).
  uint32_t sent = 0;
  while (sent < peer.count) {
    PacketBuffer b[8];
    const size_t n = port.AllocBurst(absl::MakeSpan(b, std::min<uint32_t>(8, peer.count - sent)));
    for (size_t i = 0; i < n; ++i) {
      to_peer.ip_id = static_cast<uint16_t>(sent + i);
      const std::string pl = Payload(peer.tag, "tx", static_cast<uint32_t>(sent + i));
      b[i].length = static_cast<uint32_t>(packet::BuildUdp(
          to_peer, reinterpret_cast<const uint8_t*>(pl.data()), pl.size(), b[i].data,
          b[i].capacity));
    }
    const size_t q = port.TxBurst(absl::MakeConstSpan(b, n));
    port.FreeBurst(absl::MakeConstSpan(b + q, n - q));
    sent += static_cast<uint32_t>(q);
    port.Service();
  }
  uint32_t got = 0;
  char buf[2048];
  for (absl::Time end = absl::Now() + peer.timeout; got < peer.count && absl::Now() < end;) {
    sockaddr_in from{};
    socklen_t fl = sizeof from;
    const ssize_t r = ::recvfrom(s, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl);
    port.Service();
    if (r < 0) continue;
    if (std::string(buf, static_cast<size_t>(r)) != Payload(peer.tag, "tx", got)) {
      return absl::DataLossError(absl::StrCat("tenant->peer datagram ", got, " differs"));
    }
    ++got;
  }
  if (got != peer.count) {
    return absl::DeadlineExceededError(
        absl::StrCat("tenant->peer: ", got, " of ", peer.count, " arrived"));
  }
  // Peer -> tenant.
  sockaddr_in tenant{};
  tenant.sin_family = AF_INET;
  tenant.sin_port = htons(kTenantPort);
  tenant.sin_addr.s_addr = htonl(peer.own_ip);
  std::vector<bool> seen(peer.count, false);
  got = 0;
  absl::Time next_send = absl::InfinitePast();
  for (absl::Time end = absl::Now() + peer.timeout; got < peer.count && absl::Now() < end;) {
    if (absl::Now() >= next_send) {
      for (uint32_t i = 0; i < peer.count; ++i) {
        if (seen[i]) continue;
        const std::string pl = Payload(peer.tag, "rx", i);
        (void)::sendto(s, pl.data(), pl.size(), 0, reinterpret_cast<sockaddr*>(&tenant),
                       sizeof tenant);
      }
      next_send = absl::Now() + absl::Seconds(2);
    }
    PacketBuffer b[kBurst];
    const size_t n = port.RxBurst(absl::MakeSpan(b));
    for (size_t i = 0; i < n; ++i) {
      packet::UdpView v;
      if (packet::ParseUdp(b[i].data, b[i].length, &v) != packet::ParseResult::kOk ||
          v.dst_ip != peer.own_ip || v.dst_port != kTenantPort) {
        continue;
      }
      // A tenant never sees a VLAN tag: on a VLAN lease the PF tags what the VF sends and strips
      // what it receives (a tag here means it did not), and a whole device's lease has no VLAN.
      if (v.eth.has_vlan) {
        port.FreeBurst(absl::MakeConstSpan(b, n));
        return absl::DataLossError(
            absl::StrCat("peer->tenant: a datagram arrived tagged with VLAN ",
                         v.eth.vlan_tci & 0x0fff, " (the PF should strip the tag)"));
      }
      const std::string pl(reinterpret_cast<const char*>(v.payload), v.payload_length);
      uint32_t idx = 0;
      const std::string prefix = absl::StrCat("nic-", peer.tag, "-rx-");
      if (pl.compare(0, prefix.size(), prefix) == 0 &&
          std::sscanf(pl.c_str() + prefix.size(), "%05u:", &idx) == 1 && idx < peer.count &&
          pl == Payload(peer.tag, "rx", idx)) {
        if (!seen[idx]) ++got;
        seen[idx] = true;
      } else {
        port.FreeBurst(absl::MakeConstSpan(b, n));
        return absl::DataLossError("peer->tenant: a datagram that is not this tenant's: " +
                                   pl.substr(0, 40));
      }
    }
    port.FreeBurst(absl::MakeConstSpan(b, n));
    if (n == 0) ::usleep(1000);
  }
  if (got != peer.count) {
    return absl::DeadlineExceededError(
        absl::StrCat("peer->tenant: ", got, " of ", peer.count, " arrived"));
  }
  return absl::OkStatus();
}

WatchCounts WatchForeign(vfdrivers::net::Port& port, const Mac& own_mac, uint32_t own_ip,
                         absl::Duration duration, const std::string& stop_file) {
  WatchCounts counts;
  for (absl::Time end = absl::Now() + duration; absl::Now() < end;) {
    if (!stop_file.empty() && ::access(stop_file.c_str(), F_OK) == 0) break;
    PacketBuffer b[kBurst];
    const size_t n = port.RxBurst(absl::MakeSpan(b));
    for (size_t i = 0; i < n; ++i) {
      const bool to_me = b[i].length >= 6 && std::memcmp(b[i].data, own_mac.data(), 6) == 0;
      const bool group = b[i].length >= 6 && (b[i].data[0] & 1) != 0;
      packet::UdpView v;
      const bool other_ip = packet::ParseUdp(b[i].data, b[i].length, &v) ==
                                packet::ParseResult::kOk && v.dst_ip != own_ip;
      if ((!to_me && !group) || other_ip) {
        ++counts.foreign;
      } else {
        ++counts.own;
      }
    }
    port.FreeBurst(absl::MakeConstSpan(b, n));
    if (n == 0) ::usleep(1000);
  }
  return counts;
}

}  // namespace vmtest
