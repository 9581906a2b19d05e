// EchoFrameInPlace and RunUdpEcho without a device: frames built with packet::BuildUdp, turned
// around, and parsed back with packet::ParseUdp (which verifies both checksums); hostile
// frames (truncated, random, mutated) must be ignored or echoed validly, never read past.
#include "examples/udp_echo_loop.h"

#include <atomic>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "vfdrivers/net/packet.h"

namespace vfbroker::examples {
namespace {

namespace packet = vfdrivers::net::packet;
using packet::Ipv4;
using vfdrivers::net::PacketBuffer;

const packet::MacAddress kA{{0x02, 0, 0, 0, 0, 0x0a}};
const packet::MacAddress kB{{0x02, 0, 0, 0, 0, 0x0b}};

packet::UdpSpec Spec() {
  packet::UdpSpec s;
  s.src_mac = kA;
  s.dst_mac = kB;
  s.src_ip = Ipv4(10, 0, 0, 1);
  s.dst_ip = Ipv4(10, 0, 0, 2);
  s.src_port = 40000;
  s.dst_port = 7;
  s.ttl = 17;
  return s;
}

std::vector<uint8_t> Frame(const packet::UdpSpec& spec, const std::string& payload) {
  std::vector<uint8_t> f(2048);
  size_t n = packet::BuildUdp(spec, reinterpret_cast<const uint8_t*>(payload.data()),
                              payload.size(), f.data(), f.size());
  f.resize(n);
  return f;
}

void ExpectEchoOf(const std::vector<uint8_t>& f, const packet::UdpSpec& spec,
                  const std::string& payload) {
  packet::UdpView v;
  ASSERT_EQ(packet::ParseUdp(f.data(), f.size(), &v), packet::ParseResult::kOk);
  EXPECT_EQ(v.eth.src, spec.dst_mac);
  EXPECT_EQ(v.eth.dst, spec.src_mac);
  EXPECT_EQ(v.src_ip, spec.dst_ip);
  EXPECT_EQ(v.dst_ip, spec.src_ip);
  EXPECT_EQ(v.src_port, spec.dst_port);
  EXPECT_EQ(v.dst_port, spec.src_port);
  EXPECT_EQ(v.ttl, 64);
  EXPECT_EQ(v.eth.has_vlan, spec.has_vlan);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.payload), v.payload_length), payload);
}

TEST(EchoFrameInPlace, SwapsAndKeepsChecksumsValid) {
  for (int len : {0, 1, 2, 17, 18, 100, 1400}) {
    const std::string payload(len, 'p');
    for (bool vlan : {false, true}) {
      packet::UdpSpec s = Spec();
      s.has_vlan = vlan;
      s.vlan_tci = 42;
      std::vector<uint8_t> f = Frame(s, payload);
      ASSERT_EQ(EchoFrameInPlace(f.data(), f.size(), EchoOptions{}), EchoVerdict::kEcho);
      ExpectEchoOf(f, s, payload);
    }
  }
}

TEST(EchoFrameInPlace, NoUdpChecksumStaysNone) {
  packet::UdpSpec s = Spec();
  s.udp_checksum = false;
  std::vector<uint8_t> f = Frame(s, "abc");
  ASSERT_EQ(EchoFrameInPlace(f.data(), f.size(), EchoOptions{}), EchoVerdict::kEcho);
  packet::UdpView v;
  ASSERT_EQ(packet::ParseUdp(f.data(), f.size(), &v), packet::ParseResult::kOk);
  EXPECT_FALSE(v.udp_checksum_present);
}

// A local sender over veth with TX checksum offload leaves the pseudo-header sum in the field.
TEST(EchoFrameInPlace, RecomputeFixesAPartialChecksum) {
  packet::UdpSpec s = Spec();
  const std::string payload = "partial";
  std::vector<uint8_t> f = Frame(s, payload);
  const size_t udp = packet::kEthernetHeaderBytes + packet::kIpv4MinHeaderBytes;
  f[udp + 6] = 0x12;  // anything but the right sum
  f[udp + 7] = 0x34;
  EchoOptions verify;
  verify.verify = true;
  std::vector<uint8_t> copy = f;
  EXPECT_EQ(EchoFrameInPlace(copy.data(), copy.size(), verify), EchoVerdict::kIgnore);
  EXPECT_EQ(copy, f);  // untouched
  EchoOptions recompute;
  recompute.checksum = ChecksumMode::kRecompute;
  ASSERT_EQ(EchoFrameInPlace(f.data(), f.size(), recompute), EchoVerdict::kEcho);
  ExpectEchoOf(f, s, payload);
}

TEST(EchoFrameInPlace, IgnoresWhatIsNotAUnicastUdpDatagramForItsPort) {
  const size_t ip = packet::kEthernetHeaderBytes;
  auto ignored = [](std::vector<uint8_t> f, const EchoOptions& o = EchoOptions{}) {
    std::vector<uint8_t> before = f;
    bool r = EchoFrameInPlace(f.data(), f.size(), o) == EchoVerdict::kIgnore;
    return r && f == before;
  };
  std::vector<uint8_t> f = Frame(Spec(), "x");
  std::vector<uint8_t> arp = f;
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_TRUE(ignored(arp));
  std::vector<uint8_t> multicast = f;
  multicast[0] |= 0x01;
  EXPECT_TRUE(ignored(multicast));
  std::vector<uint8_t> fragment = f;
  fragment[ip + 6] |= 0x20;  // MF
  EXPECT_TRUE(ignored(fragment));
  std::vector<uint8_t> tcp = f;
  tcp[ip + 9] = 6;
  EXPECT_TRUE(ignored(tcp));
  std::vector<uint8_t> to_group = f;
  to_group[ip + 16] = 224;
  EXPECT_TRUE(ignored(to_group));
  std::vector<uint8_t> ipv6 = f;
  ipv6[ip] = 0x65;
  EXPECT_TRUE(ignored(ipv6));
  EchoOptions port8;
  port8.udp_port = 8;
  EXPECT_TRUE(ignored(f, port8));
  EchoOptions port7;
  port7.udp_port = 7;
  EXPECT_FALSE(ignored(f, port7));
}

