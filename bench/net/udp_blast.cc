// udp_blast: a pktgen-like UDP sender for the receive benchmark. Builds one Ethernet/IPv4/UDP
// frame (full checksums) and sends copies of it through an AF_PACKET socket with
// PACKET_QDISC_BYPASS (packet(7): straight to the driver's xmit), sendmmsg(2) in batches,
// paced to --rate packets per second on average (batches at Poisson arrival times; 0: as
// fast as it can) for --seconds.
//
//   udp_blast --interface=v1 --dst_mac=02:.. --src_ip=10.77.0.2 --dst_ip=10.77.0.1
//             --dst_port=9 --rate=100000 --seconds=5 [--cpu=0]
//
// Prints one JSON line: sent, seconds, pps. Needs CAP_NET_RAW.
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "vfdrivers/net/packet.h"

ABSL_FLAG(std::string, interface, "", "Device to send on");
ABSL_FLAG(std::string, src_mac, "", "Source MAC (default: the device's)");
ABSL_FLAG(std::string, dst_mac, "", "Destination MAC");
ABSL_FLAG(std::string, src_ip, "10.77.0.2", "Source IPv4");
ABSL_FLAG(std::string, dst_ip, "10.77.0.1", "Destination IPv4");
ABSL_FLAG(uint32_t, src_port, 9999, "UDP source port");
ABSL_FLAG(uint32_t, dst_port, 9, "UDP destination port");
ABSL_FLAG(uint32_t, payload, 18, "UDP payload bytes (18: a 60-byte frame, 64 with the FCS)");
ABSL_FLAG(uint64_t, rate, 0, "Packets per second (0: unpaced)");
ABSL_FLAG(double, seconds, 5, "How long to send");
ABSL_FLAG(uint32_t, batch, 16, "Frames per sendmmsg");
ABSL_FLAG(bool, poisson, true,
          "Paced batches at random (exponential) intervals of mean batch/rate instead of on a "
          "straight line: the kernel's tick-sampled CPU accounting then sees a stationary load "
          "instead of one in step with its own clock");
ABSL_FLAG(int, cpu, -1, "Pin to this CPU (-1: no)");

namespace {

namespace packet = vfdrivers::net::packet;

bool ParseMac(const std::string& s, packet::MacAddress* mac) {
  unsigned b[6];
  if (sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) mac->bytes[i] = static_cast<uint8_t>(b[i]);
  return true;
}

bool ParseIp(const std::string& s, uint32_t* ip) {
  in_addr a{};
  if (inet_pton(AF_INET, s.c_str(), &a) != 1) return false;
  *ip = ntohl(a.s_addr);
  return true;
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("paced UDP frame sender over AF_PACKET");
  absl::ParseCommandLine(argc, argv);
  const std::string ifname = absl::GetFlag(FLAGS_interface);
  const int ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
  if (ifindex == 0) {
    fprintf(stderr, "udp_blast: no interface %s\n", ifname.c_str());
    return 2;
  }
  packet::UdpSpec spec;
  if (!ParseMac(absl::GetFlag(FLAGS_dst_mac), &spec.dst_mac) ||
      !ParseIp(absl::GetFlag(FLAGS_src_ip), &spec.src_ip) ||
      !ParseIp(absl::GetFlag(FLAGS_dst_ip), &spec.dst_ip)) {
    fprintf(stderr, "udp_blast: bad --dst_mac, --src_ip or --dst_ip\n");
    return 2;
  }
  if (!absl::GetFlag(FLAGS_src_mac).empty()) {
    if (!ParseMac(absl::GetFlag(FLAGS_src_mac), &spec.src_mac)) return 2;
  } else {
    char path[128];
    snprintf(path, sizeof(path), "/sys/class/net/%s/address", ifname.c_str());
    FILE* f = fopen(path, "r");
    char line[64] = {};
    if (f == nullptr || fgets(line, sizeof(line), f) == nullptr || !ParseMac(line, &spec.src_mac)) {
      fprintf(stderr, "udp_blast: cannot read %s\n", path);
      return 2;
    }
    fclose(f);
  }
  spec.src_port = static_cast<uint16_t>(absl::GetFlag(FLAGS_src_port));
  spec.dst_port = static_cast<uint16_t>(absl::GetFlag(FLAGS_dst_port));
  std::vector<uint8_t> payload(absl::GetFlag(FLAGS_payload), 0xA5);
  uint8_t frame[2048];
  const size_t length =
      packet::BuildUdp(spec, payload.data(), payload.size(), frame, sizeof(frame));
  if (length == 0) {
    fprintf(stderr, "udp_blast: payload too large\n");
    return 2;
  }

  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);  // protocol 0: send only
  if (fd < 0) {
    perror("udp_blast: socket(AF_PACKET)");
    return 1;
  }
  int one = 1;
  if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) != 0) {
    perror("udp_blast: PACKET_QDISC_BYPASS");
  }
  int sndbuf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
  sockaddr_ll ll{};
  ll.sll_family = AF_PACKET;
  ll.sll_ifindex = ifindex;
  ll.sll_protocol = htons(ETH_P_IP);
  ll.sll_halen = 6;
  memcpy(ll.sll_addr, spec.dst_mac.bytes.data(), 6);
  if (int cpu = absl::GetFlag(FLAGS_cpu); cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("udp_blast: sched_setaffinity");
  }

  const size_t batch = std::max<uint32_t>(1, std::min<uint32_t>(absl::GetFlag(FLAGS_batch), 256));
  std::vector<iovec> iov(batch, iovec{frame, length});
  std::vector<mmsghdr> msgs(batch);
  for (size_t i = 0; i < batch; ++i) {
    msgs[i].msg_hdr = {};
    msgs[i].msg_hdr.msg_name = &ll;
    msgs[i].msg_hdr.msg_namelen = sizeof(ll);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  const uint64_t rate = absl::GetFlag(FLAGS_rate);
  const uint64_t start = NowNs();
  const uint64_t end = start + static_cast<uint64_t>(absl::GetFlag(FLAGS_seconds) * 1e9);
  uint64_t sent = 0, errors = 0;
  const bool poisson = absl::GetFlag(FLAGS_poisson) && rate > 0;
  std::mt19937_64 rng(NowNs());
  std::exponential_distribution<double> gap(static_cast<double>(rate) / batch);  // per second
  uint64_t next = start;
  for (;;) {
    uint64_t now = NowNs();
    if (now >= end) break;
    size_t want = batch;
    if (poisson) {
      if (now < next) continue;  // spin until the next batch is due
      next += static_cast<uint64_t>(gap(rng) * 1e9);
    } else if (rate > 0) {
      // Packets due by now on a straight line from `start` (no catch-up beyond one batch).
      const uint64_t due = static_cast<uint64_t>((now - start) * 1e-9 * static_cast<double>(rate));
      if (due <= sent) continue;  // spin until the next one is due
      want = std::min<uint64_t>(batch, due - sent);
    }
    int n = sendmmsg(fd, msgs.data(), static_cast<unsigned>(want), 0);
    if (n > 0) {
      sent += static_cast<uint64_t>(n);
    } else if (errno != EINTR) {
      ++errors;  // ENOBUFS: the device refused; pace on
    }
  }
  const double seconds = (NowNs() - start) * 1e-9;
  printf("{\"sent\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"seconds\": %.3f, \"pps\": %.0f, "
         "\"frame_bytes\": %zu}\n",
         sent, errors, seconds, sent / seconds, length);
  close(fd);
  return 0;
}
