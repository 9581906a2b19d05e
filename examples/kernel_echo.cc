// kernel_echo: the same UDP echo as udp_echo, on a kernel UDP socket, for comparison: a burst
// of datagrams with recvmmsg(2), sent back to their senders with sendmmsg(2) from the same
// buffers.
//
//   kernel_echo --port=7 --mode=busy     spin on recvmmsg(MSG_DONTWAIT) (one core, always)
//   kernel_echo --port=7 --mode=blocking recvmmsg(MSG_WAITFORONE) sleeps until one arrives
//   --busy_poll_us=N                     also SO_BUSY_POLL (socket(7): the kernel busy-polls
//                                        the device queue for up to N us in a blocking read;
//                                        only devices with NAPI IDs benefit)
//
// Prints "ready" on stdout once bound, and its counters when it stops (SIGINT, SIGTERM or
// --seconds).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
#include "examples/echo_control.h"

ABSL_FLAG(std::string, bind, "0.0.0.0", "IPv4 address to bind");
ABSL_FLAG(uint32_t, port, 7, "UDP port");
ABSL_FLAG(std::string, mode, "busy", "busy (MSG_DONTWAIT spin) or blocking");
ABSL_FLAG(uint32_t, busy_poll_us, 0, "SO_BUSY_POLL in microseconds (0: not set)");
ABSL_FLAG(uint32_t, burst, 32, "Datagrams per recvmmsg");
ABSL_FLAG(uint32_t, rcvbuf, 4 << 20, "SO_RCVBUFFORCE bytes as root, else SO_RCVBUF (0: default)");
ABSL_FLAG(int, cpu, -1, "Pin to this CPU (-1: no)");
ABSL_FLAG(double, seconds, 0, "Stop after this long (0: at SIGINT/SIGTERM)");

namespace {

std::atomic<bool> g_stop{false};

constexpr size_t kMaxBurst = 256;
constexpr size_t kMaxDatagram = 2048;

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("UDP echo server on a kernel socket (recvmmsg/sendmmsg)");
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "busy" && mode != "blocking") {
    fprintf(stderr, "kernel_echo: --mode is busy or blocking\n");
    return 2;
  }
  const bool busy = mode == "busy";
  const size_t burst = std::min<size_t>(std::max<uint32_t>(absl::GetFlag(FLAGS_burst), 1),
                                        kMaxBurst);

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("kernel_echo: socket");
    return 1;
  }
  if (uint32_t b = absl::GetFlag(FLAGS_rcvbuf); b > 0) {
    int v = static_cast<int>(b);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v)) != 0) {
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    }
  }
  if (uint32_t us = absl::GetFlag(FLAGS_busy_poll_us); us > 0) {
    int v = static_cast<int>(us);
    if (setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &v, sizeof(v)) != 0) {
      perror("kernel_echo: SO_BUSY_POLL");
      return 1;
    }
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(absl::GetFlag(FLAGS_port)));
  if (inet_pton(AF_INET, absl::GetFlag(FLAGS_bind).c_str(), &addr.sin_addr) != 1) {
    fprintf(stderr, "kernel_echo: bad --bind\n");
    return 2;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    perror("kernel_echo: bind");
    return 1;
  }
  vfbroker::examples::PinToCpu(absl::GetFlag(FLAGS_cpu), "kernel_echo");
  // The timer also sends SIGTERM: it wakes a blocking recvmmsg (EINTR).
  vfbroker::examples::StopOnSignalOrAfter(&g_stop, absl::GetFlag(FLAGS_seconds), /*wake=*/true);

  // One buffer, one address and one header per slot; the reply reuses all three.
  std::vector<uint8_t> data(burst * kMaxDatagram);
  std::vector<sockaddr_in> peers(burst);
  std::vector<iovec> iov(burst);
  std::vector<mmsghdr> msgs(burst);
  uint64_t received = 0, echoed = 0, empty = 0, send_errors = 0;
  printf("ready\n");
  fflush(stdout);

  const int flags = busy ? MSG_DONTWAIT : MSG_WAITFORONE;
  while (!g_stop.load(std::memory_order_relaxed)) {
    for (size_t i = 0; i < burst; ++i) {
      iov[i] = {data.data() + i * kMaxDatagram, kMaxDatagram};
      msgs[i].msg_hdr = {};
      msgs[i].msg_hdr.msg_name = &peers[i];
      msgs[i].msg_hdr.msg_namelen = sizeof(peers[i]);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(fd, msgs.data(), static_cast<unsigned>(burst), flags, nullptr);
    if (n <= 0) {
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        perror("kernel_echo: recvmmsg");
        return 1;
      }
      ++empty;
      continue;
    }
    received += static_cast<uint64_t>(n);
    for (int i = 0; i < n; ++i) iov[i].iov_len = msgs[i].msg_len;  // echo what arrived
    int done = 0;
    while (done < n) {
      int m = sendmmsg(fd, msgs.data() + done, static_cast<unsigned>(n - done), 0);
      if (m <= 0) {
        if (m < 0 && errno == EINTR) continue;
        ++send_errors;
        break;
      }
      done += m;
    }
    echoed += static_cast<uint64_t>(done);
  }
  printf("kernel_echo: mode=%s received=%" PRIu64 " echoed=%" PRIu64 " empty_polls=%" PRIu64
         " send_errors=%" PRIu64 "\n",
         mode.c_str(), received, echoed, empty, send_errors);
  fflush(stdout);
  close(fd);
  return 0;
}
