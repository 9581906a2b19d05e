#include "broker/backends/sriov_nic.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "broker/backends/pci_sysfs.h"
#include "common/logging.h"
#include "common/unique_fd.h"

namespace vfbroker {
namespace {

using pci_sysfs::ErrnoStatus;
using pci_sysfs::Exists;
using pci_sysfs::IsPciAddress;
using pci_sysfs::LinkBase;
using pci_sysfs::ListDir;

bool IsInterfaceName(absl::string_view name) {
  if (name.empty() || name.size() > 15 || name == "." || name == "..") return false;
  for (char c : name) {
    if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::string MacText(const Mac& mac) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                         mac[5]);
}

const char* KindName(VfSetting::Kind kind) {
  switch (kind) {
    case VfSetting::kMac: return "MAC (IFLA_VF_MAC)";
    case VfSetting::kVlan: return "VLAN (IFLA_VF_VLAN)";
    case VfSetting::kSpoofchk: return "spoof checking (IFLA_VF_SPOOFCHK)";
    case VfSetting::kTrust: return "trust (IFLA_VF_TRUST)";
    case VfSetting::kRate: return "TX rate (IFLA_VF_RATE)";
    case VfSetting::kLinkState: return "link state (IFLA_VF_LINK_STATE)";
  }
  return "?";
}

// Anything of a tenant's (or of a hand-made configuration) left on the VF.
bool Configured(const VfInfo& info) {
  return info.mac != Mac{} || info.vlan != 0 || info.max_tx_rate != 0 || info.spoofchk == 0 ||
         info.trust == 1;
}

bool ParseMacText(absl::string_view text, Mac* mac) {
  unsigned b[6];
  if (text.size() != 17 || std::sscanf(std::string(text).c_str(), "%x:%x:%x:%x:%x:%x", &b[0],
                                       &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) (*mac)[i] = static_cast<uint8_t>(b[i]);
  return true;
}

}  // namespace

SriovNicBackend::SriovNicBackend(std::string pool_name, uint32_t max_vfs,
                                 std::unique_ptr<SriovNicPlatform> platform,
                                 SriovNicOptions options)
    : pool_name_(std::move(pool_name)),
      max_vfs_(max_vfs),
      platform_(std::move(platform)),
      options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<SriovNicBackend>> SriovNicBackend::Open(
    const std::string& pool_name, const config::SriovNicPool& config,
    std::unique_ptr<SriovNicPlatform> platform, SriovNicOptions options) {
  if (config.pf_interface().empty() == config.pf_pci_address().empty()) {
    return absl::InvalidArgumentError("set exactly one of pf_interface and pf_pci_address");
  }
  if (!config.pf_interface().empty() && !IsInterfaceName(config.pf_interface())) {
    return absl::InvalidArgumentError(
        absl::StrCat("pf_interface: not an interface name: ", config.pf_interface()));
  }
  if (!config.pf_pci_address().empty() && !IsPciAddress(config.pf_pci_address())) {
    return absl::InvalidArgumentError(
        absl::StrCat("pf_pci_address: not a PCI address: ", config.pf_pci_address()));
  }
  if (config.max_vfs() == 0) return absl::InvalidArgumentError("max_vfs: must be at least 1");
  std::unique_ptr<SriovNicBackend> backend(new SriovNicBackend(
      pool_name, config.max_vfs(), std::move(platform), std::move(options)));
  if (absl::Status s = backend->Init(config); !s.ok()) {
    const std::string& pf =
        config.pf_interface().empty() ? config.pf_pci_address() : config.pf_interface();
    return absl::Status(s.code(), absl::StrCat("PF ", pf, ": ", s.message()));
  }
  return backend;
}

std::string SriovNicBackend::PciPath(const std::string& bdf, const std::string& leaf) const {
  return pci_sysfs::DevicePath(options_.sysfs_root, bdf, leaf);
}

absl::Status SriovNicBackend::Init(const config::SriovNicPool& config) {
  // netdev <-> PCI: /sys/class/net/<if>/device -> the PCI device; /sys/bus/pci/devices/<pf>/net/.
  if (!config.pf_interface().empty()) {
    pf_interface_ = config.pf_interface();
    const std::string link = absl::StrCat(options_.sysfs_root, "/class/net/", pf_interface_);
    if (!Exists(link)) return absl::FailedPreconditionError("no such network interface");
    absl::StatusOr<std::string> bdf = LinkBase(absl::StrCat(link, "/device"));
    if (!bdf.ok() || !IsPciAddress(*bdf)) {
      return absl::FailedPreconditionError("not a PCI network device (no device link in sysfs)");
    }
    pf_ = *bdf;
  } else {
    pf_ = config.pf_pci_address();
    if (!Exists(PciPath(pf_))) return absl::NotFoundError("no such PCI device");
    absl::StatusOr<std::vector<std::string>> nets = ListDir(PciPath(pf_, "net"));
    if (!nets.ok() || nets->size() != 1 || !IsInterfaceName(nets->front())) {
      return absl::FailedPreconditionError(
          "no (single) network interface: is the PF bound to its kernel driver?");
    }
    pf_interface_ = nets->front();
  }
  absl::StatusOr<std::string> ifindex =
      pci_sysfs::Read(absl::StrCat(options_.sysfs_root, "/class/net/", pf_interface_, "/ifindex"));
  if (!ifindex.ok() || !absl::SimpleAtoi(*ifindex, &pf_ifindex_) || pf_ifindex_ <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the ifindex of ", pf_interface_));
  }
  // SR-IOV: totalvfs, autoprobe off (VFs must not be bound to a host driver), numvfs.
  absl::StatusOr<std::string> total = pci_sysfs::Read(PciPath(pf_, "sriov_totalvfs"));
  uint32_t total_vfs = 0;
  if (!total.ok() || !absl::SimpleAtoi(*total, &total_vfs)) {
    return absl::FailedPreconditionError("not SR-IOV capable (no sriov_totalvfs)");
  }
  if (max_vfs_ > total_vfs) {
    return absl::FailedPreconditionError(
        absl::StrCat("max_vfs ", max_vfs_, " exceeds sriov_totalvfs ", total_vfs));
  }
  if (absl::Status s = pci_sysfs::Write(PciPath(pf_, "sriov_drivers_autoprobe"), "0"); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> num = pci_sysfs::Read(PciPath(pf_, "sriov_numvfs"));
  uint32_t num_vfs = 0;
  if (!num.ok() || !absl::SimpleAtoi(*num, &num_vfs)) {
    return absl::FailedPreconditionError("cannot read sriov_numvfs");
  }
  if (num_vfs != 0 && num_vfs != max_vfs_) {
    return absl::FailedPreconditionError(absl::StrCat(
        num_vfs, " VFs are enabled, the pool wants ", max_vfs_,
        "; write 0 to sriov_numvfs first (the broker does not take VFs from under someone)"));
  }
  if (num_vfs == 0) {
    if (absl::Status s = pci_sysfs::Write(PciPath(pf_, "sriov_numvfs"), absl::StrCat(max_vfs_));
        !s.ok()) {
      return s;
    }
  }
  const absl::Time deadline = absl::Now() + options_.vfs_timeout;
  for (uint32_t i = 0; i < max_vfs_; ++i) {
    while (true) {
      absl::StatusOr<std::string> vf = LinkBase(PciPath(pf_, absl::StrCat("virtfn", i)));
      if (vf.ok() && IsPciAddress(*vf)) {
        vfs_.push_back(*vf);
        break;
      }
      if (absl::Now() > deadline) {
        return absl::FailedPreconditionError(absl::StrCat("VF ", i, " did not appear (virtfn", i,
                                                          ")"));
      }
      absl::SleepFor(options_.poll_interval);
    }
  }
  if (absl::Status s = platform_->SetLinkUp(pf_ifindex_); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("setting ", pf_interface_, " up: ", s.message()));
  }
  absl::StatusOr<std::vector<VfInfo>> infos = platform_->GetVfs(pf_ifindex_);
  if (!infos.ok()) return infos.status();
  if (infos->size() < max_vfs_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the PF reports ", infos->size(), " VFs over rtnetlink, expected ", max_vfs_));
  }
  // Flow filters need the PF's ntuple table; without one they are refused (UNIMPLEMENTED).
  absl::StatusOr<ethtool::NtupleTable> table = platform_->ProbeNtuple(pf_interface_);
  ntuple_ = table.status();
  spdlog::info("pool={} backend=sriov_nic PF {} ({}, ifindex {}) VFs {}; flow filters: {}",
               pool_name_, pf_, pf_interface_, pf_ifindex_, absl::StrJoin(vfs_, " "),
               table.ok() ? absl::StrCat("ntuple table of ", table->size, " rules")
                          : absl::StrCat("none (", table.status().message(), ")"));
  return absl::OkStatus();
}

absl::Status SriovNicBackend::RemoveFlowRules(uint32_t slot) {
  if (!ntuple_.ok()) return absl::OkStatus();  // no table: nothing can steer to the VF
  absl::StatusOr<std::vector<ethtool::InstalledRule>> rules =
      platform_->ListNtupleRules(pf_interface_);
  if (!rules.ok()) return rules.status();
  for (const ethtool::InstalledRule& rule : *rules) {
    if (rule.vf != static_cast<int>(slot)) continue;
    if (absl::Status s = platform_->DeleteNtupleRule(pf_interface_, rule.location); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SriovNicBackend::SoleGroup(const std::string& vf) const {
  return pci_sysfs::SoleIommuGroup(options_.sysfs_root, vf);
}

absl::Status SriovNicBackend::BindVfio(const std::string& vf) {
  return pci_sysfs::BindToVfioPci(options_.sysfs_root, vf, options_.bind_timeout,
                                   options_.poll_interval);
}

absl::StatusOr<VfInfo> SriovNicBackend::Info(uint32_t slot) {
  absl::StatusOr<std::vector<VfInfo>> infos = platform_->GetVfs(pf_ifindex_);
  if (!infos.ok()) return infos.status();
  for (const VfInfo& info : *infos) {
    if (info.vf == slot) return info;
  }
  return absl::FailedPreconditionError(
      absl::StrCat(pf_interface_, " does not report VF ", slot, " over rtnetlink"));
}

absl::Status SriovNicBackend::Set(uint32_t slot, VfSetting::Kind kind, uint32_t value,
                                  const Mac& mac) {
  VfSetting setting{kind, mac, value};
  absl::Status s = platform_->SetVf(pf_ifindex_, slot, setting);
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("setting VF ", slot, "'s ", KindName(kind), " on ",
                                             pf_interface_, ": ", s.message()));
}

absl::StatusOr<ProvisionedExtent> SriovNicBackend::Provision(uint64_t, uint64_t) {
  return absl::UnimplementedError("sriov_nic pools hand out NICs (AllocateNic), not extents");
}

absl::StatusOr<ProvisionedExtent> SriovNicBackend::ProvisionNic(uint64_t slot_index,
                                                                const NicRequest& request) {
  if (slot_index >= vfs_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no VF slot ", slot_index));
  }
  if (!request.filters.empty() && !ntuple_.ok()) {
    return absl::UnimplementedError(absl::StrCat(
        "sriov_nic flow filters are ethtool ntuple rules on the PF steering the lease's flows to "
        "its VF, and PF ", pf_interface_, " has no ntuple table (", ntuple_.message(),
        "); without filters the VF receives every frame to its MAC and VLAN"));
  }
  if (request.max_tx_rate_mbps > 0xffffffffu) {
    return absl::InvalidArgumentError("max_tx_rate_mbps: too large");
  }
  const uint32_t slot = static_cast<uint32_t>(slot_index);
  const std::string& vf = vfs_[slot];
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> group = SoleGroup(vf);
  if (!group.ok()) return group.status();

  // The MAC must be no other VF's (the PF's switch would deliver to one of them only).
  absl::StatusOr<std::vector<VfInfo>> infos = platform_->GetVfs(pf_ifindex_);
  if (!infos.ok()) return infos.status();
  bool dirty = false;
  for (const VfInfo& info : *infos) {
    if (info.vf == slot) {
      dirty = Configured(info);
      continue;
    }
    if (info.mac == request.mac) {
      return absl::AlreadyExistsError(
          absl::StrCat("MAC ", MacText(request.mac), " is in use by VF ", info.vf, " of ",
                       pf_interface_));
    }
  }
  // Nor the PF's own, nor that of a device stacked on it (macvlan, VLAN): the PF's switch
  // would hand the VF the host's frames.
  const std::string net = absl::StrCat(options_.sysfs_root, "/class/net/", pf_interface_);
  std::vector<std::string> holders = {net};
  if (absl::StatusOr<std::vector<std::string>> entries = ListDir(net); entries.ok()) {
    for (const std::string& entry : *entries) {
      if (entry.rfind("upper_", 0) == 0) holders.push_back(absl::StrCat(net, "/", entry));
    }
  }
  for (const std::string& holder : holders) {
    absl::StatusOr<std::string> text = pci_sysfs::Read(absl::StrCat(holder, "/address"));
    Mac taken{};
    if (text.ok() && ParseMacText(*text, &taken) && taken == request.mac) {
      return absl::AlreadyExistsError(absl::StrCat(
          "MAC ", MacText(request.mac), " is in use by ",
          holder == net ? pf_interface_ : holder.substr(net.size() + 7), " on the PF"));
    }
  }
  if (dirty || live_.count(slot) != 0) {
    // A crash's leftovers (or an orphan not yet restored): restore before anyone gets it.
    absl::StatusOr<TeardownResult> restored = Restore(slot, "found configured at provision");
    if (!restored.ok()) return restored.status();
    if (*restored != TeardownResult::kFreed) {
      return absl::UnavailableError(
          absl::StrCat("VF ", slot, " (", vf, ") is still held open by someone"));
    }
  }
  if (absl::Status s = BindVfio(vf); !s.ok()) return s;
  absl::StatusOr<std::optional<VfioHandles>> vfio =
      platform_->OpenVfio(absl::StrCat(options_.dev_root, "/vfio"), *group, vf);
  if (!vfio.ok()) return vfio.status();
  if (!vfio->has_value()) {
    return absl::UnavailableError(
        absl::StrCat("VFIO group ", *group, " of VF ", vf, " is held open by someone"));
  }
  auto undo = [&](absl::Status why) {
    (void)RemoveFlowRules(slot);
    (void)Set(slot, VfSetting::kLinkState, IFLA_VF_LINK_STATE_DISABLE);
    (void)Set(slot, VfSetting::kRate, 0);
    (void)Set(slot, VfSetting::kVlan, 0);
    (void)Set(slot, VfSetting::kMac, 0, Mac{});
    return why;
  };
  if (absl::Status s = platform_->ResetDevice(**vfio); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("resetting VF ", vf, ": ", s.message()));
  }
  if (absl::Status s = Set(slot, VfSetting::kMac, 0, request.mac); !s.ok()) return undo(s);
  if (absl::Status s = Set(slot, VfSetting::kVlan, request.vlan); !s.ok()) return undo(s);
  if (absl::Status s = Set(slot, VfSetting::kSpoofchk, 1); !s.ok()) return undo(s);
  if (absl::Status s = Set(slot, VfSetting::kTrust, 0); !s.ok()) return undo(s);
  if (request.max_tx_rate_mbps != 0) {
    if (absl::Status s =
            Set(slot, VfSetting::kRate, static_cast<uint32_t>(request.max_tx_rate_mbps));
        !s.ok()) {
      return undo(s);  // UNIMPLEMENTED where the PF driver cannot, INVALID_ARGUMENT if too fast
    }
  }
  if (absl::Status s = Set(slot, VfSetting::kLinkState, IFLA_VF_LINK_STATE_AUTO);
      !s.ok() && !absl::IsUnimplemented(s)) {
    return undo(s);  // igb has no ndo_set_vf_link_state: the VF follows the PF's link
  }
  for (const journal::NicFilter& filter : request.filters) {
    ethtool::NtupleRule rule;
    rule.vf = slot;
    rule.dst_mac = request.mac;
    rule.vlan = request.vlan;
    rule.protocol = filter.protocol();
    rule.src_ip = filter.src_ip();
    rule.dst_ip = filter.dst_ip();
    rule.src_port = static_cast<uint16_t>(filter.src_port());
    rule.dst_port = static_cast<uint16_t>(filter.dst_port());
    absl::StatusOr<uint32_t> location = platform_->InsertNtupleRule(pf_interface_, rule);
    if (!location.ok()) {
      return undo(absl::Status(location.status().code(),
                               absl::StrCat("flow filter ", filter.id(), " on VF ", slot, ": ",
                                            location.status().message())));
    }
    spdlog::debug("pool={} VF {}: filter {} is ntuple rule {} on {}", pool_name_, slot,
                  filter.id(), *location, pf_interface_);
  }
  absl::StatusOr<VfInfo> now = Info(slot);
  if (!now.ok()) return undo(now.status());
  if (now->mac != request.mac || now->vlan != request.vlan ||
      (now->spoofchk >= 0 && now->spoofchk != 1) || (now->trust >= 0 && now->trust != 0)) {
    return undo(absl::FailedPreconditionError(absl::StrCat(
        "VF ", slot, " reads back MAC ", MacText(now->mac), " VLAN ", now->vlan, " spoofchk ",
        now->spoofchk, " trust ", now->trust, " after setting MAC ", MacText(request.mac),
        " VLAN ", request.vlan, " spoofchk 1 trust 0")));
  }

  ProvisionedExtent extent;
  journal::SriovNicState* state = extent.state.mutable_sriov_nic();
  state->set_slot(slot);
  state->set_pf_interface(pf_interface_);
  state->set_pf_pci_address(pf_);
  state->set_vf_pci_address(vf);
  state->set_mac(std::string(request.mac.begin(), request.mac.end()));
  state->set_vlan(request.vlan);
  uint32_t group_number = 0;
  (void)absl::SimpleAtoi(*group, &group_number);
  state->set_iommu_group(group_number);
  state->set_max_tx_rate_mbps(request.max_tx_rate_mbps);
  for (const journal::NicFilter& filter : request.filters) *state->add_filters() = filter;
  HandOverVfio(std::move(**vfio), &extent.fds);
  extent.pci_address = vf;
  live_.insert(slot);
  spdlog::info(
      "pool={} VF {} ({}, group {}): MAC {} VLAN {} spoofchk on trust off rate {} filters {}",
      pool_name_, slot, vf, *group, MacText(request.mac), request.vlan,
      request.max_tx_rate_mbps, request.filters.size());
  return extent;
}

absl::StatusOr<uint32_t> SriovNicBackend::SlotOf(const journal::ExtentState& extent) const {
  if (!extent.has_sriov_nic()) return absl::InvalidArgumentError("not a sriov_nic lease");
  const journal::SriovNicState& state = extent.sriov_nic();
  if (state.slot() >= vfs_.size() || state.vf_pci_address() != vfs_[state.slot()] ||
      state.pf_pci_address() != pf_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journaled VF ", state.slot(), " (", state.vf_pci_address(), " of ",
        state.pf_pci_address(), ") is not this pool's any more (configuration or PF changed)"));
  }
  return state.slot();
}

absl::Status SriovNicBackend::Readopt(const journal::ExtentState& extent) {
  absl::StatusOr<uint32_t> slot = SlotOf(extent);
  if (!slot.ok()) return slot.status();
  const journal::SriovNicState& state = extent.sriov_nic();
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> group = SoleGroup(vfs_[*slot]);
  if (!group.ok()) return group.status();
  if (*group != absl::StrCat(state.iommu_group())) {
    return absl::FailedPreconditionError(absl::StrCat("VF ", vfs_[*slot], " is in IOMMU group ",
                                                      *group, ", the journal says ",
                                                      state.iommu_group()));
  }
  absl::StatusOr<std::string> driver = LinkBase(PciPath(vfs_[*slot], "driver"));
  if (!driver.ok() || *driver != "vfio-pci") {
    return absl::FailedPreconditionError(
        absl::StrCat("VF ", vfs_[*slot], " is not bound to vfio-pci"));
  }
  absl::StatusOr<VfInfo> now = Info(*slot);
  if (!now.ok()) return now.status();
  if (std::string(now->mac.begin(), now->mac.end()) != state.mac() || now->vlan != state.vlan()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VF ", *slot, " has MAC ", MacText(now->mac), " VLAN ", now->vlan,
        ", not what the journal says"));
  }
  live_.insert(*slot);
  return absl::OkStatus();
}

