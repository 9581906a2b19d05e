// Tests of the loop_extent backend against real loop devices. Needs root and /dev/loop-control;
// skips itself otherwise. Every device a test creates is removed in TearDown, even on failure.
#include "broker/backends/loop_extent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "broker/backends/loop_device.h"
#include "common/unique_fd.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr unsigned char kOutside = 0x5A;  // the pool's bytes around an extent
constexpr unsigned char kTenant = 0xC3;   // what a tenant writes

// A 4096-aligned buffer, as O_DIRECT needs.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) : size_(size) {
    void* raw = nullptr;
    if (::posix_memalign(&raw, 4096, size) != 0) std::abort();
    data_.reset(static_cast<unsigned char*>(raw));
  }
  unsigned char* data() { return data_.get(); }
  size_t size() const { return size_; }
  void Fill(unsigned char value) { std::memset(data_.get(), value, size_); }
  bool All(unsigned char value, size_t length) const {
    return std::all_of(data_.get(), data_.get() + length,
                       [value](unsigned char c) { return c == value; });
  }
  bool Contains(unsigned char value, size_t length) const {
    return std::find(data_.get(), data_.get() + length, value) != data_.get() + length;
  }

 private:
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  size_t size_;
  std::unique_ptr<unsigned char, Free> data_;
};

bool DeviceExists(int index) {
  struct stat st;
  return ::stat(absl::StrCat("/sys/block/loop", index).c_str(), &st) == 0;
}

uint64_t DeviceSize(int fd) {
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return 0;
  return size;
}

class LoopExtentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || ::access("/dev/loop-control", F_OK) != 0) {
      GTEST_SKIP() << "needs root and /dev/loop-control";
    }
    std::string templ = "/dev/shm/vfbroker_loop_test.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      templ = "/tmp/vfbroker_loop_test.XXXXXX";
      ASSERT_NE(::mkdtemp(templ.data()), nullptr) << std::strerror(errno);
    }
    dir_ = templ;
  }

  void TearDown() override {
    if (dir_.empty()) return;
    backends_.clear();  // drop the broker's held descriptors first
    RemoveDevicesUnder(dir_);
    // Devices a test left unbound (scrubbed, not yet removed) or created itself. The kernel
    // refuses to remove any that is bound or open, so nobody else's can go.
    for (int index : unbound_) {
      absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(index);
      if (binding.ok() && *binding == loopdev::Binding::kUnbound) {
        (void)loopdev::RemoveIfUnused(index, absl::Seconds(1));
      }
    }
    for (const std::string& file : files_) ::unlink(file.c_str());
    ::rmdir(dir_.c_str());
  }

  // Removes every loop device backed by a file under `dir`, and every device stacked on those,
  // deepest first.
  static void RemoveDevicesUnder(const std::string& dir) {
    for (int round = 0; round < 8; ++round) {
      absl::StatusOr<std::vector<int>> devices = loopdev::ListDevices();
      if (!devices.ok()) return;
      std::set<std::string> ours;
      std::vector<std::pair<int, std::string>> bound;
      for (int index : *devices) {
        absl::StatusOr<loopdev::DeviceState> state = loopdev::ReadState(index);
        if (!state.ok() || !state->bound) continue;
        bound.emplace_back(index, state->backing_file);
        if (absl::StartsWith(state->backing_file, dir + "/")) {
          ours.insert(loopdev::DevicePath(index));
        }
      }
      for (bool grew = true; grew;) {
        grew = false;
        for (const auto& [index, backing] : bound) {
          if (ours.count(backing) && !ours.count(loopdev::DevicePath(index))) {
            ours.insert(loopdev::DevicePath(index));
            grew = true;
          }
        }
      }
      if (ours.empty()) return;
      // Leaves first: devices nothing else is stacked on.
      for (const auto& [index, backing] : bound) {
        const std::string path = loopdev::DevicePath(index);
        if (!ours.count(path)) continue;
        bool has_child = std::any_of(bound.begin(), bound.end(), [&](const auto& other) {
          return other.second == path;
        });
        if (!has_child) (void)loopdev::DetachAndRemove(index, UniqueFd(), absl::Seconds(1));
      }
    }
  }

  // A pool file of `size` bytes under dir_, filled with kOutside.
  std::string MakePoolFile(const std::string& name, uint64_t size) {
    const std::string path = dir_ + "/" + name;
    files_.push_back(path);
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_TRUE(fd.valid());
    std::vector<unsigned char> chunk(kMiB, kOutside);
    for (uint64_t at = 0; at < size; at += kMiB) {
      EXPECT_EQ(::pwrite(fd.get(), chunk.data(), std::min<uint64_t>(kMiB, size - at), at),
                static_cast<ssize_t>(std::min<uint64_t>(kMiB, size - at)));
    }
    return path;
  }

  LoopExtentBackend* OpenBackend(const std::string& pool, const std::string& path,
                                 uint64_t size = 0) {
    config::LoopExtentPool config;
    config.set_backing_path(path);
    config.set_size_bytes(size);
    absl::StatusOr<std::unique_ptr<LoopExtentBackend>> backend =
        LoopExtentBackend::Open(pool, config);
    EXPECT_TRUE(backend.ok()) << backend.status();
    if (!backend.ok()) return nullptr;
    backends_.push_back(std::move(*backend));
    return backends_.back().get();
  }

  // Reads [offset, offset+length) of a file with ordinary (cached) I/O.
  static std::vector<unsigned char> ReadFileRange(const std::string& path, uint64_t offset,
                                                  uint64_t length) {
    std::vector<unsigned char> data(length);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(::pread(fd.get(), data.data(), length, offset), static_cast<ssize_t>(length));
    return data;
  }

  static bool RangeIs(const std::string& path, uint64_t offset, uint64_t length,
                      unsigned char value) {
    std::vector<unsigned char> data = ReadFileRange(path, offset, length);
    return std::all_of(data.begin(), data.end(), [value](unsigned char c) { return c == value; });
  }

  // Fills the whole device behind `fd` with `value` through O_DIRECT writes.
  static void FillDevice(int fd, unsigned char value) {
    const uint64_t size = DeviceSize(fd);
    AlignedBuffer buffer(kMiB);
    buffer.Fill(value);
    for (uint64_t at = 0; at < size; at += kMiB) {
      const size_t n = std::min<uint64_t>(kMiB, size - at);
      ASSERT_EQ(::pwrite(fd, buffer.data(), n, at), static_cast<ssize_t>(n));
    }
  }

  // Remembers an extent's devices for TearDown, should the test stop between scrub and removal.
  void Track(const ProvisionedExtent& extent) {
    unbound_.push_back(extent.state.loop_extent().inner_loop_index());
    unbound_.push_back(extent.state.loop_extent().outer_loop_index());
  }

  static loopdev::Binding BindingOf(int index) {
    absl::StatusOr<loopdev::Binding> binding = loopdev::GetBinding(index);
    EXPECT_TRUE(binding.ok()) << binding.status();
    return binding.ok() ? *binding : loopdev::Binding::kGone;
  }

  std::string dir_;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<LoopExtentBackend>> backends_;
  std::vector<int> unbound_;
};

