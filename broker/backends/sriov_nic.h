// sriov_nic: NIC slices as SR-IOV virtual functions of a kernel-driven PF (igb/82576,
// ixgbe/82599, ...), handed to the tenant as VFIO descriptors.
//
// Slot i is VF i (the PF's virtfn<i>). Open (broker start): resolves the PF (interface name <->
// PCI address through sysfs), turns VF driver autoprobe off, enables max_vfs VFs
// (sriov_numvfs; a PF whose VFs are enabled with another count is refused) and sets the PF up.
//
// ProvisionNic(slot): refuses a VF whose IOMMU group holds any other device (FAILED_PRECONDITION
// naming the members); refuses flow filters (UNIMPLEMENTED: see below); refuses a MAC another
// VF of the PF already has (ALREADY_EXISTS); binds the VF to vfio-pci (driver_override); opens the
// VFIO group itself (EBUSY: someone still holds it -> UNAVAILABLE) and resets the function
// (VFIO_DEVICE_RESET, FLR); then sets through rtnetlink on the PF, one attribute per request so
// that an error names it: the lease's MAC (IFLA_VF_MAC), VLAN (IFLA_VF_VLAN), spoof checking on
// (IFLA_VF_SPOOFCHK), trust off (IFLA_VF_TRUST), the TX rate if asked (IFLA_VF_RATE; UNIMPLEMENTED
// if the PF driver cannot), link state auto (IFLA_VF_LINK_STATE; optional: igb has no such
// operation), and reads the VF back (IFLA_VFINFO_LIST) to check MAC and VLAN took. The
// descriptors the broker opened (container, group, device) go to the tenant.
//
// Flow filters (fixed at grant): each is an ethtool ntuple rule on the PF (ethtool_ntuple.h)
// matching the filter's IPv4 flow on frames to the lease's MAC (and VLAN) and steering them to
// the VF's queue 0. They keep the lease's flows on its VF on PFs whose classifier sees VF
// traffic; they do not narrow what the VF receives (its switch port delivers every frame to its
// MAC and VLAN), unlike xdp_nic's. A PF without an ntuple table (igb on the 82576, QEMU's model
// included: the probe at Open says EOPNOTSUPP), or one refusing a VF action, makes the request
// UNIMPLEMENTED with the driver's answer, and nothing changes. Teardown and orphan clean-up
// delete every rule that steers to the VF, journaled or not.
//
// Teardown: proves the tenant is cut off (opening /dev/vfio/<group> succeeds only when no other
// file has it: EBUSY -> kStillOpen, the core retries later and the slot stays out of use),
// disables the VF's link (where the driver can), resets the function from the broker's own open,
// restores MAC 00:00:00:00:00:00, VLAN 0, rate 0, spoof checking on, trust off, and reads back.
// RemoveOrphans does the same to every VF no record names whose MAC or VLAN is set (or whose
// group is held); ProvisionNic restores a VF it finds still configured before handing it out.
//
// Every sysfs and device path is under a configurable root, so tests run on a fake tree; the
// rtnetlink and VFIO side goes through SriovNicPlatform.
#ifndef VFBROKER_BROKER_BACKENDS_SRIOV_NIC_H_
#define VFBROKER_BROKER_BACKENDS_SRIOV_NIC_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/backends/ethtool_ntuple.h"
#include "broker/backends/extent_backend.h"
#include "broker/backends/vfio_handout.h"
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"

