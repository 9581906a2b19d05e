#include "vfdrivers/block/io_uring_queue.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "vfdrivers/block/queue_test_util.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block {
namespace {

using memory::BufferPool;
using memory::HugePages;
using memory::MemoryRegion;
using memory::MemoryRegionOptions;
using testing::CheckAgainstModel;
using testing::ModelCheckOptions;
using testing::RunOne;
using testing::SubmitAndWait;

constexpr uint64_t kFileBytes = 16 << 20;

IoUringQueueOptions Depth(uint32_t depth) {
  IoUringQueueOptions options;
  options.depth = depth;
  return options;
}

IoUringQueueOptions TaskRun(IoUringTaskRun mode, bool register_ring_fd = true) {
  IoUringQueueOptions options;
  options.task_run = mode;
  options.register_ring_fd = register_ring_fd;
  return options;
}

IoUringQueueOptions SqPoll() {
  IoUringQueueOptions options;
  options.sqpoll = true;
  options.sqpoll_idle_ms = 10;
  return options;
}

ModelCheckOptions Model(uint64_t ops, uint64_t seed) {
  ModelCheckOptions options;
  options.ops = ops;
  options.seed = seed;
  return options;
}

// An unlinked file of kFileBytes in `dir`, opened O_DIRECT with `flags`; -1 if the filesystem
// refuses O_DIRECT.
int OpenTempFile(const std::string& dir, int flags = O_RDWR) {
  std::string path = dir + "/io_uring_queue_test.XXXXXX";
  int setup = mkstemp(path.data());
  if (setup < 0) return -1;
  int ok = ftruncate(setup, kFileBytes);
  int fd = ok == 0 ? open(path.c_str(), flags | O_DIRECT | O_CLOEXEC) : -1;
  unlink(path.c_str());
  close(setup);
  return fd;
}

class IoUringQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = OpenTempFile("/tmp");
    ASSERT_GE(fd_, 0) << strerror(errno);
    absl::StatusOr<BufferPool> pool = BufferPool::Allocate(64 << 10, 32);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
  }
  void TearDown() override {
    queue_.reset();  // before the memory it registered goes away
    if (fd_ >= 0) close(fd_);
  }

  void MakeQueue(IoUringQueueOptions options = {}) {
    absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd_, options);
    ASSERT_TRUE(queue.ok()) << queue.status();
    queue_ = *std::move(queue);
    absl::Status registered = queue_->RegisterMemory(pool_.region().base(), pool_.region().size());
    ASSERT_TRUE(registered.ok()) << registered;
  }

  uint8_t* buf(uint32_t i) { return static_cast<uint8_t*>(pool_.Buffer(i)); }
  uint32_t bs() const { return queue_->geometry().logical_block_size; }

  int fd_ = -1;
  BufferPool pool_ = *BufferPool::Allocate(4096, 1);
  std::unique_ptr<IoUringQueue> queue_;
};

