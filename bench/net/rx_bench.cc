// rx_bench: counts the UDP frames a receiver gets, for the receive benchmark
// (run_net_bench.sh), with either
//   --driver=af_xdp --interface=IF   our AfXdpPort (self-provisioned as in udp_echo, root),
//                                    --idle=spin (busy-poll) or poll (poll(2) on the socket
//                                    when a burst came back empty; the kernel wakes us)
//   --driver=kernel --port=P         a kernel UDP socket with recvmmsg(2), --mode=blocking
//                                    (MSG_WAITFORONE) or busy (MSG_DONTWAIT spin)
// Each received frame's UDP destination port is read (the header is touched, as a real
// receiver would), then the buffer is given back.
//
// Runs until SIGINT/SIGTERM; prints "ready" once receiving, then one JSON line: packets,
// cpu_s (getrusage(RUSAGE_SELF) user + system), and busy_s: wall time spent in polls that
// returned packets (rdtsc, calibrated against CLOCK_MONOTONIC), i.e. the receiver's cost
// without its empty polls; for the blocking modes it is not measured (0). stalled_s: the part
// of busy_s spent in polls longer than --stall_us: the thread was preempted or throttled
// inside them (packets that piled up meanwhile make such a poll a busy one).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "examples/udp_echo_provision.h"
#include "vfdrivers/net/port.h"

ABSL_FLAG(std::string, driver, "af_xdp", "af_xdp or kernel");
ABSL_FLAG(std::string, interface, "", "af_xdp: device");
ABSL_FLAG(uint32_t, queue, 0, "af_xdp: device queue");
ABSL_FLAG(std::string, xdp_mode, "native", "af_xdp: native, generic or auto");
ABSL_FLAG(std::string, idle, "spin", "af_xdp: spin or poll when a burst is empty");
ABSL_FLAG(uint32_t, frames, 4096, "af_xdp: UMEM chunks");
ABSL_FLAG(uint32_t, ring_size, 2048, "af_xdp: size of each ring");
ABSL_FLAG(uint32_t, port, 9, "kernel: UDP port to bind");
ABSL_FLAG(std::string, mode, "blocking", "kernel: blocking or busy");
ABSL_FLAG(uint32_t, rcvbuf, 4 << 20, "kernel: SO_RCVBUFFORCE bytes");
ABSL_FLAG(uint32_t, burst, 32, "Frames per receive call");
ABSL_FLAG(int, cpu, -1, "Pin to this CPU (-1: no)");
ABSL_FLAG(double, stall_us, 1000,
          "A poll that returned packets but took longer than this was preempted (a 256-frame "
          "burst takes a few us): reported apart as stalled");

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

inline uint16_t UdpDstPort(const uint8_t* f, size_t len) {
  // Untagged IPv4/UDP only; anything else counts as port 0.
  if (len < 14 + 20 + 8 || f[12] != 0x08 || f[13] != 0x00) return 0;
  const size_t ihl = size_t{f[14] & 0x0Fu} * 4;
  if (len < 14 + ihl + 8) return 0;
  return static_cast<uint16_t>((f[14 + ihl + 2] << 8) | f[14 + ihl + 3]);
}

struct Result {
  uint64_t packets = 0;
  uint64_t busy_tsc = 0;
  uint64_t stalled_tsc = 0;  // of busy_tsc: polls longer than --stall_us (see above)
  uint64_t stalls = 0;
  uint64_t port_sum = 0;  // keeps the header reads alive
  uint64_t empty = 0;
};

uint64_t g_stall_tsc = ~0ull;

void AddBusy(Result* r, uint64_t tsc) {
  r->busy_tsc += tsc;
  if (tsc > g_stall_tsc) {
    r->stalled_tsc += tsc;
    ++r->stalls;
  }
}

Result RunAfXdp(vfdrivers::net::Port& port, size_t burst, bool poll_when_idle, int fd) {
  Result r;
  vfdrivers::net::PacketBuffer bufs[256];
  while (!g_stop.load(std::memory_order_relaxed)) {
    const uint64_t t0 = __rdtsc();
    const size_t n = port.RxBurst(absl::MakeSpan(bufs, burst));
    if (n == 0) {
      ++r.empty;
      if (poll_when_idle) {
        pollfd p{fd, POLLIN, 0};
        poll(&p, 1, 100);
      }
      continue;
    }
    for (size_t i = 0; i < n; ++i) r.port_sum += UdpDstPort(bufs[i].data, bufs[i].length);
    port.FreeBurst(absl::MakeConstSpan(bufs, n));
    r.packets += n;
    AddBusy(&r, __rdtsc() - t0);
  }
  return r;
}

