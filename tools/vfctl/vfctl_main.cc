// vfctl: the command-line client of vfbrokerd. See kUsage in vfctl_lib.cc (`vfctl --help`).
//
// vfctl is a tenant like any other: it opens a session (the broker learns its uid from the
// kernel) and sees what that uid may see. Run as root or as an operator uid it sees everything.
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "proto/vfbroker/v1/broker.pb.h"
#include "tools/vfctl/health_check.pb.h"
#include "tools/vfctl/vfctl_lib.h"

namespace vfctl {
namespace {

// How often a held lease checks in with the broker. After a broker restart this reopens the
// session, which is how the restarted broker hands the lease back to this process.
constexpr absl::Duration kHoldCheckInterval = absl::Seconds(5);

int Exit(ExitCode code) { return static_cast<int>(code); }

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", ErrorLine(status).c_str());
  return Exit(ExitCodeFor(status));
}

// Notes for people: on stdout normally, on stderr under --json so stdout stays one document.
void Note(const Invocation& invocation, const std::string& text) {
  std::fprintf(invocation.json ? stderr : stdout, "%s\n", text.c_str());
  std::fflush(invocation.json ? stderr : stdout);
}

int PrintJson(const google::protobuf::Message& message, bool multiline) {
  absl::StatusOr<std::string> json = ToJson(message, multiline);
  if (!json.ok()) return Fail(json.status());
  std::printf("%s\n", json->c_str());
  std::fflush(stdout);
  return Exit(ExitCode::kOk);
}

int PrintText(const std::string& text) {
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  return Exit(ExitCode::kOk);
}

absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> ConnectToBroker(
    const Invocation& invocation) {
  vfclient::ConnectOptions options;
  options.socket_dir = invocation.socket_dir;
  options.call_timeout = invocation.timeout;
  // If the broker restarts during a call, keep trying for as long as one call may take.
  options.reconnect_window = invocation.timeout;
  return vfclient::BrokerClient::Connect(options);
}

int ListPools(const Invocation& invocation, vfclient::BrokerClient& client) {
  absl::StatusOr<std::vector<v1::Pool>> pools = client.ListPools();
  if (!pools.ok()) return Fail(pools.status());
  if (invocation.json) {
    v1::ListPoolsResponse response;
    response.mutable_pools()->Assign(pools->begin(), pools->end());
    return PrintJson(response, /*multiline=*/true);
  }
  return PrintText(RenderPools(*pools));
}

int ListLeases(const Invocation& invocation, vfclient::BrokerClient& client) {
  absl::StatusOr<std::vector<v1::Lease>> leases = client.ListLeases();
  if (!leases.ok()) return Fail(leases.status());
  if (invocation.json) {
    v1::ListLeasesResponse response;
    response.mutable_leases()->Assign(leases->begin(), leases->end());
    return PrintJson(response, /*multiline=*/true);
  }
  return PrintText(RenderLeases(*leases, absl::Now()));
}

int ShowStats(const Invocation& invocation, vfclient::BrokerClient& client) {
  absl::StatusOr<v1::GetStatsResponse> stats = client.GetStats();
  if (!stats.ok()) return Fail(stats.status());
  if (invocation.json) return PrintJson(*stats, /*multiline=*/true);
  return PrintText(RenderStats(*stats));
}

// Waits for SIGINT or SIGTERM (blocked in main() before any thread started, so they queue for
// us), checking in with the broker meanwhile. Returns the exit code if the lease was lost.
int HoldUntilSignalled(const Invocation& invocation, vfclient::BrokerClient& client,
                       const std::string& lease_id) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  const timespec interval = absl::ToTimespec(kHoldCheckInterval);
  while (true) {
    const int signal_number = sigtimedwait(&stop_signals, nullptr, &interval);
    if (signal_number > 0) return Exit(ExitCode::kOk);
    if (errno == EINTR) continue;
    absl::StatusOr<std::vector<v1::Lease>> leases = client.ListLeases();
    if (!leases.ok()) {
      // The broker may be restarting; the lease survives that. Say so and keep holding.
      std::fprintf(stderr, "vfctl: cannot check on lease %s: %s\n", lease_id.c_str(),
                   ErrorLine(leases.status()).c_str());
      continue;
    }
    bool still_mine = false;
    for (const v1::Lease& lease : *leases) still_mine = still_mine || lease.id() == lease_id;
    if (!still_mine) {
      std::fprintf(stderr, "vfctl: lease %s is gone (released by an operator?)\n",
                   lease_id.c_str());
      return Exit(ExitCode::kNotFound);
    }
  }
}