absl::StatusOr<TeardownResult> SriovNicBackend::Teardown(const journal::ExtentState& extent) {
  absl::StatusOr<uint32_t> slot = SlotOf(extent);
  if (!slot.ok()) return slot.status();
  absl::MutexLock lock(&mu_);
  return Restore(*slot, "teardown");
}

absl::StatusOr<TeardownResult> SriovNicBackend::Restore(uint32_t slot, const std::string& why) {
  const std::string& vf = vfs_[slot];
  absl::StatusOr<std::string> group = SoleGroup(vf);
  if (!group.ok()) return group.status();
  if (absl::Status s = BindVfio(vf); !s.ok()) return s;
  // 1. Cut off: the group opens only when no tenant descriptor to it or its device is left;
  //    holding it keeps it so until the VF is restored.
  absl::StatusOr<std::optional<VfioHandles>> vfio =
      platform_->OpenVfio(absl::StrCat(options_.dev_root, "/vfio"), *group, vf);
  if (!vfio.ok()) return vfio.status();
  if (!vfio->has_value()) return TeardownResult::kStillOpen;
  // 2. Link down where the driver can, then a function-level reset: the VF forgets its queues,
  //    filters and any state its tenant left in it.
  absl::Status link = Set(slot, VfSetting::kLinkState, IFLA_VF_LINK_STATE_DISABLE);
  if (!link.ok() && !absl::IsUnimplemented(link)) return link;
  if (absl::Status s = platform_->ResetDevice(**vfio); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("resetting VF ", vf, ": ", s.message()));
  }
  // 3. Nothing of the tenant's survives on the PF's side either: its steering rules, MAC,
  //    VLAN, rate.
  if (absl::Status s = RemoveFlowRules(slot); !s.ok()) return s;
  if (absl::Status s = Set(slot, VfSetting::kMac, 0, Mac{}); !s.ok()) return s;
  if (absl::Status s = Set(slot, VfSetting::kVlan, 0); !s.ok()) return s;
  if (absl::Status s = Set(slot, VfSetting::kRate, 0); !s.ok() && !absl::IsUnimplemented(s)) {
    return s;
  }
  if (absl::Status s = Set(slot, VfSetting::kSpoofchk, 1); !s.ok()) return s;
  if (absl::Status s = Set(slot, VfSetting::kTrust, 0); !s.ok()) return s;
  absl::StatusOr<VfInfo> now = Info(slot);
  if (!now.ok()) return now.status();
  if (now->mac != Mac{} || now->vlan != 0) {
    return absl::FailedPreconditionError(absl::StrCat("VF ", slot, " still has MAC ",
                                                      MacText(now->mac), " VLAN ", now->vlan,
                                                      " after restoring"));
  }
  live_.erase(slot);
  spdlog::info("pool={} VF {} ({}): reset, MAC and VLAN restored, {} ({})", pool_name_, slot,
               vf, link.ok() ? "link disabled" : "link state not settable on this PF", why);
  return TeardownResult::kFreed;
}

