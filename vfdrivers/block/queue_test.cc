#include "vfdrivers/block/queue.h"

#include <cerrno>

#include "gtest/gtest.h"

namespace vfdrivers::block {
namespace {

TEST(CompletionStatusTest, SuccessIsOk) {
  EXPECT_TRUE(CompletionStatus(Completion{1, 4096}).ok());
  EXPECT_TRUE(CompletionStatus(Completion{1, 0}).ok());
}

TEST(CompletionStatusTest, ErrnoMapsToCode) {
  absl::Status s = CompletionStatus(Completion{7, -EINVAL});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tag 7"), absl::string_view::npos) << s;
  EXPECT_FALSE(CompletionStatus(Completion{7, -EIO}).ok());
  EXPECT_EQ(CompletionStatus(Completion{7, -ENOSPC}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(CompletionStatus(Completion{7, INT32_MIN}).ok());
}

TEST(CompletionStatusTest, DeviceStatusIsAnError) {
  absl::Status s = CompletionStatus(Completion{3, 0, 0x281});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("0x281"), absl::string_view::npos) << s;
  s = CompletionStatus(Completion{3, -EIO, 0x2});
  EXPECT_NE(s.message().find("0x2"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace vfdrivers::block