int AllocateExtent(const Invocation& invocation, vfclient::BrokerClient& client) {
  absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> lease =
      client.AllocateExtent(invocation.pool, invocation.size_bytes);
  if (!lease.ok()) return Fail(lease.status());
  const std::string lease_id = (*lease)->id();
  const int printed = invocation.json ? PrintJson((*lease)->info(), /*multiline=*/true)
                                      : PrintText(RenderLease((*lease)->info(),
                                                              absl::LocalTimeZone()));
  if (printed != Exit(ExitCode::kOk)) return printed;

  int held = Exit(ExitCode::kOk);
  if (invocation.hold) {
    Note(invocation, absl::StrCat("vfctl: holding lease ", lease_id,
                                  " until SIGINT or SIGTERM (Ctrl-C), then releasing it"));
    held = HoldUntilSignalled(invocation, client, lease_id);
    if (held == Exit(ExitCode::kNotFound)) return held;
  } else {
    Note(invocation,
         absl::StrCat("vfctl: lease ", lease_id, " belongs to this vfctl process's session, ",
                      "so it is released now that vfctl exits; use --hold to keep it until ",
                      "Ctrl-C"));
  }
  if (absl::Status released = (*lease)->Release(); !released.ok()) return Fail(released);
  Note(invocation, absl::StrCat("vfctl: released lease ", lease_id));
  return held;
}

int Release(const Invocation& invocation, vfclient::BrokerClient& client) {
  if (absl::Status released = client.Release(invocation.lease_id); !released.ok()) {
    return Fail(released);
  }
  if (invocation.json) return PrintJson(v1::ReleaseResponse(), /*multiline=*/false);
  return PrintText(absl::StrCat("released lease ", invocation.lease_id, "\n"));
}

int Watch(const Invocation& invocation, vfclient::BrokerClient& client) {
  const absl::TimeZone zone = absl::LocalTimeZone();
  int exit_code = Exit(ExitCode::kOk);
  absl::Status watched = client.WatchEvents(
      [&](const v1::Event& event) {
        if (invocation.json) {
          exit_code = PrintJson(event, /*multiline=*/false);
          return exit_code == Exit(ExitCode::kOk);
        }
        PrintText(FormatEvent(event, zone) + "\n");
        return true;
      },
      invocation.watch_for,
      [&] {
        if (isatty(STDERR_FILENO)) std::fprintf(stderr, "vfctl: watching; Ctrl-C to stop\n");
      });
  if (!watched.ok()) return Fail(watched);
  return exit_code;
}

// grpc.health.v1.Health/Check on grpc.sock. Needs no session: it asks whether the gRPC endpoint
// serves, which is what a load balancer or a monitoring probe wants to know.
int CheckHealth(const Invocation& invocation) {
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(
      absl::StrCat("unix:", invocation.socket_dir, "/grpc.sock"),
      grpc::InsecureChannelCredentials());
  grpc::TemplatedGenericStub<health::HealthCheckRequest, health::HealthCheckResponse> stub(
      channel);
  health::HealthCheckRequest request;
  request.set_service(invocation.health_service);
  health::HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + invocation.timeout));
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status result) {
                   status = std::move(result);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) {
    return Fail(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                             status.error_message()));
  }
  const int printed = invocation.json
                          ? PrintJson(response, /*multiline=*/false)
                          : PrintText(absl::StrCat(health::HealthCheckResponse::ServingStatus_Name(
                                                       response.status()),
                                                   "\n"));
  if (printed != Exit(ExitCode::kOk)) return printed;
  return Exit(response.status() == health::HealthCheckResponse::SERVING ? ExitCode::kOk
                                                                        : ExitCode::kRefused);
}

int Run(const Invocation& invocation) {
  if (invocation.command == Command::kHealth) return CheckHealth(invocation);

  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client = ConnectToBroker(invocation);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", ErrorLine(client.status()).c_str());
    // Whatever went wrong, no broker took the request (a too-long --socket_dir is our fault).
    return Exit(client.status().code() == absl::StatusCode::kInvalidArgument
                    ? ExitCode::kUsage
                    : ExitCode::kUnreachable);
  }
  switch (invocation.command) {
    case Command::kPools:
      return ListPools(invocation, **client);
    case Command::kLeases:
      return ListLeases(invocation, **client);
    case Command::kStats:
      return ShowStats(invocation, **client);
    case Command::kAllocateExtent:
      return AllocateExtent(invocation, **client);
    case Command::kRelease:
      return Release(invocation, **client);
    case Command::kWatch:
      return Watch(invocation, **client);
    case Command::kHelp:
    case Command::kHealth:
      break;
  }
  return Exit(ExitCode::kUsage);
}

}  // namespace
}  // namespace vfctl

int main(int argc, char** argv) {
  const char* socket_dir_from_env = std::getenv("VFBROKER_SOCKET_DIR");
  absl::StatusOr<vfctl::Invocation> invocation = vfctl::ParseCommandLine(
      std::vector<std::string>(argv + 1, argv + argc),
      socket_dir_from_env != nullptr ? socket_dir_from_env : "");
  if (!invocation.ok()) {
    std::fprintf(stderr, "vfctl: %s\nRun 'vfctl --help' for usage.\n",
                 std::string(invocation.status().message()).c_str());
    return static_cast<int>(vfctl::ExitCode::kUsage);
  }
  if (invocation->command == vfctl::Command::kHelp) {
    std::fputs(vfctl::kUsage, stdout);
    return static_cast<int>(vfctl::ExitCode::kOk);
  }
  if (invocation->command == vfctl::Command::kAllocateExtent && invocation->hold) {
    // Blocked before gRPC starts its threads (they inherit the mask), so the stop signals queue
    // for sigtimedwait() and vfctl releases the lease and says so. Killed outright, vfctl would
    // lose nothing either: the broker reclaims the lease when the session socket closes.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  }
  return vfctl::Run(*invocation);
}
