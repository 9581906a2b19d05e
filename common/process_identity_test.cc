#include "common/process_identity.h"

#include <sys/wait.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace vfbroker {
namespace {

TEST(ProcessIdentityTest, OwnStartTimeIsStableAndPidfdOpens) {
  absl::StatusOr<uint64_t> first = ProcessStartTime(::getpid());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*ProcessStartTime(::getpid()), *first);
  EXPECT_TRUE(OpenPidfdIfSameProcess(::getpid(), *first).ok());
  EXPECT_EQ(OpenPidfdIfSameProcess(::getpid(), *first + 1).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ProcessIdentityTest, ExitedProcessIsNotFound) {
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  EXPECT_EQ(ProcessStartTime(child).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace vfbroker
