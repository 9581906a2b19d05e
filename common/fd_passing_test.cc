#include "common/fd_passing.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace vfbroker {
namespace {

struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
  UniqueFd a, b;
};

TEST(FdPassingTest, DescriptorsArriveCloseOnExecAndUsable) {
  SocketPair pair;
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  ASSERT_TRUE(SendWithFds(pair.a.get(), "hello", {write_end.get()}).ok());

  std::string payload;
  std::vector<UniqueFd> fds;
  ASSERT_TRUE(ReceiveWithFds(pair.b.get(), absl::Seconds(1), &payload, &fds).ok());
  EXPECT_EQ(payload, "hello");
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_TRUE(::fcntl(fds[0].get(), F_GETFD) & FD_CLOEXEC);
  ASSERT_EQ(::write(fds[0].get(), "x", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(read_end.get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
}

TEST(FdPassingTest, TimeoutAndPeerClose) {
  SocketPair pair;
  std::string payload;
  std::vector<UniqueFd> fds;
  EXPECT_EQ(ReceiveWithFds(pair.b.get(), absl::Milliseconds(10), &payload, &fds).code(),
            absl::StatusCode::kDeadlineExceeded);
  pair.a.reset();
  EXPECT_EQ(ReceiveWithFds(pair.b.get(), absl::Seconds(1), &payload, &fds).code(),
            absl::StatusCode::kUnavailable);
}

TEST(FdPassingTest, RefusesTooManyDescriptors) {
  SocketPair pair;
  std::vector<int> many(kMaxFdsPerMessage + 1, 0);
  EXPECT_EQ(SendWithFds(pair.a.get(), "x", many).code(), absl::StatusCode::kInvalidArgument);
}

TEST(FdPassingTest, SendToClosedPeerIsUnavailableNotSigpipe) {
  SocketPair pair;
  pair.b.reset();
  EXPECT_EQ(SendWithFds(pair.a.get(), "x", {}).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace vfbroker
