#include "broker/config/config_loader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"

namespace vfbroker {
namespace {

// Pool names end up in lease ids, log lines and file names, so they are kept to a safe alphabet.
constexpr size_t kMaxPoolNameLength = 32;
// sun_path holds 108 bytes including the terminating NUL; the longest socket name in socket_dir
// is "/session.sock".
constexpr size_t kMaxUnixSocketPathLength = 107;
constexpr std::string_view kLongestSocketName = "/session.sock";
// A pool's bytes are addressed with off_t.
constexpr uint64_t kMaxPoolBytes = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

bool IsPoolNameChar(char c, bool first) {
  if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  return !first && (c == '_' || c == '-');
}

bool IsValidPoolName(const std::string& name) {
  if (name.empty() || name.size() > kMaxPoolNameLength) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsPoolNameChar(name[i], i == 0)) return false;
  }
  return true;
}

// No empty, "." or ".." components and no trailing slash: then two spellings of one path cannot
// both pass the duplicate check (symlinks aside, which the backend has to deal with).
bool IsNormalizedAbsolutePath(const std::string& path) {
  if (path.empty() || path[0] != '/') return false;
  if (path == "/") return true;
  for (absl::string_view component : absl::StrSplit(absl::string_view(path).substr(1), '/')) {
    if (component.empty() || component == "." || component == "..") return false;
  }
  return true;
}

// Text-format quoting, so that odd bytes in a value show up as the operator would write them.
std::string Quoted(const std::string& value) {
  return absl::StrCat("\"", absl::CEscape(value), "\"");
}

// Collects every problem found in one config, each tagged with its field path.
class Problems {
 public:
  void Add(absl::string_view field, absl::string_view problem) {
    list_.push_back(absl::StrCat(field, ": ", problem));
  }
  absl::Status ToStatus() const {
    if (list_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(list_, "; "));
  }

 private:
  std::vector<std::string> list_;
};

void CheckAbsoluteDirectory(absl::string_view field, const std::string& path, Problems& problems) {
  if (path.empty() || path[0] != '/') {
    problems.Add(field, absl::StrCat("must be an absolute path, got ", Quoted(path)));
  } else if (path.find('\0') != std::string::npos) {
    problems.Add(field, absl::StrCat("must not contain NUL bytes, got ", Quoted(path)));
  }
}

void CheckLoopExtent(const std::string& field, const config::LoopExtentPool& loop,
                     Problems& problems) {
  const std::string path_field = absl::StrCat(field, ".backing_path");
  if (loop.backing_path().empty()) {
    problems.Add(path_field, "must be set to the pool's backing file or block device");
  } else if (loop.backing_path().find('\0') != std::string::npos) {
    problems.Add(path_field,
                 absl::StrCat("must not contain NUL bytes, got ", Quoted(loop.backing_path())));
  } else if (!IsNormalizedAbsolutePath(loop.backing_path())) {
    problems.Add(path_field,
                 absl::StrCat("must be an absolute path without empty, \".\" or \"..\" components "
                              "or a trailing slash, got ",
                              Quoted(loop.backing_path())));
  }

  const uint64_t alignment = loop.alignment_bytes();
  if (!IsPowerOfTwo(alignment) || alignment < kMinExtentAlignment) {
    problems.Add(
        absl::StrCat(field, ".alignment_bytes"),
        absl::StrCat("must be a power of two >= ", kMinExtentAlignment, ", got ", alignment));
    return;  // the checks below are measured in alignments
  }
  if (alignment > kMaxExtentAlignment) {
    problems.Add(
        absl::StrCat(field, ".alignment_bytes"),
        absl::StrCat("must be at most ", kMaxExtentAlignment, " (1 GiB), got ", alignment));
    return;
  }

  const std::string size_field = absl::StrCat(field, ".size_bytes");
  const uint64_t size = loop.size_bytes();
  if (size == 0 && loop.create()) {
    problems.Add(size_field, "must be set when create is true (the size of the file to create)");
  } else if (size % alignment != 0) {
    problems.Add(size_field, absl::StrCat("must be a multiple of alignment_bytes (", alignment,
                                          "), got ", size));
  } else if (size > kMaxPoolBytes) {
    problems.Add(size_field, absl::StrCat("must be at most ", kMaxPoolBytes,
                                          " (the largest file), got ", size));
  }

  const std::string max_extent_field = absl::StrCat(field, ".max_extent_bytes");
  const uint64_t max_extent = loop.max_extent_bytes();
  if (max_extent % alignment != 0) {
    problems.Add(max_extent_field, absl::StrCat("must be a multiple of alignment_bytes (",
                                                alignment, "), got ", max_extent));
  } else if (size != 0 && max_extent > size) {
    problems.Add(max_extent_field,
                 absl::StrCat("must not exceed size_bytes (", size, "), got ", max_extent));
  }
}

