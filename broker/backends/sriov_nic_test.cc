// sriov_nic against a fake sysfs tree and a scripted rtnetlink/VFIO seam: PF resolution, slot
// picking, refusal of a shared IOMMU group, a busy group as kStillOpen, MAC/VLAN restored on
// reclaim, re-adoption, orphans, and hostile requests that change nothing.
#include "broker/backends/sriov_nic.h"

#include <linux/if_link.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/backends/fake_sysfs_test_util.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

namespace fs = std::filesystem;
using fake_sysfs::Read;
using fake_sysfs::Write;
constexpr char kPf[] = "0000:02:00.0";
const char* const kVfs[] = {"0000:02:10.0", "0000:02:10.2"};
constexpr int kIfindex = 7;

struct FakeNic {
  std::vector<VfInfo> vfs;
  std::vector<std::string> log;
  std::set<std::string> busy_groups;
  int resets = 0;
  bool link_up = false;
  bool link_state_supported = false;  // like igb
  bool rate_supported = true;
  bool ignore_mac = false;            // a PF that silently drops the MAC
  bool has_ntuple = false;            // igb on the 82576 has no ntuple table
  bool refuse_vf_rules = false;       // a table, but the driver cannot steer to a VF
  std::map<uint32_t, ethtool::NtupleRule> rules;  // location -> rule
  FakeNic() {
    for (uint32_t i = 0; i < 2; ++i) {
      VfInfo v;
      v.vf = i;
      v.spoofchk = 1;
      v.trust = 0;
      vfs.push_back(v);
    }
  }
};

