// The steering program's classification, run by the kernel on crafted frames
// (BPF_PROG_TEST_RUN), and the rule bookkeeping of XdpSteering. Needs root (BPF, a netns of
// its own with a dummy-like veth to attach to); skips otherwise.
#include "vfdrivers/net/xdp_steering.h"

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"
#include "vfdrivers/net/packet.h"

namespace vfdrivers::net {
namespace {

using packet::Ipv4;
using packet::MacAddress;

const MacAddress kMacA{{0x02, 0, 0, 0, 0, 0x0a}};
const MacAddress kMacB{{0x02, 0, 0, 0, 0, 0x0b}};

std::vector<uint8_t> Udp(const MacAddress& dst, uint32_t src_ip, uint16_t src_port,
                         uint32_t dst_ip, uint16_t dst_port, int vlan = -1) {
  packet::UdpSpec s;
  s.dst_mac = dst;
  s.src_mac = MacAddress{{0x02, 0, 0, 0, 0, 0x99}};
  s.src_ip = src_ip;
  s.dst_ip = dst_ip;
  s.src_port = src_port;
  s.dst_port = dst_port;
  s.has_vlan = vlan >= 0;
  s.vlan_tci = static_cast<uint16_t>(vlan < 0 ? 0 : vlan);
  std::vector<uint8_t> f(packet::UdpFrameLength(s, 8));
  const uint8_t payload[8] = {};
  packet::BuildUdp(s, payload, 8, f.data(), f.size());
  return f;
}

class XdpSteeringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (BPF, network namespaces)";
    ASSERT_EQ(unshare(CLONE_NEWNET), 0);
    // The peer stays down: no frame but the test's own reaches the program.
    ASSERT_EQ(system("sysctl -qw net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1; "
                     "ip link add st0 type veth peer name st1 && ip link set st0 up"),
              0);
    st0_ = static_cast<int>(if_nametoindex("st0"));
    auto s = XdpSteering::Attach(st0_, XdpAttachMode::kNative, /*drop_unmatched=*/false);
    ASSERT_TRUE(s.ok()) << s.status();
    steering_ = std::move(*s);
  }

  // Runs the program on `frame` as if it arrived on `ifindex` (st0 by default), queue 0;
  // returns the XDP action.
  uint32_t Run(std::vector<uint8_t> frame, int ifindex = 0, int program_fd = -1) {
    xdp_md ctx{};
    ctx.data_end = static_cast<uint32_t>(frame.size());
    ctx.ingress_ifindex = static_cast<uint32_t>(ifindex != 0 ? ifindex : st0_);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(),
                .data_size_in = static_cast<uint32_t>(frame.size()), .ctx_in = &ctx,
                .ctx_size_in = sizeof(ctx), .repeat = 1);
    int err = bpf_prog_test_run_opts(program_fd >= 0 ? program_fd : steering_->program_fd(),
                                     &opts);
    EXPECT_EQ(err, 0) << strerror(errno);
    return opts.retval;
  }
  uint64_t Stat(XdpSteering::Stat s) {
    auto st = steering_->Stats();
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? (*st)[s] : 0;
  }

  std::unique_ptr<XdpSteering> steering_;
  int st0_ = 0;
};

