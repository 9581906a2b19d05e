// ixgbevf_insn_bench: instruction counts of IxgbevfPort's fast path at burst 32 (BUILD.bazel).
//
// The register-level model plays the 82599 VF: it delivers the frames before each RxBurst and
// consumes the TX ring after each burst. The loop, the measured windows (only the driver's
// RxBurst / TxBurst) and the result line are bench/net/insn_bench_lib.h's; this bench adds the
// RX tail writes (VFRDT, batched) to the line.
//   ixgbevf_insn_bench rx|tx|echo [ITERATIONS=2000]
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/net/insn_bench_lib.h"
#include "vfdrivers/net/ixgbevf/ixgbevf.h"
#include "vfdrivers/net/ixgbevf/ixgbevf_device_model.h"

int main(int argc, char** argv) {
  using vfdrivers::net::ixgbevf::IxgbevfPort;
  const auto args = vfbroker::bench::ParseInsnBenchArgs(argc, argv);
  if (!args) return 1;
  vfdrivers::net::ixgbevf::testing::IxgbevfDeviceModel model;
  vfdrivers::net::ixgbevf::Options o;
  o.huge_pages = vfdrivers::memory::HugePages::kNever;
  return vfbroker::bench::RunModelInsnBench<IxgbevfPort>(
      "ixgbevf_insn_bench", *args, IxgbevfPort::Create(model.MakeBar(), o), model,
      [](const IxgbevfPort& port) {
        return absl::StrCat("rx tail writes ", port.ixgbevf_stats().rx_tail_writes);
      });
}
