#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "absl/status/status.h"
#include "vfdrivers/block/nvme/nvme_controller.h"
#include "vfdrivers/block/nvme/nvme_device_model.h"
#include "vfdrivers/block/nvme/nvme_queue_pair.h"
#include "vfdrivers/block/queue_test_util.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block::nvme {
namespace {

using testing::DeviceModelOptions;
using testing::Hostile;
using testing::NvmeDeviceModel;
using vfdrivers::block::testing::RunOne;
using vfdrivers::block::testing::SubmitAndWait;

ControllerOptions FastOptions() {
  ControllerOptions o;
  o.admin_timeout = absl::Milliseconds(200);
  return o;
}

struct Rig {
  explicit Rig(const DeviceModelOptions& options = {}) : model(options) {}
  absl::Status Start(uint32_t depth = 16) {
    absl::StatusOr<std::unique_ptr<Controller>> c =
        Controller::Create(model.MakeTransport(), FastOptions());
    if (!c.ok()) return c.status();
    controller = std::move(*c);
    absl::StatusOr<std::unique_ptr<QueuePair>> q = controller->CreateIoQueuePair(depth);
    if (!q.ok()) return q.status();
    qp = std::move(*q);
    absl::StatusOr<memory::MemoryRegion> r =
        memory::MemoryRegion::Allocate(1 << 20, {memory::HugePages::kNever});
    if (!r.ok()) return r.status();
    buffers = std::move(*r);
    return qp->RegisterMemory(buffers.base(), buffers.size());
  }
  uint8_t* buf(size_t offset = 0) { return static_cast<uint8_t*>(buffers.base()) + offset; }

  NvmeDeviceModel model;
  std::unique_ptr<Controller> controller;
  std::unique_ptr<QueuePair> qp;   // destroyed before the controller
  memory::MemoryRegion buffers;
};

void Fill(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>((i * 31 + seed * 7 + (i >> 9)) & 0xFF);
}

TEST(NvmeTest, BringUpAndIdentify) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  EXPECT_EQ(rig.controller->info().serial, "MODEL0001");
  EXPECT_EQ(rig.controller->info().model, "vfbroker NVMe device model");
  EXPECT_EQ(rig.controller->info().namespaces, 1u);
  EXPECT_EQ(rig.qp->geometry().logical_block_size, 512u);
  EXPECT_EQ(rig.qp->geometry().size_bytes, 4096u * 512);
  EXPECT_EQ(rig.qp->geometry().max_transfer_bytes, 128u * 1024);
  EXPECT_EQ(rig.qp->depth(), 16u);
  EXPECT_TRUE(rig.model.csts() & kCstsRdy);
}

TEST(NvmeTest, ReEnableAfterControllerDestroyed) {
  NvmeDeviceModel model;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::unique_ptr<Controller>> c =
        Controller::Create(model.MakeTransport(), FastOptions());
    ASSERT_TRUE(c.ok()) << c.status();
  }
  EXPECT_FALSE(model.csts() & kCstsRdy);  // the destructor disabled it
}

