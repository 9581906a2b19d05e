// NVMe facts the driver and its test device model share. Section numbers are those of the NVM
// Express Base Specification 2.0 ("Base"), the NVMe over PCIe Transport Specification 1.0
// ("PCIe") and the NVM Command Set Specification 1.0 ("NVM"). Only what this driver uses.
//
// Thread safety: constants and pure functions only.
#ifndef VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_SPEC_H_
#define VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_SPEC_H_

#include <cstdint>

#include "absl/status/status.h"

namespace vfdrivers::block::nvme {

// Controller properties (registers) of a memory-based controller (Base §3.1.3).
inline constexpr uint64_t kRegCap = 0x00;   // Controller Capabilities, 64-bit
inline constexpr uint64_t kRegVs = 0x08;    // Version
inline constexpr uint64_t kRegCc = 0x14;    // Controller Configuration
inline constexpr uint64_t kRegCsts = 0x1C;  // Controller Status
inline constexpr uint64_t kRegAqa = 0x24;   // Admin Queue Attributes
inline constexpr uint64_t kRegAsq = 0x28;   // Admin SQ Base Address, 64-bit
inline constexpr uint64_t kRegAcq = 0x30;   // Admin CQ Base Address, 64-bit
inline constexpr uint64_t kDoorbellBase = 0x1000;  // SQ0TDBL; stride is 4 << CAP.DSTRD

// CAP fields (Base §3.1.3.1).
inline uint32_t CapMqes(uint64_t cap) { return cap & 0xFFFF; }               // 0-based
inline uint32_t CapTo(uint64_t cap) { return (cap >> 24) & 0xFF; }           // 500 ms units
inline uint32_t CapDstrd(uint64_t cap) { return (cap >> 32) & 0xF; }
inline bool CapCssNvm(uint64_t cap) { return (cap >> 37) & 1; }
inline uint32_t CapMpsMin(uint64_t cap) { return (cap >> 48) & 0xF; }       // 2^(12+n)

// CC fields (Base §3.1.3.5).
inline constexpr uint32_t kCcEn = 1u << 0;
inline constexpr uint32_t kCcShnMask = 3u << 14;
inline constexpr uint32_t kCcShnNormal = 1u << 14;  // normal shutdown notification
inline constexpr uint32_t kCcIosqes64 = 6u << 16;  // SQE = 2^6 bytes
inline constexpr uint32_t kCcIocqes16 = 4u << 20;  // CQE = 2^4 bytes
// CSTS fields (Base §3.1.3.6).
inline constexpr uint32_t kCstsRdy = 1u << 0;
inline constexpr uint32_t kCstsCfs = 1u << 1;  // Controller Fatal Status
inline constexpr uint32_t kCstsShstMask = 3u << 2;
inline constexpr uint32_t kCstsShstComplete = 2u << 2;  // shutdown processing complete

// Doorbell offsets (PCIe §3.1.2: SQyTDBL, CQyHDBL; in Base 1.4 they were §3.1.24-25).
inline uint64_t SqTailDoorbell(uint32_t qid, uint32_t dstrd) {
  return kDoorbellBase + (2 * uint64_t{qid}) * (uint64_t{4} << dstrd);
}
inline uint64_t CqHeadDoorbell(uint32_t qid, uint32_t dstrd) {
  return kDoorbellBase + (2 * uint64_t{qid} + 1) * (uint64_t{4} << dstrd);
}

inline constexpr uint64_t kPageSize = 4096;  // CC.MPS = 0 (the driver requires CAP.MPSMIN = 0)

// Submission Queue Entry, 64 bytes (Base §3.3.3.1, the common command format).
struct Sqe {
  uint8_t opcode = 0;
  uint8_t flags = 0;     // FUSE bits 1:0, PSDT bits 7:6 (0 = PRPs)
  uint16_t cid = 0;      // command identifier
  uint32_t nsid = 0;
  uint64_t reserved = 0;
  uint64_t mptr = 0;
  uint64_t prp1 = 0;
  uint64_t prp2 = 0;
  uint32_t cdw10 = 0, cdw11 = 0, cdw12 = 0, cdw13 = 0, cdw14 = 0, cdw15 = 0;
};
static_assert(sizeof(Sqe) == 64, "SQE is 64 bytes (Base §3.3.3.1)");

// Completion Queue Entry, 16 bytes (Base §3.3.3.2). DW3: CID bits 15:0, phase tag bit 16,
// status 31:17 (the status field, Base §3.3.3.2.1).
struct Cqe {
  uint32_t dw0 = 0;
  uint32_t dw1 = 0;
  uint16_t sq_head = 0;  // DW2 bits 15:0
  uint16_t sq_id = 0;    // DW2 bits 31:16
  uint16_t cid = 0;
  uint16_t status = 0;   // bit 0: phase tag; bits 8:1 SC; 11:9 SCT; 13:12 CRD; 14 More; 15 DNR
};
static_assert(sizeof(Cqe) == 16, "CQE is 16 bytes (Base §3.3.3.2)");

inline uint32_t StatusSc(uint16_t status) { return (status >> 1) & 0xFF; }
inline uint32_t StatusSct(uint16_t status) { return (status >> 9) & 0x7; }
// The driver's device_status encoding: SCT << 8 | SC (0 = success).
inline uint32_t DeviceStatus(uint16_t status) { return StatusSct(status) << 8 | StatusSc(status); }
// The CQE status field (phase bit clear) for an SCT/SC pair; the model uses it.
inline uint16_t MakeStatus(uint32_t sct, uint32_t sc) {
  return static_cast<uint16_t>(((sct & 7) << 9) | ((sc & 0xFF) << 1));
}

// Admin opcodes (Base §5).
inline constexpr uint8_t kAdminDeleteIoSq = 0x00;  // Base §5.7
inline constexpr uint8_t kAdminCreateIoSq = 0x01;  // Base §5.5
inline constexpr uint8_t kAdminDeleteIoCq = 0x04;  // Base §5.6
inline constexpr uint8_t kAdminCreateIoCq = 0x05;  // Base §5.4
inline constexpr uint8_t kAdminIdentify = 0x06;    // Base §5.17
inline constexpr uint8_t kAdminSetFeatures = 0x09;  // Base §5.27
// Identify CNS values (Base §5.17).
inline constexpr uint32_t kCnsNamespace = 0x00;
inline constexpr uint32_t kCnsController = 0x01;
inline constexpr uint32_t kCnsActiveNamespaceList = 0x02;
// Feature identifiers (Base §5.27.1).
inline constexpr uint32_t kFeatureNumberOfQueues = 0x07;
// Identify Controller ONCS (bytes 521:520) bit 3: Write Zeroes supported.
inline constexpr uint16_t kOncsWriteZeroes = 1u << 3;
// I/O opcodes: Flush (Base §7.1); Write, Read, Write Zeroes (NVM §3.2.6, §3.2.4, §3.2.8).
inline constexpr uint8_t kNvmFlush = 0x00;
inline constexpr uint8_t kNvmWrite = 0x01;
inline constexpr uint8_t kNvmRead = 0x02;
inline constexpr uint8_t kNvmWriteZeroes = 0x08;

// Status codes used here (Base §3.3.3.2.1, Figures 93-95): SCT 0 (generic).
inline constexpr uint32_t kSctGeneric = 0;
inline constexpr uint32_t kSctCommandSpecific = 1;
inline constexpr uint32_t kSctMedia = 2;
inline constexpr uint32_t kScSuccess = 0x00;
inline constexpr uint32_t kScInvalidOpcode = 0x01;
inline constexpr uint32_t kScInvalidField = 0x02;
inline constexpr uint32_t kScDataTransferError = 0x04;
inline constexpr uint32_t kScInternal = 0x06;
inline constexpr uint32_t kScInvalidNamespace = 0x0B;
inline constexpr uint32_t kScPrpOffsetInvalid = 0x13;
inline constexpr uint32_t kScLbaOutOfRange = 0x80;
// Command specific (SCT 1) status codes of queue creation (Base Figure 95).
inline constexpr uint32_t kScCompletionQueueInvalid = 0x00;
inline constexpr uint32_t kScInvalidQueueIdentifier = 0x01;
inline constexpr uint32_t kScInvalidQueueSize = 0x02;

// Driver-made device_status values (SCT 7 is vendor specific, so no real device status says
// "the driver rejected this completion" - these use bit 16 and above, outside SCT<<8|SC).
inline constexpr uint32_t kStatusUnknownCid = 0x10000;
inline constexpr uint32_t kStatusBadSqHead = 0x20000;

// Maps an NVMe status (device_status encoding) to absl::Status; OK for 0.
absl::Status NvmeStatusToStatus(uint32_t device_status, const char* what);
// The negative errno a block::Completion carries for a failed NVMe status.
int32_t NvmeStatusToErrno(uint32_t device_status);

}  // namespace vfdrivers::block::nvme

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_SPEC_H_
