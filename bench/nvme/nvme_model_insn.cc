// Instructions per I/O of the NVMe queue pair's own code (staging, submit, completion), counted
// by callgrind against the register-level device model (vfdrivers/block/nvme/nvme_device_model)
// on the host: no VFIO, no guest. The driver is reached only through the noinline wrappers
// StageOne, SubmitStaged and PollIo, so callgrind with --collect-atstart=no and
// --toggle-collect on each of the three (run_model_insn.sh has the command) counts exactly the
// driver's side; the model runs in the loop's own Step() calls, outside them.
// bench/nvme/run_model_insn.sh runs it and divides by N.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "vfdrivers/block/nvme/nvme_controller.h"
#include "vfdrivers/block/nvme/nvme_device_model.h"
#include "vfdrivers/block/nvme/nvme_queue_pair.h"
#include "vfdrivers/memory/memory_region.h"

ABSL_FLAG(uint64_t, ios, 100000, "I/Os to complete");
ABSL_FLAG(uint32_t, qd, 32, "queue depth");
ABSL_FLAG(uint32_t, bs, 4096, "I/O size in bytes");

namespace {

using vfdrivers::block::Completion;
using vfdrivers::block::Queue;

__attribute__((noinline)) absl::Status StageOne(Queue& q, uint64_t offset, void* buffer,
                                                uint32_t length, uint64_t tag) {
  return q.Read(offset, buffer, length, tag);
}
__attribute__((noinline)) absl::StatusOr<uint32_t> SubmitStaged(Queue& q) { return q.Submit(); }
__attribute__((noinline)) size_t PollIo(Queue& q, absl::Span<Completion> out) {
  return q.Poll(out);
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "nvme_model_insn: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const uint64_t ios = absl::GetFlag(FLAGS_ios);
  const uint32_t qd = absl::GetFlag(FLAGS_qd);
  const uint32_t bs = absl::GetFlag(FLAGS_bs);
  namespace nvme = vfdrivers::block::nvme;
  nvme::testing::DeviceModelOptions options;
  options.mqes = 255;
  options.blocks = 1 << 16;  // 32 MiB of 512-byte blocks
  nvme::testing::NvmeDeviceModel model(options);
  absl::StatusOr<std::unique_ptr<nvme::Controller>> controller =
      nvme::Controller::Create(model.MakeTransport(), {});
  if (!controller.ok()) return Fail(controller.status());
  absl::StatusOr<std::unique_ptr<nvme::QueuePair>> qp = (*controller)->CreateIoQueuePair(qd + 1);
  if (!qp.ok()) return Fail(qp.status());
  absl::StatusOr<vfdrivers::memory::MemoryRegion> buffers = vfdrivers::memory::MemoryRegion::Allocate(
      size_t{qd} * bs, {vfdrivers::memory::HugePages::kNever});
  if (!buffers.ok()) return Fail(buffers.status());
  if (absl::Status s = (*qp)->RegisterMemory(buffers->base(), buffers->size()); !s.ok()) {
    return Fail(s);
  }
  model.set_auto_step(false);  // from here the device runs only where the loop steps it
  auto* base = static_cast<uint8_t*>(buffers->base());
  const uint64_t blocks = options.blocks * 512 / bs;
  uint64_t issued = 0, done = 0, lcg = 1;
  auto next_offset = [&] {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return ((lcg >> 33) % blocks) * bs;
  };
  std::vector<Completion> completions(qd);
  for (uint32_t i = 0; i < qd && issued < ios; ++i, ++issued) {
    if (absl::Status s = StageOne(**qp, next_offset(), base + size_t{i} * bs, bs, i); !s.ok()) {
      return Fail(s);
    }
  }
  if (absl::StatusOr<uint32_t> s = SubmitStaged(**qp); !s.ok()) return Fail(s.status());
  while (done < ios) {
    model.Step();
    const size_t n = PollIo(**qp, absl::MakeSpan(completions));
    if (n == 0) continue;
    for (size_t k = 0; k < n; ++k) {
      const Completion& c = completions[k];
      if (c.result < 0) return Fail(absl::InternalError("an I/O failed"));
      ++done;
      if (issued < ios) {
        const uint64_t slot = c.tag;
        if (absl::Status s = StageOne(**qp, next_offset(), base + slot * bs, bs, slot); !s.ok()) {
          return Fail(s);
        }
        ++issued;
      }
    }
    if (absl::StatusOr<uint32_t> s = SubmitStaged(**qp); !s.ok()) return Fail(s.status());
  }
  std::printf("NVMEMODELINSN ios=%llu qd=%u bs=%u\n", static_cast<unsigned long long>(done), qd,
              bs);
  return 0;
}