TEST_F(IoUringQueueTest, CreateRejectsBadArguments) {
  EXPECT_EQ(IoUringQueue::Create(fd_, Depth(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IoUringQueue::Create(fd_, Depth(100000)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(IoUringQueue::Create(-1).ok());

  int buffered = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(buffered, 0);
  EXPECT_EQ(IoUringQueue::Create(buffered).status().code(), absl::StatusCode::kInvalidArgument);
  close(buffered);

  int pipe_fds[2];  // a packet-mode pipe carries O_DIRECT but is no block device
  ASSERT_EQ(pipe2(pipe_fds, O_DIRECT | O_CLOEXEC), 0);
  EXPECT_EQ(IoUringQueue::Create(pipe_fds[0]).status().code(), absl::StatusCode::kInvalidArgument);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

TEST_F(IoUringQueueTest, GeometryOfAFile) {
  MakeQueue();
  const Geometry& g = queue_->geometry();
  EXPECT_GE(g.logical_block_size, 512u);
  EXPECT_EQ(g.logical_block_size & (g.logical_block_size - 1), 0u);
  EXPECT_EQ(g.size_bytes, kFileBytes);
  EXPECT_EQ(g.max_transfer_bytes, IoUringQueue::kMaxTransferBytes);
  EXPECT_EQ(queue_->depth(), 32u);
  EXPECT_EQ(queue_->outstanding(), 0u);
  EXPECT_TRUE(queue_->writable());
}

TEST_F(IoUringQueueTest, WriteReadFlushRoundTrip) {
  MakeQueue();
  memset(buf(0), 0x5a, 8192);
  ASSERT_TRUE(RunOne(*queue_, queue_->Write(1 << 20, buf(0), 8192, 1)).ok());
  ASSERT_TRUE(RunOne(*queue_, queue_->Flush(2)).ok());
  memset(buf(1), 0, 8192);
  ASSERT_TRUE(queue_->Read(1 << 20, buf(1), 8192, 3).ok());
  EXPECT_EQ(queue_->outstanding(), 1u);
  absl::StatusOr<std::vector<Completion>> done = SubmitAndWait(*queue_, 1);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ((*done)[0].tag, 3u);
  EXPECT_EQ((*done)[0].result, 8192);
  EXPECT_EQ(memcmp(buf(0), buf(1), 8192), 0);
  EXPECT_EQ(queue_->outstanding(), 0u);

  // The data really is in the file (read through a second, independent fd).
  int check = open(("/proc/self/fd/" + std::to_string(fd_)).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(check, 0);
  uint8_t byte = 0;
  ASSERT_EQ(pread(check, &byte, 1, (1 << 20) + 8191), 1);
  EXPECT_EQ(byte, 0x5a);
  close(check);
}

TEST_F(IoUringQueueTest, WriteZeroesZeroesOnlyTheRange) {
  MakeQueue();
  const uint32_t b = bs();
  memset(buf(0), 0xc3, 3 * b);
  ASSERT_TRUE(RunOne(*queue_, queue_->Write(0, buf(0), 3 * b, 0)).ok());
  absl::StatusOr<std::vector<Completion>> done;
  ASSERT_TRUE(queue_->WriteZeroes(b, b, 7).ok());
  done = SubmitAndWait(*queue_, 1);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ((*done)[0].tag, 7u);
  EXPECT_EQ((*done)[0].result, 0);
  ASSERT_TRUE(RunOne(*queue_, queue_->Read(0, buf(1), 3 * b, 0)).ok());
  for (uint32_t i = 0; i < 3 * b; ++i) {
    ASSERT_EQ(buf(1)[i], (i >= b && i < 2 * b) ? 0 : 0xc3) << i;
  }
}

TEST_F(IoUringQueueTest, FullQueueIsFailedPrecondition) {
  MakeQueue(Depth(4));
  for (uint32_t i = 0; i < 4; ++i) ASSERT_TRUE(queue_->Read(i * 4096, buf(i), 4096, i).ok());
  EXPECT_EQ(queue_->Read(0, buf(5), 4096, 5).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->Flush(5).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->WriteZeroes(0, 4096, 5).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<uint32_t> submitted = queue_->Submit();
  ASSERT_TRUE(submitted.ok());
  EXPECT_EQ(*submitted, 4u);
  EXPECT_EQ(queue_->outstanding(), 4u);
  // Submitted but not polled still counts.
  EXPECT_EQ(queue_->Read(0, buf(5), 4096, 5).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::vector<Completion>> done = SubmitAndWait(*queue_, 4);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(queue_->outstanding(), 0u);
  EXPECT_TRUE(queue_->Read(0, buf(5), 4096, 5).ok());
  ASSERT_TRUE(SubmitAndWait(*queue_, 1).ok());
}

TEST_F(IoUringQueueTest, InvalidArgumentsNeverReachTheRing) {
  MakeQueue();
  const uint32_t b = bs();
  const uint64_t size = queue_->geometry().size_bytes;
  auto invalid = [](absl::Status s) { return s.code() == absl::StatusCode::kInvalidArgument; };
  EXPECT_TRUE(invalid(queue_->Read(1, buf(0), b, 0)));                     // misaligned offset
  EXPECT_TRUE(invalid(queue_->Read(0, buf(0), b + 1, 0)));                 // misaligned length
  EXPECT_TRUE(invalid(queue_->Read(0, buf(0), 0, 0)));                     // empty
  EXPECT_TRUE(invalid(queue_->Read(0, buf(0) + 1, b, 0)));                 // misaligned buffer
  EXPECT_TRUE(invalid(queue_->Read(size, buf(0), b, 0)));                  // at the end
  EXPECT_TRUE(invalid(queue_->Read(size - b, buf(0), 2 * b, 0)));          // across the end
  EXPECT_TRUE(invalid(queue_->Read(~uint64_t{0} - b + 1, buf(0), b, 0)));  // wraps
  EXPECT_TRUE(invalid(queue_->Write(UINT64_MAX & ~uint64_t{4095}, buf(0), 4096, 0)));
  EXPECT_TRUE(invalid(queue_->WriteZeroes(b, UINT64_MAX & ~uint64_t{b - 1}, 0)));
  EXPECT_TRUE(invalid(queue_->WriteZeroes(0, size + b, 0)));
  EXPECT_TRUE(invalid(queue_->WriteZeroes(0, 0, 0)));
  EXPECT_TRUE(invalid(queue_->WriteZeroes(b / 2, b, 0)));

  // Memory that is not registered, and a buffer that runs off the end of registered memory.
  absl::StatusOr<MemoryRegion> other = MemoryRegion::Allocate(1 << 20);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(invalid(queue_->Read(0, other->base(), b, 0)));
  alignas(4096) static uint8_t on_stack[4096];
  EXPECT_TRUE(invalid(queue_->Read(0, on_stack, b, 0)));
  uint8_t* last = buf(pool_.count() - 1);
  EXPECT_TRUE(queue_->Read(0, last, pool_.buffer_size(), 0).ok());
  EXPECT_TRUE(invalid(queue_->Read(0, last, pool_.buffer_size() + b, 0)));
  EXPECT_TRUE(invalid(queue_->Read(0, nullptr, b, 0)));
  EXPECT_EQ(queue_->outstanding(), 1u);  // only the one valid read was staged
  ASSERT_TRUE(SubmitAndWait(*queue_, 1).ok());

  // Registration itself.
  EXPECT_TRUE(invalid(queue_->RegisterMemory(pool_.region().base(), 4096)));  // overlap
  EXPECT_TRUE(invalid(queue_->RegisterMemory(nullptr, 4096)));
  EXPECT_TRUE(invalid(queue_->RegisterMemory(other->base(), 0)));
  EXPECT_TRUE(queue_->RegisterMemory(other->base(), other->size()).ok());
  EXPECT_TRUE(RunOne(*queue_, queue_->Read(0, other->base(), b, 0)).ok());
  queue_.reset();  // `other` is about to be unmapped
}

TEST_F(IoUringQueueTest, AdjacentRegionsServeAStraddlingBuffer) {
  absl::StatusOr<MemoryRegion> region =
      MemoryRegion::Allocate(2 << 20, MemoryRegionOptions{HugePages::kNever});
  ASSERT_TRUE(region.ok());
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd_);
  ASSERT_TRUE(queue.ok());
  auto* base = static_cast<uint8_t*>(region->base());
  ASSERT_TRUE((*queue)->RegisterMemory(base, 1 << 20).ok());
  ASSERT_TRUE((*queue)->RegisterMemory(base + (1 << 20), 1 << 20).ok());
  // No single fixed buffer covers this: the driver must use a plain read/write.
  uint8_t* straddle = base + (1 << 20) - 8192;
  memset(straddle, 0x77, 16384);
  ASSERT_TRUE(RunOne(**queue, (*queue)->Write(65536, straddle, 16384, 0)).ok());
  memset(straddle, 0, 16384);
  ASSERT_TRUE(RunOne(**queue, (*queue)->Read(65536, straddle, 16384, 0)).ok());
  for (int i = 0; i < 16384; ++i) ASSERT_EQ(straddle[i], 0x77);
  EXPECT_EQ((*queue)->Read(0, base + (2 << 20) - 4096, 8192, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IoUringQueueTest, ReadOnlyFdRefusesWrites) {
  int ro = open(("/proc/self/fd/" + std::to_string(fd_)).c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(ro, 0);
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(ro);
  close(ro);  // the ring holds its own reference to the file
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_FALSE((*queue)->writable());
  ASSERT_TRUE((*queue)->RegisterMemory(pool_.region().base(), pool_.region().size()).ok());
  EXPECT_EQ((*queue)->Write(0, buf(0), 4096, 0).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*queue)->WriteZeroes(0, 4096, 0).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(RunOne(**queue, (*queue)->Read(0, buf(0), 4096, 0)).ok());
  EXPECT_TRUE(RunOne(**queue, (*queue)->Flush(0)).ok());
}

TEST_F(IoUringQueueTest, UnmatchedCompletionsAreErrorsNotCrashes) {
  MakeQueue(Depth(8));
  Completion c[4];
  auto poll_one = [&]() -> Completion {
    for (int spin = 0; spin < 1000000; ++spin) {
      if (queue_->Poll(absl::MakeSpan(c, 1)) == 1) return c[0];
    }
    ADD_FAILURE() << "no completion";
    return {};
  };
  // An index beyond the slot table.
  ASSERT_TRUE(queue_->SubmitNopForTesting((uint64_t{1} << 32) | 999).ok());
  // Poll only enters the kernel when it expects work; give it some.
  ASSERT_TRUE(queue_->Read(0, buf(0), 4096, 42).ok());
  ASSERT_TRUE(queue_->Submit().ok());
  Completion first = poll_one(), second = poll_one();
  if (first.tag == 42) std::swap(first, second);
  EXPECT_EQ(first.tag, IoUringQueue::kUnknownTag);
  EXPECT_EQ(first.result, -EIO);
  EXPECT_FALSE(CompletionStatus(first).ok());
  EXPECT_EQ(second.tag, 42u);
  EXPECT_EQ(second.result, 4096);
  EXPECT_EQ(queue_->outstanding(), 0u);

  // Slot 7 (the first one handed out) with its old generation: a stale duplicate.
  ASSERT_TRUE(queue_->Read(0, buf(0), 4096, 43).ok());
  ASSERT_TRUE(queue_->Submit().ok());
  ASSERT_TRUE(queue_->SubmitNopForTesting((uint64_t{1} << 32) | 7).ok());
  ASSERT_TRUE(queue_->SubmitNopForTesting((uint64_t{1} << 32) | 0).ok());  // idle slot
  int unknown = 0, good = 0;
  for (int i = 0; i < 3; ++i) {
    Completion got = poll_one();
    if (got.tag == 43) {
      ++good;
      EXPECT_EQ(got.result, 4096);
    } else {
      ++unknown;
      EXPECT_EQ(got.tag, IoUringQueue::kUnknownTag);
    }
  }
  EXPECT_EQ(good, 1);
  EXPECT_EQ(unknown, 2);
  EXPECT_EQ(queue_->outstanding(), 0u);
  EXPECT_EQ(queue_->Poll(absl::MakeSpan(c)), 0u);
}

TEST_F(IoUringQueueTest, CreatedOnOneThreadDrivenOnAnother) {
  MakeQueue(TaskRun(IoUringTaskRun::kDefer));
  std::thread worker([&] {
    memset(buf(0), 0x3c, 4096);
    EXPECT_TRUE(RunOne(*queue_, queue_->Write(8192, buf(0), 4096, 0)).ok());
    EXPECT_TRUE(RunOne(*queue_, queue_->Read(8192, buf(1), 4096, 0)).ok());
    EXPECT_EQ(memcmp(buf(0), buf(1), 4096), 0);
    queue_.reset();  // destroyed on the thread that drove it
  });
  worker.join();
}

TEST_F(IoUringQueueTest, DestructorDrainsInFlightCommands) {
  MakeQueue();
  for (uint32_t i = 0; i < 32; ++i) ASSERT_TRUE(queue_->Read(i << 16, buf(i), 65536, i).ok());
  ASSERT_TRUE(queue_->Submit().ok());
  queue_.reset();
}

struct ModeCase {
  const char* name;
  IoUringQueueOptions options;
};

class IoUringQueueModeTest : public IoUringQueueTest,
                             public ::testing::WithParamInterface<ModeCase> {};

TEST_P(IoUringQueueModeTest, RandomOpsMatchTheModel) {
  MakeQueue(GetParam().options);
  ASSERT_NO_FATAL_FAILURE(CheckAgainstModel(*queue_, pool_, Model(5000, 7)));
}

INSTANTIATE_TEST_SUITE_P(
    Modes, IoUringQueueModeTest,
    ::testing::Values(ModeCase{"auto", {}}, ModeCase{"defer", TaskRun(IoUringTaskRun::kDefer)},
                      ModeCase{"coop", TaskRun(IoUringTaskRun::kCoop)},
                      ModeCase{"plain", TaskRun(IoUringTaskRun::kPlain)},
                      ModeCase{"plain_no_ring_fd",
                               TaskRun(IoUringTaskRun::kPlain, /*register_ring_fd=*/false)},
                      ModeCase{"sqpoll", SqPoll()}),
    [](const ::testing::TestParamInfo<ModeCase>& info) { return std::string(info.param.name); });

TEST(IoUringQueueTmpfsTest, RoundTripOnTmpfs) {
  int fd = OpenTempFile("/dev/shm");
  if (fd < 0) GTEST_SKIP() << "tmpfs refuses O_DIRECT here (Linux < 6.6): " << strerror(errno);
  absl::StatusOr<BufferPool> pool = BufferPool::Allocate(32 << 10, 32);
  ASSERT_TRUE(pool.ok());
  {
    absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd);
    ASSERT_TRUE(queue.ok()) << queue.status();
    ASSERT_TRUE((*queue)->RegisterMemory(pool->region().base(), pool->region().size()).ok());
    ASSERT_NO_FATAL_FAILURE(CheckAgainstModel(**queue, *pool, Model(3000, 3)));
  }
  close(fd);
}

}  // namespace
}  // namespace vfdrivers::block
