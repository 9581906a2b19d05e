#include "broker/config/config_loader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "broker/allocator/allocator.h"
#include "broker/config/config.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A config that uses every field, with values different from the defaults.
constexpr char kFullConfig[] = R"pb(
  socket_dir: "/run/vfb"
  socket_mode: 432  # 0660
  state_dir: "/var/lib/vfb"
  operator_uids: [ 0, 1003 ]
  default_quota { max_bytes: 1073741824 max_leases: 16 }
  quotas {
    uid: 1000
    quota {}
  }
  quotas {
    uid: 1001
    quota { max_bytes: 2147483648 }
  }
  pools {
    name: "scratch"
    access { gids: [ 100 ] }
    loop_extent {
      backing_path: "/var/lib/vfb/scratch.img"
      size_bytes: 4294967296
      create: true
      alignment_bytes: 2097152
      max_extent_bytes: 1073741824
    }
  }
  pools {
    name: "fast_1-b"
    access { uids: [ 1000, 1001 ] }
    loop_extent { backing_path: "/dev/nvme0n1" }
  }
  pools {
    name: "nvme"
    access { uids: [ 1000 ] }
    nvme_sriov {
      pf_pci_address: "0000:01:00.0"
      namespace_ids: [ 2, 3, 4 ]
      io_queues_per_vf: 4
      interrupts_per_vf: 2
    }
  }
  max_sessions: 100
  max_leases_per_session: 8
)pb";

config::BrokerConfig FullConfigProto() {
  config::BrokerConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(kFullConfig, &config));
  return config;
}

std::string ToText(const config::BrokerConfig& config) {
  std::string text;
  EXPECT_TRUE(google::protobuf::TextFormat::PrintToString(config, &text));
  return text;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

// ---------------------------------------------------------------------------------------------
// Good configs and defaults

TEST(ParseBrokerConfigTest, FullConfigKeepsEveryValue) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(kFullConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->socket_dir(), "/run/vfb");
  EXPECT_EQ(config->socket_mode(), 0660u);
  EXPECT_EQ(config->state_dir(), "/var/lib/vfb");
  EXPECT_THAT(config->operator_uids(), ElementsAre(0, 1003));
  EXPECT_EQ(config->default_quota().max_bytes(), kGiB);
  EXPECT_EQ(config->default_quota().max_leases(), 16u);
  ASSERT_EQ(config->quotas_size(), 2);
  EXPECT_EQ(config->quotas(1).quota().max_bytes(), 2 * kGiB);
  ASSERT_EQ(config->pools_size(), 3);
  const config::LoopExtentPool& scratch = config->pools(0).loop_extent();
  EXPECT_EQ(config->pools(0).name(), "scratch");
  EXPECT_EQ(scratch.backing_path(), "/var/lib/vfb/scratch.img");
  EXPECT_EQ(scratch.size_bytes(), 4 * kGiB);
  EXPECT_TRUE(scratch.create());
  EXPECT_EQ(scratch.alignment_bytes(), 2 * kMiB);
  EXPECT_EQ(scratch.max_extent_bytes(), kGiB);
  EXPECT_EQ(config->pools(1).name(), "fast_1-b");
  const config::NvmeSriovPool& nvme = config->pools(2).nvme_sriov();
  EXPECT_EQ(nvme.pf_pci_address(), "0000:01:00.0");
  EXPECT_THAT(nvme.namespace_ids(), ElementsAre(2, 3, 4));
  EXPECT_EQ(nvme.io_queues_per_vf(), 4u);
  EXPECT_EQ(nvme.interrupts_per_vf(), 2u);
  EXPECT_EQ(config->max_sessions(), 100u);
  EXPECT_EQ(config->max_leases_per_session(), 8u);
}

TEST(ParseBrokerConfigTest, FillsDefaults) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    pools {
      name: "p"
      access { any_user: true }
      loop_extent { backing_path: "/srv/p.img" }
    }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->socket_dir(), "/run/vfbroker");
  EXPECT_EQ(config->socket_mode(), 0666u);
  EXPECT_EQ(config->state_dir(), "/var/lib/vfbroker");
  EXPECT_EQ(config->max_sessions(), 4096u);
  EXPECT_EQ(config->max_leases_per_session(), 256u);
  EXPECT_EQ(config->pools(0).loop_extent().alignment_bytes(), kMiB);
  // No default invents a limit or a size.
  EXPECT_EQ(config->default_quota().max_bytes(), 0u);
  EXPECT_EQ(config->default_quota().max_leases(), 0u);
  EXPECT_EQ(config->pools(0).loop_extent().size_bytes(), 0u);
  EXPECT_EQ(config->pools(0).loop_extent().max_extent_bytes(), 0u);
  EXPECT_TRUE(config->operator_uids().empty());
}

