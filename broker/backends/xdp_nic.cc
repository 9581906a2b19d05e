#include "broker/backends/xdp_nic.h"

#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "broker/backends/lease_netns.h"
#include "broker/backends/rtnetlink.h"
#include "common/logging.h"
#include "vfdrivers/net/af_xdp_socket.h"

namespace vfbroker {
namespace {

using vfdrivers::net::AfXdpLayout;
using vfdrivers::net::AfXdpSocket;
using vfdrivers::net::AfXdpSocketOptions;
using vfdrivers::net::EgressLease;
using vfdrivers::net::FlowRule;
using vfdrivers::net::SteeringTarget;
using vfdrivers::net::TcEgressGuard;
using vfdrivers::net::XdpSteering;
using vfbroker::UniqueFd;
namespace packet = vfdrivers::net::packet;

uint32_t Fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

std::array<uint8_t, 6> MacArray(const std::string& bytes) {
  std::array<uint8_t, 6> mac{};
  if (bytes.size() == 6) std::copy(bytes.begin(), bytes.end(), mac.begin());
  return mac;
}

packet::MacAddress ToMac(const std::string& bytes) {
  packet::MacAddress mac{};
  if (bytes.size() == 6) std::copy(bytes.begin(), bytes.end(), mac.bytes.begin());
  return mac;
}

std::string MacText(const std::string& bytes) {
  if (bytes.size() != 6) return "?";
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", bytes[0] & 0xff, bytes[1] & 0xff,
                         bytes[2] & 0xff, bytes[3] & 0xff, bytes[4] & 0xff, bytes[5] & 0xff);
}

// A lease's rules steer to its own socket: XSKMAP[its slot], bound to queue 0 of its device.
SteeringTarget LeaseSocket(const journal::XdpNicState& state) { return {state.slot(), 0}; }

FlowRule ToFlowRule(const journal::NicFilter& f, uint32_t ifindex) {
  FlowRule r;
  r.src_ip = f.src_ip();
  r.dst_ip = f.dst_ip();
  r.src_port = static_cast<uint16_t>(f.src_port());
  r.dst_port = static_cast<uint16_t>(f.dst_port());
  r.protocol = static_cast<uint8_t>(f.protocol());
  r.vlan = XdpSteering::kUntagged;  // the macvlan sees untagged frames (see xdp_nic.h)
  r.ifindex = ifindex;              // the lease's macvlan: rules never match another device's
  return r;
}

// The macvlan's ifindex in its lease namespace, chosen by the broker: distinct for every slot
// of the pool, so the steering rules (keyed by the frame's ingress ifindex) of two leases never
// share a key, although every lease namespace numbers its devices from 1 (lo). Far above what
// a host allocates (one by one from 1), and never 1.
constexpr int kLeaseIfindexBase = 0x10000000;

// How many empty namespaces the pool keeps ready (Create costs ~0.4 ms, the rest of a grant
// ~0.3 ms): enough for a burst of grants while the refill thread catches up.
constexpr size_t kSpareNamespaces = 4;
// Namespaces of ended leases are kept for reuse up to this many (RecycleNamespace): destroying
// one is the kernel's costliest step (cleanup_net unregisters its loopback under the RTNL lock
// and waits for RCU), and creating one ~0.4 ms.
constexpr size_t kMaxSpareNamespaces = 128;

std::string RuleKey(const journal::NicFilter& f) {
  return absl::StrCat(f.protocol(), "/", f.src_ip(), ":", f.src_port(), ">", f.dst_ip(), ":",
                      f.dst_port());
}

// Runs `fn` in the lease's namespace, or here for a lease from before lease namespaces.
absl::Status InLeaseNetns(const UniqueFd* netns_fd, absl::FunctionRef<absl::Status()> fn) {
  if (netns_fd == nullptr || !netns_fd->valid()) return fn();
  return netns::RunIn(netns_fd->get(), fn);
}

}  // namespace

XdpNicBackend::XdpNicBackend(std::string pool_name, config::XdpNicPool config)
    : pool_name_(std::move(pool_name)), config_(std::move(config)) {
  const uint32_t tag = Fnv1a(pool_name_) & 0xffffff;
  device_prefix_ = absl::StrFormat("vfbx%06x", tag);
  vlan_prefix_ = absl::StrFormat("vfbv%06x", tag);
  holder_name_ = absl::StrFormat("vfbh%06x", tag);
}

XdpNicBackend::~XdpNicBackend() {
  StopStock();
  if (holder_ifindex_ != 0) (void)rtnl::Delete(holder_ifindex_);
}

void XdpNicBackend::StopStock() {
  {
    absl::MutexLock lock(&stock_mu_);
    stock_stopping_ = true;
    spare_netns_.clear();
  }
  if (stock_thread_.joinable()) stock_thread_.join();
}

