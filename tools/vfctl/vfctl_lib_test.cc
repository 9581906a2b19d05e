#include "tools/vfctl/vfctl_lib.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace vfctl {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = kKiB << 10, kGiB = kMiB << 10, kTiB = kGiB << 10;

// ---------------------------------------------------------------------------------------------
// ParseSize

TEST(ParseSizeTest, PlainBytes) {
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("4096B").value(), 4096u);
  EXPECT_EQ(ParseSize("4096b").value(), 4096u);
  EXPECT_EQ(ParseSize("0").value(), 0u);
  EXPECT_EQ(ParseSize("000123").value(), 123u);
}

TEST(ParseSizeTest, BinaryUnitsInEverySpelling) {
  EXPECT_EQ(ParseSize("64K").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("64k").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("64Ki").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("64KiB").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("64kib").value(), 64 * kKiB);
  EXPECT_EQ(ParseSize("64M").value(), 64 * kMiB);
  EXPECT_EQ(ParseSize("64MiB").value(), 64 * kMiB);
  EXPECT_EQ(ParseSize("1G").value(), kGiB);
  EXPECT_EQ(ParseSize("1GiB").value(), kGiB);
  EXPECT_EQ(ParseSize("3T").value(), 3 * kTiB);
  EXPECT_EQ(ParseSize("1P").value(), kTiB << 10);
  EXPECT_EQ(ParseSize("1E").value(), kTiB << 20);
}

