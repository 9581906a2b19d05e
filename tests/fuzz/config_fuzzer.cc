// libFuzzer target for the operator's configuration: arbitrary bytes go to ParseBrokerConfig,
// which must never crash, and whatever it accepts must hold up downstream.
//
// Besides "no crash", it checks properties the broker relies on:
//   - a refusal is INVALID_ARGUMENT with a message (the operator must be told what is wrong);
//   - an accepted config survives a text-format round trip unchanged (what --check_config
//     accepted is what the broker runs);
//   - an accepted config yields pool specs that Allocator accepts and can allocate from
//     (otherwise validation has a gap the allocator would abort on).
// A broken property aborts, which libFuzzer (and the smoke driver) report as a crash.
// With CONFIG_FUZZER_VERBOSE set, each verdict is printed (to see what a corpus reaches).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "broker/allocator/allocator.h"
#include "broker/config/config.pb.h"
#include "broker/config/config_loader.h"
#include "google/protobuf/text_format.h"

namespace vfbroker {
namespace {

[[noreturn]] void PropertyBroken(const char* what, const std::string& detail) {
  std::fprintf(stderr, "config_fuzzer: %s\n%s\n", what, detail.c_str());
  std::abort();
}

std::string ToText(const config::BrokerConfig& config) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(config, &text)) {
    PropertyBroken("an accepted config could not be printed", config.ShortDebugString());
  }
  return text;
}

void CheckAccepted(const config::BrokerConfig& config) {
  const std::string printed = ToText(config);
  absl::StatusOr<config::BrokerConfig> reparsed = ParseBrokerConfig(printed);
  if (!reparsed.ok()) {
    PropertyBroken("an accepted config was refused after a round trip",
                   std::string(reparsed.status().message()) + "\n" + printed);
  }
  if (ToText(*reparsed) != printed) {
    PropertyBroken("an accepted config changed in a round trip", printed);
  }

  std::vector<BlockPoolSpec> specs;
  for (const config::PoolConfig& pool : config.pools()) {
    if (pool.has_xdp_nic()) {
      // A slot pool: one lease per tenant slot, as vfbrokerd_main builds it.
      specs.push_back(XdpNicPoolSpec(pool));
      continue;
    }
    if (pool.has_sriov_nic()) {
      specs.push_back(SriovNicPoolSpec(pool));  // one slot per VF
      continue;
    }
    BlockPoolSpec spec;
    spec.name = pool.name();
    spec.access = ToAccessPolicy(pool.access());
    if (pool.has_nvme_sriov()) {
      // One slot per namespace; the slot size comes from the device, so any power of two will do
      // (vfbrokerd_main sets alignment = max extent = slot size the same way).
      constexpr uint64_t kSlotBytes = uint64_t{1} << 20;
      spec.alignment_bytes = kSlotBytes;
      spec.max_extent_bytes = kSlotBytes;
      spec.capacity_bytes = kSlotBytes * pool.nvme_sriov().namespace_ids_size();
      specs.push_back(std::move(spec));
      continue;
    }
    spec.alignment_bytes = pool.loop_extent().alignment_bytes();
    // size_bytes 0 means "the file's size", unknown here; any small pool will do.
    spec.capacity_bytes = pool.loop_extent().size_bytes() != 0 ? pool.loop_extent().size_bytes()
                                                               : 16 * spec.alignment_bytes;
    spec.max_extent_bytes = pool.loop_extent().max_extent_bytes();
    specs.push_back(std::move(spec));
  }
  absl::StatusOr<Allocator> allocator = Allocator::Create(specs, ToQuotaPolicy(config));
  if (!allocator.ok()) {
    PropertyBroken("the allocator refused a validated config",
                   std::string(allocator.status().message()) + "\n" + printed);
  }
  const Tenant root;
  for (const BlockPoolSpec& spec : specs) {
    absl::StatusOr<ExtentLeaseRecord> lease =
        spec.slots ? allocator->AllocateSlot(root, spec.name, "fuzz-" + spec.name)
                   : allocator->AllocateExtent(root, spec.name, spec.alignment_bytes,
                                               "fuzz-" + spec.name);
    // Quotas may legitimately refuse; nothing else may.
    if (!lease.ok() && !absl::IsResourceExhausted(lease.status())) {
      PropertyBroken("a first allocation failed unexpectedly",
                     std::string(lease.status().message()) + "\n" + printed);
    }
  }
}

}  // namespace
}  // namespace vfbroker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool verbose = std::getenv("CONFIG_FUZZER_VERBOSE") != nullptr;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<vfbroker::config::BrokerConfig> config = vfbroker::ParseBrokerConfig(text);
  if (verbose) {
    std::fprintf(stderr, "%s\n", config.ok() ? "accepted" : config.status().ToString().c_str());
  }
  if (!config.ok()) {
    if (config.status().code() != absl::StatusCode::kInvalidArgument ||
        config.status().message().empty()) {
      vfbroker::PropertyBroken("a refusal was not INVALID_ARGUMENT with a message",
                               config.status().ToString());
    }
    return 0;
  }
  vfbroker::CheckAccepted(*config);
  return 0;
}
