// igbvf_insn_bench: instruction counts of IgbvfPort's fast path at burst 32 (see BUILD.bazel).
//
// The register-level model plays the 82576 VF: it delivers the frames before each RxBurst and
// consumes the TX ring after each burst. The loop, the measured windows (only the driver's
// RxBurst / TxBurst) and the result line are bench/net/insn_bench_lib.h's.
//   igbvf_insn_bench rx|tx|echo [ITERATIONS=2000]
#include "bench/net/insn_bench_lib.h"
#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/igbvf/igbvf_device_model.h"

int main(int argc, char** argv) {
  using vfdrivers::net::igbvf::IgbvfPort;
  const auto args = vfbroker::bench::ParseInsnBenchArgs(argc, argv);
  if (!args) return 1;
  vfdrivers::net::igbvf::testing::IgbvfDeviceModel model;
  vfdrivers::net::igbvf::Options o;
  o.huge_pages = vfdrivers::memory::HugePages::kNever;
  return vfbroker::bench::RunModelInsnBench("igbvf_insn_bench", *args,
                                            IgbvfPort::Create(model.MakeBar(), o), model);
}
