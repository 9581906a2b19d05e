// nvme_sriov against a fake sysfs tree and a scripted controller/VFIO seam: slot mapping, the
// admin sequences, refusal of a shared IOMMU group, a busy group as kStillOpen, re-adoption
// mismatches, orphans and hostile Identify data. (The real thing runs in the QEMU guest:
// tests/vm/scenarios/broker_nvme.sh.)
#include "broker/backends/nvme_sriov.h"

#include <sys/eventfd.h>
#include <sys/stat.h>
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
using nvme_admin::Command;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr char kPf[] = "0000:01:00.0";
const char* const kVfs[] = {"0000:01:00.1", "0000:01:00.2"};

// A controller with SR-IOV: a primary (cntlid 0x41), secondaries 2 and 3 for VFs 1 and 2,
// private namespaces 2 and 3 (and 1, the PF's own, attached to the primary).
struct FakeController {
  struct Ns {
    uint64_t bytes = 64 * kMiB;
    bool shared = false;
    std::set<uint16_t> attached;
  };
  struct Secondary {
    uint16_t scid;
    uint16_t vfn;
    bool online = false;
    uint16_t nvq = 0, nvi = 0;
  };
  std::map<uint32_t, Ns> namespaces;
  std::vector<Secondary> secondaries = {{2, 1}, {3, 2}};
  uint16_t vqrfap = 4, virfap = 2;
  std::vector<Command> log;
  // Hostile replies: a corrupt Secondary Controller List count, or a namespace format index.
  int secondary_count_override = -1;

  FakeController() {
    namespaces[1].attached = {0x41};
    namespaces[2];
    namespaces[3].bytes = 96 * kMiB;
  }
  Secondary* Find(uint16_t scid) {
    for (Secondary& s : secondaries) {
      if (s.scid == scid) return &s;
    }
    return nullptr;
  }
  static void Put16(absl::Span<uint8_t> d, size_t at, uint16_t v) {
    d[at] = v & 0xff;
    d[at + 1] = v >> 8;
  }
  absl::Status Run(const Command& c, absl::Span<uint8_t> d) {
    log.push_back(c);
    auto nvme_error = [](int status) {
      return absl::FailedPreconditionError(absl::StrCat("NVMe status 0x", absl::Hex(status)));
    };
    if (c.opcode == nvme_admin::kOpIdentify) {
      std::fill(d.begin(), d.end(), 0);
      switch (c.cdw10 & 0xff) {
        case nvme_admin::kCnsAllocatedNamespace: {
          auto it = namespaces.find(c.nsid);
          if (it == namespaces.end()) return absl::OkStatus();  // zeroes: not allocated
          const uint64_t blocks = it->second.bytes / 512;
          for (int i = 0; i < 8; ++i) d[i] = (blocks >> (8 * i)) & 0xff;
          d[30] = it->second.shared ? 1 : 0;
          d[128 + 2] = 9;
          return absl::OkStatus();
        }
        case nvme_admin::kCnsNamespaceControllers: {
          auto it = namespaces.find(c.nsid);
          if (it == namespaces.end()) return nvme_error(0x0b);
          Put16(d, 0, static_cast<uint16_t>(it->second.attached.size()));
          size_t i = 0;
          for (uint16_t id : it->second.attached) Put16(d, 2 + 2 * i++, id);
          return absl::OkStatus();
        }
        case nvme_admin::kCnsPrimaryCapabilities:
          Put16(d, 0, 0x41);
          d[32] = 4;
          Put16(d, 40, vqrfap);
          Put16(d, 44, 4);
          d[64] = 2;
          Put16(d, 72, virfap);
          Put16(d, 76, 2);
          return absl::OkStatus();
        case nvme_admin::kCnsSecondaryList:
          d[0] = secondary_count_override >= 0 ? secondary_count_override
                                               : static_cast<uint8_t>(secondaries.size());
          for (size_t i = 0; i < secondaries.size(); ++i) {
            const size_t at = 32 + 32 * i;
            Put16(d, at, secondaries[i].scid);
            Put16(d, at + 2, 0x41);
            d[at + 4] = secondaries[i].online ? 1 : 0;
            Put16(d, at + 8, secondaries[i].vfn);
            Put16(d, at + 10, secondaries[i].nvq);
            Put16(d, at + 12, secondaries[i].nvi);
          }
          return absl::OkStatus();
      }
      return nvme_error(0x02);
    }
    if (c.opcode == nvme_admin::kOpVirtualizationManagement) {
      const uint32_t act = c.cdw10 & 0xf, rt = (c.cdw10 >> 8) & 7;
      const uint16_t id = c.cdw10 >> 16, nr = c.cdw11 & 0xffff;
      if (act == 1) {
        (rt == 0 ? vqrfap : virfap) = nr;  // (the real one waits for the reset)
        return absl::OkStatus();
      }
      Secondary* s = Find(id);
      if (s == nullptr) return nvme_error(0x11f);
      if (act == 7) {
        s->online = false;
        s->nvq = s->nvi = 0;
      } else if (act == 8) {
        if (s->online) return nvme_error(0x120);
        (rt == 0 ? s->nvq : s->nvi) = nr;
      } else if (act == 9) {
        if (s->nvq == 0 || s->nvi == 0) return nvme_error(0x120);
        s->online = true;
      }
      return absl::OkStatus();
    }
    if (c.opcode == nvme_admin::kOpNamespaceAttachment) {
      auto it = namespaces.find(c.nsid);
      if (it == namespaces.end()) return nvme_error(0x0b);
      const uint16_t id = static_cast<uint16_t>(d[2] | d[3] << 8);
      if ((c.cdw10 & 0xf) == 0) {
        if (!it->second.shared && !it->second.attached.empty()) return nvme_error(0x4119);
        it->second.attached.insert(id);
      } else {
        it->second.attached.erase(id);
      }
      return absl::OkStatus();
    }
    return nvme_error(0x01);
  }
};

