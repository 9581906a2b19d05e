#include "broker/backends/nvme_sriov.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "broker/backends/pci_sysfs.h"
#include "common/logging.h"

namespace vfbroker {
namespace {

using nvme_admin::SecondaryController;
using nvme_admin::VirtAction;
using nvme_admin::VirtResource;

using pci_sysfs::ErrnoStatus;
using pci_sysfs::Exists;
using pci_sysfs::IsPciAddress;
using pci_sysfs::LinkBase;
using pci_sysfs::ListDir;

std::string Join(const std::vector<uint16_t>& ids) { return absl::StrJoin(ids, ","); }

uint64_t PowerOfTwoAtMost(uint64_t v) {
  uint64_t p = 1;
  while (p <= v / 2) p *= 2;
  return p;
}

}  // namespace

NvmeSriovBackend::NvmeSriovBackend(std::string pool_name, std::string pf,
                                   const config::NvmeSriovPool& config,
                                   std::unique_ptr<NvmeSriovPlatform> platform,
                                   NvmeSriovOptions options)
    : pool_name_(std::move(pool_name)),
      pf_(std::move(pf)),
      vq_per_vf_(config.io_queues_per_vf() != 0 ? config.io_queues_per_vf() : 2),
      vi_per_vf_(config.interrupts_per_vf() != 0 ? config.interrupts_per_vf() : 1),
      allow_vf_namespace_management_(config.allow_vf_namespace_management()),
      platform_(std::move(platform)),
      options_(std::move(options)) {
  for (uint32_t nsid : config.namespace_ids()) {
    Slot slot;
    slot.nsid = nsid;
    slots_.push_back(slot);
  }
}

absl::StatusOr<std::unique_ptr<NvmeSriovBackend>> NvmeSriovBackend::Open(
    const std::string& pool_name, const config::NvmeSriovPool& config,
    std::unique_ptr<NvmeSriovPlatform> platform, NvmeSriovOptions options) {
  if (!IsPciAddress(config.pf_pci_address())) {
    return absl::InvalidArgumentError(
        absl::StrCat("pf_pci_address: not a PCI address: ", config.pf_pci_address()));
  }
  if (config.namespace_ids().empty()) {
    return absl::InvalidArgumentError("namespace_ids: no namespaces");
  }
  std::unique_ptr<NvmeSriovBackend> backend(new NvmeSriovBackend(
      pool_name, config.pf_pci_address(), config, std::move(platform), std::move(options)));
  if (absl::Status s = backend->Init(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("PF ", config.pf_pci_address(), ": ", s.message()));
  }
  return backend;
}

std::string NvmeSriovBackend::PciPath(const std::string& bdf, const std::string& leaf) const {
  return pci_sysfs::DevicePath(options_.sysfs_root, bdf, leaf);
}

absl::Status NvmeSriovBackend::Init() {
  if (!Exists(PciPath(pf_))) return absl::NotFoundError("no such PCI device");
  // The kernel nvme driver's controller: /sys/bus/pci/devices/<pf>/nvme/nvmeN.
  absl::StatusOr<std::vector<std::string>> ctrls = ListDir(PciPath(pf_, "nvme"));
  if (!ctrls.ok() || ctrls->empty()) {
    return absl::FailedPreconditionError(
        "not driven by the kernel nvme driver (no nvme/ directory in sysfs)");
  }
  ctrl_ = ctrls->front();
  if (ctrl_.rfind("nvme", 0) != 0 || ctrl_.find('/') != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat("unexpected controller name ", ctrl_));
  }
  absl::StatusOr<std::unique_ptr<nvme_admin::AdminChannel>> admin =
      platform_->OpenAdmin(absl::StrCat(options_.dev_root, "/", ctrl_));
  if (!admin.ok()) return admin.status();
  admin_ = *std::move(admin);

