#include "tests/integration/harness.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/ethtool.h>
#include <linux/loop.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/unique_fd.h"

namespace vfbroker::testing {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

bool CanConnect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

absl::Status CopyExecutable(const std::string& from, const std::string& to) {
  std::error_code error;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, error);
  if (error) return absl::InternalError(absl::StrCat("copy ", from, ": ", error.message()));
  if (::chmod(to.c_str(), 0755) != 0) return Errno("chmod");
  return absl::OkStatus();
}

// Detaches any loop device still stacked on a file under `prefix` (a test that failed midway).
void DetachLoopsUnder(const std::string& prefix) {
  for (int pass = 0; pass < 2; ++pass) {  // outer devices first free the inner ones
    for (const auto& entry : std::filesystem::directory_iterator("/sys/block")) {
      const std::string name = entry.path().filename();
      if (name.rfind("loop", 0) != 0) continue;
      std::ifstream backing(entry.path() / "loop" / "backing_file");
      std::string file;
      if (!std::getline(backing, file)) continue;
      if (file.rfind(prefix, 0) != 0 && file.rfind("/dev/loop", 0) != 0) continue;
      if (file.rfind("/dev/loop", 0) == 0) {
        std::ifstream inner(absl::StrCat("/sys/block/", file.substr(5), "/loop/backing_file"));
        std::string inner_file;
        if (!std::getline(inner, inner_file) || inner_file.rfind(prefix, 0) != 0) continue;
      }
      int fd = ::open(absl::StrCat("/dev/", name).c_str(), O_RDWR | O_CLOEXEC);
      if (fd >= 0) {
        ::ioctl(fd, LOOP_CLR_FD, 0);
        ::close(fd);
      }
    }
  }
}

}  // namespace

int RunIp(const std::string& args) {
  const char* ip = std::getenv("VFBROKER_TEST_IP");
  const std::string cmd = std::string(ip != nullptr && *ip != 0 ? ip : "ip") + " " + args + " 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return -1;
  char buf[512];
  std::string out;
  while (std::fgets(buf, sizeof(buf), f) != nullptr) out += buf;
  const int status = ::pclose(f);
  if (status != 0) std::fprintf(stderr, "`%s` failed: %s\n", cmd.c_str(), out.c_str());
  return status;
}

absl::Status EnterVethNamespace(const std::string& peer_mac, const std::string& peer_cidr) {
  if (::unshare(CLONE_NEWNET) != 0) return Errno("unshare(CLONE_NEWNET)");
  for (const char* path : {"/proc/sys/net/ipv6/conf/default/disable_ipv6",
                           "/proc/sys/net/ipv6/conf/all/disable_ipv6"}) {
    std::ofstream(path) << "1";
  }
  for (const std::string& args :
       {std::string("link add veth0 type veth peer name veth1"),
        absl::StrCat("link set veth1 address ", peer_mac),
        absl::StrCat("addr add ", peer_cidr, " dev veth1"), std::string("link set veth0 up"),
        std::string("link set veth1 up"), std::string("link set lo up")}) {
    if (RunIp(args) != 0) return absl::InternalError(absl::StrCat("ip ", args, " failed"));
  }
  // SIOCETHTOOL ETHTOOL_STXCSUM, as `ethtool -K veth1 tx off`.
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ethtool_value value{};
  value.cmd = ETHTOOL_STXCSUM;
  value.data = 0;
  ifreq ifr{};
  std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "veth1");
  ifr.ifr_data = reinterpret_cast<char*>(&value);
  if (::ioctl(fd.get(), SIOCETHTOOL, &ifr) != 0) return Errno("veth1: TX checksum offload off");
  return absl::OkStatus();
}

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/vfbroker/", path);
}

// ---------------------------------------------------------------------------------------------
// Tenant

absl::StatusOr<std::unique_ptr<Tenant>> Tenant::Start(const std::string& probe, uid_t uid,
                                                      const std::vector<std::string>& args) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return Errno("pipe2");
  std::vector<std::string> argv_storage = {probe};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    // Become an ordinary unprivileged user: no supplementary groups, no capabilities.
    if (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0) ::_exit(126);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  std::unique_ptr<Tenant> tenant(new Tenant());
  tenant->pid_ = pid;
  tenant->stdin_fd_ = in[1];
  tenant->stdout_fd_ = out[0];
  return tenant;
}

