// A fake /sys tree for the PCI backends' unit tests (pci_nic, sriov_nic, nvme_sriov): PCI
// function directories, IOMMU groups with their links both ways, driver links, SR-IOV PF
// attributes and virtfn links, laid out as the kernel does so that pci_sysfs reads them as it
// reads the real one. The tree does not react to writes: a test that needs the kernel's side
// (a bind after drivers_probe, say) plays it itself.
//
// Not thread-safe for building; the files may be read and written from any thread.
#ifndef VFBROKER_BROKER_BACKENDS_FAKE_SYSFS_TEST_UTIL_H_
#define VFBROKER_BROKER_BACKENDS_FAKE_SYSFS_TEST_UTIL_H_

#include <string>

#include "absl/time/time.h"

namespace vfbroker {
namespace fake_sysfs {

// Replaces the file's contents with `text`.
void Write(const std::string& path, const std::string& text);
// The file's contents without trailing newlines ("" for a missing file).
std::string Read(const std::string& path);

class Tree {
 public:
  // An empty tree at $TEST_TMPDIR/<prefix>-<the running test's name> (whatever was there is
  // removed), with sys/bus/pci/drivers_probe and the vfio-pci driver's directory.
  explicit Tree(const std::string& prefix);

  // The directory holding sys/ (and the backends' dev/).
  const std::string& root() const { return root_; }
  std::string Pci(const std::string& bdf) const;  // <root>/sys/bus/pci/devices/<bdf>

  // Points a PCI backend's options (PciNicOptions, SriovNicOptions, NvmeSriovOptions) at this
  // tree (sysfs_root, dev_root) and makes its sysfs polls 1 ms apart.
  template <typename BackendOptions>
  void PointAtTree(BackendOptions* options) const {
    options->sysfs_root = root_ + "/sys";
    options->dev_root = root_ + "/dev";
    options->poll_interval = absl::Milliseconds(1);
  }

  // A PCI function's directory with its driver_override holding `driver_override`.
  void AddFunction(const std::string& bdf, const std::string& driver_override) const;
  // `bdf` alone in IOMMU group `group`: the group's devices/<bdf> link and the function's
  // iommu_group link.
  void PutInIommuGroup(const std::string& bdf, int group) const;
  // Another device in IOMMU group `group` (only the group's devices/<bdf> link).
  void AddIommuGroupMember(int group, const std::string& bdf) const;
  // The function's driver link to sys/bus/pci/drivers/<driver> (whose directory is made).
  void BindDriver(const std::string& bdf, const std::string& driver) const;
  // An SR-IOV PF's attributes: sriov_totalvfs, sriov_numvfs 0, sriov_drivers_autoprobe 1.
  void AddSriovPf(const std::string& pf, int total_vfs) const;
  // The PF's virtfn<index> link to VF `vf`, and the VF's function directory (driver_override
  // empty, as the kernel shows it).
  void AddVf(const std::string& pf, int index, const std::string& vf) const;

 private:
  std::string root_;
};

}  // namespace fake_sysfs
}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_FAKE_SYSFS_TEST_UTIL_H_
