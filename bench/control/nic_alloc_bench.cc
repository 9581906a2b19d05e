// nic_alloc_bench: AllocateNic latency of vfbrokerd on an xdp_nic pool with 1, 10 and 100
// concurrent tenants (bursts, then paced), the tenant's AfXdpPort::Adopt on top, release and
// reclaim; and, as the peer, the kernel's own cost of what a lease minimally is (a macvlan
// created and up, plus an AF_XDP socket and UMEM bound to it), with the steering program's
// load and attach timed apart. Run by run_nic_alloc_bench.sh inside a private network namespace.
//
//   nic_alloc_bench --socket_dir=DIR --pool=net [--peer_interface=veth0]
//
// A grant sample is one AllocateNic call including the receipt of the socket and UMEM
// descriptors; grant+adopt adds vfclient::AdoptNicPort (mmap of the UMEM and the four rings,
// the checks of AfXdpPort::Adopt): what a tenant waits for before it can receive. Each tenant
// is its own session on its own thread and holds its leases until the round ends; then each
// releases its own (the Release call is timed) and the broker's reclaim (device deletion) is
// waited for (drain time, untimed per lease).
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "broker/backends/rtnetlink.h"
#include "client/broker_client.h"
#include "client/nic_port.h"
#include "vfdrivers/net/af_xdp_socket.h"
#include "vfdrivers/net/xdp_steering.h"

ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "vfbrokerd's socket directory");
ABSL_FLAG(std::string, pool, "net", "xdp_nic pool to allocate from ('' : peer only)");
ABSL_FLAG(int, per_tenant, 2, "grants per tenant per round (all held until its end)");
ABSL_FLAG(double, paced_think_ms, 200,
          "paced round: mean (exponential) pause before each allocation");
ABSL_FLAG(std::string, peer_interface, "",
          "if set: time the kernel's own macvlan + AF_XDP socket on this interface (root)");
ABSL_FLAG(int, peer_samples, 50, "peer: devices created one after the other");
ABSL_FLAG(uint32_t, frame_size, 4096, "peer: UMEM frame size (the pool's)");
ABSL_FLAG(uint32_t, frame_count, 256, "peer: UMEM frames (the pool's)");
ABSL_FLAG(uint32_t, ring_size, 256, "peer: ring size (the pool's)");

namespace {

using vfdrivers::net::XdpSteering;

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  size_t index = static_cast<size_t>(p * (samples.size() - 1) + 0.5);
  return samples[index];
}

double Max(const std::vector<double>& samples) {
  return samples.empty() ? 0 : *std::max_element(samples.begin(), samples.end());
}

std::string Cell(const std::vector<double>& s) {
  return absl::StrFormat("%.3f / %.3f", Percentile(s, 0.5), Percentile(s, 0.99));
}

std::shared_ptr<vfclient::BrokerClient> ConnectOrDie() {
  vfclient::ConnectOptions options;
  options.socket_dir = absl::GetFlag(FLAGS_socket_dir);
  auto client = vfclient::BrokerClient::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "nic_alloc_bench: %s\n", client.status().ToString().c_str());
    std::exit(2);
  }
  return *client;
}

