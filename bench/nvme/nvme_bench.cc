// nvme_bench: 4 KiB random reads or writes through our userspace NVMe driver (nvme::Controller +
// one nvme::QueuePair over VFIO) on one VF, at a fixed queue depth, on one thread.
//
//   nvme_bench --pci=0000:01:00.1 --nsid=2 --rw=randread --qd=32 --seconds=10
//   nvme_bench --pci=... --nsid=2 --rw=randwrite --qd=32 --ios=20000 --empty_polls=20000
//
// Timed mode (--ios=0, the default) runs bench/block's RunRandRead loop (the same loop
// block_bench uses on io_uring) for --seconds and reports IOPS and latency.
//
// Count mode (--ios=K) issues exactly K commands at QD --qd in MeasuredIoLoop, then, with
// --empty_polls=E, calls Poll E times on the idle queue in IdlePollLoop. It exists for
// instruction counting under valgrind's callgrind (see run_nvme_bench.sh):
//   valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*MeasuredIoLoop*'
//            --toggle-collect='*IdlePollLoop*' nvme_bench --ios=K --empty_polls=E ...
// MeasuredIoLoop reaches the driver only through the noinline wrappers StageOne (Read or Write),
// SubmitStaged (Submit) and PollIo (Poll), and IdlePollLoop through PollIdle, so the inclusive
// cost of each wrapper minus its own is the driver's cost of that step. The loop counts the
// polls that found nothing (a polling driver spins while the device works: under TCG that is
// most of the polls), so an empty poll's cost, measured in IdlePollLoop (which runs the same
// PollStep and loop test), can be subtracted to get the cost per I/O of submission plus
// completion alone.
//
// With --insn_marks, count mode executes the marker instruction of insn_count_plugin.c (a QEMU
// TCG plugin) right before and after MeasuredIoLoop, and before and after IdlePollLoop, so that
// the whole guest's instructions during exactly K I/Os, and per empty poll, can be read off
// (run_nvme_bench.sh's second boot).
//
// Always prints one line "NVMEBENCH {json}" (machine-readable); --json prints only that line.
// Writes overwrite the namespace.
#include <sys/resource.h>
#include <time.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "bench/block/randread.h"
#include "vfdrivers/block/nvme/nvme_controller.h"
#include "vfdrivers/block/nvme/nvme_queue_pair.h"
#include "vfdrivers/block/nvme/nvme_transport.h"
#include "vfdrivers/block/queue.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/vfio/vfio_device.h"

ABSL_FLAG(std::string, pci, "", "PCI address of the NVMe function, bound to vfio-pci");
ABSL_FLAG(uint32_t, nsid, 1, "namespace id (a VF's private namespace keeps its subsystem nsid)");
ABSL_FLAG(std::string, rw, "randread", "randread or randwrite (randwrite overwrites the namespace)");
ABSL_FLAG(uint32_t, qd, 32, "queue depth");
ABSL_FLAG(uint32_t, bs, 4096, "I/O size in bytes");
ABSL_FLAG(int, seconds, 10, "timed mode: measured duration");
ABSL_FLAG(uint64_t, ios, 0, "count mode: issue exactly this many commands (0: timed mode)");
ABSL_FLAG(uint64_t, empty_polls, 0, "count mode: then poll the idle queue this many times");
ABSL_FLAG(uint64_t, span_mb, 0, "confine offsets to the first N MiB (0: whole namespace)");
ABSL_FLAG(bool, yield, false, "timed mode: sched_yield() after an empty poll");
ABSL_FLAG(bool, json, false, "print only the NVMEBENCH line");
ABSL_FLAG(bool, insn_marks, false,
          "count mode: execute bench/nvme/insn_count_plugin.c's marker instruction right before "
          "and right after MeasuredIoLoop (x86-64; a NOP without the plugin)");