void XdpNicBackend::StockLoop() {
  const size_t target = std::min<size_t>(kSpareNamespaces, config_.max_tenants());
  absl::MutexLock lock(&stock_mu_);
  while (true) {
    auto wanted = [&] { return stock_stopping_ || spare_netns_.size() < target; };
    stock_mu_.Await(absl::Condition(&wanted));
    if (stock_stopping_) return;
    stock_mu_.Unlock();
    absl::StatusOr<UniqueFd> fresh = netns::Create();
    stock_mu_.Lock();
    if (!fresh.ok()) {
      spdlog::warn("pool={}: creating a spare lease namespace: {}", pool_name_,
                   fresh.status().message());
      // Grants create their own meanwhile; try again a little later.
      stock_mu_.AwaitWithTimeout(absl::Condition(&stock_stopping_), absl::Seconds(1));
      continue;
    }
    spare_netns_.push_back(*std::move(fresh));
  }
}

absl::StatusOr<UniqueFd> XdpNicBackend::TakeNamespace() {
  {
    absl::MutexLock lock(&stock_mu_);
    if (!spare_netns_.empty()) {
      UniqueFd fd = std::move(spare_netns_.front());
      spare_netns_.pop_front();
      return fd;  // the refill thread wakes up on the smaller stock
    }
  }
  return netns::Create();
}

void XdpNicBackend::RecycleNamespace(UniqueFd lease_netns, UniqueFd socket) {
  // The namespace holds nothing but its loopback again (the macvlan is deleted). It may go
  // back to the stock only if no socket created in it can ever be bound again: the tenant's
  // (the only one; the tenant cannot make AF_XDP sockets) may still be open, and an unbound one
  // could otherwise bind to the next lease's macvlan there. xsk_bind checks the socket's state
  // before it looks the device up, so a bind to an ifindex that exists nowhere answers EBUSY
  // for a socket that is bound or was unbound by its device's deletion (done for good), and
  // ENODEV for one still unbound; that one is bound to the loopback (down, no XDP program:
  // a dead end, docs/security.md) and asked again.
  constexpr int kNoSuchIfindex = 0x7fffffff;
  const uint16_t copy = vfdrivers::net::AfXdpBindFlags(vfdrivers::net::XdpBindMode::kCopy, false);
  auto done_for_good = [&] {
    sockaddr_xdp probe{};
    probe.sxdp_family = AF_XDP;
    probe.sxdp_ifindex = kNoSuchIfindex;
    probe.sxdp_flags = copy;
    return bind(socket.get(), reinterpret_cast<sockaddr*>(&probe), sizeof(probe)) != 0 &&
           errno == EBUSY;
  };
  bool dead = socket.valid() && done_for_good();
  if (!dead && socket.valid()) {
    (void)vfdrivers::net::BindAfXdpSocket(socket.get(), /*lo=*/1, 0, copy);
    dead = done_for_good();
  }
  socket.reset();
  if (!dead) return;  // closed: the namespace goes when the tenant's socket does
  absl::MutexLock lock(&stock_mu_);
  if (stock_stopping_ || spare_netns_.size() >= kMaxSpareNamespaces) return;
  spare_netns_.push_front(std::move(lease_netns));  // the next grant's: a used one first
}

absl::StatusOr<std::unique_ptr<XdpNicBackend>> XdpNicBackend::Open(
    const std::string& pool_name, const config::XdpNicPool& config,
    std::shared_ptr<NetnsFdStore> fd_store) {
  std::unique_ptr<XdpNicBackend> backend(new XdpNicBackend(pool_name, config));
  backend->fd_store_ = fd_store != nullptr ? std::move(fd_store) : NetnsFdStore::Disabled();
  absl::StatusOr<rtnl::Link> parent = rtnl::GetLink(config.interface());
  if (!parent.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "xdp_nic: interface ", config.interface(), ": ", parent.status().message()));
  }
  backend->parent_ifindex_ = parent->ifindex;
  absl::StatusOr<std::unique_ptr<TcEgressGuard>> guard = TcEgressGuard::Attach(parent->ifindex);
  if (absl::IsAlreadyExists(guard.status())) {
    spdlog::info("pool={}: replacing the egress guard a previous broker left on {}", pool_name,
                 config.interface());
    guard = TcEgressGuard::Attach(parent->ifindex, /*replace_stale=*/true);
  }
  if (!guard.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("xdp_nic: egress guard on ", config.interface(), ": ",
                     guard.status().message()));
  }
  absl::StatusOr<std::unique_ptr<LeaseVlanGuard>> vlan_guard =
      LeaseVlanGuard::Attach(parent->ifindex);
  if (!vlan_guard.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "xdp_nic: ingress VLAN guard on ", config.interface(), ": ", vlan_guard.status().message()));
  }
  {
    absl::MutexLock lock(&backend->mu_);
    backend->guard_ = *std::move(guard);
    backend->vlan_guard_ = *std::move(vlan_guard);
  }
  absl::StatusOr<std::unique_ptr<XdpSteering>> program =
      XdpSteering::Load(/*drop_unmatched=*/false);
  if (!program.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("xdp_nic: loading the steering program: ", program.status().message()));
  }
  backend->program_ = *std::move(program);
  const char* pin_base = std::getenv("VFBROKER_NETNS_DIR");
  absl::StatusOr<std::string> pin_dir =
      netns::PinDirectory(pin_base != nullptr && *pin_base != '\0' ? std::string(pin_base)
                                                                    : netns::kDefaultPinBase);
  if (!pin_dir.ok()) return pin_dir.status();
  backend->pin_dir_ = *pin_dir;
  backend->stock_thread_ = std::thread([b = backend.get()] { b->StockLoop(); });
  // The holder (see xdp_nic.h): a previous broker's is replaced.
  if (absl::StatusOr<rtnl::Link> old = rtnl::GetLink(backend->holder_name_);
      old.ok() && old->kind == "macvlan") {
    (void)rtnl::Delete(old->ifindex);
  }
  std::array<uint8_t, 6> holder_mac{};
  if (getrandom(holder_mac.data(), holder_mac.size(), 0) == 6) {
    holder_mac[0] = (holder_mac[0] & 0xfc) | 0x02;  // locally administered unicast
    absl::Status held = rtnl::CreateMacvlan(backend->holder_name_, parent->ifindex, holder_mac,
                                            MACVLAN_MODE_PRIVATE);
    absl::StatusOr<rtnl::Link> holder =
        held.ok() ? rtnl::GetLink(backend->holder_name_) : absl::StatusOr<rtnl::Link>(held);
    if (holder.ok()) {
      backend->holder_ifindex_ = holder->ifindex;
      held = backend->program_->AttachShared(holder->ifindex,
                                              vfdrivers::net::XdpAttachMode::kGeneric);
    } else {
      held = holder.status();
    }
    if (!held.ok()) {
      // Grants still work; each first one after the pool was idle pays the dispatcher update.
      spdlog::warn("pool={}: steering program holder {}: {}", pool_name, backend->holder_name_,
                   held.message());
    }
  }
  spdlog::info("pool={} backend=xdp_nic interface={} (ifindex {}) slots={} devices={}*",
               pool_name, config.interface(), parent->ifindex, config.max_tenants(),
               backend->device_prefix_);
  return backend;
}

