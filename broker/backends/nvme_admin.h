// NVMe admin commands the nvme_sriov backend sends to a physical function, through the kernel
// nvme driver's admin passthrough (NVME_IOCTL_ADMIN_CMD on /dev/nvmeN), and parsers for their
// replies.
//
// Facts from the NVMe Base Specification 2.0 (section titles; the figures are in them):
//   Identify (admin opcode 06h), CDW10 bits 7:0 CNS, bits 31:16 CNTID:
//     11h  Identify Namespace data structure for an allocated NSID (NVM Command Set: NSZE at
//          byte 0, NLBAF 25, FLBAS 26, NMIC 30 bit 0 = may be shared, LBA formats from 128,
//          4 bytes each: MS bits 15:0, LBADS bits 23:16) - also for a namespace attached to no
//          controller, which CNS 00h would answer with zeroes;
//     12h  Controller List of controllers attached to NSID (u16 count, then u16 CNTLIDs, at most
//          2047 entries);
//     14h  Primary Controller Capabilities (CNTLID 1:0, VQFRT 35:32, VQRFA 39:36, VQRFAP 41:40,
//          VQFRSM 45:44, VIFRT 67:64, VIRFA 71:68, VIRFAP 73:72, VIFRSM 77:76);
//     15h  Secondary Controller List (byte 0: number of entries, at most 127; entries of 32 bytes
//          from byte 32: SCID 1:0, PCID 3:2, SCS 4 bit 0 = online, VFN 9:8, NVQ 11:10, NVI 13:12).
//   Virtualization Management (opcode 1Ch): CDW10 bits 3:0 ACT (1 primary flexible allocation,
//     7 secondary offline, 8 secondary assign, 9 secondary online), bits 10:8 RT (0 VQ, 1 VI),
//     bits 31:16 CNTLID; CDW11 bits 15:0 NR. A secondary controller takes resources only while
//     offline; the primary's flexible allocation takes effect at its next reset (section
//     "Virtualization Enhancements").
//   Namespace Attachment (opcode 15h): NSID, CDW10 bits 3:0 SEL (0 attach, 1 detach), data a
//     Controller List.
//
// Every reply is untrusted input (a device, or a kernel, may hand back anything): parsers take
// the whole 4096-byte buffer, read only inside it, and refuse impossible values.
#ifndef VFBROKER_BROKER_BACKENDS_NVME_ADMIN_H_
#define VFBROKER_BROKER_BACKENDS_NVME_ADMIN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vfbroker::nvme_admin {

inline constexpr size_t kIdentifyBytes = 4096;

inline constexpr uint8_t kOpIdentify = 0x06;
inline constexpr uint8_t kOpNamespaceAttachment = 0x15;
inline constexpr uint8_t kOpVirtualizationManagement = 0x1c;

inline constexpr uint32_t kCnsAllocatedNamespace = 0x11;
inline constexpr uint32_t kCnsNamespaceControllers = 0x12;
inline constexpr uint32_t kCnsPrimaryCapabilities = 0x14;
inline constexpr uint32_t kCnsSecondaryList = 0x15;

enum class VirtAction : uint32_t {
  kPrimaryFlexible = 1,
  kSecondaryOffline = 7,
  kSecondaryAssign = 8,
  kSecondaryOnline = 9,
};
enum class VirtResource : uint32_t { kVq = 0, kVi = 1 };

struct Command {
  uint8_t opcode = 0;
  uint32_t nsid = 0;
  uint32_t cdw10 = 0;
  uint32_t cdw11 = 0;
};

// One admin command to completion. `data` (possibly empty) is the data buffer, read or written
// by the controller as the opcode says. An NVMe error status comes back as FAILED_PRECONDITION
// naming it ("NVMe status 0x4119"); a system-call failure as the errno's code.
class AdminChannel {
 public:
  virtual ~AdminChannel() = default;
  virtual absl::Status Run(const Command& command, absl::Span<uint8_t> data) = 0;
};

// Over NVME_IOCTL_ADMIN_CMD on a controller's character device (needs CAP_SYS_ADMIN).
absl::StatusOr<std::unique_ptr<AdminChannel>> OpenKernelAdminChannel(const std::string& path);

// Command builders.
Command Identify(uint32_t cns, uint32_t nsid = 0, uint16_t cntid = 0);
Command VirtualizationManagement(VirtAction act, VirtResource rt, uint16_t cntlid, uint16_t nr);
// Attach (detach = false) or detach `nsid` to/from the controllers in the data buffer, which
// ControllerListData fills.
Command NamespaceAttachment(uint32_t nsid, bool detach);
void ControllerListData(absl::Span<const uint16_t> controllers, absl::Span<uint8_t> data);

struct PrimaryCapabilities {
  uint16_t cntlid = 0;
  uint32_t vq_flexible_total = 0;       // VQFRT
  uint32_t vq_assigned_secondary = 0;   // VQRFA
  uint16_t vq_flexible_primary = 0;     // VQRFAP
  uint16_t vq_secondary_max = 0;        // VQFRSM
  uint32_t vi_flexible_total = 0;       // VIFRT
  uint32_t vi_assigned_secondary = 0;   // VIRFA
  uint16_t vi_flexible_primary = 0;     // VIRFAP
  uint16_t vi_secondary_max = 0;        // VIFRSM
};

struct SecondaryController {
  uint16_t scid = 0;
  uint16_t pcid = 0;
  bool online = false;
  uint16_t vfn = 0;
  uint16_t nvq = 0;
  uint16_t nvi = 0;
};

struct NamespaceFacts {
  bool allocated = false;  // NSZE != 0: the namespace exists
  uint64_t blocks = 0;
  uint32_t block_size = 0;
  uint64_t bytes = 0;
  bool may_be_shared = false;  // NMIC bit 0
};

// INVALID_ARGUMENT for a buffer shorter than kIdentifyBytes; FAILED_PRECONDITION for data no
// controller could mean (a count beyond the structure, an LBA format index beyond NLBAF, a
// block size outside 512 B..64 KiB, a size whose bytes overflow).
absl::StatusOr<PrimaryCapabilities> ParsePrimaryCapabilities(absl::Span<const uint8_t> data);
absl::StatusOr<std::vector<SecondaryController>> ParseSecondaryList(
    absl::Span<const uint8_t> data);
absl::StatusOr<std::vector<uint16_t>> ParseControllerList(absl::Span<const uint8_t> data);
absl::StatusOr<NamespaceFacts> ParseAllocatedNamespace(absl::Span<const uint8_t> data);

// Convenience: run Identify and parse.
absl::StatusOr<PrimaryCapabilities> GetPrimaryCapabilities(AdminChannel& admin);
absl::StatusOr<std::vector<SecondaryController>> GetSecondaryList(AdminChannel& admin);
absl::StatusOr<std::vector<uint16_t>> GetNamespaceControllers(AdminChannel& admin, uint32_t nsid);
absl::StatusOr<NamespaceFacts> GetAllocatedNamespace(AdminChannel& admin, uint32_t nsid);
absl::Status Virt(AdminChannel& admin, VirtAction act, VirtResource rt, uint16_t cntlid,
                  uint16_t nr);
absl::Status AttachNamespace(AdminChannel& admin, uint32_t nsid, uint16_t cntlid, bool detach);

}  // namespace vfbroker::nvme_admin

#endif  // VFBROKER_BROKER_BACKENDS_NVME_ADMIN_H_
