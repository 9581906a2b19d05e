// vfbrokerd: the vfbroker resource broker daemon.
//
//   vfbrokerd --config=/etc/vfbroker/vfbroker.textproto
//
// Loads and validates the configuration, opens every pool's backend, replays the journal
// (re-adopting leases whose owners are alive), then serves the session socket and the gRPC API
// on Unix sockets in socket_dir. SIGTERM/SIGINT stop it; leases survive a stop exactly as they
// survive a crash, and the next broker re-adopts them.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "broker/allocator/allocator.h"
#include "broker/backends/loop_extent.h"
#include "broker/backends/netns_fd_store.h"
#include "broker/backends/nvme_sriov.h"
#include "broker/backends/pci_nic.h"
#include "broker/backends/sriov_nic.h"
#include "broker/backends/xdp_nic.h"
#include "broker/config/config_loader.h"
#include "broker/core/broker_core.h"
#include "broker/journal/journal.h"
#include "broker/service/broker_service.h"
#include "broker/session/session_server.h"
#include "common/unique_fd.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "common/logging.h"

ABSL_FLAG(std::string, config, "/etc/vfbroker/vfbroker.textproto",
          "Broker configuration (protobuf text format)");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");
ABSL_FLAG(bool, check_config, false, "Validate the configuration and exit");

