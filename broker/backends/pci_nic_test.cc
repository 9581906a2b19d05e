// pci_nic against a fake sysfs tree and a scripted VFIO seam: a function taken from its kernel
// driver and bound to vfio-pci, reset and handed out with its own MAC; requests naming a MAC,
// VLAN, rate or filter refused; a shared IOMMU group refused; a busy group as kStillOpen; a MAC
// the tenant set forgotten by the reset (and a device whose reset does not restore it refused);
// re-adoption; orphans bound to vfio-pci reset before they are offered.
#include "broker/backends/pci_nic.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/backends/fake_sysfs_test_util.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

namespace fs = std::filesystem;
using fake_sysfs::Read;
using fake_sysfs::Write;
const char* const kFunctions[] = {"0000:05:00.0", "0000:06:00.0"};
const MacAddress kMacs[] = {{0x52, 0x54, 0, 0x56, 0, 2}, {0x52, 0x54, 0, 0x56, 0, 3}};

// The devices' side: their MACs (what a tenant set, until a reset), resets, busy groups.
struct FakeDevices {
  MacAddress mac[2] = {kMacs[0], kMacs[1]};
  std::set<std::string> busy_groups;
  int resets = 0;
  bool reset_restores_mac = true;
  bool can_read_mac = true;
};

struct FakePlatform : public PciNicPlatform {
  FakeDevices* devices;
  // Which function the last OpenVfio was for (the fake's device descriptor carries no name).
  int last = -1;
  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string&, const std::string& group,
                                                      const std::string& bdf) override {
    if (devices->busy_groups.count(group)) return std::optional<VfioHandles>();
    last = bdf == kFunctions[0] ? 0 : 1;
    VfioHandles h;
    h.container.reset(::eventfd(0, EFD_CLOEXEC));
    h.group.reset(::eventfd(0, EFD_CLOEXEC));
    h.device.reset(::eventfd(0, EFD_CLOEXEC));
    return std::optional<VfioHandles>(std::move(h));
  }
  absl::Status ResetDevice(const VfioHandles&) override {
    devices->resets++;
    if (devices->reset_restores_mac) devices->mac[last] = kMacs[last];
    return absl::OkStatus();
  }
  absl::StatusOr<MacAddress> ReadMac(const VfioHandles&) override {
    if (!devices->can_read_mac) return absl::UnimplementedError("not virtio-net");
    return devices->mac[last];
  }
};

class PciNicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sysfs_ = std::make_unique<fake_sysfs::Tree>("pcinic");
    root_ = sysfs_->root();
    for (int i = 0; i < 2; ++i) {
      sysfs_->AddFunction(kFunctions[i], "(null)\n");
      Write(Pci(kFunctions[i]) + "/class", "0x020000\n");
      sysfs_->PutInIommuGroup(kFunctions[i], 12 + i);
    }
    // Function 0 is with its kernel driver, with a netdev; function 1 is already vfio-pci's.
    sysfs_->BindDriver(kFunctions[0], "virtio-pci");
    Write(root_ + "/sys/bus/pci/drivers/virtio-pci/unbind", "");
    // (virtio_net's netdev hangs under the virtio device, not under the PCI function.)
    fs::create_directories(Pci(kFunctions[0]) + "/virtio0/net/eth2");
    Write(Pci(kFunctions[0]) + "/virtio0/net/eth2/address", "52:54:00:56:00:02\n");
    Write(Pci(kFunctions[0]) + "/virtio0/net/eth2/addr_assign_type", "0\n");
    sysfs_->BindDriver(kFunctions[1], "vfio-pci");
    for (const char* bdf : kFunctions) config_.add_pci_addresses(bdf);
    // The kernel's side of driver_override + drivers_probe: a function whose override says
    // vfio-pci and that has no driver is bound to vfio-pci.
    binder_ = std::thread([this] {
      while (!stop_) {
        for (const char* bdf : kFunctions) {
          std::error_code ec;
          if (!fs::exists(Pci(bdf) + "/driver", ec) &&
              Read(Pci(bdf) + "/driver_override") == "vfio-pci" &&
              Read(root_ + "/sys/bus/pci/drivers_probe") == bdf) {
            fs::remove_all(Pci(bdf) + "/virtio0", ec);
            fs::create_symlink("../../drivers/vfio-pci", Pci(bdf) + "/driver", ec);
          }
        }
        // The kernel's side of driver/unbind: the link goes.
        if (Read(root_ + "/sys/bus/pci/drivers/virtio-pci/unbind") == kFunctions[0]) {
          std::error_code ec;
          fs::remove(Pci(kFunctions[0]) + "/driver", ec);
          Write(root_ + "/sys/bus/pci/drivers/virtio-pci/unbind", "");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  void TearDown() override {
    stop_ = true;
    binder_.join();
  }

  std::string Pci(const std::string& bdf) const { return sysfs_->Pci(bdf); }

  absl::StatusOr<std::unique_ptr<PciNicBackend>> Open() {
    auto platform = std::make_unique<FakePlatform>();
    platform->devices = &devices_;
    PciNicOptions options;
    sysfs_->PointAtTree(&options);
    options.bind_timeout = absl::Seconds(2);
    return PciNicBackend::Open("pn", config_, std::move(platform), options);
  }

  static std::string Bytes(const MacAddress& mac) { return std::string(mac.begin(), mac.end()); }

  std::unique_ptr<fake_sysfs::Tree> sysfs_;
  std::string root_;
  config::PciNicPool config_;
  FakeDevices devices_;
  std::atomic<bool> stop_{false};
  std::thread binder_;
};

TEST_F(PciNicTest, ProvisionTakesTheFunctionFromItsDriverResetsItAndGivesItsOwnMac) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->capacity_bytes(), 2u);
  EXPECT_TRUE((*backend)->is_nic());
  auto nic = (*backend)->ProvisionNic(0, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  ASSERT_EQ(nic->fds.size(), 3u);
  EXPECT_EQ(nic->fds[0].role, v1::FD_ROLE_VFIO_CONTAINER);
  EXPECT_EQ(nic->fds[1].role, v1::FD_ROLE_VFIO_GROUP);
  EXPECT_EQ(nic->fds[2].role, v1::FD_ROLE_VFIO_DEVICE);
  EXPECT_EQ(nic->pci_address, kFunctions[0]);
  EXPECT_EQ(fs::read_symlink(Pci(kFunctions[0]) + "/driver").filename(), "vfio-pci");
  EXPECT_EQ(Read(Pci(kFunctions[0]) + "/driver_override"), "vfio-pci");
  const journal::PciNicState& state = nic->state.pci_nic();
  EXPECT_EQ(state.slot(), 0u);
  EXPECT_EQ(state.pci_address(), kFunctions[0]);
  EXPECT_EQ(state.iommu_group(), 12u);
  EXPECT_EQ(state.mac(), Bytes(kMacs[0]));
  EXPECT_EQ(devices_.resets, 1);
}

TEST_F(PciNicTest, RequestsNamingMacVlanRateOrFiltersAreRefusedAndChangeNothing) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  NicRequest mac;
  mac.mac = {0x02, 0, 0, 0, 0, 1};
  mac.mac_requested = true;
  auto refused = (*backend)->ProvisionNic(0, mac);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("whole device"), std::string::npos);
  NicRequest vlan;
  vlan.vlan = 5;
  EXPECT_EQ((*backend)->ProvisionNic(0, vlan).status().code(), absl::StatusCode::kInvalidArgument);
  NicRequest rate;
  rate.max_tx_rate_mbps = 10;
  EXPECT_EQ((*backend)->ProvisionNic(0, rate).status().code(), absl::StatusCode::kInvalidArgument);
  NicRequest filtered;
  filtered.filters.emplace_back();
  EXPECT_EQ((*backend)->ProvisionNic(0, filtered).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*backend)->ProvisionNic(2, NicRequest{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*backend)->Provision(0, 1).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(devices_.resets, 0);
  EXPECT_EQ(fs::read_symlink(Pci(kFunctions[0]) + "/driver").filename(), "virtio-pci");
}

TEST_F(PciNicTest, OpenRefusesBadPools) {
  config_.add_pci_addresses(kFunctions[0]);  // twice
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
  config_.clear_pci_addresses();
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
  config_.add_pci_addresses("0000:05:00.0/../x");
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kInvalidArgument);
  config_.set_pci_addresses(0, "0000:07:00.0");
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kNotFound);
  config_.set_pci_addresses(0, kFunctions[0]);
  Write(Pci(kFunctions[0]) + "/class", "0x010802\n");  // an NVMe controller
  auto refused = Open();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("not a network controller"), std::string::npos);
}

TEST_F(PciNicTest, AFunctionSharingItsIommuGroupIsRefused) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  sysfs_->AddIommuGroupMember(12, "0000:00:05.0");
  auto refused = (*backend)->ProvisionNic(0, NicRequest{});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("0000:00:05.0 0000:05:00.0"), std::string::npos)
      << refused.status();
  EXPECT_EQ(fs::read_symlink(Pci(kFunctions[0]) + "/driver").filename(), "virtio-pci");
  EXPECT_EQ(devices_.resets, 0);
}