void WaitUntilIdle(vfclient::BrokerClient& watcher) {
  while (true) {
    auto stats = watcher.GetStats();
    uint32_t busy = stats.ok() ? stats->leases() : 1;
    if (stats.ok()) {
      for (const auto& pool : stats->pools()) busy += pool.quarantined();
    }
    if (busy == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

struct Round {
  int tenants;
  int per_tenant;
  double think_ms;  // 0: a burst (all start together, back to back)
};

// Peak samples of the grant path: per round, all of a round's samples together.
struct Samples {
  std::vector<double> grant, adopt, release;
  int failures = 0;
  double drain_ms = 0;
};

Samples RunRound(const std::string& pool, const Round& round, vfclient::BrokerClient& watcher) {
  const int tenants = round.tenants;
  std::vector<std::shared_ptr<vfclient::BrokerClient>> clients;
  for (int i = 0; i < tenants; ++i) clients.push_back(ConnectOrDie());
  std::vector<Samples> per_thread(tenants);
  struct Held {
    std::unique_ptr<vfdrivers::net::AfXdpPort> port;
    std::unique_ptr<vfclient::NicLease> lease;
  };
  std::vector<std::vector<Held>> held(tenants);
  std::atomic<int> ready{0};
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < tenants; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::exponential_distribution<double> think(round.think_ms > 0 ? 1 / round.think_ms : 1.0);
      ready.fetch_add(1);
      while (ready.load() < tenants) std::this_thread::yield();
      Samples& mine = per_thread[t];
      for (int i = 0; i < round.per_tenant; ++i) {
        if (round.think_ms > 0) {
          std::this_thread::sleep_for(
              std::chrono::microseconds(static_cast<int64_t>(think(rng) * 1000)));
        }
        vfbroker::v1::AllocateNicRequest request;
        request.set_pool(pool);
        const absl::Time start = absl::Now();
        auto lease = clients[t]->AllocateNic(request);
        const absl::Time got = absl::Now();
        if (!lease.ok()) {
          ++mine.failures;
          std::fprintf(stderr, "grant: %s\n", lease.status().ToString().c_str());
          continue;
        }
        auto port = vfclient::AdoptNicPort(**lease);
        const absl::Time adopted = absl::Now();
        if (!port.ok()) {
          ++mine.failures;
          std::fprintf(stderr, "adopt: %s\n", port.status().ToString().c_str());
          continue;
        }
        mine.grant.push_back(absl::ToDoubleMilliseconds(got - start));
        mine.adopt.push_back(absl::ToDoubleMilliseconds(adopted - start));
        held[t].push_back(Held{*std::move(port), *std::move(lease)});
      }
      // Everyone releases once all tenants hold their leases.
      granted.fetch_add(1);
      while (granted.load() < tenants) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      for (Held& h : held[t]) {
        h.port.reset();
        const absl::Time start = absl::Now();
        absl::Status released = h.lease->Release();
        mine.release.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
        if (!released.ok()) std::fprintf(stderr, "release: %s\n", released.ToString().c_str());
      }
    });
  }
  // The drain: from the first release to the broker holding nothing (devices deleted).
  while (granted.load() < tenants) std::this_thread::sleep_for(std::chrono::microseconds(200));
  const absl::Time release_start = absl::Now();
  for (std::thread& thread : threads) thread.join();
  WaitUntilIdle(watcher);
  Samples all;
  all.drain_ms = absl::ToDoubleMilliseconds(absl::Now() - release_start);
  for (Samples& s : per_thread) {
    all.grant.insert(all.grant.end(), s.grant.begin(), s.grant.end());
    all.adopt.insert(all.adopt.end(), s.adopt.begin(), s.adopt.end());
    all.release.insert(all.release.end(), s.release.begin(), s.release.end());
    all.failures += s.failures;
  }
  held.clear();
  return all;
}

// The kernel's own cost of a lease's objects, one after the other, in this process (root):
// macvlan (create, IPv6 address generation off, up), AF_XDP socket + UMEM bound to it. Our
// steering program's load and attach are timed apart (not part of the peer).
struct PeerSamples {
  std::vector<double> macvlan, socket, load, attach, remove, peer;
};

