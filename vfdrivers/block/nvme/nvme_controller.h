// Controller: bring-up and administration of one NVMe controller, polled, over a Transport.
//
// Create() runs the initialization of Base §3.5.1 (Memory-based Controller Initialization; it
// was §7.6.1 in Base 1.4): read CAP; reset (CC.EN = 0, then wait for CSTS.RDY = 0, up to
// CAP.TO x 500 ms); program AQA/ASQ/ACQ with the admin queue pair; write CC (NVM command set,
// 4 KiB pages, 64-byte SQEs, 16-byte CQEs), then set CC.EN in a second write, and wait for
// CSTS.RDY = 1 (CSTS.CFS = 1 fails at once); IDENTIFY the controller (CNS 01h); ask for I/O
// queues with Set Features Number of Queues (FID 07h) and keep what the controller allocated;
// IDENTIFY the namespace (CNS 00h). CreateIoQueuePair() issues Create I/O CQ (05h) then
// Create I/O SQ (01h); destroying the queue pair deletes both (00h, 04h).
//
// The destructor shuts the controller down (CC.SHN = normal, wait for CSTS.SHST = complete,
// Base §3.6) and disables it (CC.EN = 0, Base §3.7.2) so it stops all DMA, then unmaps its own
// DMA memory. A new Controller on the same transport's device re-initializes it from scratch.
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
#include <vector>

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
  uint16_t cntlid = 0;      // CNTLID, bytes 79:78
  uint32_t namespaces = 0;  // NN, bytes 519:516
  uint16_t oncs = 0;        // ONCS, bytes 521:520 (bit 3: Write Zeroes)
};

struct NamespaceInfo {
  uint64_t blocks = 0;       // NSZE
  uint32_t block_size = 0;   // 2^LBADS of the format FLBAS selects
};

// Identify data parsers (Base §5.17: Identify Controller, CNS 01h; the NVM Command Set's
// Identify Namespace data structure, CNS 00h). `data` must be the 4096-byte Identify reply.
absl::StatusOr<ControllerInfo> ParseIdentifyController(absl::Span<const uint8_t> data);
absl::StatusOr<NamespaceInfo> ParseIdentifyNamespace(absl::Span<const uint8_t> data);
// An Active Namespace ID list (CNS 02h): up to 1024 increasing NSIDs, ended by the first 0.
// FAILED_PRECONDITION for NSIDs that do not increase or are broadcast/invalid (FFFFFFFFh).
absl::StatusOr<std::vector<uint32_t>> ParseNamespaceList(absl::Span<const uint8_t> data);

class Controller {
 public:
  static absl::StatusOr<std::unique_ptr<Controller>> Create(std::unique_ptr<Transport> transport,
                                                            const ControllerOptions& options = {});
  // Create() over a VfioTransport of `device` (maps BAR0, enables bus mastering). The device
  // must outlive the controller; it may be one the caller opened or adopted (broker-sent fds).
  static absl::StatusOr<std::unique_ptr<Controller>> Open(vfio::VfioDevice* device,
                                                          const ControllerOptions& options = {});
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  const ControllerInfo& info() const { return info_; }
  const NamespaceInfo& namespace_info() const { return ns_; }
  const Geometry& geometry() const { return geometry_; }
  uint64_t cap() const { return cap_; }
  uint32_t version() const { return version_; }
  // I/O queue pairs the controller allocated (Set Features Number of Queues), and how many of
  // them CreateIoQueuePair may still create.
  uint32_t io_queue_limit() const { return io_queue_limit_; }
  Transport* transport() const { return transport_.get(); }

  // A new I/O queue pair with `depth` commands outstanding (capped by CAP.MQES).
  // RESOURCE_EXHAUSTED once io_queue_limit() queue ids are used.
  absl::StatusOr<std::unique_ptr<QueuePair>> CreateIoQueuePair(uint32_t depth);

  // The namespaces attached to (active on) this controller: Identify CNS 02h from NSID 0.
  absl::StatusOr<std::vector<uint32_t>> ActiveNamespaces();

  // Runs one admin command to completion (the command id is filled in). With `dw0`, stores
  // the completion's Dword 0 (command specific result).
  absl::Status AdminCommand(const Sqe& sqe, const char* what, uint32_t* dw0 = nullptr);

 private:
  Controller(std::unique_ptr<Transport> transport, const ControllerOptions& options)
      : transport_(std::move(transport)), options_(options) {}
  absl::Status Init();
  absl::Status WaitReady(bool ready);
  absl::Status Identify(uint32_t cns, uint32_t nsid);
  absl::Status RequestIoQueues();
  void DeleteIoQueues(uint16_t qid);
  void Shutdown();

  std::unique_ptr<Transport> transport_;
  ControllerOptions options_;
  uint64_t cap_ = 0;
  uint32_t version_ = 0;
  absl::Duration ready_timeout_;
  std::unique_ptr<QueuePair> admin_;
  memory::MemoryRegion identify_page_;
  uint64_t identify_iova_ = 0;
  bool identify_mapped_ = false;
  uint32_t io_queue_limit_ = 0;
  ControllerInfo info_;
  NamespaceInfo ns_;
  Geometry geometry_;
  uint16_t next_qid_ = 1;
  absl::Status failed_;
};

}  // namespace vfdrivers::block::nvme

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_CONTROLLER_H_