TEST(ParseBrokerConfigTest, FillsNvmeSriovDefaults) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    pools {
      name: "nv"
      access { any_user: true }
      nvme_sriov { pf_pci_address: "0000:00:04.0" namespace_ids: 2 }
    }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->pools(0).nvme_sriov().io_queues_per_vf(), 2u);
  EXPECT_EQ(config->pools(0).nvme_sriov().interrupts_per_vf(), 1u);
}

TEST(ApplyBrokerConfigDefaultsTest, IsIdempotentAndKeepsSetValues) {
  config::BrokerConfig config = FullConfigProto();
  config::BrokerConfig once = config;
  ApplyBrokerConfigDefaults(&once);
  config::BrokerConfig twice = once;
  ApplyBrokerConfigDefaults(&twice);
  EXPECT_EQ(ToText(once), ToText(twice));
  // Only the unset alignment of the second pool changed.
  config.mutable_pools(1)->mutable_loop_extent()->set_alignment_bytes(kMiB);
  EXPECT_EQ(ToText(config), ToText(once));
}

TEST(ParseBrokerConfigTest, Boundaries) {
  config::BrokerConfig config = FullConfigProto();
  config.mutable_pools(0)->set_name(std::string(32, 'a'));
  config.mutable_pools(1)->set_name("0");
  config.mutable_pools(0)->mutable_loop_extent()->set_alignment_bytes(4096);
  config.mutable_pools(1)->mutable_loop_extent()->set_alignment_bytes(kGiB);
  config.mutable_pools(0)->mutable_loop_extent()->set_max_extent_bytes(4 * kGiB);  // == size
  config.set_socket_mode(0777);
  config.set_socket_dir("/" + std::string(107 - 14, 'd'));  // "/ddd…/session.sock" is 107 bytes
  EXPECT_TRUE(ParseBrokerConfig(ToText(config)).ok()) << ParseBrokerConfig(ToText(config)).status();
}

TEST(ParseBrokerConfigTest, SocketModeInOctal) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    socket_mode: 0660
    pools {
      name: "p"
      access { any_user: true }
      loop_extent { backing_path: "/srv/p.img" }
    }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->socket_mode(), 0660u);
  EXPECT_EQ(ParseBrokerConfig("socket_mode: 0778").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseBrokerConfigTest, CommentsAndListSyntax) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    # a comment
    operator_uids: 5  # repeated fields may be written one at a time
    operator_uids: [ 6, 7 ]
    pools {
      name: "p"
      access {
        uids: 1
        uids: 2
        gids: []
      }
      loop_extent { backing_path: "/srv/p.img" }
    }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->operator_uids(), ElementsAre(5, 6, 7));
}

// ---------------------------------------------------------------------------------------------
// Syntax errors

struct SyntaxCase {
  const char* name;
  std::string text;
  std::string expected;  // a substring of the message
};

class SyntaxErrorTest : public testing::TestWithParam<SyntaxCase> {};

TEST_P(SyntaxErrorTest, IsInvalidArgumentWithPosition) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(GetParam().text);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(GetParam().expected));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SyntaxErrorTest,
    testing::Values(
        SyntaxCase{"UnknownField", "socket_dir: \"/x\"\n  bogus_field: 1\n",
                   "line 2, column 14: Message type \"vfbroker.config.BrokerConfig\" has no field "
                   "named \"bogus_field\""},
        SyntaxCase{"Unterminated", "pools {\n  name: \"a\"\n", "line 3, column 1"},
        SyntaxCase{"UnbalancedClose", "}", "line 1, column 1"},
        SyntaxCase{"MissingColonValue", "socket_dir:", "line 1, column 12"},
        SyntaxCase{"WrongType", "socket_dir: 5", "line 1"},
        SyntaxCase{"NegativeUnsigned", "socket_mode: -1", "line 1"},
        SyntaxCase{"Uint32Overflow", "max_sessions: 4294967296", "line 1"},
        SyntaxCase{"Uint64Overflow", "pools { loop_extent { size_bytes: 18446744073709551616 } }",
                   "line 1"},
        SyntaxCase{"SingularTwice", "socket_mode: 1\nsocket_mode: 2", "line 2"},
        SyntaxCase{"MessageTwice", "pools { loop_extent { } loop_extent { } }", "loop_extent"},
        SyntaxCase{"UnterminatedString", "socket_dir: \"/run", "line 1"},
        SyntaxCase{"Binary", std::string("\xff\xfe\0\x01", 4), "line 1"}),
    [](const testing::TestParamInfo<SyntaxCase>& info) { return info.param.name; });

TEST(ParseBrokerConfigTest, RefusesOversizedText) {
  const std::string text(kMaxConfigBytes + 1, ' ');
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(text);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("more than the limit"));
}

TEST(ParseBrokerConfigTest, EmptyTextNeedsAPool) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig("");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(), "pools: at least one pool is required");
}

// ---------------------------------------------------------------------------------------------
// Validation: each rule, on an otherwise good config, refused with the field's path.

struct RuleCase {
  const char* name;
  std::function<void(config::BrokerConfig&)> break_config;
  std::string expected;  // a substring of the message, starting with the field path
};

