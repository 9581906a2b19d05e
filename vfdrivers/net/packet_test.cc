#include "vfdrivers/net/packet.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vfdrivers::net::packet {
namespace {

UdpSpec TestSpec(bool vlan) {
  UdpSpec spec;
  spec.dst_mac = MacAddress{{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}};
  spec.src_mac = MacAddress{{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}};
  spec.has_vlan = vlan;
  spec.vlan_tci = 0x2064;  // PCP 1, VID 100
  spec.src_ip = Ipv4(10, 0, 0, 1);
  spec.dst_ip = Ipv4(10, 0, 0, 2);
  spec.src_port = 4000;
  spec.dst_port = 5000;
  spec.ip_id = 7;
  return spec;
}

std::vector<uint8_t> Payload(size_t n) {
  std::vector<uint8_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(i * 7 + 3);
  return p;
}

std::vector<uint8_t> Build(const UdpSpec& spec, const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> frame(UdpFrameLength(spec, payload.size()));
  size_t n = BuildUdp(spec, payload.data(), payload.size(), frame.data(), frame.size());
  EXPECT_EQ(n, frame.size());
  return frame;
}

TEST(Checksum, Rfc1071Example) {
  // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum (with end-around carry) to ddf2.
  const uint8_t data[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  uint32_t sum = ChecksumPartial(data, sizeof(data));
  EXPECT_EQ(ChecksumFinish(sum), static_cast<uint16_t>(~0xddf2));
  EXPECT_EQ(InternetChecksum(data, sizeof(data)), 0x220d);
}

TEST(Checksum, KnownIpv4Header) {
  // 192.168.0.1 -> 192.168.0.199, UDP, total length 0x73: header checksum 0xb861.
  uint8_t header[] = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
                      0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  EXPECT_EQ(InternetChecksum(header, sizeof(header)), 0xb861);
  header[10] = 0xb8;
  header[11] = 0x61;
  EXPECT_EQ(InternetChecksum(header, sizeof(header)), 0);
}

TEST(Checksum, OddLengthAndChaining) {
  const uint8_t data[] = {0x12, 0x34, 0x56, 0x78, 0x9a};
  // Odd byte padded with zero: 1234 + 5678 + 9a00.
  EXPECT_EQ(InternetChecksum(data, 5), static_cast<uint16_t>(~(0x1234 + 0x5678 + 0x9a00 - 0xFFFF)));
  uint32_t chained = ChecksumPartial(data + 4, 1, ChecksumPartial(data, 4));
  EXPECT_EQ(ChecksumFinish(chained), InternetChecksum(data, 5));
}

TEST(Checksum, UdpZeroBecomesAllOnes) {
  // Find a payload whose checksum computes to 0 by adjusting one word; it must go out as FFFF.
  UdpSpec spec = TestSpec(false);
  std::vector<uint8_t> payload(2, 0);
  std::vector<uint8_t> frame = Build(spec, payload);
  size_t udp = kEthernetHeaderBytes + kIpv4MinHeaderBytes;
  frame[udp + 6] = frame[udp + 7] = 0;
  uint16_t c = UdpChecksum(spec.src_ip, spec.dst_ip, &frame[udp], 10);
  // Adding the current checksum value into the payload word drives the sum to all ones.
  uint16_t word = c;
  frame[udp + 8] = static_cast<uint8_t>(word >> 8);
  frame[udp + 9] = static_cast<uint8_t>(word);
  EXPECT_EQ(UdpChecksum(spec.src_ip, spec.dst_ip, &frame[udp], 10), 0xFFFF);
}

TEST(Packet, BuildParseRoundTrip) {
  for (bool vlan : {false, true}) {
    for (size_t n : {0u, 1u, 17u, 1472u}) {
      UdpSpec spec = TestSpec(vlan);
      std::vector<uint8_t> payload = Payload(n);
      std::vector<uint8_t> frame = Build(spec, payload);
      UdpView v;
      ASSERT_EQ(ParseUdp(frame.data(), frame.size(), &v), ParseResult::kOk) << vlan << " " << n;
      EXPECT_EQ(v.eth.dst, spec.dst_mac);
      EXPECT_EQ(v.eth.src, spec.src_mac);
      EXPECT_EQ(v.eth.has_vlan, vlan);
      if (vlan) {
        EXPECT_EQ(v.eth.vlan_tci, 0x2064);
      }
      EXPECT_EQ(v.src_ip, spec.src_ip);
      EXPECT_EQ(v.dst_ip, spec.dst_ip);
      EXPECT_EQ(v.src_port, 4000);
      EXPECT_EQ(v.dst_port, 5000);
      EXPECT_EQ(v.ttl, 64);
      EXPECT_TRUE(v.udp_checksum_present);
      ASSERT_EQ(v.payload_length, n);
      if (n > 0) {
        EXPECT_EQ(std::memcmp(v.payload, payload.data(), n), 0);
      }
    }
  }
}

TEST(Packet, BuildInPlaceAndTooSmall) {
  UdpSpec spec = TestSpec(true);
  std::vector<uint8_t> buf(256);
  size_t off = UdpPayloadOffset(spec);
  std::memcpy(&buf[off], "hello", 5);
  size_t n = BuildUdp(spec, &buf[off], 5, buf.data(), buf.size());
  ASSERT_EQ(n, off + 5);
  UdpView v;
  ASSERT_EQ(ParseUdp(buf.data(), n, &v), ParseResult::kOk);
  EXPECT_EQ(std::memcmp(v.payload, "hello", 5), 0);
  EXPECT_EQ(BuildUdp(spec, &buf[off], 5, buf.data(), off + 4), 0u);
  EXPECT_EQ(BuildUdp(spec, nullptr, 70000, buf.data(), buf.size()), 0u);
}

TEST(Packet, PaddingIgnoredAndNoChecksumAccepted) {
  UdpSpec spec = TestSpec(false);
  spec.udp_checksum = false;
  std::vector<uint8_t> frame = Build(spec, Payload(4));
  frame.resize(60, 0xEE);  // Ethernet minimum, padded with junk
  UdpView v;
  ASSERT_EQ(ParseUdp(frame.data(), frame.size(), &v), ParseResult::kOk);
  EXPECT_FALSE(v.udp_checksum_present);
  EXPECT_EQ(v.payload_length, 4u);
}

TEST(Packet, RejectsMalformedHeaders) {
  UdpSpec spec = TestSpec(false);
  const std::vector<uint8_t> good = Build(spec, Payload(10));
  const size_t ip = kEthernetHeaderBytes;
  const size_t udp = ip + kIpv4MinHeaderBytes;
  UdpView v;
  auto with = [&](size_t at, uint8_t value) {
    std::vector<uint8_t> f = good;
    f[at] = value;
    return ParseUdp(f.data(), f.size(), &v);
  };
  EXPECT_EQ(with(12, 0x86), ParseResult::kNotIpv4);               // EtherType 86dd
  EXPECT_EQ(with(ip, 0x65), ParseResult::kBadIpv4Header);         // version 6
  EXPECT_EQ(with(ip, 0x44), ParseResult::kBadIpv4Header);         // IHL 4
  EXPECT_EQ(with(ip, 0x4F), ParseResult::kTruncated);             // IHL 15 > bytes present
  EXPECT_EQ(with(ip + 2, 0xFF), ParseResult::kTruncated);         // total length > frame
  EXPECT_EQ(with(ip + 8, 1), ParseResult::kBadIpv4Checksum);      // TTL changed
  EXPECT_EQ(with(udp + 4, 0xFF), ParseResult::kBadUdpLength);     // UDP length > IP payload
  EXPECT_EQ(with(udp + 12, 0x00), ParseResult::kBadUdpChecksum);  // payload byte changed

  // A fragment (MF set; header checksum fixed up so only the fragment bit is wrong).
  std::vector<uint8_t> frag = good;
  frag[ip + 6] |= 0x20;
  frag[ip + 10] = frag[ip + 11] = 0;
  uint16_t c = InternetChecksum(&frag[ip], 20);
  frag[ip + 10] = static_cast<uint8_t>(c >> 8);
  frag[ip + 11] = static_cast<uint8_t>(c);
  EXPECT_EQ(ParseUdp(frag.data(), frag.size(), &v), ParseResult::kIpv4Fragment);

  // Two VLAN tags.
  std::vector<uint8_t> qinq = {0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x88, 0xA8, 0, 1,
                               0x81, 0x00, 0, 2, 0x08, 0x00};
  EXPECT_EQ(ParseUdp(qinq.data(), qinq.size(), &v), ParseResult::kUnsupportedL2);
  EXPECT_EQ(ParseUdp(nullptr, 0, &v), ParseResult::kTruncated);
}

TEST(Packet, EveryTruncationIsRejected) {
  for (bool vlan : {false, true}) {
    UdpSpec spec = TestSpec(vlan);
    std::vector<uint8_t> frame = Build(spec, Payload(33));
    for (size_t len = 0; len < frame.size(); ++len) {
      // Copy into an exactly sized heap buffer so a read past `len` is a real overrun.
      std::vector<uint8_t> cut(frame.begin(), frame.begin() + len);
      UdpView v;
      ParseResult r = ParseUdp(cut.empty() ? nullptr : cut.data(), len, &v);
      EXPECT_NE(r, ParseResult::kOk) << "len " << len;
    }
  }
}

TEST(Packet, EverySingleBitFlipAfterL2IsCaught) {
  // One's-complement sums detect any single-bit error, so a flipped bit anywhere in the IPv4
  // header, UDP header or payload must never yield kOk with the original contents.
  UdpSpec spec = TestSpec(false);
  const std::vector<uint8_t> good = Build(spec, Payload(40));
  for (size_t byte = kEthernetHeaderBytes; byte < good.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> f = good;
      f[byte] ^= static_cast<uint8_t>(1u << bit);
      UdpView v;
      ParseResult r = ParseUdp(f.data(), f.size(), &v);
      const size_t udp_csum = kEthernetHeaderBytes + kIpv4MinHeaderBytes + 6;
      if (r == ParseResult::kOk) {
        // Only possible when the flip cleared the whole UDP checksum field (no checksum).
        EXPECT_TRUE(byte == udp_csum || byte == udp_csum + 1) << byte << ":" << bit;
        EXPECT_FALSE(v.udp_checksum_present);
      }
    }
  }
}

TEST(Packet, RandomAndMutatedFramesStayInBounds) {
  std::mt19937_64 rng(12345);
  UdpSpec spec = TestSpec(true);
  const std::vector<uint8_t> good = Build(spec, Payload(64));
  size_t ok = 0;
  for (int i = 0; i < 200000; ++i) {
    std::vector<uint8_t> f;
    if (i % 2 == 0) {
      f.resize(rng() % 200);
      for (auto& b : f) b = static_cast<uint8_t>(rng());
      if (f.size() >= 14 && (i % 4 == 0)) {  // steer toward the IPv4 path
        f[12] = 0x08;
        f[13] = 0x00;
        if (f.size() > 14) f[14] = static_cast<uint8_t>(0x45 + rng() % 3);
      }
    } else {
      f = good;
      int edits = 1 + rng() % 4;
      for (int e = 0; e < edits; ++e) f[rng() % f.size()] = static_cast<uint8_t>(rng());
      f.resize(rng() % (f.size() + 1));
    }
    UdpView v;
    ParseResult r = ParseUdp(f.empty() ? nullptr : f.data(), f.size(), &v);
    if (r == ParseResult::kOk) {
      ++ok;
      ASSERT_GE(v.payload, f.data());
      ASSERT_LE(v.payload + v.payload_length, f.data() + f.size());
      ASSERT_EQ(v.payload, f.data() + v.udp_offset + kUdpHeaderBytes);
    }
  }
  EXPECT_GT(ok, 0u);  // some mutations (MAC bytes, padding) keep frames valid
}

}  // namespace
}  // namespace vfdrivers::net::packet