absl::StatusOr<ProvisionedExtent> XdpNicBackend::Provision(uint64_t, uint64_t) {
  return absl::FailedPreconditionError("pool is an xdp_nic pool: use AllocateNic");
}

absl::StatusOr<int> XdpNicBackend::AcquireVlanDevice(uint32_t vid, std::string* name) {
  *name = absl::StrFormat("%s%03x", vlan_prefix_, vid);
  absl::StatusOr<rtnl::Link> link = rtnl::GetLink(*name);
  if (absl::IsNotFound(link.status())) {
    absl::Status created = rtnl::CreateVlan(*name, parent_ifindex_, static_cast<uint16_t>(vid));
    if (absl::IsUnimplemented(created)) {
      // EOPNOTSUPP: no "vlan" link type (CONFIG_VLAN_8021Q off, or 8021q not loadable).
      return absl::FailedPreconditionError(absl::StrCat(
          "this host's kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q), so pool ",
          pool_name_, " cannot isolate VLAN ", vid, "; ask for an untagged lease (vlan 0)"));
    }
    if (!created.ok() && !absl::IsAlreadyExists(created)) return created;
    link = rtnl::GetLink(*name);
    if (link.ok()) {
      // Before it is up, as for the macvlans: the host's stack must not speak IPv6 (DAD,
      // router solicitations from the interface's MAC) on a tenant's VLAN.
      if (absl::Status quiet = rtnl::DisableIpv6AddressGeneration(link->ifindex); !quiet.ok()) {
        return quiet;
      }
      if (absl::Status up = rtnl::SetUp(link->ifindex); !up.ok()) return up;
    }
  }
  if (!link.ok()) return link.status();
  if (link->kind != "vlan" || link->vlan_id != vid || link->parent != parent_ifindex_) {
    return absl::FailedPreconditionError(
        absl::StrCat(*name, " exists but is not VLAN ", vid, " of ", config_.interface()));
  }
  ++vlan_users_[vid];
  return link->ifindex;
}

void XdpNicBackend::ReleaseVlanDevice(uint32_t vid) {
  auto it = vlan_users_.find(vid);
  if (it != vlan_users_.end() && --it->second > 0) return;
  if (it != vlan_users_.end()) vlan_users_.erase(it);
  const std::string name = absl::StrFormat("%s%03x", vlan_prefix_, vid);
  absl::StatusOr<rtnl::Link> link = rtnl::GetLink(name);
  if (link.ok() && link->kind == "vlan") {
    if (absl::Status deleted = rtnl::Delete(link->ifindex);
        !deleted.ok() && !absl::IsNotFound(deleted)) {
      spdlog::warn("pool={}: deleting VLAN device {}: {}", pool_name_, name, deleted.message());
    }
  }
}

