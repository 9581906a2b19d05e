// NvmeDeviceModel: a register-level model of an NVMe controller for tests (testonly).
//
// A fake BAR0 in memory holds CAP/CC/CSTS/AQA/ASQ/ACQ and the doorbells. Step() is the device:
// it honours CC.EN (sets or clears CSTS.RDY; enabling takes the admin queue from AQA/ASQ/ACQ),
// reads every SQ tail doorbell, fetches SQEs from "DMA" memory, executes Identify, Create I/O
// CQ/SQ, Read, Write, Flush and Write Zeroes against an in-memory namespace (walking PRP1/PRP2
// and PRP lists), and posts CQEs with the right phase tag, respecting the CQ head doorbell.
//
// DMA goes through the model's own IOVA space: MapDma() hands out IOVAs unrelated to virtual
// addresses, and an access outside every mapping fails the command with Data Transfer Error,
// so a driver that put a virtual address (or a wrong PRP) in a command is caught.
//
// Hostile modes make the device lie, to test that the driver fails cleanly: bogus command ids,
// wrong phase tags, an out-of-range SQ head, bad identify data, or never becoming ready.
//
// Thread safety: none. The transport's Idle() runs Step() (when auto_step is on) on the
// driver's thread, so the whole test is single-threaded and deterministic.
#ifndef VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_DEVICE_MODEL_H_
#define VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_DEVICE_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "vfdrivers/block/nvme/nvme_spec.h"
#include "vfdrivers/block/nvme/nvme_transport.h"

namespace vfdrivers::block::nvme::testing {

enum class Hostile {
  kNone,
  kBogusCid,          // CQEs name a command id that was never issued
  kWrongPhase,        // CQEs carry the previous pass's phase tag (look like stale entries)
  kBadSqHead,         // CQEs report an SQ head beyond the ring
  kBadLbaFormat,      // identify namespace: FLBAS names a format beyond NLBAF
  kBadLbaShift,       // identify namespace: LBADS = 40
  kZeroSizeNamespace, // identify namespace: NSZE = 0
  kNeverReady,        // CSTS.RDY never follows CC.EN = 1
};

struct DeviceModelOptions {
  uint32_t mqes = 63;        // CAP.MQES (0-based): largest queue is mqes + 1 entries
  uint32_t dstrd = 0;        // CAP.DSTRD
  uint32_t lbads = 9;        // block size 2^lbads
  uint64_t blocks = 4096;    // namespace size
  uint32_t mdts = 0;         // identify controller MDTS
  uint32_t max_queues = 8;   // queue ids 0..max_queues-1
  // I/O queue pairs Set Features Number of Queues grants (0: max_queues - 1), as an SR-IOV
  // secondary controller with few VQ resources; Create I/O CQ/SQ beyond it fails.
  uint32_t io_queues = 0;
  // What Number of Queues reports (0: the truth). More than io_queues makes the device refuse
  // the queue creations the driver was told it could make.
  uint32_t io_queues_reported = 0;
  bool write_zeroes = true;  // ONCS bit 3
};

class NvmeDeviceModel {
 public:
  explicit NvmeDeviceModel(const DeviceModelOptions& options = {});

  // A Transport over this model. The model must outlive it.
  std::unique_ptr<Transport> MakeTransport();

  // Hostility applies to I/O queues; with `admin_too`, to the admin queue as well.
  void set_hostile(Hostile hostile, bool admin_too = false) {
    hostile_ = hostile;
    hostile_admin_ = admin_too;
  }
  // Whether the transport's Idle() steps the device (on by default).
  void set_auto_step(bool on) { auto_step_ = on; }
  bool auto_step() const { return auto_step_; }

  // Runs the device until it has nothing more to do right now.
  void Step();

  std::vector<uint8_t>& media() { return media_; }
  // DMA mappings the driver made and has not unmapped.
  size_t live_mappings() const { return dma_.size(); }
  size_t mapped_bytes() const;
  // I/O queues (SQs) that exist on the device now.
  uint32_t live_io_queues() const;
  bool shutdown_notified() const { return shutdowns_ > 0; }
  uint64_t commands() const { return commands_; }
  uint64_t flushes() const { return flushes_; }
  uint64_t prp_list_commands() const { return prp_list_commands_; }
  uint32_t csts() const { return Reg(kRegCsts); }

  // Register file and DMA space (used by the transport).
  uint32_t Reg(uint64_t offset) const { return bar_[offset / 4]; }
  size_t bar_size() const { return bar_.size() * 4; }
  volatile uint32_t* RegPtr(uint64_t offset) { return &bar_[offset / 4]; }
  uint64_t Map(void* vaddr, size_t size);
  bool Unmap(uint64_t iova);

 private:
  struct Ring {
    bool exists = false;
    uint64_t base = 0;
    uint32_t size = 0;
    uint32_t head = 0;  // SQ: next to fetch. CQ: last head doorbell value
    uint32_t tail = 0;  // CQ: next to post
    uint16_t phase = 1;
    uint16_t cqid = 0;  // SQ only
  };
  struct Mapping {
    uint8_t* vaddr;
    size_t size;
  };

  uint8_t* Translate(uint64_t iova, size_t length);
  bool ProcessSq(uint16_t qid);
  uint16_t Execute(uint16_t qid, const Sqe& sqe);
  uint32_t GrantedIoQueues() const;
  uint16_t ExecuteAdmin(const Sqe& sqe);
  uint16_t Identify(const Sqe& sqe);
  uint16_t Transfer(const Sqe& sqe, uint8_t* media, size_t length, bool to_host);
  void Post(uint16_t qid, Ring& cq, const Sqe& sqe, uint16_t status, uint32_t sq_head);
  bool Hostile(uint16_t qid, enum Hostile mode) const {
    return hostile_ == mode && (qid != 0 || hostile_admin_);
  }

  DeviceModelOptions options_;
  std::vector<uint32_t> bar_;
  std::vector<Ring> sqs_, cqs_;
  std::vector<uint8_t> media_;
  std::map<uint64_t, Mapping> dma_;  // iova -> mapping
  uint64_t next_iova_ = 0x40000000;
  enum Hostile hostile_ = Hostile::kNone;
  bool hostile_admin_ = false;
  bool auto_step_ = true;
  uint64_t commands_ = 0, flushes_ = 0, prp_list_commands_ = 0, shutdowns_ = 0;
  uint32_t result_dw0_ = 0;  // Dword 0 of the completion being posted
};

}  // namespace vfdrivers::block::nvme::testing

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_DEVICE_MODEL_H_
