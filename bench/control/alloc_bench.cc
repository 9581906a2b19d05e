// alloc_bench: allocate-plus-handoff latency of vfbrokerd with 1, 10 and 100 concurrent
// tenants, and the broker's memory per 1000 live leases.
//
//   alloc_bench --socket_dir=DIR --pool=scratch --broker_pid=PID
//
// Each tenant is its own session (its own BrokerClient) on its own thread; a sample is one
// AllocateExtent call including the receipt of the extent's descriptor, exactly what a tenant
// waits for. Each grant is released right away (its scrub is asynchronous and not timed).
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/broker_client.h"

ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "vfbrokerd's socket directory");
ABSL_FLAG(std::string, pool, "scratch", "pool to allocate from");
ABSL_FLAG(int, broker_pid, 0, "vfbrokerd's pid, for its memory (0: skip)");
ABSL_FLAG(int, per_tenant, 5, "allocations per tenant per round (all held until its end)");
ABSL_FLAG(double, paced_think_ms, 200,
          "paced round: mean (exponential) pause before each allocation");
ABSL_FLAG(int, leases_for_memory, 1000, "live leases for the memory measurement");

namespace {

uint64_t RssKiB(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

double Percentile(std::vector<double>& samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  size_t index = static_cast<size_t>(p * (samples.size() - 1) + 0.5);
  return samples[index];
}

// Waits until the broker holds no lease and has nothing left to scrub.
void WaitUntilIdle(vfclient::BrokerClient& watcher) {
  while (true) {
    auto stats = watcher.GetStats();
    uint32_t busy = stats.ok() ? stats->leases() : 1;
    if (stats.ok()) {
      for (const auto& pool : stats->pools()) busy += pool.quarantined();
    }
    if (busy == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::shared_ptr<vfclient::BrokerClient> ConnectOrDie() {
  vfclient::ConnectOptions options;
  options.socket_dir = absl::GetFlag(FLAGS_socket_dir);
  auto client = vfclient::BrokerClient::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "alloc_bench: %s\n", client.status().ToString().c_str());
    std::exit(2);
  }
  return *client;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string pool = absl::GetFlag(FLAGS_pool);
  std::printf("| tenants | load | allocations | p50 (ms) | p99 (ms) | max (ms) |\n");
  std::printf("|---:|---|---:|---:|---:|---:|\n");
  auto watcher = ConnectOrDie();  // root: sees every lease, waits for scrubs between rounds
  struct Round {
    int tenants;
    int per_tenant;
    double think_ms;  // 0: every tenant asks back to back, all starting together (a burst)
  };
  const int per_tenant = absl::GetFlag(FLAGS_per_tenant);
  const double think = absl::GetFlag(FLAGS_paced_think_ms);
  for (const Round& round : {Round{1, per_tenant, 0}, Round{10, per_tenant, 0},
                             Round{100, per_tenant, 0}, Round{100, 2 * per_tenant, think}}) {
    const int tenants = round.tenants;
    std::vector<std::shared_ptr<vfclient::BrokerClient>> clients;
    for (int i = 0; i < tenants; ++i) clients.push_back(ConnectOrDie());
    std::vector<std::vector<double>> per_thread(tenants);
    std::vector<std::vector<std::unique_ptr<vfclient::ExtentLease>>> held(tenants);
    int failures = 0;
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < tenants; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(t + 1);
        std::exponential_distribution<double> think_time(round.think_ms > 0 ? 1 / round.think_ms
                                                                            : 1.0);
        // Start together, so that the tenants really do ask at the same time.
        ready.fetch_add(1);
        while (ready.load() < tenants) std::this_thread::yield();
        for (int i = 0; i < round.per_tenant; ++i) {
          if (round.think_ms > 0) {
            std::this_thread::sleep_for(
                std::chrono::microseconds(static_cast<int64_t>(think_time(rng) * 1000)));
          }
          const absl::Time start = absl::Now();
          auto lease = clients[t]->AllocateExtent(pool, 1 << 20);
          const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
          if (!lease.ok()) {
            __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
            continue;
          }
          per_thread[t].push_back(ms);
          held[t].push_back(*std::move(lease));
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    std::vector<double> all;
    for (auto& samples : per_thread) all.insert(all.end(), samples.begin(), samples.end());
    const double p50 = Percentile(all, 0.50), p99 = Percentile(all, 0.99);
    const std::string load =
        round.think_ms > 0
            ? absl::StrFormat("paced: think %.0f ms (~%.0f/s)", round.think_ms,
                              tenants * 1000.0 / round.think_ms)
            : std::string("burst: all at once");
    std::printf("| %d | %s | %zu | %.3f | %.3f | %.3f |%s\n", tenants, load.c_str(), all.size(),
                p50, p99, all.empty() ? 0 : all.back(),
                failures ? (" (" + std::to_string(failures) + " failed)").c_str() : "");
    std::fflush(stdout);
    // Release everything (untimed) and let the broker scrub it all before the next round.
    held.clear();
    const absl::Time drain_start = absl::Now();
    WaitUntilIdle(*watcher);
    std::fprintf(stderr, "(released and scrubbed %zu extents in %.2f s)\n", all.size(),
                 absl::ToDoubleSeconds(absl::Now() - drain_start));
  }

  const int broker_pid = absl::GetFlag(FLAGS_broker_pid);
  if (broker_pid > 0) {
    auto client = ConnectOrDie();
    const uint64_t before = RssKiB(broker_pid);
    std::vector<std::unique_ptr<vfclient::ExtentLease>> held;
    const int wanted = absl::GetFlag(FLAGS_leases_for_memory);
    for (int i = 0; i < wanted; ++i) {
      auto lease = client->AllocateExtent(pool, 1 << 20);
      if (!lease.ok()) {
        std::fprintf(stderr, "alloc_bench: lease %d: %s\n", i,
                     lease.status().ToString().c_str());
        break;
      }
      held.push_back(*std::move(lease));
    }
    const uint64_t after = RssKiB(broker_pid);
    std::printf("\nbroker RSS: %" PRIu64 " KiB idle, %" PRIu64 " KiB with %zu live leases: "
                "%.1f KiB per 1000 leases\n",
                before, after, held.size(),
                held.empty() ? 0.0 : (after - before) * 1000.0 / held.size());
    held.clear();
  }
  WaitUntilIdle(*watcher);  // leave the broker as we found it
  return 0;
}