Result RunKernel(int fd, size_t burst, bool busy) {
  Result r;
  constexpr size_t kMax = 2048;
  std::vector<uint8_t> data(burst * kMax);
  std::vector<iovec> iov(burst);
  std::vector<mmsghdr> msgs(burst);
  for (size_t i = 0; i < burst; ++i) {
    iov[i] = {data.data() + i * kMax, kMax};
    msgs[i].msg_hdr = {};
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  const int flags = busy ? MSG_DONTWAIT : MSG_WAITFORONE;
  while (!g_stop.load(std::memory_order_relaxed)) {
    const uint64_t t0 = __rdtsc();
    int n = recvmmsg(fd, msgs.data(), static_cast<unsigned>(burst), flags, nullptr);
    if (n <= 0) {
      ++r.empty;
      continue;
    }
    r.packets += static_cast<uint64_t>(n);
    if (busy) AddBusy(&r, __rdtsc() - t0);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("count received UDP frames (AF_XDP port or kernel socket)");
  absl::ParseCommandLine(argc, argv);
  const std::string driver = absl::GetFlag(FLAGS_driver);
  const size_t burst = std::max<uint32_t>(1, std::min<uint32_t>(absl::GetFlag(FLAGS_burst), 256));

  struct sigaction sa {};
  sa.sa_handler = OnSignal;  // no SA_RESTART: blocking receives return EINTR
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  vfbroker::examples::SelfProvisionedPort provisioned;
  int kernel_fd = -1;
  bool busy = true;
  if (driver == "af_xdp") {
    vfdrivers::net::XdpAttachMode mode;
    if (!vfbroker::examples::ParseXdpAttachMode(absl::GetFlag(FLAGS_xdp_mode), &mode)) return 2;
    vfdrivers::net::AfXdpLayout layout;
    layout.frame_size = 2048;
    layout.frame_count = absl::GetFlag(FLAGS_frames);
    layout.fill_size = layout.completion_size = layout.rx_size = layout.tx_size =
        absl::GetFlag(FLAGS_ring_size);
    auto p = vfbroker::examples::SelfProvisionAfXdpPort(absl::GetFlag(FLAGS_interface),
                                                        absl::GetFlag(FLAGS_queue), mode, layout);
    if (!p.ok()) {
      fprintf(stderr, "rx_bench: %s\n", p.status().ToString().c_str());
      return 1;
    }
    provisioned = std::move(*p);
    busy = absl::GetFlag(FLAGS_idle) == "spin";
    provisioned.port->Service();
  } else if (driver == "kernel") {
    kernel_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int v = static_cast<int>(absl::GetFlag(FLAGS_rcvbuf));
    setsockopt(kernel_fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(absl::GetFlag(FLAGS_port)));
    if (bind(kernel_fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      perror("rx_bench: bind");
      return 1;
    }
    busy = absl::GetFlag(FLAGS_mode) == "busy";
  } else {
    fprintf(stderr, "rx_bench: --driver is af_xdp or kernel\n");
    return 2;
  }
  if (int cpu = absl::GetFlag(FLAGS_cpu); cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("rx_bench: sched_setaffinity");
  }

  {  // TSC rate, for the stall threshold
    const uint64_t w = NowNs(), t = __rdtsc();
    usleep(20000);
    const double tsc_per_ns = static_cast<double>(__rdtsc() - t) / static_cast<double>(NowNs() - w);
    g_stall_tsc = static_cast<uint64_t>(absl::GetFlag(FLAGS_stall_us) * 1e3 * tsc_per_ns);
  }
  printf("ready\n");
  fflush(stdout);
  const uint64_t wall0 = NowNs();
  const uint64_t tsc0 = __rdtsc();
  Result r = driver == "af_xdp"
                 ? RunAfXdp(*provisioned.port, burst, !busy, provisioned.port->fd())
                 : RunKernel(kernel_fd, burst, busy);
  const uint64_t wall_ns = NowNs() - wall0;
  const double ns_per_tsc = static_cast<double>(wall_ns) / static_cast<double>(__rdtsc() - tsc0);
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
                       ru.ru_stime.tv_usec * 1e-6;
  uint64_t kernel_drops = 0;
  if (provisioned.port) {
    auto k = provisioned.port->KernelStatistics();
    if (k.ok()) kernel_drops = k->rx_dropped + k->rx_ring_full;
  }
  printf("{\"packets\": %" PRIu64 ", \"cpu_s\": %.3f, \"busy_s\": %.6f, \"stalled_s\": %.6f, "
         "\"stalls\": %" PRIu64 ", \"wall_s\": %.3f, \"empty_polls\": %" PRIu64
         ", \"xdp_drops\": %" PRIu64 ", \"port_sum\": %" PRIu64 "}\n",
         r.packets, cpu_s, r.busy_tsc * ns_per_tsc * 1e-9, r.stalled_tsc * ns_per_tsc * 1e-9,
         r.stalls, wall_ns * 1e-9, r.empty, kernel_drops, r.port_sum);
  fflush(stdout);
  if (kernel_fd >= 0) close(kernel_fd);
  return 0;
}
