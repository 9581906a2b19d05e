// Just enough rtnetlink (RFC 3549; include/uapi/linux/rtnetlink.h, if_link.h) for the xdp_nic
// backend, over libmnl: create macvlan and VLAN devices, set them up, delete them, list links.
// Acts in the calling thread's network namespace. Needs CAP_NET_ADMIN. Thread-safe (each call
// opens its own netlink socket).
#ifndef VFBROKER_BROKER_BACKENDS_RTNETLINK_H_
#define VFBROKER_BROKER_BACKENDS_RTNETLINK_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfbroker::rtnl {

struct Link {
  int ifindex = 0;
  std::string name;
  std::string kind;             // IFLA_INFO_KIND: "macvlan", "vlan", "veth", ... ("" if none)
  int parent = 0;               // IFLA_LINK (0 if none)
  std::array<uint8_t, 6> mac{};  // IFLA_ADDRESS (zero if not Ethernet)
  uint32_t macvlan_mode = 0;    // IFLA_MACVLAN_MODE
  uint16_t vlan_id = 0;         // IFLA_VLAN_ID
};

// The errno of a netlink error maps to a status: EEXIST and EADDRINUSE (macvlan: address
// already used on that lower device) -> ALREADY_EXISTS, ENODEV -> NOT_FOUND, others by errno.

// ip link add NAME link PARENT address MAC type macvlan mode MODE (MACVLAN_MODE_*).
absl::Status CreateMacvlan(const std::string& name, int parent,
                           const std::array<uint8_t, 6>& mac, uint32_t mode);
// ip link add NAME link PARENT netns NETNS index IFINDEX address MAC type macvlan mode MODE:
// PARENT is a device of the calling thread's namespace, the macvlan is created directly in the
// namespace `netns_fd` names (cheaper than creating it here and moving it: a move waits for
// RCU, ~15 ms measured) with ifindex `ifindex` there (0: the namespace picks one).
absl::Status CreateMacvlanInNetns(const std::string& name, int parent,
                                  const std::array<uint8_t, 6>& mac, uint32_t mode, int netns_fd,
                                  int ifindex);
// ip link add NAME link PARENT type vlan id VID (802.1Q).
absl::Status CreateVlan(const std::string& name, int parent, uint16_t vid);
absl::Status SetUp(int ifindex);
// No IPv6 link-local address on the device (IFLA_INET6_ADDR_GEN_MODE = NONE): the host's own
// stack then sends nothing (DAD, router solicitations) from a lease's MAC. OK where the kernel
// has no IPv6 on the device.
absl::Status DisableIpv6AddressGeneration(int ifindex);
// NOT_FOUND if no such device.
absl::Status Delete(int ifindex);
absl::StatusOr<std::vector<Link>> ListLinks();
// NOT_FOUND if no such device.
absl::StatusOr<Link> GetLink(const std::string& name);

}  // namespace vfbroker::rtnl

#endif  // VFBROKER_BROKER_BACKENDS_RTNETLINK_H_
