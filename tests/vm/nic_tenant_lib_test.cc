// nic_tenant_lib's exchange and watch against a port that carries frames over the host's
// loopback: what the tenant transmits is sent from a kernel socket on its address, what arrives
// there becomes a received frame (tagged with a VLAN when the test says so, as a PF that failed
// to strip it would deliver it), and injected frames arrive as they are.
#include "tests/vm/nic_tenant_lib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "vfdrivers/net/packet.h"

namespace vmtest {
namespace {

using vfdrivers::net::PacketBuffer;
namespace packet = vfdrivers::net::packet;

constexpr uint32_t kPeerIp = packet::Ipv4(127, 0, 0, 1);
constexpr uint32_t kOwnIp = packet::Ipv4(127, 0, 0, 2);
constexpr uint16_t kTenantPort = 6000;
const Mac kOwnMac = {0x02, 0, 0, 0, 0, 0x02};
const Mac kPeerMac = {0x02, 0, 0, 0, 0, 0x01};

class LoopbackPort : public vfdrivers::net::Port {
 public:
  LoopbackPort() : buffers_(kBuffers, std::vector<uint8_t>(kCapacity)) {
    for (uint32_t i = 0; i < kBuffers; ++i) free_.push_back(i);
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in own{};
    own.sin_family = AF_INET;
    own.sin_port = htons(kTenantPort);
    own.sin_addr.s_addr = htonl(kOwnIp);
    bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&own), sizeof own) == 0;
  }
  ~LoopbackPort() override { ::close(fd_); }

  bool bound() const { return bound_; }
  uint16_t vlan_on_receive = 0;                 // 0: deliver untagged
  std::deque<std::vector<uint8_t>> injected;    // frames to deliver as they are

  const vfdrivers::net::PortInfo& info() const override { return info_; }
  const vfdrivers::net::PortStats& stats() const override { return stats_; }

  size_t RxBurst(absl::Span<PacketBuffer> out) override {
    size_t n = 0;
    while (n < out.size() && !free_.empty()) {
      std::vector<uint8_t> frame;
      if (!injected.empty()) {
        frame = std::move(injected.front());
        injected.pop_front();
      } else {
        uint8_t payload[2048];
        const ssize_t r = ::recv(fd_, payload, sizeof payload, 0);
        if (r < 0) break;
        packet::UdpSpec spec;
        std::memcpy(spec.dst_mac.bytes.data(), kOwnMac.data(), 6);
        std::memcpy(spec.src_mac.bytes.data(), kPeerMac.data(), 6);
        spec.has_vlan = vlan_on_receive != 0;
        spec.vlan_tci = vlan_on_receive;
        spec.src_ip = kPeerIp;
        spec.dst_ip = kOwnIp;
        spec.src_port = 20000 + (kOwnIp & 0xff);
        spec.dst_port = kTenantPort;
        frame.resize(kCapacity);
        frame.resize(packet::BuildUdp(spec, payload, static_cast<size_t>(r), frame.data(),
                                      frame.size()));
      }
      PacketBuffer b = Take();
      std::memcpy(b.data, frame.data(), frame.size());
      b.length = static_cast<uint32_t>(frame.size());
      out[n++] = b;
    }
    return n;
  }
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override {
    for (const PacketBuffer& b : pkts) {
      packet::UdpView v;
      if (packet::ParseUdp(b.data, b.length, &v) == packet::ParseResult::kOk) {
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(v.dst_port);
        to.sin_addr.s_addr = htonl(v.dst_ip);
        (void)::sendto(fd_, v.payload, v.payload_length, 0, reinterpret_cast<sockaddr*>(&to),
                       sizeof to);
      }
      free_.push_back(b.index);
    }
    return pkts.size();
  }
  size_t AllocBurst(absl::Span<PacketBuffer> out) override {
    size_t n = 0;
    while (n < out.size() && !free_.empty()) out[n++] = Take();
    return n;
  }
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override {
    for (const PacketBuffer& b : bufs) free_.push_back(b.index);
    return bufs.size();
  }
  void Service() override {}

 private:
  static constexpr uint32_t kBuffers = 64;
  static constexpr uint32_t kCapacity = 2048;
  PacketBuffer Take() {
    const uint32_t i = free_.back();
    free_.pop_back();
    PacketBuffer b;
    b.data = buffers_[i].data();
    b.capacity = kCapacity;
    b.index = i;
    return b;
  }

  std::vector<std::vector<uint8_t>> buffers_;
  std::vector<uint32_t> free_;
  int fd_ = -1;
  bool bound_ = false;
  vfdrivers::net::PortInfo info_;
  vfdrivers::net::PortStats stats_;
};

UdpPeer Peer() {
  UdpPeer peer;
  peer.own_mac = kOwnMac;
  peer.peer_mac = kPeerMac;
  peer.own_ip = kOwnIp;
  peer.peer_ip = kPeerIp;
  peer.tag = "0000:02:10.0";
  peer.count = 8;
  peer.timeout = absl::Seconds(5);
  return peer;
}

TEST(NicTenantLibTest, ExchangeCarriesEveryDatagramBothWays) {
  LoopbackPort port;
  ASSERT_TRUE(port.bound());
  const absl::Status s = ExchangeUdp(port, Peer());
  EXPECT_TRUE(s.ok()) << s;
}

// On a VLAN lease the PF strips the tag before the VF sees a frame: one that arrives tagged
// fails the tenant.
TEST(NicTenantLibTest, ADatagramArrivingTaggedFailsTheExchange) {
  LoopbackPort port;
  ASSERT_TRUE(port.bound());
  port.vlan_on_receive = 100;
  const absl::Status s = ExchangeUdp(port, Peer());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("tagged with VLAN 100"), std::string::npos) << s;
}

TEST(NicTenantLibTest, WatchCountsFramesToAnotherMacOrAddressAsForeign) {
  LoopbackPort port;
  auto frame = [](const Mac& dst_mac, uint32_t dst_ip) {
    packet::UdpSpec spec;
    std::memcpy(spec.dst_mac.bytes.data(), dst_mac.data(), 6);
    std::memcpy(spec.src_mac.bytes.data(), kPeerMac.data(), 6);
    spec.src_ip = kPeerIp;
    spec.dst_ip = dst_ip;
    spec.src_port = 1;
    spec.dst_port = 2;
    std::vector<uint8_t> f(128);
    f.resize(packet::BuildUdp(spec, reinterpret_cast<const uint8_t*>("x"), 1, f.data(), f.size()));
    return f;
  };
  const Mac other = {0x02, 0, 0, 0, 0, 0x03};
  const Mac broadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  port.injected.push_back(frame(kOwnMac, kOwnIp));                    // own
  port.injected.push_back(frame(broadcast, kOwnIp));                  // own (group)
  port.injected.push_back(frame(other, packet::Ipv4(127, 0, 0, 3)));  // another MAC
  port.injected.push_back(frame(kOwnMac, packet::Ipv4(127, 0, 0, 3)));  // another address
  const WatchCounts counts =
      WatchForeign(port, kOwnMac, kOwnIp, absl::Milliseconds(100), /*stop_file=*/"");
  EXPECT_EQ(counts.own, 2u);
  EXPECT_EQ(counts.foreign, 2u);
}

}  // namespace
}  // namespace vmtest
