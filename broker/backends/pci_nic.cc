#include "broker/backends/pci_nic.h"

#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "broker/backends/pci_sysfs.h"
#include "common/logging.h"

namespace vfbroker {
namespace {

using pci_sysfs::IsPciAddress;
using pci_sysfs::LinkBase;
using pci_sysfs::ListDir;

constexpr size_t kMaxFunctions = 256;

std::string MacText(const MacAddress& mac) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                         mac[5]);
}

bool ParseMacText(absl::string_view text, MacAddress* mac) {
  unsigned b[6];
  char extra = 0;
  if (text.size() != 17 || std::sscanf(std::string(text).c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c",
                                       &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &extra) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) (*mac)[i] = static_cast<uint8_t>(b[i]);
  return true;
}

// A MAC a device may report as its own: unicast and not zero (a device answering garbage is
// not believed).
bool IsUsableMac(const MacAddress& mac) { return (mac[0] & 1) == 0 && mac != MacAddress{}; }

}  // namespace

PciNicBackend::PciNicBackend(std::string pool_name, std::vector<std::string> functions,
                             std::unique_ptr<PciNicPlatform> platform, PciNicOptions options)
    : pool_name_(std::move(pool_name)),
      functions_(std::move(functions)),
      platform_(std::move(platform)),
      options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<PciNicBackend>> PciNicBackend::Open(
    const std::string& pool_name, const config::PciNicPool& config,
    std::unique_ptr<PciNicPlatform> platform, PciNicOptions options) {
  if (config.pci_addresses().empty() ||
      static_cast<size_t>(config.pci_addresses_size()) > kMaxFunctions) {
    return absl::InvalidArgumentError(
        absl::StrCat("pci_addresses: 1..", kMaxFunctions, " functions, got ",
                     config.pci_addresses_size()));
  }
  std::vector<std::string> functions;
  std::set<std::string> seen;
  for (const std::string& bdf : config.pci_addresses()) {
    if (!IsPciAddress(bdf)) {
      return absl::InvalidArgumentError(absl::StrCat("pci_addresses: not a PCI address: ", bdf));
    }
    if (!seen.insert(bdf).second) {
      return absl::InvalidArgumentError(absl::StrCat("pci_addresses: ", bdf, " listed twice"));
    }
    const std::string path = pci_sysfs::DevicePath(options.sysfs_root, bdf);
    if (!pci_sysfs::Exists(path)) {
      return absl::NotFoundError(absl::StrCat("PCI function ", bdf, ": no such device"));
    }
    // PCI class 02h: network controller (PCI Code and ID Assignment spec, 1.3).
    absl::StatusOr<std::string> cls = pci_sysfs::Read(absl::StrCat(path, "/class"));
    if (!cls.ok() || !absl::StartsWith(*cls, "0x02")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PCI function ", bdf, " is not a network controller (class ",
          cls.ok() ? *cls : std::string("unreadable"), ")"));
    }
    // A PF with VFs enabled is sriov_nic's business: its VFs' traffic goes through it.
    if (absl::StatusOr<std::string> vfs = pci_sysfs::Read(absl::StrCat(path, "/sriov_numvfs"));
        vfs.ok() && *vfs != "0") {
      return absl::FailedPreconditionError(absl::StrCat(
          "PCI function ", bdf, " has ", *vfs, " SR-IOV VFs enabled; use a sriov_nic pool"));
    }
    functions.push_back(bdf);
  }
  std::unique_ptr<PciNicBackend> backend(
      new PciNicBackend(pool_name, std::move(functions), std::move(platform), std::move(options)));
  spdlog::info("pool={} backend=pci_nic functions {}", pool_name,
               absl::StrJoin(backend->functions_, " "));
  return backend;
}

std::string PciNicBackend::PciPath(const std::string& bdf, const std::string& leaf) const {
  return pci_sysfs::DevicePath(options_.sysfs_root, bdf, leaf);
}

