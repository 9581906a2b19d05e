// What a NIC tenant in the tests/vm guest does with any net::Port, whichever driver opened it:
// drop to an unprivileged uid, try another tenant's group node, exchange verified UDP datagrams
// both ways with a kernel socket on the peer's address, and count frames that are not its own.
// Used by nic_vf_tenant (igbvf on a sriov_nic VF) and virtio_nic_tenant (a pci_nic device).
//
// Not thread-safe: one tenant thread.
#ifndef VFBROKER_TESTS_VM_NIC_TENANT_LIB_H_
#define VFBROKER_TESTS_VM_NIC_TENANT_LIB_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "vfdrivers/net/port.h"

namespace vmtest {

using Mac = std::array<uint8_t, 6>;

// Raises RLIMIT_MEMLOCK (VFIO charges pinned DMA pages to the process) and drops to uid:uid for
// good (a later setresuid(0) must fail).
absl::Status DropToUid(int uid);
// Tries to open `path` (another tenant's /dev/vfio/N); prints "PEEK <path> errno=<name>" and
// succeeds only if the open was refused.
absl::Status PeekRefused(const std::string& path);
// A tenant's first steps: DropToUid(uid) unless uid < 0, then PeekRefused(peek) unless empty.
absl::Status DropToUidAndPeek(int uid, const std::string& peek);
// Connects to vfbrokerd's socket in `socket_dir` (libvfclient) and asks for `request`; the lease
// keeps the connection. A failed connect is UNAVAILABLE "connect: ...".
absl::StatusOr<std::unique_ptr<vfclient::NicLease>> AllocateNic(
    const std::string& socket_dir, const vfbroker::v1::AllocateNicRequest& request);
// Prints "TENANT FAIL: <why>" (what the scenarios wait for) and returns main's exit code, 1.
int Fail(const std::string& why);

bool ParseMac(const std::string& text, Mac* mac);
std::string MacText(const Mac& mac);
uint32_t ParseIp(const std::string& text);  // host order; 0 if malformed

struct UdpPeer {
  Mac own_mac{};       // the tenant's (source of what it sends)
  Mac peer_mac{};      // the kernel interface's
  uint32_t own_ip = 0;   // host order; the peer has a permanent neighbour entry for it
  uint32_t peer_ip = 0;
  std::string tag;     // in every payload, so that a datagram reaching another tenant shows
  uint32_t count = 32; // datagrams each way
  absl::Duration timeout = absl::Seconds(30);
};

// Tenant -> peer (a kernel UDP socket bound to peer_ip, port 20000 + low byte of own_ip: any uid
// may bind it) and peer -> tenant (port 6000), every datagram compared byte for byte; the
// peer side re-sends what is missing every 2 s. A datagram to the tenant's port that is not one
// of its own fails it, and so does one to the tenant that arrives VLAN-tagged.
absl::Status ExchangeUdp(vfdrivers::net::Port& port, const UdpPeer& peer);

struct WatchCounts {
  uint64_t own = 0;      // to its MAC and address, or broadcast/multicast
  uint64_t foreign = 0;  // unicast to another MAC, or UDP to another address
};
// Polls the port for `duration` (or until `stop_file` exists) and sorts what arrives.
WatchCounts WatchForeign(vfdrivers::net::Port& port, const Mac& own_mac, uint32_t own_ip,
                         absl::Duration duration, const std::string& stop_file);

}  // namespace vmtest

#endif  // VFBROKER_TESTS_VM_NIC_TENANT_LIB_H_