TEST(NvmeTest, DepthCappedByMqesAnd4KBlocksAndStride) {
  DeviceModelOptions o;
  o.mqes = 7;
  o.dstrd = 2;
  o.lbads = 12;
  o.blocks = 256;
  o.mdts = 2;  // 16 KiB
  Rig rig(o);
  ASSERT_TRUE(rig.Start(100).ok());
  EXPECT_EQ(rig.qp->depth(), 7u);
  EXPECT_EQ(rig.qp->geometry().logical_block_size, 4096u);
  EXPECT_EQ(rig.qp->geometry().max_transfer_bytes, 16u * 1024);
  Fill(rig.buf(), 16384, 3);
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Write(4096 * 10, rig.buf(), 16384, 1)).ok());
  EXPECT_EQ(std::memcmp(rig.model.media().data() + 4096 * 10, rig.buf(), 16384), 0);
  EXPECT_EQ(rig.qp->Write(0, rig.buf(), 20480, 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NvmeTest, ReadWriteRoundTripsIncludingPrpLists) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  struct Case { size_t buf_off; uint32_t len; uint64_t dev_off; };
  // One page, PRP2 as a page, PRP list, unaligned first page with list, the largest transfer.
  const Case cases[] = {{0, 512, 0},          {0, 8192, 4096},    {0, 65536, 65536},
                        {512, 65536, 262144}, {100 * 4, 12288, 1024}, {4096, 131072, 1048576}};
  uint32_t seed = 1;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.len);
    uint8_t* out = rig.buf(k.buf_off);
    Fill(out, k.len, seed++);
    ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Write(k.dev_off, out, k.len, 7)).ok());
    ASSERT_EQ(std::memcmp(rig.model.media().data() + k.dev_off, out, k.len), 0);
    uint8_t* in = rig.buf(512 * 1024 + k.buf_off);
    std::memset(in, 0xEE, k.len);
    ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Read(k.dev_off, in, k.len, 8)).ok());
    ASSERT_EQ(std::memcmp(in, out, k.len), 0);
  }
  EXPECT_GE(rig.model.prp_list_commands(), 6u);
  EXPECT_EQ(rig.qp->outstanding(), 0u);
}

TEST(NvmeTest, CompletionCarriesTagAndLength) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  ASSERT_TRUE(rig.qp->Write(0, rig.buf(), 4096, 42).ok());
  absl::StatusOr<std::vector<Completion>> c = SubmitAndWait(*rig.qp, 1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)[0].tag, 42u);
  EXPECT_EQ((*c)[0].result, 4096);
  EXPECT_EQ((*c)[0].device_status, 0u);
}

TEST(NvmeTest, FlushAndWriteZeroes) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  Fill(rig.buf(), 8192, 9);
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Write(0, rig.buf(), 8192, 1)).ok());
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->WriteZeroes(1024, 2048, 2)).ok());
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Flush(3)).ok());
  EXPECT_EQ(rig.model.flushes(), 1u);
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Read(0, rig.buf(65536), 8192, 4)).ok());
  std::vector<uint8_t> expect(rig.buf(), rig.buf() + 8192);
  std::memset(expect.data() + 1024, 0, 2048);
  EXPECT_EQ(std::memcmp(rig.buf(65536), expect.data(), 8192), 0);
  EXPECT_EQ(rig.qp->WriteZeroes(0, uint64_t{65537} * 512, 1).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NvmeTest, QueueFullThenDrains) {
  Rig rig;
  ASSERT_TRUE(rig.Start(4).ok());
  rig.model.set_auto_step(false);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(rig.qp->Flush(i).ok());
  EXPECT_EQ(rig.qp->Flush(9).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(rig.qp->outstanding(), 4u);
  ASSERT_EQ(*rig.qp->Submit(), 4u);
  Completion out[8];
  EXPECT_EQ(rig.qp->Poll(absl::MakeSpan(out)), 0u);
  rig.model.Step();
  EXPECT_EQ(rig.qp->Poll(absl::MakeSpan(out)), 4u);
  EXPECT_EQ(rig.qp->outstanding(), 0u);
  // Wrap the rings several times (phase flips).
  rig.model.set_auto_step(true);
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(rig.qp->Flush(i).ok());
    absl::StatusOr<std::vector<Completion>> c = SubmitAndWait(*rig.qp, 3);
    ASSERT_TRUE(c.ok()) << c.status();
  }
}

