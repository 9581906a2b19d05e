// Logging conventions: spdlog, with fmt formatters for the Abseil types we log.
//
// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0),
// which fmt does not know; these formatters let `spdlog::info("{}", status.message())` and
// `spdlog::info("{}", status)` work. Every control-plane line names the tenant and the lease:
// "lease=<id> tenant=uid:<uid>/pid:<pid> ...".
#ifndef VFBROKER_COMMON_LOGGING_H_
#define VFBROKER_COMMON_LOGGING_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spdlog/fmt/fmt.h"
#include "spdlog/spdlog.h"

template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view value, FormatContext& ctx) const -> decltype(ctx.out()) {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(value.data(), value.size()),
                                                     ctx);
  }
};

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<fmt::string_view> {
  template <typename FormatContext>
  auto format(const absl::Status& value, FormatContext& ctx) const -> decltype(ctx.out()) {
    const std::string text = value.ToString();
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(text), ctx);
  }
};

#endif  // VFBROKER_COMMON_LOGGING_H_
