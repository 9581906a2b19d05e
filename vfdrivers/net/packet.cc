#include "vfdrivers/net/packet.h"

#include <cstring>

namespace vfdrivers::net::packet {
namespace {

uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t Load32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void Store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void Store32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

uint32_t PseudoHeaderSum(uint32_t src_ip, uint32_t dst_ip, size_t udp_length) {
  // RFC 768: source address, destination address, zero, protocol, UDP length.
  uint32_t sum = 0;
  sum += src_ip >> 16;
  sum += src_ip & 0xFFFF;
  sum += dst_ip >> 16;
  sum += dst_ip & 0xFFFF;
  sum += kIpProtocolUdp;
  sum += static_cast<uint32_t>(udp_length);  // <= 65535 - 20
  return sum;
}

}  // namespace

uint32_t ChecksumPartial(const void* data, size_t length, uint32_t sum) {
  // RFC 1071 section 4.1, with a 64-bit accumulator so carries never overflow, folded back.
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t acc = sum;
  while (length >= 2) {
    acc += Load16(p);
    p += 2;
    length -= 2;
  }
  if (length == 1) acc += uint32_t{p[0]} << 8;  // pad the odd byte with zero
  while (acc >> 32) acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
  return static_cast<uint32_t>(acc);
}

uint16_t ChecksumFinish(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

uint16_t InternetChecksum(const void* data, size_t length) {
  return ChecksumFinish(ChecksumPartial(data, length));
}

uint16_t UdpChecksum(uint32_t src_ip, uint32_t dst_ip, const uint8_t* udp, size_t udp_length) {
  uint16_t c = ChecksumFinish(ChecksumPartial(udp, udp_length,
                                              PseudoHeaderSum(src_ip, dst_ip, udp_length)));
  return c == 0 ? 0xFFFF : c;  // RFC 768: a computed zero is sent as all ones
}

const char* ParseResultName(ParseResult result) {
  switch (result) {
    case ParseResult::kOk: return "ok";
    case ParseResult::kTruncated: return "truncated";
    case ParseResult::kUnsupportedL2: return "unsupported_l2";
    case ParseResult::kNotIpv4: return "not_ipv4";
    case ParseResult::kBadIpv4Header: return "bad_ipv4_header";
    case ParseResult::kBadIpv4Checksum: return "bad_ipv4_checksum";
    case ParseResult::kIpv4Fragment: return "ipv4_fragment";
    case ParseResult::kNotUdp: return "not_udp";
    case ParseResult::kBadUdpLength: return "bad_udp_length";
    case ParseResult::kBadUdpChecksum: return "bad_udp_checksum";
  }
  return "unknown";
}

ParseResult ParseEthernet(const uint8_t* frame, size_t length, EthernetView* out) {
  if (frame == nullptr || length < kEthernetHeaderBytes) return ParseResult::kTruncated;
  std::memcpy(out->dst.bytes.data(), frame, 6);
  std::memcpy(out->src.bytes.data(), frame + 6, 6);
  uint16_t type = Load16(frame + 12);
  size_t offset = kEthernetHeaderBytes;
  out->has_vlan = false;
  out->vlan_tci = 0;
  if (type == kEtherTypeVlan || type == kEtherTypeQinQ) {
    if (length < offset + kVlanTagBytes) return ParseResult::kTruncated;
    out->has_vlan = true;
    out->vlan_tci = Load16(frame + offset);
    type = Load16(frame + offset + 2);
    offset += kVlanTagBytes;
    if (type == kEtherTypeVlan || type == kEtherTypeQinQ) return ParseResult::kUnsupportedL2;
  }
  out->ether_type = type;
  out->payload_offset = offset;
  return ParseResult::kOk;
}

ParseResult ParseUdp(const uint8_t* frame, size_t length, UdpView* out) {
  ParseResult r = ParseEthernet(frame, length, &out->eth);
  if (r != ParseResult::kOk) return r;
  if (out->eth.ether_type != kEtherTypeIpv4) return ParseResult::kNotIpv4;
  const size_t ip_offset = out->eth.payload_offset;
  if (length - ip_offset < kIpv4MinHeaderBytes) return ParseResult::kTruncated;
  const uint8_t* ip = frame + ip_offset;
  const size_t available = length - ip_offset;
  // RFC 791 section 3.1.
  if ((ip[0] >> 4) != 4) return ParseResult::kBadIpv4Header;
  const size_t ihl = size_t{ip[0] & 0x0Fu} * 4;
  if (ihl < kIpv4MinHeaderBytes) return ParseResult::kBadIpv4Header;
  if (ihl > available) return ParseResult::kTruncated;
  const size_t total = Load16(ip + 2);
  if (total < ihl) return ParseResult::kBadIpv4Header;
  if (total > available) return ParseResult::kTruncated;
  if (InternetChecksum(ip, ihl) != 0) return ParseResult::kBadIpv4Checksum;
  const uint16_t frag = Load16(ip + 6);
  if ((frag & 0x2000) != 0 || (frag & 0x1FFF) != 0) return ParseResult::kIpv4Fragment;
  if (ip[9] != kIpProtocolUdp) return ParseResult::kNotUdp;
  out->dscp_ecn = ip[1];
  out->ip_id = Load16(ip + 4);
  out->ttl = ip[8];
  out->src_ip = Load32(ip + 12);
  out->dst_ip = Load32(ip + 16);
  out->ip_offset = ip_offset;
  out->ip_header_length = ihl;

  const size_t l4_available = total - ihl;
  if (l4_available < kUdpHeaderBytes) return ParseResult::kBadUdpLength;
  const uint8_t* udp = ip + ihl;
  const size_t udp_length = Load16(udp + 4);
  if (udp_length < kUdpHeaderBytes || udp_length > l4_available) {
    return ParseResult::kBadUdpLength;
  }
  const uint16_t checksum = Load16(udp + 6);
  out->udp_checksum_present = checksum != 0;
  if (checksum != 0) {
    // Summing the segment with its checksum field included gives all ones when it verifies.
    uint32_t sum = ChecksumPartial(udp, udp_length,
                                   PseudoHeaderSum(out->src_ip, out->dst_ip, udp_length));
    if (ChecksumFinish(sum) != 0) return ParseResult::kBadUdpChecksum;
  }
  out->src_port = Load16(udp);
  out->dst_port = Load16(udp + 2);
  out->udp_offset = ip_offset + ihl;
  out->payload = udp + kUdpHeaderBytes;
  out->payload_length = udp_length - kUdpHeaderBytes;
  return ParseResult::kOk;
}

size_t UdpPayloadOffset(const UdpSpec& spec) {
  return kEthernetHeaderBytes + (spec.has_vlan ? kVlanTagBytes : 0) + kIpv4MinHeaderBytes +
         kUdpHeaderBytes;
}

size_t UdpFrameLength(const UdpSpec& spec, size_t payload_length) {
  return UdpPayloadOffset(spec) + payload_length;
}

size_t BuildUdp(const UdpSpec& spec, const uint8_t* payload, size_t payload_length, uint8_t* out,
                size_t capacity) {
  const size_t header = UdpPayloadOffset(spec);
  if (payload_length > 65535 - kIpv4MinHeaderBytes - kUdpHeaderBytes) return 0;
  if (out == nullptr || capacity < header || capacity - header < payload_length) return 0;
  if (payload_length > 0 && payload != out + header) {
    std::memmove(out + header, payload, payload_length);
  }
  uint8_t* p = out;
  std::memcpy(p, spec.dst_mac.bytes.data(), 6);
  std::memcpy(p + 6, spec.src_mac.bytes.data(), 6);
  p += 12;
  if (spec.has_vlan) {
    Store16(p, kEtherTypeVlan);
    Store16(p + 2, spec.vlan_tci);
    p += 4;
  }
  Store16(p, kEtherTypeIpv4);
  p += 2;
  uint8_t* ip = p;
  const size_t udp_length = kUdpHeaderBytes + payload_length;
  ip[0] = 0x45;
  ip[1] = spec.dscp_ecn;
  Store16(ip + 2, static_cast<uint16_t>(kIpv4MinHeaderBytes + udp_length));
  Store16(ip + 4, spec.ip_id);
  Store16(ip + 6, 0x4000);  // DF, offset 0
  ip[8] = spec.ttl;
  ip[9] = kIpProtocolUdp;
  Store16(ip + 10, 0);
  Store32(ip + 12, spec.src_ip);
  Store32(ip + 16, spec.dst_ip);
  Store16(ip + 10, InternetChecksum(ip, kIpv4MinHeaderBytes));
  uint8_t* udp = ip + kIpv4MinHeaderBytes;
  Store16(udp, spec.src_port);
  Store16(udp + 2, spec.dst_port);
  Store16(udp + 4, static_cast<uint16_t>(udp_length));
  Store16(udp + 6, 0);
  if (spec.udp_checksum) {
    Store16(udp + 6, UdpChecksum(spec.src_ip, spec.dst_ip, udp, udp_length));
  }
  return header + payload_length;
}

}  // namespace vfdrivers::net::packet
