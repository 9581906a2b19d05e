#include "examples/udp_echo_loop.h"

#include <algorithm>
#include <cstring>

#include "vfdrivers/net/packet.h"

namespace vfbroker::examples {
namespace {

namespace packet = vfdrivers::net::packet;
using vfdrivers::net::PacketBuffer;

inline uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline void Store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline uint32_t Load32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
template <size_t N>
inline void SwapBytes(uint8_t* a, uint8_t* b) {
  uint8_t t[N];
  std::memcpy(t, a, N);
  std::memcpy(a, b, N);
  std::memcpy(b, t, N);
}

// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), one's-complement additions, for a 16-bit field
// that changes from m to m'.
inline uint16_t IncrementalUpdate(uint16_t hc, uint16_t m, uint16_t m_new) {
  uint32_t sum = uint32_t{static_cast<uint16_t>(~hc)} + uint32_t{static_cast<uint16_t>(~m)} +
                 m_new;
  sum = (sum & 0xFFFF) + (sum >> 16);
  sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

}  // namespace

EchoVerdict EchoFrameInPlace(uint8_t* frame, size_t length, const EchoOptions& options) {
  // Ethernet II, at most one 802.1Q / 802.1ad tag.
  if (length < packet::kEthernetHeaderBytes) return EchoVerdict::kIgnore;
  if (frame[0] & 0x01) return EchoVerdict::kIgnore;  // group (multicast/broadcast) destination
  size_t l3 = packet::kEthernetHeaderBytes;
  uint16_t ether_type = Load16(frame + 12);
  if (ether_type == packet::kEtherTypeVlan || ether_type == packet::kEtherTypeQinQ) {
    if (length < l3 + packet::kVlanTagBytes) return EchoVerdict::kIgnore;
    ether_type = Load16(frame + 16);
    l3 += packet::kVlanTagBytes;
  }
  if (ether_type != packet::kEtherTypeIpv4) return EchoVerdict::kIgnore;

  // IPv4 (RFC 791): version, IHL, total length within the frame, no fragment, UDP.
  if (length < l3 + packet::kIpv4MinHeaderBytes) return EchoVerdict::kIgnore;
  uint8_t* ip = frame + l3;
  if ((ip[0] >> 4) != 4) return EchoVerdict::kIgnore;
  const size_t ihl = size_t{ip[0] & 0x0Fu} * 4;
  const size_t total = Load16(ip + 2);
  if (ihl < packet::kIpv4MinHeaderBytes || total < ihl + packet::kUdpHeaderBytes ||
      l3 + total > length) {
    return EchoVerdict::kIgnore;
  }
  if ((Load16(ip + 6) & 0x3FFF) != 0) return EchoVerdict::kIgnore;  // MF or offset
  if (ip[9] != packet::kIpProtocolUdp) return EchoVerdict::kIgnore;
  const uint32_t dst_ip = Load32(ip + 16);
  if ((dst_ip >> 28) == 0xE || dst_ip == 0xFFFFFFFFu) return EchoVerdict::kIgnore;

  // UDP (RFC 768).
  uint8_t* udp = ip + ihl;
  const size_t udp_length = Load16(udp + 4);
  if (udp_length < packet::kUdpHeaderBytes || udp_length > total - ihl) {
    return EchoVerdict::kIgnore;
  }
  if (options.udp_port != 0 && Load16(udp + 2) != options.udp_port) return EchoVerdict::kIgnore;
  if (options.verify) {
    packet::UdpView view;
    if (packet::ParseUdp(frame, length, &view) != packet::ParseResult::kOk) {
      return EchoVerdict::kIgnore;
    }
  }

  // Turn it around. The swaps leave both checksums valid (see the header).
  SwapBytes<6>(frame, frame + 6);
  SwapBytes<4>(ip + 12, ip + 16);
  SwapBytes<2>(udp, udp + 2);
  const uint16_t old_word = Load16(ip + 8);  // TTL, protocol
  ip[8] = options.reply_ttl;
  Store16(ip + 10, IncrementalUpdate(Load16(ip + 10), old_word, Load16(ip + 8)));
  if (options.checksum == ChecksumMode::kRecompute) {
    Store16(udp + 6, 0);
    Store16(udp + 6, packet::UdpChecksum(Load32(ip + 12), Load32(ip + 16), udp, udp_length));
  }
  return EchoVerdict::kEcho;
}

EchoStats RunUdpEcho(vfdrivers::net::Port& port, const EchoOptions& options,
                     const std::atomic<bool>& stop, const std::function<void()>& on_idle) {
  EchoStats stats;
  const size_t burst = std::clamp<size_t>(options.burst, 1, kMaxBurst);
  PacketBuffer rx[kMaxBurst];
  PacketBuffer tx[kMaxBurst];
  PacketBuffer drop[kMaxBurst];
  while (!stop.load(std::memory_order_relaxed)) {
    const size_t n = port.RxBurst(absl::MakeSpan(rx, burst));
    if (n == 0) {
      ++stats.idle_polls;
      if (on_idle) on_idle();
      continue;
    }
    stats.received += n;
    size_t ntx = 0, ndrop = 0;
    for (size_t i = 0; i < n; ++i) {
      if (EchoFrameInPlace(rx[i].data, rx[i].length, options) == EchoVerdict::kEcho) {
        tx[ntx++] = rx[i];
      } else {
        drop[ndrop++] = rx[i];
      }
    }
    if (ndrop > 0) {
      stats.ignored += ndrop;
      port.FreeBurst(absl::MakeConstSpan(drop, ndrop));
    }
    size_t sent = port.TxBurst(absl::MakeConstSpan(tx, ntx));
    for (int tries = 0; sent < ntx && tries < options.tx_retries; ++tries) {
      port.Service();  // reclaim completions, then try the rest again
      sent += port.TxBurst(absl::MakeConstSpan(tx + sent, ntx - sent));
    }
    stats.echoed += sent;
    if (sent < ntx) {
      stats.tx_dropped += ntx - sent;
      port.FreeBurst(absl::MakeConstSpan(tx + sent, ntx - sent));
    }
  }
  return stats;
}

}  // namespace vfbroker::examples
