// BrokerCore's NIC path (AllocateNic, Add/RemoveFlowFilter, recovery of NIC leases) against a
// scripted NIC backend and a real journal, without devices. (The real xdp_nic backend runs in
// tests/integration:nic_integration_test.)
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>

#include "broker/allocator/nic_request.h"
#include "broker/core/broker_core.h"
#include "common/process_identity.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

class FakeNicBackend : public ExtentBackend {
 public:
  std::string backend_name() const override { return "xdp_nic"; }
  uint64_t capacity_bytes() const override { return 3; }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t, uint64_t) override {
    return absl::FailedPreconditionError("NIC pool");
  }
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& r) override {
    absl::MutexLock lock(&mu);
    ++provisions;
    const std::string mac(r.mac.begin(), r.mac.end());
    if (!macs.insert(mac).second) return absl::AlreadyExistsError("mac in use");
    ProvisionedExtent out;
    journal::XdpNicState* s = out.state.mutable_xdp_nic();
    s->set_slot(static_cast<uint32_t>(slot));
    s->set_interface("eth9");
    s->set_device("vfbxfake" + std::to_string(slot));
    s->set_ifindex(100 + static_cast<int>(slot));
    s->set_mac(mac);
    s->set_vlan(r.vlan);
    for (const auto& f : r.filters) *s->add_filters() = f;
    s->set_next_filter_id(r.next_filter_id);
    s->set_frame_size(2048);
    s->set_frame_count(256);
    s->set_ring_size(128);
    s->set_need_wakeup(true);
    out.fds.push_back(TenantFd{v1::FD_ROLE_XSK, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
    out.fds.push_back(TenantFd{v1::FD_ROLE_UMEM, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
    return out;
  }
  absl::Status ChangeFilters(const journal::ExtentState& before,
                             const journal::ExtentState& after) override {
    absl::MutexLock lock(&mu);
    changes.push_back({before.xdp_nic().filters_size(), after.xdp_nic().filters_size()});
    return change_result;
  }
  absl::Status Readopt(const journal::ExtentState& state) override {
    absl::MutexLock lock(&mu);
    readopted.push_back(state.xdp_nic().device());
    macs.insert(state.xdp_nic().mac());
    return absl::OkStatus();
  }
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override {
    absl::MutexLock lock(&mu);
    torn_down.push_back(state.xdp_nic().device());
    macs.erase(state.xdp_nic().mac());
    return TeardownResult::kFreed;
  }
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override {
    absl::MutexLock lock(&mu);
    known_at_start = known.size();
    return absl::OkStatus();
  }

  absl::Mutex mu;
  int provisions = 0;
  std::set<std::string> macs;
  std::vector<std::pair<int, int>> changes;
  absl::Status change_result = absl::OkStatus();
  std::vector<std::string> readopted, torn_down;
  size_t known_at_start = 0;
};

class Link : public SessionLink {
 public:
  absl::Status SendGrant(const v1::SessionGrant& grant, absl::Span<const int>) override {
    absl::MutexLock lock(&mu);
    roles.emplace_back(grant.fd_roles().begin(), grant.fd_roles().end());
    return absl::OkStatus();
  }
  absl::Mutex mu;
  std::vector<std::vector<int>> roles;
};

PeerCredentials Peer(uint32_t uid, pid_t pid, uint64_t start_time = 1) {
  PeerCredentials peer;
  peer.tenant.uid = uid;
  peer.tenant.gid = uid;
  peer.pid = pid;
  peer.start_time = start_time;
  return peer;
}

v1::FlowFilter Udp(const std::string& dst, uint32_t port) {
  v1::FlowFilter f;
  f.set_protocol(v1::FlowFilter::PROTOCOL_UDP);
  f.set_dst_ip(dst);
  f.set_dst_port(port);
  return f;
}

class NicCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::string(std::getenv("TEST_TMPDIR")) + "/nic-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void MakeCore() {
    core_.reset();
    JournalReplay replay;
    auto journal = Journal::Open(dir_ + "/journal", &replay);
    ASSERT_TRUE(journal.ok()) << journal.status();
    auto backend = std::make_unique<FakeNicBackend>();
    backend_ = backend.get();
    std::map<std::string, std::unique_ptr<ExtentBackend>> backends;
    backends.emplace("net", std::move(backend));
    BlockPoolSpec spec;
    spec.name = "net";
    spec.slots = true;
    spec.capacity_bytes = 3;
    spec.alignment_bytes = 1;
    spec.max_extent_bytes = 1;
    spec.access.uids = {1000, 1001};
    QuotaPolicy quotas;
    quotas.default_quota.max_leases = 2;
    quotas.default_quota.max_bytes = 1;  // slots never count as bytes
    core_ = std::make_unique<BrokerCore>(
        CoreOptions{}, std::make_unique<Allocator>(std::vector<BlockPoolSpec>{spec}, quotas),
        std::move(backends), *std::move(journal));
    ASSERT_TRUE(core_->Recover(replay).ok());
    core_->Start();
  }
  std::string Open(const PeerCredentials& peer) {
    auto opened = core_->OpenSession(peer, link_);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? opened->token : "";
  }
  absl::StatusOr<v1::Lease> Nic(const std::string& token, const std::string& mac,
                                uint32_t vlan = 0, std::vector<v1::FlowFilter> filters = {}) {
    v1::AllocateNicRequest r;
    r.set_pool("net");
    r.set_mac(mac);
    r.set_vlan(vlan);
    for (auto& f : filters) *r.add_filters() = f;
    return core_->AllocateNic(token, r);
  }
  uint32_t FreeSlots() {
    auto op = core_->OpenSession(Peer(0, 77), std::make_shared<Link>());
    auto pools = core_->ListPools(op->token);
    core_->CloseSession(op->token);
    return pools.ok() ? (*pools)[0].free_slots() : 999;
  }

  std::string dir_;
  std::unique_ptr<BrokerCore> core_;
  FakeNicBackend* backend_ = nullptr;
  std::shared_ptr<Link> link_ = std::make_shared<Link>();
};

TEST_F(NicCoreTest, GrantCarriesSocketUmemAndLayout) {
  MakeCore();
  const std::string t = Open(Peer(1000, 1));
  auto lease = Nic(t, "", 0, {Udp("10.0.0.1", 53)});
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(lease->has_nic());
  const v1::Nic& nic = lease->nic();
  auto mac = ParseUnicastMac(nic.mac());
  ASSERT_TRUE(mac.ok()) << nic.mac();
  EXPECT_EQ((*mac)[0] & 0x03, 0x02);  // picked: locally administered unicast
  EXPECT_EQ(nic.device(), "vfbxfake0");
  EXPECT_EQ(nic.ifindex(), 100u);
  EXPECT_EQ(nic.frame_size(), 2048u);
  EXPECT_EQ(nic.frame_count(), 256u);
  EXPECT_EQ(nic.rx_ring_size(), 128u);
  EXPECT_EQ(nic.fill_ring_size(), 128u);
  EXPECT_TRUE(nic.need_wakeup());
  ASSERT_EQ(nic.filters_size(), 1);
  EXPECT_EQ(nic.filters(0).id(), "f1");
  EXPECT_EQ(link_->roles.back(), (std::vector<int>{v1::FD_ROLE_XSK, v1::FD_ROLE_UMEM}));
  EXPECT_EQ(FreeSlots(), 2u);
  auto op = core_->OpenSession(Peer(0, 78), std::make_shared<Link>());
  ASSERT_TRUE(op.ok());
  auto stats = core_->GetStats(op->token);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->pools(0).capacity_slots(), 3u);
  EXPECT_EQ(stats->pools(0).used_slots(), 1u);
  EXPECT_EQ(stats->pools(0).capacity_bytes(), 0u);
  core_->CloseSession(op->token);
  v1::AllocateExtentRequest extent;
  extent.set_pool("net");
  extent.set_size_bytes(1);
  EXPECT_EQ(core_->AllocateExtent(t, extent).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(NicCoreTest, BadRequestsChangeNothing) {
  MakeCore();
  const std::string a = Open(Peer(1000, 1));
  const std::string b = Open(Peer(1001, 2));
  const std::string stranger = Open(Peer(2000, 3));
  auto held = Nic(a, "02:00:00:00:00:01", 0, {Udp("10.0.0.1", 53)});
  ASSERT_TRUE(held.ok());
  const int provisions = backend_->provisions;
  using C = absl::StatusCode;
  EXPECT_EQ(Nic(b, "garbage").status().code(), C::kInvalidArgument);
  EXPECT_EQ(Nic(b, "01:00:5e:00:00:01").status().code(), C::kInvalidArgument);
  EXPECT_EQ(Nic(b, "00:00:00:00:00:00").status().code(), C::kInvalidArgument);
  EXPECT_EQ(Nic(b, "", 4095).status().code(), C::kInvalidArgument);
  EXPECT_EQ(Nic(b, "", 4096).status().code(), C::kInvalidArgument);
  EXPECT_EQ(Nic(b, "", 0, {Udp("10.0.0.1", 53), Udp("10.0.0.1", 53)}).status().code(),
            C::kInvalidArgument);
  v1::AllocateNicRequest queues;
  queues.set_pool("net");
  queues.set_queues(2);
  EXPECT_EQ(core_->AllocateNic(b, queues).status().code(), C::kUnimplemented);
  EXPECT_EQ(Nic(stranger, "").status().code(), C::kPermissionDenied);
  EXPECT_EQ(backend_->provisions, provisions) << "a refused request reached the backend";
  // The MAC of a live lease: the backend refuses, the slot is given back.
  EXPECT_EQ(Nic(b, "02:00:00:00:00:01").status().code(), C::kAlreadyExists);
  EXPECT_EQ(FreeSlots(), 2u);
  // Foreign lease ids are missing ones.
  EXPECT_EQ(core_->AddFlowFilter(b, held->id(), Udp("10.0.0.1", 54)).status().code(),
            C::kNotFound);
  EXPECT_EQ(core_->RemoveFlowFilter(b, held->id(), "f1").code(), C::kNotFound);
  EXPECT_EQ(core_->AddFlowFilter(b, "lease-missing", Udp("10.0.0.1", 54)).status().code(),
            C::kNotFound);
  EXPECT_EQ(core_->Release(b, held->id()).code(), C::kNotFound);
  EXPECT_TRUE(backend_->changes.empty());
  // Own lease, bad filters.
  EXPECT_EQ(core_->AddFlowFilter(a, held->id(), Udp("10.0.0.1", 53)).status().code(),
            C::kInvalidArgument);  // overlaps f1
  EXPECT_EQ(core_->AddFlowFilter(a, held->id(), Udp("nope", 53)).status().code(),
            C::kInvalidArgument);
  EXPECT_EQ(core_->RemoveFlowFilter(a, held->id(), "f9").code(), C::kNotFound);
  EXPECT_TRUE(backend_->changes.empty());
  // Quota: two leases per uid, whatever the byte quota says.
  ASSERT_TRUE(Nic(a, "").ok());
  EXPECT_EQ(Nic(a, "").status().code(), C::kResourceExhausted);
}

TEST_F(NicCoreTest, FilterChangesAreJournaledAndSurviveARestart) {
  MakeCore();
  const pid_t self = ::getpid();
  const uint64_t start = *ProcessStartTime(self);
  const std::string t = Open(Peer(1000, self, start));
  auto lease = Nic(t, "02:00:00:00:00:05");
  ASSERT_TRUE(lease.ok());
  auto f = core_->AddFlowFilter(t, lease->id(), Udp("10.0.0.1", 53));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->id(), "f1");
  auto g = core_->AddFlowFilter(t, lease->id(), Udp("10.0.0.1", 54));
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE(core_->RemoveFlowFilter(t, lease->id(), "f1").ok());
  EXPECT_EQ(backend_->changes, (std::vector<std::pair<int, int>>{{0, 1}, {1, 2}, {2, 1}}));
  // A failed steering change changes nothing.
  backend_->change_result = absl::InternalError("map full");
  EXPECT_EQ(core_->AddFlowFilter(t, lease->id(), Udp("10.0.0.1", 55)).status().code(),
            absl::StatusCode::kUnavailable);
  auto listed = core_->ListLeases(t);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ((*listed)[0].nic().filters_size(), 1);
  EXPECT_EQ((*listed)[0].nic().filters(0).id(), "f2");

  // Restart: the owner (this process) is alive, so the lease is re-adopted with its filters.
  core_->Stop();
  MakeCore();
  EXPECT_EQ(backend_->readopted, std::vector<std::string>{"vfbxfake0"});
  EXPECT_EQ(backend_->known_at_start, 1u);
  const std::string t2 = Open(Peer(1000, self, start));
  listed = core_->ListLeases(t2);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  ASSERT_EQ((*listed)[0].nic().filters_size(), 1);
  EXPECT_EQ((*listed)[0].nic().filters(0).id(), "f2");
  EXPECT_EQ((*listed)[0].nic().mac(), "02:00:00:00:00:05");
  // Ids keep counting after the restart.
  auto h = core_->AddFlowFilter(t2, lease->id(), Udp("10.0.0.1", 56));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->id(), "f3");
  // Session end reclaims it: the backend tears it down, the slot is free again.
  core_->CloseSession(t2);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend_->torn_down, std::vector<std::string>{"vfbxfake0"});
  EXPECT_EQ(FreeSlots(), 3u);
}

