// virtio_nic_tenant: a tenant of a pci_nic pool (whole virtio-net devices), in the tests/vm guest.
//
// As root it raises RLIMIT_MEMLOCK and drops to --uid; then connects to vfbrokerd with
// libvfclient, allocates a NIC (AllocateNic; --ask_mac / --ask_vlan only to see them refused),
// opens the lease with client/nic_virtio.h's OpenVirtioNet (the project's virtio-net driver over
// the VFIO descriptors; promiscuous mode off through the control queue), waits for link and
// exchanges verified UDP both ways with the peer virtio device's kernel interface. Then, with
// --set_mac, sets another MAC through the control queue (VIRTIO_NET_CTRL_MAC_ADDR_SET); with
// --watch_seconds it counts frames that are not its own; then holds until killed (--hold) or
// releases.
//
// Prints "LEASE id=<id> dev=<bdf> mac=<mac>", "DEVICE mac=<mac> promisc_off=<0|1>",
// "TENANT OK lease=<id> dev=<bdf> mac=<mac> group=<path> uid=<uid> exchanged=<n>",
// "MAC-SET <mac>", "WATCHING", "FOREIGN frames=<n> own=<n>", "HOLDING" / "RELEASED";
// "TENANT FAIL: <why>" and exit 1 otherwise. --peek=/dev/vfio/N: first try to open another
// tenant's group node ("PEEK <path> errno=<name>").
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "client/nic_virtio.h"
#include "tests/vm/nic_tenant_lib.h"

ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "the broker's socket directory");
ABSL_FLAG(std::string, pool, "vnet", "the pci_nic pool");
ABSL_FLAG(int, uid, -1, "drop to this uid (and gid) first");
ABSL_FLAG(std::string, ask_mac, "", "a MAC to ask for (a pci_nic pool must refuse it)");
ABSL_FLAG(uint32_t, ask_vlan, 0, "a VLAN to ask for (a pci_nic pool must refuse it)");
ABSL_FLAG(std::string, peer_mac, "", "the peer kernel interface's MAC");
ABSL_FLAG(std::string, peer_ip, "10.10.0.1", "the peer kernel interface's IPv4 address");
ABSL_FLAG(std::string, own_ip, "", "this tenant's IPv4 address (the peer has a neighbour entry)");
ABSL_FLAG(uint32_t, count, 32, "datagrams each way (0: no exchange)");
ABSL_FLAG(std::string, set_mac, "", "after the exchange, set this MAC through the control queue");
ABSL_FLAG(uint32_t, watch_seconds, 0, "after the exchange, count foreign frames this long");
ABSL_FLAG(std::string, watch_until_file, "", "stop watching early once this file exists");
ABSL_FLAG(bool, hold, false, "hold the lease until killed");
ABSL_FLAG(std::string, peek, "", "a /dev/vfio group node to try to open first");
ABSL_FLAG(bool, promiscuous, false,
          "leave the device promiscuous (the scenario's proof that the wire is shared)");

using vmtest::Fail;

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (absl::Status s =
          vmtest::DropToUidAndPeek(absl::GetFlag(FLAGS_uid), absl::GetFlag(FLAGS_peek));
      !s.ok()) {
    return Fail(s.ToString());
  }
  const uint32_t count = absl::GetFlag(FLAGS_count);
  vmtest::UdpPeer peer;
  if (count != 0 && !vmtest::ParseMac(absl::GetFlag(FLAGS_peer_mac), &peer.peer_mac)) {
    return Fail("--peer_mac: not a MAC");
  }
  peer.peer_ip = vmtest::ParseIp(absl::GetFlag(FLAGS_peer_ip));
  peer.own_ip = vmtest::ParseIp(absl::GetFlag(FLAGS_own_ip));
  peer.count = count;

  vfbroker::v1::AllocateNicRequest request;
  request.set_pool(absl::GetFlag(FLAGS_pool));
  request.set_mac(absl::GetFlag(FLAGS_ask_mac));
  request.set_vlan(absl::GetFlag(FLAGS_ask_vlan));
  absl::StatusOr<std::unique_ptr<vfclient::NicLease>> lease =
      vmtest::AllocateNic(absl::GetFlag(FLAGS_socket_dir), request);
  if (!lease.ok()) return Fail(absl::StrCat("AllocateNic: ", lease.status().ToString()));
  const vfbroker::v1::Nic nic = (*lease)->nic();
  std::printf("LEASE id=%s dev=%s mac=%s\n", (*lease)->id().c_str(), nic.pci_address().c_str(),
              nic.mac().c_str());
  if (!vmtest::ParseMac(nic.mac(), &peer.own_mac)) return Fail("the lease's MAC: " + nic.mac());
  peer.tag = nic.pci_address();

  vfdrivers::net::virtio_net::Options o;
  o.rx_ring_size = 256;
  o.tx_ring_size = 256;
  o.buffer_count = 1024;
  o.promiscuous_off = !absl::GetFlag(FLAGS_promiscuous);
  absl::StatusOr<vfclient::VirtioNetNic> opened = vfclient::OpenVirtioNet(**lease, o);
  if (!opened.ok()) return Fail(absl::StrCat("OpenVirtioNet: ", opened.status().ToString()));
  vfdrivers::net::virtio_net::VirtioNetPort& port = *opened->port;
  std::printf("DEVICE mac=%s promisc_off=%d\n", vmtest::MacText(port.mac()).c_str(),
              port.promiscuous_off() ? 1 : 0);
  if (absl::Status s = port.WaitForLink(absl::Seconds(20)); !s.ok()) {
    return Fail("link: " + s.ToString());
  }
  if (count != 0) {
    if (absl::Status s = vmtest::ExchangeUdp(port, peer); !s.ok()) return Fail(s.ToString());
  }
  std::printf("TENANT OK lease=%s dev=%s mac=%s group=%s uid=%u exchanged=%u\n",
              (*lease)->id().c_str(), nic.pci_address().c_str(), nic.mac().c_str(),
              opened->device->group_path().c_str(), static_cast<unsigned>(::getuid()), count);
  vmtest::Mac own = peer.own_mac;
  if (const std::string set = absl::GetFlag(FLAGS_set_mac); !set.empty()) {
    vmtest::Mac mac;
    if (!vmtest::ParseMac(set, &mac)) return Fail("--set_mac: not a MAC");
    if (absl::Status s = port.SetMac(mac); !s.ok()) return Fail("SetMac: " + s.ToString());
    if (port.mac() != mac) {
      return Fail("SetMac: the driver still reports " + vmtest::MacText(port.mac()));
    }
    own = mac;
    std::printf("MAC-SET %s\n", vmtest::MacText(mac).c_str());
  }
  if (const uint32_t watch = absl::GetFlag(FLAGS_watch_seconds); watch != 0) {
    std::printf("WATCHING\n");
    const vmtest::WatchCounts counts = vmtest::WatchForeign(
        port, own, peer.own_ip, absl::Seconds(watch), absl::GetFlag(FLAGS_watch_until_file));
    std::printf("FOREIGN frames=%llu own=%llu\n", static_cast<unsigned long long>(counts.foreign),
                static_cast<unsigned long long>(counts.own));
  }
  if (absl::GetFlag(FLAGS_hold)) {
    std::printf("HOLDING\n");
    while (true) ::pause();
  }
  opened->port.reset();
  opened->device.reset();
  if (absl::Status s = (*lease)->Release(); !s.ok()) return Fail("release: " + s.ToString());
  std::printf("RELEASED\n");
  return 0;
}
