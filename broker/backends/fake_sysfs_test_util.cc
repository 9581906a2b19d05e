#include "broker/backends/fake_sysfs_test_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "gtest/gtest.h"

namespace vfbroker {
namespace fake_sysfs {

namespace fs = std::filesystem;

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

Tree::Tree(const std::string& prefix) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  root_ = std::string(tmp != nullptr ? tmp : "/tmp") + "/" + prefix + "-" +
          ::testing::UnitTest::GetInstance()->current_test_info()->name();
  fs::remove_all(root_);
  fs::create_directories(root_ + "/sys/bus/pci/devices");
  fs::create_directories(root_ + "/sys/bus/pci/drivers/vfio-pci");
  Write(root_ + "/sys/bus/pci/drivers_probe", "");
}

std::string Tree::Pci(const std::string& bdf) const {
  return root_ + "/sys/bus/pci/devices/" + bdf;
}

void Tree::AddFunction(const std::string& bdf, const std::string& driver_override) const {
  fs::create_directories(Pci(bdf));
  Write(Pci(bdf) + "/driver_override", driver_override);
}

void Tree::AddIommuGroupMember(int group, const std::string& bdf) const {
  const std::string devices = root_ + "/sys/kernel/iommu_groups/" + std::to_string(group) +
                              "/devices";
  fs::create_directories(devices);
  fs::create_symlink("../../../../bus/pci/devices/" + bdf, devices + "/" + bdf);
}

void Tree::PutInIommuGroup(const std::string& bdf, int group) const {
  AddIommuGroupMember(group, bdf);
  fs::create_symlink("../../../../kernel/iommu_groups/" + std::to_string(group),
                     Pci(bdf) + "/iommu_group");
}

void Tree::BindDriver(const std::string& bdf, const std::string& driver) const {
  fs::create_directories(root_ + "/sys/bus/pci/drivers/" + driver);
  fs::create_symlink("../../drivers/" + driver, Pci(bdf) + "/driver");
}

void Tree::AddSriovPf(const std::string& pf, int total_vfs) const {
  fs::create_directories(Pci(pf));
  Write(Pci(pf) + "/sriov_totalvfs", std::to_string(total_vfs) + "\n");
  Write(Pci(pf) + "/sriov_numvfs", "0\n");
  Write(Pci(pf) + "/sriov_drivers_autoprobe", "1\n");
}

void Tree::AddVf(const std::string& pf, int index, const std::string& vf) const {
  AddFunction(vf, "\n");
  fs::create_symlink("../" + vf, Pci(pf) + "/virtfn" + std::to_string(index));
}

}  // namespace fake_sysfs
}  // namespace vfbroker