// A sriov_nic pool: VFIO descriptors, the VF's address, the TX rate passed through, and no
// flow filters.
class FakeSriovBackend : public ExtentBackend {
 public:
  std::string backend_name() const override { return "sriov_nic"; }
  uint64_t capacity_bytes() const override { return 2; }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t, uint64_t) override {
    return absl::UnimplementedError("NIC pool");
  }
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& r) override {
    if (!r.filters.empty()) return absl::UnimplementedError("no ntuple to VFs");
    last_rate = r.max_tx_rate_mbps;
    ProvisionedExtent out;
    journal::SriovNicState* s = out.state.mutable_sriov_nic();
    s->set_slot(static_cast<uint32_t>(slot));
    s->set_pf_interface("eth1");
    s->set_pf_pci_address("0000:02:00.0");
    s->set_vf_pci_address(absl::StrCat("0000:02:10.", slot * 2));
    s->set_mac(std::string(r.mac.begin(), r.mac.end()));
    s->set_vlan(r.vlan);
    s->set_iommu_group(9 + static_cast<uint32_t>(slot));
    s->set_max_tx_rate_mbps(r.max_tx_rate_mbps);
    out.pci_address = s->vf_pci_address();
    for (v1::FdRole role : {v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                            v1::FD_ROLE_VFIO_DEVICE}) {
      out.fds.push_back(TenantFd{role, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
    }
    return out;
  }
  absl::Status Readopt(const journal::ExtentState&) override { return absl::OkStatus(); }
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override {
    torn_down.push_back(state.sriov_nic().slot());
    return TeardownResult::kFreed;
  }
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>&) override {
    return absl::OkStatus();
  }
  uint64_t last_rate = 0;
  std::vector<uint32_t> torn_down;
};