// hold_generic: another device holds a generic XDP program throughout (as a live lease would);
// shared: the attached program is that one, not a fresh one (an experiment: the broker gives
// every lease a program of its own).
PeerSamples RunPeer(const std::string& interface, int samples, bool hold_generic, bool shared) {
  PeerSamples out;
  absl::StatusOr<vfbroker::rtnl::Link> parent = vfbroker::rtnl::GetLink(interface);
  if (!parent.ok()) {
    std::fprintf(stderr, "peer: %s: %s\n", interface.c_str(), parent.status().ToString().c_str());
    return out;
  }
  // Optionally one device holding a generic XDP program throughout (as a live lease would).
  std::unique_ptr<XdpSteering> holder_program;
  int holder = 0;
  auto make = [&](const std::string& name, int* ifindex) -> absl::Status {
    std::array<uint8_t, 6> mac{};
    if (getrandom(mac.data(), mac.size(), 0) != 6) return absl::InternalError("getrandom");
    mac[0] = (mac[0] & 0xfc) | 0x02;  // locally administered unicast
    absl::Status s = vfbroker::rtnl::CreateMacvlan(name, parent->ifindex, mac, MACVLAN_MODE_PRIVATE);
    if (!s.ok()) return s;
    absl::StatusOr<vfbroker::rtnl::Link> link = vfbroker::rtnl::GetLink(name);
    if (!link.ok()) return link.status();
    *ifindex = link->ifindex;
    if (s = vfbroker::rtnl::DisableIpv6AddressGeneration(*ifindex); !s.ok()) return s;
    return vfbroker::rtnl::SetUp(*ifindex);
  };
  if (hold_generic) {
    if (absl::Status s = make("vfbpeerhold", &holder); !s.ok()) {
      std::fprintf(stderr, "peer holder: %s\n", s.ToString().c_str());
      return out;
    }
    auto p = XdpSteering::Attach(holder, vfdrivers::net::XdpAttachMode::kGeneric, false);
    if (p.ok()) holder_program = *std::move(p);
  }
  for (int i = 0; i < samples; ++i) {
    const std::string name = absl::StrFormat("vfbpeer%04x", i);
    const absl::Time t0 = absl::Now();
    int ifindex = 0;
    if (absl::Status s = make(name, &ifindex); !s.ok()) {
      std::fprintf(stderr, "peer macvlan: %s\n", s.ToString().c_str());
      break;
    }
    const absl::Time t1 = absl::Now();
    vfdrivers::net::AfXdpSocketOptions options;
    options.ifindex = ifindex;
    options.mode = vfdrivers::net::XdpBindMode::kCopy;
    options.mark = 0x7f560000u + 0xff00 + static_cast<uint32_t>(i);
    options.layout.frame_size = absl::GetFlag(FLAGS_frame_size);
    options.layout.frame_count = absl::GetFlag(FLAGS_frame_count);
    options.layout.fill_size = options.layout.completion_size = options.layout.rx_size =
        options.layout.tx_size = absl::GetFlag(FLAGS_ring_size);
    options.layout.need_wakeup = true;
    absl::StatusOr<vfdrivers::net::AfXdpSocket> xsk = vfdrivers::net::CreateAfXdpSocket(options);
    const absl::Time t2 = absl::Now();
    if (!xsk.ok()) {
      std::fprintf(stderr, "peer socket: %s\n", xsk.status().ToString().c_str());
      (void)vfbroker::rtnl::Delete(ifindex);
      break;
    }
    auto program = XdpSteering::Load(false);
    const absl::Time t3 = absl::Now();
    absl::Status attached = program.status();
    if (shared && holder_program != nullptr) {
      if (int err = bpf_xdp_attach(ifindex, holder_program->program_fd(),
                                   XDP_FLAGS_SKB_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, nullptr);
          err != 0) {
        attached = absl::InternalError(absl::StrCat("shared attach: ", err));
      }
    } else if (program.ok()) {
      attached = (*program)->AttachTo(ifindex, vfdrivers::net::XdpAttachMode::kGeneric);
    }
    const absl::Time t4 = absl::Now();
    if (!attached.ok()) std::fprintf(stderr, "peer program: %s\n", attached.ToString().c_str());
    if (program.ok()) (*program)->LeaveAttached();  // goes with the device, as a lease's does
    program = absl::UnknownError("closed");
    xsk = absl::UnknownError("closed");
    const absl::Time t5 = absl::Now();
    (void)vfbroker::rtnl::Delete(ifindex);
    const absl::Time t6 = absl::Now();
    out.macvlan.push_back(absl::ToDoubleMilliseconds(t1 - t0));
    out.socket.push_back(absl::ToDoubleMilliseconds(t2 - t1));
    out.peer.push_back(absl::ToDoubleMilliseconds(t2 - t0));
    out.load.push_back(absl::ToDoubleMilliseconds(t3 - t2));
    out.attach.push_back(absl::ToDoubleMilliseconds(t4 - t3));
    out.remove.push_back(absl::ToDoubleMilliseconds(t6 - t5));
  }
  holder_program.reset();
  if (holder != 0) (void)vfbroker::rtnl::Delete(holder);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string pool = absl::GetFlag(FLAGS_pool);
  const std::string peer_interface = absl::GetFlag(FLAGS_peer_interface);
  double peer_p50 = 0, peer_p99 = 0;
  if (!peer_interface.empty()) {
    const int n = absl::GetFlag(FLAGS_peer_samples);
    std::printf("Peer: the kernel's macvlan + AF_XDP socket, %d one after the other (ms)\n\n", n);
    std::printf("| generic XDP elsewhere | macvlan p50 / p99 | socket+UMEM p50 / p99 | "
                "peer total p50 / p99 | our program: load p50 / p99 | attach p50 / p99 | "
                "device delete p50 / p99 |\n|---|---|---|---|---|---|---|\n");
    for (int variant = 0; variant < 3; ++variant) {
      const bool hold = variant > 0, shared = variant == 2;
      PeerSamples s = RunPeer(peer_interface, n, hold, shared);
      std::printf("| %s | %s | %s | %s | %s | %s | %s |\n",
                  !hold     ? "none"
                  : !shared ? "yes (a live lease)"
                            : "yes, and that same program attached (experiment)",
                  Cell(s.macvlan).c_str(), Cell(s.socket).c_str(), Cell(s.peer).c_str(),
                  Cell(s.load).c_str(), Cell(s.attach).c_str(), Cell(s.remove).c_str());
      if (variant == 1) {
        peer_p50 = Percentile(s.peer, 0.5);
        peer_p99 = Percentile(s.peer, 0.99);
      }
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  if (pool.empty()) return 0;

  auto watcher = ConnectOrDie();
  WaitUntilIdle(*watcher);
  const int per_tenant = absl::GetFlag(FLAGS_per_tenant);
  const double think = absl::GetFlag(FLAGS_paced_think_ms);
  std::printf("| tenants | load | grants | grant p50 | grant p99 | grant+adopt p50 | "
              "grant+adopt p99 | max | release p50 | release p99 | all reclaimed after |%s\n",
              peer_p50 > 0 ? " grant / peer (p50, p99) |" : "");
  std::printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n",
              peer_p50 > 0 ? "---:|" : "");
  for (const Round& round : {Round{1, per_tenant, 0}, Round{10, per_tenant, 0},
                             Round{100, per_tenant, 0}, Round{100, 2 * per_tenant, think}}) {
    Samples s = RunRound(pool, round, *watcher);
    const std::string load =
        round.think_ms > 0
            ? absl::StrFormat("paced: think %.0f ms (~%.0f/s)", round.think_ms,
                              round.tenants * 1000.0 / round.think_ms)
            : std::string("burst");
    std::string ratio;
    if (peer_p50 > 0) {
      ratio = absl::StrFormat(" %.1fx, %.1fx |", Percentile(s.grant, 0.5) / peer_p50,
                              Percentile(s.grant, 0.99) / peer_p99);
    }
    std::printf("| %d | %s | %zu | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f |%s%s\n",
                round.tenants, load.c_str(), s.grant.size(), Percentile(s.grant, 0.5),
                Percentile(s.grant, 0.99), Percentile(s.adopt, 0.5), Percentile(s.adopt, 0.99),
                Max(s.adopt), Percentile(s.release, 0.5), Percentile(s.release, 0.99),
                s.drain_ms, ratio.c_str(),
                s.failures ? absl::StrFormat(" (%d failed)", s.failures).c_str() : "");
    std::fflush(stdout);
  }
  return 0;
}
