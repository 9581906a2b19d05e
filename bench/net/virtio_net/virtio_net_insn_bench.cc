// virtio_net_insn_bench: instruction counts of VirtioNetPort's fast path at burst 32
// (BUILD.bazel).
//
// The device model plays virtio-net: it delivers the frames before each RxBurst and consumes
// the transmit queue after each burst. The loop, the measured windows and the result line are
// bench/net/insn_bench_lib.h's. Measured is only the driver's RxBurst / TxBurst: used-ring
// reads and checks, buffer tables, header stripping / zeroing, refill, reclaim, the avail idx
// store, the barrier and the notify store (a plain store to the model; an MMIO write, and under
// QEMU a VM exit, on a real device); this bench adds the notify count to the line.
//   virtio_net_insn_bench rx|tx|echo [ITERATIONS=2000]
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/net/insn_bench_lib.h"
#include "vfdrivers/net/virtio_net/virtio_net.h"
#include "vfdrivers/net/virtio_net/virtio_net_device_model.h"

int main(int argc, char** argv) {
  using vfdrivers::net::virtio_net::VirtioNetPort;
  const auto args = vfbroker::bench::ParseInsnBenchArgs(argc, argv);
  if (!args) return 1;
  vfdrivers::net::virtio_net::testing::VirtioNetDeviceModel model;
  vfdrivers::net::virtio_net::Options o;  // 256-entry rings, 1024 buffers: the defaults
  o.huge_pages = vfdrivers::memory::HugePages::kNever;
  return vfbroker::bench::RunModelInsnBench<VirtioNetPort>(
      "virtio_net_insn_bench", *args, VirtioNetPort::Create(model.MakeTransport(), o), model,
      [](const VirtioNetPort& port) {
        return absl::StrCat("notifies ", port.virtio_stats().notifies);
      });
}