namespace vfbroker {

using Mac = std::array<uint8_t, 6>;

// What the PF says about one of its VFs (IFLA_VFINFO_LIST).
struct VfInfo {
  uint32_t vf = 0;
  Mac mac{};
  uint32_t vlan = 0;
  uint32_t max_tx_rate = 0;  // Mbps
  int spoofchk = -1;         // -1: not reported
  int trust = -1;
  int link_state = -1;       // IFLA_VF_LINK_STATE_*
};

// One attribute of IFLA_VF_INFO, set on its own.
struct VfSetting {
  enum Kind { kMac, kVlan, kSpoofchk, kTrust, kRate, kLinkState } kind;
  Mac mac{};
  uint32_t value = 0;  // VLAN id, 0/1, Mbps, IFLA_VF_LINK_STATE_*
};

class SriovNicPlatform {
 public:
  virtual ~SriovNicPlatform() = default;
  // RTM_SETLINK on the PF with one IFLA_VFINFO_LIST/IFLA_VF_INFO attribute. The kernel's errno
  // maps to a status; EOPNOTSUPP to UNIMPLEMENTED.
  virtual absl::Status SetVf(int pf_ifindex, uint32_t vf, const VfSetting& setting) = 0;
  virtual absl::StatusOr<std::vector<VfInfo>> GetVfs(int pf_ifindex) = 0;
  virtual absl::Status SetLinkUp(int ifindex) = 0;
  // As NvmeSriovPlatform::OpenVfio: nullopt when the group is busy (EBUSY).
  virtual absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                              const std::string& group,
                                                              const std::string& pci_address) = 0;
  // VFIO_DEVICE_RESET on the device descriptor (function-level reset).
  virtual absl::Status ResetDevice(const VfioHandles& handles) = 0;
  // ethtool ntuple rules on the PF interface (the real platform: ethtool_ntuple.h).
  virtual absl::StatusOr<ethtool::NtupleTable> ProbeNtuple(const std::string& pf) = 0;
  virtual absl::StatusOr<uint32_t> InsertNtupleRule(const std::string& pf,
                                                    const ethtool::NtupleRule& rule) = 0;
  virtual absl::Status DeleteNtupleRule(const std::string& pf, uint32_t location) = 0;
  virtual absl::StatusOr<std::vector<ethtool::InstalledRule>> ListNtupleRules(
      const std::string& pf) = 0;
};

std::unique_ptr<SriovNicPlatform> MakeRealSriovNicPlatform();

struct SriovNicOptions {
  std::string sysfs_root = "/sys";
  std::string dev_root = "/dev";
  absl::Duration vfs_timeout = absl::Seconds(10);   // virtfn links after sriov_numvfs
  absl::Duration bind_timeout = absl::Seconds(5);   // VF bound to vfio-pci
  absl::Duration poll_interval = absl::Milliseconds(20);
};

class SriovNicBackend : public ExtentBackend {
 public:
  static absl::StatusOr<std::unique_ptr<SriovNicBackend>> Open(
      const std::string& pool_name, const config::SriovNicPool& config,
      std::unique_ptr<SriovNicPlatform> platform, SriovNicOptions options = {});

  std::string backend_name() const override { return "sriov_nic"; }
  uint64_t capacity_bytes() const override { return vfs_.size(); }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& request) override;
  absl::Status Readopt(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override;
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override;

  const std::string& pf_interface() const { return pf_interface_; }
  const std::string& pf_pci_address() const { return pf_; }
  const std::string& vf_pci_address(size_t slot) const { return vfs_[slot]; }

 private:
  SriovNicBackend(std::string pool_name, uint32_t max_vfs,
                  std::unique_ptr<SriovNicPlatform> platform, SriovNicOptions options);
  absl::Status Init(const config::SriovNicPool& config);
  std::string PciPath(const std::string& bdf, const std::string& leaf = "") const;
  absl::StatusOr<std::string> SoleGroup(const std::string& vf) const;
  absl::Status BindVfio(const std::string& vf);
  absl::StatusOr<VfInfo> Info(uint32_t slot);
  // Link down, FLR, MAC/VLAN/rate/spoofchk/trust restored, read back. kStillOpen if a
  // descriptor to the group or device lives.
  absl::StatusOr<TeardownResult> Restore(uint32_t slot, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Set(uint32_t slot, VfSetting::Kind kind, uint32_t value, const Mac& mac = {});
  absl::StatusOr<uint32_t> SlotOf(const journal::ExtentState& state) const;
  // Deletes every ntuple rule on the PF that steers to the VF (none if the PF has no table).
  absl::Status RemoveFlowRules(uint32_t slot);

  const std::string pool_name_;
  const uint32_t max_vfs_;
  std::unique_ptr<SriovNicPlatform> platform_;
  const SriovNicOptions options_;
  std::string pf_;            // PCI address
  std::string pf_interface_;
  int pf_ifindex_ = 0;
  std::vector<std::string> vfs_;  // PCI address of VF i
  absl::Status ntuple_;             // the PF's ntuple table, probed at Open: OK if it has one

  absl::Mutex mu_;  // one VF operation at a time (grants are rare; FLR ~100 ms)
  std::set<uint32_t> live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_SRIOV_NIC_H_