struct FakePlatform : public SriovNicPlatform {
  FakeNic* nic;
  absl::Status SetVf(int pf_ifindex, uint32_t vf, const VfSetting& s) override {
    if (pf_ifindex != kIfindex || vf >= nic->vfs.size()) return absl::InvalidArgumentError("EINVAL");
    VfInfo& v = nic->vfs[vf];
    switch (s.kind) {
      case VfSetting::kMac:
        nic->log.push_back(absl::StrCat("mac ", vf));
        if (!nic->ignore_mac) v.mac = s.mac;
        break;
      case VfSetting::kVlan:
        nic->log.push_back(absl::StrCat("vlan ", vf, " ", s.value));
        v.vlan = s.value;
        break;
      case VfSetting::kSpoofchk:
        nic->log.push_back(absl::StrCat("spoofchk ", vf, " ", s.value));
        v.spoofchk = static_cast<int>(s.value);
        break;
      case VfSetting::kTrust:
        nic->log.push_back(absl::StrCat("trust ", vf, " ", s.value));
        v.trust = static_cast<int>(s.value);
        break;
      case VfSetting::kRate:
        if (!nic->rate_supported) return absl::UnimplementedError("EOPNOTSUPP");
        nic->log.push_back(absl::StrCat("rate ", vf, " ", s.value));
        v.max_tx_rate = s.value;
        break;
      case VfSetting::kLinkState:
        if (!nic->link_state_supported) return absl::UnimplementedError("EOPNOTSUPP");
        nic->log.push_back(absl::StrCat("link ", vf, " ", s.value));
        v.link_state = static_cast<int>(s.value);
        break;
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<VfInfo>> GetVfs(int pf_ifindex) override {
    if (pf_ifindex != kIfindex) return absl::NotFoundError("ENODEV");
    return nic->vfs;
  }
  absl::Status SetLinkUp(int ifindex) override {
    nic->link_up = ifindex == kIfindex;
    return absl::OkStatus();
  }
  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string&, const std::string& group,
                                                      const std::string&) override {
    if (nic->busy_groups.count(group)) return std::optional<VfioHandles>();
    VfioHandles h;
    h.container.reset(::eventfd(0, EFD_CLOEXEC));
    h.group.reset(::eventfd(0, EFD_CLOEXEC));
    h.device.reset(::eventfd(0, EFD_CLOEXEC));
    return std::optional<VfioHandles>(std::move(h));
  }
  absl::Status ResetDevice(const VfioHandles&) override {
    nic->resets++;
    nic->log.push_back("reset");
    return absl::OkStatus();
  }
  absl::StatusOr<ethtool::NtupleTable> ProbeNtuple(const std::string& pf) override {
    if (pf != "eth1" || !nic->has_ntuple) {
      return absl::UnimplementedError("eth1: ethtool rule count: Operation not supported");
    }
    return ethtool::NtupleTable{8, static_cast<uint32_t>(nic->rules.size()), true};
  }
  absl::StatusOr<uint32_t> InsertNtupleRule(const std::string& pf,
                                            const ethtool::NtupleRule& rule) override {
    if (pf != "eth1" || !nic->has_ntuple) return absl::UnimplementedError("EOPNOTSUPP");
    if (nic->refuse_vf_rules) return absl::UnimplementedError("eth1: ethtool insert: EINVAL");
    uint32_t location = 0;
    while (nic->rules.count(location)) ++location;
    if (location >= 8) return absl::ResourceExhaustedError("ENOSPC");
    nic->rules[location] = rule;
    nic->log.push_back(absl::StrCat("rule ", location, " vf ", rule.vf));
    return location;
  }
  absl::Status DeleteNtupleRule(const std::string& pf, uint32_t location) override {
    if (pf != "eth1" || nic->rules.erase(location) == 0) return absl::NotFoundError("ENOENT");
    nic->log.push_back(absl::StrCat("delete rule ", location));
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<ethtool::InstalledRule>> ListNtupleRules(
      const std::string& pf) override {
    if (pf != "eth1" || !nic->has_ntuple) return absl::UnimplementedError("EOPNOTSUPP");
    std::vector<ethtool::InstalledRule> out;
    for (const auto& [location, rule] : nic->rules) {
      out.push_back({location, static_cast<int>(rule.vf)});
    }
    return out;
  }
};

class SriovNicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sysfs_ = std::make_unique<fake_sysfs::Tree>("sriovnic");
    root_ = sysfs_->root();
    sysfs_->AddSriovPf(kPf, 7);
    fs::create_directories(Pci(kPf) + "/net/eth1");
    fs::create_directories(root_ + "/sys/class/net");
    fs::create_directories(root_ + "/sys/devices/eth1");
    fs::create_symlink("../../bus/pci/devices/" + std::string(kPf),
                       root_ + "/sys/devices/eth1/device");
    fs::create_symlink("../../devices/eth1", root_ + "/sys/class/net/eth1");
    Write(root_ + "/sys/devices/eth1/ifindex", absl::StrCat(kIfindex, "\n"));
    Write(root_ + "/sys/devices/eth1/address", "52:54:00:12:34:56\n");
    fs::create_directories(root_ + "/sys/devices/mv0");
    Write(root_ + "/sys/devices/mv0/address", "02:aa:00:00:00:01\n");
    fs::create_symlink("../mv0", root_ + "/sys/devices/eth1/upper_mv0");
    for (int i = 0; i < 2; ++i) {
      sysfs_->AddVf(kPf, i, kVfs[i]);
      sysfs_->PutInIommuGroup(kVfs[i], 9 + i);
      sysfs_->BindDriver(kVfs[i], "vfio-pci");
    }
    config_.set_pf_interface("eth1");
    config_.set_max_vfs(2);
  }

  std::string Pci(const std::string& bdf) const { return sysfs_->Pci(bdf); }

  absl::StatusOr<std::unique_ptr<SriovNicBackend>> Open() {
    auto platform = std::make_unique<FakePlatform>();
    platform->nic = &nic_;
    SriovNicOptions options;
    sysfs_->PointAtTree(&options);
    options.vfs_timeout = absl::Milliseconds(200);
    options.bind_timeout = absl::Milliseconds(200);
    return SriovNicBackend::Open("sn", config_, std::move(platform), options);
  }

