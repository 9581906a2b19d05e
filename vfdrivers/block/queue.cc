#include "vfdrivers/block/queue.h"

#include <cerrno>
#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"

namespace vfdrivers::block {

absl::Status CompletionStatus(const Completion& completion) {
  if (completion.result >= 0 && completion.device_status == 0) return absl::OkStatus();
  if (completion.result < 0) {
    // -INT32_MIN does not fit an int; no errno is that large anyway.
    const int err = completion.result == INT32_MIN ? EIO : -completion.result;
    std::string message = absl::StrFormat("block command (tag %u) failed", completion.tag);
    if (completion.device_status != 0) {
      absl::StrAppendFormat(&message, " with device status 0x%x", completion.device_status);
    }
    return absl::ErrnoToStatus(err, message);  // appends ": <strerror>" (thread-safely)
  }
  // A device reporting an error status alongside a transfer count: believe the error.
  return absl::InternalError(absl::StrFormat("block command (tag %u): device status 0x%x",
                                             completion.tag, completion.device_status));
}

}  // namespace vfdrivers::block