class ValidationRuleTest : public testing::TestWithParam<RuleCase> {};

TEST_P(ValidationRuleTest, RefusedNamingTheField) {
  config::BrokerConfig config = FullConfigProto();
  GetParam().break_config(config);
  absl::StatusOr<config::BrokerConfig> parsed = ParseBrokerConfig(ToText(config));
  ASSERT_FALSE(parsed.ok()) << "accepted:\n" << ToText(config);
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(GetParam().expected));
}

config::LoopExtentPool& Loop(config::BrokerConfig& config, int pool) {
  return *config.mutable_pools(pool)->mutable_loop_extent();
}

config::NvmeSriovPool& Nvme(config::BrokerConfig& config) {
  return *config.mutable_pools(2)->mutable_nvme_sriov();
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ValidationRuleTest,
    testing::Values(
        // pools
        RuleCase{"NoPools", [](auto& c) { c.clear_pools(); },
                 "pools: at least one pool is required"},
        RuleCase{"EmptyName", [](auto& c) { c.mutable_pools(0)->clear_name(); },
                 "pools[0].name: must match [a-z0-9][a-z0-9_-]{0,31}, got \"\""},
        RuleCase{"UpperCaseName", [](auto& c) { c.mutable_pools(1)->set_name("Fast"); },
                 "pools[1].name: must match [a-z0-9][a-z0-9_-]{0,31}, got \"Fast\""},
        RuleCase{"NameStartsWithDash", [](auto& c) { c.mutable_pools(0)->set_name("-a"); },
                 "pools[0].name: must match"},
        RuleCase{"NameStartsWithUnderscore", [](auto& c) { c.mutable_pools(0)->set_name("_a"); },
                 "pools[0].name: must match"},
        RuleCase{"NameWithDot", [](auto& c) { c.mutable_pools(0)->set_name("a.b"); },
                 "pools[0].name: must match"},
        RuleCase{"NameWithSlash", [](auto& c) { c.mutable_pools(0)->set_name("a/b"); },
                 "pools[0].name: must match"},
        RuleCase{"NameWithSpace", [](auto& c) { c.mutable_pools(0)->set_name("a b"); },
                 "pools[0].name: must match"},
        RuleCase{"NameWithNul",
                 [](auto& c) { c.mutable_pools(0)->set_name(std::string("a\0b", 3)); },
                 "pools[0].name: must match [a-z0-9][a-z0-9_-]{0,31}, got \"a\\000b\""},
        RuleCase{"NameTooLong", [](auto& c) { c.mutable_pools(0)->set_name(std::string(33, 'a')); },
                 "pools[0].name: must match"},
        RuleCase{"DuplicateName", [](auto& c) { c.mutable_pools(1)->set_name("scratch"); },
                 "pools[1].name: \"scratch\" is already the name of pools[0]"},
        RuleCase{"NoBackend", [](auto& c) { c.mutable_pools(1)->clear_loop_extent(); },
                 "pools[1]: no backend set"},
        RuleCase{"EmptyAccess", [](auto& c) { c.mutable_pools(0)->clear_access(); },
                 "pools[0].access: admits no one but root; list uids or gids, or set "
                 "any_user: true"},
        RuleCase{"AccessAnyUserFalse",
                 [](auto& c) {
                   c.mutable_pools(1)->mutable_access()->clear_uids();
                   c.mutable_pools(1)->mutable_access()->set_any_user(false);
                 },
                 "pools[1].access: admits no one but root"},
        // loop_extent.backing_path
        RuleCase{"EmptyBackingPath", [](auto& c) { Loop(c, 0).clear_backing_path(); },
                 "pools[0].loop_extent.backing_path: must be set"},
        RuleCase{"RelativeBackingPath", [](auto& c) { Loop(c, 0).set_backing_path("x.img"); },
                 "pools[0].loop_extent.backing_path: must be an absolute path"},
        RuleCase{"DotDotBackingPath",
                 [](auto& c) { Loop(c, 1).set_backing_path("/var/lib/../x.img"); },
                 "pools[1].loop_extent.backing_path: must be an absolute path without empty, "
                 "\".\" or \"..\" components or a trailing slash, got \"/var/lib/../x.img\""},
        RuleCase{"DotBackingPath", [](auto& c) { Loop(c, 1).set_backing_path("/var/./x.img"); },
                 "pools[1].loop_extent.backing_path: must be an absolute path without"},
        RuleCase{"DoubleSlashBackingPath", [](auto& c) { Loop(c, 1).set_backing_path("/a//b"); },
                 "pools[1].loop_extent.backing_path: must be an absolute path without"},
        RuleCase{"TrailingSlashBackingPath", [](auto& c) { Loop(c, 1).set_backing_path("/a/"); },
                 "pools[1].loop_extent.backing_path: must be an absolute path without"},
        RuleCase{"NulInBackingPath",
                 [](auto& c) { Loop(c, 1).set_backing_path(std::string("/a\0b", 4)); },
                 "pools[1].loop_extent.backing_path: must not contain NUL bytes"},
        RuleCase{"SharedBackingPath",
                 [](auto& c) { Loop(c, 1).set_backing_path("/var/lib/vfb/scratch.img"); },
                 "pools[1].loop_extent.backing_path: \"/var/lib/vfb/scratch.img\" already backs "
                 "pools[0]"},
        // loop_extent sizes
        RuleCase{"AlignmentNotPowerOfTwo", [](auto& c) { Loop(c, 1).set_alignment_bytes(3000); },
                 "pools[1].loop_extent.alignment_bytes: must be a power of two >= 4096, got 3000"},
        RuleCase{"AlignmentTooSmall", [](auto& c) { Loop(c, 0).set_alignment_bytes(2048); },
                 "pools[0].loop_extent.alignment_bytes: must be a power of two >= 4096, got 2048"},
        RuleCase{"AlignmentTooLarge",
                 [](auto& c) { Loop(c, 1).set_alignment_bytes(uint64_t{1} << 31); },
                 "pools[1].loop_extent.alignment_bytes: must be at most 1073741824 (1 GiB), got "
                 "2147483648"},
        RuleCase{"AlignmentHuge",
                 [](auto& c) { Loop(c, 1).set_alignment_bytes(uint64_t{1} << 63); },
                 "pools[1].loop_extent.alignment_bytes: must be at most"},
        RuleCase{"SizeNotMultipleOfAlignment",
                 [](auto& c) { Loop(c, 0).set_size_bytes(4 * kGiB + kMiB); },
                 "pools[0].loop_extent.size_bytes: must be a multiple of alignment_bytes "
                 "(2097152), got 4296015872"},
        RuleCase{"CreateWithoutSize", [](auto& c) { Loop(c, 0).clear_size_bytes(); },
                 "pools[0].loop_extent.size_bytes: must be set when create is true"},
        RuleCase{"SizeBeyondOffT", [](auto& c) { Loop(c, 0).set_size_bytes(uint64_t{1} << 63); },
                 "pools[0].loop_extent.size_bytes: must be at most 9223372036854775807"},
        RuleCase{"SizeMax", [](auto& c) { Loop(c, 0).set_size_bytes(~uint64_t{0}); },
                 "pools[0].loop_extent.size_bytes: must be a multiple"},
        RuleCase{"MaxExtentNotMultipleOfAlignment",
                 [](auto& c) { Loop(c, 0).set_max_extent_bytes(kMiB); },
                 "pools[0].loop_extent.max_extent_bytes: must be a multiple of alignment_bytes "
                 "(2097152), got 1048576"},
        RuleCase{"MaxExtentLargerThanPool",
                 [](auto& c) { Loop(c, 0).set_max_extent_bytes(8 * kGiB); },
                 "pools[0].loop_extent.max_extent_bytes: must not exceed size_bytes "
                 "(4294967296), got 8589934592"},
        // nvme_sriov
        RuleCase{"NoPf", [](auto& c) { Nvme(c).clear_pf_pci_address(); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address DDDD:BB:DD.F in "
                 "lower-case hex, got \"\""},
        RuleCase{"UpperCasePf", [](auto& c) { Nvme(c).set_pf_pci_address("0000:0A:00.0"); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address"},
        RuleCase{"ShortPf", [](auto& c) { Nvme(c).set_pf_pci_address("01:00.0"); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address"},
        RuleCase{"PathInPf", [](auto& c) { Nvme(c).set_pf_pci_address("../../../etc"); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address"},
        RuleCase{"PfFunction8", [](auto& c) { Nvme(c).set_pf_pci_address("0000:01:00.8"); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address"},
        RuleCase{"PfDevice20", [](auto& c) { Nvme(c).set_pf_pci_address("0000:01:20.0"); },
                 "pools[2].nvme_sriov.pf_pci_address: must be a PCI address"},
        RuleCase{"SharedPf",
                 [](auto& c) {
                   config::PoolConfig* copy = c.add_pools();
                   *copy = c.pools(2);
                   copy->set_name("nvme2");
                 },
                 "pools[3].nvme_sriov.pf_pci_address: \"0000:01:00.0\" is already the PF of "
                 "pools[2]"},
        RuleCase{"NoNamespaces", [](auto& c) { Nvme(c).clear_namespace_ids(); },
                 "pools[2].nvme_sriov.namespace_ids: must list at least one namespace"},
        RuleCase{"TooManyNamespaces",
                 [](auto& c) {
                   for (uint32_t n = 10; n < 200; ++n) Nvme(c).add_namespace_ids(n);
                 },
                 "pools[2].nvme_sriov.namespace_ids: must list at most 128 namespaces, got 193"},
        RuleCase{"NamespaceZero", [](auto& c) { Nvme(c).set_namespace_ids(1, 0); },
                 "pools[2].nvme_sriov.namespace_ids[1]: must be a namespace id 1..4294967294, "
                 "got 0"},
        RuleCase{"NamespaceBroadcast", [](auto& c) { Nvme(c).set_namespace_ids(0, 0xffffffffu); },
                 "pools[2].nvme_sriov.namespace_ids[0]: must be a namespace id"},
        RuleCase{"DuplicateNamespace", [](auto& c) { Nvme(c).set_namespace_ids(2, 2); },
                 "pools[2].nvme_sriov.namespace_ids[2]: namespace 2 is already slot 0"},
        RuleCase{"OneQueue", [](auto& c) { Nvme(c).set_io_queues_per_vf(1); },
                 "pools[2].nvme_sriov.io_queues_per_vf: must be 2..64 (the admin queue and at "
                 "least one I/O queue), got 1"},
        RuleCase{"TooManyQueues", [](auto& c) { Nvme(c).set_io_queues_per_vf(65); },
                 "pools[2].nvme_sriov.io_queues_per_vf: must be 2..64"},
        RuleCase{"TooManyInterrupts", [](auto& c) { Nvme(c).set_interrupts_per_vf(1000); },
                 "pools[2].nvme_sriov.interrupts_per_vf: must be 1..64, got 1000"},
        // top level
        RuleCase{"RelativeSocketDir", [](auto& c) { c.set_socket_dir("run/vfb"); },
                 "socket_dir: must be an absolute path, got \"run/vfb\""},
        RuleCase{"NulInSocketDir", [](auto& c) { c.set_socket_dir(std::string("/run\0x", 6)); },
                 "socket_dir: must not contain NUL bytes"},
        RuleCase{"SocketDirTooLong",
                 [](auto& c) { c.set_socket_dir("/" + std::string(107 - 13, 'd')); },
                 "socket_dir: too long for a Unix socket path (95 + 13 > 107 bytes)"},
        RuleCase{"RelativeStateDir", [](auto& c) { c.set_state_dir("var/lib"); },
                 "state_dir: must be an absolute path, got \"var/lib\""},
        RuleCase{"NulInStateDir", [](auto& c) { c.set_state_dir(std::string("/var\0x", 6)); },
                 "state_dir: must not contain NUL bytes"},
        RuleCase{"SocketModeTooLarge", [](auto& c) { c.set_socket_mode(01000); },
                 "socket_mode: must be at most 0777 (511: permission bits only), got 01000 (512)"},
        RuleCase{"SocketModeSetuid", [](auto& c) { c.set_socket_mode(04755); },
                 "socket_mode: must be at most 0777"},
        // quotas
        RuleCase{"DuplicateQuotaUid", [](auto& c) { c.mutable_quotas(1)->set_uid(1000); },
                 "quotas[1].uid: uid 1000 already has a quota in quotas[0]"},
        RuleCase{"QuotaWithoutLimits", [](auto& c) { c.mutable_quotas(1)->clear_quota(); },
                 "quotas[1].quota: must be set (write quota {} to give this uid no limit)"}),
    [](const testing::TestParamInfo<RuleCase>& info) { return info.param.name; });

TEST(ValidateBrokerConfigTest, ReportsEveryProblemAtOnce) {
  config::BrokerConfig config = FullConfigProto();
  config.mutable_pools(0)->set_name("Bad");
  Loop(config, 1).set_alignment_bytes(3000);
  config.set_state_dir("relative");
  absl::StatusOr<config::BrokerConfig> parsed = ParseBrokerConfig(ToText(config));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message(),
            "state_dir: must be an absolute path, got \"relative\"; "
            "pools[0].name: must match [a-z0-9][a-z0-9_-]{0,31}, got \"Bad\"; "
            "pools[1].loop_extent.alignment_bytes: must be a power of two >= 4096, got 3000");
}

TEST(ValidateBrokerConfigTest, WithoutDefaultsTheUnsetFieldsAreReported) {
  config::BrokerConfig config = FullConfigProto();
  config.clear_socket_dir();
  config.clear_state_dir();
  config.clear_max_sessions();
  config.clear_max_leases_per_session();
  const absl::Status status = ValidateBrokerConfig(config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_THAT(message, HasSubstr("socket_dir: must be an absolute path, got \"\""));
  EXPECT_THAT(message, HasSubstr("state_dir: must be an absolute path"));
  EXPECT_THAT(message, HasSubstr("max_sessions: must be greater than 0"));
  EXPECT_THAT(message, HasSubstr("max_leases_per_session: must be greater than 0"));
  // pools[1] has no alignment without defaults.
  EXPECT_THAT(message,
              HasSubstr("pools[1].loop_extent.alignment_bytes: must be a power of two >= 4096, "
                        "got 0"));
  ApplyBrokerConfigDefaults(&config);
  EXPECT_TRUE(ValidateBrokerConfig(config).ok()) << ValidateBrokerConfig(config);
}

TEST(ValidateBrokerConfigTest, GoodConfigPasses) {
  config::BrokerConfig config = FullConfigProto();
  ApplyBrokerConfigDefaults(&config);
  EXPECT_TRUE(ValidateBrokerConfig(config).ok()) << ValidateBrokerConfig(config);
}

// ---------------------------------------------------------------------------------------------
// LoadBrokerConfig

TEST(LoadBrokerConfigTest, LoadsAGoodFile) {
  const std::string path = TempPath("good.textproto");
  WriteFile(path, kFullConfig);
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->pools(1).name(), "fast_1-b");
}

TEST(LoadBrokerConfigTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = TempPath("does-not-exist.textproto");
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound) << config.status();
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("No such file"));
}

TEST(LoadBrokerConfigTest, MissingDirectoryIsNotFound) {
  const std::string path = TempPath("no-such-dir/vfbroker.textproto");
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound) << config.status();
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(path));
}

TEST(LoadBrokerConfigTest, UnreadableFileIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads any file regardless of its mode";
  const std::string path = TempPath("unreadable.textproto");
  WriteFile(path, kFullConfig);
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kPermissionDenied) << config.status();
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(path));
}

TEST(LoadBrokerConfigTest, DirectoryIsRefusedNamingThePath) {
  const std::string path = TempPath("");
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr(path));
}

TEST(LoadBrokerConfigTest, OversizedFileIsRefused) {
  const std::string path = TempPath("huge.textproto");
  WriteFile(path, std::string(kMaxConfigBytes + 1, '#'));
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr(absl::StrCat(path, " is larger than 1048576 bytes")));
}

