#include "tools/vfctl/vfctl_lib.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"

namespace vfctl {

const char kUsage[] =
    R"(vfctl: command-line client of vfbrokerd, the vfbroker resource broker.

Usage: vfctl [flags] COMMAND [arguments]

Commands:
  pools                   Pools you may allocate from (an operator sees every pool).
  leases                  Your leases (an operator sees every lease).
  stats                   Broker counters and per-pool usage.
  allocate-extent POOL SIZE [--hold]
                          Allocate a disk extent of SIZE bytes from POOL. SIZE is a whole
                          number with an optional binary unit: 4096, 64M, 1G, 512KiB
                          (K M G T P E; 1M = 1048576 bytes). A lease belongs to the session
                          of the process that asked for it, so without --hold the extent is
                          released again when vfctl exits. With --hold vfctl keeps it until
                          SIGINT or SIGTERM (Ctrl-C), then releases it.
  release LEASE_ID        Give a lease back (your own; an operator may release any).
  watch [--for=DURATION]  Print grants, releases, reclaims and scrubs as they happen, one per
                          line, until interrupted or until DURATION (e.g. 30s, 5m) has passed.
  health [SERVICE]        grpc.health.v1 check of the broker's gRPC endpoint; exit status 0
                          only if it answers SERVING.
  help                    This text.

Flags (before or after the command):
  --socket_dir=DIR        Directory holding the broker's session.sock and grpc.sock
                          (default: $VFBROKER_SOCKET_DIR if set, else /run/vfbroker).
  --json                  Machine-readable output: one protobuf JSON document per command;
                          watch prints one JSON object per line.
  --timeout=DURATION      Deadline of each call to the broker (default 10s).
  -h, --help              This text.

Exit status:
  0  success
  1  usage error: bad command, flag or argument (nothing was sent to the broker)
  2  the broker is unreachable or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED)
  3  the broker refused the request (PERMISSION_DENIED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT,
     ...), or health found it not SERVING; the status name and the broker's message are
     printed to stderr, e.g.  vfctl: PERMISSION_DENIED: pool "scratch" does not admit uid 1001
  4  not found: no such pool, or no such lease of yours
)";

ExitCode ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return ExitCode::kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return ExitCode::kUnreachable;
    case absl::StatusCode::kNotFound:
      return ExitCode::kNotFound;
    default:
      return ExitCode::kRefused;
  }
}

std::string ErrorLine(const absl::Status& status) {
  return absl::StrCat("vfctl: ", absl::StatusCodeToString(status.code()), ": ",
                      status.message());
}

// ---------------------------------------------------------------------------------------------
// Sizes and durations

absl::StatusOr<uint64_t> ParseSize(absl::string_view text) {
  const auto invalid = [text](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid size \"", text, "\": ", why));
  };
  size_t digits = 0;
  while (digits < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  if (digits == 0) return invalid("expected a whole number such as 4096, 64M or 1G");
  uint64_t number = 0;
  if (!absl::SimpleAtoi(text.substr(0, digits), &number)) {
    return invalid("larger than 2^64-1 bytes");
  }
  const std::string unit = absl::AsciiStrToLower(text.substr(digits));
  if (absl::StartsWith(unit, ".") || absl::StartsWith(unit, ",")) {
    return invalid("whole numbers only (write 1536M rather than 1.5G)");
  }
  static constexpr struct {
    char letter;
    int shift;
  } kUnits[] = {{'k', 10}, {'m', 20}, {'g', 30}, {'t', 40}, {'p', 50}, {'e', 60}};
  int shift = -1;
  if (unit.empty() || unit == "b") {
    shift = 0;
  } else {
    for (const auto& candidate : kUnits) {
      if (unit[0] != candidate.letter) continue;
      const absl::string_view rest = absl::string_view(unit).substr(1);
      if (rest.empty() || rest == "i" || rest == "ib") {
        shift = candidate.shift;
      } else if (rest == "b") {
        const std::string binary(1, absl::ascii_toupper(candidate.letter));
        const absl::string_view number_text = text.substr(0, digits);
        return invalid(absl::StrCat("\"", text.substr(digits), "\" is ambiguous; write ",
                                    number_text, binary, " or ", number_text, binary,
                                    "iB (binary units)"));
      }
      break;
    }
  }
  if (shift < 0) {
    return invalid(absl::StrCat("unknown unit \"", text.substr(digits),
                                "\" (use K, M, G, T, P or E, optionally followed by iB)"));
  }
  if (shift > 0 && number > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return invalid("larger than 2^64-1 bytes");
  }
  return number << shift;
}