TEST(NvmeTest, RejectsBadArguments) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(rig.qp->Read(1, rig.buf(), 512, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Read(0, rig.buf(), 500, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Read(4096 * 512, rig.buf(), 512, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Read(~uint64_t{511}, rig.buf(), 512, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Read(0, rig.buf(2), 512, 0).code(), kInvalid);
  std::vector<uint8_t> unregistered(4096);
  EXPECT_EQ(rig.qp->Read(0, unregistered.data(), 512, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Read(0, rig.buf(rig.buffers.size() - 512), 1024, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->Write(0, rig.buf(), 256 * 1024, 0).code(), kInvalid);
  EXPECT_EQ(rig.qp->outstanding(), 0u);
}

TEST(NvmeTest, AdminStatusMapsToAbslStatus) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  Sqe bogus;
  bogus.opcode = 0x7F;
  EXPECT_EQ(rig.controller->AdminCommand(bogus, "bogus").code(),
            absl::StatusCode::kUnimplemented);
  Sqe dup;  // creating I/O CQ 1 again: command specific "invalid queue identifier"
  dup.opcode = kAdminCreateIoCq;
  dup.cdw10 = (3u << 16) | 1;
  dup.cdw11 = 1;
  EXPECT_EQ(rig.controller->AdminCommand(dup, "dup").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(NvmeStatusToStatus(0x0280, "x").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(NvmeStatusToStatus(0x0080, "x").code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(NvmeStatusToStatus(0, "x").ok());
}

TEST(NvmeTest, ModelCheck) {
  Rig rig;
  ASSERT_TRUE(rig.Start(16).ok());
  absl::StatusOr<memory::BufferPool> pool =
      memory::BufferPool::Allocate(8 * 512, 16, {memory::HugePages::kNever});
  ASSERT_TRUE(pool.ok());
  ASSERT_TRUE(rig.qp->RegisterMemory(pool->region().base(), pool->region().size()).ok());
  vfdrivers::block::testing::ModelCheckOptions options;
  options.ops = 3000;
  ASSERT_NO_FATAL_FAILURE(vfdrivers::block::testing::CheckAgainstModel(*rig.qp, *pool, options));
}

TEST(NvmeTest, TwoQueuePairsAndRefusedQueueCreation) {
  DeviceModelOptions o;
  o.max_queues = 3;  // I/O queue ids 1 and 2
  o.io_queues_reported = 4;  // but Number of Queues claims 4: the device refuses ids 3 and 4
  Rig rig(o);
  ASSERT_TRUE(rig.Start().ok());
  absl::StatusOr<std::unique_ptr<QueuePair>> second = rig.controller->CreateIoQueuePair(8);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->qid(), 2);
  ASSERT_TRUE((*second)->RegisterMemory(rig.buffers.base(), rig.buffers.size()).ok());
  Fill(rig.buf(), 4096, 5);
  ASSERT_TRUE(RunOne(**second, (*second)->Write(8192, rig.buf(), 4096, 1)).ok());
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Read(8192, rig.buf(8192), 4096, 2)).ok());
  EXPECT_EQ(std::memcmp(rig.buf(), rig.buf(8192), 4096), 0);
  // The device refuses queue id 3: a clean command-specific error, twice.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(rig.controller->CreateIoQueuePair(8).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  // Past the 4 it claimed, the driver refuses by itself.
  EXPECT_EQ(rig.controller->CreateIoQueuePair(8).status().code(),
            absl::StatusCode::kResourceExhausted);
  // The controller still works.
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Flush(3)).ok());
}

// An SR-IOV secondary controller with 2 VQ resources has one I/O queue pair (QEMU's VFs, as
// tests/vm sets them up): Set Features Number of Queues says so, and the second queue pair is
// refused by the driver with a message, not by a device error after memory was mapped.
TEST(NvmeTest, NumberOfQueuesLimitsQueuePairs) {
  DeviceModelOptions o;
  o.io_queues = 1;
  Rig rig(o);
  ASSERT_TRUE(rig.Start().ok());
  EXPECT_EQ(rig.controller->io_queue_limit(), 1u);
  const size_t mappings = rig.model.live_mappings();
  absl::StatusOr<std::unique_ptr<QueuePair>> second = rig.controller->CreateIoQueuePair(8);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_EQ(rig.model.live_mappings(), mappings);
}

// Destroying queue pairs and the controller deletes the queues on the device, shuts it down
// and unmaps every DMA mapping, so a controller re-created on the same device (the reset path)
// leaks neither IOVA space nor pinned memory (RLIMIT_MEMLOCK for an unprivileged tenant).
TEST(NvmeTest, TeardownDeletesQueuesAndUnmapsEverything) {
  NvmeDeviceModel model;
  absl::StatusOr<memory::MemoryRegion> buffers =
      memory::MemoryRegion::Allocate(1 << 16, {memory::HugePages::kNever});
  ASSERT_TRUE(buffers.ok());
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<std::unique_ptr<Controller>> c =
        Controller::Create(model.MakeTransport(), FastOptions());
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<std::unique_ptr<QueuePair>> a = (*c)->CreateIoQueuePair(8);
    absl::StatusOr<std::unique_ptr<QueuePair>> b = (*c)->CreateIoQueuePair(8);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->qid(), 1);  // a new controller starts over at queue id 1
    ASSERT_TRUE((*a)->RegisterMemory(buffers->base(), buffers->size()).ok());
    ASSERT_TRUE(RunOne(**a, (*a)->Write(0, buffers->base(), 4096, 1)).ok());
    EXPECT_EQ(model.live_io_queues(), 2u);
    b->reset();
    EXPECT_EQ(model.live_io_queues(), 1u);
    a->reset();
    EXPECT_EQ(model.live_io_queues(), 0u);
    c->reset();
    EXPECT_TRUE(model.shutdown_notified());
    EXPECT_FALSE(model.csts() & kCstsRdy);
    EXPECT_EQ(model.live_mappings(), 0u) << "round " << round;
  }
}