TEST(LoadBrokerConfigTest, EndlessFileIsRefused) {
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig("/dev/zero");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("/dev/zero is larger than"));
}

TEST(LoadBrokerConfigTest, SyntaxErrorInFile) {
  const std::string path = TempPath("broken.textproto");
  WriteFile(path, "pools {\n  name: \"a\"\n  loop_extent { backing_path: 7 }\n}\n");
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("line 3, column 31"));
}

TEST(LoadBrokerConfigTest, InvalidConfigInFile) {
  const std::string path = TempPath("invalid.textproto");
  WriteFile(path, "pools { name: \"a\" loop_extent { backing_path: \"/x\" } }\n");
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(path);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("pools[0].access: admits no one"));
}

// ---------------------------------------------------------------------------------------------
// The shipped example

std::string ExamplePath() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const std::string relative = "deploy/systemd/vfbroker.textproto";
  return srcdir != nullptr ? absl::StrCat(srcdir, "/vfbroker/", relative) : relative;
}

TEST(ExampleConfigTest, ParsesAndValidates) {
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(ExamplePath());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->socket_dir(), "/run/vfbroker");
  EXPECT_EQ(config->socket_mode(), 0666u);
  EXPECT_EQ(config->state_dir(), "/var/lib/vfbroker");
  EXPECT_THAT(config->operator_uids(), ElementsAre(0));
  EXPECT_EQ(config->default_quota().max_bytes(), kGiB);
  EXPECT_EQ(config->default_quota().max_leases(), 16u);
  EXPECT_TRUE(config->quotas().empty());
  ASSERT_EQ(config->pools_size(), 1);
  const config::PoolConfig& pool = config->pools(0);
  EXPECT_EQ(pool.name(), "scratch");
  EXPECT_THAT(pool.access().gids(), ElementsAre(100));
  EXPECT_TRUE(pool.access().uids().empty());
  EXPECT_FALSE(pool.access().any_user());
  ASSERT_TRUE(pool.has_loop_extent());
  EXPECT_EQ(pool.loop_extent().backing_path(), "/var/lib/vfbroker/scratch.img");
  EXPECT_EQ(pool.loop_extent().size_bytes(), 4 * kGiB);
  EXPECT_TRUE(pool.loop_extent().create());
  EXPECT_EQ(pool.loop_extent().alignment_bytes(), kMiB);
  EXPECT_EQ(pool.loop_extent().max_extent_bytes(), 0u);
  EXPECT_EQ(config->max_sessions(), 4096u);
  EXPECT_EQ(config->max_leases_per_session(), 256u);
}