  // Namespaces: allocated, private, big enough.
  uint64_t smallest = ~uint64_t{0};
  for (Slot& slot : slots_) {
    absl::StatusOr<nvme_admin::NamespaceFacts> ns =
        nvme_admin::GetAllocatedNamespace(*admin_, slot.nsid);
    if (!ns.ok()) {
      return absl::Status(ns.status().code(),
                          absl::StrCat("namespace ", slot.nsid, ": ", ns.status().message()));
    }
    if (!ns->allocated) {
      return absl::FailedPreconditionError(absl::StrCat("namespace ", slot.nsid,
                                                        " does not exist"));
    }
    if (ns->may_be_shared) {
      return absl::FailedPreconditionError(absl::StrCat(
          "namespace ", slot.nsid, " may be shared (NMIC bit 0): a pool namespace must be "
          "private, or another controller could be given it too"));
    }
    slot.ns_bytes = ns->bytes;
    smallest = std::min(smallest, ns->bytes);
  }
  if (smallest < (uint64_t{1} << 20)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the smallest namespace has ", smallest, " bytes; slots need >= 1 MiB"));
  }
  slot_size_ = PowerOfTwoAtMost(smallest);

  // The primary controller gives back flexible resources it holds (effective at its reset).
  absl::StatusOr<nvme_admin::PrimaryCapabilities> caps =
      nvme_admin::GetPrimaryCapabilities(*admin_);
  if (!caps.ok()) return caps.status();
  primary_cntlid_ = caps->cntlid;
  if (caps->vq_flexible_primary != 0 || caps->vi_flexible_primary != 0) {
    spdlog::info("pool={} PF {}: the primary controller holds {} VQ / {} VI flexible resources; "
                 "releasing them and resetting the PF",
                 pool_name_, pf_, caps->vq_flexible_primary, caps->vi_flexible_primary);
    absl::StatusOr<std::string> numvfs = pci_sysfs::Read(PciPath(pf_, "sriov_numvfs"));
    if (numvfs.ok() && *numvfs != "0") {
      return absl::FailedPreconditionError(absl::StrCat(
          "the primary controller still holds flexible resources while ", *numvfs,
          " VFs are enabled; set sriov_numvfs to 0 so the PF can be reset"));
    }
    for (VirtResource rt : {VirtResource::kVq, VirtResource::kVi}) {
      if (absl::Status s = nvme_admin::Virt(*admin_, VirtAction::kPrimaryFlexible, rt,
                                            primary_cntlid_, 0);
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = ResetPf(); !s.ok()) return s;
    caps = nvme_admin::GetPrimaryCapabilities(*admin_);
    if (!caps.ok()) return caps.status();
  }
  const uint64_t slots = slots_.size();
  if (caps->vq_flexible_total < slots * vq_per_vf_ ||
      caps->vi_flexible_total < slots * vi_per_vf_ ||
      (caps->vq_secondary_max != 0 && caps->vq_secondary_max < vq_per_vf_) ||
      (caps->vi_secondary_max != 0 && caps->vi_secondary_max < vi_per_vf_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        slots, " slots of ", vq_per_vf_, " VQ / ", vi_per_vf_, " VI need more than the "
        "controller offers (flexible VQ ", caps->vq_flexible_total, ", VI ",
        caps->vi_flexible_total, "; per secondary at most VQ ", caps->vq_secondary_max, ", VI ",
        caps->vi_secondary_max, ")"));
  }

  if (absl::Status s = EnableVfs(); !s.ok()) return s;

  // Slot i: VF virtfn<i> (VFN i+1) and its secondary controller.
  absl::StatusOr<std::vector<SecondaryController>> secondaries =
      nvme_admin::GetSecondaryList(*admin_);
  if (!secondaries.ok()) return secondaries.status();
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    absl::StatusOr<std::string> vf = LinkBase(PciPath(pf_, absl::StrCat("virtfn", i)));
    if (!vf.ok()) return vf.status();
    if (!IsPciAddress(*vf)) {
      return absl::FailedPreconditionError(absl::StrCat("virtfn", i, " names ", *vf));
    }
    slot.vf = *vf;
    auto it = std::find_if(secondaries->begin(), secondaries->end(),
                           [&](const SecondaryController& c) { return c.vfn == i + 1; });
    if (it == secondaries->end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("no secondary controller for VF ", i + 1, " (", slot.vf, ")"));
    }
    slot.scid = it->scid;
  }
  // No namespace may reach anyone but its own slot's controller (a lease or an orphan of an
  // earlier run, sorted out by Readopt / RemoveOrphans).
  for (const Slot& slot : slots_) {
    absl::StatusOr<std::vector<uint16_t>> attached =
        nvme_admin::GetNamespaceControllers(*admin_, slot.nsid);
    if (!attached.ok()) return attached.status();
    for (uint16_t id : *attached) {
      if (id != slot.scid) {
        return absl::FailedPreconditionError(absl::StrCat(
            "namespace ", slot.nsid, " is attached to controllers [", Join(*attached),
            "]; a pool namespace must be detached (or attached only to its slot's VF "
            "controller ", slot.scid, ")"));
      }
    }
  }
  spdlog::info("pool={} backend=nvme_sriov PF {} ({}) slots={} slot_size={} bytes VQ/VI per "
               "VF {}/{}",
               pool_name_, pf_, ctrl_, slots_.size(), slot_size_, vq_per_vf_, vi_per_vf_);
  return absl::OkStatus();
}