TEST_F(NicCoreTest, SriovNicGrantCarriesVfioDescriptorsAndTheVf) {
  JournalReplay replay;
  auto journal = Journal::Open(dir_ + "/journal", &replay);
  ASSERT_TRUE(journal.ok()) << journal.status();
  auto owned = std::make_unique<FakeSriovBackend>();
  FakeSriovBackend* backend = owned.get();
  std::map<std::string, std::unique_ptr<ExtentBackend>> backends;
  backends.emplace("vf", std::move(owned));
  BlockPoolSpec spec;
  spec.name = "vf";
  spec.slots = true;
  spec.capacity_bytes = 2;
  spec.alignment_bytes = 1;
  spec.max_extent_bytes = 1;
  spec.access.uids = {1000};
  core_ = std::make_unique<BrokerCore>(
      CoreOptions{}, std::make_unique<Allocator>(std::vector<BlockPoolSpec>{spec}, QuotaPolicy{}),
      std::move(backends), *std::move(journal));
  ASSERT_TRUE(core_->Recover(replay).ok());
  core_->Start();
  const std::string t = Open(Peer(1000, 1));
  v1::AllocateNicRequest r;
  r.set_pool("vf");
  r.set_vlan(5);
  r.set_max_tx_rate_mbps(100);
  auto lease = core_->AllocateNic(t, r);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(backend->last_rate, 100u);
  EXPECT_EQ(lease->nic().pci_address(), "0000:02:10.0");
  EXPECT_EQ(lease->nic().interface(), "eth1");
  EXPECT_EQ(lease->nic().vlan(), 5u);
  EXPECT_EQ(lease->nic().max_tx_rate_mbps(), 100u);
  EXPECT_TRUE(ParseUnicastMac(lease->nic().mac()).ok()) << lease->nic().mac();
  EXPECT_EQ(link_->roles.back(),
            (std::vector<int>{v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                              v1::FD_ROLE_VFIO_DEVICE}));
  // No flow filters on a VF, at grant or later; an absurd rate is refused up front.
  EXPECT_EQ(core_->AddFlowFilter(t, lease->id(), Udp("10.0.0.1", 53)).status().code(),
            absl::StatusCode::kUnimplemented);
  v1::AllocateNicRequest filtered;
  filtered.set_pool("vf");
  *filtered.add_filters() = Udp("10.0.0.1", 53);
  EXPECT_EQ(core_->AllocateNic(t, filtered).status().code(), absl::StatusCode::kUnimplemented);
  v1::AllocateNicRequest fast;
  fast.set_pool("vf");
  fast.set_max_tx_rate_mbps(uint64_t{1} << 40);
  EXPECT_EQ(core_->AllocateNic(t, fast).status().code(), absl::StatusCode::kInvalidArgument);
  // The session ends: the VF is reclaimed.
  core_->CloseSession(t);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend->torn_down, (std::vector<uint32_t>{0}));
}

