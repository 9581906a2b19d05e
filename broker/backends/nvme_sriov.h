// nvme_sriov: disk extents as NVMe virtual functions, each with a private namespace attached to
// its controller alone, handed to the tenant as VFIO descriptors.
//
// A pool is a physical function (PF) driven by the kernel's nvme driver, and a list of
// pre-declared namespaces: slot i is VF i+1 (the PF's virtfn<i>) with namespace_ids[i]. Every
// slot counts as slot_size bytes in the allocator's byte space (the smallest namespace, rounded
// down to a power of two), so the allocator, unchanged, hands out whole slots: offset /
// slot_size is the slot. (Namespace Management, creating namespaces on demand where OACS
// offers it, is future work: QEMU 10 and many drives answer it Invalid Opcode.)
//
// Open (broker start): finds the PF's /dev/nvmeN; checks every namespace exists, is private and
// is attached to no controller, or only to its own slot's VF controller (a lease or an orphan
// of an earlier run); releases the primary controller's flexible VQ/VI resources and resets the
// PF if it still holds any; turns VF driver autoprobe off and enables one VF per slot (refusing
// a PF whose VFs are enabled with another count).
//
// Provision(slot): refuses a VF whose IOMMU group holds any other device; assigns VI and VQ
// resources and brings the VF's secondary controller online; attaches the namespace and checks
// it is attached to that controller only; binds the VF to vfio-pci; then asks the VF's own
// controller (through VFIO, with the project's driver) which namespaces it sees - exactly that
// one - and whether it supports Namespace Management/Attachment (OACS bit 3): a VF that does
// lets its tenant attach and detach namespaces of the whole subsystem from its own admin queue
// (QEMU 10's do), so it is refused unless the pool sets the unsafe
// allow_vf_namespace_management; finally opens the VFIO container (type1v2), group and device
// afresh and returns the three descriptors for the tenant.
//
// Teardown (whole; there is no second half): proves the tenant is cut off - the kernel lets one
// file at a time open a VFIO group, and a device descriptor keeps its group's file open, so
// while any tenant descriptor to the group or device lives, opening /dev/vfio/<group> fails
// with EBUSY (kStillOpen) - then, holding the group itself, resets the function and writes
// zeroes over the whole namespace with the project's own polling NVMe driver, reads a sample
// back, detaches the namespace and takes the controller offline. A slot found dirty at
// Provision (a crash's leftovers) is scrubbed the same way first.
//
// Every sysfs and device path is under a configurable root, so tests run on a fake tree; what
// is not a file (admin commands, VFIO, the scrub) goes through NvmeSriovPlatform.
#ifndef VFBROKER_BROKER_BACKENDS_NVME_SRIOV_H_
#define VFBROKER_BROKER_BACKENDS_NVME_SRIOV_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/backends/extent_backend.h"
#include "broker/backends/nvme_admin.h"
#include "broker/backends/vfio_handout.h"  // VfioHandles
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"
#include "common/unique_fd.h"

namespace vfbroker {

// What a VF's own controller says about itself (through VFIO, with the project's driver).
struct VfFacts {
  uint16_t cntlid = 0;
  bool namespace_management = false;  // OACS bit 3: Namespace Management and Attachment
  std::vector<uint32_t> active_namespaces;
};

// What the backend does to the machine besides sysfs files.
class NvmeSriovPlatform {
 public:
  virtual ~NvmeSriovPlatform() = default;
  virtual absl::StatusOr<std::unique_ptr<nvme_admin::AdminChannel>> OpenAdmin(
      const std::string& device_path) = 0;
  // Opens /dev/vfio/vfio and `group_path`, checks the group is viable, attaches it to the
  // container with the type1v2 IOMMU and gets the device fd of `pci_address`. nullopt when the
  // group is busy (EBUSY: another file has it open - the cut-off test).
  virtual absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                              const std::string& group,
                                                              const std::string& pci_address) = 0;
  // Resets the function, writes zeroes over the whole of namespace `nsid` through the NVMe
  // driver in vfdrivers/block/nvme, and reads a sample back: OK only if it is all zeroes.
  // Consumes the handles (closed on return).
  virtual absl::Status ScrubNamespace(VfioHandles handles, uint32_t nsid) = 0;
  // Brings the VF's controller up, reads Identify Controller (CNTLID, OACS) and the active
  // namespace list, and disables it again. Consumes the handles.
  virtual absl::StatusOr<VfFacts> InspectVf(VfioHandles handles, uint32_t nsid) = 0;
};

