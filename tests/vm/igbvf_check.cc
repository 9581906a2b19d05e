// igbvf_check: the project's igbvf driver (vfdrivers/net/igbvf) on a real 82576 VF.
//
// Runs inside the tests/vm guest (QEMU's igb, VF 8086:10ca behind an emulated Intel IOMMU), on a
// VF bound to vfio-pci whose MAC the PF set: opens it with vfio::VfioDevice::OpenByPciAddress,
// resets it (VTCTRL.RST) and gets its MAC over the PF mailbox (IgbvfPort::Open), waits for link
// (VFSTATUS.LU), then exchanges verified UDP with a kernel socket on the PF's interface through
// QEMU's emulated switch: frames the driver sends must arrive at the PF's socket with their
// contents, datagrams the PF's socket sends must arrive at the driver with theirs. Also: another
// MAC is refused by the PF (trust off), SET_LPE is accepted, the device reported no bad
// descriptor. Prints "CHECK PASS|FAIL <name>: <detail> [<time>]" per check and a summary line.
#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/packet.h"
#include "vfdrivers/vfio/vfio_device.h"

ABSL_FLAG(std::string, pci, "", "PCI address of the igb VF, bound to vfio-pci");
ABSL_FLAG(std::string, expect_mac, "", "the MAC the PF set for this VF");
ABSL_FLAG(std::string, pf_mac, "", "the PF interface's MAC");
ABSL_FLAG(std::string, pf_ip, "10.9.0.1", "the PF interface's IPv4 address");
ABSL_FLAG(std::string, vf_ip, "10.9.0.2", "the address the driver uses");
ABSL_FLAG(uint32_t, count, 64, "datagrams each way");
ABSL_FLAG(uint32_t, attempts, 3, "tries to bring the VF up (the mailbox can time out under TCG)");
ABSL_FLAG(bool, vfio_reset, true, "VFIO_DEVICE_RESET (FLR) before the driver's own reset");
ABSL_FLAG(int, run_as_uid, -1,
          "drop to this uid and gid (same number) before opening anything, after raising "
          "RLIMIT_MEMLOCK to 64 MiB as root (VFIO charges pinned DMA pages to it)");

namespace {

using vfdrivers::net::PacketBuffer;
using vfdrivers::net::igbvf::IgbvfPort;
using vfdrivers::net::igbvf::MacAddress;
namespace packet = vfdrivers::net::packet;

constexpr uint16_t kPfPort = 5000, kVfPort = 6000;
int g_failed = 0, g_passed = 0;

bool Check(const std::string& name, const std::function<absl::StatusOr<std::string>()>& fn) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> r = fn();
  const std::string took = absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)));
  if (r.ok()) {
    std::printf("CHECK PASS %s: %s [%s]\n", name.c_str(), r->c_str(), took.c_str());
    ++g_passed;
  } else {
    std::printf("CHECK FAIL %s: %s [%s]\n", name.c_str(), r.status().ToString().c_str(),
                took.c_str());
    ++g_failed;
  }
  std::fflush(stdout);
  return r.ok();
}

absl::StatusOr<MacAddress> ParseMac(const std::string& s) {
  std::vector<std::string> parts = absl::StrSplit(s, ':');
  MacAddress m;
  if (parts.size() != 6) return absl::InvalidArgumentError("bad MAC " + s);
  for (int i = 0; i < 6; ++i) m.bytes[i] = static_cast<uint8_t>(std::stoul(parts[i], nullptr, 16));
  return m;
}

std::string MacStr(const MacAddress& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m.bytes[0], m.bytes[1], m.bytes[2],
                         m.bytes[3], m.bytes[4], m.bytes[5]);
}

uint32_t ParseIp(const std::string& s) {
  in_addr a{};
  inet_pton(AF_INET, s.c_str(), &a);
  return ntohl(a.s_addr);
}

std::string Payload(const char* dir, uint32_t i) {
  std::string p = absl::StrFormat("igbvf-%s-%05u:", dir, i);
  for (uint32_t k = 0; k < 40 + i * 17 % 900; ++k) p.push_back(static_cast<char>('a' + (i + k) % 26));
  return p;
}

