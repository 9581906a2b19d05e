// echo_client: UDP ping-pong against an echo server (udp_echo or kernel_echo), one request
// outstanding, for the echo round-trip benchmark (run_net_bench.sh). A kernel UDP socket,
// connected to the server; each request carries a sequence number and the reply must carry
// it back; the round trip is timed with CLOCK_MONOTONIC from before send(2) to after the
// matching recv(2).
//
//   echo_client --server=10.77.0.1 --port=7 --samples=20000 [--warmup=1000] [--busy] [--cpu=0]
//
// --busy spins on recv(MSG_DONTWAIT) instead of sleeping in poll(2). A request with no reply
// within --timeout_ms counts as lost. --window=N keeps N requests outstanding (a closed loop:
// a new one goes out as each reply comes back), for the echo rate; each reply is matched to its
// request by sequence number. Prints one JSON line (microseconds; echoes_per_s over the
// measured requests, from the first one's send to the last one's reply).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"

ABSL_FLAG(std::string, server, "10.77.0.1", "Echo server IPv4");
ABSL_FLAG(uint32_t, port, 7, "Echo server UDP port");
ABSL_FLAG(std::string, bind, "", "Local IPv4 to bind (default: any)");
ABSL_FLAG(uint32_t, samples, 20000, "Round trips measured");
ABSL_FLAG(uint32_t, warmup, 1000, "Round trips before measuring");
ABSL_FLAG(uint32_t, payload, 32, "Request bytes (>= 8)");
ABSL_FLAG(bool, busy, false, "Spin on recv(MSG_DONTWAIT) instead of poll(2)");
ABSL_FLAG(int, timeout_ms, 200, "A reply later than this is lost");
ABSL_FLAG(int, cpu, -1, "Pin to this CPU (-1: no)");
ABSL_FLAG(uint32_t, window, 1,
          "Requests kept outstanding (1: ping-pong; more: the echo rate under a closed-loop load)");

namespace {

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

double Percentile(const std::vector<uint64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)] / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("UDP ping-pong round-trip client");
  absl::ParseCommandLine(argc, argv);
  const size_t payload = std::max<uint32_t>(8, std::min<uint32_t>(absl::GetFlag(FLAGS_payload), 1400));
  const bool busy = absl::GetFlag(FLAGS_busy);
  const int timeout_ms = absl::GetFlag(FLAGS_timeout_ms);

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("echo_client: socket");
    return 1;
  }
  if (!absl::GetFlag(FLAGS_bind).empty()) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    if (inet_pton(AF_INET, absl::GetFlag(FLAGS_bind).c_str(), &local.sin_addr) != 1 ||
        bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)) != 0) {
      perror("echo_client: bind");
      return 1;
    }
  }
  sockaddr_in server{};
  server.sin_family = AF_INET;
  server.sin_port = htons(static_cast<uint16_t>(absl::GetFlag(FLAGS_port)));
  if (inet_pton(AF_INET, absl::GetFlag(FLAGS_server).c_str(), &server.sin_addr) != 1 ||
      connect(fd, reinterpret_cast<sockaddr*>(&server), sizeof(server)) != 0) {
    perror("echo_client: connect");
    return 1;
  }
  if (int cpu = absl::GetFlag(FLAGS_cpu); cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("echo_client: sched_setaffinity");
  }

  const uint32_t warmup = absl::GetFlag(FLAGS_warmup);
  const uint32_t total = warmup + absl::GetFlag(FLAGS_samples);
  const uint32_t window = std::max<uint32_t>(1, absl::GetFlag(FLAGS_window));
  const uint64_t timeout_ns = uint64_t(timeout_ms) * 1000000ull;
  std::vector<uint64_t> rtt;
  rtt.reserve(total);
  // Per request: when it was sent (0: not yet) and whether it is settled (answered or lost).
  std::vector<uint64_t> sent_at(total + 1, 0);
  std::vector<bool> settled(total + 1, false);
  std::vector<uint8_t> req(payload, 0x5A), rep(2048);
  uint64_t lost = 0, stale = 0, mismatched = 0;
  uint64_t next = 1, oldest = 1, in_flight = 0;
  uint64_t measure_start = 0, measure_end = 0, measured = 0;
  while (oldest <= total) {
    // Keep `window` requests outstanding.
    while (in_flight < window && next <= total) {
      memcpy(req.data(), &next, sizeof(next));
      const uint64_t t0 = NowNs();
      if (send(fd, req.data(), req.size(), 0) != static_cast<ssize_t>(req.size())) {
        perror("echo_client: send");
        return 1;
      }
      if (next == uint64_t{warmup} + 1) measure_start = t0;
      sent_at[next++] = t0;
      ++in_flight;
    }
    ssize_t n;
    if (busy) {
      n = recv(fd, rep.data(), rep.size(), MSG_DONTWAIT);
    } else {
      const uint64_t deadline = sent_at[oldest] + timeout_ns;
      pollfd p{fd, POLLIN, 0};
      int left = static_cast<int>((deadline - std::min(deadline, NowNs())) / 1000000) + 1;
      n = poll(&p, 1, left) == 1 ? recv(fd, rep.data(), rep.size(), MSG_DONTWAIT) : -1;
    }
    const uint64_t t1 = NowNs();
    if (n >= 8) {
      uint64_t back;
      memcpy(&back, rep.data(), sizeof(back));
      if (back < oldest || back >= next || settled[back]) {
        ++stale;  // a late reply to a request already counted lost, or a stranger
      } else {
        if (static_cast<size_t>(n) != req.size() ||
            memcmp(rep.data() + 8, req.data() + 8, req.size() - 8) != 0) {
          ++mismatched;
        }
        if (back > warmup) {
          rtt.push_back(t1 - sent_at[back]);
          ++measured;
          measure_end = t1;
        }
        settled[back] = true;
        --in_flight;
      }
    }
    // Requests unanswered for longer than the timeout are lost.
    for (; oldest < next; ++oldest) {
      if (settled[oldest]) continue;
      if (t1 - sent_at[oldest] < timeout_ns) break;
      settled[oldest] = true;
      --in_flight;
      ++lost;
    }
    if (oldest == next && next > total) break;
  }
  std::sort(rtt.begin(), rtt.end());
  double sum = 0;
  for (uint64_t v : rtt) sum += v;
  const double seconds = measure_end > measure_start ? (measure_end - measure_start) / 1e9 : 0;
  printf("{\"samples\": %zu, \"lost\": %" PRIu64 ", \"stale\": %" PRIu64
         ", \"mismatched\": %" PRIu64 ", \"min_us\": %.2f, \"p50_us\": %.2f, \"p90_us\": %.2f, "
         "\"p99_us\": %.2f, \"p999_us\": %.2f, \"mean_us\": %.2f, \"window\": %u, "
         "\"seconds\": %.3f, \"echoes_per_s\": %.0f}\n",
         rtt.size(), lost, stale, mismatched, Percentile(rtt, 0), Percentile(rtt, 50),
         Percentile(rtt, 90), Percentile(rtt, 99), Percentile(rtt, 99.9),
         rtt.empty() ? 0 : sum / rtt.size() / 1e3, window, seconds,
         seconds > 0 ? measured / seconds : 0);
  close(fd);
  return lost > total / 10 ? 1 : 0;
}