absl::Status XdpNicBackend::ApplyRules(XdpSteering& steering, const journal::XdpNicState& state) {
  if (state.filters().empty()) {
    return steering.AddMacRule(ToMac(state.mac()), XdpSteering::kUntagged, LeaseSocket(state),
                               state.ifindex());
  }
  for (const journal::NicFilter& f : state.filters()) {
    if (absl::Status s = steering.AddFlowRule(ToFlowRule(f, state.ifindex()), LeaseSocket(state));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

void XdpNicBackend::ForgetRules(XdpSteering& steering, const journal::XdpNicState& state) {
  (void)steering.RemoveMacRule(ToMac(state.mac()), XdpSteering::kUntagged, state.ifindex());
  for (const journal::NicFilter& f : state.filters()) {
    (void)steering.RemoveFlowRule(ToFlowRule(f, state.ifindex()));
  }
  if (absl::Status s = steering.ClearSocket(state.slot()); !s.ok()) {
    spdlog::warn("pool={} device={}: clearing socket slot {}: {}", pool_name_, state.device(),
                 state.slot(), s.message());
  }
}

absl::Status XdpNicBackend::GuardLease(const journal::XdpNicState& state) {
  EgressLease lease;
  lease.mac = ToMac(state.mac());
  lease.vlan = state.vlan() == 0 ? TcEgressGuard::kUntagged : static_cast<uint16_t>(state.vlan());
  lease.src_ip = 0;                     // a lease has no IPv4 address of its own
  lease.allow_other_ethertypes = true;  // e.g. IPv6; source MAC and VLAN are still checked
  absl::MutexLock lock(&mu_);
  if (guard_ == nullptr || vlan_guard_ == nullptr) {
    return absl::UnavailableError("xdp_nic: no egress or VLAN guard");
  }
  if (absl::Status s = vlan_guard_->SetLease(
          MacArray(state.mac()), state.vlan() == 0 ? LeaseVlanGuard::kUntagged : state.vlan());
      !s.ok()) {
    return s;
  }
  return guard_->SetLease(state.mark(), lease);
}

absl::StatusOr<ProvisionedExtent> XdpNicBackend::ProvisionNic(uint64_t slot,
                                                              const NicRequest& request) {
  if (slot >= config_.max_tenants()) return absl::InvalidArgumentError("xdp_nic: no such slot");
  journal::XdpNicState state;
  state.set_slot(static_cast<uint32_t>(slot));
  state.set_interface(config_.interface());
  state.set_device(absl::StrFormat("%s%04x", device_prefix_, slot));
  state.set_mac(std::string(request.mac.begin(), request.mac.end()));
  state.set_vlan(request.vlan);
  state.set_mark(TcEgressGuard::kMarkBase + static_cast<uint32_t>(slot));
  for (const journal::NicFilter& f : request.filters) *state.add_filters() = f;
  state.set_next_filter_id(request.next_filter_id);
  state.set_frame_size(config_.frame_size());
  state.set_frame_count(config_.frame_count());
  state.set_frame_headroom(0);
  state.set_ring_size(config_.ring_size());
  state.set_need_wakeup(true);

  int lower = parent_ifindex_;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return absl::UnavailableError("xdp_nic: the broker is stopping");
    if (!macs_.insert(state.mac()).second) {
      return absl::AlreadyExistsError(absl::StrCat("mac ", MacText(state.mac()),
                                                   " is already leased on ", config_.interface()));
    }
    if (request.vlan != 0) {
      std::string vlan_device;
      absl::StatusOr<int> vlan = AcquireVlanDevice(request.vlan, &vlan_device);
      if (!vlan.ok()) {
        macs_.erase(state.mac());
        return vlan.status();
      }
      lower = *vlan;
      state.set_vlan_device(vlan_device);
    }
  }
  const absl::Time t0 = absl::Now();
  absl::StatusOr<UniqueFd> netns_fd = TakeNamespace();
  if (!netns_fd.ok()) {
    absl::MutexLock lock(&mu_);
    macs_.erase(state.mac());
    if (request.vlan != 0) ReleaseVlanDevice(request.vlan);
    return netns_fd.status();
  }
  auto lease_netns = std::make_shared<UniqueFd>(*std::move(netns_fd));
  state.set_netns_pin(absl::StrCat(pin_dir_, "/", state.device()));
  bool created = false;
  bool pinned = false;
  auto undo = [&] {
    // The device goes explicitly: the namespace itself dies only when its last reference does,
    // and until then the macvlan would keep the MAC taken on the lower device.
    if (created) {
      (void)netns::RunIn(lease_netns->get(), [&] { return rtnl::Delete(state.ifindex()); });
    }
    if (pinned) {
      (void)netns::Unpin(state.netns_pin());
      fd_store_->Forget(state.device());
    }
    absl::MutexLock lock(&mu_);
    macs_.erase(state.mac());
    if (vlan_guard_ != nullptr) (void)vlan_guard_->RemoveLease(request.mac);
    if (guard_ != nullptr) (void)guard_->RemoveLease(state.mark());
    if (request.vlan != 0) ReleaseVlanDevice(request.vlan);
  };

  const absl::Time t_netns = absl::Now();
  // private: see the top of xdp_nic.h. Created directly in the lease namespace (moving a device
  // there costs an RCU wait, ~15 ms).
  const int lease_ifindex = kLeaseIfindexBase + static_cast<int>(slot);
  absl::Status made = rtnl::CreateMacvlanInNetns(state.device(), lower, request.mac,
                                                 MACVLAN_MODE_PRIVATE, lease_netns->get(),
                                                 lease_ifindex);
  if (!made.ok()) {
    undo();
    if (absl::IsAlreadyExists(made)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "mac ", MacText(state.mac()), " (or device ", state.device(), ") is already in use on ",
          config_.interface(), ": ", made.message()));
    }
    return made;
  }
  created = true;
  state.set_ifindex(lease_ifindex);

  // Everything that names the device by ifindex happens inside the namespace: rtnetlink, the
  // XDP attachment (through netlink too), and socket(): the socket belongs to the namespace it
  // is created in, for good, and its bind can only ever find devices there.
  std::shared_ptr<XdpSteering> steering = program_;
  absl::StatusOr<AfXdpSocket> xsk = absl::UnknownError("not created");
  absl::Time t_entered, t_device, t_program, t_made;
  const absl::Time t_created = absl::Now();
  absl::Status inside = netns::RunIn(lease_netns->get(), [&]() -> absl::Status {
    t_entered = absl::Now();
    absl::StatusOr<rtnl::Link> link = rtnl::GetLink(state.device());
    if (!link.ok()) return link.status();
    if (link->ifindex != lease_ifindex) {
      return absl::InternalError(absl::StrCat(state.device(), " got ifindex ", link->ifindex,
                                              ", asked for ", lease_ifindex));
    }
    // Before it is up: no stack may speak IPv6 (DAD, solicitations) from the lease's MAC.
    if (absl::Status quiet = rtnl::DisableIpv6AddressGeneration(lease_ifindex); !quiet.ok()) {
      return quiet;
    }
    if (absl::Status up = rtnl::SetUp(lease_ifindex); !up.ok()) return up;
    t_device = absl::Now();
    // The pool's program, known to the kernel's XDP dispatcher already: no update, no grace
    // period.
    if (absl::Status attached =
            steering->AttachShared(lease_ifindex, vfdrivers::net::XdpAttachMode::kGeneric);
        !attached.ok()) {
      return attached;
    }
    t_program = absl::Now();
    AfXdpSocketOptions options;
    options.ifindex = lease_ifindex;
    options.queue_id = 0;
    options.mode = vfdrivers::net::XdpBindMode::kCopy;  // macvlan has no zero-copy
    options.mark = state.mark();
    options.bind = false;  // the tenant binds after mapping the rings (xdp_nic.h)
    options.layout.frame_size = state.frame_size();
    options.layout.frame_count = state.frame_count();
    options.layout.frame_headroom = state.frame_headroom();
    options.layout.fill_size = state.ring_size();
    options.layout.completion_size = state.ring_size();
    options.layout.rx_size = state.ring_size();
    options.layout.tx_size = state.ring_size();
    options.layout.need_wakeup = state.need_wakeup();
    xsk = vfdrivers::net::CreateAfXdpSocket(options);
    t_made = absl::Now();
    return xsk.status();
  });
  if (!inside.ok()) {
    undo();
    return inside;
  }
  const absl::Time t_socket = absl::Now();
  state.set_zero_copy(false);
  state.set_tenant_binds(true);
  state.set_bind_flags(
      vfdrivers::net::AfXdpBindFlags(vfdrivers::net::XdpBindMode::kCopy, state.need_wakeup()));
  // A restarted broker finds the namespace again through the pin (the tenant's socket keeps the
  // namespace alive, but gives the broker no way back to it).
  absl::Status steered = netns::Pin(lease_netns->get(), state.netns_pin());
  pinned = steered.ok();
  // Under systemd the pin dies with the unit's mount namespace: the fd store keeps the
  // namespace for the next broker (netns_fd_store.h). Before the journal records the grant, so
  // that a crash leaves a stored namespace the journal names or an orphan the sweep removes.
  if (pinned) fd_store_->Keep(state.device(), lease_netns->get());
  // XSKMAP takes the socket unbound; the kernel delivers a redirect to it only once it is bound
  // to this device and queue (xsk_rcv_check), so frames before the tenant's bind are dropped.
  if (steered.ok()) steered = steering->SetSocket(state.slot(), xsk->socket.get());
  if (steered.ok()) steered = ApplyRules(*steering, state);
  if (steered.ok()) steered = GuardLease(state);
  if (!steered.ok()) {
    undo();  // the device first: no frame reaches the rules any more
    ForgetRules(*steering, state);
    return steered;
  }
  {
    absl::MutexLock lock(&mu_);
    // A descriptor of the tenant's socket of our own: at teardown it tells whether the socket
    // can still be bound (recycling the namespace depends on it, see RecycleNamespace).
    auto socket_dup = std::make_shared<UniqueFd>(fcntl(xsk->socket.get(), F_DUPFD_CLOEXEC, 0));
    live_[state.device()] = Live{state, std::move(steering), lease_netns, std::move(socket_dup)};
  }
  spdlog::debug("pool={} device={}: namespace {} us, macvlan {} us (create {} us, thread "
                "start {} us), steering attach {} us, socket {} us (thread end {} us), pin, "
                "rules and guards {} us",
                pool_name_, state.device(), absl::ToInt64Microseconds(t_netns - t0),
                absl::ToInt64Microseconds(t_device - t_netns),
                absl::ToInt64Microseconds(t_created - t_netns),
                absl::ToInt64Microseconds(t_entered - t_created),
                absl::ToInt64Microseconds(t_program - t_device),
                absl::ToInt64Microseconds(t_socket - t_program),
                absl::ToInt64Microseconds(t_socket - t_made),
                absl::ToInt64Microseconds(absl::Now() - t_socket));
  ProvisionedExtent out;
  *out.state.mutable_xdp_nic() = state;
  out.fds.push_back(TenantFd{v1::FD_ROLE_XSK, std::move(xsk->socket)});
  out.fds.push_back(TenantFd{v1::FD_ROLE_UMEM, std::move(xsk->umem)});
  return out;
}