// "DDDD:BB:DD.F", lower-case hex, as /sys/bus/pci/devices names it.
bool IsCanonicalPciAddress(const std::string& address) {
  if (address.size() != 12) return false;
  for (size_t i = 0; i < address.size(); ++i) {
    const char c = address[i];
    if (i == 4 || i == 7) {
      if (c != ':') return false;
    } else if (i == 10) {
      if (c != '.') return false;
    } else if (i == 11) {
      if (c < '0' || c > '7') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  // Device number is 5 bits: 00..1f.
  return address[8] <= '1';
}

void CheckNvmeSriov(const std::string& field, const config::NvmeSriovPool& nvme,
                    Problems& problems) {
  if (!IsCanonicalPciAddress(nvme.pf_pci_address())) {
    problems.Add(absl::StrCat(field, ".pf_pci_address"),
                 absl::StrCat("must be a PCI address DDDD:BB:DD.F in lower-case hex, got ",
                              Quoted(nvme.pf_pci_address())));
  }
  const std::string ns_field = absl::StrCat(field, ".namespace_ids");
  if (nvme.namespace_ids().empty()) {
    problems.Add(ns_field, "must list at least one namespace (one per slot)");
  } else if (nvme.namespace_ids_size() > kMaxNvmeSlots) {
    problems.Add(ns_field, absl::StrCat("must list at most ", kMaxNvmeSlots, " namespaces, got ",
                                        nvme.namespace_ids_size()));
  }
  absl::flat_hash_map<uint32_t, int> seen;
  for (int j = 0; j < nvme.namespace_ids_size(); ++j) {
    const uint32_t nsid = nvme.namespace_ids(j);
    const std::string entry = absl::StrCat(ns_field, "[", j, "]");
    if (nsid == 0 || nsid == 0xffffffffu) {
      problems.Add(entry, absl::StrCat("must be a namespace id 1..4294967294, got ", nsid));
    } else if (auto [it, inserted] = seen.emplace(nsid, j); !inserted) {
      problems.Add(entry, absl::StrCat("namespace ", nsid, " is already slot ", it->second));
    }
  }
  if (nvme.io_queues_per_vf() < 2 || nvme.io_queues_per_vf() > kMaxNvmeQueuesPerVf) {
    problems.Add(absl::StrCat(field, ".io_queues_per_vf"),
                 absl::StrCat("must be 2..", kMaxNvmeQueuesPerVf,
                              " (the admin queue and at least one I/O queue), got ",
                              nvme.io_queues_per_vf()));
  }
  if (nvme.interrupts_per_vf() < 1 || nvme.interrupts_per_vf() > kMaxNvmeQueuesPerVf) {
    problems.Add(absl::StrCat(field, ".interrupts_per_vf"),
                 absl::StrCat("must be 1..", kMaxNvmeQueuesPerVf, ", got ",
                              nvme.interrupts_per_vf()));
  }
}

// An interface name the kernel accepts (net/core/dev.c dev_valid_name): 1..15 bytes, not "."
// or "..", no '/', ':' or whitespace.
bool IsValidInterfaceName(const std::string& name) {
  if (name.empty() || name.size() > 15 || name == "." || name == "..") return false;
  for (char c : name) {
    if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) return false;
  }
  return true;
}

void CheckXdpNic(const std::string& field, const config::XdpNicPool& nic, Problems& problems) {
  if (!IsValidInterfaceName(nic.interface())) {
    problems.Add(absl::StrCat(field, ".interface"),
                 absl::StrCat("must be a network interface name of 1..15 bytes without '/', ':' "
                              "or spaces, got ", Quoted(nic.interface())));
  }
  if (nic.max_tenants() < 1 || nic.max_tenants() > kMaxXdpTenants) {
    problems.Add(absl::StrCat(field, ".max_tenants"),
                 absl::StrCat("must be 1..", kMaxXdpTenants, ", got ", nic.max_tenants()));
  }
  if (!IsPowerOfTwo(nic.frame_size()) || nic.frame_size() < 2048 || nic.frame_size() > 4096) {
    problems.Add(absl::StrCat(field, ".frame_size"),
                 absl::StrCat("must be 2048 or 4096 (an AF_XDP chunk: a power of two no larger "
                              "than a page), got ", nic.frame_size()));
  }
  if (!IsPowerOfTwo(nic.frame_count()) || nic.frame_count() < 64 ||
      nic.frame_count() > kMaxXdpFrameCount) {
    problems.Add(absl::StrCat(field, ".frame_count"),
                 absl::StrCat("must be a power of two 64..", kMaxXdpFrameCount, ", got ",
                              nic.frame_count()));
  }
  if (!IsPowerOfTwo(nic.ring_size()) || nic.ring_size() < 64 ||
      nic.ring_size() > nic.frame_count()) {
    problems.Add(absl::StrCat(field, ".ring_size"),
                 absl::StrCat("must be a power of two from 64 to frame_count (", nic.frame_count(),
                              "), got ", nic.ring_size()));
  }
}

void CheckSriovNic(const std::string& field, const config::SriovNicPool& nic,
                   Problems& problems) {
  const bool by_name = !nic.pf_interface().empty();
  const bool by_address = !nic.pf_pci_address().empty();
  if (by_name == by_address) {
    problems.Add(field, "set exactly one of pf_interface and pf_pci_address");
  }
  if (by_name && !IsValidInterfaceName(nic.pf_interface())) {
    problems.Add(absl::StrCat(field, ".pf_interface"),
                 absl::StrCat("must be a network interface name of 1..15 bytes without '/', ':' "
                              "or spaces, got ", Quoted(nic.pf_interface())));
  }
  if (by_address && !IsCanonicalPciAddress(nic.pf_pci_address())) {
    problems.Add(absl::StrCat(field, ".pf_pci_address"),
                 absl::StrCat("must be a PCI address DDDD:BB:DD.F in lower-case hex, got ",
                              Quoted(nic.pf_pci_address())));
  }
  if (nic.max_vfs() < 1 || nic.max_vfs() > kMaxSriovVfs) {
    problems.Add(absl::StrCat(field, ".max_vfs"),
                 absl::StrCat("must be 1..", kMaxSriovVfs, ", got ", nic.max_vfs()));
  }
}

void CheckPciNic(const std::string& field, const config::PciNicPool& nic, Problems& problems) {
  if (nic.pci_addresses().empty() ||
      nic.pci_addresses_size() > static_cast<int>(kMaxPciNicFunctions)) {
    problems.Add(absl::StrCat(field, ".pci_addresses"),
                 absl::StrCat("must list 1..", kMaxPciNicFunctions, " PCI functions, got ",
                              nic.pci_addresses_size()));
  }
  for (int j = 0; j < nic.pci_addresses_size(); ++j) {
    if (!IsCanonicalPciAddress(nic.pci_addresses(j))) {
      problems.Add(absl::StrCat(field, ".pci_addresses[", j, "]"),
                   absl::StrCat("must be a PCI address DDDD:BB:DD.F in lower-case hex, got ",
                                Quoted(nic.pci_addresses(j))));
    }
  }
}

void CheckPools(const config::BrokerConfig& config, Problems& problems) {
  if (config.pools().empty()) {
    problems.Add("pools", "at least one pool is required");
    return;
  }
  absl::flat_hash_map<std::string, int> pool_by_name;
  absl::flat_hash_map<std::string, int> pool_by_backing_path;
  absl::flat_hash_map<std::string, int> pool_by_pf;
  absl::flat_hash_map<std::string, int> pool_by_interface;
  for (int i = 0; i < config.pools_size(); ++i) {
    const config::PoolConfig& pool = config.pools(i);
    const std::string field = absl::StrCat("pools[", i, "]");

    if (!IsValidPoolName(pool.name())) {
      problems.Add(absl::StrCat(field, ".name"),
                   absl::StrCat("must match [a-z0-9][a-z0-9_-]{0,31}, got ", Quoted(pool.name())));
    } else if (auto [it, inserted] = pool_by_name.emplace(pool.name(), i); !inserted) {
      problems.Add(
          absl::StrCat(field, ".name"),
          absl::StrCat(Quoted(pool.name()), " is already the name of pools[", it->second, "]"));
    }

    const config::Access& access = pool.access();
    if (!access.any_user() && access.uids().empty() && access.gids().empty()) {
      problems.Add(absl::StrCat(field, ".access"),
                   "admits no one but root; list uids or gids, or set any_user: true");
    }

    switch (pool.backend_case()) {
      case config::PoolConfig::kLoopExtent: {
        const std::string loop_field = absl::StrCat(field, ".loop_extent");
        CheckLoopExtent(loop_field, pool.loop_extent(), problems);
        const std::string& path = pool.loop_extent().backing_path();
        if (!path.empty()) {
          // Two pools over one backing store would hand out overlapping extents.
          if (auto [it, inserted] = pool_by_backing_path.emplace(path, i); !inserted) {
            problems.Add(absl::StrCat(loop_field, ".backing_path"),
                         absl::StrCat(Quoted(path), " already backs pools[", it->second, "]"));
          }
        }
        break;
      }
      case config::PoolConfig::kNvmeSriov: {
        const std::string nvme_field = absl::StrCat(field, ".nvme_sriov");
        CheckNvmeSriov(nvme_field, pool.nvme_sriov(), problems);
        const std::string& pf = pool.nvme_sriov().pf_pci_address();
        if (!pf.empty()) {
          // Two pools on one PF would fight over its VFs.
          if (auto [it, inserted] = pool_by_pf.emplace(pf, i); !inserted) {
            problems.Add(absl::StrCat(nvme_field, ".pf_pci_address"),
                         absl::StrCat(Quoted(pf), " is already the PF of pools[", it->second,
                                      "]"));
          }
        }
        break;
      }
      case config::PoolConfig::kXdpNic: {
        const std::string nic_field = absl::StrCat(field, ".xdp_nic");
        CheckXdpNic(nic_field, pool.xdp_nic(), problems);
        const std::string& interface = pool.xdp_nic().interface();
        if (!interface.empty()) {
          // Two pools on one interface would hand out the same MACs twice.
          if (auto [it, inserted] = pool_by_interface.emplace(interface, i); !inserted) {
            problems.Add(absl::StrCat(nic_field, ".interface"),
                         absl::StrCat(Quoted(interface), " is already the interface of pools[",
                                      it->second, "]"));
          }
        }
        break;
      }
      case config::PoolConfig::kSriovNic: {
        const std::string nic_field = absl::StrCat(field, ".sriov_nic");
        CheckSriovNic(nic_field, pool.sriov_nic(), problems);
        // Two pools on one PF would hand out its VFs twice (a PF named both ways is caught at
        // open, when the broker resolves the name: sriov_numvfs is then already set).
        for (const std::string& pf : {pool.sriov_nic().pf_interface(),
                                      pool.sriov_nic().pf_pci_address()}) {
          if (pf.empty()) continue;
          if (auto [it, inserted] = pool_by_pf.emplace(pf, i); !inserted) {
            problems.Add(nic_field, absl::StrCat(Quoted(pf), " is already the PF of pools[",
                                                 it->second, "]"));
          }
        }
        break;
      }
      case config::PoolConfig::kPciNic: {
        const std::string nic_field = absl::StrCat(field, ".pci_nic");
        CheckPciNic(nic_field, pool.pci_nic(), problems);
        // A function in two pools (or twice in one) would be handed out twice.
        for (int j = 0; j < pool.pci_nic().pci_addresses_size(); ++j) {
          const std::string& bdf = pool.pci_nic().pci_addresses(j);
          if (bdf.empty()) continue;
          if (auto [it, inserted] = pool_by_pf.emplace(bdf, i); !inserted) {
            problems.Add(absl::StrCat(nic_field, ".pci_addresses[", j, "]"),
                         absl::StrCat(Quoted(bdf), " is already in pools[", it->second, "]"));
          }
        }
        break;
      }
      case config::PoolConfig::BACKEND_NOT_SET:
        problems.Add(field, "no backend set; add a backend block such as loop_extent { ... }, "
                     "nvme_sriov { ... }, xdp_nic { ... }, sriov_nic { ... } or pci_nic { ... }");
        break;
    }
  }
}

void CheckQuotas(const config::BrokerConfig& config, Problems& problems) {
  absl::flat_hash_map<uint32_t, int> quota_by_uid;
  for (int i = 0; i < config.quotas_size(); ++i) {
    const config::TenantQuota& quota = config.quotas(i);
    const std::string field = absl::StrCat("quotas[", i, "]");
    if (auto [it, inserted] = quota_by_uid.emplace(quota.uid(), i); !inserted) {
      problems.Add(
          absl::StrCat(field, ".uid"),
          absl::StrCat("uid ", quota.uid(), " already has a quota in quotas[", it->second, "]"));
    }
    if (!quota.has_quota()) {
      // An absent block would silently mean "unlimited"; make the operator say so.
      problems.Add(absl::StrCat(field, ".quota"),
                   "must be set (write quota {} to give this uid no limit)");
    }
  }
}

// Keeps the first error; the text-format parser stops at its first error anyway.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!error_.empty()) return;
    // The parser counts from 0; editors count from 1.
    error_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace

void ApplyBrokerConfigDefaults(config::BrokerConfig* config) {
  if (config->socket_dir().empty()) config->set_socket_dir(kDefaultSocketDir);
  if (config->socket_mode() == 0) config->set_socket_mode(kDefaultSocketMode);
  if (config->state_dir().empty()) config->set_state_dir(kDefaultStateDir);
  if (config->max_sessions() == 0) config->set_max_sessions(kDefaultMaxSessions);
  if (config->max_leases_per_session() == 0) {
    config->set_max_leases_per_session(kDefaultMaxLeasesPerSession);
  }
  for (config::PoolConfig& pool : *config->mutable_pools()) {
    if (pool.has_loop_extent() && pool.loop_extent().alignment_bytes() == 0) {
      pool.mutable_loop_extent()->set_alignment_bytes(kDefaultExtentAlignment);
    }
    if (pool.has_xdp_nic()) {
      config::XdpNicPool* nic = pool.mutable_xdp_nic();
      if (nic->frame_size() == 0) nic->set_frame_size(kDefaultXdpFrameSize);
      if (nic->frame_count() == 0) nic->set_frame_count(kDefaultXdpFrameCount);
      if (nic->ring_size() == 0) {
        nic->set_ring_size(std::min(kDefaultXdpRingSize, nic->frame_count()));
      }
    }
    if (pool.has_nvme_sriov()) {
      config::NvmeSriovPool* nvme = pool.mutable_nvme_sriov();
      if (nvme->io_queues_per_vf() == 0) nvme->set_io_queues_per_vf(kDefaultNvmeIoQueuesPerVf);
      if (nvme->interrupts_per_vf() == 0) {
        nvme->set_interrupts_per_vf(kDefaultNvmeInterruptsPerVf);
      }
    }
  }
}

absl::Status ValidateBrokerConfig(const config::BrokerConfig& config) {
  Problems problems;
  CheckAbsoluteDirectory("socket_dir", config.socket_dir(), problems);
  if (config.socket_dir().size() + kLongestSocketName.size() > kMaxUnixSocketPathLength) {
    problems.Add(
        "socket_dir",
        absl::StrCat("too long for a Unix socket path (", config.socket_dir().size(), " + ",
                     kLongestSocketName.size(), " > ", kMaxUnixSocketPathLength, " bytes)"));
  }
  CheckAbsoluteDirectory("state_dir", config.state_dir(), problems);
  if (config.socket_mode() > 0777) {
    problems.Add("socket_mode", absl::StrFormat("must be at most 0777 (511: permission bits only), "
                                                "got 0%o (%u)",
                                                config.socket_mode(), config.socket_mode()));
  }
  if (config.max_sessions() == 0) problems.Add("max_sessions", "must be greater than 0");
  if (config.max_leases_per_session() == 0) {
    problems.Add("max_leases_per_session", "must be greater than 0");
  }
  CheckQuotas(config, problems);
  CheckPools(config, problems);
  return problems.ToStatus();
}

absl::StatusOr<config::BrokerConfig> ParseBrokerConfig(std::string_view text) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config is ", text.size(), " bytes, more than the limit of ", kMaxConfigBytes));
  }
  static_assert(kMaxConfigBytes <= INT_MAX, "ArrayInputStream takes an int size");
  google::protobuf::io::ArrayInputStream input(text.data(), static_cast<int>(text.size()));
  FirstErrorCollector errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  config::BrokerConfig config;
  if (!parser.Parse(&input, &config)) {
    return absl::InvalidArgumentError(errors.error().empty() ? "config could not be parsed"
                                                             : errors.error());
  }
  ApplyBrokerConfigDefaults(&config);
  if (absl::Status status = ValidateBrokerConfig(config); !status.ok()) return status;
  return config;
}