absl::Status NvmeSriovBackend::ResetPf() {
  if (absl::Status s = pci_sysfs::Write(PciPath(pf_, "reset"), "1"); !s.ok()) return s;
  const std::string state = PciPath(pf_, absl::StrCat("nvme/", ctrl_, "/state"));
  const absl::Time deadline = absl::Now() + options_.live_timeout;
  while (true) {
    absl::StatusOr<std::string> now = pci_sysfs::Read(state);
    if (now.ok() && *now == "live") return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(ctrl_, " not live after the PF reset (state ",
                       now.ok() ? *now : std::string(now.status().message()), ")"));
    }
    absl::SleepFor(options_.poll_interval);
  }
}

absl::Status NvmeSriovBackend::EnableVfs() {
  absl::StatusOr<std::string> total = pci_sysfs::Read(PciPath(pf_, "sriov_totalvfs"));
  if (!total.ok()) return absl::FailedPreconditionError("no SR-IOV (no sriov_totalvfs)");
  uint32_t total_vfs = 0, num_vfs = 0;
  absl::StatusOr<std::string> num = pci_sysfs::Read(PciPath(pf_, "sriov_numvfs"));
  if (!num.ok()) return num.status();
  if (!absl::SimpleAtoi(*total, &total_vfs) || !absl::SimpleAtoi(*num, &num_vfs)) {
    return absl::FailedPreconditionError("unreadable sriov_totalvfs / sriov_numvfs");
  }
  if (total_vfs < slots_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the PF offers ", total_vfs, " VFs (sriov_totalvfs), the pool has ", slots_.size(),
        " namespaces"));
  }
  // No kernel driver may grab a VF (and its namespace) before the broker binds it to vfio-pci.
  if (absl::Status s = pci_sysfs::Write(PciPath(pf_, "sriov_drivers_autoprobe"), "0"); !s.ok()) {
    return s;
  }
  if (num_vfs == slots_.size()) return absl::OkStatus();  // a restart: keep them (and leases)
  if (num_vfs != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        num_vfs, " VFs are enabled already, the pool needs ", slots_.size(),
        "; set sriov_numvfs to 0 first (nothing of this pool may be in use)"));
  }
  return pci_sysfs::Write(PciPath(pf_, "sriov_numvfs"), absl::StrCat(slots_.size()));
}

absl::StatusOr<std::string> NvmeSriovBackend::SoleGroup(const std::string& vf) const {
  return pci_sysfs::SoleIommuGroup(options_.sysfs_root, vf);
}

absl::Status NvmeSriovBackend::BindVfio(const std::string& vf) {
  return pci_sysfs::BindToVfioPci(options_.sysfs_root, vf, options_.bind_timeout,
                                   options_.poll_interval);
}

absl::StatusOr<SecondaryController> NvmeSriovBackend::Secondary(uint16_t scid) {
  absl::StatusOr<std::vector<SecondaryController>> list = nvme_admin::GetSecondaryList(*admin_);
  if (!list.ok()) return list.status();
  for (const SecondaryController& c : *list) {
    if (c.scid == scid) return c;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("secondary controller ", scid, " is not in the Secondary Controller List"));
}