std::optional<MacAddress> PciNicBackend::NetdevMac(const std::string& bdf) const {
  // A PCI NIC's netdev sits under the PCI device (net/<if>); virtio's under its virtio device
  // (virtio<N>/net/<if>).
  std::string parent = PciPath(bdf);
  if (!pci_sysfs::Exists(PciPath(bdf, "net"))) {
    absl::StatusOr<std::vector<std::string>> children = ListDir(parent);
    if (!children.ok()) return std::nullopt;
    for (const std::string& child : *children) {
      if (absl::StartsWith(child, "virtio") && child.find('/') == std::string::npos &&
          pci_sysfs::Exists(absl::StrCat(parent, "/", child, "/net"))) {
        parent = absl::StrCat(parent, "/", child);
        break;
      }
    }
  }
  absl::StatusOr<std::vector<std::string>> nets = ListDir(absl::StrCat(parent, "/net"));
  if (!nets.ok() || nets->size() != 1) return std::nullopt;
  const std::string& name = nets->front();
  if (name.empty() || name.size() > 15 || name.find('/') != std::string::npos || name == "." ||
      name == "..") {
    return std::nullopt;
  }
  const std::string net = absl::StrCat(parent, "/net/", name);
  // addr_assign_type 0 (NET_ADDR_PERM): the address is the one the device came with, not one
  // somebody set since.
  absl::StatusOr<std::string> type = pci_sysfs::Read(absl::StrCat(net, "/addr_assign_type"));
  absl::StatusOr<std::string> address = pci_sysfs::Read(absl::StrCat(net, "/address"));
  MacAddress mac{};
  if (!type.ok() || *type != "0" || !address.ok() || !ParseMacText(*address, &mac) ||
      !IsUsableMac(mac)) {
    return std::nullopt;
  }
  return mac;
}

absl::StatusOr<ProvisionedExtent> PciNicBackend::Provision(uint64_t, uint64_t) {
  return absl::UnimplementedError("pci_nic pools hand out NICs (AllocateNic), not extents");
}

absl::StatusOr<MacAddress> PciNicBackend::MacAfterReset(uint32_t slot,
                                                        const VfioHandles& handles) {
  absl::StatusOr<MacAddress> mac = platform_->ReadMac(handles);
  if (mac.ok()) {
    if (!IsUsableMac(*mac)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PCI function ", functions_[slot], " reports MAC ", MacText(*mac),
          " (not a unicast address) after a reset"));
    }
    return *mac;
  }
  if (!absl::IsUnimplemented(mac.status())) {
    return absl::Status(mac.status().code(),
                        absl::StrCat("reading the MAC of ", functions_[slot], ": ",
                                     mac.status().message()));
  }
  auto known = known_mac_.find(slot);
  if (known == known_mac_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot learn the MAC of ", functions_[slot], " (", mac.status().message(),
        ", and it had no kernel netdev with a permanent address when the broker took it)"));
  }
  return known->second;
}