TEST(ExampleConfigTest, DrivesAnAllocator) {
  absl::StatusOr<config::BrokerConfig> config = LoadBrokerConfig(ExamplePath());
  ASSERT_TRUE(config.ok()) << config.status();
  std::vector<BlockPoolSpec> specs;
  for (const config::PoolConfig& pool : config->pools()) {
    BlockPoolSpec spec;
    spec.name = pool.name();
    spec.capacity_bytes = pool.loop_extent().size_bytes();
    spec.alignment_bytes = pool.loop_extent().alignment_bytes();
    spec.max_extent_bytes = pool.loop_extent().max_extent_bytes();
    spec.access = ToAccessPolicy(pool.access());
    specs.push_back(spec);
  }
  absl::StatusOr<Allocator> allocator = Allocator::Create(specs, ToQuotaPolicy(*config));
  ASSERT_TRUE(allocator.ok()) << allocator.status();
  const Tenant user{1000, 1000, {100}};
  const Tenant stranger{1001, 1001, {}};
  EXPECT_TRUE(allocator->AllocateExtent(user, "scratch", kGiB, "a").ok());
  EXPECT_EQ(allocator->AllocateExtent(user, "scratch", kMiB, "b").status().code(),
            absl::StatusCode::kResourceExhausted);  // 1 GiB default quota
  EXPECT_EQ(allocator->AllocateExtent(stranger, "scratch", kMiB, "c").status().code(),
            absl::StatusCode::kPermissionDenied);
}

