// nic_vf_tenant: a tenant of a sriov_nic pool, in the tests/vm guest.
//
// As root it raises RLIMIT_MEMLOCK (VFIO charges pinned DMA pages to it) and drops to --uid; then
// connects to vfbrokerd with libvfclient, allocates a NIC (AllocateNic, --mac or broker-picked),
// takes the lease's VFIO descriptors, adopts them and opens the project's igbvf driver on the VF
// (the PF must give it the lease's MAC over the mailbox), waits for link, checks the PF refuses
// another MAC (trust off), and exchanges verified UDP both ways with a kernel socket on the PF's
// address (which any uid may bind: a port above 1024). With --watch_seconds it then keeps
// polling and counts frames that are not its own (another tenant's traffic reaching it), then
// holds until killed (--hold) or releases. On a VLAN lease the PF tags what the VF sends and strips
// what it receives: a tagged datagram at the VF fails the tenant. The uid drop, group peek,
// exchange and watch are nic_tenant_lib's (shared with virtio_nic_tenant).
//
// Prints "TENANT OK lease=<id> vf=<bdf> mac=<mac> group=<path> uid=<uid>", then
// "FOREIGN frames=<n> own=<n>" after watching, "HOLDING" / "RELEASED"; "TENANT FAIL: <why>" and
// exit 1 otherwise. --peek=/dev/vfio/N: first try to open another tenant's group node
// (printed as "PEEK <path> errno=<name>").
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "tests/vm/nic_tenant_lib.h"
#include "vfdrivers/net/igbvf/igbvf.h"
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

using vfdrivers::net::igbvf::IgbvfPort;
using vfdrivers::net::igbvf::MacAddress;
using vmtest::Fail;

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (absl::Status s =
          vmtest::DropToUidAndPeek(absl::GetFlag(FLAGS_uid), absl::GetFlag(FLAGS_peek));
      !s.ok()) {
    return Fail(s.ToString());
  }
  vmtest::UdpPeer pf;
  if (!vmtest::ParseMac(absl::GetFlag(FLAGS_pf_mac), &pf.peer_mac)) {
    return Fail("--pf_mac: not a MAC");
  }
  pf.peer_ip = vmtest::ParseIp(absl::GetFlag(FLAGS_pf_ip));
  pf.own_ip = vmtest::ParseIp(absl::GetFlag(FLAGS_vf_ip));
  const uint32_t count = absl::GetFlag(FLAGS_count);
  pf.count = count;

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
  absl::StatusOr<std::unique_ptr<vfclient::NicLease>> lease =
      vmtest::AllocateNic(absl::GetFlag(FLAGS_socket_dir), request);
  if (!lease.ok()) return Fail(absl::StrCat("AllocateNic: ", lease.status().ToString()));
  const vfbroker::v1::Nic nic = (*lease)->nic();
  std::printf("LEASE id=%s vf=%s mac=%s vlan=%u pf=%s\n", (*lease)->id().c_str(),
              nic.pci_address().c_str(), nic.mac().c_str(), nic.vlan(), nic.interface().c_str());
  MacAddress mac;
  if (!vmtest::ParseMac(nic.mac(), &mac.bytes)) {
    return Fail("the lease's MAC does not parse: " + nic.mac());
  }
  pf.own_mac = mac.bytes;
  pf.tag = nic.pci_address();  // in every payload: a datagram reaching the wrong tenant shows

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
                        p.ok() ? "PF gave MAC " + vmtest::MacText((*p)->mac().bytes)
                               : p.status().ToString());
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
    if (s.ok()) {
      return Fail("the PF let the VF take MAC " + vmtest::MacText(other.bytes) +
                  " (trust is on?)");
    }
    std::printf("MAC-CHANGE refused: %s\n", std::string(s.message()).c_str());
  }
  if (count != 0) {
    if (absl::Status s = vmtest::ExchangeUdp(*port, pf); !s.ok()) return Fail(s.ToString());
  }
  std::printf("TENANT OK lease=%s vf=%s mac=%s group=%s uid=%u exchanged=%u\n",
              (*lease)->id().c_str(), nic.pci_address().c_str(), nic.mac().c_str(),
              (*device)->group_path().c_str(), static_cast<unsigned>(::getuid()), count);
  // Watch: everything the VF receives now should be addressed to it (its MAC, or broadcast);
  // a UDP frame for another tenant's address, or unicast to another MAC, is foreign.
  if (const uint32_t watch = absl::GetFlag(FLAGS_watch_seconds); watch != 0) {
    std::printf("WATCHING\n");
    const vmtest::WatchCounts counts =
        vmtest::WatchForeign(*port, mac.bytes, pf.own_ip, absl::Seconds(watch),
                             absl::GetFlag(FLAGS_watch_until_file));
    std::printf("FOREIGN frames=%llu own=%llu\n", static_cast<unsigned long long>(counts.foreign),
                static_cast<unsigned long long>(counts.own));
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