// What a controller pins: admin rings and the identify page, no PRP-list pages (admin commands
// move one page at most); an I/O queue pair of depth 32 adds its rings and 32 list pages.
TEST(NvmeTest, PinnedMemoryIsWhatTheQueuesNeed) {
  NvmeDeviceModel model;
  absl::StatusOr<std::unique_ptr<Controller>> c =
      Controller::Create(model.MakeTransport(), FastOptions());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(model.mapped_bytes(), 3 * kPageSize);  // ASQ (32 x 64 B), ACQ, identify page
  absl::StatusOr<std::unique_ptr<QueuePair>> qp = (*c)->CreateIoQueuePair(32);
  ASSERT_TRUE(qp.ok()) << qp.status();
  EXPECT_EQ(model.mapped_bytes(), 3 * kPageSize + (1 + 1 + 32) * kPageSize);
}

TEST(NvmeTest, UnregisterMemoryUnmapsAndRegisterAgainWorks) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  absl::StatusOr<memory::MemoryRegion> extra =
      memory::MemoryRegion::Allocate(8192, {memory::HugePages::kNever});
  ASSERT_TRUE(extra.ok());
  uint8_t* p = static_cast<uint8_t*>(extra->base());
  const size_t before = rig.model.live_mappings();
  ASSERT_TRUE(rig.qp->RegisterMemory(p, 8192).ok());
  Fill(p, 8192, 11);
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Write(0, p, 8192, 1)).ok());
  ASSERT_TRUE(rig.qp->UnregisterMemory(p).ok());
  EXPECT_EQ(rig.model.live_mappings(), before);
  EXPECT_EQ(rig.qp->Read(0, p, 4096, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rig.qp->UnregisterMemory(p).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(rig.qp->RegisterMemory(p, 8192).ok());
  std::memset(p, 0, 8192);
  ASSERT_TRUE(RunOne(*rig.qp, rig.qp->Read(0, p, 8192, 3)).ok());
  EXPECT_EQ(std::memcmp(p, rig.model.media().data(), 8192), 0);
}

TEST(NvmeTest, ActiveNamespaceListAndIdentifyFields) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  absl::StatusOr<std::vector<uint32_t>> list = rig.controller->ActiveNamespaces();
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(*list, std::vector<uint32_t>{1});
  EXPECT_EQ(rig.controller->info().cntlid, 1);
  EXPECT_TRUE(rig.controller->info().oncs & kOncsWriteZeroes);
}