// The real one: NVME_IOCTL_ADMIN_CMD, VFIO ioctls, vfdrivers' VfioDevice and NVMe driver.
std::unique_ptr<NvmeSriovPlatform> MakeRealNvmeSriovPlatform();

struct NvmeSriovOptions {
  std::string sysfs_root = "/sys";
  std::string dev_root = "/dev";
  absl::Duration live_timeout = absl::Seconds(10);    // PF back to "live" after its reset
  absl::Duration bind_timeout = absl::Seconds(5);     // VF bound to vfio-pci
  absl::Duration poll_interval = absl::Milliseconds(20);
};

class NvmeSriovBackend : public ExtentBackend {
 public:
  // INVALID_ARGUMENT / FAILED_PRECONDITION naming what is wrong with the PF or a namespace.
  static absl::StatusOr<std::unique_ptr<NvmeSriovBackend>> Open(
      const std::string& pool_name, const config::NvmeSriovPool& config,
      std::unique_ptr<NvmeSriovPlatform> platform, NvmeSriovOptions options = {});

  std::string backend_name() const override { return "nvme_sriov"; }
  uint64_t capacity_bytes() const override { return slot_size_ * slots_.size(); }
  uint64_t slot_size() const { return slot_size_; }
  size_t slot_count() const { return slots_.size(); }
  const std::string& pf() const { return pf_; }

  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;
  absl::Status Readopt(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override;
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override;

 private:
  struct Slot {
    uint32_t nsid = 0;
    std::string vf;       // PCI address
    uint16_t scid = 0;    // its secondary controller
    uint64_t ns_bytes = 0;
  };

  NvmeSriovBackend(std::string pool_name, std::string pf, const config::NvmeSriovPool& config,
                   std::unique_ptr<NvmeSriovPlatform> platform, NvmeSriovOptions options);

  absl::Status Init();
  std::string PciPath(const std::string& bdf, const std::string& leaf = "") const;
  absl::Status ResetPf();
  absl::Status EnableVfs();
  // The VF's IOMMU group number; FAILED_PRECONDITION naming the members when it is not alone.
  absl::StatusOr<std::string> SoleGroup(const std::string& vf) const;
  absl::Status BindVfio(const std::string& vf);
  absl::StatusOr<nvme_admin::SecondaryController> Secondary(uint16_t scid);
  absl::Status BringOnline(const Slot& slot);
  absl::Status CheckAttachedOnlyTo(const Slot& slot);
  // The slot is not clean: controller online or namespace attached.
  absl::StatusOr<bool> Dirty(const Slot& slot);
  // Cut off, scrub, detach, offline. kStillOpen if a descriptor to the group or device lives.
  absl::StatusOr<TeardownResult> Scrub(size_t index, const std::string& why);
  absl::StatusOr<size_t> SlotOf(const journal::ExtentState& state) const;

  const std::string pool_name_;
  const std::string pf_;
  const uint32_t vq_per_vf_;
  const uint32_t vi_per_vf_;
  const bool allow_vf_namespace_management_;
  std::unique_ptr<NvmeSriovPlatform> platform_;
  const NvmeSriovOptions options_;
  std::unique_ptr<nvme_admin::AdminChannel> admin_;
  std::string ctrl_;  // "nvmeN"
  uint16_t primary_cntlid_ = 0;
  std::vector<Slot> slots_;
  uint64_t slot_size_ = 0;
  // Serializes the admin sequences of one slot against those of another that might interleave
  // badly (resource assignment draws from one shared flexible pool).
  absl::Mutex admin_mu_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_NVME_SRIOV_H_