absl::StatusOr<ProvisionedExtent> PciNicBackend::ProvisionNic(uint64_t slot_index,
                                                              const NicRequest& request) {
  if (slot_index >= functions_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no function slot ", slot_index));
  }
  // A whole-device lease carries none of these: nothing between the device and the wire could
  // enforce them, and its MAC is the device's own.
  if (request.mac_requested) {
    return absl::InvalidArgumentError(
        "mac: a pci_nic lease is a whole device and carries its own permanent MAC; leave mac "
        "empty (the lease's Nic.mac says which it is)");
  }
  if (request.vlan != 0) {
    return absl::InvalidArgumentError(
        "vlan: a pci_nic lease is a whole device on its wire; it carries no VLAN");
  }
  if (request.max_tx_rate_mbps != 0) {
    return absl::InvalidArgumentError(
        "max_tx_rate_mbps: a pci_nic lease is a whole device; nothing polices its rate");
  }
  if (!request.filters.empty()) {
    return absl::UnimplementedError(
        "filters: a pci_nic lease is a whole device and receives what its wire delivers to it; "
        "it takes no flow filters");
  }
  const uint32_t slot = static_cast<uint32_t>(slot_index);
  const std::string& bdf = functions_[slot];
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> group = pci_sysfs::SoleIommuGroup(options_.sysfs_root, bdf);
  if (!group.ok()) return group.status();
  if (dirty_.count(slot) != 0) {
    absl::StatusOr<TeardownResult> reset = Reset(slot, std::nullopt, "found dirty at provision");
    if (!reset.ok()) return reset.status();
    if (*reset != TeardownResult::kFreed) {
      return absl::UnavailableError(
          absl::StrCat("PCI function ", bdf, " is still held open by someone"));
    }
  }
  // Before the unbind: the kernel netdev's permanent MAC, for devices ReadMac cannot read.
  if (std::optional<MacAddress> mac = NetdevMac(bdf); mac.has_value()) known_mac_[slot] = *mac;
  if (absl::Status s = pci_sysfs::BindToVfioPci(options_.sysfs_root, bdf, options_.bind_timeout,
                                                options_.poll_interval);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::optional<VfioHandles>> vfio =
      platform_->OpenVfio(absl::StrCat(options_.dev_root, "/vfio"), *group, bdf);
  if (!vfio.ok()) return vfio.status();
  if (!vfio->has_value()) {
    return absl::UnavailableError(
        absl::StrCat("VFIO group ", *group, " of ", bdf, " is held open by someone"));
  }
  // A reset before the tenant gets it: nothing of an earlier user or of the host's driver stays.
  if (absl::Status s = platform_->ResetDevice(**vfio); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("resetting ", bdf, ": ", s.message()));
  }
  absl::StatusOr<MacAddress> mac = MacAfterReset(slot, **vfio);
  if (!mac.ok()) return mac.status();
  known_mac_[slot] = *mac;

  ProvisionedExtent extent;
  journal::PciNicState* state = extent.state.mutable_pci_nic();
  state->set_slot(slot);
  state->set_pci_address(bdf);
  state->set_mac(std::string(mac->begin(), mac->end()));
  uint32_t group_number = 0;
  (void)absl::SimpleAtoi(*group, &group_number);
  state->set_iommu_group(group_number);
  HandOverVfio(std::move(**vfio), &extent.fds);
  extent.pci_address = bdf;
  dirty_.insert(slot);  // until its teardown resets it
  spdlog::info("pool={} function {} ({}, group {}): reset, MAC {}", pool_name_, slot, bdf, *group,
               MacText(*mac));
  return extent;
}

absl::StatusOr<uint32_t> PciNicBackend::SlotOf(const journal::ExtentState& extent) const {
  if (!extent.has_pci_nic()) return absl::InvalidArgumentError("not a pci_nic lease");
  const journal::PciNicState& state = extent.pci_nic();
  if (state.slot() >= functions_.size() || state.pci_address() != functions_[state.slot()]) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journaled function ", state.slot(), " (", state.pci_address(),
        ") is not this pool's any more (configuration changed)"));
  }
  return state.slot();
}

absl::Status PciNicBackend::Readopt(const journal::ExtentState& extent) {
  absl::StatusOr<uint32_t> slot = SlotOf(extent);
  if (!slot.ok()) return slot.status();
  const journal::PciNicState& state = extent.pci_nic();
  const std::string& bdf = functions_[*slot];
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> group = pci_sysfs::SoleIommuGroup(options_.sysfs_root, bdf);
  if (!group.ok()) return group.status();
  if (*group != absl::StrCat(state.iommu_group())) {
    return absl::FailedPreconditionError(absl::StrCat("function ", bdf, " is in IOMMU group ",
                                                      *group, ", the journal says ",
                                                      state.iommu_group()));
  }
  absl::StatusOr<std::string> driver = LinkBase(PciPath(bdf, "driver"));
  if (!driver.ok() || *driver != "vfio-pci") {
    return absl::FailedPreconditionError(absl::StrCat("function ", bdf,
                                                      " is not bound to vfio-pci"));
  }
  if (state.mac().size() != 6) {
    return absl::FailedPreconditionError(absl::StrCat("journaled MAC of ", bdf, " is malformed"));
  }
  MacAddress mac{};
  std::copy(state.mac().begin(), state.mac().end(), mac.begin());
  known_mac_[*slot] = mac;
  dirty_.insert(*slot);
  return absl::OkStatus();
}

