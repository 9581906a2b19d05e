// vfctl's logic that needs no broker: the command line, sizes, aligned tables, exit codes and
// the text rendering of broker messages. vfctl_main.cc only adds the calls to the broker.
#ifndef VFBROKER_TOOLS_VFCTL_VFCTL_LIB_H_
#define VFBROKER_TOOLS_VFCTL_VFCTL_LIB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "proto/vfbroker/v1/broker.pb.h"

namespace vfctl {

namespace v1 = vfbroker::v1;

// `vfctl --help`, including the meaning of every exit status.
extern const char kUsage[];

inline constexpr char kDefaultSocketDir[] = "/run/vfbroker";
inline constexpr absl::Duration kDefaultTimeout = absl::Seconds(10);

// What vfctl's exit status means; scripts depend on these numbers, so they never change.
enum class ExitCode : int {
  kOk = 0,
  kUsage = 1,        // bad command, flag or argument; nothing was sent to the broker
  kUnreachable = 2,  // no broker at the socket, or it did not answer in time
  kRefused = 3,      // the broker answered with an error (other than NOT_FOUND)
  kNotFound = 4,     // no such pool, or no such lease of the caller's
};

// The exit status for the outcome of a call to the broker.
ExitCode ExitCodeFor(const absl::Status& status);

// "vfctl: PERMISSION_DENIED: pool \"scratch\" does not admit uid 1001": the code's name, so
// scripts and people can tell a refusal from an outage, and the broker's own message.
std::string ErrorLine(const absl::Status& status);

// A byte count written as an integer with an optional binary unit, case-insensitive:
// 4096, 4096B, 64K, 64KiB, 64M, 1G, 2T, 1P, 1E (1M = 1048576 bytes). Rejects fractions, signs,
// spaces, decimal units such as "MB" (ambiguous: 10^6 or 2^20?) and values above 2^64-1.
absl::StatusOr<uint64_t> ParseSize(absl::string_view text);

// 512 -> "512 B", 67108864 -> "64.0 MiB", 1610612736 -> "1.5 GiB".
std::string FormatSize(uint64_t bytes);

// A duration in its two most significant units: "12s", "5m07s", "3h04m", "2d03h".
std::string FormatAge(absl::Duration age);

// A plain-text table whose columns are padded to their widest cell. Widths are counted in
// bytes: everything the broker puts in a table (pool names, lease ids, device paths) is ASCII.
class Table {
 public:
  enum class Align { kLeft, kRight };
  struct Column {
    std::string header;
    Align align = Align::kLeft;
  };

  // With all headers empty the table has no header line (a key/value listing).
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

  // A row shorter than the header leaves its last cells empty; a longer one adds unnamed,
  // left-aligned columns.
  void AddRow(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  bool empty() const { return rows_.empty(); }

  // Columns are separated by two spaces; lines carry no trailing blanks and end in '\n'.
  std::string Render() const;

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<std::string>> rows_;
};

enum class Command {
  kHelp,
  kPools,
  kLeases,
  kStats,
  kAllocateExtent,
  kRelease,
  kWatch,
  kHealth,
};

// A parsed and validated command line.
struct Invocation {
  Command command = Command::kHelp;
  std::string socket_dir = kDefaultSocketDir;
  bool json = false;
  absl::Duration timeout = kDefaultTimeout;
  // allocate-extent
  std::string pool;
  uint64_t size_bytes = 0;
  bool hold = false;
  // release
  std::string lease_id;
  // watch
  absl::Duration watch_for = absl::InfiniteDuration();
  // health: "" = the server as a whole
  std::string health_service;
};

// Parses the arguments after the program name. Flags may come before or after the command,
// as --name=value or --name value, with '-' or '_' in the name; "--" ends the flags.
// `socket_dir_from_env` is $VFBROKER_SOCKET_DIR ("" if unset); --socket_dir overrides it.
// INVALID_ARGUMENT with a message for the user if the command line is wrong.
absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args,
                                            absl::string_view socket_dir_from_env);

// Text rendering of broker messages. Times are shown in `zone`; ages are relative to `now`.
std::string RenderPools(const std::vector<v1::Pool>& pools);
std::string RenderLeases(const std::vector<v1::Lease>& leases, absl::Time now);
std::string RenderStats(const v1::GetStatsResponse& stats);
std::string RenderLease(const v1::Lease& lease, absl::TimeZone zone);
// One line, no trailing newline: "2026-11-24 16:33:25.123  GRANTED    lease=... pool=...".
std::string FormatEvent(const v1::Event& event, absl::TimeZone zone);

// Protobuf JSON (lowerCamelCase names, zero values included so that every field is present).
// `multiline` indents for people; single-line output suits one-object-per-line streams.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool multiline);

}  // namespace vfctl

#endif  // VFBROKER_TOOLS_VFCTL_VFCTL_LIB_H_