TEST_F(LoopExtentTest, ProvisionedExtentMapsOntoItsRangeOfTheBackingFile) {
  const std::string pool = MakePoolFile("pool.img", 32 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->capacity_bytes(), 32 * kMiB);
  const uint64_t offset = 8 * kMiB, size = 4 * kMiB;
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  const int inner = extent->state.loop_extent().inner_loop_index(), outer = extent->state.loop_extent().outer_loop_index();
  EXPECT_EQ(extent->device_path, loopdev::DevicePath(outer));
  EXPECT_EQ(extent->state.loop_extent().offset_bytes(), offset);
  EXPECT_EQ(extent->state.loop_extent().size_bytes(), size);
  EXPECT_TRUE(extent->logical_block_size == 512 || extent->logical_block_size == 4096);
  const int fd = extent->fds[0].fd.get();
  EXPECT_EQ(DeviceSize(fd), size);
  EXPECT_NE(::fcntl(fd, F_GETFL) & O_DIRECT, 0);
  EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(::fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);

  absl::StatusOr<loopdev::DeviceState> inner_state = loopdev::ReadState(inner);
  ASSERT_TRUE(inner_state.ok());
  EXPECT_TRUE(inner_state->bound);
  EXPECT_EQ(inner_state->offset_bytes, offset);
  EXPECT_EQ(inner_state->size_limit_bytes, size);
  absl::StatusOr<loopdev::DeviceState> outer_state = loopdev::ReadState(outer);
  ASSERT_TRUE(outer_state.ok());
  EXPECT_EQ(outer_state->backing_file, loopdev::DevicePath(inner));

  AlignedBuffer block(4096);
  block.Fill(0x11);
  ASSERT_EQ(::pwrite(fd, block.data(), 4096, 0), 4096);
  block.Fill(0x22);
  ASSERT_EQ(::pwrite(fd, block.data(), 4096, size - 4096), 4096);
  block.Fill(0);
  ASSERT_EQ(::pread(fd, block.data(), 4096, 0), 4096);
  EXPECT_TRUE(block.All(0x11, 4096));
  ASSERT_EQ(::pread(fd, block.data(), 4096, size - 4096), 4096);
  EXPECT_TRUE(block.All(0x22, 4096));

  EXPECT_TRUE(RangeIs(pool, offset, 4096, 0x11));
  EXPECT_TRUE(RangeIs(pool, offset + size - 4096, 4096, 0x22));
  EXPECT_TRUE(RangeIs(pool, offset - 4096, 4096, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, 4096, kOutside));

  extent->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
}

TEST_F(LoopExtentTest, TenantCannotReachOutsideItsExtent) {
  const std::string pool = MakePoolFile("pool.img", 24 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  const uint64_t offset = 8 * kMiB, size = 8 * kMiB;
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  const int fd = extent->fds[0].fd.get();
  FillDevice(fd, kTenant);

  // Past the end: reads return 0 bytes, writes fail or write nothing.
  AlignedBuffer buffer(2 * 4096);
  EXPECT_EQ(::pread(fd, buffer.data(), 4096, size), 0);
  EXPECT_EQ(::pread(fd, buffer.data(), 8192, size - 4096), 4096);
  EXPECT_TRUE(buffer.All(kTenant, 4096));
  buffer.Fill(0xEE);
  EXPECT_LE(::pwrite(fd, buffer.data(), 4096, size), 0);
  EXPECT_LE(::pwrite(fd, buffer.data(), 4096, 64 * kMiB), 0);

  // Re-aiming the outer device: whatever the kernel accepts, the device can show and change
  // only bytes of the inner device, i.e. of the extent.
  struct Aim {
    uint64_t offset, size_limit;
  };
  const Aim aims[] = {{0, 1ull << 40},          {0, 0},
                      {size - 4096, 0},         {size - 4096, 1ull << 30},
                      {size, 0},                {size + 4096, 0},
                      {~0ull - 4095, 0},        {1ull << 62, 1ull << 62},
                      {4096, size + 16 * kMiB}};
  AlignedBuffer whole(size + kMiB);
  for (const Aim& aim : aims) {
    SCOPED_TRACE(absl::StrCat("lo_offset=", aim.offset, " lo_sizelimit=", aim.size_limit));
    struct loop_info64 info;
    std::memset(&info, 0, sizeof(info));
    info.lo_offset = aim.offset;
    info.lo_sizelimit = aim.size_limit;
    const int rc = ::ioctl(fd, LOOP_SET_STATUS64, &info);  // the tenant may re-aim, within
    const uint64_t visible = DeviceSize(fd);
    EXPECT_LE(visible, size);
    if (aim.offset == size - 4096 && aim.size_limit == 0) {
      // The re-aim really takes effect (so the checks here are not vacuous): 4 KiB are left.
      EXPECT_EQ(rc, 0) << std::strerror(errno);
      EXPECT_EQ(visible, 4096u);
    }
    const ssize_t n = ::pread(fd, whole.data(), whole.size(), 0);
    EXPECT_LE(n, static_cast<ssize_t>(size));
    if (n > 0) {
      EXPECT_FALSE(whole.Contains(kOutside, n));
    }
    // Try to write a larger span than the extent, at its start and at offsets around its end.
    whole.Fill(0xEE);
    (void)::pwrite(fd, whole.data(), whole.size(), 0);
    for (uint64_t at : {size - 4096, size, size + 4096, 2 * size}) {
      (void)::pwrite(fd, whole.data(), 8192, at);
    }
    EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
    EXPECT_TRUE(RangeIs(pool, offset + size, 24 * kMiB - offset - size, kOutside));
  }

  // Other ways to re-point the outer device at the pool itself all fail while it is bound.
  UniqueFd pool_fd(::open(pool.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(pool_fd.valid());
  EXPECT_NE(::ioctl(fd, LOOP_CHANGE_FD, pool_fd.get()), 0);
  EXPECT_NE(::ioctl(fd, LOOP_SET_FD, pool_fd.get()), 0);
  struct loop_config config;
  std::memset(&config, 0, sizeof(config));
  config.fd = pool_fd.get();
  EXPECT_NE(::ioctl(fd, LOOP_CONFIGURE, &config), 0);
  absl::StatusOr<loopdev::DeviceState> outer_state =
      loopdev::ReadState(extent->state.loop_extent().outer_loop_index());
  ASSERT_TRUE(outer_state.ok());
  EXPECT_EQ(outer_state->backing_file,
            loopdev::DevicePath(extent->state.loop_extent().inner_loop_index()));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, 24 * kMiB - offset - size, kOutside));

  extent->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, 24 * kMiB - offset - size, kOutside));
}

TEST_F(LoopExtentTest, TenantClrFdDoesNotDetachWhileTheBrokerHoldsTheDevice) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(2 * kMiB, 2 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  const int outer = extent->state.loop_extent().outer_loop_index();
  EXPECT_EQ(::ioctl(extent->fds[0].fd.get(), LOOP_CLR_FD, 0), 0);  // accepted, only deferred
  AlignedBuffer block(4096);
  block.Fill(kTenant);
  EXPECT_EQ(::pwrite(extent->fds[0].fd.get(), block.data(), 4096, 0), 4096);
  extent->fds[0].fd.reset();  // the tenant's last close: the broker's descriptor remains
  absl::StatusOr<loopdev::DeviceState> state = loopdev::ReadState(outer);
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->bound);
  EXPECT_EQ(state->backing_file, loopdev::DevicePath(extent->state.loop_extent().inner_loop_index()));
  absl::StatusOr<UniqueFd> reopened = loopdev::Open(outer, O_RDWR | O_DIRECT);
  ASSERT_TRUE(reopened.ok());
  block.Fill(0);
  EXPECT_EQ(::pread(reopened->get(), block.data(), 4096, 0), 4096);
  EXPECT_TRUE(block.All(kTenant, 4096));
  reopened->reset();

  absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_FALSE(DeviceExists(outer));
}