// A pci_nic pool: a whole device with its own MAC; a request naming a MAC, VLAN, rate or filter
// is refused before anything is reserved, and the backend is told the MAC was not requested.
class FakePciNicBackend : public ExtentBackend {
 public:
  std::string backend_name() const override { return "pci_nic"; }
  uint64_t capacity_bytes() const override { return 1; }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t, uint64_t) override {
    return absl::UnimplementedError("NIC pool");
  }
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& r) override {
    ++provisions;
    mac_requested = r.mac_requested;
    ProvisionedExtent out;
    journal::PciNicState* s = out.state.mutable_pci_nic();
    s->set_slot(static_cast<uint32_t>(slot));
    s->set_pci_address("0000:05:00.0");
    s->set_mac(std::string("\x52\x54\x00\x56\x00\x02", 6));
    s->set_iommu_group(12);
    out.pci_address = s->pci_address();
    for (v1::FdRole role : {v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                            v1::FD_ROLE_VFIO_DEVICE}) {
      out.fds.push_back(TenantFd{role, UniqueFd(::eventfd(0, EFD_CLOEXEC))});
    }
    return out;
  }
  absl::Status Readopt(const journal::ExtentState&) override { return absl::OkStatus(); }
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override {
    torn_down.push_back(state.pci_nic().pci_address());
    return TeardownResult::kFreed;
  }
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>&) override {
    return absl::OkStatus();
  }
  int provisions = 0;
  bool mac_requested = true;
  std::vector<std::string> torn_down;
};