absl::StatusOr<config::BrokerConfig> LoadBrokerConfig(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open config file ", path));
  }
  std::string text;
  char buffer[16384];
  // Read at most one byte past the limit: enough to tell "too large" without reading an
  // endless file (a FIFO, /dev/zero) to its end.
  while (text.size() <= kMaxConfigBytes) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int read_errno = errno;
      ::close(fd);
      return absl::ErrnoToStatus(read_errno, absl::StrCat("cannot read config file ", path));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", path, " is larger than ", kMaxConfigBytes, " bytes"));
  }
  return ParseBrokerConfig(text);
}

AccessPolicy ToAccessPolicy(const config::Access& access) {
  AccessPolicy policy;
  policy.uids.assign(access.uids().begin(), access.uids().end());
  policy.gids.assign(access.gids().begin(), access.gids().end());
  policy.any_user = access.any_user();
  return policy;
}

BlockPoolSpec XdpNicPoolSpec(const config::PoolConfig& pool) {
  BlockPoolSpec spec;
  spec.name = pool.name();
  spec.access = ToAccessPolicy(pool.access());
  spec.slots = true;
  spec.capacity_bytes = pool.xdp_nic().max_tenants();
  spec.alignment_bytes = 1;
  spec.max_extent_bytes = 1;
  return spec;
}

