#include "vfdrivers/vfio/vfio_device.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "common/unique_fd.h"
#include "gtest/gtest.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::vfio {
namespace {

using vfbroker::UniqueFd;

TEST(ValidatePciAddressTest, AcceptsCanonicalAddresses) {
  EXPECT_TRUE(ValidatePciAddress("0000:00:04.0").ok());
  EXPECT_TRUE(ValidatePciAddress("0000:3b:1f.7").ok());
  EXPECT_TRUE(ValidatePciAddress("ffff:ff:00.1").ok());
}

TEST(ValidatePciAddressTest, RejectsEverythingElse) {
  for (const char* bad :
       {"", "0000:00:04", "0000:00:04.8", "0000:00:20.0", "0000:00:04.0/../../x",
        "../../../etc", "0000:00:04.00", "0000-00-04.0", "0000:0G:04.0", "0000:00:0A.0",
        "00:04.0", " 0000:00:04.0"}) {
    EXPECT_EQ(ValidatePciAddress(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RefuseNoIommuGroupTest, RefusesNoIommuGroups) {
  absl::Status s = RefuseNoIommuGroup("/dev/vfio/noiommu-0");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("no-IOMMU"), absl::string_view::npos);
  EXPECT_EQ(RefuseNoIommuGroup("noiommu-12").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(RefuseNoIommuGroup("/dev/vfio/12").ok());
  EXPECT_TRUE(RefuseNoIommuGroup("/dev/vfio/devices/vfio0").ok());
  EXPECT_TRUE(RefuseNoIommuGroup("").ok());
}

class DetectIommuModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vfio_model_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    ASSERT_EQ(mkdir((root_ + "/vfio").c_str(), 0755), 0);
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + root_ + "'";
    (void)std::system(cmd.c_str());
  }
  void Touch(const std::string& rel) {
    UniqueFd fd(open((root_ + rel).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
  }
  std::string root_;
};

TEST_F(DetectIommuModelTest, Nothing) {
  IommuModel m = DetectIommuModel(root_);
  EXPECT_FALSE(m.container);
  EXPECT_FALSE(m.iommufd);
  EXPECT_FALSE(m.vfio_cdev);
  EXPECT_EQ(DescribeIommuModel(m), "no VFIO container");
}

TEST_F(DetectIommuModelTest, ContainerOnly) {
  Touch("/vfio/vfio");
  IommuModel m = DetectIommuModel(root_);
  EXPECT_TRUE(m.container);
  EXPECT_FALSE(m.iommufd);
  EXPECT_FALSE(m.vfio_cdev);
}

TEST_F(DetectIommuModelTest, IommufdAndCdev) {
  Touch("/vfio/vfio");
  Touch("/iommu");
  ASSERT_EQ(mkdir((root_ + "/vfio/devices").c_str(), 0755), 0);
  IommuModel m = DetectIommuModel(root_);
  EXPECT_TRUE(m.container);
  EXPECT_TRUE(m.iommufd);
  EXPECT_TRUE(m.vfio_cdev);
  EXPECT_NE(DescribeIommuModel(m).find("not supported yet"), std::string::npos);
}

TEST_F(DetectIommuModelTest, DevicesMustBeADirectory) {
  Touch("/vfio/devices");
  EXPECT_FALSE(DetectIommuModel(root_).vfio_cdev);
}

TEST(VfioDeviceAdoptTest, RejectsMissingFds) {
  auto d = VfioDevice::Adopt(UniqueFd(), UniqueFd(), UniqueFd());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

// Descriptors that are not VFIO at all (what a confused or hostile sender could pass): the
// first ioctl fails and the status names it and the errno.
TEST(VfioDeviceAdoptTest, NamesTheFailingIoctlForNonVfioFds) {
  auto open_null = [] { return UniqueFd(open("/dev/null", O_RDWR | O_CLOEXEC)); };
  auto d = VfioDevice::Adopt(open_null(), open_null(), open_null());
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("VFIO_GET_API_VERSION"), absl::string_view::npos)
      << d.status();
  EXPECT_NE(d.status().message().find("errno"), absl::string_view::npos) << d.status();
}

TEST(VfioDeviceOpenTest, RejectsBadAddressBeforeTouchingSysfs) {
  auto d = VfioDevice::OpenByPciAddress("../../../../dev/sda");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VfioDeviceOpenTest, DeviceWithoutIommuGroup) {
  // 0000:ff:1f.7 almost surely does not exist; with no IOMMU, no device has a group either.
  auto d = VfioDevice::OpenByPciAddress("ffff:ff:1f.7");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition) << d.status();
}

// Runs only where a real device is bound to vfio-pci behind an IOMMU (the QEMU guest), named
// by VFBROKER_VFIO_TEST_DEVICE, as root.
TEST(VfioDeviceRealTest, AdoptMapResetDma) {
  const char* addr = std::getenv("VFBROKER_VFIO_TEST_DEVICE");
  if (access("/dev/vfio/vfio", F_OK) != 0) GTEST_SKIP() << "no /dev/vfio/vfio on this host";
  if (addr == nullptr) GTEST_SKIP() << "VFBROKER_VFIO_TEST_DEVICE not set";
  auto d = VfioDevice::OpenByPciAddress(addr);
  ASSERT_TRUE(d.ok()) << d.status();
  VfioDevice& dev = **d;
  auto vendor = dev.ReadConfig16(0x00);
  ASSERT_TRUE(vendor.ok()) << vendor.status();
  EXPECT_NE(*vendor, 0xffff);
  ASSERT_TRUE(dev.EnableBusMastering().ok());
  EXPECT_TRUE(*dev.ReadConfig16(0x04) & 0x4);
  auto bar0 = dev.MapBar(0);
  ASSERT_TRUE(bar0.ok()) << bar0.status();
  EXPECT_TRUE((*bar0)->Read32(0).ok());
  EXPECT_EQ((*bar0)->Read32((*bar0)->size()).status().code(), absl::StatusCode::kOutOfRange);
  auto mem = vfdrivers::memory::MemoryRegion::Allocate(1 << 20);
  ASSERT_TRUE(mem.ok());
  auto map = dev.MapDma(*mem);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_NE(map->iova, 0u);
  EXPECT_TRUE(dev.UnmapDma(map->iova).ok());
  if (dev.supports_reset()) {
    EXPECT_TRUE(dev.Reset().ok());
  }
}

}  // namespace
}  // namespace vfdrivers::vfio