struct FakePlatform : public NvmeSriovPlatform {
  struct Channel : public nvme_admin::AdminChannel {
    FakeController* controller;
    absl::Status Run(const Command& c, absl::Span<uint8_t> d) override {
      return controller->Run(c, d);
    }
  };
  FakeController* controller = nullptr;
  std::set<std::string>* busy_groups = nullptr;
  std::vector<uint32_t>* scrubbed = nullptr;
  std::string admin_path;

  absl::StatusOr<std::unique_ptr<nvme_admin::AdminChannel>> OpenAdmin(
      const std::string& path) override {
    admin_path = path;
    auto channel = std::make_unique<Channel>();
    channel->controller = controller;
    return std::unique_ptr<nvme_admin::AdminChannel>(std::move(channel));
  }
  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string&, const std::string& group,
                                                      const std::string&) override {
    if (busy_groups->count(group)) return std::optional<VfioHandles>();
    VfioHandles h;
    h.container.reset(::eventfd(0, EFD_CLOEXEC));
    h.group.reset(::eventfd(0, EFD_CLOEXEC));
    h.device.reset(::eventfd(0, EFD_CLOEXEC));
    return std::optional<VfioHandles>(std::move(h));
  }
  absl::Status ScrubNamespace(VfioHandles, uint32_t nsid) override {
    scrubbed->push_back(nsid);
    return absl::OkStatus();
  }
  // The VF sees what the controller model has attached to its secondary controller.
  absl::StatusOr<VfFacts> InspectVf(VfioHandles, uint32_t nsid) override {
    VfFacts facts;
    facts.namespace_management = vf_namespace_management;
    for (const auto& [id, ns] : controller->namespaces) {
      if (ns.attached.count(last_scid_for(nsid))) facts.active_namespaces.push_back(id);
    }
    return facts;
  }
  uint16_t last_scid_for(uint32_t nsid) { return nsid == 2 ? 2 : 3; }  // slot i: scid i+2
  bool vf_namespace_management = false;
};

class NvmeSriovTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sysfs_ = std::make_unique<fake_sysfs::Tree>("sriov");
    root_ = sysfs_->root();
    sysfs_->AddSriovPf(kPf, 2);
    fs::create_directories(Pci(kPf) + "/nvme/nvme0");
    Write(Pci(kPf) + "/nvme/nvme0/state", "live\n");
    Write(Pci(kPf) + "/reset", "");
    for (int i = 0; i < 2; ++i) {
      sysfs_->AddVf(kPf, i, kVfs[i]);
      sysfs_->PutInIommuGroup(kVfs[i], 5 + i);
      // The fake tree does not react to writes: the VFs start bound to vfio-pci.
      sysfs_->BindDriver(kVfs[i], "vfio-pci");
    }
    config_.set_pf_pci_address(kPf);
    config_.add_namespace_ids(2);
    config_.add_namespace_ids(3);
    config_.set_io_queues_per_vf(2);
    config_.set_interrupts_per_vf(1);
  }

  std::string Pci(const std::string& bdf) const { return sysfs_->Pci(bdf); }

  absl::StatusOr<std::unique_ptr<NvmeSriovBackend>> Open() {
    auto platform = std::make_unique<FakePlatform>();
    platform->controller = &controller_;
    platform->busy_groups = &busy_groups_;
    platform->scrubbed = &scrubbed_;
    platform_ = platform.get();
    NvmeSriovOptions options;
    sysfs_->PointAtTree(&options);
    options.live_timeout = absl::Milliseconds(200);
    options.bind_timeout = absl::Milliseconds(200);
    return NvmeSriovBackend::Open("nv", config_, std::move(platform), options);
  }

  std::unique_ptr<fake_sysfs::Tree> sysfs_;
  std::string root_;
  config::NvmeSriovPool config_;
  FakeController controller_;
  std::set<std::string> busy_groups_;
  std::vector<uint32_t> scrubbed_;
  FakePlatform* platform_ = nullptr;
};

TEST_F(NvmeSriovTest, OpenMapsSlotsAndPreparesThePf) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ(platform_->admin_path, root_ + "/dev/nvme0");
  // Namespaces of 64 and 96 MiB: slots of 64 MiB, one per namespace.
  EXPECT_EQ((*backend)->slot_size(), 64 * kMiB);
  EXPECT_EQ((*backend)->capacity_bytes(), 128 * kMiB);
  EXPECT_EQ((*backend)->backend_name(), "nvme_sriov");
  // Primary's flexible resources released, PF reset, autoprobe off, one VF per slot.
  EXPECT_EQ(controller_.vqrfap, 0);
  EXPECT_EQ(controller_.virfap, 0);
  EXPECT_EQ(Read(Pci(kPf) + "/reset"), "1");
  EXPECT_EQ(Read(Pci(kPf) + "/sriov_drivers_autoprobe"), "0");
  EXPECT_EQ(Read(Pci(kPf) + "/sriov_numvfs"), "2");
}

TEST_F(NvmeSriovTest, SlotSizeIsAPowerOfTwo) {
  controller_.namespaces[2].bytes = 100 * kMiB;
  controller_.namespaces[3].bytes = 70 * kMiB;
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->slot_size(), 64 * kMiB);
}

TEST_F(NvmeSriovTest, ProvisionBringsTheSlotsVfUpWithItsNamespaceAlone) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(64 * kMiB, 64 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  const journal::NvmeSriovState& state = extent->state.nvme_sriov();
  EXPECT_EQ(state.slot(), 1u);
  EXPECT_EQ(state.vf_pci_address(), kVfs[1]);
  EXPECT_EQ(state.controller_id(), 3u);
  EXPECT_EQ(state.namespace_id(), 3u);
  EXPECT_EQ(state.iommu_group(), 6u);
  EXPECT_EQ(extent->pci_address, kVfs[1]);
  EXPECT_EQ(extent->nvme_namespace_id, 3u);
  ASSERT_EQ(extent->fds.size(), 3u);
  EXPECT_EQ(extent->fds[0].role, v1::FD_ROLE_VFIO_CONTAINER);
  EXPECT_EQ(extent->fds[1].role, v1::FD_ROLE_VFIO_GROUP);
  EXPECT_EQ(extent->fds[2].role, v1::FD_ROLE_VFIO_DEVICE);
  FakeController::Secondary* s = controller_.Find(3);
  EXPECT_TRUE(s->online);
  EXPECT_EQ(s->nvq, 2);
  EXPECT_EQ(s->nvi, 1);
  EXPECT_EQ(controller_.namespaces[3].attached, (std::set<uint16_t>{3}));
  EXPECT_FALSE(controller_.Find(2)->online);  // slot 0 untouched
  EXPECT_EQ(Read(Pci(kVfs[1]) + "/driver_override"), "");  // already vfio-pci: left alone
}