std::string FormatSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  constexpr int kLargestUnit = 5;
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (value >= 1024.0 && unit < kLargestUnit) {
    value /= 1024.0;
    ++unit;
  }
  std::string text = absl::StrFormat("%.1f", value);
  // One decimal can round up to 1024.0 (1 MiB minus a byte); that is 1.0 of the next unit.
  if (text == "1024.0" && unit < kLargestUnit) {
    ++unit;
    text = "1.0";
  }
  return absl::StrCat(text, " ", kUnits[unit]);
}

std::string FormatAge(absl::Duration age) {
  if (age < absl::ZeroDuration()) age = absl::ZeroDuration();  // clocks of two hosts disagree
  const int64_t seconds = absl::ToInt64Seconds(age);
  constexpr int64_t kMinute = 60, kHour = 60 * kMinute, kDay = 24 * kHour;
  if (seconds < kMinute) return absl::StrCat(seconds, "s");
  if (seconds < kHour) return absl::StrFormat("%dm%02ds", seconds / kMinute, seconds % kMinute);
  if (seconds < kDay) {
    return absl::StrFormat("%dh%02dm", seconds / kHour, seconds % kHour / kMinute);
  }
  return absl::StrFormat("%dd%02dh", seconds / kDay, seconds % kDay / kHour);
}

// ---------------------------------------------------------------------------------------------
// Tables

