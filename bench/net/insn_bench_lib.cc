#include "bench/net/insn_bench_lib.h"

#include <valgrind/callgrind.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/types/span.h"

namespace vfbroker::bench {
namespace {

using vfdrivers::net::PacketBuffer;
using vfdrivers::net::Port;

constexpr int kWarmupRounds = 50;
constexpr uint32_t kMaxBurst = 64;
constexpr uint32_t kFrameLength = 64;

// The measured windows. noinline, so that between the toggles there is only the call into the
// port (a virtual call: two loads more than a direct one per burst) and the port's own work.
__attribute__((noinline)) size_t MeasuredRx(Port& port, PacketBuffer* bufs, uint32_t burst) {
  CALLGRIND_TOGGLE_COLLECT;
  const size_t n = port.RxBurst(absl::MakeSpan(bufs, burst));
  CALLGRIND_TOGGLE_COLLECT;
  return n;
}

__attribute__((noinline)) size_t MeasuredTx(Port& port, const PacketBuffer* bufs, size_t n) {
  CALLGRIND_TOGGLE_COLLECT;
  const size_t sent = port.TxBurst(absl::MakeConstSpan(bufs, n));
  CALLGRIND_TOGGLE_COLLECT;
  return sent;
}

// RxBurst then TxBurst of what it returned; *sent gets TxBurst's count.
__attribute__((noinline)) size_t MeasuredEcho(Port& port, PacketBuffer* bufs, uint32_t burst,
                                              size_t* sent) {
  CALLGRIND_TOGGLE_COLLECT;
  const size_t n = port.RxBurst(absl::MakeSpan(bufs, burst));
  *sent = port.TxBurst(absl::MakeConstSpan(bufs, n));
  CALLGRIND_TOGGLE_COLLECT;
  return n;
}

}  // namespace

std::optional<InsnBenchArgs> ParseInsnBenchArgs(int argc, char** argv) {
  InsnBenchArgs args;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') continue;  // the bench's own flag
    if (positional++ == 0) {
      args.mode_name = argv[i];
    } else {
      args.iterations = std::atoi(argv[i]);
    }
  }
  if (std::strcmp(args.mode_name, "rx") == 0) {
    args.mode = InsnBenchMode::kRx;
  } else if (std::strcmp(args.mode_name, "tx") == 0) {
    args.mode = InsnBenchMode::kTx;
  } else if (std::strcmp(args.mode_name, "echo") == 0) {
    args.mode = InsnBenchMode::kEcho;
  } else {
    std::fprintf(stderr, "usage: %s rx|tx|echo [ITERATIONS=2000] [bench flags]\n", argv[0]);
    return std::nullopt;
  }
  return args;
}

int RunInsnBench(const char* name, const InsnBenchArgs& args, Port& port,
                 InsnBenchDevice& device, uint32_t burst,
                 const std::function<std::string()>& extra) {
  if (burst == 0 || burst > kMaxBurst) {
    std::fprintf(stderr, "%s: burst %u outside 1..%u\n", name, burst, kMaxBurst);
    return 2;
  }
  uint8_t frame[kFrameLength];
  std::memset(frame, 0xab, sizeof frame);
  PacketBuffer bufs[kMaxBurst];
  uint64_t packets = 0;
  for (int it = 0; it < args.iterations + kWarmupRounds; ++it) {
    const bool measure = it >= kWarmupRounds;
    size_t n = 0, done = 0;  // done: sent (tx, echo) or freed (rx)
    if (args.mode == InsnBenchMode::kTx) {
      n = port.AllocBurst(absl::MakeSpan(bufs, burst));
      for (size_t i = 0; i < n; ++i) bufs[i].length = kFrameLength;
      done = measure ? MeasuredTx(port, bufs, n) : port.TxBurst(absl::MakeConstSpan(bufs, n));
    } else {
      if (!device.Deliver(frame, kFrameLength, burst)) {
        std::fprintf(stderr, "%s: the device could not deliver %u frames at iteration %d\n",
                     name, burst, it);
        return 2;
      }
      if (args.mode == InsnBenchMode::kRx) {
        n = measure ? MeasuredRx(port, bufs, burst) : port.RxBurst(absl::MakeSpan(bufs, burst));
        done = port.FreeBurst(absl::MakeConstSpan(bufs, n));
      } else if (measure) {
        n = MeasuredEcho(port, bufs, burst, &done);
      } else {
        n = port.RxBurst(absl::MakeSpan(bufs, burst));
        done = port.TxBurst(absl::MakeConstSpan(bufs, n));
      }
    }
    if (n != burst || done != n) {
      std::fprintf(stderr, "%s: burst of %zu (%zu sent/freed) at iteration %d\n", name, n, done,
                   it);
      return 2;
    }
    device.Complete();
    if (measure) packets += n;
  }
  const uint64_t bad = port.stats().bad_descriptors;
  const std::string more = extra ? extra() : std::string();
  std::printf("%s %s: %llu packets in bursts of %u; bad_descriptors %llu%s%s\n", name,
              args.mode_name, static_cast<unsigned long long>(packets), burst,
              static_cast<unsigned long long>(bad), more.empty() ? "" : ", ", more.c_str());
  return bad == 0 ? 0 : 3;
}

}  // namespace vfbroker::bench