// ---------------------------------------------------------------------------------------------
// Conversions

TEST(ToAccessPolicyTest, CopiesEveryField) {
  config::Access access;
  access.add_uids(1000);
  access.add_uids(1001);
  access.add_gids(100);
  access.set_any_user(true);
  AccessPolicy policy = ToAccessPolicy(access);
  EXPECT_THAT(policy.uids, ElementsAre(1000, 1001));
  EXPECT_THAT(policy.gids, ElementsAre(100));
  EXPECT_TRUE(policy.any_user);
  EXPECT_FALSE(ToAccessPolicy(config::Access()).any_user);
  EXPECT_TRUE(ToAccessPolicy(config::Access()).uids.empty());
}

TEST(ToQuotaPolicyTest, DefaultAndOverrides) {
  QuotaPolicy policy = ToQuotaPolicy(FullConfigProto());
  EXPECT_EQ(policy.default_quota.max_bytes, kGiB);
  EXPECT_EQ(policy.default_quota.max_leases, 16u);
  ASSERT_EQ(policy.per_uid.size(), 2u);
  EXPECT_EQ(policy.For(1000).max_bytes, 0u);  // quota {}: unlimited
  EXPECT_EQ(policy.For(1000).max_leases, 0u);
  EXPECT_EQ(policy.For(1001).max_bytes, 2 * kGiB);
  EXPECT_EQ(policy.For(1001).max_leases, 0u);  // an override replaces both limits
  EXPECT_EQ(policy.For(4242).max_bytes, kGiB);
}