absl::Status XdpNicBackend::ChangeFilters(const journal::ExtentState& before_state,
                                          const journal::ExtentState& after_state) {
  if (!before_state.has_xdp_nic() || !after_state.has_xdp_nic()) {
    return absl::InvalidArgumentError("xdp_nic: not an xdp_nic lease");
  }
  const journal::XdpNicState& before = before_state.xdp_nic();
  const journal::XdpNicState& after = after_state.xdp_nic();
  absl::MutexLock lock(&mu_);
  auto it = live_.find(before.device());
  if (it == live_.end() || it->second.steering == nullptr) {
    return absl::NotFoundError("xdp_nic: lease not live here");
  }
  XdpSteering& steering = *it->second.steering;
  constexpr uint16_t kUntagged = XdpSteering::kUntagged;
  std::map<std::string, const journal::NicFilter*> old_rules, new_rules;
  for (const auto& f : before.filters()) old_rules[RuleKey(f)] = &f;
  for (const auto& f : after.filters()) new_rules[RuleKey(f)] = &f;
  // Add first, then remove: a flow that stays steered never falls back to the kernel. The
  // program looks flows up before MACs, so the MAC rule may go last.
  std::vector<const journal::NicFilter*> added;
  absl::Status status;
  for (const auto& [key, f] : new_rules) {
    if (old_rules.count(key)) continue;
    status = steering.AddFlowRule(ToFlowRule(*f, before.ifindex()), LeaseSocket(before));
    if (!status.ok()) break;
    added.push_back(f);
  }
  if (status.ok() && before.filters().empty() && !after.filters().empty()) {
    status = steering.RemoveMacRule(ToMac(before.mac()), kUntagged, before.ifindex());
  }
  if (!status.ok()) {
    for (const journal::NicFilter* f : added) {
      (void)steering.RemoveFlowRule(ToFlowRule(*f, before.ifindex()));
    }
    return status;
  }
  if (!before.filters().empty() && after.filters().empty()) {
    status = steering.AddMacRule(ToMac(after.mac()), kUntagged, LeaseSocket(after),
                                 after.ifindex());
    if (!status.ok()) return status;
  }
  for (const auto& [key, f] : old_rules) {
    if (new_rules.count(key)) continue;
    if (absl::Status s = steering.RemoveFlowRule(ToFlowRule(*f, before.ifindex()));
        !s.ok() && !absl::IsNotFound(s)) {
      spdlog::warn("pool={} device={}: removing a flow rule: {}", pool_name_, before.device(),
                   s.message());
    }
  }
  it->second.state = after;
  return absl::OkStatus();
}

