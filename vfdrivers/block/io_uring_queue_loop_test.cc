// IoUringQueue on a real block device: a loop device with --direct-io=on over a /dev/shm file,
// which is what the broker's loop_extent backend hands tenants. Needs root (losetup); skips
// otherwise. The device is created and removed by the test.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "vfdrivers/block/io_uring_queue.h"
#include "vfdrivers/block/queue_test_util.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block {
namespace {

constexpr uint64_t kBackingBytes = 64 << 20;

// Runs a shell command; returns its stdout (trimmed), or an error naming the command.
absl::StatusOr<std::string> Run(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("popen: ", command));
  std::string out;
  char chunk[256];
  while (fgets(chunk, sizeof(chunk), pipe) != nullptr) out += chunk;
  int status = pclose(pipe);
  if (status != 0) return absl::InternalError(absl::StrCat("`", command, "` failed: ", status));
  return std::string(absl::StripAsciiWhitespace(out));
}

// A loop device over a fresh /dev/shm file, detached and deleted on destruction.
class LoopDevice {
 public:
  ~LoopDevice() {
    if (!device_.empty()) (void)Run("losetup -d " + device_);
    if (!backing_.empty()) unlink(backing_.c_str());
  }
  absl::Status Create() {
    backing_ = absl::StrCat("/dev/shm/io_uring_queue_loop_test.", getpid());
    int fd = open(backing_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return absl::ErrnoToStatus(errno, backing_);
    int ret = ftruncate(fd, kBackingBytes);
    close(fd);
    if (ret != 0) return absl::ErrnoToStatus(errno, "ftruncate");
    absl::StatusOr<std::string> dev = Run("losetup --direct-io=on --find --show " + backing_);
    if (!dev.ok()) return dev.status();
    device_ = *dev;
    return absl::OkStatus();
  }
  const std::string& device() const { return device_; }

 private:
  std::string backing_;
  std::string device_;
};

class IoUringQueueLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to create a loop device";
    absl::Status created = loop_.Create();
    if (!created.ok()) GTEST_SKIP() << "no loop device here: " << created;
  }
  LoopDevice loop_;
};

TEST_F(IoUringQueueLoopTest, GeometryComesFromTheBlockLayer) {
  int fd = open(loop_.device().c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd);
  close(fd);
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ((*queue)->geometry().size_bytes, kBackingBytes);
  EXPECT_EQ((*queue)->geometry().logical_block_size, 512u);
  EXPECT_FALSE((*queue)->writable());
}

TEST_F(IoUringQueueLoopTest, RandomOpsMatchTheModel) {
  int fd = open(loop_.device().c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  absl::StatusOr<memory::BufferPool> pool = memory::BufferPool::Allocate(8 * 512, 32);
  ASSERT_TRUE(pool.ok());
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd);
  close(fd);
  ASSERT_TRUE(queue.ok()) << queue.status();
  ASSERT_TRUE((*queue)->RegisterMemory(pool->region().base(), pool->region().size()).ok());
  testing::ModelCheckOptions options;
  options.ops = 20000;
  options.seed = 11;
  ASSERT_NO_FATAL_FAILURE(testing::CheckAgainstModel(**queue, *pool, options));

  // Past the end of the device is refused before it reaches the kernel.
  EXPECT_EQ((*queue)->Read(kBackingBytes, pool->Buffer(0), 512, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*queue)->WriteZeroes(kBackingBytes - 512, 1024, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IoUringQueueLoopTest, WriteZeroesAndFlushOnTheDevice) {
  int fd = open(loop_.device().c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  absl::StatusOr<memory::BufferPool> pool = memory::BufferPool::Allocate(1 << 20, 2);
  ASSERT_TRUE(pool.ok());
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd);
  close(fd);
  ASSERT_TRUE(queue.ok()) << queue.status();
  IoUringQueue& q = **queue;
  ASSERT_TRUE(q.RegisterMemory(pool->region().base(), pool->region().size()).ok());
  auto* a = static_cast<uint8_t*>(pool->Buffer(0));
  auto* b = static_cast<uint8_t*>(pool->Buffer(1));
  memset(a, 0xa5, 1 << 20);
  ASSERT_TRUE(testing::RunOne(q, q.Write(kBackingBytes - (1 << 20), a, 1 << 20, 0)).ok());
  ASSERT_TRUE(testing::RunOne(q, q.WriteZeroes(kBackingBytes - (1 << 20) + 4096, 8192, 1)).ok());
  ASSERT_TRUE(testing::RunOne(q, q.Flush(2)).ok());
  ASSERT_TRUE(testing::RunOne(q, q.Read(kBackingBytes - (1 << 20), b, 1 << 20, 3)).ok());
  for (uint32_t i = 0; i < (1u << 20); ++i) {
    ASSERT_EQ(b[i], (i >= 4096 && i < 4096 + 8192) ? 0 : 0xa5) << i;
  }
}

}  // namespace
}  // namespace vfdrivers::block
