// NetnsFdStore against a real datagram socket standing in for systemd's notify socket, with
// descriptors placed at fd 3.. and LISTEN_* set as systemd does (sd_listen_fds(3)). The lease
// namespace is the test's own (/proc/self/ns/net: no privilege needed).
#include "broker/backends/netns_fd_store.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/backends/lease_netns.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

// `fd` moved to 100 or above, out of the way of the descriptors placed at 3..
int High(int fd) {
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 100);
  ::close(fd);
  return high;
}

struct Received {
  std::string text;
  std::vector<UniqueFd> fds;
};

class NetnsFdStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Not under TEST_TMPDIR: its path is too long for sun_path.
    char dir[] = "/tmp/vfbfdstore.XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/notify";
    socket_.reset(High(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    ASSERT_EQ(::bind(socket_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  void TearDown() override {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_FDNAMES");
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
    for (auto& [at, copy] : saved_) ::dup2(copy.get(), at);
  }

  // Every message sent so far.
  std::vector<Received> Messages() {
    std::vector<Received> out;
    while (true) {
      char text[1024];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
      iovec iov{text, sizeof(text)};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      const ssize_t n = ::recvmsg(socket_.get(), &msg, MSG_CMSG_CLOEXEC);
      if (n < 0) return out;
      Received r;
      r.text.assign(text, static_cast<size_t>(n));
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        for (size_t k = 0; k < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++k) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
          r.fds.emplace_back(fd);
        }
      }
      out.push_back(std::move(r));
    }
  }

  // Puts `fds` at 3.. as systemd would, with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES.
  void PassAtStart(const std::vector<std::pair<std::string, int>>& fds) {
    std::string names;
    for (size_t i = 0; i < fds.size(); ++i) {
      // Whatever sits at 3.. (if anything) moves out of the way first.
      if (::fcntl(3 + static_cast<int>(i), F_GETFD) >= 0) {
        saved_.emplace_back(3 + static_cast<int>(i),
                            UniqueFd(::fcntl(3 + static_cast<int>(i), F_DUPFD_CLOEXEC, 100)));
      }
      ASSERT_EQ(::dup2(fds[i].second, 3 + static_cast<int>(i)), 3 + static_cast<int>(i));
      names += (i == 0 ? "" : ":") + fds[i].first;
    }
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDS", std::to_string(fds.size()).c_str(), 1);
    ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
  }

  std::string dir_, path_;
  UniqueFd socket_;
  std::vector<std::pair<int, UniqueFd>> saved_;  // what sat at 3.. before, to put back
};

uint64_t InodeOf(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return st.st_ino;
}

TEST(NetnsFdStoreName, IsNetnsDashDeviceAndOnlyWhatSystemdAccepts) {
  EXPECT_EQ(NetnsFdStore::FdName("vfbx12abcd0001"), "netns-vfbx12abcd0001");
  EXPECT_EQ(NetnsFdStore::FdName("a:b"), "");          // ':' separates LISTEN_FDNAMES
  EXPECT_EQ(NetnsFdStore::FdName("a\nb"), "");         // control characters
  EXPECT_EQ(NetnsFdStore::FdName("caf\xc3\xa9"), "");  // non-ASCII
  EXPECT_EQ(NetnsFdStore::FdName(std::string(249, 'x')).size(), 255u);
  EXPECT_EQ(NetnsFdStore::FdName(std::string(250, 'x')), "");  // 256 > 255
}

TEST_F(NetnsFdStoreTest, WithoutNotifySocketNothingIsSentNorTaken) {
  UniqueFd own(High(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)));
  PassAtStart({{"netns-dev1", own.get()}});
  std::shared_ptr<NetnsFdStore> store = NetnsFdStore::FromEnvironment();
  EXPECT_FALSE(store->enabled());
  EXPECT_TRUE(store->RecoveredDevices().empty());
  EXPECT_GE(::fcntl(3, F_GETFD), 0) << "a descriptor outside systemd was closed";
  store->Keep("dev2", own.get());
  store->Forget("dev2");
  EXPECT_TRUE(Messages().empty());
  ::close(3);
}

TEST_F(NetnsFdStoreTest, TakesStoredNamespacesAtStartAndTalksToTheStore) {
  ::setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  UniqueFd own(High(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)));
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd pipe_read(High(pipe_fds[0])), pipe_write(High(pipe_fds[1]));
  PassAtStart({{"netns-dev1", own.get()}, {"netns-dev2", pipe_read.get()},
               {"something-else", own.get()}});
  std::shared_ptr<NetnsFdStore> store = NetnsFdStore::FromEnvironment();
  ASSERT_TRUE(store->enabled());
  EXPECT_EQ(store->RecoveredDevices(), std::vector<std::string>{"dev1"});
  EXPECT_EQ(std::getenv("LISTEN_FDS"), nullptr) << "LISTEN_* left for children";
  EXPECT_LT(::fcntl(4, F_GETFD), 0) << "a stored pipe posing as a namespace was kept";
  EXPECT_LT(::fcntl(5, F_GETFD), 0) << "a foreign name was kept";
  absl::StatusOr<UniqueFd> dev1 = store->Recovered("dev1");
  ASSERT_TRUE(dev1.ok()) << dev1.status();
  EXPECT_EQ(InodeOf(dev1->get()), InodeOf(own.get()));
  EXPECT_TRUE(netns::Inode(dev1->get()).ok());
  EXPECT_TRUE(absl::IsNotFound(store->Recovered("dev2").status()));
  {
    std::vector<Received> removed = Messages();
    ASSERT_EQ(removed.size(), 2u);
    EXPECT_EQ(removed[0].text, "FDSTOREREMOVE=1\nFDNAME=netns-dev2");
    EXPECT_EQ(removed[1].text, "FDSTOREREMOVE=1\nFDNAME=something-else");
  }

  store->Keep("dev3", own.get());
  store->Forget("dev1");
  // (Before Messages(): a received descriptor may take the number.)
  EXPECT_LT(::fcntl(3, F_GETFD), 0) << "a forgotten namespace's descriptor stayed open";
  std::vector<Received> sent = Messages();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].text, "FDSTORE=1\nFDNAME=netns-dev3");
  ASSERT_EQ(sent[0].fds.size(), 1u);
  EXPECT_EQ(InodeOf(sent[0].fds[0].get()), InodeOf(own.get()));
  EXPECT_EQ(sent[1].text, "FDSTOREREMOVE=1\nFDNAME=netns-dev1");
  EXPECT_TRUE(sent[1].fds.empty());
  EXPECT_TRUE(store->RecoveredDevices().empty());
}

}  // namespace
}  // namespace vfbroker