absl::Status XdpNicBackend::Readopt(const journal::ExtentState& extent) {
  if (!extent.has_xdp_nic()) return absl::InvalidArgumentError("xdp_nic: not an xdp_nic lease");
  const journal::XdpNicState& state = extent.xdp_nic();
  if (!absl::StartsWith(state.device(), device_prefix_)) {
    return absl::FailedPreconditionError(absl::StrCat("device ", state.device(),
                                                      " is not this pool's"));
  }
  // The lease's namespace, through its pin ("" : a lease from before lease namespaces, whose
  // macvlan is in the broker's namespace).
  std::shared_ptr<UniqueFd> lease_netns;
  bool from_store = false;
  if (!state.netns_pin().empty()) {
    absl::StatusOr<UniqueFd> fd = OpenLeaseNamespace(state, &from_store);
    if (!fd.ok()) return fd.status();
    lease_netns = std::make_shared<UniqueFd>(*std::move(fd));
  }
  absl::StatusOr<std::unique_ptr<XdpSteering>> steering =
      absl::UnknownError("not adopted");
  absl::Status found = InLeaseNetns(lease_netns.get(), [&]() -> absl::Status {
    absl::StatusOr<rtnl::Link> link = rtnl::GetLink(state.device());
    if (!link.ok()) return link.status();
    if (link->ifindex != state.ifindex() || link->kind != "macvlan" ||
        std::string(link->mac.begin(), link->mac.end()) != state.mac()) {
      return absl::FailedPreconditionError(absl::StrCat(
          state.device(), " is not the journaled device (ifindex ", link->ifindex, " kind ",
          link->kind, ")"));
    }
    // The steering program outlived the broker that attached it (shared by that broker's
    // leases); it is adopted through the device (netlink: in the device's namespace) so the
    // lease's filters can still change.
    steering = XdpSteering::Adopt(link->ifindex);
    return steering.status();
  });
  if (!found.ok()) return found;
  {
    absl::MutexLock lock(&mu_);
    if (!macs_.insert(state.mac()).second) {
      return absl::FailedPreconditionError("mac journaled twice");
    }
    if (state.vlan() != 0) ++vlan_users_[state.vlan()];
    live_[state.device()] = Live{state, *std::move(steering), lease_netns, nullptr};
  }
  // Found through its pin and not in the store (e.g. the first start under systemd after
  // running without it): into the store too, so the next restart under systemd finds it. Not
  // twice: systemd would keep both.
  if (lease_netns != nullptr && !from_store &&
      absl::IsNotFound(fd_store_->Recovered(state.device()).status())) {
    fd_store_->Keep(state.device(), lease_netns->get());
  }
  spdlog::info("pool={} device={}: lease namespace re-adopted ({})", pool_name_, state.device(),
               lease_netns == nullptr ? "broker's namespace"
               : from_store           ? "from systemd's fd store"
                                      : "through its pin");
  return GuardLease(state);
}

