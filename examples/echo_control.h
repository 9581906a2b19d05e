// What the echo examples (udp_echo, kernel_echo) do alike around their loop: pin the echo thread
// to a CPU, and stop at SIGINT/SIGTERM or after --seconds.
#ifndef VFBROKER_EXAMPLES_ECHO_CONTROL_H_
#define VFBROKER_EXAMPLES_ECHO_CONTROL_H_

#include <atomic>

namespace vfbroker::examples {

// Pins the calling thread to `cpu` (nothing when cpu < 0); a failure is only reported, on
// stderr as "<prog>: sched_setaffinity: ...".
void PinToCpu(int cpu, const char* prog);

// Sets *stop at SIGINT or SIGTERM (no SA_RESTART: a blocking call returns EINTR) and, when
// seconds > 0, after that long; with `wake`, that timer also sends the process SIGTERM, to end a
// blocking read. `stop` must live until the process ends. Call once.
void StopOnSignalOrAfter(std::atomic<bool>* stop, double seconds, bool wake);

}  // namespace vfbroker::examples

#endif  // VFBROKER_EXAMPLES_ECHO_CONTROL_H_