Tenant::~Tenant() {
  if (!exited_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (stdin_fd_ >= 0) ::close(stdin_fd_);
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

bool Tenant::ReadSome(absl::Duration timeout) {
  pollfd pfd{stdout_fd_, POLLIN, 0};
  int ready = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (ready <= 0) return true;
  char buffer[4096];
  ssize_t got = ::read(stdout_fd_, buffer, sizeof(buffer));
  if (got <= 0) return false;
  output_.append(buffer, static_cast<size_t>(got));
  return true;
}

absl::StatusOr<std::string> Tenant::WaitForLine(const std::string& prefix,
                                                absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t start = consumed_;
    while (true) {
      size_t end = output_.find('\n', start);
      if (end == std::string::npos) break;
      std::string line = output_.substr(start, end - start);
      start = end + 1;
      if (line.rfind(prefix, 0) == 0) {
        consumed_ = start;
        return line;
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("tenant never printed '", prefix, "'; output:\n", output_));
    }
    if (!ReadSome(absl::Milliseconds(50))) {
      return absl::FailedPreconditionError(
          absl::StrCat("tenant exited before printing '", prefix, "'; output:\n", output_));
    }
  }
}

absl::StatusOr<std::pair<uint64_t, uint64_t>> Tenant::LatestProgress(absl::Duration wait) {
  const absl::Time until = absl::Now() + wait;
  while (absl::Now() < until) ReadSome(absl::Milliseconds(10));
  size_t at = output_.rfind("progress ops=");
  if (at == std::string::npos) return absl::NotFoundError("no progress yet:\n" + output_);
  uint64_t ops = 0, errors = 0;
  std::string line = output_.substr(at, output_.find('\n', at) - at);
  if (std::sscanf(line.c_str(), "progress ops=%lu errors=%lu", &ops, &errors) != 2) {
    return absl::InternalError("bad progress line: " + line);
  }
  return std::make_pair(ops, errors);
}

absl::Status Tenant::WriteLine(const std::string& line) {
  const std::string text = line + "\n";
  if (stdin_fd_ < 0 || ::write(stdin_fd_, text.data(), text.size()) !=
                           static_cast<ssize_t>(text.size())) {
    return absl::InternalError("could not write to the probe's stdin");
  }
  return absl::OkStatus();
}

void Tenant::CloseStdin() {
  if (stdin_fd_ >= 0) ::close(stdin_fd_);
  stdin_fd_ = -1;
}

absl::StatusOr<std::map<std::string, std::string>> Tenant::Finish(absl::Duration timeout) {
  CloseStdin();
  const absl::Time deadline = absl::Now() + timeout;
  while (ReadSome(absl::Milliseconds(100))) {
    if (absl::Now() > deadline) {
      Kill();
      return absl::DeadlineExceededError("tenant did not finish; output:\n" + output_);
    }
  }
  int status = 0;
  ::waitpid(pid_, &status, 0);
  exited_ = true;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("tenant exited with status ", status, "; output:\n",
                                            output_));
  }
  std::map<std::string, std::string> values;
  for (absl::string_view line : absl::StrSplit(output_, '\n')) {
    for (absl::string_view field : absl::StrSplit(line, ' ')) {
      std::pair<std::string, std::string> kv = absl::StrSplit(field, absl::MaxSplits('=', 1));
      if (!kv.second.empty()) values[kv.first] = kv.second;
    }
  }
  return values;
}

