// nic_probe: a NIC tenant for the host integration tests (xdp_nic pools), run under
// unprivileged uids against the real vfbrokerd. Prints `key=value` lines; exits 0 when the
// command ran, whatever the broker answered.
//
//   nic_probe SOCKET_DIR hold POOL MAC|- VLAN [DSTIP:PORT ...]
//       allocate a NIC (MAC "-": the broker picks; optional UDP flow filters), adopt its
//       AF_XDP socket as an AfXdpPort, print lease/mac/device/ifindex and `ready`, then
//       receive until stdin closes, obeying command lines on stdin:
//         report                              -> report count=N payloads=a,b,... (then cleared)
//         add DSTIP PORT                      -> added=<filter id> | added=<CODE>
//         remove FILTER_ID                    -> removed=OK | removed=<CODE>
//         send SRCMAC DSTMAC SRCIP DSTIP VLAN PAYLOAD   (VLAN 0: untagged) -> sent=<n>
//   nic_probe SOCKET_DIR confined POOL MAC FOREIGN_IFINDEX
//       allocate a NIC and, before adopting it, bind its socket to FOREIGN_IFINDEX (a device of
//       the broker's namespace): foreign_bind=<CODE>; then adopt (binds to the lease's own
//       device): adopt=<CODE>; then bind once more: rebind=<CODE>; prints tenant_binds=0|1
//   nic_probe SOCKET_DIR keep_unbound POOL MAC
//       allocate a NIC, take its socket and never bind it, release the lease (released=<CODE>),
//       then obey `bind IFINDEX` lines: bind the kept socket there (bound=<CODE>)
//   nic_probe SOCKET_DIR take POOL MAC
//       allocate a NIC and take its descriptors without binding the socket: device=, ifindex=,
//       ready=1; holds the lease until stdin closes
//   nic_probe SOCKET_DIR bad POOL FOREIGN_LEASE FOREIGN_FILTER IN_USE_MAC
//       malformed and unauthorized NIC requests; prints each one's status code
#include <arpa/inet.h>
#include <poll.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/broker_client.h"
#include "client/nic_port.h"
#include "vfdrivers/net/af_xdp_port.h"
#include "vfdrivers/net/af_xdp_socket.h"
#include "vfdrivers/net/packet.h"

namespace {

using vfclient::BrokerClient;
using vfclient::NicLease;
namespace v1 = vfbroker::v1;
namespace packet = vfdrivers::net::packet;

void Print(const std::string& key, const std::string& value) {
  std::printf("%s=%s\n", key.c_str(), value.c_str());
  std::fflush(stdout);
}

std::string Code(const absl::Status& status) {
  return status.ok() ? "OK" : absl::StatusCodeToString(status.code());
}

bool ParseMac(const std::string& text, packet::MacAddress* mac) {
  unsigned b[6];
  if (std::sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) !=
      6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) mac->bytes[i] = static_cast<uint8_t>(b[i]);
  return true;
}

uint32_t ParseIp(const std::string& text) {
  in_addr a{};
  inet_pton(AF_INET, text.c_str(), &a);
  return ntohl(a.s_addr);
}

v1::FlowFilter Udp(const std::string& dst_ip, uint32_t dst_port) {
  v1::FlowFilter f;
  f.set_protocol(v1::FlowFilter::PROTOCOL_UDP);
  f.set_dst_ip(dst_ip);
  f.set_dst_port(dst_port);
  return f;
}