std::string Table::Render() const {
  size_t column_count = columns_.size();
  for (const std::vector<std::string>& row : rows_) {
    column_count = std::max(column_count, row.size());
  }
  const bool has_header = std::any_of(columns_.begin(), columns_.end(),
                                      [](const Column& c) { return !c.header.empty(); });
  std::vector<size_t> widths(column_count, 0);
  if (has_header) {
    for (size_t i = 0; i < columns_.size(); ++i) widths[i] = columns_[i].header.size();
  }
  for (const std::vector<std::string>& row : rows_) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }

  std::string out;
  const auto append_line = [&](const auto& cell_at) {
    std::string line;
    for (size_t i = 0; i < column_count; ++i) {
      const absl::string_view cell = cell_at(i);
      const Align align = i < columns_.size() ? columns_[i].align : Align::kLeft;
      if (i > 0) line.append("  ");
      const size_t padding = widths[i] - cell.size();
      if (align == Align::kRight) line.append(padding, ' ');
      line.append(cell.data(), cell.size());
      if (align == Align::kLeft) line.append(padding, ' ');
    }
    line.erase(line.find_last_not_of(' ') + 1);  // npos + 1 == 0 clears an all-blank line
    out.append(line).push_back('\n');
  };
  if (has_header) {
    append_line([&](size_t i) -> absl::string_view {
      return i < columns_.size() ? absl::string_view(columns_[i].header) : absl::string_view();
    });
  }
  for (const std::vector<std::string>& row : rows_) {
    append_line([&](size_t i) -> absl::string_view {
      return i < row.size() ? absl::string_view(row[i]) : absl::string_view();
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Command line

namespace {

struct CommandSpec {
  absl::string_view name;
  Command command;
  size_t min_args;
  size_t max_args;
  absl::string_view synopsis;
};

constexpr CommandSpec kCommands[] = {
    {"help", Command::kHelp, 0, 0, "help"},
    {"pools", Command::kPools, 0, 0, "pools"},
    {"leases", Command::kLeases, 0, 0, "leases"},
    {"stats", Command::kStats, 0, 0, "stats"},
    {"allocate-extent", Command::kAllocateExtent, 2, 2, "allocate-extent POOL SIZE [--hold]"},
    {"release", Command::kRelease, 1, 1, "release LEASE_ID"},
    {"watch", Command::kWatch, 0, 0, "watch [--for=DURATION]"},
    {"health", Command::kHealth, 0, 1, "health [SERVICE]"},
};

absl::Status UsageError(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<bool> ParseBoolValue(absl::string_view flag, std::optional<std::string> value) {
  if (!value.has_value()) return true;
  const std::string lower = absl::AsciiStrToLower(*value);
  if (lower == "true" || lower == "1" || lower == "yes") return true;
  if (lower == "false" || lower == "0" || lower == "no") return false;
  return UsageError(absl::StrCat("--", flag, ": expected true or false, got \"", *value, "\""));
}

absl::StatusOr<absl::Duration> ParsePositiveDuration(absl::string_view flag,
                                                     absl::string_view value) {
  absl::Duration duration;
  if (!absl::ParseDuration(value, &duration) || duration <= absl::ZeroDuration() ||
      duration == absl::InfiniteDuration()) {
    return UsageError(absl::StrCat("--", flag, ": expected a positive duration such as 30s, ",
                                   "500ms or 5m, got \"", value, "\""));
  }
  return duration;
}

}  // namespace

absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            absl::string_view socket_dir_from_env) {
  Invocation invocation;
  if (!socket_dir_from_env.empty()) invocation.socket_dir = std::string(socket_dir_from_env);
  bool help = false;
  bool hold_given = false;
  bool for_given = false;
  std::vector<std::string> positionals;

  bool flags_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_ended || arg.size() < 2 || arg[0] != '-') {
      positionals.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_ended = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--")) {
      return UsageError(absl::StrCat("unknown flag ", arg));
    }
    absl::string_view body = absl::string_view(arg).substr(2);
    std::optional<std::string> value;
    if (const size_t equals = body.find('='); equals != absl::string_view::npos) {
      value = std::string(body.substr(equals + 1));
      body = body.substr(0, equals);
    }
    const std::string name = absl::StrReplaceAll(body, {{"-", "_"}});
    // A flag that takes a value accepts it as the next argument too (--timeout 5s).
    const auto take_value = [&]() -> absl::StatusOr<std::string> {
      if (value.has_value()) return *value;
      if (i + 1 < args.size()) return args[++i];
      return UsageError(absl::StrCat("--", name, " needs a value"));
    };

    if (name == "socket_dir") {
      absl::StatusOr<std::string> dir = take_value();
      if (!dir.ok()) return dir.status();
      if (dir->empty()) return UsageError("--socket_dir must not be empty");
      invocation.socket_dir = *std::move(dir);
    } else if (name == "timeout" || name == "for") {
      absl::StatusOr<std::string> text = take_value();
      if (!text.ok()) return text.status();
      absl::StatusOr<absl::Duration> duration = ParsePositiveDuration(name, *text);
      if (!duration.ok()) return duration.status();
      if (name == "timeout") {
        invocation.timeout = *duration;
      } else {
        invocation.watch_for = *duration;
        for_given = true;
      }
    } else if (name == "json" || name == "hold" || name == "help") {
      absl::StatusOr<bool> on = ParseBoolValue(name, value);
      if (!on.ok()) return on.status();
      if (name == "json") invocation.json = *on;
      if (name == "hold") {
        invocation.hold = *on;
        hold_given = true;
      }
      if (name == "help") help = help || *on;
    } else {
      return UsageError(absl::StrCat("unknown flag --", name));
    }
  }

  if (help) {
    invocation.command = Command::kHelp;
    return invocation;
  }
  if (positionals.empty()) return UsageError("no command given");

  const CommandSpec* spec = nullptr;
  for (const CommandSpec& candidate : kCommands) {
    if (candidate.name == positionals[0]) spec = &candidate;
  }
  if (spec == nullptr) return UsageError(absl::StrCat("unknown command \"", positionals[0], "\""));
  invocation.command = spec->command;
  const std::vector<std::string> operands(positionals.begin() + 1, positionals.end());
  if (operands.size() < spec->min_args || operands.size() > spec->max_args) {
    return UsageError(absl::StrCat("usage: vfctl ", spec->synopsis));
  }
  if (hold_given && spec->command != Command::kAllocateExtent) {
    return UsageError("--hold applies only to allocate-extent");
  }
  if (for_given && spec->command != Command::kWatch) {
    return UsageError("--for applies only to watch");
  }

  switch (spec->command) {
    case Command::kAllocateExtent: {
      invocation.pool = operands[0];
      absl::StatusOr<uint64_t> size = ParseSize(operands[1]);
      if (!size.ok()) return UsageError(size.status().message());
      if (*size == 0) return UsageError("SIZE must be greater than 0");
      invocation.size_bytes = *size;
      break;
    }
    case Command::kRelease:
      if (operands[0].empty()) return UsageError("LEASE_ID must not be empty");
      invocation.lease_id = operands[0];
      break;
    case Command::kHealth:
      if (!operands.empty()) invocation.health_service = operands[0];
      break;
    default:
      break;
  }
  return invocation;
}

// ---------------------------------------------------------------------------------------------
// Rendering

namespace {

using Align = Table::Align;

// An enum value's name without its prefix, in lower case: POOL_KIND_BLOCK -> "block". Values a
// newer broker added that this vfctl does not know show as their number.
std::string EnumLabel(const std::string& name, absl::string_view prefix, int number) {
  if (name.empty()) return absl::StrCat("unknown(", number, ")");
  return absl::AsciiStrToLower(absl::StripPrefix(name, prefix));
}

std::string PoolKindLabel(v1::PoolKind kind) {
  return EnumLabel(v1::PoolKind_Name(kind), "POOL_KIND_", kind);
}

std::string FormatMillis(double ms) {
  if (ms <= 0) return "-";
  return absl::StrFormat("%.1f ms", ms);
}

}  // namespace

std::string RenderPools(const std::vector<v1::Pool>& pools) {
  if (pools.empty()) return "no pools\n";
  Table table({{"POOL"},
               {"KIND"},
               {"BACKEND"},
               {"CAPACITY", Align::kRight},
               {"FREE", Align::kRight},
               {"LARGEST FREE", Align::kRight},
               {"ALIGNMENT", Align::kRight},
               {"LEASES", Align::kRight}});
  for (const v1::Pool& pool : pools) {
    if (pool.kind() == v1::POOL_KIND_NIC) {
      table.AddRow({pool.name(), PoolKindLabel(pool.kind()), pool.backend(),
                    absl::StrCat(pool.capacity_slots(), " slots"),
                    absl::StrCat(pool.free_slots(), " slots"), "-", "-",
                    absl::StrCat(pool.leases())});
    } else {
      table.AddRow({pool.name(), PoolKindLabel(pool.kind()), pool.backend(),
                    FormatSize(pool.capacity_bytes()), FormatSize(pool.free_bytes()),
                    FormatSize(pool.largest_free_bytes()), FormatSize(pool.alignment_bytes()),
                    absl::StrCat(pool.leases())});
    }
  }
  return table.Render();
}

std::string RenderLeases(const std::vector<v1::Lease>& leases, absl::Time now) {
  if (leases.empty()) return "no leases\n";
  Table table({{"LEASE"},
               {"POOL"},
               {"KIND"},
               {"SIZE", Align::kRight},
               {"UID", Align::kRight},
               {"PID", Align::kRight},
               {"AGE", Align::kRight},
               {"DEVICE"}});
  for (const v1::Lease& lease : leases) {
    std::string kind = "-", size = "-", device = "-";
    if (lease.has_extent()) {
      kind = "extent";
      size = FormatSize(lease.extent().size_bytes());
      device = lease.extent().device_path();
    } else if (lease.has_nic()) {
      kind = "nic";
      device = !lease.nic().pci_address().empty() ? lease.nic().pci_address()
                                                  : lease.nic().interface();
    }
    table.AddRow({lease.id(), lease.pool(), kind, size, absl::StrCat(lease.owner_uid()),
                  absl::StrCat(lease.owner_pid()),
                  FormatAge(now - absl::FromUnixMillis(lease.granted_unix_ms())),
                  device.empty() ? "-" : device});
  }
  return table.Render();
}

std::string RenderStats(const v1::GetStatsResponse& stats) {
  Table totals({{""}, {"", Align::kRight}});
  totals.AddRow({"sessions", absl::StrCat(stats.sessions())});
  totals.AddRow({"leases", absl::StrCat(stats.leases())});
  totals.AddRow({"grants", absl::StrCat(stats.grants_total())});
  totals.AddRow({"releases", absl::StrCat(stats.releases_total())});
  totals.AddRow({"reclaims", absl::StrCat(stats.reclaims_total())});
  totals.AddRow({"scrubs", absl::StrCat(stats.scrubs_total())});
  totals.AddRow({"denied", absl::StrCat(stats.denied_total())});
  totals.AddRow({"journal records", absl::StrCat(stats.journal_records())});
  totals.AddRow({"uptime", FormatAge(absl::Milliseconds(stats.uptime_ms()))});
  totals.AddRow({"last reclaim", FormatMillis(stats.last_reclaim_ms())});
  totals.AddRow({"max reclaim", FormatMillis(stats.max_reclaim_ms())});
  std::string out = totals.Render();
  if (stats.pools_size() > 0) {
    Table pools({{"POOL"},
                 {"CAPACITY", Align::kRight},
                 {"USED", Align::kRight},
                 {"LEASES", Align::kRight},
                 {"QUARANTINED", Align::kRight}});
    for (const v1::PoolStats& pool : stats.pools()) {
      // NIC pools count slots, not bytes.
      const bool slots = pool.capacity_slots() > 0;
      pools.AddRow({pool.name(),
                    slots ? absl::StrCat(pool.capacity_slots(), " slots")
                          : FormatSize(pool.capacity_bytes()),
                    slots ? absl::StrCat(pool.used_slots(), " slots")
                          : FormatSize(pool.used_bytes()),
                    absl::StrCat(pool.leases()), absl::StrCat(pool.quarantined())});
    }
    absl::StrAppend(&out, "\n", pools.Render());
  }
  return out;
}

std::string RenderLease(const v1::Lease& lease, absl::TimeZone zone) {
  Table table({{""}, {""}});
  table.AddRow({"lease", lease.id()});
  table.AddRow({"pool", lease.pool()});
  if (lease.has_extent()) {
    const v1::Extent& extent = lease.extent();
    table.AddRow({"size", absl::StrCat(FormatSize(extent.size_bytes()), " (",
                                       extent.size_bytes(), " bytes)")});
    table.AddRow({"block size", absl::StrCat(extent.logical_block_size(), " bytes")});
    table.AddRow({"device", extent.device_path().empty() ? "-" : extent.device_path()});
  }
  table.AddRow({"owner", absl::StrCat("uid ", lease.owner_uid(), ", pid ", lease.owner_pid())});
  table.AddRow({"granted", absl::FormatTime("%Y-%m-%d %H:%M:%E3S %Z",
                                            absl::FromUnixMillis(lease.granted_unix_ms()),
                                            zone)});
  return table.Render();
}

std::string FormatEvent(const v1::Event& event, absl::TimeZone zone) {
  const std::string kind =
      absl::AsciiStrToUpper(EnumLabel(v1::Event::Kind_Name(event.kind()), "KIND_", event.kind()));
  std::string line = absl::StrFormat(
      "%s  %-9s", absl::FormatTime("%Y-%m-%d %H:%M:%E3S", absl::FromUnixMillis(event.unix_ms()),
                                   zone),
      kind);
  if (!event.lease_id().empty()) absl::StrAppend(&line, " lease=", event.lease_id());
  if (!event.pool().empty()) absl::StrAppend(&line, " pool=", event.pool());
  // An OVERFLOW notice concerns the watcher, not a tenant: it names no owner.
  if (!event.lease_id().empty()) {
    absl::StrAppend(&line, " uid=", event.owner_uid(), " pid=", event.owner_pid());
  }
  if (!event.detail().empty()) absl::StrAppend(&line, " ", event.detail());
  return std::string(absl::StripTrailingAsciiWhitespace(line));
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool multiline) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = multiline;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("JSON encoding failed: ", status.ToString()));
  }
  return json;
}

}  // namespace vfctl