absl::Status NvmeSriovBackend::BringOnline(const Slot& slot) {
  absl::StatusOr<SecondaryController> now = Secondary(slot.scid);
  if (!now.ok()) return now.status();
  if (now->online && now->nvq >= vq_per_vf_ && now->nvi >= vi_per_vf_) return absl::OkStatus();
  if (now->online) {  // resources change only while offline
    if (absl::Status s = nvme_admin::Virt(*admin_, VirtAction::kSecondaryOffline,
                                          VirtResource::kVq, slot.scid, 0);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = nvme_admin::Virt(*admin_, VirtAction::kSecondaryAssign, VirtResource::kVi,
                                        slot.scid, static_cast<uint16_t>(vi_per_vf_));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = nvme_admin::Virt(*admin_, VirtAction::kSecondaryAssign, VirtResource::kVq,
                                        slot.scid, static_cast<uint16_t>(vq_per_vf_));
      !s.ok()) {
    return s;
  }
  return nvme_admin::Virt(*admin_, VirtAction::kSecondaryOnline, VirtResource::kVq, slot.scid, 0);
}

absl::Status NvmeSriovBackend::CheckAttachedOnlyTo(const Slot& slot) {
  absl::StatusOr<std::vector<uint16_t>> attached =
      nvme_admin::GetNamespaceControllers(*admin_, slot.nsid);
  if (!attached.ok()) return attached.status();
  if (*attached != std::vector<uint16_t>{slot.scid}) {
    return absl::FailedPreconditionError(absl::StrCat(
        "namespace ", slot.nsid, " is attached to controllers [", Join(*attached),
        "], not to controller ", slot.scid, " alone"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> NvmeSriovBackend::Dirty(const Slot& slot) {
  absl::StatusOr<SecondaryController> now = Secondary(slot.scid);
  if (!now.ok()) return now.status();
  absl::StatusOr<std::vector<uint16_t>> attached =
      nvme_admin::GetNamespaceControllers(*admin_, slot.nsid);
  if (!attached.ok()) return attached.status();
  return now->online || !attached->empty();
}

absl::StatusOr<ProvisionedExtent> NvmeSriovBackend::Provision(uint64_t offset, uint64_t size) {
  if (slot_size_ == 0 || offset % slot_size_ != 0 || size != slot_size_ ||
      offset / slot_size_ >= slots_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "extent [", offset, ", +", size, ") is not one whole slot of ", slot_size_, " bytes"));
  }
  const size_t index = offset / slot_size_;
  const Slot& slot = slots_[index];
  absl::MutexLock lock(&admin_mu_);

  absl::StatusOr<std::string> group = SoleGroup(slot.vf);
  if (!group.ok()) return group.status();

  // A free slot is offline and detached; one that is not is a crash's leftover: scrub first.
  absl::StatusOr<bool> dirty = Dirty(slot);
  if (!dirty.ok()) return dirty.status();
  if (*dirty) {
    absl::StatusOr<TeardownResult> scrubbed = Scrub(index, "found in use at provision");
    if (!scrubbed.ok()) return scrubbed.status();
    if (*scrubbed != TeardownResult::kFreed) {
      return absl::UnavailableError(absl::StrCat("slot ", index, " (VF ", slot.vf,
                                                 ") is still held open by someone"));
    }
  }

  auto undo = [&](const absl::Status& why) {
    (void)nvme_admin::AttachNamespace(*admin_, slot.nsid, slot.scid, /*detach=*/true);
    (void)nvme_admin::Virt(*admin_, VirtAction::kSecondaryOffline, VirtResource::kVq, slot.scid,
                           0);
    return why;
  };
  if (absl::Status s = BringOnline(slot); !s.ok()) return undo(s);
  if (absl::Status s = nvme_admin::AttachNamespace(*admin_, slot.nsid, slot.scid, false);
      !s.ok()) {
    return undo(s);
  }
  if (absl::Status s = CheckAttachedOnlyTo(slot); !s.ok()) return undo(s);
  if (absl::Status s = BindVfio(slot.vf); !s.ok()) return undo(s);
  const std::string vfio_dir = absl::StrCat(options_.dev_root, "/vfio");
  auto held = [&] {
    return absl::UnavailableError(
        absl::StrCat("VFIO group ", *group, " of VF ", slot.vf, " is held open by someone"));
  };
  // The VF's own view, before anyone else gets it.
  absl::StatusOr<std::optional<VfioHandles>> vfio = platform_->OpenVfio(vfio_dir, *group, slot.vf);
  if (!vfio.ok()) return undo(vfio.status());
  if (!vfio->has_value()) return undo(held());
  absl::StatusOr<VfFacts> facts = platform_->InspectVf(std::move(**vfio), slot.nsid);
  if (!facts.ok()) {
    return undo(absl::Status(facts.status().code(), absl::StrCat("inspecting VF ", slot.vf, ": ",
                                                                 facts.status().message())));
  }
  if (facts->active_namespaces != std::vector<uint32_t>{slot.nsid}) {
    return undo(absl::FailedPreconditionError(absl::StrCat(
        "VF ", slot.vf, "'s controller sees namespaces [",
        absl::StrJoin(facts->active_namespaces, ","), "], not namespace ", slot.nsid,
        " alone")));
  }
  if (facts->namespace_management && !allow_vf_namespace_management_) {
    return undo(absl::FailedPreconditionError(absl::StrCat(
        "VF ", slot.vf, "'s controller supports Namespace Management/Attachment (OACS bit 3): "
        "its tenant could attach or detach any namespace of the subsystem; refusing to hand it "
        "out (allow_vf_namespace_management overrides this, for test rigs only)")));
  }
  if (facts->namespace_management) {
    spdlog::warn("pool={} VF {}: its controller supports Namespace Management/Attachment and "
                 "allow_vf_namespace_management is set: its tenant is NOT confined to its "
                 "namespace", pool_name_, slot.vf);
  }
  vfio = platform_->OpenVfio(vfio_dir, *group, slot.vf);
  if (!vfio.ok()) return undo(vfio.status());
  if (!vfio->has_value()) return undo(held());

  ProvisionedExtent extent;
  journal::NvmeSriovState* state = extent.state.mutable_nvme_sriov();
  state->set_offset_bytes(offset);
  state->set_size_bytes(size);
  state->set_slot(static_cast<uint32_t>(index));
  state->set_vf_pci_address(slot.vf);
  state->set_controller_id(slot.scid);
  state->set_namespace_id(slot.nsid);
  uint32_t group_number = 0;
  (void)absl::SimpleAtoi(*group, &group_number);
  state->set_iommu_group(group_number);
  HandOverVfio(std::move(**vfio), &extent.fds);
  extent.pci_address = slot.vf;
  extent.nvme_namespace_id = slot.nsid;
  return extent;
}

absl::StatusOr<size_t> NvmeSriovBackend::SlotOf(const journal::ExtentState& extent) const {
  if (!extent.has_nvme_sriov()) {
    return absl::InvalidArgumentError("not an nvme_sriov extent");
  }
  const journal::NvmeSriovState& state = extent.nvme_sriov();
  const size_t index = state.slot();
  if (index >= slots_.size() || state.offset_bytes() != index * slot_size_ ||
      state.vf_pci_address() != slots_[index].vf ||
      state.controller_id() != slots_[index].scid ||
      state.namespace_id() != slots_[index].nsid) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journaled slot ", index, " (VF ", state.vf_pci_address(), ", controller ",
        state.controller_id(), ", namespace ", state.namespace_id(),
        ") is not this pool's slot any more (configuration or PF changed)"));
  }
  return index;
}

absl::Status NvmeSriovBackend::Readopt(const journal::ExtentState& extent) {
  absl::StatusOr<size_t> index = SlotOf(extent);
  if (!index.ok()) return index.status();
  const Slot& slot = slots_[*index];
  absl::MutexLock lock(&admin_mu_);
  absl::StatusOr<SecondaryController> now = Secondary(slot.scid);
  if (!now.ok()) return now.status();
  if (!now->online) {
    return absl::FailedPreconditionError(
        absl::StrCat("controller ", slot.scid, " of VF ", slot.vf, " is offline"));
  }
  if (absl::Status s = CheckAttachedOnlyTo(slot); !s.ok()) return s;
  absl::StatusOr<std::string> group = SoleGroup(slot.vf);
  if (!group.ok()) return group.status();
  if (*group != absl::StrCat(extent.nvme_sriov().iommu_group())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VF ", slot.vf, " is in IOMMU group ", *group, ", the journal says ",
        extent.nvme_sriov().iommu_group()));
  }
  absl::StatusOr<std::string> driver = LinkBase(PciPath(slot.vf, "driver"));
  if (!driver.ok() || *driver != "vfio-pci") {
    return absl::FailedPreconditionError(absl::StrCat("VF ", slot.vf, " is not bound to vfio-pci"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TeardownResult> NvmeSriovBackend::Teardown(const journal::ExtentState& extent) {
  absl::StatusOr<size_t> index = SlotOf(extent);
  if (!index.ok()) return index.status();
  absl::MutexLock lock(&admin_mu_);
  return Scrub(*index, "teardown");
}

absl::StatusOr<TeardownResult> NvmeSriovBackend::Scrub(size_t index, const std::string& why) {
  const Slot& slot = slots_[index];
  absl::StatusOr<std::string> group = SoleGroup(slot.vf);
  if (!group.ok()) return group.status();
  if (absl::Status s = BindVfio(slot.vf); !s.ok()) return s;
  // 1. Cut off. Opening the group succeeds only if no other file has it open, and a device
  //    descriptor holds its group's file: so success proves no tenant descriptor to the group
  //    or the device is left, and holding it keeps it so.
  absl::StatusOr<std::optional<VfioHandles>> vfio =
      platform_->OpenVfio(absl::StrCat(options_.dev_root, "/vfio"), *group, slot.vf);
  if (!vfio.ok()) return vfio.status();
  if (!vfio->has_value()) return TeardownResult::kStillOpen;
  // 2. The driver needs the controller online and the namespace attached (it is, unless a crash
  //    came between the steps below).
  if (absl::Status s = BringOnline(slot); !s.ok()) return s;
  absl::StatusOr<std::vector<uint16_t>> attached =
      nvme_admin::GetNamespaceControllers(*admin_, slot.nsid);
  if (!attached.ok()) return attached.status();
  if (attached->empty()) {
    if (absl::Status s = nvme_admin::AttachNamespace(*admin_, slot.nsid, slot.scid, false);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckAttachedOnlyTo(slot); !s.ok()) return s;
  // 3. Reset the function and zero the whole namespace, then read a sample back.
  const absl::Time start = absl::Now();
  if (absl::Status s = platform_->ScrubNamespace(std::move(**vfio), slot.nsid); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("scrubbing namespace ", slot.nsid, " through VF ",
                                               slot.vf, ": ", s.message()));
  }
  // 4. Detach and take the controller offline; the next Provision brings it back.
  if (absl::Status s = nvme_admin::AttachNamespace(*admin_, slot.nsid, slot.scid, true);
      !s.ok()) {
    return s;
  }
  attached = nvme_admin::GetNamespaceControllers(*admin_, slot.nsid);
  if (!attached.ok()) return attached.status();
  if (!attached->empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "namespace ", slot.nsid, " still attached to [", Join(*attached), "] after detach"));
  }
  if (absl::Status s = nvme_admin::Virt(*admin_, VirtAction::kSecondaryOffline, VirtResource::kVq,
                                        slot.scid, 0);
      !s.ok()) {
    return s;
  }
  spdlog::info("pool={} slot={} VF {} controller {}: namespace {} ({} bytes) zeroed and "
               "verified in {} ms, detached, controller offline ({})",
               pool_name_, index, slot.vf, slot.scid, slot.nsid, slot.ns_bytes,
               absl::ToInt64Milliseconds(absl::Now() - start), why);
  return TeardownResult::kFreed;
}

absl::Status NvmeSriovBackend::RemoveOrphans(const std::vector<journal::ExtentState>& known) {
  std::vector<bool> journaled(slots_.size(), false);
  for (const journal::ExtentState& state : known) {
    if (state.has_nvme_sriov() && state.nvme_sriov().slot() < slots_.size()) {
      journaled[state.nvme_sriov().slot()] = true;
    }
  }
  absl::MutexLock lock(&admin_mu_);
  std::vector<std::string> failed;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (journaled[i]) continue;
    absl::StatusOr<bool> dirty = Dirty(slots_[i]);
    if (dirty.ok() && !*dirty) continue;
    absl::StatusOr<TeardownResult> result =
        dirty.ok() ? Scrub(i, "orphan: no journal record names it")
                   : absl::StatusOr<TeardownResult>(dirty.status());
    if (!result.ok() || *result != TeardownResult::kFreed) {
      // Left dirty: Provision of this slot scrubs it first, or refuses.
      failed.push_back(absl::StrCat("slot ", i, ": ",
                                    result.ok() ? "still held open"
                                                : std::string(result.status().message())));
    }
  }
  if (!failed.empty()) {
    return absl::UnavailableError(absl::StrCat("orphaned slots not scrubbed yet: ",
                                               absl::StrJoin(failed, "; ")));
  }
  return absl::OkStatus();
}

}  // namespace vfbroker
