// pci_nic: NIC leases as whole PCI network functions with no SR-IOV (virtio-net in VMs and
// clouds), handed to the tenant as VFIO descriptors. Slot i is the pool's pci_addresses[i].
//
// ProvisionNic(slot): a lease names no MAC, VLAN, TX rate or flow filter (the device is the
// tenant's whole; nothing sits between it and the wire to enforce one): such a request is
// INVALID_ARGUMENT (MAC, VLAN, rate) or UNIMPLEMENTED (filters). The function must be alone in
// its IOMMU group (else FAILED_PRECONDITION naming the members). The broker takes it from its
// kernel driver and binds it to vfio-pci (driver_override), opens the VFIO group itself (EBUSY:
// someone still holds it -> UNAVAILABLE), resets the function (VFIO_DEVICE_RESET) and reads the
// device's own MAC (PciNicPlatform::ReadMac: virtio-net's device configuration through VFIO;
// else the MAC its kernel netdev had, read from sysfs before the unbind). The descriptors the
// broker opened go to the tenant with that MAC.
//
// Teardown: cut-off proven by the group opening (EBUSY -> kStillOpen, the core retries and the
// slot stays out of use); the function is reset from the broker's own open, so the device
// forgets its queues and any MAC the tenant set through its control queue; the MAC is read back
// and must be the permanent one again (else FAILED_PRECONDITION: the slot is not offered).
// Readopt (restart): still alone in the journaled group and bound to vfio-pci. RemoveOrphans:
// a function no record names that is bound to vfio-pci (a crash's leftover, or bound by hand) is
// reset before it is offered; one whose group is held is marked and ProvisionNic resets it first
// or answers UNAVAILABLE.
//
// Every sysfs and device path is under a configurable root, so tests run on a fake tree; VFIO
// goes through PciNicPlatform. Thread-safe: one function operation at a time.
#ifndef VFBROKER_BROKER_BACKENDS_PCI_NIC_H_
#define VFBROKER_BROKER_BACKENDS_PCI_NIC_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "broker/backends/extent_backend.h"
#include "broker/backends/vfio_handout.h"
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"

namespace vfbroker {

using MacAddress = std::array<uint8_t, 6>;

class PciNicPlatform {
 public:
  virtual ~PciNicPlatform() = default;
  // As OpenVfioHandles: nullopt when the group is busy (EBUSY).
  virtual absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                              const std::string& group,
                                                              const std::string& pci_address) = 0;
  // VFIO_DEVICE_RESET on the device descriptor.
  virtual absl::Status ResetDevice(const VfioHandles& handles) = 0;
  // The device's own MAC as it reads now (just after a reset). UNIMPLEMENTED for a device kind
  // it cannot read (the backend then uses the MAC the kernel's netdev had).
  virtual absl::StatusOr<MacAddress> ReadMac(const VfioHandles& handles) = 0;
};

// VFIO through vfio_handout; ReadMac for modern virtio-net functions (virtio 1.2 4.1.4: the
// device-specific configuration structure, `mac` at offset 0, when VIRTIO_NET_F_MAC is offered).
std::unique_ptr<PciNicPlatform> MakeRealPciNicPlatform();

struct PciNicOptions {
  std::string sysfs_root = "/sys";
  std::string dev_root = "/dev";
  absl::Duration bind_timeout = absl::Seconds(5);  // function bound to vfio-pci
  absl::Duration poll_interval = absl::Milliseconds(20);
};

class PciNicBackend : public ExtentBackend {
 public:
  static absl::StatusOr<std::unique_ptr<PciNicBackend>> Open(
      const std::string& pool_name, const config::PciNicPool& config,
      std::unique_ptr<PciNicPlatform> platform, PciNicOptions options = {});

  std::string backend_name() const override { return "pci_nic"; }
  uint64_t capacity_bytes() const override { return functions_.size(); }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& request) override;
  absl::Status Readopt(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override;
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override;

  const std::string& pci_address(size_t slot) const { return functions_[slot]; }

 private:
  PciNicBackend(std::string pool_name, std::vector<std::string> functions,
                std::unique_ptr<PciNicPlatform> platform, PciNicOptions options);
  std::string PciPath(const std::string& bdf, const std::string& leaf = "") const;
  // The MAC of the function's kernel netdev, if it has one with a permanent address.
  std::optional<MacAddress> NetdevMac(const std::string& bdf) const;
  // Cut-off test (the group opens), function reset, MAC read back and compared with `expected`
  // if given. kStillOpen if a descriptor to the group or device lives.
  absl::StatusOr<TeardownResult> Reset(uint32_t slot, const std::optional<MacAddress>& expected,
                                       const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<MacAddress> MacAfterReset(uint32_t slot, const VfioHandles& handles)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint32_t> SlotOf(const journal::ExtentState& state) const;

  const std::string pool_name_;
  const std::vector<std::string> functions_;  // PCI address of slot i
  std::unique_ptr<PciNicPlatform> platform_;
  const PciNicOptions options_;

  absl::Mutex mu_;  // one function operation at a time (grants are rare; a reset ~100 ms)
  std::set<uint32_t> dirty_ ABSL_GUARDED_BY(mu_);  // must be reset before it is offered
  // The permanent MAC of each slot once known (from the device, or its netdev before unbind).
  std::map<uint32_t, MacAddress> known_mac_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_PCI_NIC_H_