TEST(ParseSizeTest, LargestValues) {
  EXPECT_EQ(ParseSize("18446744073709551615").value(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(ParseSize("15E").value(), uint64_t{15} << 60);
  EXPECT_EQ(ParseSize("16777215T").value(), uint64_t{16777215} << 40);
}

TEST(ParseSizeTest, RejectsOverflow) {
  for (const char* text : {"18446744073709551616", "99999999999999999999999", "16E", "17E",
                           "16777216T", "17179869184G", "18446744073709551615K"}) {
    absl::StatusOr<uint64_t> size = ParseSize(text);
    ASSERT_FALSE(size.ok()) << text << " parsed as " << *size;
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(size.status().message().find("2^64-1"), absl::string_view::npos)
        << size.status().message();
  }
}

TEST(ParseSizeTest, RejectsGarbage) {
  for (const char* text : {"", "M", "KiB", "abc", "-1", "+5", " 64M", "64M ", "64 M", "6 4",
                           "64X", "64Mx", "64MiBB", "64bytes", "0x100", "1e3", "64M64",
                           "64iB", "64i"}) {
    absl::StatusOr<uint64_t> size = ParseSize(text);
    EXPECT_FALSE(size.ok()) << "\"" << text << "\" parsed as " << *size;
    if (!size.ok()) {
      EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(ParseSizeTest, ExplainsFractionsAndDecimalUnits) {
  absl::StatusOr<uint64_t> fraction = ParseSize("1.5G");
  ASSERT_FALSE(fraction.ok());
  EXPECT_NE(fraction.status().message().find("whole numbers"), absl::string_view::npos);

  absl::StatusOr<uint64_t> decimal_unit = ParseSize("64MB");
  ASSERT_FALSE(decimal_unit.ok());
  EXPECT_NE(decimal_unit.status().message().find("64M or 64MiB"), absl::string_view::npos)
      << decimal_unit.status().message();
}

// ---------------------------------------------------------------------------------------------
// FormatSize, FormatAge

TEST(FormatSizeTest, HumanUnits) {
  EXPECT_EQ(FormatSize(0), "0 B");
  EXPECT_EQ(FormatSize(1023), "1023 B");
  EXPECT_EQ(FormatSize(1024), "1.0 KiB");
  EXPECT_EQ(FormatSize(4096), "4.0 KiB");
  EXPECT_EQ(FormatSize(64 * kMiB), "64.0 MiB");
  EXPECT_EQ(FormatSize(kGiB + kGiB / 2), "1.5 GiB");
  EXPECT_EQ(FormatSize(4 * kGiB), "4.0 GiB");
  EXPECT_EQ(FormatSize(std::numeric_limits<uint64_t>::max()), "16.0 EiB");
}

TEST(FormatSizeTest, RoundingUpMovesToTheNextUnit) {
  EXPECT_EQ(FormatSize(kMiB - 1), "1.0 MiB");
  EXPECT_EQ(FormatSize(kGiB - 1), "1.0 GiB");
  EXPECT_EQ(FormatSize(kMiB - kKiB), "1023.0 KiB");
}

TEST(FormatSizeTest, ShowsWhatParseSizeRead) {
  EXPECT_EQ(FormatSize(ParseSize("4K").value()), "4.0 KiB");
  EXPECT_EQ(FormatSize(ParseSize("64M").value()), "64.0 MiB");
  EXPECT_EQ(FormatSize(ParseSize("1536M").value()), "1.5 GiB");
  EXPECT_EQ(FormatSize(ParseSize("2T").value()), "2.0 TiB");
}

TEST(FormatAgeTest, TwoMostSignificantUnits) {
  EXPECT_EQ(FormatAge(absl::ZeroDuration()), "0s");
  EXPECT_EQ(FormatAge(absl::Milliseconds(12999)), "12s");
  EXPECT_EQ(FormatAge(absl::Seconds(5 * 60 + 7)), "5m07s");
  EXPECT_EQ(FormatAge(absl::Hours(3) + absl::Minutes(4) + absl::Seconds(59)), "3h04m");
  EXPECT_EQ(FormatAge(absl::Hours(51)), "2d03h");
  EXPECT_EQ(FormatAge(absl::Seconds(-30)), "0s");
}

// ---------------------------------------------------------------------------------------------
// Table

TEST(TableTest, PadsColumnsToTheWidestCellAndAlignsNumbersRight) {
  Table table({{"NAME"}, {"SIZE", Table::Align::kRight}, {"NOTE"}});
  table.AddRow({"scratch", "64.0 MiB", "x"});
  table.AddRow({"a", "4.0 KiB", "longer note"});
  EXPECT_EQ(table.Render(),
            "NAME         SIZE  NOTE\n"
            "scratch  64.0 MiB  x\n"
            "a         4.0 KiB  longer note\n");
}

TEST(TableTest, EveryColumnStartsAtTheSameOffsetOnEveryLine) {
  Table table({{"A"}, {"BB"}, {"CCC", Table::Align::kRight}, {"D"}});
  table.AddRow({"xxxxxx", "y", "1", "last"});
  table.AddRow({"x", "yyyyyyy", "12345", "z"});
  const std::vector<std::string> lines = absl::StrSplit(table.Render(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  // The last column is left-aligned: it starts at the same offset on every line.
  const size_t last_column = lines[0].rfind('D');
  EXPECT_EQ(lines[1].substr(last_column), "last");
  EXPECT_EQ(lines[2].substr(last_column), "z");
  // The right-aligned column ends at the same offset on every line.
  const size_t numbers_end = lines[0].find("CCC") + 3;
  EXPECT_EQ(lines[1].substr(numbers_end - 1, 1), "1");
  EXPECT_EQ(lines[2].substr(numbers_end - 5, 5), "12345");
}

TEST(TableTest, NoTrailingBlanks) {
  Table table({{"A"}, {"B"}});
  table.AddRow({"long cell", ""});
  table.AddRow({"", ""});
  EXPECT_EQ(table.Render(), "A          B\nlong cell\n\n");
}

TEST(TableTest, ShortAndLongRows) {
  Table table({{"A"}, {"B"}});
  table.AddRow({"1"});
  table.AddRow({"1", "2", "extra"});
  EXPECT_EQ(table.Render(),
            "A  B\n"
            "1\n"
            "1  2  extra\n");
}

TEST(TableTest, WithoutHeadersIsAKeyValueListing) {
  Table table({{""}, {"", Table::Align::kRight}});
  table.AddRow({"sessions", "3"});
  table.AddRow({"journal records", "240"});
  EXPECT_EQ(table.Render(),
            "sessions           3\n"
            "journal records  240\n");
}

TEST(TableTest, HeaderOnlyTable) {
  Table table({{"POOL"}, {"SIZE", Table::Align::kRight}});
  EXPECT_TRUE(table.empty());
  EXPECT_EQ(table.Render(), "POOL  SIZE\n");
}

// ---------------------------------------------------------------------------------------------
// Exit codes and error lines

TEST(ExitCodeTest, MapsEveryStatusCode) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), ExitCode::kOk);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("no broker")), ExitCode::kUnreachable);
  EXPECT_EQ(ExitCodeFor(absl::DeadlineExceededError("slow")), ExitCode::kUnreachable);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("no such lease")), ExitCode::kNotFound);
  for (const absl::Status& refusal :
       {absl::PermissionDeniedError("x"), absl::ResourceExhaustedError("x"),
        absl::InvalidArgumentError("x"), absl::FailedPreconditionError("x"),
        absl::UnauthenticatedError("x"), absl::UnimplementedError("x"),
        absl::InternalError("x"), absl::AlreadyExistsError("x"), absl::CancelledError("x")}) {
    EXPECT_EQ(ExitCodeFor(refusal), ExitCode::kRefused) << refusal;
  }
}