TEST_F(NicCoreTest, PciNicGrantCarriesTheDevicesOwnMacAndRefusesWhatAWholeDeviceCannotCarry) {
  JournalReplay replay;
  auto journal = Journal::Open(dir_ + "/journal", &replay);
  ASSERT_TRUE(journal.ok()) << journal.status();
  auto owned = std::make_unique<FakePciNicBackend>();
  FakePciNicBackend* backend = owned.get();
  std::map<std::string, std::unique_ptr<ExtentBackend>> backends;
  backends.emplace("vnet", std::move(owned));
  BlockPoolSpec spec;
  spec.name = "vnet";
  spec.slots = true;
  spec.capacity_bytes = 1;
  spec.alignment_bytes = 1;
  spec.max_extent_bytes = 1;
  spec.access.uids = {1000};
  core_ = std::make_unique<BrokerCore>(
      CoreOptions{}, std::make_unique<Allocator>(std::vector<BlockPoolSpec>{spec}, QuotaPolicy{}),
      std::move(backends), *std::move(journal));
  ASSERT_TRUE(core_->Recover(replay).ok());
  core_->Start();
  const std::string t = Open(Peer(1000, 1));
  // Refused before a slot is reserved: the backend never hears of them.
  v1::AllocateNicRequest mac;
  mac.set_pool("vnet");
  mac.set_mac("02:00:00:00:00:01");
  auto refused = core_->AllocateNic(t, mac);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("whole-device"), std::string::npos);
  v1::AllocateNicRequest vlan;
  vlan.set_pool("vnet");
  vlan.set_vlan(7);
  EXPECT_EQ(core_->AllocateNic(t, vlan).status().code(), absl::StatusCode::kInvalidArgument);
  v1::AllocateNicRequest rate;
  rate.set_pool("vnet");
  rate.set_max_tx_rate_mbps(10);
  EXPECT_EQ(core_->AllocateNic(t, rate).status().code(), absl::StatusCode::kInvalidArgument);
  v1::AllocateNicRequest filtered;
  filtered.set_pool("vnet");
  *filtered.add_filters() = Udp("10.0.0.1", 53);
  EXPECT_EQ(core_->AllocateNic(t, filtered).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(backend->provisions, 0);

  v1::AllocateNicRequest plain;
  plain.set_pool("vnet");
  auto lease = core_->AllocateNic(t, plain);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_FALSE(backend->mac_requested);
  EXPECT_EQ(lease->nic().pci_address(), "0000:05:00.0");
  EXPECT_EQ(lease->nic().mac(), "52:54:00:56:00:02");
  EXPECT_EQ(lease->nic().interface(), "");
  EXPECT_EQ(lease->nic().vlan(), 0u);
  EXPECT_EQ(link_->roles.back(),
            (std::vector<int>{v1::FD_ROLE_VFIO_CONTAINER, v1::FD_ROLE_VFIO_GROUP,
                              v1::FD_ROLE_VFIO_DEVICE}));
  EXPECT_EQ(core_->AddFlowFilter(t, lease->id(), Udp("10.0.0.1", 53)).status().code(),
            absl::StatusCode::kUnimplemented);
  core_->CloseSession(t);
  ASSERT_TRUE(core_->WaitForIdleReaper(absl::Seconds(5)));
  EXPECT_EQ(backend->torn_down, (std::vector<std::string>{"0000:05:00.0"}));
}

}  // namespace
}  // namespace vfbroker
