// Reading, defaulting and validating vfbrokerd's configuration (broker/config/config.proto, in
// protobuf text format; deploy/systemd/vfbroker.textproto is an annotated example), and turning
// its policy parts into the allocator's types.
//
// A config that ParseBrokerConfig or LoadBrokerConfig returns is complete (defaults filled in)
// and valid: the rest of the broker relies on that and does not check again. A refusal lists
// every problem found, each prefixed by the path of the offending field, e.g.
//   pools[1].loop_extent.alignment_bytes: must be a power of two >= 4096, got 3000
//
// All functions are stateless and thread-safe.
#ifndef VFBROKER_BROKER_CONFIG_CONFIG_LOADER_H_
#define VFBROKER_BROKER_CONFIG_CONFIG_LOADER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "broker/allocator/allocator.h"
#include "broker/config/config.pb.h"

namespace vfbroker {

// Values the broker uses for fields the operator left unset (zero or empty: proto3 cannot tell
// those from "not written", and none of them is a useful setting).
inline constexpr char kDefaultSocketDir[] = "/run/vfbroker";
inline constexpr uint32_t kDefaultSocketMode = 0666;
inline constexpr char kDefaultStateDir[] = "/var/lib/vfbroker";
inline constexpr uint32_t kDefaultMaxSessions = 4096;
inline constexpr uint32_t kDefaultMaxLeasesPerSession = 256;
inline constexpr uint64_t kDefaultExtentAlignment = uint64_t{1} << 20;
inline constexpr uint32_t kDefaultNvmeIoQueuesPerVf = 2;
inline constexpr uint32_t kDefaultNvmeInterruptsPerVf = 1;
inline constexpr uint32_t kDefaultXdpFrameSize = 4096;
inline constexpr uint32_t kDefaultXdpFrameCount = 4096;
inline constexpr uint32_t kDefaultXdpRingSize = 2048;

// Limits that validation enforces.
inline constexpr uint64_t kMinExtentAlignment = 4096;  // the largest common page size
inline constexpr uint64_t kMaxExtentAlignment = uint64_t{1} << 30;
inline constexpr size_t kMaxConfigBytes = size_t{1} << 20;  // a config is a few KiB at most
inline constexpr int kMaxNvmeSlots = 128;               // VFs per nvme_sriov pool
inline constexpr uint32_t kMaxNvmeQueuesPerVf = 64;     // VQ and VI resources per VF
inline constexpr uint32_t kMaxXdpTenants = 4096;         // leases per xdp_nic pool
inline constexpr uint32_t kMaxSriovVfs = 256;            // VFs per sriov_nic pool (PCIe ARI limit)
inline constexpr uint32_t kMaxPciNicFunctions = 256;     // functions per pci_nic pool
inline constexpr uint32_t kMaxXdpFrameCount = 65536;     // UMEM chunks per lease

// Parses `text` (protobuf text format), fills defaults and validates.
//   INVALID_ARGUMENT  a syntax error or unknown field ("line L, column C: ..." with 1-based
//                     positions), text longer than kMaxConfigBytes, or an invalid config (every
//                     problem, each naming its field path, joined by "; ").
absl::StatusOr<config::BrokerConfig> ParseBrokerConfig(std::string_view text);

// Reads the file at `path` and does what ParseBrokerConfig does with its contents. Errors reading
// the file name the path: NOT_FOUND if it does not exist, PERMISSION_DENIED if it may not be
// read, INVALID_ARGUMENT if it is larger than kMaxConfigBytes, other codes as errno suggests.
absl::StatusOr<config::BrokerConfig> LoadBrokerConfig(const std::string& path);

// Fills every unset field that has a default (see the constants above). Idempotent.
void ApplyBrokerConfigDefaults(config::BrokerConfig* config);

// OK if `config` (with defaults already applied) is usable; otherwise INVALID_ARGUMENT listing
// every problem as described above.
absl::Status ValidateBrokerConfig(const config::BrokerConfig& config);

// The allocator's view of a pool's `access` block.
AccessPolicy ToAccessPolicy(const config::Access& access);

// The allocator's view of an xdp_nic pool: a slot pool of max_tenants slots (one lease each).
BlockPoolSpec XdpNicPoolSpec(const config::PoolConfig& pool);
// The allocator's view of a sriov_nic pool: a slot pool of max_vfs slots (slot i is VF i).
BlockPoolSpec SriovNicPoolSpec(const config::PoolConfig& pool);
// The allocator's view of a pci_nic pool: one slot per listed function (slot i is
// pci_addresses[i]).
BlockPoolSpec PciNicPoolSpec(const config::PoolConfig& pool);

// The allocator's view of `default_quota` and `quotas`. For a validated config each uid appears
// once; otherwise its first entry counts.
QuotaPolicy ToQuotaPolicy(const config::BrokerConfig& config);

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_CONFIG_CONFIG_LOADER_H_