int Confined(BrokerClient& client, const std::vector<std::string>& args) {
  v1::AllocateNicRequest request;
  request.set_pool(args[0]);
  if (args[1] != "-") request.set_mac(args[1]);
  absl::StatusOr<std::unique_ptr<NicLease>> lease = client.AllocateNic(request);
  if (!lease.ok()) {
    Print("status", Code(lease.status()));
    return 0;
  }
  const v1::Nic& nic = (*lease)->nic();
  Print("tenant_binds", nic.tenant_binds() ? "1" : "0");
  absl::StatusOr<vfclient::XdpDescriptors> fds = (*lease)->TakeXdpDescriptors();
  if (!fds.ok()) {
    Print("status", Code(fds.status()));
    return 0;
  }
  const int socket_fd = fds->socket.get();
  Print("foreign_bind",
        Code(vfdrivers::net::BindAfXdpSocket(socket_fd, std::stoi(args[2]), 0, nic.bind_flags())));
  std::optional<vfdrivers::net::AfXdpBindTarget> bind;
  if (nic.tenant_binds()) {
    bind = vfdrivers::net::AfXdpBindTarget{static_cast<int>(nic.ifindex()), nic.queue_id(),
                                           static_cast<uint16_t>(nic.bind_flags())};
  }
  absl::StatusOr<std::unique_ptr<vfdrivers::net::AfXdpPort>> port =
      vfdrivers::net::AfXdpPort::Adopt(std::move(fds->socket), std::move(fds->umem),
                                       vfclient::NicLayout(nic), bind);
  Print("adopt", Code(port.status()));
  if (!port.ok()) Print("message", std::string(port.status().message()));
  Print("rebind", Code(vfdrivers::net::BindAfXdpSocket(socket_fd, nic.ifindex(), 0,
                                                       nic.bind_flags())));
  Print("status", "OK");
  return 0;
}

int KeepUnbound(BrokerClient& client, const std::vector<std::string>& args) {
  v1::AllocateNicRequest request;
  request.set_pool(args[0]);
  if (args[1] != "-") request.set_mac(args[1]);
  absl::StatusOr<std::unique_ptr<NicLease>> lease = client.AllocateNic(request);
  if (!lease.ok()) {
    Print("status", Code(lease.status()));
    return 0;
  }
  const uint16_t flags = static_cast<uint16_t>((*lease)->nic().bind_flags());
  absl::StatusOr<vfclient::XdpDescriptors> fds = (*lease)->TakeXdpDescriptors();
  if (!fds.ok()) {
    Print("status", Code(fds.status()));
    return 0;
  }
  Print("ifindex", std::to_string((*lease)->nic().ifindex()));
  Print("released", Code((*lease)->Release()));
  std::string line;
  while (std::getline(std::cin, line)) {
    std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (w.size() == 2 && w[0] == "bind") {
      absl::Status bound =
          vfdrivers::net::BindAfXdpSocket(fds->socket.get(), std::stoi(w[1]), 0, flags);
      if (!bound.ok()) Print("bind_error", std::string(bound.message()));
      Print("bound", Code(bound));
    }
  }
  Print("status", "OK");
  return 0;
}

int Take(BrokerClient& client, const std::vector<std::string>& args) {
  v1::AllocateNicRequest request;
  request.set_pool(args[0]);
  if (args[1] != "-") request.set_mac(args[1]);
  absl::StatusOr<std::unique_ptr<NicLease>> lease = client.AllocateNic(request);
  if (!lease.ok()) {
    Print("status", Code(lease.status()));
    return 0;
  }
  absl::StatusOr<vfclient::XdpDescriptors> fds = (*lease)->TakeXdpDescriptors();
  if (!fds.ok()) {
    Print("status", Code(fds.status()));
    return 0;
  }
  Print("device", (*lease)->nic().device());
  Print("ifindex", std::to_string((*lease)->nic().ifindex()));
  Print("ready", "1");
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  Print("status", "OK");
  return 0;
}