BlockPoolSpec SriovNicPoolSpec(const config::PoolConfig& pool) {
  BlockPoolSpec spec;
  spec.name = pool.name();
  spec.access = ToAccessPolicy(pool.access());
  spec.slots = true;
  spec.capacity_bytes = pool.sriov_nic().max_vfs();
  spec.alignment_bytes = 1;
  spec.max_extent_bytes = 1;
  return spec;
}

BlockPoolSpec PciNicPoolSpec(const config::PoolConfig& pool) {
  BlockPoolSpec spec;
  spec.name = pool.name();
  spec.access = ToAccessPolicy(pool.access());
  spec.slots = true;
  spec.capacity_bytes = static_cast<uint64_t>(pool.pci_nic().pci_addresses_size());
  spec.alignment_bytes = 1;
  spec.max_extent_bytes = 1;
  return spec;
}

QuotaPolicy ToQuotaPolicy(const config::BrokerConfig& config) {
  QuotaPolicy policy;
  policy.default_quota.max_bytes = config.default_quota().max_bytes();
  policy.default_quota.max_leases = config.default_quota().max_leases();
  for (const config::TenantQuota& entry : config.quotas()) {
    Quota quota;
    quota.max_bytes = entry.quota().max_bytes();
    quota.max_leases = entry.quota().max_leases();
    policy.per_uid.try_emplace(entry.uid(), quota);
  }
  return policy;
}

}  // namespace vfbroker