TEST(NvmeTest, WriteZeroesRefusedWhenUnsupported) {
  DeviceModelOptions o;
  o.write_zeroes = false;
  Rig rig(o);
  ASSERT_TRUE(rig.Start().ok());
  EXPECT_EQ(rig.qp->WriteZeroes(0, 4096, 1).code(), absl::StatusCode::kUnimplemented);
}

TEST(NvmeTest, ZeroNamespaceZeroesEverything) {
  DeviceModelOptions o;
  o.blocks = 200000;  // > 3 commands of 65536 blocks, the last one partial
  Rig rig(o);
  ASSERT_TRUE(rig.Start(2).ok());
  std::fill(rig.model.media().begin(), rig.model.media().end(), 0xAB);
  const uint64_t before = rig.model.commands();
  ASSERT_TRUE(ZeroNamespace(*rig.qp, absl::Seconds(5)).ok());
  EXPECT_EQ(rig.model.commands() - before, 4u);
  EXPECT_TRUE(std::all_of(rig.model.media().begin(), rig.model.media().end(),
                          [](uint8_t b) { return b == 0; }));
  EXPECT_EQ(rig.qp->outstanding(), 0u);
  ASSERT_TRUE(rig.qp->Flush(1).ok());
  EXPECT_EQ(ZeroNamespace(*rig.qp, absl::Seconds(5)).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(NvmeHostileTest, ZeroNamespaceStopsOnBogusCompletion) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  rig.model.set_hostile(Hostile::kBogusCid);
  EXPECT_EQ(ZeroNamespace(*rig.qp, absl::Seconds(5)).code(), absl::StatusCode::kDataLoss);
}

TEST(NvmeParseTest, NamespaceListBounds) {
  std::vector<uint8_t> d(4096, 0);
  absl::StatusOr<std::vector<uint32_t>> empty = ParseNamespaceList(d);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  const uint32_t ids[] = {2, 7, 7};
  std::memcpy(d.data(), ids, sizeof(ids));
  EXPECT_FALSE(ParseNamespaceList(d).ok());  // not increasing
  const uint32_t bcast = 0xFFFFFFFF;
  std::memcpy(&d[8], &bcast, 4);
  EXPECT_FALSE(ParseNamespaceList(d).ok());
  std::vector<uint8_t> full(4096);
  for (uint32_t i = 0; i < 1024; ++i) {
    const uint32_t v = i + 1;
    std::memcpy(&full[4 * i], &v, 4);
  }
  absl::StatusOr<std::vector<uint32_t>> all = ParseNamespaceList(full);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1024u);  // never reads past the page
}

// Hostile devices: every lie is a clean error status.

TEST(NvmeHostileTest, BogusCommandIdIsDataLoss) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  rig.model.set_hostile(Hostile::kBogusCid);
  ASSERT_TRUE(rig.qp->Flush(5).ok());
  ASSERT_TRUE(rig.qp->Submit().ok());
  Completion c;
  while (rig.qp->Poll(absl::MakeSpan(&c, 1)) == 0) {}
  EXPECT_EQ(c.tag, QueuePair::kUnknownTag);
  EXPECT_EQ(c.device_status, kStatusUnknownCid);
  EXPECT_FALSE(CompletionStatus(c).ok());
  EXPECT_EQ(rig.qp->health().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(rig.qp->Flush(6).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(rig.qp->outstanding(), 1u);  // the real command never completed
}

TEST(NvmeHostileTest, SqHeadOutOfRangeIsDataLoss) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  rig.model.set_hostile(Hostile::kBadSqHead);
  ASSERT_TRUE(rig.qp->Write(0, rig.buf(), 512, 5).ok());
  absl::StatusOr<std::vector<Completion>> c = SubmitAndWait(*rig.qp, 1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)[0].tag, 5u);
  EXPECT_EQ((*c)[0].result, -EIO);
  EXPECT_EQ((*c)[0].device_status, kStatusBadSqHead);
  EXPECT_EQ(rig.qp->health().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(rig.qp->Read(0, rig.buf(), 512, 6).code(), absl::StatusCode::kDataLoss);
}