TEST_F(XdpSteeringTest, ClassifiesByFlowThenDestinationThenMac) {
  const uint32_t a = Ipv4(10, 0, 0, 1), b = Ipv4(10, 0, 0, 2), peer = Ipv4(10, 0, 0, 9);
  FlowRule exact{peer, a, 1111, 6000, 17, XdpSteering::kUntagged};
  FlowRule listen{0, a, 0, 6000, 17, XdpSteering::kUntagged};
  ASSERT_TRUE(steering_->AddFlowRule(exact, {1, 0}).ok());
  ASSERT_TRUE(steering_->AddFlowRule(listen, {2, 0}).ok());
  ASSERT_TRUE(steering_->AddMacRule(kMacB, 42, {3, 0}).ok());
  // The slots hold no socket here, so a steered frame is dropped (never passed): the
  // counters tell which rule matched.
  EXPECT_EQ(Run(Udp(kMacA, peer, 1111, a, 6000)), XDP_DROP);
  EXPECT_EQ(Stat(XdpSteering::kFlow), 1u);
  EXPECT_EQ(Run(Udp(kMacA, peer, 2222, a, 6000)), XDP_DROP);
  EXPECT_EQ(Stat(XdpSteering::kFlowWildcard), 1u);
  EXPECT_EQ(Run(Udp(kMacB, peer, 2222, b, 7000, 42)), XDP_DROP);
  EXPECT_EQ(Stat(XdpSteering::kMac), 1u);
  // The VLAN is part of every key.
  EXPECT_EQ(Run(Udp(kMacA, peer, 2222, a, 6000, 42)), XDP_PASS);
  EXPECT_EQ(Run(Udp(kMacB, peer, 2222, b, 7000)), XDP_PASS);
  EXPECT_EQ(Run(Udp(kMacB, peer, 2222, b, 7000, 43)), XDP_PASS);
  EXPECT_EQ(Stat(XdpSteering::kUnmatched), 3u);
  EXPECT_EQ(Stat(XdpSteering::kMalformed), 0u);
}

TEST_F(XdpSteeringTest, WrongQueueIsDroppedAndShortFramesAreMalformed) {
  ASSERT_TRUE(steering_->AddMacRule(kMacA, XdpSteering::kUntagged, {0, 3}).ok());
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, 2, 2)), XDP_DROP);  // arrives on queue 0, rule says 3
  EXPECT_EQ(Stat(XdpSteering::kWrongQueue), 1u);
  // An IPv4 EtherType with a truncated IP header, and a VLAN tag cut short.
  std::vector<uint8_t> f = Udp(kMacB, 1, 1, 2, 2);
  f.resize(14 + 10);
  EXPECT_EQ(Run(f), XDP_PASS);
  std::vector<uint8_t> v = Udp(kMacB, 1, 1, 2, 2, 5);
  v.resize(16);
  EXPECT_EQ(Run(v), XDP_PASS);
  EXPECT_EQ(Stat(XdpSteering::kMalformed), 2u);
}