absl::StatusOr<UniqueFd> XdpNicBackend::OpenLeaseNamespace(const journal::XdpNicState& state,
                                                           bool* from_store) {
  *from_store = false;
  absl::StatusOr<UniqueFd> fd = netns::OpenPinned(state.netns_pin());
  if (!absl::IsNotFound(fd.status())) return fd;
  absl::StatusOr<UniqueFd> stored = fd_store_->Recovered(state.device());
  if (!stored.ok()) return fd.status();  // the pin's NOT_FOUND says where it looked
  *from_store = true;
  return stored;
}

absl::StatusOr<TeardownResult> XdpNicBackend::Teardown(const journal::ExtentState& extent) {
  if (!extent.has_xdp_nic()) return absl::InvalidArgumentError("xdp_nic: not an xdp_nic lease");
  const journal::XdpNicState& state = extent.xdp_nic();
  std::shared_ptr<XdpSteering> steering;
  std::shared_ptr<UniqueFd> lease_netns;
  std::shared_ptr<UniqueFd> socket_dup;
  bool registered = false;
  {
    absl::MutexLock lock(&mu_);
    // First: the tenant's marked frames stop at the guard.
    if (guard_ != nullptr) (void)guard_->RemoveLease(state.mark());
    auto node = live_.extract(state.device());
    if (!node.empty()) {
      registered = true;
      steering = std::move(node.mapped().steering);
      lease_netns = std::move(node.mapped().netns);
      socket_dup = std::move(node.mapped().socket);
    }
  }
  bool namespace_gone = false;
  if (!state.netns_pin().empty() && (lease_netns == nullptr || !lease_netns->valid())) {
    bool from_store = false;
    absl::StatusOr<UniqueFd> fd = OpenLeaseNamespace(state, &from_store);
    if (fd.ok()) {
      lease_netns = std::make_shared<UniqueFd>(*std::move(fd));
    } else if (absl::IsNotFound(fd.status())) {
      // Neither pinned nor stored: the namespace is gone, or was pinned in a mount namespace
      // that died with a previous broker that ran without systemd's fd store
      // (docs/architecture.md, xdp_nic, restart): then a device in it lives on while a
      // tenant's socket holds the namespace, out of this broker's reach.
      spdlog::error("pool={} device={}: lease namespace {} is neither pinned nor in the fd "
                    "store; its device, if it still exists, cannot be removed from here",
                    pool_name_, state.device(), state.netns_pin());
      namespace_gone = true;
    } else {
      return fd.status();  // retried by the core
    }
  }
  if (!namespace_gone) {
    absl::Status deleted = InLeaseNetns(lease_netns.get(), [&]() -> absl::Status {
      absl::StatusOr<rtnl::Link> link = rtnl::GetLink(state.device());
      if (link.ok()) {
        if (link->ifindex != state.ifindex()) {
          spdlog::error("pool={}: {} has ifindex {}, the journal says {}; left alone", pool_name_,
                        state.device(), link->ifindex, state.ifindex());
          return absl::OkStatus();
        }
        // The kernel unbinds the tenant's socket (NETDEV_UNREGISTER): it can reach nothing now,
        // and cannot be bound again.
        absl::Status gone = rtnl::Delete(link->ifindex);
        return absl::IsNotFound(gone) ? absl::OkStatus() : gone;
      }
      return absl::IsNotFound(link.status()) ? absl::OkStatus() : link.status();
    });
    if (!deleted.ok()) return deleted;  // retried by the core
    if (!state.netns_pin().empty()) {
      if (absl::Status s = netns::Unpin(state.netns_pin()); !s.ok()) {
        spdlog::warn("pool={} device={}: {}", pool_name_, state.device(), s.message());
      }
      fd_store_->Forget(state.device());
    }
    if (lease_netns != nullptr && socket_dup != nullptr) {
      RecycleNamespace(std::move(*lease_netns), std::move(*socket_dup));
    }
  }
  // The device is gone, and the program with it: the lease's rules and slot go from the maps.
  if (steering != nullptr) ForgetRules(*steering, state);
  absl::MutexLock lock(&mu_);
  if (registered) {
    macs_.erase(state.mac());
    if (vlan_guard_ != nullptr) (void)vlan_guard_->RemoveLease(MacArray(state.mac()));
  }
  if (state.vlan() != 0) {
    if (registered) {
      ReleaseVlanDevice(state.vlan());
    } else if (!vlan_users_.count(state.vlan())) {
      ReleaseVlanDevice(state.vlan());  // nobody uses it: removes the device
    }
  }
  return TeardownResult::kFreed;
}

