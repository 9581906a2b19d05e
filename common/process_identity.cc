#include "common/process_identity.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace vfbroker {

absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  if (!in) return absl::NotFoundError(absl::StrCat("process ", pid, " does not exist"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string stat = buffer.str();
  // The command name (field 2) is in parentheses and may itself contain spaces or ')'; the
  // fields after it start after the *last* ')'. proc(5).
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return absl::InternalError("malformed /proc/<pid>/stat");
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(close + 1), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
  uint64_t start_time = 0;
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[19], &start_time)) {
    return absl::InternalError("malformed /proc/<pid>/stat");
  }
  return start_time;
}

absl::StatusOr<UniqueFd> OpenPidfdIfSameProcess(pid_t pid, uint64_t start_time) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("process ", pid, " is gone"));
    return absl::InternalError(absl::StrCat("pidfd_open(", pid, "): ", std::strerror(errno)));
  }
  absl::StatusOr<uint64_t> now = ProcessStartTime(pid);
  if (!now.ok() || *now != start_time) {
    return absl::NotFoundError(absl::StrCat("process ", pid, " has exited (pid reused)"));
  }
  return pidfd;
}

}  // namespace vfbroker
