// Minimal Ethernet / 802.1Q / IPv4 / UDP parsing and building for polling drivers and tenant
// programs (UDP echo, tests). Not a TCP/IP stack: no fragments, no IPv4 options on build, no
// IPv6, no ARP.
//
// Parsing treats every frame as hostile: every length and offset is checked against the bytes
// actually present before it is read; a frame is accepted only if its IPv4 header checksum
// (RFC 791, computed as RFC 1071 describes) and, when present, its UDP checksum (RFC 768, over
// the pseudo-header) verify. Nothing here allocates; results are plain enums and views into
// the caller's frame. Thread-safe (pure functions).
#ifndef VFBROKER_VFDRIVERS_NET_PACKET_H_
#define VFBROKER_VFDRIVERS_NET_PACKET_H_

#include <array>
#include <cstddef>
#include <cstdint>

namespace vfdrivers::net::packet {

inline constexpr size_t kEthernetHeaderBytes = 14;
inline constexpr size_t kVlanTagBytes = 4;
inline constexpr size_t kIpv4MinHeaderBytes = 20;
inline constexpr size_t kUdpHeaderBytes = 8;
inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeArp = 0x0806;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;  // IEEE 802.1Q C-tag
inline constexpr uint16_t kEtherTypeQinQ = 0x88A8;  // IEEE 802.1ad S-tag
inline constexpr uint8_t kIpProtocolUdp = 17;

struct MacAddress {
  std::array<uint8_t, 6> bytes{};
  bool operator==(const MacAddress& o) const { return bytes == o.bytes; }
  bool operator!=(const MacAddress& o) const { return !(*this == o); }
};

// --- Internet checksum (RFC 1071) -------------------------------------------------------------
// One's-complement sum of 16-bit big-endian words, as a 32-bit accumulator that callers may
// chain (an odd trailing byte is padded with zero). Chaining is only exact when every chunk but
// the last has an even length.
uint32_t ChecksumPartial(const void* data, size_t length, uint32_t sum = 0);
// Folds the carries and complements: the value to store in a checksum field (host order).
uint16_t ChecksumFinish(uint32_t sum);
// ChecksumFinish(ChecksumPartial(data, length)). Over a header that contains its own correct
// checksum the result is 0.
uint16_t InternetChecksum(const void* data, size_t length);

// UDP checksum over the IPv4 pseudo-header (RFC 768) and `udp_length` bytes of UDP header plus
// payload, with the header's checksum field taken as it is (zero it first when computing).
// Addresses in host order. A computed 0 is returned as 0xFFFF (0 means "no checksum").
uint16_t UdpChecksum(uint32_t src_ip, uint32_t dst_ip, const uint8_t* udp, size_t udp_length);

// --- Parsing ---------------------------------------------------------------------------------

enum class ParseResult {
  kOk,
  kTruncated,        // fewer bytes than a header or a length field says
  kUnsupportedL2,    // more than one VLAN tag
  kNotIpv4,          // EtherType is not IPv4 (ARP, IPv6, ...)
  kBadIpv4Header,    // version != 4, IHL < 5, total length inconsistent
  kBadIpv4Checksum,
  kIpv4Fragment,     // MF set or a fragment offset: not reassembled
  kNotUdp,
  kBadUdpLength,
  kBadUdpChecksum,
};
const char* ParseResultName(ParseResult result);

struct EthernetView {
  MacAddress dst;
  MacAddress src;
  bool has_vlan = false;
  uint16_t vlan_tci = 0;       // PCP(3) DEI(1) VID(12), host order; valid when has_vlan
  uint16_t ether_type = 0;     // after the tag, host order
  size_t payload_offset = 0;   // offset of the L3 header in the frame
};

// Ethernet II with at most one 802.1Q / 802.1ad tag.
ParseResult ParseEthernet(const uint8_t* frame, size_t length, EthernetView* out);

struct UdpView {
  EthernetView eth;
  uint32_t src_ip = 0;   // host order
  uint32_t dst_ip = 0;
  uint8_t ttl = 0;
  uint8_t dscp_ecn = 0;
  uint16_t ip_id = 0;
  size_t ip_offset = 0;
  size_t ip_header_length = 0;  // with options
  uint16_t src_port = 0;        // host order
  uint16_t dst_port = 0;
  size_t udp_offset = 0;
  bool udp_checksum_present = false;
  const uint8_t* payload = nullptr;  // inside the frame
  size_t payload_length = 0;         // from the UDP length field (trailing padding excluded)
};

// A whole Ethernet [+VLAN] / IPv4 / UDP frame, checksums verified. Bytes after the IPv4 total
// length (Ethernet padding) are ignored.
ParseResult ParseUdp(const uint8_t* frame, size_t length, UdpView* out);

// --- Building --------------------------------------------------------------------------------

struct UdpSpec {
  MacAddress dst_mac;
  MacAddress src_mac;
  bool has_vlan = false;
  uint16_t vlan_tci = 0;
  uint32_t src_ip = 0;  // host order
  uint32_t dst_ip = 0;
  uint8_t ttl = 64;
  uint8_t dscp_ecn = 0;
  uint16_t ip_id = 0;
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  bool udp_checksum = true;  // false: send 0 (allowed over IPv4)
};

// Bytes BuildUdp writes for a payload of `payload_length` (no Ethernet minimum padding).
size_t UdpFrameLength(const UdpSpec& spec, size_t payload_length);

// Writes the frame into out[0..capacity) (DF set, no IP options, both checksums computed).
// Returns its length, or 0 if it does not fit or the IPv4 total length would exceed 65535.
// `payload` may already lie in `out` at the payload offset (it is then not copied).
size_t BuildUdp(const UdpSpec& spec, const uint8_t* payload, size_t payload_length, uint8_t* out,
                size_t capacity);

// Offset of the UDP payload in a frame BuildUdp would write (to build in place).
size_t UdpPayloadOffset(const UdpSpec& spec);

// Helpers for host-order IPv4 addresses: Ipv4(10, 0, 0, 1).
constexpr uint32_t Ipv4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return (uint32_t{a} << 24) | (uint32_t{b} << 16) | (uint32_t{c} << 8) | d;
}

}  // namespace vfdrivers::net::packet

#endif  // VFBROKER_VFDRIVERS_NET_PACKET_H_
