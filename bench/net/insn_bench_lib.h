// The driver-neutral half of the instruction-count benches (bench/net/*/*_insn_bench): the
// burst loop over any net::Port, the measured windows, and the result line that
// bench/net/run_insn_bench.sh reads. Each bench keeps only its device: how frames arrive before
// an RxBurst and how transmitted frames are consumed after a burst (InsnBenchDevice).
//
// Method: 50 warm-up rounds, then `iterations` measured ones of one burst each. Callgrind
// collects only inside the measured windows (CALLGRIND_TOGGLE_COLLECT in noinline wrappers
// around the port's calls, so no harness code lies between the toggles but the call itself):
//   rx:   RxBurst(burst) measured (it refills), then FreeBurst outside
//   tx:   AllocBurst(burst) outside, then TxBurst measured (it reclaims the previous burst)
//   echo: RxBurst(burst) + TxBurst of the same buffers in one window (per packet = per echo)
// Run under `valgrind --tool=callgrind --collect-atstart=no`; instructions per packet =
// callgrind's "Collected" / the packet count printed.
//
// Thread safety: none; one bench, one thread.
#ifndef VFBROKER_BENCH_NET_INSN_BENCH_LIB_H_
#define VFBROKER_BENCH_NET_INSN_BENCH_LIB_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "vfdrivers/net/port.h"

namespace vfbroker::bench {

enum class InsnBenchMode { kRx, kTx, kEcho };

struct InsnBenchArgs {
  InsnBenchMode mode = InsnBenchMode::kEcho;
  const char* mode_name = "echo";
  int iterations = 2000;
};

// argv[1]: rx | tx | echo (default echo); argv[2]: measured bursts (default 2000). Arguments
// starting with '-' are the bench's own flags and are skipped here. nullopt (usage printed to
// stderr) for an unknown mode.
std::optional<InsnBenchArgs> ParseInsnBenchArgs(int argc, char** argv);

// The device side, played between the measured calls.
class InsnBenchDevice {
 public:
  virtual ~InsnBenchDevice() = default;
  // Before each RxBurst (rx, echo): make `count` copies of `frame` ready to receive.
  // false: the device could not (e.g. no RX buffers posted).
  virtual bool Deliver(const uint8_t* frame, uint32_t length, uint32_t count) = 0;
  // After each burst: transmit and complete whatever the port queued.
  virtual void Complete() = 0;
};

// Runs the loop for args.mode over `port` with 64-byte frames in bursts of `burst` (at most
// 64), then prints "<name> <mode>: <packets> packets in bursts of <burst>; bad_descriptors <n>
// <extra>" on stdout. Returns the process exit code: 0; 2 for a short burst or a failed
// delivery (named on stderr); 3 when the port counted bad descriptors. `extra` is called
// after the loop for the bench's own counters (may be empty).
int RunInsnBench(const char* name, const InsnBenchArgs& args, vfdrivers::net::Port& port,
                 InsnBenchDevice& device, uint32_t burst = 32,
                 const std::function<std::string()>& extra = nullptr);

// A register-level device model (igbvf, ixgbevf and virtio-net have one each, with the same
// Deliver(frame, length) / Step() / sent() surface) as the bench's device.
template <typename Model>
class ModelInsnBenchDevice final : public InsnBenchDevice {
 public:
  explicit ModelInsnBenchDevice(Model* model) : model_(model) {}
  bool Deliver(const uint8_t* frame, uint32_t length, uint32_t count) override {
    for (uint32_t i = 0; i < count; ++i) {
      if (!model_->Deliver(frame, length)) return false;
    }
    return true;
  }
  void Complete() override {
    model_->Step();
    model_->sent().clear();
  }

 private:
  Model* model_;
};

// RunInsnBench over a port just created against `model`: prints the creation error (exit 1)
// or runs the loop. `extra` gets the concrete port, for driver-specific counters.
template <typename ConcretePort, typename Model>
int RunModelInsnBench(const char* name, const InsnBenchArgs& args,
                      absl::StatusOr<std::unique_ptr<ConcretePort>> port, Model& model,
                      std::function<std::string(const ConcretePort&)> extra = nullptr) {
  if (!port.ok()) {
    std::fprintf(stderr, "%s: %s\n", name, port.status().ToString().c_str());
    return 1;
  }
  ConcretePort& p = **port;
  ModelInsnBenchDevice<Model> device(&model);
  std::function<std::string()> more;
  if (extra) more = [&] { return extra(p); };
  return RunInsnBench(name, args, p, device, ConcretePort::kBurst, more);
}

}  // namespace vfbroker::bench

#endif  // VFBROKER_BENCH_NET_INSN_BENCH_LIB_H_