TEST_F(LoopExtentTest, TeardownQuarantinesWhileTheTenantHoldsItsDescriptor) {
  const uint64_t pool_size = 128 * kMiB, offset = 32 * kMiB, size = 64 * kMiB;
  const std::string pool = MakePoolFile("pool.img", pool_size);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  const int inner = extent->state.loop_extent().inner_loop_index(), outer = extent->state.loop_extent().outer_loop_index();
  FillDevice(extent->fds[0].fd.get(), kTenant);

  // Held open: nothing is scrubbed, the tenant still reaches its data, retries agree.
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, TeardownResult::kStillOpen);
  }
  EXPECT_TRUE(RangeIs(pool, offset, size, kTenant));
  EXPECT_TRUE(DeviceExists(inner));
  EXPECT_TRUE(DeviceExists(outer));
  AlignedBuffer block(4096);
  ASSERT_EQ(::pread(extent->fds[0].fd.get(), block.data(), 4096, size - 4096), 4096);
  EXPECT_TRUE(block.All(kTenant, 4096));

  extent->fds[0].fd.reset();
  const absl::Time start = absl::Now();
  absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  std::printf("teardown of a %llu MiB extent on %s: %lld ms\n",
              static_cast<unsigned long long>(size / kMiB), dir_.c_str(),
              static_cast<long long>(absl::ToInt64Milliseconds(took)));
  RecordProperty("teardown_64MiB_ms", static_cast<int>(absl::ToInt64Milliseconds(took)));

  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, pool_size - offset - size, kOutside));
  EXPECT_FALSE(DeviceExists(inner));
  EXPECT_FALSE(DeviceExists(outer));

  // Idempotent.
  result = backend->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, pool_size - offset - size, kOutside));
}

TEST_F(LoopExtentTest, ScrubForReuseFreesTheRangeAtOnceAndLeavesOnlyUnboundDevices) {
  const uint64_t pool_size = 64 * kMiB, offset = 16 * kMiB, size = 32 * kMiB;
  const std::string pool = MakePoolFile("pool.img", pool_size);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  Track(*extent);
  const int inner = extent->state.loop_extent().inner_loop_index(), outer = extent->state.loop_extent().outer_loop_index();
  FillDevice(extent->fds[0].fd.get(), kTenant);
  extent->fds[0].fd.reset();

  absl::Time start = absl::Now();
  absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
  const absl::Duration scrub_took = absl::Now() - start;
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kScrubbed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  EXPECT_TRUE(RangeIs(pool, offset + size, pool_size - offset - size, kOutside));
  // Both devices are still there, but unbound: they reach nothing.
  EXPECT_EQ(BindingOf(inner), loopdev::Binding::kUnbound);
  EXPECT_EQ(BindingOf(outer), loopdev::Binding::kUnbound);
  // Idempotent before the removal, too.
  result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kScrubbed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));

  start = absl::Now();
  std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
  const absl::Duration remove_took = absl::Now() - start;
  ASSERT_EQ(removed.size(), 1u);
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_FALSE(DeviceExists(inner));
  EXPECT_FALSE(DeviceExists(outer));
  std::printf("32 MiB extent on %s: cut off + scrub %lld ms, then device removal %lld ms\n",
              dir_.c_str(), static_cast<long long>(absl::ToInt64Milliseconds(scrub_took)),
              static_cast<long long>(absl::ToInt64Milliseconds(remove_took)));
  RecordProperty("scrub_for_reuse_32MiB_ms",
                 static_cast<int>(absl::ToInt64Milliseconds(scrub_took)));
  RecordProperty("remove_devices_ms", static_cast<int>(absl::ToInt64Milliseconds(remove_took)));

  // Idempotent after it.
  removed = backend->RemoveDevices({extent->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
}

TEST_F(LoopExtentTest, HeldDescriptorKeepsTheSliceQuarantinedUntilItsLastClose) {
  const uint64_t offset = 4 * kMiB, size = 8 * kMiB;
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  Track(*extent);
  const int inner = extent->state.loop_extent().inner_loop_index(), outer = extent->state.loop_extent().outer_loop_index();
  FillDevice(extent->fds[0].fd.get(), kTenant);
  // The descriptor lives on in another process (here: a dup, as SCM_RIGHTS would make one).
  UniqueFd passed(::dup(extent->fds[0].fd.get()));
  ASSERT_TRUE(passed.valid());
  extent->fds[0].fd.reset();

  for (int attempt = 0; attempt < 3; ++attempt) {
    absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, TeardownResult::kStillOpen);
  }
  EXPECT_TRUE(RangeIs(pool, offset, size, kTenant)) << "nothing may be scrubbed yet";
  EXPECT_EQ(BindingOf(outer), loopdev::Binding::kBound);
  EXPECT_EQ(BindingOf(inner), loopdev::Binding::kBound);
  AlignedBuffer block(4096);
  ASSERT_EQ(::pread(passed.get(), block.data(), 4096, size - 4096), 4096);
  EXPECT_TRUE(block.All(kTenant, 4096));

  passed.reset();  // the last descriptor: the outer device detaches in this close
  EXPECT_EQ(BindingOf(outer), loopdev::Binding::kUnbound);
  absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kScrubbed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_FALSE(DeviceExists(inner));
  EXPECT_FALSE(DeviceExists(outer));
}

TEST_F(LoopExtentTest, HolderWhoDetachesTheOuterItselfNeverReachesTheScrubbedRange) {
  const uint64_t offset = 4 * kMiB, size = 4 * kMiB;
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  Track(*extent);
  const int outer = extent->state.loop_extent().outer_loop_index();
  FillDevice(extent->fds[0].fd.get(), kTenant);
  // First attempt: the tenant holds on, the broker lets go of its own descriptor.
  absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(*result, TeardownResult::kStillOpen);
  // Now the only holder, the tenant asks for the detach itself and keeps its descriptor.
  EXPECT_EQ(::ioctl(extent->fds[0].fd.get(), LOOP_CLR_FD, 0), 0);
  AlignedBuffer block(4096);
  block.Fill(0xEE);
  result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  if (*result == TeardownResult::kStillOpen) {
    // 6.11+: the detach waits for the tenant's close ("rundown"); sysfs still says bound.
    std::printf("kernel defers a sole opener's LOOP_CLR_FD to its close\n");
    EXPECT_EQ(BindingOf(outer), loopdev::Binding::kBound);
    EXPECT_TRUE(RangeIs(pool, offset, size, kTenant)) << "nothing may be scrubbed yet";
    (void)!::pwrite(extent->fds[0].fd.get(), block.data(), 4096, 0);
    extent->fds[0].fd.reset();
    result = backend->ScrubForReuse(extent->state);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, TeardownResult::kScrubbed);
    EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  } else {
    // 6.1: detached at once, while the tenant still holds a descriptor to the (now unbound)
    // outer device. The slice is free; that descriptor reaches nothing.
    std::printf("kernel detaches at once for a sole opener's LOOP_CLR_FD\n");
    ASSERT_EQ(*result, TeardownResult::kScrubbed);
    EXPECT_EQ(BindingOf(outer), loopdev::Binding::kUnbound);
    EXPECT_TRUE(RangeIs(pool, offset, size, 0));
    EXPECT_LE(::pwrite(extent->fds[0].fd.get(), block.data(), 4096, 0), 0);
    EXPECT_LE(::pread(extent->fds[0].fd.get(), block.data(), 4096, 0), 0);
    EXPECT_TRUE(RangeIs(pool, offset, size, 0));
    std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
    ASSERT_TRUE(removed[0].ok()) << removed[0].status();
    EXPECT_EQ(*removed[0], RemovalResult::kStillHeld) << "its removal waits for the close";
    EXPECT_TRUE(DeviceExists(outer));
    extent->fds[0].fd.reset();
  }
  std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_FALSE(DeviceExists(outer));
  EXPECT_FALSE(DeviceExists(extent->state.loop_extent().inner_loop_index()));
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
}