TEST_F(NvmeSriovTest, ProvisionRefusesAVfWithNamespaceManagementUnlessAllowed) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  platform_->vf_namespace_management = true;
  absl::Status refused = (*backend)->Provision(0, 64 * kMiB).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("Namespace Management/Attachment (OACS bit 3)"),
            std::string::npos)
      << refused;
  // Undone: offline and detached again.
  EXPECT_FALSE(controller_.Find(2)->online);
  EXPECT_TRUE(controller_.namespaces[2].attached.empty());
  config_.set_allow_vf_namespace_management(true);
  backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  platform_->vf_namespace_management = true;
  EXPECT_TRUE((*backend)->Provision(0, 64 * kMiB).ok());
}

TEST_F(NvmeSriovTest, ProvisionRefusesAVfThatSeesOtherNamespaces) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  controller_.namespaces[4];  // an unpooled namespace the VF's controller also has
  controller_.namespaces[4].attached = {2};
  absl::Status refused = (*backend)->Provision(0, 64 * kMiB).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("sees namespaces [2,4], not namespace 2 alone"),
            std::string::npos)
      << refused;
}

TEST_F(NvmeSriovTest, ProvisionRefusesAnythingButOneWholeSlot) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  for (auto [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, kMiB}, {kMiB, 64 * kMiB}, {128 * kMiB, 64 * kMiB}, {0, 128 * kMiB}}) {
    EXPECT_EQ((*backend)->Provision(offset, size).status().code(),
              absl::StatusCode::kInvalidArgument)
        << offset << " " << size;
  }
  EXPECT_FALSE(controller_.Find(2)->online);
}

TEST_F(NvmeSriovTest, ProvisionRefusesAVfThatSharesItsIommuGroup) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  sysfs_->AddIommuGroupMember(5, "0000:00:1f.0");
  const size_t commands = controller_.log.size();
  absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(0, 64 * kMiB);
  ASSERT_EQ(extent.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(extent.status().message().find("0000:00:1f.0 0000:01:00.1"), std::string::npos)
      << extent.status();
  EXPECT_EQ(controller_.log.size(), commands) << "nothing was programmed";
  EXPECT_TRUE(controller_.namespaces[2].attached.empty());
}

TEST_F(NvmeSriovTest, TeardownWaitsWhileTheGroupIsBusyThenScrubsDetachesAndOfflines) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(0, 64 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  busy_groups_.insert("5");  // a tenant still holds the group or the device
  absl::StatusOr<TeardownResult> result = (*backend)->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kStillOpen);
  EXPECT_TRUE(scrubbed_.empty());
  EXPECT_EQ(controller_.namespaces[2].attached, (std::set<uint16_t>{2}));
  busy_groups_.clear();
  result = (*backend)->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_EQ(scrubbed_, std::vector<uint32_t>{2});
  EXPECT_TRUE(controller_.namespaces[2].attached.empty());
  EXPECT_FALSE(controller_.Find(2)->online);
  // The slot comes back on the next grant.
  extent = (*backend)->Provision(0, 64 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_TRUE(controller_.Find(2)->online);
}

