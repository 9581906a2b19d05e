// Facts about a process that survive a broker restart: its start time since boot, so that a
// recycled pid is never mistaken for the process that held a lease. Thread-safe (stateless).
#ifndef VFBROKER_COMMON_PROCESS_IDENTITY_H_
#define VFBROKER_COMMON_PROCESS_IDENTITY_H_

#include <sys/types.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace vfbroker {

// Field 22 of /proc/<pid>/stat (clock ticks after boot). NOT_FOUND if the process is gone.
absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid);

// A pidfd for `pid` that is known to refer to the process that started at `start_time`
// (checked after opening, so a pid recycled in between is caught). NOT_FOUND if that process
// no longer exists.
absl::StatusOr<UniqueFd> OpenPidfdIfSameProcess(pid_t pid, uint64_t start_time);

}  // namespace vfbroker

#endif  // VFBROKER_COMMON_PROCESS_IDENTITY_H_