absl::Status DropPrivileges(int uid) {
  const rlim_t bytes = rlim_t{64} << 20;
  struct rlimit limit = {bytes, bytes};
  if (setrlimit(RLIMIT_MEMLOCK, &limit) != 0) return absl::ErrnoToStatus(errno, "setrlimit");
  if (setgroups(0, nullptr) != 0) return absl::ErrnoToStatus(errno, "setgroups");
  if (setresgid(uid, uid, uid) != 0) return absl::ErrnoToStatus(errno, "setresgid");
  if (setresuid(uid, uid, uid) != 0) return absl::ErrnoToStatus(errno, "setresuid");
  if (geteuid() != static_cast<uid_t>(uid) || setresuid(0, 0, 0) == 0) {
    return absl::InternalError("privileges were not dropped");
  }
  return absl::OkStatus();
}

int Main() {
  const int uid = absl::GetFlag(FLAGS_run_as_uid);
  if (uid >= 0 && !Check("drop to uid " + std::to_string(uid), [&]() -> absl::StatusOr<std::string> {
        absl::Status st = DropPrivileges(uid);
        if (!st.ok()) return st;
        return absl::StrCat("uid ", getuid(), " gid ", getgid(), ", RLIMIT_MEMLOCK 64 MiB");
      })) {
    return 1;
  }
  const std::string pci = absl::GetFlag(FLAGS_pci);
  absl::StatusOr<MacAddress> expect_mac = ParseMac(absl::GetFlag(FLAGS_expect_mac));
  absl::StatusOr<MacAddress> pf_mac = ParseMac(absl::GetFlag(FLAGS_pf_mac));
  if (pci.empty() || !expect_mac.ok() || !pf_mac.ok()) {
    std::fprintf(stderr, "usage: igbvf_check --pci=BDF --expect_mac=MAC --pf_mac=MAC\n");
    return 2;
  }
  const uint32_t pf_ip = ParseIp(absl::GetFlag(FLAGS_pf_ip));
  const uint32_t vf_ip = ParseIp(absl::GetFlag(FLAGS_vf_ip));
  const uint32_t count = absl::GetFlag(FLAGS_count);

  std::unique_ptr<vfdrivers::vfio::VfioDevice> device;
  std::unique_ptr<IgbvfPort> port;
  if (!Check("open vfio", [&]() -> absl::StatusOr<std::string> {
        auto d = vfdrivers::vfio::VfioDevice::OpenByPciAddress(pci);
        if (!d.ok()) return d.status();
        device = *std::move(d);
        std::string reset = "VFIO reset skipped";
        if (absl::GetFlag(FLAGS_vfio_reset)) {
          if (!device->supports_reset()) return absl::FailedPreconditionError("no VFIO reset");
          absl::Status st = device->Reset();
          if (!st.ok()) return st;
          reset = "VFIO_DEVICE_RESET done";
        }
        return absl::StrCat("group ", device->group_path(), ", ", reset);
      })) {
    return 1;
  }
  // Reset + mailbox handshake; under TCG a mailbox step can be slow: retry a few times.
  if (!Check("reset and mailbox MAC", [&]() -> absl::StatusOr<std::string> {
        vfdrivers::net::igbvf::Options o;
        o.rx_ring_size = 256;
        o.tx_ring_size = 256;
        o.buffer_count = 1024;
        o.reset_timeout = absl::Milliseconds(100);
        o.mailbox_timeout = absl::Seconds(3);
        std::string log;
        absl::Status last;
        for (uint32_t a = 1; a <= absl::GetFlag(FLAGS_attempts); ++a) {
          auto p = IgbvfPort::Open(device.get(), o);
          if (p.ok() && (*p)->mac() == *expect_mac) {
            port = *std::move(p);
            return absl::StrCat("MAC ", MacStr(port->mac()), " from the PF, attempt ", a,
                                ", reset without RSTD: ", port->igbvf_stats().reset_without_rstd,
                                ", mailbox messages ", port->igbvf_stats().mailbox_messages, log);
          }
          last = p.ok() ? absl::FailedPreconditionError(absl::StrCat(
                              "PF gave MAC ", MacStr((*p)->mac()), ", want ", MacStr(*expect_mac)))
                        : p.status();
          absl::StrAppend(&log, "; attempt ", a, ": ", last.ToString());
        }
        return absl::Status(last.code(), log);
      })) {
    return 1;
  }
  Check("link up (VFSTATUS.LU)", [&]() -> absl::StatusOr<std::string> {
    absl::Status st = port->WaitForLink(absl::Seconds(20));
    if (!st.ok()) return st;
    return std::string("up");
  });
  Check("SET_LPE 1518 accepted", [&]() -> absl::StatusOr<std::string> {
    absl::Status st = port->SetMaxFrame(1518);
    if (!st.ok()) return st;
    return std::string("ACK");
  });
  Check("SET_MAC_ADDR of another MAC refused (trust off)", [&]() -> absl::StatusOr<std::string> {
    MacAddress other = *expect_mac;
    other.bytes[5] ^= 0x55;
    absl::Status st = port->SetMac(other);
    if (st.ok()) return absl::InternalError("the PF accepted " + MacStr(other));
    if (st.code() != absl::StatusCode::kFailedPrecondition) return st;
    if (!(port->mac() == *expect_mac)) return absl::InternalError("driver's MAC changed");
    return std::string(st.message());
  });

  // Kernel side: a UDP socket on the PF's address.
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in pf{};
  pf.sin_family = AF_INET;
  pf.sin_port = htons(kPfPort);
  pf.sin_addr.s_addr = htonl(pf_ip);
  if (s < 0 || bind(s, reinterpret_cast<sockaddr*>(&pf), sizeof pf) != 0) {
    std::printf("CHECK FAIL kernel socket: %s\n", std::strerror(errno));
    return 1;
  }
  timeval tv{0, 200000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  packet::UdpSpec to_pf;
  std::memcpy(to_pf.dst_mac.bytes.data(), pf_mac->bytes.data(), 6);
  std::memcpy(to_pf.src_mac.bytes.data(), expect_mac->bytes.data(), 6);
  to_pf.src_ip = vf_ip;
  to_pf.dst_ip = pf_ip;
  to_pf.src_port = kVfPort;
  to_pf.dst_port = kPfPort;

  Check("driver -> PF kernel socket", [&]() -> absl::StatusOr<std::string> {
    uint32_t sent = 0;
    while (sent < count) {
      PacketBuffer b[8];
      const uint32_t want = std::min<uint32_t>(8, count - sent);
      size_t n = port->AllocBurst(absl::MakeSpan(b, want));
      for (size_t i = 0; i < n; ++i) {
        to_pf.ip_id = static_cast<uint16_t>(sent + i);
        std::string pl = Payload("tx", sent + i);
        b[i].length = packet::BuildUdp(to_pf, reinterpret_cast<const uint8_t*>(pl.data()),
                                       pl.size(), b[i].data, b[i].capacity);
      }
      size_t q = port->TxBurst(absl::MakeConstSpan(b, n));
      port->FreeBurst(absl::MakeConstSpan(b + q, n - q));
      sent += q;
      port->Service();
    }
    uint32_t got = 0, next = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    char buf[2048];
    while (got < count && absl::Now() < deadline) {
      sockaddr_in from{};
      socklen_t fl = sizeof from;
      ssize_t r = recvfrom(s, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl);
      port->Service();
      if (r < 0) continue;
      std::string want = Payload("tx", next);
      if (ntohl(from.sin_addr.s_addr) != vf_ip || ntohs(from.sin_port) != kVfPort) {
        return absl::InternalError("datagram from an unexpected source");
      }
      if (std::string(buf, r) != want) {
        return absl::InternalError(absl::StrCat("datagram ", next, " content differs: '",
                                                std::string(buf, std::min<ssize_t>(r, 20)), "'"));
      }
      ++got;
      ++next;
    }
    for (int i = 0; i < 100 && port->tx_in_flight() != 0; ++i) {
      port->Service();
      usleep(10000);
    }
    if (got != count) return absl::InternalError(absl::StrCat("received ", got, " of ", count));
    return absl::StrCat(count, " datagrams in order, contents verified; TX completed ",
                        port->stats().tx_completed, ", in flight ", port->tx_in_flight());
  });

  Check("PF kernel socket -> driver", [&]() -> absl::StatusOr<std::string> {
    sockaddr_in vf{};
    vf.sin_family = AF_INET;
    vf.sin_port = htons(kVfPort);
    vf.sin_addr.s_addr = htonl(vf_ip);
    std::vector<bool> seen(count, false);
    uint32_t got = 0, other = 0, sent = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    PacketBuffer b[IgbvfPort::kBurst];
    absl::Time next_send = absl::InfinitePast();
    while (got < count && absl::Now() < deadline) {
      // Send the lot once, then resend what is missing every 2 s (first frames may wait on ARP).
      if (absl::Now() >= next_send) {
        for (uint32_t i = 0; i < count; ++i) {
          if (seen[i]) continue;
          std::string pl = Payload("rx", i);
          if (sendto(s, pl.data(), pl.size(), 0, reinterpret_cast<sockaddr*>(&vf), sizeof vf) > 0) {
            ++sent;
          }
        }
        next_send = absl::Now() + absl::Seconds(2);
      }
      size_t n = port->RxBurst(absl::MakeSpan(b));
      for (size_t i = 0; i < n; ++i) {
        packet::UdpView v;
        if (packet::ParseUdp(b[i].data, b[i].length, &v) == packet::ParseResult::kOk &&
            v.dst_port == kVfPort && v.src_ip == pf_ip && v.dst_ip == vf_ip) {
          std::string pl(reinterpret_cast<const char*>(v.payload), v.payload_length);
          uint32_t idx = 0;
          if (std::sscanf(pl.c_str(), "igbvf-rx-%05u:", &idx) == 1 && idx < count &&
              pl == Payload("rx", idx) && !seen[idx]) {
            seen[idx] = true;
            ++got;
          } else if (pl != Payload("rx", idx)) {
            return absl::InternalError("a datagram's content differs: " + pl.substr(0, 24));
          }
        } else {
          ++other;
        }
      }
      port->FreeBurst(absl::MakeConstSpan(b, n));
      if (n == 0) usleep(1000);
    }
    if (got != count) {
      return absl::InternalError(absl::StrCat("got ", got, " of ", count, " (", sent,
                                              " sent, other frames ", other, ")"));
    }
    return absl::StrCat(count, " datagrams, contents verified (", sent, " sendto, ", other,
                        " other frames ignored)");
  });
  // What the PF's spoof check (ip link ... spoofchk on) does with a frame whose source MAC is
  // not the VF's: reported, not judged (QEMU's igb model may or may not enforce it).
  Check("spoofed source MAC (observed)", [&]() -> absl::StatusOr<std::string> {
    packet::UdpSpec spoof = to_pf;
    spoof.src_mac.bytes[5] ^= 0x5a;
    PacketBuffer b[1];
    if (port->AllocBurst(absl::MakeSpan(b)) != 1) return absl::InternalError("no buffer");
    const std::string pl = "igbvf-spoof";
    b[0].length = packet::BuildUdp(spoof, reinterpret_cast<const uint8_t*>(pl.data()), pl.size(),
                                   b[0].data, b[0].capacity);
    if (port->TxBurst(absl::MakeConstSpan(b, 1)) != 1) return absl::InternalError("not queued");
    char buf[2048];
    bool arrived = false;
    for (int i = 0; i < 5 && !arrived; ++i) {
      ssize_t r = recv(s, buf, sizeof buf, 0);
      port->Service();
      arrived = r > 0 && std::string(buf, r) == pl;
    }
    return std::string(arrived ? "DELIVERED to the PF (spoof check not enforced here)"
                               : "dropped (spoof check enforced)");
  });
  close(s);

  Check("device never lied", [&]() -> absl::StatusOr<std::string> {
    const auto& st = port->stats();
    const auto& x = port->igbvf_stats();
    std::string d = absl::StrCat("rx ", st.rx_packets, " tx ", st.tx_packets, " completed ",
                                 st.tx_completed, " bad_descriptors ", st.bad_descriptors,
                                 " frame errors ", x.rx_frame_errors, " bad buffers ",
                                 st.bad_buffers);
    if (st.bad_descriptors != 0 || st.bad_buffers != 0) return absl::InternalError(d);
    return d;
  });
  port.reset();
  device.reset();
  std::printf("igbvf_check: %s: %d passed, %d failed\n", g_failed == 0 ? "PASS" : "FAIL", g_passed,
              g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return Main();
}