namespace vfbroker {
namespace {

constexpr int kMaxRequestBytes = 64 * 1024;

absl::Status MakeDirectory(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("mkdir ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// One broker per state directory: a second one would double-grant.
absl::StatusOr<UniqueFd> LockStateDir(const std::string& state_dir) {
  const std::string path = absl::StrCat(state_dir, "/lock");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("another vfbrokerd holds ", path, "; refusing to start a second one"));
  }
  return fd;
}

int Run(const config::BrokerConfig& config) {
  if (absl::Status s = MakeDirectory(config.socket_dir(), 0755); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  if (absl::Status s = MakeDirectory(config.state_dir(), 0700); !s.ok()) {
    spdlog::critical("{}", s.message());
    return 1;
  }
  absl::StatusOr<UniqueFd> lock = LockStateDir(config.state_dir());
  if (!lock.ok()) {
    spdlog::critical("{}", lock.status().message());
    return 1;
  }

  // Under systemd: the lease namespaces a previous broker kept in the fd store (xdp_nic).
  std::shared_ptr<NetnsFdStore> fd_store = NetnsFdStore::FromEnvironment();
  std::map<std::string, std::unique_ptr<ExtentBackend>> backends;
  std::vector<BlockPoolSpec> specs;
  std::vector<LoopExtentBackend*> loop_backends;  // owned by the core, which outlives their use
  for (const config::PoolConfig& pool : config.pools()) {
    BlockPoolSpec spec;
    spec.name = pool.name();
    spec.access = ToAccessPolicy(pool.access());
    if (pool.has_xdp_nic()) {
      absl::StatusOr<std::unique_ptr<XdpNicBackend>> backend =
          XdpNicBackend::Open(pool.name(), pool.xdp_nic(), fd_store);
      if (!backend.ok()) {
        spdlog::critical("pool {}: {}", pool.name(), backend.status().message());
        return 1;
      }
      specs.push_back(XdpNicPoolSpec(pool));  // one slot per tenant
      backends.emplace(pool.name(), *std::move(backend));
      continue;
    }
    if (pool.has_sriov_nic()) {
      absl::StatusOr<std::unique_ptr<SriovNicBackend>> backend = SriovNicBackend::Open(
          pool.name(), pool.sriov_nic(), MakeRealSriovNicPlatform());
      if (!backend.ok()) {
        spdlog::critical("pool {}: {}", pool.name(), backend.status().message());
        return 1;
      }
      specs.push_back(SriovNicPoolSpec(pool));  // slot i is VF i
      backends.emplace(pool.name(), *std::move(backend));
      continue;
    }
    if (pool.has_pci_nic()) {
      absl::StatusOr<std::unique_ptr<PciNicBackend>> backend =
          PciNicBackend::Open(pool.name(), pool.pci_nic(), MakeRealPciNicPlatform());
      if (!backend.ok()) {
        spdlog::critical("pool {}: {}", pool.name(), backend.status().message());
        return 1;
      }
      specs.push_back(PciNicPoolSpec(pool));  // slot i is pci_addresses[i]
      backends.emplace(pool.name(), *std::move(backend));
      continue;
    }
    if (pool.has_nvme_sriov()) {
      absl::StatusOr<std::unique_ptr<NvmeSriovBackend>> backend = NvmeSriovBackend::Open(
          pool.name(), pool.nvme_sriov(), MakeRealNvmeSriovPlatform());
      if (!backend.ok()) {
        spdlog::critical("pool {}: {}", pool.name(), backend.status().message());
        return 1;
      }
      // One lease is one whole slot: the allocator hands out slot-aligned, slot-sized ranges.
      spec.capacity_bytes = (*backend)->capacity_bytes();
      spec.alignment_bytes = (*backend)->slot_size();
      spec.max_extent_bytes = (*backend)->slot_size();
      specs.push_back(std::move(spec));
      backends.emplace(pool.name(), *std::move(backend));
      continue;
    }
    absl::StatusOr<std::unique_ptr<LoopExtentBackend>> backend =
        LoopExtentBackend::Open(pool.name(), pool.loop_extent());
    if (!backend.ok()) {
      spdlog::critical("pool {}: {}", pool.name(), backend.status().message());
      return 1;
    }
    spec.capacity_bytes = (*backend)->capacity_bytes();
    spec.alignment_bytes = pool.loop_extent().alignment_bytes();
    spec.max_extent_bytes = pool.loop_extent().max_extent_bytes();
    specs.push_back(std::move(spec));
    spdlog::info("pool={} backend=loop_extent backing={} capacity={} bytes", pool.name(),
                 (*backend)->backing_path(), (*backend)->capacity_bytes());
    loop_backends.push_back(backend->get());
    backends.emplace(pool.name(), *std::move(backend));
  }

  JournalReplay replay;
  absl::StatusOr<std::unique_ptr<Journal>> journal =
      Journal::Open(absl::StrCat(config.state_dir(), "/journal"), &replay);
  if (!journal.ok()) {
    spdlog::critical("journal: {}", journal.status().message());
    return 1;
  }

  CoreOptions options;
  options.operator_uids.assign(config.operator_uids().begin(), config.operator_uids().end());
  options.max_sessions = config.max_sessions();
  options.max_leases_per_session = config.max_leases_per_session();
  BrokerCore core(std::move(options),
                  std::make_unique<Allocator>(std::move(specs), ToQuotaPolicy(config)),
                  std::move(backends), *std::move(journal));
  if (absl::Status recovered = core.Recover(replay); !recovered.ok()) {
    spdlog::critical("recovery: {}", recovered.message());
    return 1;
  }
  // After recovery (its orphan sweep handles spares a crashed Provision had bound), before any
  // grant: each pool's ledger of spare devices lives beside the journal.
  for (LoopExtentBackend* backend : loop_backends) {
    const std::string ledger = absl::StrCat(config.state_dir(), "/spares.", backend->pool_name());
    if (absl::Status started = backend->StartSpares(ledger); !started.ok()) {
      spdlog::warn("spare loop devices: {}; provisioning creates every device inline",
                   started.message());
    }
  }
  core.Start();

  absl::StatusOr<std::unique_ptr<SessionServer>> sessions = SessionServer::Listen(
      absl::StrCat(config.socket_dir(), "/session.sock"), config.socket_mode(), &core);
  if (!sessions.ok()) {
    spdlog::critical("session socket: {}", sessions.status().message());
    return 1;
  }

  const std::string grpc_path = absl::StrCat(config.socket_dir(), "/grpc.sock");
  ::unlink(grpc_path.c_str());
  BrokerService service(&core);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", grpc_path), grpc::InsecureServerCredentials());
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    spdlog::critical("could not listen on {}", grpc_path);
    return 1;
  }
  ::chmod(grpc_path.c_str(), config.socket_mode());
  (*sessions)->Start();
  spdlog::info("vfbrokerd ready: sessions on {}/session.sock, gRPC on {}", config.socket_dir(),
               grpc_path);
  sd_notify(0, "READY=1\nSTATUS=serving");

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::info("vfbrokerd stopping on signal {}; leases stay with their tenants",
               strsignal(signal_number));
  sd_notify(0, "STOPPING=1");
  service.Shutdown();
  (*sessions)->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  core.Stop();
  return 0;
}

}  // namespace
}  // namespace vfbroker

int main(int argc, char** argv) {
  // Block the stop signals before any thread starts, so only sigwait() sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::SetProgramUsageMessage("vfbroker resource broker daemon");
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  absl::StatusOr<vfbroker::config::BrokerConfig> config =
      vfbroker::LoadBrokerConfig(absl::GetFlag(FLAGS_config));
  if (!config.ok()) {
    std::fprintf(stderr, "vfbrokerd: %s: %s\n", absl::GetFlag(FLAGS_config).c_str(),
                 std::string(config.status().message()).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::printf("%s: OK (%d pools)\n", absl::GetFlag(FLAGS_config).c_str(),
                config->pools_size());
    return 0;
  }
  return vfbroker::Run(*config);
}