absl::StatusOr<TeardownResult> PciNicBackend::Teardown(const journal::ExtentState& extent) {
  absl::StatusOr<uint32_t> slot = SlotOf(extent);
  if (!slot.ok()) return slot.status();
  std::optional<MacAddress> expected;
  if (extent.pci_nic().mac().size() == 6) {
    MacAddress mac{};
    std::copy(extent.pci_nic().mac().begin(), extent.pci_nic().mac().end(), mac.begin());
    expected = mac;
  }
  absl::MutexLock lock(&mu_);
  return Reset(*slot, expected, "teardown");
}

absl::StatusOr<TeardownResult> PciNicBackend::Reset(uint32_t slot,
                                                    const std::optional<MacAddress>& expected,
                                                    const std::string& why) {
  const std::string& bdf = functions_[slot];
  absl::StatusOr<std::string> group = pci_sysfs::SoleIommuGroup(options_.sysfs_root, bdf);
  if (!group.ok()) return group.status();
  if (absl::Status s = pci_sysfs::BindToVfioPci(options_.sysfs_root, bdf, options_.bind_timeout,
                                                options_.poll_interval);
      !s.ok()) {
    return s;
  }
  // 1. Cut off: the group opens only when no tenant descriptor to it or its device is left;
  //    holding it keeps it so until the function is reset.
  absl::StatusOr<std::optional<VfioHandles>> vfio =
      platform_->OpenVfio(absl::StrCat(options_.dev_root, "/vfio"), *group, bdf);
  if (!vfio.ok()) return vfio.status();
  if (!vfio->has_value()) return TeardownResult::kStillOpen;
  // 2. Function reset: the device forgets its queues, its filters and any MAC its tenant set
  //    through the control queue (VIRTIO_NET_CTRL_MAC_ADDR_SET).
  if (absl::Status s = platform_->ResetDevice(**vfio); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("resetting ", bdf, ": ", s.message()));
  }
  // 3. Proof that it did: the device reports its own MAC again.
  absl::StatusOr<MacAddress> mac = MacAfterReset(slot, **vfio);
  if (!mac.ok()) return mac.status();
  if (expected.has_value() && *mac != *expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PCI function ", bdf, " reports MAC ", MacText(*mac), " after a reset, not its own ",
        MacText(*expected), "; not offering it again"));
  }
  known_mac_[slot] = *mac;
  dirty_.erase(slot);
  spdlog::info("pool={} function {} ({}): reset, MAC {} ({})", pool_name_, slot, bdf,
               MacText(*mac), why);
  return TeardownResult::kFreed;
}

absl::Status PciNicBackend::RemoveOrphans(const std::vector<journal::ExtentState>& known) {
  std::vector<bool> journaled(functions_.size(), false);
  for (const journal::ExtentState& state : known) {
    if (state.has_pci_nic() && state.pci_nic().slot() < functions_.size() &&
        state.pci_nic().pci_address() == functions_[state.pci_nic().slot()]) {
      journaled[state.pci_nic().slot()] = true;
    }
  }
  absl::MutexLock lock(&mu_);
  std::vector<std::string> failed;
  for (uint32_t slot = 0; slot < functions_.size(); ++slot) {
    if (journaled[slot]) continue;
    // Bound to vfio-pci with no record naming it: a crash between grant and journal, or a lease
    // of an earlier run whose record was lost, or someone's by hand. Reset before it is offered.
    absl::StatusOr<std::string> driver = LinkBase(PciPath(functions_[slot], "driver"));
    if (!driver.ok() || *driver != "vfio-pci") continue;
    absl::StatusOr<TeardownResult> result =
        Reset(slot, std::nullopt, "at start: bound to vfio-pci, no live lease names it");
    if (!result.ok() || *result != TeardownResult::kFreed) {
      dirty_.insert(slot);  // ProvisionNic resets it first, or refuses
      failed.push_back(absl::StrCat(functions_[slot], ": ",
                                    result.ok() ? "still held open"
                                                : std::string(result.status().message())));
    }
  }
  if (!failed.empty()) {
    return absl::UnavailableError(
        absl::StrCat("orphaned functions not reset yet: ", absl::StrJoin(failed, "; ")));
  }
  return absl::OkStatus();
}

}  // namespace vfbroker