int Hold(BrokerClient& client, const std::vector<std::string>& args) {
  v1::AllocateNicRequest request;
  request.set_pool(args[0]);
  if (args[1] != "-") request.set_mac(args[1]);
  request.set_vlan(static_cast<uint32_t>(std::stoul(args[2])));
  for (size_t i = 3; i < args.size(); ++i) {
    std::vector<std::string> parts = absl::StrSplit(args[i], ':');
    if (parts.size() == 2) *request.add_filters() = Udp(parts[0], std::stoul(parts[1]));
  }
  absl::StatusOr<std::unique_ptr<NicLease>> lease = client.AllocateNic(request);
  if (!lease.ok()) {
    Print("status", Code(lease.status()));
    Print("message", std::string(lease.status().message()));
    return 0;
  }
  const v1::Nic& nic = (*lease)->nic();
  Print("lease", (*lease)->id());
  Print("mac", nic.mac());
  Print("device", nic.device());
  Print("ifindex", std::to_string(nic.ifindex()));
  Print("filters", std::to_string(nic.filters_size()));
  if (nic.filters_size() > 0) Print("filter_id", nic.filters(0).id());
  absl::StatusOr<std::unique_ptr<vfdrivers::net::AfXdpPort>> port = vfclient::AdoptNicPort(**lease);
  if (!port.ok()) {
    Print("status", "ADOPT_FAILED");
    Print("message", std::string(port.status().message()));
    return 0;
  }
  Print("ready", "1");

  std::multiset<std::string> payloads;
  uint64_t count = 0;
  std::string pending;
  vfdrivers::net::PacketBuffer bufs[32];
  bool stdin_open = true;
  while (stdin_open) {
    size_t n = (*port)->RxBurst(absl::MakeSpan(bufs));
    for (size_t i = 0; i < n; ++i) {
      packet::UdpView view;
      ++count;
      if (packet::ParseUdp(bufs[i].data, bufs[i].length, &view) == packet::ParseResult::kOk) {
        payloads.insert(std::string(reinterpret_cast<const char*>(view.payload),
                                    view.payload_length));
      } else {
        payloads.insert("(not udp)");
      }
    }
    (*port)->FreeBurst(absl::MakeConstSpan(bufs, n));
    (*port)->Service();
    pollfd pfd{0, POLLIN, 0};
    if (::poll(&pfd, 1, n > 0 ? 0 : 1) <= 0) continue;
    char chunk[512];
    ssize_t got = ::read(0, chunk, sizeof(chunk));
    if (got <= 0) {
      stdin_open = false;
      break;
    }
    pending.append(chunk, static_cast<size_t>(got));
    size_t eol;
    while ((eol = pending.find('\n')) != std::string::npos) {
      const std::string line = pending.substr(0, eol);
      pending.erase(0, eol + 1);
      std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (w.empty()) continue;
      if (w[0] == "report") {
        // Let frames in flight land first.
        for (int k = 0; k < 50; ++k) {
          size_t m = (*port)->RxBurst(absl::MakeSpan(bufs));
          for (size_t i = 0; i < m; ++i) {
            packet::UdpView view;
            ++count;
            if (packet::ParseUdp(bufs[i].data, bufs[i].length, &view) ==
                packet::ParseResult::kOk) {
              payloads.insert(std::string(reinterpret_cast<const char*>(view.payload),
                                          view.payload_length));
            } else {
              payloads.insert("(not udp)");
            }
          }
          (*port)->FreeBurst(absl::MakeConstSpan(bufs, m));
          ::usleep(1000);
        }
        std::printf("report count=%llu payloads=%s\n", static_cast<unsigned long long>(count),
                    absl::StrJoin(payloads, ",").c_str());
        std::fflush(stdout);
        payloads.clear();
        count = 0;
      } else if (w[0] == "add" && w.size() == 3) {
        absl::StatusOr<v1::FlowFilter> f = (*lease)->AddFlowFilter(Udp(w[1], std::stoul(w[2])));
        Print("added", f.ok() ? f->id() : Code(f.status()));
      } else if (w[0] == "remove" && w.size() == 2) {
        Print("removed", Code((*lease)->RemoveFlowFilter(w[1])));
      } else if (w[0] == "send" && w.size() == 7) {
        packet::UdpSpec spec;
        ParseMac(w[1], &spec.src_mac);
        ParseMac(w[2], &spec.dst_mac);
        spec.src_ip = ParseIp(w[3]);
        spec.dst_ip = ParseIp(w[4]);
        spec.src_port = 6000;
        spec.dst_port = 7000;
        const unsigned vlan = std::stoul(w[5]);
        if (vlan != 0) {
          spec.has_vlan = true;
          spec.vlan_tci = static_cast<uint16_t>(vlan);
        }
        vfdrivers::net::PacketBuffer buf;
        size_t sent = 0;
        if ((*port)->AllocBurst(absl::MakeSpan(&buf, 1)) == 1) {
          buf.length = static_cast<uint32_t>(packet::BuildUdp(
              spec, reinterpret_cast<const uint8_t*>(w[6].data()), w[6].size(), buf.data,
              buf.capacity));
          sent = (*port)->TxBurst(absl::MakeConstSpan(&buf, 1));
          for (int k = 0; k < 100 && (*port)->tx_frames() > 0; ++k) {
            (*port)->Service();
            ::usleep(1000);
          }
        }
        Print("sent", std::to_string(sent));
      }
    }
  }
  port->reset();
  Print("status", Code((*lease)->Release()));
  return 0;
}

