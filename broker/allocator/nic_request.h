// Validation of the tenant-supplied parts of a NIC lease (AllocateNic, AddFlowFilter): MAC
// addresses, VLAN ids, queue counts and flow filters. Pure logic, no system calls; every input
// is hostile. Errors are the statuses the tenant gets:
//   INVALID_ARGUMENT  malformed (garbage MAC, multicast or zero MAC, VLAN 4095 or above, bad IP
//                     literal, port above 65535, overlapping filters within one lease)
//   UNIMPLEMENTED     well-formed but beyond what the xdp_nic backend can do (more than one
//                     queue, a TX rate limit, IPv6 or prefix filters, filters without a
//                     destination address and port, protocol "any")
#ifndef VFBROKER_BROKER_ALLOCATOR_NIC_REQUEST_H_
#define VFBROKER_BROKER_ALLOCATOR_NIC_REQUEST_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "broker/journal/journal.pb.h"
#include "proto/vfbroker/v1/broker.pb.h"

namespace vfbroker {

using MacBytes = std::array<uint8_t, 6>;

inline constexpr size_t kMaxFiltersPerLease = 64;
inline constexpr uint32_t kMaxVlanId = 4094;  // IEEE 802.1Q: 0 and 4095 are reserved

// "02:00:5e:10:00:01" (case-insensitive, ':' or '-' separated, two hex digits each). Refuses
// multicast (I/G bit set, RFC 7042 2.1; broadcast included) and all-zero addresses.
absl::StatusOr<MacBytes> ParseUnicastMac(absl::string_view text);
// Lower-case, colon-separated.
std::string FormatMac(const MacBytes& mac);
// A locally administered unicast address (RFC 7042 2.1: U/L bit set, I/G bit clear) from 48
// random bits; never all zero.
MacBytes LocalUnicastMac(uint64_t random_bits);

// 0 (untagged) or 1..4094.
absl::Status ValidateVlan(uint32_t vlan);

// Everything of an AllocateNicRequest but the pool and the filters: MAC (empty: the broker
// picks), VLAN, queues (0 or 1), TX rate (0: xdp_nic does not police).
absl::Status ValidateNicShape(const v1::AllocateNicRequest& request);

// A filter in the form the steering program matches: UDP or TCP, an IPv4 destination address
// and port, and either an exact IPv4 source address and port or any source. `id` is left empty.
absl::StatusOr<journal::NicFilter> NormalizeFilter(const v1::FlowFilter& filter);

// True if some packet matches both.
bool FiltersOverlap(const journal::NicFilter& a, const journal::NicFilter& b);

// INVALID_ARGUMENT if `candidate` overlaps one of `existing` (naming it), or if the lease would
// have more than kMaxFiltersPerLease filters.
absl::Status CheckFilterFits(const std::vector<journal::NicFilter>& existing,
                             const journal::NicFilter& candidate);

// Normalizes every filter of a request and checks they do not overlap each other.
absl::StatusOr<std::vector<journal::NicFilter>> NormalizeFilters(
    const google::protobuf::RepeatedPtrField<v1::FlowFilter>& filters);

// The API's view of a normalized filter.
v1::FlowFilter ToApiFilter(const journal::NicFilter& filter);
std::string Ipv4String(uint32_t host_order);

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_ALLOCATOR_NIC_REQUEST_H_
