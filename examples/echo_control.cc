#include "examples/echo_control.h"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

namespace vfbroker::examples {
namespace {

std::atomic<bool>* g_stop = nullptr;
void OnSignal(int) { g_stop->store(true); }

}  // namespace

void PinToCpu(int cpu, const char* prog) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    perror((std::string(prog) + ": sched_setaffinity").c_str());
  }
}

void StopOnSignalOrAfter(std::atomic<bool>* stop, double seconds, bool wake) {
  g_stop = stop;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  if (seconds <= 0) return;
  std::thread([stop, seconds, wake] {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop->store(true);
    if (wake) kill(getpid(), SIGTERM);
  }).detach();
}

}  // namespace vfbroker::examples
