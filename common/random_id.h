// Unguessable identifiers (session tokens, lease ids) from the kernel's CSPRNG. Thread-safe.
#ifndef VFBROKER_COMMON_RANDOM_ID_H_
#define VFBROKER_COMMON_RANDOM_ID_H_

#include <string>
#include "absl/strings/string_view.h"

namespace vfbroker {

// `prefix` followed by 2*bytes lowercase hex digits from getrandom(2).
std::string RandomId(absl::string_view prefix, int bytes);

}  // namespace vfbroker

#endif  // VFBROKER_COMMON_RANDOM_ID_H_