TEST(ExitCodeTest, NumbersAreStable) {
  EXPECT_EQ(static_cast<int>(ExitCode::kOk), 0);
  EXPECT_EQ(static_cast<int>(ExitCode::kUsage), 1);
  EXPECT_EQ(static_cast<int>(ExitCode::kUnreachable), 2);
  EXPECT_EQ(static_cast<int>(ExitCode::kRefused), 3);
  EXPECT_EQ(static_cast<int>(ExitCode::kNotFound), 4);
}

TEST(ExitCodeTest, UsageDocumentsEveryExitCode) {
  const std::string usage = kUsage;
  for (const char* line : {"\n  0  ", "\n  1  ", "\n  2  ", "\n  3  ", "\n  4  "}) {
    EXPECT_NE(usage.find(line), std::string::npos) << line;
  }
}

TEST(ErrorLineTest, NamesTheCodeAndKeepsTheMessage) {
  EXPECT_EQ(ErrorLine(absl::PermissionDeniedError("pool \"scratch\" does not admit uid 1001")),
            "vfctl: PERMISSION_DENIED: pool \"scratch\" does not admit uid 1001");
  EXPECT_EQ(ErrorLine(absl::UnavailableError("cannot reach vfbrokerd")),
            "vfctl: UNAVAILABLE: cannot reach vfbrokerd");
}

// ---------------------------------------------------------------------------------------------
// Command line

absl::StatusOr<Invocation> Parse(std::vector<std::string> args, std::string env = "") {
  return ParseCommandLine(args, env);
}

TEST(CommandLineTest, SimpleCommandsAndDefaults) {
  absl::StatusOr<Invocation> pools = Parse({"pools"});
  ASSERT_TRUE(pools.ok()) << pools.status();
  EXPECT_EQ(pools->command, Command::kPools);
  EXPECT_EQ(pools->socket_dir, "/run/vfbroker");
  EXPECT_FALSE(pools->json);
  EXPECT_EQ(pools->timeout, absl::Seconds(10));
  EXPECT_EQ(Parse({"leases"})->command, Command::kLeases);
  EXPECT_EQ(Parse({"stats"})->command, Command::kStats);
  EXPECT_EQ(Parse({"help"})->command, Command::kHelp);
}