namespace nvme_bench {

namespace block = vfdrivers::block;
using vfdrivers::memory::BufferPool;

struct CountResult {
  uint64_t ios = 0;            // completed commands
  uint64_t submit_calls = 0;
  uint64_t polls = 0;          // Poll calls in MeasuredIoLoop
  uint64_t empty_polls = 0;    // of which found nothing
  uint64_t idle_polls = 0;     // Poll calls in IdlePollLoop
  uint64_t ns = 0;             // wall time of MeasuredIoLoop
};

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// splitmix64, as bench/block/randread.cc.
struct Rng {
  uint64_t state;
  uint64_t Below(uint64_t n) {
    uint64_t z = (state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return uint64_t((unsigned __int128)z * n >> 64);
  }
};

// The wrappers callgrind attributes the driver's cost to (see the header comment).
__attribute__((noinline)) absl::Status StageOne(block::Queue& q, bool write, uint64_t offset,
                                                void* buffer, uint32_t length, uint64_t tag) {
  return write ? q.Write(offset, buffer, length, tag) : q.Read(offset, buffer, length, tag);
}
__attribute__((noinline)) absl::StatusOr<uint32_t> SubmitStaged(block::Queue& q) {
  return q.Submit();
}
__attribute__((noinline)) size_t PollIo(block::Queue& q, absl::Span<block::Completion> out) {
  return q.Poll(out);
}
__attribute__((noinline)) size_t PollIdle(block::Queue& q, absl::Span<block::Completion> out) {
  return q.Poll(out);
}

// One poll of the I/O loop, counted. A template on the poll wrapper so that the I/O loop and the
// idle loop below run the same code around different wrappers.
template <size_t (*kPoll)(block::Queue&, absl::Span<block::Completion>)>
__attribute__((noinline)) size_t PollStep(block::Queue& q, absl::Span<block::Completion> out,
                                          CountResult& r) {
  const size_t n = kPoll(q, out);
  ++r.polls;
  if (n == 0) ++r.empty_polls;
  return n;
}

// Exactly `total` commands, `qd` in flight, each completion's slot re-staged at once and the
// batch submitted once per poll that found completions.
__attribute__((noinline)) absl::Status MeasuredIoLoop(block::Queue& q, BufferPool& buffers,
                                                      bool write, uint32_t bs, uint32_t qd,
                                                      uint64_t blocks, uint64_t total,
                                                      CountResult& r) {
  std::vector<block::Completion> completions(qd);
  Rng rng{1};
  uint64_t issued = 0;
  absl::Status failure;
  const uint64_t begin = NowNs();
  for (uint32_t i = 0; i < qd && issued < total; ++i, ++issued) {
    if (absl::Status s = StageOne(q, write, rng.Below(blocks) * bs, buffers.Buffer(i), bs, i);
        !s.ok()) {
      return s;
    }
  }
  if (absl::StatusOr<uint32_t> s = SubmitStaged(q); !s.ok()) return s.status();
  ++r.submit_calls;
  while (q.outstanding() > 0) {
    const size_t n = PollStep<PollIo>(q, absl::MakeSpan(completions), r);
    if (n == 0) continue;
    uint32_t staged = 0;
    for (size_t k = 0; k < n; ++k) {
      const block::Completion& c = completions[k];
      ++r.ios;
      if (absl::Status s = block::CompletionStatus(c); !s.ok()) {
        if (failure.ok()) failure = s;
        continue;
      }
      if (issued < total && failure.ok()) {
        const uint32_t slot = static_cast<uint32_t>(c.tag);
        if (absl::Status s =
                StageOne(q, write, rng.Below(blocks) * bs, buffers.Buffer(slot), bs, slot);
            !s.ok()) {
          return s;
        }
        ++issued;
        ++staged;
      }
    }
    if (staged > 0) {
      if (absl::StatusOr<uint32_t> s = SubmitStaged(q); !s.ok()) return s.status();
      ++r.submit_calls;
    }
  }
  r.ns = NowNs() - begin;
  return failure;
}

// `count` polls of the idle queue, each iteration as an empty one of MeasuredIoLoop (the loop
// test, PollStep): its cost per iteration is what an empty poll costs the I/O loop. Returns the
// completions found (0 on a sane device).
__attribute__((noinline)) uint64_t IdlePollLoop(block::Queue& q, uint64_t count, CountResult& r) {
  block::Completion completions[1];
  uint64_t found = 0;
  for (uint64_t i = 0; i < count && q.outstanding() == 0; ++i) {
    found += PollStep<PollIdle>(q, absl::MakeSpan(completions), r);
  }
  return found;
}

double CpuSeconds(const rusage& u, bool user) {
  const timeval& t = user ? u.ru_utime : u.ru_stime;
  return double(t.tv_sec) + double(t.tv_usec) / 1e6;
}

// The marker bench/nvme/insn_count_plugin.c counts at (nopl 0x7654321(%rax), a NOP).
void InsnMark() {
#if defined(__x86_64__)
  __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x21, 0x43, 0x65, 0x07" ::: "memory");
#endif
}

int Fail(const std::string& message) {
  fprintf(stderr, "nvme_bench: %s\n", message.c_str());
  return 1;
}

int Main() {
  const std::string pci = absl::GetFlag(FLAGS_pci);
  const std::string rw = absl::GetFlag(FLAGS_rw);
  if (rw != "randread" && rw != "randwrite") return Fail("--rw must be randread or randwrite");
  const bool write = rw == "randwrite";
  const uint32_t qd = absl::GetFlag(FLAGS_qd);
  const uint32_t bs = absl::GetFlag(FLAGS_bs);
  const uint64_t count = absl::GetFlag(FLAGS_ios);

  absl::StatusOr<std::unique_ptr<vfdrivers::vfio::VfioDevice>> device =
      vfdrivers::vfio::VfioDevice::OpenByPciAddress(pci);
  if (!device.ok()) return Fail(absl::StrFormat("open %s: %s", pci, device.status().ToString()));
  absl::StatusOr<std::unique_ptr<block::nvme::VfioTransport>> transport =
      block::nvme::VfioTransport::Create(device->get());
  if (!transport.ok()) return Fail(transport.status().ToString());
  block::nvme::ControllerOptions controller_options;
  controller_options.nsid = absl::GetFlag(FLAGS_nsid);
  absl::StatusOr<std::unique_ptr<block::nvme::Controller>> controller =
      block::nvme::Controller::Create(*std::move(transport), controller_options);
  if (!controller.ok()) return Fail(controller.status().ToString());
  absl::StatusOr<std::unique_ptr<block::nvme::QueuePair>> queue =
      (*controller)->CreateIoQueuePair(qd);
  if (!queue.ok()) return Fail(queue.status().ToString());
  const block::Geometry& geometry = (*queue)->geometry();
  if (!absl::GetFlag(FLAGS_json)) {
    printf("nvme_bench: %s: %s (SN %s), namespace %u: %llu blocks of %u bytes, queue depth %u\n",
           pci.c_str(), (*controller)->info().model.c_str(),
           (*controller)->info().serial.c_str(), controller_options.nsid,
           static_cast<unsigned long long>((*controller)->namespace_info().blocks),
           geometry.logical_block_size, (*queue)->depth());
  }

  vfbroker::bench::RandReadOptions options;
  options.block_size = bs;
  options.queue_depth = qd;
  options.duration = absl::Seconds(absl::GetFlag(FLAGS_seconds));
  options.write_percent = write ? 100 : 0;
  options.span_bytes = absl::GetFlag(FLAGS_span_mb) << 20;
  options.yield_when_idle = absl::GetFlag(FLAGS_yield);
  absl::StatusOr<BufferPool> buffers = vfbroker::bench::MakeRegisteredBuffers(**queue, options);
  if (!buffers.ok()) return Fail(buffers.status().ToString());

  rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  std::string json;
  double iops = 0;
  uint64_t ios = 0;
  if (count == 0) {
    absl::StatusOr<vfbroker::bench::RandReadResult> result =
        vfbroker::bench::RunRandRead(**queue, *buffers, options);
    if (!result.ok()) return Fail(result.status().ToString());
    getrusage(RUSAGE_SELF, &after);
    json = vfbroker::bench::ToJson(*result);
    json.pop_back();
    iops = result->iops;
    ios = result->ios;
  } else {
    const uint64_t span = options.span_bytes ? std::min(options.span_bytes, geometry.size_bytes)
                                             : geometry.size_bytes;
    const uint64_t blocks = std::max<uint64_t>(span / bs, 1);
    CountResult r;
    const bool marks = absl::GetFlag(FLAGS_insn_marks);
    if (marks) InsnMark();
    absl::Status loop = MeasuredIoLoop(**queue, *buffers, write, bs, qd, blocks, count, r);
    if (marks) InsnMark();
    if (!loop.ok()) return Fail(loop.ToString());
    getrusage(RUSAGE_SELF, &after);  // the CPU time of the I/O loop only
    if (const uint64_t idle = absl::GetFlag(FLAGS_empty_polls); idle > 0) {
      CountResult idle_result;
      if (marks) InsnMark();
      const uint64_t found = IdlePollLoop(**queue, idle, idle_result);
      if (marks) InsnMark();
      if (found != 0) return Fail(absl::StrFormat("%u completions on an idle queue", found));
      r.idle_polls = idle_result.polls;
    }
    ios = r.ios;
    iops = r.ns ? double(r.ios) * 1e9 / double(r.ns) : 0;
    json = absl::StrFormat(
        "{\"ios\": %u, \"seconds\": %.3f, \"iops\": %.0f, \"submit_calls\": %u, \"polls\": %u, "
        "\"empty_polls\": %u, \"idle_polls\": %u",
        r.ios, double(r.ns) / 1e9, iops, r.submit_calls, r.polls, r.empty_polls, r.idle_polls);
  }
  const double user = CpuSeconds(after, true) - CpuSeconds(before, true);
  const double sys = CpuSeconds(after, false) - CpuSeconds(before, false);
  const double cpu_us_per_io = ios ? (user + sys) * 1e6 / double(ios) : 0;
  json += absl::StrFormat(
      ", \"engine\": \"vfbroker-nvme\", \"rw\": \"%s\", \"qd\": %u, \"bs\": %u, \"mode\": \"%s\", "
      "\"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f, \"cpu_us_per_io\": %.2f}",
      rw, qd, bs, count ? "count" : "timed", user, sys, cpu_us_per_io);
  if (!absl::GetFlag(FLAGS_json)) {
    printf("nvme_bench: %s QD %u, %llu I/Os: %.0f IOPS, CPU %.2f us per I/O (user %.3f s, sys %.3f s)\n",
           rw.c_str(), qd, static_cast<unsigned long long>(ios), iops, cpu_us_per_io, user, sys);
  }
  printf("NVMEBENCH %s\n", json.c_str());
  fflush(stdout);
  return 0;
}

}  // namespace nvme_bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return nvme_bench::Main();
}