absl::Status XdpNicBackend::ClearLeaseNamespace(int netns_fd) {
  return netns::RunIn(netns_fd, [&]() -> absl::Status {
    absl::StatusOr<std::vector<rtnl::Link>> inside = rtnl::ListLinks();
    if (!inside.ok()) return inside.status();
    for (const rtnl::Link& link : *inside) {
      if (!absl::StartsWith(link.name, device_prefix_)) continue;
      if (absl::Status s = rtnl::Delete(link.ifindex); !s.ok() && !absl::IsNotFound(s)) return s;
    }
    return absl::OkStatus();
  });
}

absl::Status XdpNicBackend::RemoveOrphans(const std::vector<journal::ExtentState>& known) {
  std::set<std::string> devices;
  std::set<uint32_t> vlans;
  for (const journal::ExtentState& s : known) {
    if (!s.has_xdp_nic()) continue;
    devices.insert(s.xdp_nic().device());
    if (s.xdp_nic().vlan() != 0) vlans.insert(s.xdp_nic().vlan());
  }
  int removed = 0;
  // Lease namespaces a dead broker pinned that no record names: their macvlans, then the pins
  // (the namespace itself goes with its last reference, e.g. a tenant's socket).
  absl::StatusOr<std::vector<std::string>> pins = netns::ListPins(pin_dir_);
  if (!pins.ok()) return pins.status();
  for (const std::string& name : *pins) {
    if (!absl::StartsWith(name, device_prefix_) || devices.count(name)) continue;
    const std::string path = absl::StrCat(pin_dir_, "/", name);
    if (absl::StatusOr<UniqueFd> fd = netns::OpenPinned(path); fd.ok()) {
      absl::Status cleared = ClearLeaseNamespace(fd->get());
      if (!cleared.ok()) {
        spdlog::warn("pool={}: orphaned lease namespace {}: {}", pool_name_, path,
                     cleared.message());
        continue;
      }
    }
    if (absl::Status s = netns::Unpin(path); s.ok()) {
      fd_store_->Forget(name);
      ++removed;
      spdlog::info("pool={}: removed orphaned lease namespace {} (no journal record names it)",
                   pool_name_, name);
    } else {
      spdlog::warn("pool={}: {}", pool_name_, s.message());
    }
  }
  // Lease namespaces that came back from systemd's fd store and no record names: the same,
  // then out of the store.
  for (const std::string& name : fd_store_->RecoveredDevices()) {
    if (!absl::StartsWith(name, device_prefix_) || devices.count(name)) continue;
    absl::StatusOr<UniqueFd> fd = fd_store_->Recovered(name);
    if (!fd.ok()) continue;
    absl::Status cleared = ClearLeaseNamespace(fd->get());
    if (!cleared.ok()) {
      spdlog::warn("pool={}: orphaned lease namespace {} from the fd store: {}", pool_name_, name,
                   cleared.message());
      continue;
    }
    fd_store_->Forget(name);
    ++removed;
    spdlog::info("pool={}: removed orphaned lease namespace {} from the fd store (no journal "
                 "record names it)", pool_name_, name);
  }
  absl::StatusOr<std::vector<rtnl::Link>> links = rtnl::ListLinks();
  if (!links.ok()) return links.status();
  for (const rtnl::Link& link : *links) {
    if (!absl::StartsWith(link.name, device_prefix_) || devices.count(link.name)) continue;
    if (absl::Status s = rtnl::Delete(link.ifindex); s.ok() || absl::IsNotFound(s)) {
      ++removed;
      spdlog::info("pool={}: removed orphaned device {} (no journal record names it)",
                   pool_name_, link.name);
    } else {
      spdlog::warn("pool={}: removing orphaned device {}: {}", pool_name_, link.name, s.message());
    }
  }
  absl::MutexLock lock(&mu_);
  for (const rtnl::Link& link : *links) {
    if (!absl::StartsWith(link.name, vlan_prefix_) || link.kind != "vlan") continue;
    if (vlans.count(link.vlan_id) || vlan_users_.count(link.vlan_id)) continue;
    if (absl::Status s = rtnl::Delete(link.ifindex); s.ok() || absl::IsNotFound(s)) {
      ++removed;
      spdlog::info("pool={}: removed orphaned VLAN device {}", pool_name_, link.name);
    }
  }
  if (removed > 0) spdlog::info("pool={}: {} orphaned devices removed", pool_name_, removed);
  return absl::OkStatus();
}

void XdpNicBackend::StopBackground() {
  StopStock();
  // The pin directory goes when no lease is pinned there (rmdir fails on a non-empty one).
  (void)rmdir(pin_dir_.c_str());
  absl::MutexLock lock(&mu_);
  if (stopped_) return;
  stopped_ = true;
  if (holder_ifindex_ != 0) {
    (void)rtnl::Delete(holder_ifindex_);
    holder_ifindex_ = 0;
  }
  if (live_.empty()) {
    guard_.reset();
    vlan_guard_.reset();
    return;
  }
  // Leases outlive the broker: the steering program stays attached to their devices (nobody
  // owns those attachments), and the guards stay in the kernel (deliberately not destroyed:
  // their destructors would detach them).
  (void)guard_.release();
  (void)vlan_guard_.release();
  spdlog::info("pool={}: {} NIC leases stay live; steering and egress guard left in place",
               pool_name_, live_.size());
}

}  // namespace vfbroker