absl::Status SriovNicBackend::RemoveOrphans(const std::vector<journal::ExtentState>& known) {
  std::vector<bool> journaled(vfs_.size(), false);
  for (const journal::ExtentState& state : known) {
    if (state.has_sriov_nic() && state.sriov_nic().slot() < vfs_.size() &&
        state.sriov_nic().pf_pci_address() == pf_) {
      journaled[state.sriov_nic().slot()] = true;
    }
  }
  absl::StatusOr<std::vector<VfInfo>> infos = platform_->GetVfs(pf_ifindex_);
  if (!infos.ok()) return infos.status();
  absl::MutexLock lock(&mu_);
  std::vector<std::string> failed;
  for (const VfInfo& info : *infos) {
    if (info.vf >= vfs_.size() || journaled[info.vf]) continue;
    if (!Configured(info)) continue;
    absl::StatusOr<TeardownResult> result = Restore(info.vf, "orphan: no journal record names it");
    if (!result.ok() || *result != TeardownResult::kFreed) {
      live_.insert(info.vf);  // ProvisionNic restores it first, or refuses
      failed.push_back(absl::StrCat("VF ", info.vf, ": ",
                                    result.ok() ? "still held open"
                                                : std::string(result.status().message())));
    }
  }
  // Steering rules to a VF no record names (a crash between inserting and journaling them).
  for (uint32_t slot = 0; slot < vfs_.size(); ++slot) {
    if (journaled[slot]) continue;
    if (absl::Status s = RemoveFlowRules(slot); !s.ok()) {
      failed.push_back(absl::StrCat("VF ", slot, "'s ntuple rules: ", s.message()));
    }
  }
  if (!failed.empty()) {
    return absl::UnavailableError(
        absl::StrCat("orphaned VFs not restored yet: ", absl::StrJoin(failed, "; ")));
  }
  return absl::OkStatus();
}

}  // namespace vfbroker