  static NicRequest Request(uint8_t last, uint32_t vlan = 0) {
    NicRequest r;
    r.mac = {0x02, 0, 0, 0, 0, last};
    r.vlan = vlan;
    return r;
  }

  std::unique_ptr<fake_sysfs::Tree> sysfs_;
  std::string root_;
  config::SriovNicPool config_;
  FakeNic nic_;
};

TEST_F(SriovNicTest, OpenFindsThePfEnablesVfsAndSetsItUp) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->pf_pci_address(), kPf);
  EXPECT_EQ((*backend)->pf_interface(), "eth1");
  EXPECT_EQ((*backend)->capacity_bytes(), 2u);
  EXPECT_EQ((*backend)->vf_pci_address(1), kVfs[1]);
  EXPECT_EQ(Read(Pci(kPf) + "/sriov_drivers_autoprobe"), "0");
  EXPECT_EQ(Read(Pci(kPf) + "/sriov_numvfs"), "2");
  EXPECT_TRUE(nic_.link_up);
}

TEST_F(SriovNicTest, OpenByPciAddressFindsTheInterface) {
  config_.clear_pf_interface();
  config_.set_pf_pci_address(kPf);
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->pf_interface(), "eth1");
}

TEST_F(SriovNicTest, OpenRefusesBadPfs) {
  config_.set_max_vfs(8);
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kFailedPrecondition);  // > totalvfs
  config_.set_max_vfs(2);
  Write(Pci(kPf) + "/sriov_numvfs", "1\n");
  auto refused = Open();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("1 VFs are enabled"), std::string::npos);
  config_.set_pf_interface("nope0");
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kFailedPrecondition);
  config_.set_pf_interface("../x");
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
  config_.set_pf_pci_address(kPf);  // both set
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SriovNicTest, ProvisionResetsAndSetsMacVlanSpoofchkTrust) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  NicRequest request = Request(0x11, 42);
  request.max_tx_rate_mbps = 100;
  auto nic = (*backend)->ProvisionNic(1, request);
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  ASSERT_EQ(nic->fds.size(), 3u);
  EXPECT_EQ(nic->fds[0].role, v1::FD_ROLE_VFIO_CONTAINER);
  EXPECT_EQ(nic->fds[1].role, v1::FD_ROLE_VFIO_GROUP);
  EXPECT_EQ(nic->fds[2].role, v1::FD_ROLE_VFIO_DEVICE);
  EXPECT_EQ(nic->pci_address, kVfs[1]);
  const journal::SriovNicState& state = nic->state.sriov_nic();
  EXPECT_EQ(state.slot(), 1u);
  EXPECT_EQ(state.vf_pci_address(), kVfs[1]);
  EXPECT_EQ(state.iommu_group(), 10u);
  EXPECT_EQ(state.vlan(), 42u);
  EXPECT_EQ(state.mac(), std::string("\x02\0\0\0\0\x11", 6));
  EXPECT_EQ(nic_.vfs[1].mac, request.mac);
  EXPECT_EQ(nic_.vfs[1].vlan, 42u);
  EXPECT_EQ(nic_.vfs[1].spoofchk, 1);
  EXPECT_EQ(nic_.vfs[1].trust, 0);
  EXPECT_EQ(nic_.vfs[1].max_tx_rate, 100u);
  EXPECT_EQ(nic_.resets, 1);
  EXPECT_EQ(nic_.log.front(), "reset");  // FLR before the PF sets anything
  EXPECT_EQ(nic_.vfs[0].mac, Mac{});     // the other VF untouched
}