TEST(NvmeHostileTest, WrongPhaseTimesOut) {
  Rig rig;
  ASSERT_TRUE(rig.Start().ok());
  rig.model.set_hostile(Hostile::kWrongPhase);
  ASSERT_TRUE(rig.qp->Flush(1).ok());
  absl::StatusOr<std::vector<Completion>> c =
      SubmitAndWait(*rig.qp, 1, absl::Milliseconds(100));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(NvmeHostileTest, AdminLiesFailBringUp) {
  const struct { Hostile mode; absl::StatusCode code; } cases[] = {
      {Hostile::kBogusCid, absl::StatusCode::kDataLoss},
      {Hostile::kBadSqHead, absl::StatusCode::kDataLoss},
      {Hostile::kWrongPhase, absl::StatusCode::kDeadlineExceeded},
      {Hostile::kNeverReady, absl::StatusCode::kDeadlineExceeded},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(static_cast<int>(k.mode));
    NvmeDeviceModel model;
    model.set_hostile(k.mode, /*admin_too=*/true);
    absl::StatusOr<std::unique_ptr<Controller>> c =
        Controller::Create(model.MakeTransport(), FastOptions());
    EXPECT_EQ(c.status().code(), k.code) << c.status();
  }
}

// An offline SR-IOV secondary controller (QEMU) reads CAP 0: refused at once, saying why.
TEST(NvmeHostileTest, InvalidCapRejected) {
  DeviceModelOptions o;
  o.mqes = 0;
  NvmeDeviceModel model(o);
  absl::StatusOr<std::unique_ptr<Controller>> c =
      Controller::Create(model.MakeTransport(), FastOptions());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_NE(c.status().message().find("MQES"), absl::string_view::npos) << c.status();
}

TEST(NvmeHostileTest, BadIdentifyNamespaceRejected) {
  for (Hostile mode :
       {Hostile::kBadLbaFormat, Hostile::kBadLbaShift, Hostile::kZeroSizeNamespace}) {
    SCOPED_TRACE(static_cast<int>(mode));
    NvmeDeviceModel model;
    model.set_hostile(mode);
    absl::StatusOr<std::unique_ptr<Controller>> c =
        Controller::Create(model.MakeTransport(), FastOptions());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  }
}

TEST(NvmeParseTest, IdentifyNamespaceBounds) {
  std::vector<uint8_t> d(4096, 0);
  EXPECT_FALSE(ParseIdentifyNamespace(absl::MakeSpan(d.data(), 100)).ok());
  const uint64_t nsze = 8;
  std::memcpy(d.data(), &nsze, 8);
  d[25] = 15;
  d[26] = 15;
  const uint32_t lbaf = 12u << 16;
  std::memcpy(&d[128 + 60], &lbaf, 4);
  absl::StatusOr<NamespaceInfo> ns = ParseIdentifyNamespace(d);
  ASSERT_TRUE(ns.ok()) << ns.status();
  EXPECT_EQ(ns->block_size, 4096u);
  d[25] = 16;  // beyond the 16-entry table
  EXPECT_FALSE(ParseIdentifyNamespace(d).ok());
  d[25] = 15;
  d[26] = 0x20 | 15;  // FLBAS upper index bits: format 47, not 15
  EXPECT_FALSE(ParseIdentifyNamespace(d).ok());
  d[26] = 0x10 | 15;  // bit 4 (metadata placement) alone is harmless: no metadata here
  EXPECT_TRUE(ParseIdentifyNamespace(d).ok());
  d[26] = 15;
  d[25] = 15;
  const uint32_t with_metadata = (12u << 16) | 8;
  std::memcpy(&d[128 + 60], &with_metadata, 4);
  EXPECT_FALSE(ParseIdentifyNamespace(d).ok());
  const uint64_t huge = ~uint64_t{0} >> 4;
  std::memcpy(d.data(), &huge, 8);
  std::memcpy(&d[128 + 60], &lbaf, 4);
  EXPECT_FALSE(ParseIdentifyNamespace(d).ok());
}

}  // namespace
}  // namespace vfdrivers::block::nvme