void Tenant::Kill() {
  if (exited_ || pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  exited_ = true;
}

// ---------------------------------------------------------------------------------------------
// BrokerProcess

absl::StatusOr<std::unique_ptr<BrokerProcess>> BrokerProcess::Start(BrokerOptions options) {
  std::unique_ptr<BrokerProcess> broker(new BrokerProcess());
  char dir_template[] = "/tmp/vfbt.XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return Errno("mkdtemp");
  broker->dir_ = dir_template;
  ::chmod(broker->dir_.c_str(), 0755);
  broker->socket_dir_ = broker->dir_ + "/run";
  broker->config_path_ = broker->dir_ + "/vfbroker.textproto";
  broker->log_path_ = broker->dir_ + "/broker.log";
  broker->probe_ = broker->dir_ + "/tenant_probe";
  const std::string base = broker->dir_.substr(5);  // "vfbt.XXXXXX"
  broker->scratch_path_ = absl::StrCat("/dev/shm/", base, "-scratch.img");
  broker->restricted_path_ = absl::StrCat("/dev/shm/", base, "-restricted.img");
  if (absl::Status copied =
          CopyExecutable(Runfile("tests/integration/tenant_probe"), broker->probe_);
      !copied.ok()) {
    return copied;
  }
  if (!options.nic_interface.empty()) {
    broker->nic_probe_ = broker->dir_ + "/nic_probe";
    if (absl::Status copied =
            CopyExecutable(Runfile("tests/integration/nic_probe"), broker->nic_probe_);
        !copied.ok()) {
      return copied;
    }
  }
  std::ofstream config(broker->config_path_);
  config << "socket_dir: \"" << broker->socket_dir_ << "\"\n"
         << "socket_mode: 438\n"  // 0666: access is decided per call by pool policy
         << "state_dir: \"" << broker->dir_ << "/state\"\n"
         << "default_quota { max_bytes: " << 128 * kMiB << " max_leases: 4 }\n"
         << "quotas { uid: " << kTenantB << " quota { max_bytes: " << 64 * kMiB
         << " max_leases: 3 } }\n"
         << "pools {\n  name: \"scratch\"\n  access { uids: [" << kTenantA << ", " << kTenantB
         << "] }\n  loop_extent { backing_path: \"" << broker->scratch_path_
         << "\" size_bytes: " << options.scratch_bytes
         << " create: true alignment_bytes: 1048576 }\n}\n"
         << "pools {\n  name: \"restricted\"\n  access { uids: [" << kTenantA
         << "] }\n  loop_extent { backing_path: \"" << broker->restricted_path_
         << "\" size_bytes: " << 16 * kMiB << " create: true }\n}\n";
  if (!options.nic_interface.empty()) {
    config << "pools {\n  name: \"net\"\n  access { uids: [" << kTenantA << ", " << kTenantB
           << "] }\n  xdp_nic { interface: \"" << options.nic_interface
           << "\" max_tenants: 4 frame_size: 2048 frame_count: 256 ring_size: 128 }\n}\n";
  }
  config.close();
  broker->notify_socket_ = options.notify_socket;
  if (absl::Status launched = broker->Launch(); !launched.ok()) return launched;
  return broker;
}

absl::Status BrokerProcess::Launch(const std::vector<ListenFd>& fds) {
  const std::string binary = Runfile("broker/vfbrokerd");
  const std::string config_flag = "--config=" + config_path_;
  // The environment is built before fork (the child of a threaded process may only make
  // async-signal-safe calls); LISTEN_PID is the child's own pid, filled in after fork.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (absl::StartsWith(*e, "NOTIFY_SOCKET=") || absl::StartsWith(*e, "LISTEN_")) continue;
    env.emplace_back(*e);
  }
  if (!notify_socket_.empty()) env.push_back("NOTIFY_SOCKET=" + notify_socket_);
  std::string listen_pid = "LISTEN_PID=";
  if (!fds.empty()) {
    std::vector<std::string> names;
    for (const ListenFd& f : fds) names.push_back(f.name);
    env.push_back(absl::StrCat("LISTEN_FDS=", fds.size()));
    env.push_back(absl::StrCat("LISTEN_FDNAMES=", absl::StrJoin(names, ":")));
    listen_pid.append(20, '\0');
  }
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  if (!fds.empty()) envp.push_back(listen_pid.data());
  envp.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::close(log);
    // Out of the way first (a source may sit where another one goes), then to 3.., without
    // FD_CLOEXEC (dup2 clears it).
    std::vector<int> moved;
    for (const ListenFd& f : fds) moved.push_back(::fcntl(f.fd, F_DUPFD_CLOEXEC, 1000));
    for (size_t i = 0; i < moved.size(); ++i) ::dup2(moved[i], 3 + static_cast<int>(i));
    if (!fds.empty()) {
      char digits[20];
      int n = 0;
      for (pid_t self = ::getpid(); self > 0 && n < 20; self /= 10) digits[n++] = '0' + self % 10;
      char* out = listen_pid.data() + std::strlen("LISTEN_PID=");
      while (n > 0) *out++ = digits[--n];
      *out = '\0';
    }
    ::execve(binary.c_str(),
             std::array<char*, 4>{const_cast<char*>(binary.c_str()),
                                  const_cast<char*>(config_flag.c_str()),
                                  const_cast<char*>("--log_level=debug"), nullptr}
                 .data(),
             envp.data());
    ::_exit(127);
  }
  pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    if (CanConnect(socket_dir_ + "/session.sock") &&
        ::access((socket_dir_ + "/grpc.sock").c_str(), F_OK) == 0) {
      return absl::OkStatus();
    }
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError("vfbrokerd exited at start; log:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError("vfbrokerd did not come up; log:\n" + log());
}

