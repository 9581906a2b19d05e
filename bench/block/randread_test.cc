#include "bench/block/randread.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "vfdrivers/block/io_uring_queue.h"

namespace vfbroker::bench {
namespace {

TEST(RandReadTest, ShortRunOnAFileReportsSaneNumbers) {
  std::string path = "/tmp/randread_test.XXXXXX";
  int setup = mkstemp(path.data());
  ASSERT_GE(setup, 0);
  ASSERT_EQ(ftruncate(setup, 8 << 20), 0);
  int fd = open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  unlink(path.c_str());
  close(setup);
  ASSERT_GE(fd, 0);
  auto queue = vfdrivers::block::IoUringQueue::Create(fd);
  close(fd);
  ASSERT_TRUE(queue.ok()) << queue.status();

  RandReadOptions options;
  options.duration = absl::Milliseconds(200);
  options.write_percent = 30;
  auto buffers = MakeRegisteredBuffers(**queue, options);
  ASSERT_TRUE(buffers.ok()) << buffers.status();
  absl::StatusOr<RandReadResult> r = RunRandRead(**queue, *buffers, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->ios, 100u);
  EXPECT_GT(r->reads, 0u);
  EXPECT_GT(r->writes, 0u);
  EXPECT_GE(r->elapsed, absl::Milliseconds(200));
  EXPECT_GT(r->iops, 0);
  EXPECT_LE(r->lat_p50, r->lat_p99);
  EXPECT_LE(r->lat_p99, r->lat_max);
  EXPECT_EQ((*queue)->outstanding(), 0u);
  EXPECT_NE(ToJson(*r).find("\"iops\""), std::string::npos);

  // A second run reuses the same registered buffers.
  options.write_percent = 0;
  options.queue_depth = 8;
  EXPECT_TRUE(RunRandRead(**queue, *buffers, options).ok());
  options.queue_depth = 64;  // deeper than the queue
  EXPECT_EQ(RunRandRead(**queue, *buffers, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.queue_depth = 32;
  options.block_size = 1000;
  EXPECT_EQ(RunRandRead(**queue, *buffers, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vfbroker::bench