TEST(ToQuotaPolicyTest, FirstEntryWinsForDuplicateUids) {
  config::BrokerConfig config;
  config::TenantQuota* first = config.add_quotas();
  first->set_uid(7);
  first->mutable_quota()->set_max_leases(1);
  config::TenantQuota* second = config.add_quotas();
  second->set_uid(7);
  second->mutable_quota()->set_max_leases(2);
  EXPECT_EQ(ToQuotaPolicy(config).For(7).max_leases, 1u);
}


TEST(ParseBrokerConfigTest, XdpNicDefaultsAndRules) {
  const std::string base = R"pb(
    pools {
      name: "net"
      access { uids: 60001 }
      xdp_nic { interface: "eth1" max_tenants: 8 }
    }
  )pb";
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(base);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->pools(0).xdp_nic().frame_size(), 4096u);
  EXPECT_EQ(config->pools(0).xdp_nic().frame_count(), 4096u);
  EXPECT_EQ(config->pools(0).xdp_nic().ring_size(), 2048u);
  // A small UMEM gets rings no larger than itself by default.
  config = ParseBrokerConfig(R"pb(pools {
    name: "net" access { any_user: true }
    xdp_nic { interface: "veth0" max_tenants: 1 frame_count: 256 frame_size: 2048 }
  })pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->pools(0).xdp_nic().ring_size(), 256u);

  struct Case {
    std::string nic;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"max_tenants: 8", "pools[0].xdp_nic.interface: must be a network interface name"},
           {"interface: \"eth1/../x\" max_tenants: 8", "pools[0].xdp_nic.interface"},
           {"interface: \"eth 1\" max_tenants: 8", "pools[0].xdp_nic.interface"},
           {"interface: \"..\" max_tenants: 8", "pools[0].xdp_nic.interface"},
           {"interface: \"a234567890123456\" max_tenants: 8", "pools[0].xdp_nic.interface"},
           {"interface: \"eth1\"", "pools[0].xdp_nic.max_tenants: must be 1..4096, got 0"},
           {"interface: \"eth1\" max_tenants: 5000", "pools[0].xdp_nic.max_tenants"},
           {"interface: \"eth1\" max_tenants: 1 frame_size: 3000",
            "pools[0].xdp_nic.frame_size: must be 2048 or 4096"},
           {"interface: \"eth1\" max_tenants: 1 frame_size: 8192", "pools[0].xdp_nic.frame_size"},
           {"interface: \"eth1\" max_tenants: 1 frame_count: 100",
            "pools[0].xdp_nic.frame_count: must be a power of two 64..65536, got 100"},
           {"interface: \"eth1\" max_tenants: 1 frame_count: 131072",
            "pools[0].xdp_nic.frame_count"},
           {"interface: \"eth1\" max_tenants: 1 frame_count: 256 ring_size: 512",
            "pools[0].xdp_nic.ring_size: must be a power of two from 64 to frame_count (256)"},
           {"interface: \"eth1\" max_tenants: 1 ring_size: 100", "pools[0].xdp_nic.ring_size"},
       }) {
    auto parsed = ParseBrokerConfig(absl::StrCat(
        "pools { name: \"net\" access { any_user: true } xdp_nic { ", c.nic, " } }"));
    ASSERT_FALSE(parsed.ok()) << c.nic;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.expected)) << c.nic;
  }
  auto shared = ParseBrokerConfig(R"pb(
    pools { name: "a" access { any_user: true } xdp_nic { interface: "eth1" max_tenants: 1 } }
    pools { name: "b" access { any_user: true } xdp_nic { interface: "eth1" max_tenants: 1 } }
  )pb");
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(std::string(shared.status().message()),
              HasSubstr("pools[1].xdp_nic.interface: \"eth1\" is already the interface of "
                        "pools[0]"));
}