TEST_F(SriovNicTest, ProvisionRefusesAVfThatSharesItsIommuGroup) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  sysfs_->AddIommuGroupMember(9, "0000:02:00.0");
  auto refused = (*backend)->ProvisionNic(0, Request(1));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("0000:02:00.0 0000:02:10.0"), std::string::npos)
      << refused.status();
  EXPECT_TRUE(nic_.log.empty());
  EXPECT_TRUE((*backend)->ProvisionNic(1, Request(2)).ok());
}

TEST_F(SriovNicTest, HostileRequestsChangeNothing) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  ASSERT_TRUE((*backend)->ProvisionNic(0, Request(5)).ok());
  nic_.log.clear();
  // Another VF's MAC.
  EXPECT_EQ((*backend)->ProvisionNic(1, Request(5)).status().code(),
            absl::StatusCode::kAlreadyExists);
  // The PF's own MAC, or that of a device on the PF: the host's frames.
  NicRequest pf_mac = Request(0);
  pf_mac.mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  auto taken = (*backend)->ProvisionNic(1, pf_mac);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(taken.status().message().find("in use by eth1"), std::string::npos)
      << taken.status().message();
  NicRequest upper_mac = Request(0);
  upper_mac.mac = {0x02, 0xaa, 0, 0, 0, 0x01};
  taken = (*backend)->ProvisionNic(1, upper_mac);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(taken.status().message().find("in use by mv0"), std::string::npos)
      << taken.status().message();
  // Flow filters on a PF with no ntuple table (igb): refused, naming the probe's answer.
  NicRequest filtered = Request(6);
  filtered.filters.emplace_back();
  auto unimplemented = (*backend)->ProvisionNic(1, filtered);
  EXPECT_EQ(unimplemented.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(unimplemented.status().message().find("has no ntuple table (eth1: ethtool rule "
                                                  "count: Operation not supported)"),
            std::string::npos)
      << unimplemented.status().message();
  // No such slot.
  EXPECT_EQ((*backend)->ProvisionNic(2, Request(7)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*backend)->Provision(0, 1).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(nic_.log.empty());
  EXPECT_EQ(nic_.vfs[1].mac, Mac{});
}

TEST_F(SriovNicTest, RateThePfCannotSetIsUnimplementedAndUndone) {
  nic_.rate_supported = false;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  NicRequest request = Request(8, 3);
  request.max_tx_rate_mbps = 10;
  EXPECT_EQ((*backend)->ProvisionNic(0, request).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(nic_.vfs[0].mac, Mac{});
  EXPECT_EQ(nic_.vfs[0].vlan, 0u);
}

TEST_F(SriovNicTest, AMacThatDoesNotTakeIsRefused) {
  nic_.ignore_mac = true;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->ProvisionNic(0, Request(9)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(SriovNicTest, TeardownWaitsWhileTheGroupIsBusyThenResetsAndRestores) {
  nic_.link_state_supported = true;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  auto nic = (*backend)->ProvisionNic(0, Request(0x21, 100));
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  EXPECT_EQ(nic_.vfs[0].link_state, IFLA_VF_LINK_STATE_AUTO);
  const int resets = nic_.resets;
  nic_.busy_groups.insert("9");
  auto held = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, TeardownResult::kStillOpen);
  EXPECT_EQ(nic_.resets, resets);
  EXPECT_EQ(nic_.vfs[0].mac, (Mac{0x02, 0, 0, 0, 0, 0x21}));  // untouched while held
  nic_.busy_groups.clear();
  auto freed = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, TeardownResult::kFreed);
  EXPECT_EQ(nic_.resets, resets + 1);
  EXPECT_EQ(nic_.vfs[0].mac, Mac{});
  EXPECT_EQ(nic_.vfs[0].vlan, 0u);
  EXPECT_EQ(nic_.vfs[0].spoofchk, 1);
  EXPECT_EQ(nic_.vfs[0].trust, 0);
  EXPECT_EQ(nic_.vfs[0].link_state, IFLA_VF_LINK_STATE_DISABLE);
  // The next tenant gets it clean, with its own MAC.
  auto next = (*backend)->ProvisionNic(0, Request(0x22));
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(nic_.vfs[0].vlan, 0u);
  EXPECT_EQ(nic_.vfs[0].mac, (Mac{0x02, 0, 0, 0, 0, 0x22}));
}

TEST_F(SriovNicTest, TeardownOfAForeignStateIsRefused) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  journal::ExtentState foreign;
  foreign.mutable_xdp_nic()->set_slot(0);
  EXPECT_EQ((*backend)->Teardown(foreign).status().code(), absl::StatusCode::kInvalidArgument);
  journal::ExtentState moved;
  moved.mutable_sriov_nic()->set_slot(0);
  moved.mutable_sriov_nic()->set_vf_pci_address(kVfs[1]);
  moved.mutable_sriov_nic()->set_pf_pci_address(kPf);
  EXPECT_EQ((*backend)->Teardown(moved).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SriovNicTest, RestartReadoptsALiveVfAndRefusesMismatches) {
  journal::ExtentState state;
  {
    auto backend = Open();
    ASSERT_TRUE(backend.ok()) << backend.status().message();
    auto nic = (*backend)->ProvisionNic(1, Request(0x31, 7));
    ASSERT_TRUE(nic.ok()) << nic.status().message();
    state = nic->state;
  }
  Write(Pci(kPf) + "/sriov_numvfs", "2\n");  // as the kernel keeps them
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  ASSERT_TRUE((*backend)->RemoveOrphans({state}).ok());
  EXPECT_EQ(nic_.vfs[1].vlan, 7u);  // a journaled VF is left alone
  EXPECT_TRUE((*backend)->Readopt(state).ok());
  journal::ExtentState wrong = state;
  wrong.mutable_sriov_nic()->set_vlan(8);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = state;
  wrong.mutable_sriov_nic()->set_iommu_group(3);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SriovNicTest, OrphanedVfIsRestoredBeforeItIsOffered) {
  nic_.vfs[0].mac = {0x02, 1, 2, 3, 4, 5};
  nic_.vfs[0].vlan = 9;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  ASSERT_TRUE((*backend)->RemoveOrphans({}).ok());
  EXPECT_EQ(nic_.vfs[0].mac, Mac{});
  EXPECT_EQ(nic_.vfs[0].vlan, 0u);
  EXPECT_EQ(nic_.resets, 1);
}

TEST_F(SriovNicTest, AVfWithTrustOnOrSpoofchkOffIsAnOrphanToo) {
  nic_.vfs[0].trust = 1;
  nic_.vfs[1].spoofchk = 0;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  ASSERT_TRUE((*backend)->RemoveOrphans({}).ok());
  EXPECT_EQ(nic_.vfs[0].trust, 0);
  EXPECT_EQ(nic_.vfs[1].spoofchk, 1);
  EXPECT_EQ(nic_.resets, 2);
}

TEST_F(SriovNicTest, HeldOrphanStaysOutUntilItCanBeRestored) {
  nic_.vfs[1].mac = {0x02, 1, 2, 3, 4, 6};
  nic_.busy_groups.insert("10");
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->RemoveOrphans({}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*backend)->ProvisionNic(1, Request(0x41)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(nic_.vfs[1].mac, (Mac{0x02, 1, 2, 3, 4, 6}));
  nic_.busy_groups.clear();
  auto nic = (*backend)->ProvisionNic(1, Request(0x41));
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  EXPECT_EQ(nic_.resets, 2);  // the restore's, then the grant's
  EXPECT_EQ(nic_.vfs[1].mac, (Mac{0x02, 0, 0, 0, 0, 0x41}));
}

// The real rtnetlink side on the loopback device (ifindex 1): an answer with no VFs, and a VF
// setting refused, both without hanging.
TEST(RealSriovNicPlatformTest, LoopbackHasNoVfs) {
  std::unique_ptr<SriovNicPlatform> platform = MakeRealSriovNicPlatform();
  absl::StatusOr<std::vector<VfInfo>> vfs = platform->GetVfs(1);
  ASSERT_TRUE(vfs.ok()) << vfs.status().message();
  EXPECT_TRUE(vfs->empty());
  VfSetting setting{VfSetting::kVlan, {}, 5};
  EXPECT_FALSE(platform->SetVf(1, 0, setting).ok());
}

}  // namespace
}  // namespace vfbroker

namespace vfbroker {
namespace {

journal::NicFilter Udp(uint32_t dst_ip, uint32_t dst_port, const std::string& id) {
  journal::NicFilter f;
  f.set_id(id);
  f.set_protocol(17);
  f.set_dst_ip(dst_ip);
  f.set_dst_port(dst_port);
  return f;
}

TEST_F(SriovNicTest, FiltersBecomeNtupleRulesToTheVfOnItsMacAndVlanAndGoAtTeardown) {
  nic_.has_ntuple = true;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  NicRequest request = Request(0x31, 12);
  request.filters = {Udp(0x0a000002, 53, "f1"), Udp(0x0a000002, 5353, "f2")};
  auto nic = (*backend)->ProvisionNic(1, request);
  ASSERT_TRUE(nic.ok()) << nic.status();
  ASSERT_EQ(nic_.rules.size(), 2u);
  for (const auto& [location, rule] : nic_.rules) {
    EXPECT_EQ(rule.vf, 1u);
    EXPECT_EQ(rule.dst_mac, request.mac);  // only the lease's own frames
    EXPECT_EQ(rule.vlan, 12u);
    EXPECT_EQ(rule.protocol, 17u);
    EXPECT_EQ(rule.dst_ip, 0x0a000002u);
  }
  EXPECT_EQ(nic_.rules[0].dst_port, 53);
  EXPECT_EQ(nic_.rules[1].dst_port, 5353);
  ASSERT_EQ(nic->state.sriov_nic().filters_size(), 2);
  EXPECT_EQ(nic->state.sriov_nic().filters(1).id(), "f2");
  // A rule of someone else's (the host's own, to the PF) is never touched.
  nic_.rules[5] = ethtool::NtupleRule{};
  nic_.rules[5].vf = 7;
  auto freed = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, TeardownResult::kFreed);
  ASSERT_EQ(nic_.rules.size(), 1u);
  EXPECT_EQ(nic_.rules.begin()->first, 5u);
}

TEST_F(SriovNicTest, AFilterThePfRefusesUndoesTheWholeGrant) {
  nic_.has_ntuple = true;
  nic_.refuse_vf_rules = true;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  NicRequest request = Request(0x32, 5);
  request.filters = {Udp(0x0a000003, 80, "f1")};
  auto refused = (*backend)->ProvisionNic(0, request);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(refused.status().message().find("flow filter f1 on VF 0"), std::string::npos)
      << refused.status().message();
  EXPECT_TRUE(nic_.rules.empty());
  EXPECT_EQ(nic_.vfs[0].mac, Mac{});
  EXPECT_EQ(nic_.vfs[0].vlan, 0u);
}

TEST_F(SriovNicTest, RulesToAnUnjournaledVfAreOrphansRemovedAtStart) {
  nic_.has_ntuple = true;
  nic_.rules[0].vf = 0;  // a crash between inserting the rule and journaling the lease
  nic_.rules[3].vf = 1;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  journal::ExtentState kept;
  kept.mutable_sriov_nic()->set_slot(1);
  kept.mutable_sriov_nic()->set_pf_pci_address(kPf);
  ASSERT_TRUE((*backend)->RemoveOrphans({kept}).ok());
  ASSERT_EQ(nic_.rules.size(), 1u);  // VF 1's lease is journaled: its rule stays
  EXPECT_EQ(nic_.rules.begin()->first, 3u);
}

}  // namespace
}  // namespace vfbroker