// Every truncation of a valid frame: ignored (the IPv4 total length no longer fits), and
// nothing read past the end (each is a heap copy of exactly n bytes: ASan would catch it).
TEST(EchoFrameInPlace, EveryTruncationIsIgnored) {
  for (bool vlan : {false, true}) {
    packet::UdpSpec s = Spec();
    s.has_vlan = vlan;
    const std::vector<uint8_t> f = Frame(s, "truncate me");
    for (size_t n = 0; n < f.size(); ++n) {
      std::vector<uint8_t> t(f.begin(), f.begin() + n);
      EXPECT_EQ(EchoFrameInPlace(t.data(), t.size(), EchoOptions{}), EchoVerdict::kIgnore) << n;
    }
  }
}

// Random frames and single-byte mutations of a valid one: with verify, whatever is echoed
// must parse with valid checksums.
TEST(EchoFrameInPlace, HostileFramesNeverEchoInvalid) {
  std::mt19937 rng(12345);
  EchoOptions verify;
  verify.verify = true;
  const std::vector<uint8_t> good = Frame(Spec(), "0123456789abcdef");
  int echoed = 0;
  for (int i = 0; i < 200000; ++i) {
    std::vector<uint8_t> f;
    if (i % 2 == 0) {
      f = good;
      f[rng() % f.size()] = static_cast<uint8_t>(rng());
      if (rng() % 4 == 0) f.resize(rng() % (f.size() + 1));
    } else {
      f.resize(rng() % 128);
      for (auto& b : f) b = static_cast<uint8_t>(rng());
      if (f.size() > 14) {
        f[12] = 0x08;
        f[13] = 0x00;
      }
    }
    if (EchoFrameInPlace(f.data(), f.size(), verify) == EchoVerdict::kEcho) {
      ++echoed;
      packet::UdpView v;
      ASSERT_EQ(packet::ParseUdp(f.data(), f.size(), &v), packet::ParseResult::kOk) << i;
    }
  }
  EXPECT_GT(echoed, 0);  // mutations of fields that do not matter (payload bytes fail the sum)
}

// A port in memory: RxBurst hands out queued frames, TxBurst keeps what it is given.
class FakePort : public vfdrivers::net::Port {
 public:
  FakePort(std::atomic<bool>* stop, size_t tx_room) : stop_(stop), tx_room_(tx_room) {}
  void Queue(std::vector<uint8_t> f) { rx_.push_back(std::move(f)); }
  const vfdrivers::net::PortInfo& info() const override { return info_; }
  const vfdrivers::net::PortStats& stats() const override { return stats_; }
  size_t RxBurst(absl::Span<PacketBuffer> out) override {
    size_t n = 0;
    while (n < out.size() && !rx_.empty()) {
      held_.push_back(std::move(rx_.front()));
      rx_.pop_front();
      PacketBuffer b;
      b.data = held_.back().data();
      b.length = static_cast<uint32_t>(held_.back().size());
      b.pool = this;
      out[n++] = b;
    }
    if (rx_.empty() && n == 0) stop_->store(true);
    return n;
  }
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override {
    size_t n = std::min(pkts.size(), tx_room_);
    for (size_t i = 0; i < n; ++i) sent_.emplace_back(pkts[i].data, pkts[i].data + pkts[i].length);
    tx_room_ -= n;
    return n;
  }
  size_t AllocBurst(absl::Span<PacketBuffer>) override { return 0; }
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override {
    freed_ += bufs.size();
    return bufs.size();
  }
  void Service() override { ++services_; }

  std::vector<std::vector<uint8_t>> sent_;
  size_t freed_ = 0;
  int services_ = 0;

 private:
  std::atomic<bool>* stop_;
  size_t tx_room_;
  std::deque<std::vector<uint8_t>> rx_;
  std::deque<std::vector<uint8_t>> held_;  // stable addresses
  vfdrivers::net::PortInfo info_;
  vfdrivers::net::PortStats stats_;
};

TEST(RunUdpEcho, EchoesInBurstsFreesTheRestAndDropsWhatTheRingRefuses) {
  std::atomic<bool> stop{false};
  FakePort port(&stop, /*tx_room=*/90);
  const packet::UdpSpec s = Spec();
  for (int i = 0; i < 100; ++i) port.Queue(Frame(s, "echo-" + std::to_string(i)));
  std::vector<uint8_t> arp = Frame(s, "arp");
  arp[13] = 0x06;
  for (int i = 0; i < 5; ++i) port.Queue(arp);
  EchoOptions o;
  o.tx_retries = 3;
  EchoStats st = RunUdpEcho(port, o, stop);
  EXPECT_EQ(st.received, 105u);
  EXPECT_EQ(st.ignored, 5u);
  EXPECT_EQ(st.echoed, 90u);
  EXPECT_EQ(st.tx_dropped, 10u);
  EXPECT_EQ(port.freed_, 15u);  // the ignored ones and the ones the ring refused
  ASSERT_EQ(port.sent_.size(), 90u);
  for (int i = 0; i < 90; ++i) ExpectEchoOf(port.sent_[i], s, "echo-" + std::to_string(i));
  EXPECT_GE(port.services_, 3);
}

}  // namespace
}  // namespace vfbroker::examples