TEST(ParseBrokerConfigTest, SriovNicRules) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    pools { name: "vf" access { uids: 60001 } sriov_nic { pf_interface: "eth1" max_vfs: 2 } }
    pools { name: "vf2" access { uids: 60001 } sriov_nic { pf_pci_address: "0000:00:05.0" max_vfs: 7 } }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  const BlockPoolSpec spec = SriovNicPoolSpec(config->pools(1));
  EXPECT_TRUE(spec.slots);
  EXPECT_EQ(spec.capacity_bytes, 7u);

  struct Case {
    std::string nic;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"max_vfs: 2", "pools[0].sriov_nic: set exactly one of pf_interface and pf_pci_address"},
           {"pf_interface: \"eth1\" pf_pci_address: \"0000:00:05.0\" max_vfs: 2",
            "pools[0].sriov_nic: set exactly one"},
           {"pf_interface: \"../eth1\" max_vfs: 2",
            "pools[0].sriov_nic.pf_interface: must be a network interface name"},
           {"pf_pci_address: \"0000:00:05\" max_vfs: 2",
            "pools[0].sriov_nic.pf_pci_address: must be a PCI address"},
           {"pf_interface: \"eth1\"", "pools[0].sriov_nic.max_vfs: must be 1..256, got 0"},
           {"pf_interface: \"eth1\" max_vfs: 300", "pools[0].sriov_nic.max_vfs"},
       }) {
    auto parsed = ParseBrokerConfig(absl::StrCat(
        "pools { name: \"vf\" access { any_user: true } sriov_nic { ", c.nic, " } }"));
    ASSERT_FALSE(parsed.ok()) << c.nic;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.expected)) << c.nic;
  }
  auto shared = ParseBrokerConfig(R"pb(
    pools { name: "a" access { any_user: true } sriov_nic { pf_interface: "eth1" max_vfs: 1 } }
    pools { name: "b" access { any_user: true } sriov_nic { pf_interface: "eth1" max_vfs: 1 } }
  )pb");
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(std::string(shared.status().message()),
              HasSubstr("pools[1].sriov_nic: \"eth1\" is already the PF of pools[0]"));
}

TEST(ParseBrokerConfigTest, PciNicRules) {
  absl::StatusOr<config::BrokerConfig> config = ParseBrokerConfig(R"pb(
    pools {
      name: "vnet"
      access { uids: 60001 }
      pci_nic { pci_addresses: "0000:05:00.0" pci_addresses: "0000:06:00.0" }
    }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  const BlockPoolSpec spec = PciNicPoolSpec(config->pools(0));
  EXPECT_TRUE(spec.slots);
  EXPECT_EQ(spec.capacity_bytes, 2u);

  auto empty = ParseBrokerConfig(R"pb(pools { name: "v" access { any_user: true } pci_nic {} })pb");
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()),
              HasSubstr("pools[0].pci_nic.pci_addresses: must list 1..256 PCI functions, got 0"));
  auto bad = ParseBrokerConfig(R"pb(
    pools { name: "v" access { any_user: true } pci_nic { pci_addresses: "0000:05:00.0/../x" } }
  )pb");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("pools[0].pci_nic.pci_addresses[0]: must be a PCI address"));
  auto shared = ParseBrokerConfig(R"pb(
    pools { name: "a" access { any_user: true } pci_nic { pci_addresses: "0000:05:00.0" } }
    pools {
      name: "b"
      access { any_user: true }
      pci_nic { pci_addresses: "0000:06:00.0" pci_addresses: "0000:05:00.0" }
    }
  )pb");
  ASSERT_FALSE(shared.ok());
  EXPECT_THAT(std::string(shared.status().message()),
              HasSubstr("pools[1].pci_nic.pci_addresses[1]: \"0000:05:00.0\" is already in "
                        "pools[0]"));
}

}  // namespace
}  // namespace vfbroker