TEST_F(LoopExtentTest, InnerDeviceHeldElsewhereKeepsTheSliceQuarantinedAndIsScrubbedAgain) {
  const uint64_t offset = 4 * kMiB, size = 4 * kMiB;
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(offset, size);
  ASSERT_TRUE(extent.ok()) << extent.status();
  Track(*extent);
  const int inner = extent->state.loop_extent().inner_loop_index();
  extent->fds[0].fd.reset();
  // A privileged process holds the inner device (only root can open it).
  absl::StatusOr<UniqueFd> other = loopdev::Open(inner, O_RDWR | O_DIRECT);
  ASSERT_TRUE(other.ok()) << other.status();

  absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kStillOpen) << "nobody else may hold it across the scrub";
  EXPECT_EQ(BindingOf(inner), loopdev::Binding::kBound);
  // What it writes after the scrub ...
  AlignedBuffer block(4096);
  block.Fill(kTenant);
  ASSERT_EQ(::pwrite(other->get(), block.data(), 4096, 0), 4096);
  other->reset();  // ... and its close, the last one, detaches the inner device.
  EXPECT_EQ(BindingOf(inner), loopdev::Binding::kUnbound);
  // ... does not survive the retry, which zeroes the range directly.
  result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kScrubbed);
  EXPECT_TRUE(RangeIs(pool, offset, size, 0));
  EXPECT_TRUE(RangeIs(pool, 0, offset, kOutside));
  std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_FALSE(DeviceExists(inner));
}