TEST(CommandLineTest, SocketDirFromFlagOverridesEnvironment) {
  EXPECT_EQ(Parse({"pools"}, "/tmp/env")->socket_dir, "/tmp/env");
  EXPECT_EQ(Parse({"--socket_dir=/tmp/flag", "pools"}, "/tmp/env")->socket_dir, "/tmp/flag");
  EXPECT_EQ(Parse({"pools", "--socket_dir", "/tmp/next"})->socket_dir, "/tmp/next");
  EXPECT_EQ(Parse({"--socket-dir=/tmp/dash", "pools"})->socket_dir, "/tmp/dash");
  EXPECT_FALSE(Parse({"--socket_dir=", "pools"}).ok());
  EXPECT_FALSE(Parse({"pools", "--socket_dir"}).ok());
}

TEST(CommandLineTest, GlobalFlagsAnywhere) {
  absl::StatusOr<Invocation> invocation = Parse({"stats", "--json", "--timeout=500ms"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_TRUE(invocation->json);
  EXPECT_EQ(invocation->timeout, absl::Milliseconds(500));
  EXPECT_FALSE(Parse({"--json=false", "stats"})->json);
  EXPECT_EQ(Parse({"--timeout", "2m", "stats"})->timeout, absl::Minutes(2));
}

TEST(CommandLineTest, RejectsBadFlags) {
  EXPECT_FALSE(Parse({"pools", "--bogus"}).ok());
  EXPECT_FALSE(Parse({"pools", "-j"}).ok());
  EXPECT_FALSE(Parse({"pools", "--json=maybe"}).ok());
  EXPECT_FALSE(Parse({"pools", "--timeout=0s"}).ok());
  EXPECT_FALSE(Parse({"pools", "--timeout=-1s"}).ok());
  EXPECT_FALSE(Parse({"pools", "--timeout=5"}).ok());
  EXPECT_FALSE(Parse({"pools", "--timeout=inf"}).ok());
  EXPECT_FALSE(Parse({"pools", "--timeout"}).ok());
}

TEST(CommandLineTest, RejectsBadCommands) {
  absl::StatusOr<Invocation> none = Parse({});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Parse({"frobnicate"}).ok());
  EXPECT_FALSE(Parse({"pools", "extra"}).ok());
  EXPECT_FALSE(Parse({"release"}).ok());
  EXPECT_FALSE(Parse({"release", "a", "b"}).ok());
  EXPECT_FALSE(Parse({"allocate-extent", "scratch"}).ok());
  EXPECT_FALSE(Parse({"health", "a", "b"}).ok());
}

TEST(CommandLineTest, HelpWinsOverEverythingElse) {
  EXPECT_EQ(Parse({"--help"})->command, Command::kHelp);
  EXPECT_EQ(Parse({"-h"})->command, Command::kHelp);
  EXPECT_EQ(Parse({"frobnicate", "--help"})->command, Command::kHelp);
}

TEST(CommandLineTest, AllocateExtent) {
  absl::StatusOr<Invocation> invocation = Parse({"allocate-extent", "scratch", "64M"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->command, Command::kAllocateExtent);
  EXPECT_EQ(invocation->pool, "scratch");
  EXPECT_EQ(invocation->size_bytes, 64 * kMiB);
  EXPECT_FALSE(invocation->hold);
  EXPECT_TRUE(Parse({"allocate-extent", "--hold", "scratch", "1G"})->hold);
  EXPECT_TRUE(Parse({"allocate-extent", "scratch", "1G", "--hold"})->hold);
}

TEST(CommandLineTest, AllocateExtentRejectsBadSizes) {
  absl::StatusOr<Invocation> zero = Parse({"allocate-extent", "scratch", "0"});
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("greater than 0"), absl::string_view::npos);
  absl::StatusOr<Invocation> garbage = Parse({"allocate-extent", "scratch", "lots"});
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.status().message().find("lots"), absl::string_view::npos);
  EXPECT_FALSE(Parse({"allocate-extent", "scratch", "99E"}).ok());
  // A negative size reads as an unknown flag: still a usage error.
  EXPECT_FALSE(Parse({"allocate-extent", "scratch", "-5M"}).ok());
}