TEST_F(XdpSteeringTest, RulesCannotBeClaimedTwiceAndCanBeRemoved) {
  FlowRule r{0, Ipv4(10, 0, 0, 1), 0, 53, 17, XdpSteering::kUntagged};
  ASSERT_TRUE(steering_->AddFlowRule(r, {0, 0}).ok());
  EXPECT_EQ(steering_->AddFlowRule(r, {1, 0}).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(steering_->AddMacRule(kMacA, 7, {0, 0}).ok());
  EXPECT_EQ(steering_->AddMacRule(kMacA, 7, {1, 0}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(steering_->RemoveFlowRule(r).ok());
  EXPECT_EQ(steering_->RemoveFlowRule(r).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(steering_->RemoveMacRule(kMacA, 7).ok());
  EXPECT_EQ(steering_->AddMacRule(kMacA, 4096, {0, 0}).code(),
            absl::StatusCode::kInvalidArgument);
  FlowRule half{Ipv4(1, 2, 3, 4), Ipv4(10, 0, 0, 1), 0, 53, 17, XdpSteering::kUntagged};
  EXPECT_EQ(steering_->AddFlowRule(half, {0, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(steering_->SetSocket(XdpSteering::kMaxSlots, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

// Load and attach apart (a loaded program waits attached to nothing), and Adopt: a second
// process's view of the program through the device writes the same maps.
TEST_F(XdpSteeringTest, LoadedLaterAttachedThenAdoptedThroughTheDevice) {
  ASSERT_EQ(system("ip link add st2 type veth peer name st3 && ip link set st2 up"), 0);
  const int ifindex = static_cast<int>(if_nametoindex("st2"));
  EXPECT_EQ(XdpSteering::Adopt(ifindex).status().code(), absl::StatusCode::kNotFound);
  auto loaded = XdpSteering::Load(/*drop_unmatched=*/false);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::unique_ptr<XdpSteering> s = *std::move(loaded);
  EXPECT_FALSE(s->attached());
  ASSERT_TRUE(s->AttachTo(ifindex, XdpAttachMode::kGeneric).ok());
  EXPECT_EQ(s->AttachTo(ifindex, XdpAttachMode::kGeneric).code(),
            absl::StatusCode::kFailedPrecondition);
  // Another program is never attached over ours.
  auto other = XdpSteering::Attach(ifindex, XdpAttachMode::kGeneric, false);
  EXPECT_FALSE(other.ok());

  auto adopted = XdpSteering::Adopt(ifindex);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  ASSERT_TRUE((*adopted)->AddMacRule(kMacA, XdpSteering::kUntagged, {0, 0}).ok());
  EXPECT_EQ(s->AddMacRule(kMacA, XdpSteering::kUntagged, {0, 0}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, 2, 2), ifindex, (*adopted)->program_fd()),
            XDP_DROP);  // steered to an empty slot
  auto stats = s->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)[XdpSteering::kMac], 1u);
  EXPECT_EQ((*adopted)->AttachTo(ifindex, XdpAttachMode::kGeneric).code(),
            absl::StatusCode::kFailedPrecondition);

  // Destroying the adopter leaves the program attached; so does LeaveAttached.
  adopted->reset();
  s->LeaveAttached();
  s.reset();
  auto again = XdpSteering::Adopt(ifindex);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->RemoveMacRule(kMacA, XdpSteering::kUntagged).ok());
  // Detached: nothing left to adopt.
  ASSERT_EQ(system("ip link set st2 xdpgeneric off"), 0);
  EXPECT_EQ(XdpSteering::Adopt(ifindex).status().code(), absl::StatusCode::kNotFound);
}

// One program on two devices: each device's rules match only frames that arrived on it.
TEST_F(XdpSteeringTest, SharedProgramKeepsEachDevicesRulesApart) {
  ASSERT_EQ(system("ip link add st4 type veth peer name st5 && ip link set st4 up"), 0);
  const int st4 = static_cast<int>(if_nametoindex("st4"));
  ASSERT_TRUE(steering_->AttachShared(st4, XdpAttachMode::kNative).ok());
  EXPECT_FALSE(steering_->AttachShared(st4, XdpAttachMode::kNative).ok());  // never replaced
  ASSERT_TRUE(steering_->AddMacRule(kMacA, XdpSteering::kUntagged, {1, 0}).ok());  // st0
  // The same MAC on the other device is another key: no ALREADY_EXISTS.
  ASSERT_TRUE(steering_->AddMacRule(kMacA, XdpSteering::kUntagged, {2, 0}, st4).ok());
  FlowRule flow{0, Ipv4(10, 0, 0, 1), 0, 53, 17, XdpSteering::kUntagged};
  flow.ifindex = static_cast<uint32_t>(st4);
  ASSERT_TRUE(steering_->AddFlowRule(flow, {2, 0}).ok());
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, Ipv4(10, 0, 0, 1), 53), st0_), XDP_DROP);  // MAC rule, st0
  EXPECT_EQ(Stat(XdpSteering::kMac), 1u);
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, Ipv4(10, 0, 0, 1), 53), st4), XDP_DROP);  // flow rule, st4
  EXPECT_EQ(Stat(XdpSteering::kFlowWildcard), 1u);
  EXPECT_TRUE(steering_->RemoveMacRule(kMacA, XdpSteering::kUntagged, st4).ok());
  EXPECT_TRUE(steering_->RemoveFlowRule(flow).ok());
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, Ipv4(10, 0, 0, 1), 53), st4), XDP_PASS);  // nothing for st4
  EXPECT_EQ(Run(Udp(kMacA, 1, 1, Ipv4(10, 0, 0, 1), 53), st0_), XDP_DROP);  // st0's stays
  // A loaded program attached nowhere has no device of its own: rules must name one.
  auto loaded = XdpSteering::Load(false);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->AddMacRule(kMacA, XdpSteering::kUntagged, {0, 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*loaded)->AddMacRule(kMacA, XdpSteering::kUntagged, {0, 0}, st4).ok());
}

}  // namespace
}  // namespace vfdrivers::net