int Bad(BrokerClient& client, const std::vector<std::string>& args) {
  const std::string& pool = args[0];
  const std::string& foreign_lease = args[1];
  const std::string& foreign_filter = args[2];
  const std::string& in_use_mac = args[3];
  auto nic = [&](const std::string& key, const std::function<void(v1::AllocateNicRequest&)>& f) {
    v1::AllocateNicRequest request;
    request.set_pool(pool);
    f(request);
    absl::StatusOr<std::unique_ptr<NicLease>> lease = client.AllocateNic(request);
    Print(key, Code(lease.status()));
    if (lease.ok()) (void)(*lease)->Release();
  };
  nic("mac_garbage", [](auto& r) { r.set_mac("zz:zz:zz:zz:zz:zz"); });
  nic("mac_short", [](auto& r) { r.set_mac("02:00:00"); });
  nic("mac_multicast", [](auto& r) { r.set_mac("01:00:5e:00:00:01"); });
  nic("mac_broadcast", [](auto& r) { r.set_mac("ff:ff:ff:ff:ff:ff"); });
  nic("mac_zero", [](auto& r) { r.set_mac("00:00:00:00:00:00"); });
  nic("vlan_4095", [](auto& r) { r.set_vlan(4095); });
  nic("vlan_5000", [](auto& r) { r.set_vlan(5000); });
  nic("queues_2", [](auto& r) { r.set_queues(2); });
  nic("overlapping_filters", [](auto& r) {
    *r.add_filters() = Udp("10.77.0.10", 5000);
    v1::FlowFilter exact = Udp("10.77.0.10", 5000);
    exact.set_src_ip("10.77.0.2");
    exact.set_src_port(1234);
    *r.add_filters() = exact;
  });
  nic("filter_bad_ip", [](auto& r) { *r.add_filters() = Udp("10.77.0.300", 5000); });
  nic("filter_ipv6", [](auto& r) { *r.add_filters() = Udp("fe80::1", 5000); });
  nic("mac_in_use", [&](auto& r) { r.set_mac(in_use_mac); });
  nic("unknown_pool", [](auto& r) { r.set_pool("no-such-pool"); });
  nic("nic_on_block_pool", [](auto& r) { r.set_pool("scratch"); });
  Print("add_filter_foreign",
        Code(client.AddFlowFilter(foreign_lease, Udp("10.77.0.10", 6000)).status()));
  Print("remove_filter_foreign", Code(client.RemoveFlowFilter(foreign_lease, foreign_filter)));
  Print("add_filter_missing",
        Code(client.AddFlowFilter("lease-0000000000000000", Udp("10.77.0.10", 6000)).status()));
  Print("release_foreign", Code(client.Release(foreign_lease)));
  absl::StatusOr<std::vector<v1::Lease>> leases = client.ListLeases();
  Print("leases_after", leases.ok() ? std::to_string(leases->size()) : Code(leases.status()));
  Print("status", "OK");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: nic_probe SOCKET_DIR COMMAND ARGS...\n");
    return 2;
  }
  vfclient::ConnectOptions options;
  options.socket_dir = argv[1];
  absl::StatusOr<std::shared_ptr<BrokerClient>> client = BrokerClient::Connect(options);
  if (!client.ok()) {
    Print("status", Code(client.status()));
    return 1;
  }
  const std::string command = argv[2];
  std::vector<std::string> args(argv + 3, argv + argc);
  if (command == "hold" && args.size() >= 3) return Hold(**client, args);
  if (command == "bad" && args.size() == 4) return Bad(**client, args);
  if (command == "confined" && args.size() == 3) return Confined(**client, args);
  if (command == "keep_unbound" && args.size() == 2) return KeepUnbound(**client, args);
  if (command == "take" && args.size() == 2) return Take(**client, args);
  std::fprintf(stderr, "nic_probe: bad command\n");
  return 2;
}