TEST_F(NvmeSriovTest, TeardownOfAForeignStateIsRefused) {
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  journal::ExtentState loop;
  loop.mutable_loop_extent()->set_outer_loop_index(3);
  EXPECT_EQ((*backend)->Teardown(loop).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(NvmeSriovTest, RestartReadoptsALiveSlotAndRefusesMismatches) {
  journal::ExtentState state;
  {
    auto backend = Open();
    ASSERT_TRUE(backend.ok()) << backend.status();
    absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(64 * kMiB, 64 * kMiB);
    ASSERT_TRUE(extent.ok()) << extent.status();
    state = extent->state;
  }
  // A restart: VFs stay enabled, the namespace attached to its slot's controller is accepted.
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ(Read(Pci(kPf) + "/sriov_numvfs"), "2");
  EXPECT_TRUE((*backend)->Readopt(state).ok());

  journal::ExtentState wrong = state;
  wrong.mutable_nvme_sriov()->set_controller_id(2);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = state;
  wrong.mutable_nvme_sriov()->set_iommu_group(9);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = state;
  wrong.mutable_nvme_sriov()->set_slot(7);
  EXPECT_EQ((*backend)->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  // The namespace also attached to another controller: not what was granted.
  controller_.namespaces[3].shared = true;
  controller_.namespaces[3].attached.insert(2);
  EXPECT_EQ((*backend)->Readopt(state).code(), absl::StatusCode::kFailedPrecondition);
  controller_.namespaces[3].attached.erase(2);
  controller_.namespaces[3].shared = false;
  // Its controller went offline.
  controller_.Find(3)->online = false;
  EXPECT_EQ((*backend)->Readopt(state).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(NvmeSriovTest, OrphanedSlotIsScrubbedBeforeItIsOffered) {
  journal::ExtentState kept;
  {
    auto backend = Open();
    ASSERT_TRUE(backend.ok()) << backend.status();
    auto orphan = (*backend)->Provision(0, 64 * kMiB);  // never journaled
    ASSERT_TRUE(orphan.ok()) << orphan.status();
    auto live = (*backend)->Provision(64 * kMiB, 64 * kMiB);
    ASSERT_TRUE(live.ok()) << live.status();
    kept = live->state;
  }
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_TRUE((*backend)->RemoveOrphans({kept}).ok());
  EXPECT_EQ(scrubbed_, std::vector<uint32_t>{2});
  EXPECT_TRUE(controller_.namespaces[2].attached.empty());
  EXPECT_FALSE(controller_.Find(2)->online);
  EXPECT_EQ(controller_.namespaces[3].attached, (std::set<uint16_t>{3}));  // the lease's
  EXPECT_TRUE(controller_.Find(3)->online);
}

TEST_F(NvmeSriovTest, HeldOrphanStaysOutUntilItCanBeScrubbed) {
  {
    auto backend = Open();
    ASSERT_TRUE(backend.ok()) << backend.status();
    ASSERT_TRUE((*backend)->Provision(0, 64 * kMiB).ok());
  }
  auto backend = Open();
  ASSERT_TRUE(backend.ok()) << backend.status();
  busy_groups_.insert("5");
  EXPECT_EQ((*backend)->RemoveOrphans({}).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*backend)->Provision(0, 64 * kMiB).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(scrubbed_.empty());
  busy_groups_.clear();
  // Provision scrubs the dirty slot first, then hands it out.
  ASSERT_TRUE((*backend)->Provision(0, 64 * kMiB).ok());
  EXPECT_EQ(scrubbed_, std::vector<uint32_t>{2});
}

TEST_F(NvmeSriovTest, OpenRefusesUnusableNamespaces) {
  controller_.namespaces[2].shared = true;
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kFailedPrecondition);
  controller_.namespaces[2].shared = false;
  controller_.namespaces.erase(3);
  absl::Status missing = Open().status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.message().find("namespace 3 does not exist"), std::string::npos) << missing;
  controller_.namespaces[3];
  controller_.namespaces[3].attached = {0x41};  // the primary's
  absl::Status attached = Open().status();
  EXPECT_NE(attached.message().find("namespace 3 is attached to controllers [65]"),
            std::string::npos)
      << attached;
  controller_.namespaces[3].attached = {2};  // slot 0's controller: someone else's slot
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(NvmeSriovTest, OpenRefusesVfsEnabledWithAnotherCount) {
  Write(Pci(kPf) + "/sriov_numvfs", "1\n");
  controller_.vqrfap = controller_.virfap = 0;
  absl::Status status = Open().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("1 VFs are enabled already, the pool needs 2"),
            std::string::npos)
      << status;
}

TEST_F(NvmeSriovTest, OpenRefusesAPfNotDrivenByNvme) {
  fs::remove_all(Pci(kPf) + "/nvme");
  EXPECT_EQ(Open().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(NvmeSriovTest, HostileSecondaryListIsRefused) {
  controller_.secondary_count_override = 200;
  absl::Status status = Open().status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("at most 127"), std::string::npos) << status;
}

TEST_F(NvmeSriovTest, MissingSecondaryForAVfIsRefused) {
  controller_.secondaries.pop_back();
  absl::Status status = Open().status();
  EXPECT_NE(status.message().find("no secondary controller for VF 2"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace vfbroker
