#include "common/random_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdlib>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace vfbroker {

std::string RandomId(absl::string_view prefix, int bytes) {
  std::string raw(static_cast<size_t>(bytes), '\0');
  size_t filled = 0;
  while (filled < raw.size()) {
    ssize_t n = ::getrandom(raw.data() + filled, raw.size() - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::abort();  // no entropy source: issuing guessable ids would be worse than stopping
    }
    filled += static_cast<size_t>(n);
  }
  return absl::StrCat(prefix, absl::BytesToHexString(raw));
}

}  // namespace vfbroker