BrokerProcess::~BrokerProcess() {
  if (pid_ > 0) {
    if (auto op = Operator(); op.ok()) (void)WaitForIdle(absl::Seconds(5));
    (void)Terminate();
  }
  DetachLoopsUnder("/dev/shm/" + dir_.substr(5));
  ::unlink(scratch_path_.c_str());
  ::unlink(restricted_path_.c_str());
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
  // xdp_nic's lease-namespace pins for this network namespace (broker/backends/lease_netns.h):
  // the directory is empty once every lease ended; rmdir leaves it if not.
  struct stat ns {};
  if (::stat("/proc/self/ns/net", &ns) == 0) {
    ::rmdir(absl::StrFormat("/run/vfbroker/netns/%x", static_cast<uint64_t>(ns.st_ino)).c_str());
    ::rmdir("/run/vfbroker/netns");  // and the directories the broker made, if now empty
    ::rmdir("/run/vfbroker");
  }
}

std::string BrokerProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status BrokerProcess::Kill() {
  if (pid_ <= 0) return absl::FailedPreconditionError("broker not running");
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status BrokerProcess::Terminate() {
  if (pid_ <= 0) return absl::FailedPreconditionError("broker not running");
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("vfbrokerd exit status ", status));
  }
  return absl::OkStatus();
}

absl::Status BrokerProcess::Restart() { return Launch(); }

absl::Status BrokerProcess::Restart(const std::vector<ListenFd>& fds) { return Launch(fds); }

absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> BrokerProcess::Operator() {
  vfclient::ConnectOptions options;
  options.socket_dir = socket_dir_;
  return vfclient::BrokerClient::Connect(options);
}

absl::Status BrokerProcess::WaitForIdle(absl::Duration timeout) {
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> op = Operator();
  if (!op.ok()) return op.status();
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<v1::GetStatsResponse> stats = (*op)->GetStats();
    if (!stats.ok()) return stats.status();
    uint32_t busy = stats->leases();
    for (const v1::PoolStats& pool : stats->pools()) busy += pool.quarantined();
    if (busy == 0) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("broker not idle: ", stats->DebugString()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::unique_ptr<Tenant> BrokerProcess::StartTenant(uid_t uid,
                                                   const std::vector<std::string>& args) {
  std::vector<std::string> full = {socket_dir_};
  full.insert(full.end(), args.begin(), args.end());
  absl::StatusOr<std::unique_ptr<Tenant>> tenant = Tenant::Start(probe_, uid, full);
  if (!tenant.ok()) std::abort();
  return *std::move(tenant);
}

absl::StatusOr<std::string> BrokerProcess::TenantExecutable(const std::string& path) {
  const std::string copy = absl::StrCat(dir_, "/", path.substr(path.rfind('/') + 1));
  if (absl::Status copied = CopyExecutable(Runfile(path), copy); !copied.ok()) return copied;
  return copy;
}

std::unique_ptr<Tenant> BrokerProcess::StartNicTenant(uid_t uid,
                                                      const std::vector<std::string>& args) {
  std::vector<std::string> full = {socket_dir_};
  full.insert(full.end(), args.begin(), args.end());
  absl::StatusOr<std::unique_ptr<Tenant>> tenant = Tenant::Start(nic_probe_, uid, full);
  if (!tenant.ok()) std::abort();
  return *std::move(tenant);
}

}  // namespace vfbroker::testing