TEST_F(PciNicTest, AHeldGroupIsUnavailableAtGrantAndStillOpenAtTeardown) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  devices_.busy_groups.insert("13");
  EXPECT_EQ((*backend)->ProvisionNic(1, NicRequest{}).status().code(),
            absl::StatusCode::kUnavailable);
  devices_.busy_groups.clear();
  auto nic = (*backend)->ProvisionNic(1, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  const int resets = devices_.resets;
  devices_.busy_groups.insert("13");
  auto held = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(*held, TeardownResult::kStillOpen);
  EXPECT_EQ(devices_.resets, resets);
  devices_.busy_groups.clear();
  auto freed = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, TeardownResult::kFreed);
  EXPECT_EQ(devices_.resets, resets + 1);
}

TEST_F(PciNicTest, TeardownResetForgetsTheTenantsMacAndTheNextTenantGetsTheOriginal) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  auto nic = (*backend)->ProvisionNic(0, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  devices_.mac[0] = {0x02, 0xbb, 0, 0, 0, 1};  // VIRTIO_NET_CTRL_MAC_ADDR_SET by the tenant
  auto freed = (*backend)->Teardown(nic->state);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, TeardownResult::kFreed);
  EXPECT_EQ(devices_.mac[0], kMacs[0]);
  auto next = (*backend)->ProvisionNic(0, NicRequest{});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->state.pci_nic().mac(), Bytes(kMacs[0]));
}

TEST_F(PciNicTest, ADeviceWhoseResetKeepsTheTenantsMacIsNotOfferedAgain) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  auto nic = (*backend)->ProvisionNic(0, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  devices_.reset_restores_mac = false;
  devices_.mac[0] = {0x02, 0xbb, 0, 0, 0, 1};
  auto refused = (*backend)->Teardown(nic->state);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("02:bb:00:00:00:01"), std::string::npos)
      << refused.status();
}

TEST_F(PciNicTest, WithoutADeviceReadableMacTheNetdevsPermanentMacIsUsed) {
  devices_.can_read_mac = false;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  auto nic = (*backend)->ProvisionNic(0, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  EXPECT_EQ(nic->state.pci_nic().mac(), Bytes(kMacs[0]));
  // Function 1 never had a netdev while the broker watched: no MAC to tell the tenant.
  auto unknown = (*backend)->ProvisionNic(1, NicRequest{});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unknown.status().message().find("cannot learn the MAC"), std::string::npos);
}

TEST_F(PciNicTest, RestartReadoptsALiveLeaseAndRefusesMismatches) {
  journal::ExtentState state;
  {
    auto backend = Open();
    ASSERT_TRUE(backend.ok()) << backend.status().message();
    auto nic = (*backend)->ProvisionNic(0, NicRequest{});
    ASSERT_TRUE(nic.ok()) << nic.status().message();
    state = nic->state;
  }
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  devices_.busy_groups.insert("12");  // the live tenant holds it
  const int resets = devices_.resets;
  // Function 1 is vfio-pci's but free: reset as an orphan; function 0 is journaled: left alone.
  ASSERT_TRUE((*backend)->RemoveOrphans({state}).ok());
  EXPECT_EQ(devices_.resets, resets + 1);
  EXPECT_TRUE((*backend)->Readopt(state).ok());
  journal::ExtentState wrong = state;
  wrong.mutable_pci_nic()->set_iommu_group(3);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = state;
  wrong.mutable_pci_nic()->set_pci_address(kFunctions[1]);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  journal::ExtentState foreign;
  foreign.mutable_sriov_nic()->set_slot(0);
  EXPECT_EQ((*backend)->Teardown(foreign).status().code(), absl::StatusCode::kInvalidArgument);
  // The owner dies: the group frees, the function is reset.
  devices_.busy_groups.clear();
  auto freed = (*backend)->Teardown(state);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, TeardownResult::kFreed);
}

TEST_F(PciNicTest, AHeldOrphanStaysOutUntilItCanBeReset) {
  devices_.busy_groups.insert("13");
  devices_.mac[1] = {0x02, 0xcc, 0, 0, 0, 1};
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status().message();
  EXPECT_EQ((*backend)->RemoveOrphans({}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*backend)->ProvisionNic(1, NicRequest{}).status().code(),
            absl::StatusCode::kUnavailable);
  devices_.busy_groups.clear();
  auto nic = (*backend)->ProvisionNic(1, NicRequest{});
  ASSERT_TRUE(nic.ok()) << nic.status().message();
  EXPECT_EQ(devices_.resets, 2);  // the orphan's reset, then the grant's
  EXPECT_EQ(nic->state.pci_nic().mac(), Bytes(kMacs[1]));
}

}  // namespace
}  // namespace vfbroker