TEST(CommandLineTest, DoubleDashEndsFlags) {
  absl::StatusOr<Invocation> invocation = Parse({"release", "--", "--odd-id"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->lease_id, "--odd-id");
}

TEST(CommandLineTest, CommandSpecificFlagsOnlyWhereTheyApply) {
  EXPECT_FALSE(Parse({"pools", "--hold"}).ok());
  EXPECT_FALSE(Parse({"leases", "--for=5s"}).ok());
  EXPECT_FALSE(Parse({"allocate-extent", "scratch", "1G", "--for=5s"}).ok());
}

TEST(CommandLineTest, WatchAndHealth) {
  EXPECT_EQ(Parse({"watch"})->watch_for, absl::InfiniteDuration());
  EXPECT_EQ(Parse({"watch", "--for=30s"})->watch_for, absl::Seconds(30));
  EXPECT_EQ(Parse({"watch", "--for", "5m"})->watch_for, absl::Minutes(5));
  EXPECT_EQ(Parse({"health"})->health_service, "");
  EXPECT_EQ(Parse({"health", "vfbroker.v1.Broker"})->health_service, "vfbroker.v1.Broker");
  EXPECT_EQ(Parse({"release", "abc123"})->lease_id, "abc123");
}

// ---------------------------------------------------------------------------------------------
// Rendering

v1::Pool BlockPool() {
  v1::Pool pool;
  pool.set_name("scratch");
  pool.set_kind(v1::POOL_KIND_BLOCK);
  pool.set_backend("loop_extent");
  pool.set_capacity_bytes(4 * kGiB);
  pool.set_free_bytes(3 * kGiB);
  pool.set_largest_free_bytes(2 * kGiB);
  pool.set_alignment_bytes(kMiB);
  pool.set_leases(7);
  return pool;
}

TEST(RenderTest, Pools) {
  EXPECT_EQ(RenderPools({BlockPool()}),
            "POOL     KIND   BACKEND      CAPACITY     FREE  LARGEST FREE  ALIGNMENT  LEASES\n"
            "scratch  block  loop_extent   4.0 GiB  3.0 GiB       2.0 GiB    1.0 MiB       7\n");
  EXPECT_EQ(RenderPools({}), "no pools\n");
}

TEST(RenderTest, LeasesShowAgeRelativeToNow) {
  v1::Lease lease;
  lease.set_id("l-0123");
  lease.set_pool("scratch");
  lease.set_owner_uid(1000);
  lease.set_owner_pid(4242);
  lease.set_granted_unix_ms(1'700'000'000'000);
  lease.mutable_extent()->set_size_bytes(64 * kMiB);
  lease.mutable_extent()->set_device_path("/dev/loop12");
  const absl::Time now = absl::FromUnixMillis(1'700'000'000'000) + absl::Seconds(307);
  EXPECT_EQ(RenderLeases({lease}, now),
            "LEASE   POOL     KIND        SIZE   UID   PID    AGE  DEVICE\n"
            "l-0123  scratch  extent  64.0 MiB  1000  4242  5m07s  /dev/loop12\n");
  EXPECT_EQ(RenderLeases({}, now), "no leases\n");
}

TEST(RenderTest, LeaseDetail) {
  v1::Lease lease;
  lease.set_id("l-1");
  lease.set_pool("scratch");
  lease.set_owner_uid(0);
  lease.set_owner_pid(99);
  lease.set_granted_unix_ms(0);
  lease.mutable_extent()->set_size_bytes(64 * kMiB);
  lease.mutable_extent()->set_logical_block_size(512);
  lease.mutable_extent()->set_device_path("/dev/loop3");
  EXPECT_EQ(RenderLease(lease, absl::UTCTimeZone()),
            "lease       l-1\n"
            "pool        scratch\n"
            "size        64.0 MiB (67108864 bytes)\n"
            "block size  512 bytes\n"
            "device      /dev/loop3\n"
            "owner       uid 0, pid 99\n"
            "granted     1970-01-01 00:00:00.000 UTC\n");
}

TEST(RenderTest, Stats) {
  v1::GetStatsResponse stats;
  stats.set_sessions(3);
  stats.set_leases(2);
  stats.set_grants_total(120);
  stats.set_uptime_ms(3'600'000 + 4 * 60'000);
  stats.set_last_reclaim_ms(12.34);
  v1::PoolStats* pool = stats.add_pools();
  pool->set_name("scratch");
  pool->set_capacity_bytes(4 * kGiB);
  pool->set_used_bytes(kGiB);
  pool->set_leases(2);
  v1::PoolStats* nic = stats.add_pools();
  nic->set_name("lan");
  nic->set_capacity_slots(8);
  nic->set_used_slots(3);
  nic->set_leases(3);
  EXPECT_EQ(RenderStats(stats),
            "sessions               3\n"
            "leases                 2\n"
            "grants               120\n"
            "releases               0\n"
            "reclaims               0\n"
            "scrubs                 0\n"
            "denied                 0\n"
            "journal records        0\n"
            "uptime             1h04m\n"
            "last reclaim     12.3 ms\n"
            "max reclaim            -\n"
            "\n"
            "POOL     CAPACITY     USED  LEASES  QUARANTINED\n"
            "scratch   4.0 GiB  1.0 GiB       2            0\n"
            "lan       8 slots  3 slots       3            0\n");
}

TEST(RenderTest, EventLine) {
  v1::Event event;
  event.set_kind(v1::Event::KIND_GRANTED);
  event.set_unix_ms(1'700'000'000'123);
  event.set_lease_id("l-9");
  event.set_pool("scratch");
  event.set_owner_uid(1000);
  event.set_owner_pid(77);
  event.set_detail("64 MiB");
  EXPECT_EQ(FormatEvent(event, absl::UTCTimeZone()),
            "2023-11-14 22:13:20.123  GRANTED   lease=l-9 pool=scratch uid=1000 pid=77 64 MiB");

  v1::Event overflow;
  overflow.set_kind(v1::Event::KIND_OVERFLOW);
  overflow.set_unix_ms(0);
  EXPECT_EQ(FormatEvent(overflow, absl::UTCTimeZone()), "1970-01-01 00:00:00.000  OVERFLOW");

  v1::Event future;
  future.set_kind(static_cast<v1::Event::Kind>(42));
  EXPECT_NE(FormatEvent(future, absl::UTCTimeZone()).find("UNKNOWN(42)"), std::string::npos);
}

TEST(JsonTest, SingleLineWithZeroFieldsAndCamelCase) {
  v1::Event event;
  event.set_kind(v1::Event::KIND_RELEASED);
  event.set_lease_id("l-1");
  absl::StatusOr<std::string> json = ToJson(event, /*multiline=*/false);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(json->find('\n'), std::string::npos);
  EXPECT_NE(json->find("\"kind\":\"KIND_RELEASED\""), std::string::npos) << *json;
  EXPECT_NE(json->find("\"leaseId\":\"l-1\""), std::string::npos) << *json;
  EXPECT_NE(json->find("\"ownerUid\":0"), std::string::npos) << *json;
}

TEST(JsonTest, MultilineDocument) {
  v1::ListPoolsResponse response;
  *response.add_pools() = BlockPool();
  absl::StatusOr<std::string> json = ToJson(response, /*multiline=*/true);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_NE(json->find('\n'), std::string::npos);
  EXPECT_NE(json->find("\"capacityBytes\": \"4294967296\""), std::string::npos) << *json;
}

}  // namespace
}  // namespace vfctl