TEST_F(LoopExtentTest, CrashBetweenScrubAndRemovalLeavesNothingBehindAfterRestart) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* first = OpenBackend("p0", pool);
  ASSERT_NE(first, nullptr);
  absl::StatusOr<ProvisionedExtent> dead = first->Provision(0, 4 * kMiB);
  ASSERT_TRUE(dead.ok()) << dead.status();
  Track(*dead);
  absl::StatusOr<ProvisionedExtent> live = first->Provision(4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(live.ok()) << live.status();
  FillDevice(dead->fds[0].fd.get(), kTenant);
  FillDevice(live->fds[0].fd.get(), 0x77);
  dead->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = first->ScrubForReuse(dead->state);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(*result, TeardownResult::kScrubbed);
  // Someone else's unbound device, which nothing below may touch.
  absl::StatusOr<int> foreign = loopdev::CreateFresh();
  ASSERT_TRUE(foreign.ok()) << foreign.status();
  unbound_.push_back(*foreign);

  backends_.clear();  // the broker dies before removing the dead slice's devices
  LoopExtentBackend* second = OpenBackend("p0", pool);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->Readopt(live->state).ok());
  // The orphan sweep only knows bound devices: the dead slice's unbound ones cannot be told
  // apart from anyone else's by the kernel, so it leaves them.
  EXPECT_TRUE(second->RemoveOrphans({live->state}).ok());
  EXPECT_EQ(BindingOf(dead->state.loop_extent().inner_loop_index()), loopdev::Binding::kUnbound);
  EXPECT_EQ(BindingOf(dead->state.loop_extent().outer_loop_index()), loopdev::Binding::kUnbound);
  // The journal names them (freed once, not twice): removed at start.
  std::vector<absl::StatusOr<RemovalResult>> removed = second->RemoveDevices({dead->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_FALSE(DeviceExists(dead->state.loop_extent().inner_loop_index()));
  EXPECT_FALSE(DeviceExists(dead->state.loop_extent().outer_loop_index()));
  EXPECT_TRUE(DeviceExists(*foreign));
  EXPECT_TRUE(RangeIs(pool, 0, 4 * kMiB, 0));
  // The live extent is untouched and still works.
  AlignedBuffer block(4096);
  ASSERT_EQ(::pread(live->fds[0].fd.get(), block.data(), 4096, 0), 4096);
  EXPECT_TRUE(block.All(0x77, 4096));
  EXPECT_TRUE(RangeIs(pool, 4 * kMiB, 4 * kMiB, 0x77));

  // A state with only one device left to remove (the core passes -1 for the other).
  journal::LoopExtentState half = dead->state.loop_extent();
  half.set_inner_loop_index(-1);
  removed = second->RemoveDevices({half});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);

  live->fds[0].fd.reset();
  result = second->Teardown(live->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(DeviceExists(*foreign));
}

TEST_F(LoopExtentTest, DeadDeviceSomeoneBindsAgainIsLeftToThem) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  const std::string theirs = MakePoolFile("theirs.img", kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(0, 4 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  Track(*extent);
  const int outer = extent->state.loop_extent().outer_loop_index();
  extent->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(*result, TeardownResult::kScrubbed);
  // Like losetup -f (LOOP_CTL_GET_FREE picks unbound devices), someone binds the dead outer.
  UniqueFd their_file(::open(theirs.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(their_file.valid());
  {
    absl::StatusOr<UniqueFd> fd = loopdev::Open(outer, O_RDWR);
    ASSERT_TRUE(fd.ok()) << fd.status();
    ASSERT_TRUE(loopdev::Bind(fd->get(), outer, their_file.get(), loopdev::BindOptions()).ok());
  }
  std::vector<absl::StatusOr<RemovalResult>> removed = backend->RemoveDevices({extent->state});
  ASSERT_TRUE(removed[0].ok()) << removed[0].status();
  EXPECT_EQ(*removed[0], RemovalResult::kRemoved);
  EXPECT_EQ(BindingOf(outer), loopdev::Binding::kBound) << "theirs now: left alone";
  EXPECT_FALSE(DeviceExists(extent->state.loop_extent().inner_loop_index()));
  // A retry of the teardown does not touch it either, and the range stays zero.
  result = backend->ScrubForReuse(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(BindingOf(outer), loopdev::Binding::kBound);
  EXPECT_TRUE(RangeIs(pool, 0, 4 * kMiB, 0));
  absl::StatusOr<loopdev::RemoveOutcome> gone =
      loopdev::DetachAndRemove(outer, UniqueFd(), absl::Seconds(1));
  EXPECT_TRUE(gone.ok() && *gone == loopdev::RemoveOutcome::kRemoved);
}

TEST_F(LoopExtentTest, ScrubOfAFilePoolGivesTheSpaceBack) {
  const std::string pool = dir_ + "/sparse.img";
  files_.push_back(pool);
  config::LoopExtentPool config;
  config.set_backing_path(pool);
  config.set_size_bytes(64 * kMiB);
  config.set_create(true);
  absl::StatusOr<std::unique_ptr<LoopExtentBackend>> backend =
      LoopExtentBackend::Open("sparse", config);
  ASSERT_TRUE(backend.ok()) << backend.status();
  struct stat st;
  ASSERT_EQ(::stat(pool.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(64 * kMiB));
  EXPECT_EQ(st.st_blocks, 0);  // created sparse
  absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(0, 16 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  FillDevice(extent->fds[0].fd.get(), kTenant);
  ASSERT_EQ(::stat(pool.c_str(), &st), 0);
  EXPECT_GE(st.st_blocks * 512, static_cast<blkcnt_t>(16 * kMiB));
  extent->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = (*backend)->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  ASSERT_EQ(::stat(pool.c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, static_cast<blkcnt_t>(kMiB));
  EXPECT_TRUE(RangeIs(pool, 0, 16 * kMiB, 0));
}

TEST_F(LoopExtentTest, ReadoptOnAFreshBackendAfterARestart) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* first = OpenBackend("p0", pool);
  ASSERT_NE(first, nullptr);
  absl::StatusOr<ProvisionedExtent> a = first->Provision(0, 4 * kMiB);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<ProvisionedExtent> b = first->Provision(4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(b.ok()) << b.status();
  b->fds[0].fd.reset();
  backends_.clear();  // the broker exits: its held descriptors close, the tenant keeps its own

  // The devices outlive the broker.
  absl::StatusOr<loopdev::DeviceState> outer_state =
      loopdev::ReadState(a->state.loop_extent().outer_loop_index());
  ASSERT_TRUE(outer_state.ok());
  EXPECT_TRUE(outer_state->bound);

  LoopExtentBackend* second = OpenBackend("p0", pool);
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->Readopt(a->state).ok());
  EXPECT_TRUE(second->Readopt(a->state).ok());  // already held: no-op
  EXPECT_TRUE(second->Readopt(b->state).ok());

  // Journal states that do not match the devices.
  journal::LoopExtentState wrong = a->state.loop_extent();
  wrong.set_offset_bytes(8 * kMiB);
  EXPECT_EQ(second->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = a->state.loop_extent();
  wrong.set_size_bytes(8 * kMiB);
  EXPECT_EQ(second->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = a->state.loop_extent();
  wrong.set_inner_loop_index(b->state.loop_extent().inner_loop_index());
  wrong.set_outer_loop_index(b->state.loop_extent().outer_loop_index() + 1000);
  EXPECT_EQ(second->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = a->state.loop_extent();
  wrong.set_inner_loop_index(b->state.loop_extent().inner_loop_index());  // a's outer is not over b's inner
  wrong.set_outer_loop_index(a->state.loop_extent().outer_loop_index());
  LoopExtentBackend* third = OpenBackend("p0", pool);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(third->Readopt(wrong).code(), absl::StatusCode::kFailedPrecondition);
  wrong = a->state.loop_extent();
  wrong.set_inner_loop_index(wrong.outer_loop_index());
  EXPECT_EQ(third->Readopt(wrong).code(), absl::StatusCode::kInvalidArgument);

  // A device tampered with after the journal was written: the inner re-aimed by someone.
  {
    absl::StatusOr<UniqueFd> inner = loopdev::Open(b->state.loop_extent().inner_loop_index(), O_RDWR);
    ASSERT_TRUE(inner.ok());
    struct loop_info64 info;
    std::memset(&info, 0, sizeof(info));
    info.lo_offset = b->state.loop_extent().offset_bytes() + 4096;
    info.lo_sizelimit = b->state.loop_extent().size_bytes();
    ASSERT_EQ(::ioctl(inner->get(), LOOP_SET_STATUS64, &info), 0);
    EXPECT_EQ(third->Readopt(b->state).code(), absl::StatusCode::kFailedPrecondition);
    // Teardown refuses to free a range a re-aimed device of ours still reaches.
    absl::StatusOr<TeardownResult> refused = second->Teardown(b->state);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    info.lo_offset = b->state.loop_extent().offset_bytes();
    ASSERT_EQ(::ioctl(inner->get(), LOOP_SET_STATUS64, &info), 0);
  }
  absl::StatusOr<TeardownResult> result = second->Teardown(b->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);

  // The re-adopted hold works like the original one: the tenant's LOOP_CLR_FD stays deferred.
  AlignedBuffer block(4096);
  block.Fill(kTenant);
  ASSERT_EQ(::pwrite(a->fds[0].fd.get(), block.data(), 4096, 0), 4096);
  EXPECT_EQ(::ioctl(a->fds[0].fd.get(), LOOP_CLR_FD, 0), 0);
  a->fds[0].fd.reset();
  outer_state = loopdev::ReadState(a->state.loop_extent().outer_loop_index());
  ASSERT_TRUE(outer_state.ok());
  EXPECT_TRUE(outer_state->bound);
  EXPECT_TRUE(RangeIs(pool, 0, 4096, kTenant));
  result = second->Teardown(a->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(RangeIs(pool, 0, 8 * kMiB, 0));
  EXPECT_TRUE(RangeIs(pool, 8 * kMiB, 8 * kMiB, kOutside));

  // Gone devices cannot be re-adopted.
  EXPECT_EQ(second->Readopt(a->state).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(LoopExtentTest, RemoveOrphansRemovesUnjournaledExtentsOnly) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  const std::string other_pool = MakePoolFile("other.img", 4 * kMiB);
  LoopExtentBackend* first = OpenBackend("p0", pool);
  LoopExtentBackend* other = OpenBackend("p1", other_pool);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(other, nullptr);
  absl::StatusOr<ProvisionedExtent> kept = first->Provision(0, 4 * kMiB);
  ASSERT_TRUE(kept.ok()) << kept.status();
  absl::StatusOr<ProvisionedExtent> orphan = first->Provision(4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(orphan.ok()) << orphan.status();
  absl::StatusOr<ProvisionedExtent> elsewhere = other->Provision(0, 4 * kMiB);
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  FillDevice(kept->fds[0].fd.get(), kTenant);
  orphan->fds[0].fd.reset();
  // Restart of the broker that owns "p0".
  backends_.erase(backends_.begin());
  LoopExtentBackend* second = OpenBackend("p0", pool);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->Readopt(kept->state).ok());

  absl::Status swept = second->RemoveOrphans({kept->state});
  EXPECT_TRUE(swept.ok()) << swept;
  EXPECT_FALSE(DeviceExists(orphan->state.loop_extent().inner_loop_index()));
  EXPECT_FALSE(DeviceExists(orphan->state.loop_extent().outer_loop_index()));
  EXPECT_TRUE(DeviceExists(kept->state.loop_extent().inner_loop_index()));
  EXPECT_TRUE(DeviceExists(kept->state.loop_extent().outer_loop_index()));
  EXPECT_TRUE(DeviceExists(elsewhere->state.loop_extent().inner_loop_index()));
  EXPECT_TRUE(DeviceExists(elsewhere->state.loop_extent().outer_loop_index()));
  AlignedBuffer block(4096);
  ASSERT_EQ(::pread(kept->fds[0].fd.get(), block.data(), 4096, 0), 4096);
  EXPECT_TRUE(block.All(kTenant, 4096));
  EXPECT_TRUE(second->RemoveOrphans({kept->state}).ok());  // nothing left to do

  kept->fds[0].fd.reset();
  elsewhere->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = second->Teardown(kept->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  result = other->Teardown(elsewhere->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
}

TEST_F(LoopExtentTest, NeighbouringExtentsDoNotSeeEachOther) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  absl::StatusOr<ProvisionedExtent> left = backend->Provision(4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(left.ok()) << left.status();
  absl::StatusOr<ProvisionedExtent> right = backend->Provision(8 * kMiB, 4 * kMiB);
  ASSERT_TRUE(right.ok()) << right.status();
  FillDevice(left->fds[0].fd.get(), 0x11);
  FillDevice(right->fds[0].fd.get(), 0x22);

  AlignedBuffer whole(4 * kMiB);
  ASSERT_EQ(::pread(left->fds[0].fd.get(), whole.data(), whole.size(), 0), 4 * kMiB);
  EXPECT_TRUE(whole.All(0x11, whole.size()));
  ASSERT_EQ(::pread(right->fds[0].fd.get(), whole.data(), whole.size(), 0), 4 * kMiB);
  EXPECT_TRUE(whole.All(0x22, whole.size()));
  // The left tenant re-aims its device as far right as it can: still only its own bytes.
  struct loop_info64 info;
  std::memset(&info, 0, sizeof(info));
  info.lo_offset = 4 * kMiB - 4096;
  info.lo_sizelimit = 8 * kMiB;
  (void)::ioctl(left->fds[0].fd.get(), LOOP_SET_STATUS64, &info);
  const ssize_t n = ::pread(left->fds[0].fd.get(), whole.data(), whole.size(), 0);
  EXPECT_LE(n, 4096);
  if (n > 0) {
    EXPECT_TRUE(whole.All(0x11, n));
  }

  left->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = backend->Teardown(left->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  EXPECT_TRUE(RangeIs(pool, 4 * kMiB, 4 * kMiB, 0));
  EXPECT_TRUE(RangeIs(pool, 8 * kMiB, 4 * kMiB, 0x22));
  ASSERT_EQ(::pread(right->fds[0].fd.get(), whole.data(), whole.size(), 0), 4 * kMiB);
  EXPECT_TRUE(whole.All(0x22, whole.size()));
  right->fds[0].fd.reset();
  result = backend->Teardown(right->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
}

TEST_F(LoopExtentTest, BlockDevicePoolIsScrubbedWithZeroout) {
  // The pool's backing is itself a (loop) block device.
  const std::string file = MakePoolFile("disk.img", 16 * kMiB);
  UniqueFd file_fd(::open(file.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(file_fd.valid());
  absl::StatusOr<int> disk = loopdev::CreateFresh();
  ASSERT_TRUE(disk.ok()) << disk.status();
  {
    absl::StatusOr<UniqueFd> disk_fd = loopdev::Open(*disk, O_RDWR);
    ASSERT_TRUE(disk_fd.ok());
    ASSERT_TRUE(loopdev::Bind(disk_fd->get(), *disk, file_fd.get(), loopdev::BindOptions()).ok());
  }
  LoopExtentBackend* backend = OpenBackend("blk", loopdev::DevicePath(*disk), 12 * kMiB);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->capacity_bytes(), 12 * kMiB);
  absl::StatusOr<ProvisionedExtent> extent = backend->Provision(4 * kMiB, 4 * kMiB);
  ASSERT_TRUE(extent.ok()) << extent.status();
  FillDevice(extent->fds[0].fd.get(), kTenant);
  extent->fds[0].fd.reset();
  absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
  backends_.clear();
  {
    absl::StatusOr<UniqueFd> disk_fd = loopdev::Open(*disk, O_RDONLY);
    ASSERT_TRUE(disk_fd.ok());
    ASSERT_EQ(::fsync(disk_fd->get()), 0);
  }
  EXPECT_TRUE(RangeIs(file, 4 * kMiB, 4 * kMiB, 0));
  EXPECT_TRUE(RangeIs(file, 0, 4 * kMiB, kOutside));
  EXPECT_TRUE(RangeIs(file, 8 * kMiB, 8 * kMiB, kOutside));
  absl::StatusOr<loopdev::RemoveOutcome> removed =
      loopdev::DetachAndRemove(*disk, UniqueFd(), absl::Seconds(1));
  EXPECT_TRUE(removed.ok() && *removed == loopdev::RemoveOutcome::kRemoved);
}

TEST_F(LoopExtentTest, ConcurrentProvisionAndTeardownOfDistinctExtents) {
  constexpr int kThreads = 4;
  const std::string pool = MakePoolFile("pool.img", kThreads * 2 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 2; ++round) {
        absl::StatusOr<ProvisionedExtent> extent = backend->Provision(t * 2 * kMiB, 2 * kMiB);
        ASSERT_TRUE(extent.ok()) << extent.status();
        FillDevice(extent->fds[0].fd.get(), static_cast<unsigned char>(0x10 + t));
        AlignedBuffer whole(2 * kMiB);
        ASSERT_EQ(::pread(extent->fds[0].fd.get(), whole.data(), whole.size(), 0), 2 * kMiB);
        EXPECT_TRUE(whole.All(static_cast<unsigned char>(0x10 + t), whole.size()));
        extent->fds[0].fd.reset();
        absl::StatusOr<TeardownResult> result = backend->Teardown(extent->state);
        ASSERT_TRUE(result.ok()) << result.status();
        EXPECT_EQ(*result, TeardownResult::kFreed);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(RangeIs(pool, 0, kThreads * 2 * kMiB, 0));
}

// Waits until the backend's stock holds `count` spares; remembers them for TearDown.
std::vector<int> WaitForSpares(LoopExtentBackend* backend, size_t count, std::vector<int>* track) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::vector<int> spares = backend->SpareDevices();
  while (spares.size() < count && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
    spares = backend->SpareDevices();
  }
  track->insert(track->end(), spares.begin(), spares.end());
  return spares;
}

std::set<int> LedgerIndexes(const std::string& path) {
  std::set<int> indexes;
  FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) return indexes;
  int index = -1;
  while (std::fscanf(file, "%d", &index) == 1) indexes.insert(index);
  std::fclose(file);
  return indexes;
}

TEST_F(LoopExtentTest, SparesAreUsedOnceRefilledAndFresh) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  const std::string ledger = dir_ + "/spares.p0";
  files_.push_back(ledger);
  ASSERT_TRUE(backend->StartSpares(ledger, 4).ok());
  std::vector<int> stock = WaitForSpares(backend, 4, &unbound_);
  ASSERT_EQ(stock.size(), 4u);
  for (int index : stock) EXPECT_EQ(BindingOf(index), loopdev::Binding::kUnbound) << index;
  EXPECT_EQ(LedgerIndexes(ledger), std::set<int>(stock.begin(), stock.end()));

  std::set<int> handed_out;
  std::vector<ProvisionedExtent> extents;
  for (int round = 0; round < 3; ++round) {
    const std::vector<int> before = WaitForSpares(backend, 4, &unbound_);
    ASSERT_EQ(before.size(), 4u);
    // Every spare in stock is new: none was ever handed out.
    for (int index : before) EXPECT_EQ(handed_out.count(index), 0u) << index;
    absl::StatusOr<ProvisionedExtent> extent = backend->Provision(round * 4 * kMiB, 4 * kMiB);
    ASSERT_TRUE(extent.ok()) << extent.status();
    Track(*extent);
    // Both devices came from the stock (the first two spares, in order).
    EXPECT_EQ(extent->state.loop_extent().inner_loop_index(), before[0]);
    EXPECT_EQ(extent->state.loop_extent().outer_loop_index(), before[1]);
    EXPECT_TRUE(handed_out.insert(extent->state.loop_extent().inner_loop_index()).second);
    EXPECT_TRUE(handed_out.insert(extent->state.loop_extent().outer_loop_index()).second);
    FillDevice(extent->fds[0].fd.get(), kTenant);
    EXPECT_TRUE(RangeIs(pool, round * 4 * kMiB, 4 * kMiB, kTenant));
    extents.push_back(std::move(*extent));
  }
  // Refilled, and the ledger follows the stock (taken spares drop out of it).
  std::vector<int> refilled = WaitForSpares(backend, 4, &unbound_);
  ASSERT_EQ(refilled.size(), 4u);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (LedgerIndexes(ledger) != std::set<int>(refilled.begin(), refilled.end()) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(LedgerIndexes(ledger), std::set<int>(refilled.begin(), refilled.end()));
  for (ProvisionedExtent& extent : extents) {
    extent.fds[0].fd.reset();
    absl::StatusOr<TeardownResult> result = backend->Teardown(extent.state);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, TeardownResult::kFreed);
  }
  EXPECT_TRUE(RangeIs(pool, 0, 12 * kMiB, 0));
}

TEST_F(LoopExtentTest, ProvisionWithAnEmptyStockCreatesDevicesInline) {
  const std::string pool = MakePoolFile("pool.img", 16 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  const std::string ledger = dir_ + "/spares.p0";
  files_.push_back(ledger);
  ASSERT_TRUE(backend->StartSpares(ledger, 0).ok());  // a stock that never fills
  EXPECT_TRUE(backend->SpareDevices().empty());
  // And a stock of 2 drained by back-to-back grants: the first takes both, the rest go inline.
  LoopExtentBackend* small = OpenBackend("p1", MakePoolFile("pool1.img", 16 * kMiB));
  ASSERT_NE(small, nullptr);
  files_.push_back(dir_ + "/spares.p1");
  ASSERT_TRUE(small->StartSpares(dir_ + "/spares.p1", 2).ok());
  ASSERT_EQ(WaitForSpares(small, 2, &unbound_).size(), 2u);
  int round = 0;
  for (LoopExtentBackend* b : {backend, small, small, small}) {
    absl::StatusOr<ProvisionedExtent> extent = b->Provision((round++ % 4) * 4 * kMiB, 4 * kMiB);
    ASSERT_TRUE(extent.ok()) << extent.status();
    Track(*extent);
    FillDevice(extent->fds[0].fd.get(), kTenant);
    extent->fds[0].fd.reset();
    absl::StatusOr<TeardownResult> result = b->Teardown(extent->state);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, TeardownResult::kFreed);
  }
}

TEST_F(LoopExtentTest, StopSparesLeavesNoDevices) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  const std::string ledger = dir_ + "/spares.p0";
  files_.push_back(ledger);
  ASSERT_TRUE(backend->StartSpares(ledger).ok());
  std::vector<int> stock =
      WaitForSpares(backend, LoopExtentBackend::kDefaultSpareDevices, &unbound_);
  ASSERT_EQ(stock.size(), static_cast<size_t>(LoopExtentBackend::kDefaultSpareDevices));
  backend->StopBackground();  // what the core's Stop calls
  for (int index : stock) EXPECT_FALSE(DeviceExists(index)) << "loop" << index;
  EXPECT_TRUE(backend->SpareDevices().empty());
  EXPECT_NE(::access(ledger.c_str(), F_OK), 0) << "ledger left behind";
  backend->StopSpares();  // idempotent
  // A backend destroyed without Stop removes its spares too.
  LoopExtentBackend* other = OpenBackend("p1", MakePoolFile("pool1.img", 8 * kMiB));
  ASSERT_NE(other, nullptr);
  files_.push_back(dir_ + "/spares.p1");
  ASSERT_TRUE(other->StartSpares(dir_ + "/spares.p1", 4).ok());
  std::vector<int> other_stock = WaitForSpares(other, 4, &unbound_);
  ASSERT_EQ(other_stock.size(), 4u);
  backends_.pop_back();
  for (int index : other_stock) EXPECT_FALSE(DeviceExists(index)) << "loop" << index;
}

TEST_F(LoopExtentTest, RestartAfterACrashWithSparesLeavesNoneBehind) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  const std::string ledger = dir_ + "/spares.p0";
  files_.push_back(ledger);
  files_.push_back(ledger + ".tmp");
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The broker: fills its stock, provisions one extent from it (whose devices the journal
    // would name), then dies without any cleanup.
    ::close(report[0]);
    config::LoopExtentPool config;
    config.set_backing_path(pool);
    absl::StatusOr<std::unique_ptr<LoopExtentBackend>> backend =
        LoopExtentBackend::Open("p0", config);
    if (!backend.ok() || !(*backend)->StartSpares(ledger, 6).ok()) ::_exit(2);
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while ((*backend)->SpareDevices().size() < 6 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    absl::StatusOr<ProvisionedExtent> extent = (*backend)->Provision(0, 4 * kMiB);
    if (!extent.ok()) ::_exit(3);
    // Let the refill catch up so that the ledger lists a full stock again.
    while ((*backend)->SpareDevices().size() < 6 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    std::string text = absl::StrCat(extent->state.loop_extent().inner_loop_index(), " ",
                                    extent->state.loop_extent().outer_loop_index());
    for (int index : (*backend)->SpareDevices()) absl::StrAppend(&text, " ", index);
    (void)!::write(report[1], text.data(), text.size());
    ::close(report[1]);
    ::kill(::getpid(), SIGKILL);
    ::_exit(4);
  }
  ::close(report[1]);
  std::string text;
  char buffer[512];
  for (ssize_t n; (n = ::read(report[0], buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  ::close(report[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  std::vector<int> indexes;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    int index = -1;
    ASSERT_TRUE(absl::SimpleAtoi(word, &index)) << text;
    indexes.push_back(index);
  }
  ASSERT_EQ(indexes.size(), 8u) << text;
  unbound_.insert(unbound_.end(), indexes.begin(), indexes.end());
  journal::LoopExtentState live;
  live.set_offset_bytes(0);
  live.set_size_bytes(4 * kMiB);
  live.set_inner_loop_index(indexes[0]);
  live.set_outer_loop_index(indexes[1]);
  const std::vector<int> spares(indexes.begin() + 2, indexes.end());
  for (int index : spares) EXPECT_EQ(BindingOf(index), loopdev::Binding::kUnbound) << index;

  // The restarted broker: recovery first (the live extent, journaled, is re-adopted), then the
  // spares the dead one left are removed before new ones are made.
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  ASSERT_TRUE(backend->Readopt(live).ok());
  ASSERT_TRUE(backend->RemoveOrphans({live}).ok());
  ASSERT_TRUE(backend->StartSpares(ledger, 0).ok());
  for (int index : spares) EXPECT_FALSE(DeviceExists(index)) << "leaked spare loop" << index;
  // The extent built from spares is untouched.
  EXPECT_EQ(BindingOf(live.inner_loop_index()), loopdev::Binding::kBound);
  EXPECT_EQ(BindingOf(live.outer_loop_index()), loopdev::Binding::kBound);
  EXPECT_TRUE(LedgerIndexes(ledger).empty());
  absl::StatusOr<TeardownResult> result = backend->Teardown(live);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, TeardownResult::kFreed);
}

// Not a pass/fail benchmark: prints Provision's time with and without spares.
TEST_F(LoopExtentTest, ProvisionTimeWithAndWithoutSpares) {
  constexpr int kExtents = 8;
  const std::string pool = MakePoolFile("pool.img", kExtents * kMiB);
  auto measure = [&](LoopExtentBackend* backend) {
    std::vector<ProvisionedExtent> extents;
    absl::Duration total;
    for (int i = 0; i < kExtents; ++i) {
      const absl::Time start = absl::Now();
      absl::StatusOr<ProvisionedExtent> extent = backend->Provision(i * kMiB, kMiB);
      total += absl::Now() - start;
      EXPECT_TRUE(extent.ok()) << extent.status();
      if (!extent.ok()) break;
      Track(*extent);
      extents.push_back(std::move(*extent));
    }
    for (ProvisionedExtent& extent : extents) {
      extent.fds[0].fd.reset();
      absl::StatusOr<TeardownResult> result = backend->Teardown(extent.state);
      EXPECT_TRUE(result.ok() && *result == TeardownResult::kFreed);
    }
    return absl::ToDoubleMicroseconds(total) / kExtents;
  };
  LoopExtentBackend* inline_backend = OpenBackend("inline", pool);
  ASSERT_NE(inline_backend, nullptr);
  const double inline_us = measure(inline_backend);
  LoopExtentBackend* spared = OpenBackend("spared", pool);
  ASSERT_NE(spared, nullptr);
  files_.push_back(dir_ + "/spares.spared");
  ASSERT_TRUE(spared->StartSpares(dir_ + "/spares.spared", 2 * kExtents).ok());
  ASSERT_EQ(WaitForSpares(spared, 2 * kExtents, &unbound_).size(), 2u * kExtents);
  const double spared_us = measure(spared);
  std::printf("Provision: %.0f us/extent creating devices inline, %.0f us/extent from spares\n",
              inline_us, spared_us);
  RecordProperty("provision_inline_us", static_cast<int>(inline_us));
  RecordProperty("provision_spares_us", static_cast<int>(spared_us));
}

TEST_F(LoopExtentTest, LegacyBindSequenceBindsLikeLoopConfigure) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  UniqueFd pool_fd(::open(pool.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(pool_fd.valid());
  absl::StatusOr<int> index = loopdev::CreateFresh();
  ASSERT_TRUE(index.ok()) << index.status();
  absl::StatusOr<UniqueFd> fd = loopdev::Open(*index, O_RDWR);
  ASSERT_TRUE(fd.ok()) << fd.status();
  loopdev::BindOptions options;
  options.offset_bytes = 4 * kMiB;
  options.size_limit_bytes = 2 * kMiB;
  options.use_loop_configure = false;
  absl::StatusOr<bool> direct_io = loopdev::Bind(fd->get(), *index, pool_fd.get(), options);
  ASSERT_TRUE(direct_io.ok()) << direct_io.status();
  absl::StatusOr<loopdev::DeviceState> state = loopdev::ReadState(*index);
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->bound);
  EXPECT_EQ(state->offset_bytes, 4 * kMiB);
  EXPECT_EQ(state->size_limit_bytes, 2 * kMiB);
  EXPECT_EQ(state->direct_io, *direct_io);
  EXPECT_EQ(DeviceSize(fd->get()), 2 * kMiB);
  // Binding a bound device again is reported as taken.
  EXPECT_EQ(loopdev::Bind(fd->get(), *index, pool_fd.get(), loopdev::BindOptions()).status().code(),
            absl::StatusCode::kAlreadyExists);
  absl::StatusOr<loopdev::RemoveOutcome> removed =
      loopdev::DetachAndRemove(*index, std::move(*fd), absl::Seconds(1));
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, loopdev::RemoveOutcome::kRemoved);
}

TEST_F(LoopExtentTest, ProvisionRejectsBadRanges) {
  const std::string pool = MakePoolFile("pool.img", 8 * kMiB);
  LoopExtentBackend* backend = OpenBackend("p0", pool);
  ASSERT_NE(backend, nullptr);
  for (auto [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 0}, {100, 4096}, {0, 4097}, {8 * kMiB, 4096}, {4 * kMiB, 8 * kMiB},
           {~0ull - 4095, 8192}}) {
    EXPECT_EQ(backend->Provision(offset, size).status().code(),
              absl::StatusCode::kInvalidArgument)
        << offset << " +" << size;
  }
}

// Configuration checks need neither root nor loop devices.
class LoopExtentOpenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string templ = absl::StrCat(base ? base : "/tmp", "/loop_open.XXXXXX");
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    ::unlink((dir_ + "/f").c_str());
    ::rmdir(dir_.c_str());
  }
  absl::Status OpenStatus(const config::LoopExtentPool& config) {
    return LoopExtentBackend::Open("cfg", config).status();
  }
  std::string dir_;
};

TEST_F(LoopExtentOpenTest, RejectsUnusableConfiguration) {
  config::LoopExtentPool config;
  EXPECT_EQ(OpenStatus(config).code(), absl::StatusCode::kInvalidArgument);  // no path
  config.set_backing_path(dir_ + "/f");
  absl::Status missing = OpenStatus(config);
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(missing.message(), "backing_path")) << missing;
  config.set_create(true);
  EXPECT_EQ(OpenStatus(config).code(), absl::StatusCode::kInvalidArgument);  // no size
  config.set_size_bytes(4 * kMiB);
  config.set_alignment_bytes(3000);
  absl::Status alignment = OpenStatus(config);
  EXPECT_EQ(alignment.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(alignment.message(), "alignment_bytes")) << alignment;
  config.set_alignment_bytes(12288);  // >= 4096 but not a power of two
  EXPECT_EQ(OpenStatus(config).code(), absl::StatusCode::kInvalidArgument);
  config.set_alignment_bytes(8 * kMiB);  // bigger than the pool: no extent fits
  EXPECT_EQ(OpenStatus(config).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenStatus(config::LoopExtentPool()).code(), absl::StatusCode::kInvalidArgument);
  config.set_backing_path(dir_);
  config.set_alignment_bytes(0);
  EXPECT_EQ(OpenStatus(config).code(), absl::StatusCode::kInvalidArgument);  // a directory
}

TEST_F(LoopExtentOpenTest, CreatesSparselyAndRoundsCapacityDown) {
  config::LoopExtentPool config;
  config.set_backing_path(dir_ + "/f");
  config.set_create(true);
  config.set_size_bytes(10 * kMiB + 4096);
  absl::StatusOr<std::unique_ptr<LoopExtentBackend>> backend =
      LoopExtentBackend::Open("cfg", config);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->capacity_bytes(), 10 * kMiB);  // default alignment 1 MiB
  EXPECT_EQ((*backend)->backing_path(), dir_ + "/f");
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(10 * kMiB + 4096));
  EXPECT_EQ(st.st_blocks, 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  backend->reset();

  // Shorter than size_bytes without create: refused. With create: extended.
  config.set_create(false);
  config.set_size_bytes(20 * kMiB);
  absl::Status shorter = OpenStatus(config);
  EXPECT_EQ(shorter.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(shorter.message(), "size_bytes")) << shorter;
  config.set_create(true);
  config.set_alignment_bytes(4 * kMiB);
  backend = LoopExtentBackend::Open("cfg", config);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->capacity_bytes(), 20 * kMiB);
  ASSERT_EQ(::stat((dir_ + "/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(20 * kMiB));

  // size_bytes 0: the file's own size. A larger file with a smaller size_bytes: size_bytes.
  config.set_size_bytes(0);
  config.set_alignment_bytes(0);
  backend = LoopExtentBackend::Open("cfg", config);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->capacity_bytes(), 20 * kMiB);
  config.set_size_bytes(5 * kMiB);
  backend = LoopExtentBackend::Open("cfg", config);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->capacity_bytes(), 5 * kMiB);
}

}  // namespace
}  // namespace vfbroker
