// Controller: bring-up and administration of one NVMe controller, polled, over a Transport.
//
// Create() runs the initialization of Base spec §7.6.1: read CAP; reset (CC.EN = 0, then wait
// for CSTS.RDY = 0, up to CAP.TO x 500 ms); program AQA/ASQ/ACQ with the admin queue pair;
// set CC (EN, NVM command set, 4 KiB pages, 64-byte SQEs, 16-byte CQEs) and wait for
// CSTS.RDY = 1 (CSTS.CFS = 1 fails at once); then IDENTIFY the controller (CNS 01h) and the
// namespace (CNS 00h). CreateIoQueuePair() issues Create I/O CQ (05h) then Create I/O SQ (01h).
//
// Identify data is untrusted: ParseIdentifyNamespace rejects a zero-size namespace, a format
// index beyond NLBAF, an LBA data size outside 512 B..4 KiB, metadata formats, and sizes whose
// byte count overflows, with FAILED_PRECONDITION - never an out-of-bounds read.
//
// Admin commands run synchronously on the calling thread with a timeout; a timed-out or
// untrustworthy admin completion leaves the controller failed (every later call returns it).
//
// Thread safety: none. Create queue pairs from one thread, then hand each to its own thread.
// The controller must outlive its queue pairs.
#ifndef VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_CONTROLLER_H_
#define VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_CONTROLLER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "vfdrivers/block/nvme/nvme_queue_pair.h"
#include "vfdrivers/block/nvme/nvme_spec.h"
#include "vfdrivers/block/nvme/nvme_transport.h"
#include "vfdrivers/block/queue.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block::nvme {

struct ControllerOptions {
  uint32_t nsid = 1;
  uint32_t admin_entries = 32;
  absl::Duration admin_timeout = absl::Seconds(5);
};

struct ControllerInfo {
  std::string serial;       // SN, bytes 23:04
  std::string model;        // MN, bytes 63:24
  uint32_t mdts = 0;        // byte 77: max transfer 2^MDTS min pages (0: no limit)
  uint32_t namespaces = 0;  // NN, bytes 519:516
};

struct NamespaceInfo {
  uint64_t blocks = 0;       // NSZE
  uint32_t block_size = 0;   // 2^LBADS of the format FLBAS selects
};

// Identify data parsers (§5.15.2.1 controller, NVM command set namespace structure). `data`
// must be the 4096-byte Identify reply.
absl::StatusOr<ControllerInfo> ParseIdentifyController(absl::Span<const uint8_t> data);
absl::StatusOr<NamespaceInfo> ParseIdentifyNamespace(absl::Span<const uint8_t> data);

class Controller {
 public:
  static absl::StatusOr<std::unique_ptr<Controller>> Create(std::unique_ptr<Transport> transport,
                                                            const ControllerOptions& options = {});
  ~Controller();

  const ControllerInfo& info() const { return info_; }
  const NamespaceInfo& namespace_info() const { return ns_; }
  const Geometry& geometry() const { return geometry_; }
  uint64_t cap() const { return cap_; }

  // A new I/O queue pair with `depth` commands outstanding (capped by CAP.MQES).
  absl::StatusOr<std::unique_ptr<QueuePair>> CreateIoQueuePair(uint32_t depth);

  // Runs one admin command to completion (the command id is filled in).
  absl::Status AdminCommand(const Sqe& sqe, const char* what);

 private:
  Controller(std::unique_ptr<Transport> transport, const ControllerOptions& options)
      : transport_(std::move(transport)), options_(options) {}
  absl::Status Init();
  absl::Status WaitReady(bool ready);
  absl::Status Identify(uint32_t cns, uint32_t nsid);

  std::unique_ptr<Transport> transport_;
  ControllerOptions options_;
  uint64_t cap_ = 0;
  absl::Duration ready_timeout_;
  std::unique_ptr<QueuePair> admin_;
  memory::MemoryRegion identify_page_;
  uint64_t identify_iova_ = 0;
  ControllerInfo info_;
  NamespaceInfo ns_;
  Geometry geometry_;
  uint16_t next_qid_ = 1;
  absl::Status failed_;
};

}  // namespace vfdrivers::block::nvme

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_CONTROLLER_H_
