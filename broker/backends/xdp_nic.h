// xdp_nic: NIC slices on any Linux interface, as AF_XDP sockets on devices of their own.
//
// Each lease gets a macvlan of its own on the pool's interface (or, for a VLAN lease, on the
// pool's VLAN device for that VID, itself on the interface), named <prefix><slot>, with the
// lease's MAC, mode private, up. The kernel delivers to a macvlan only frames addressed to its
// MAC (and broadcast/multicast), so a tenant's socket, bound to queue 0 of its own macvlan,
// never sees another tenant's unicast frames (DESIGN.md, AF_XDP facts).
//
// On the macvlan the broker's XDP steering program (vfdrivers/net/xdp_steering.h, generic mode)
// redirects to the socket the frames matching the lease's flow filters, or every frame to its MAC
// if it has none; everything else goes on to the kernel as before. The socket and its UMEM
// (vfdrivers/net/af_xdp_socket.h, copy mode) are new for every lease; the tenant gets [FD_ROLE_XSK,
// FD_ROLE_UMEM] and the layout.
//
// Lease namespaces: the macvlan is created directly in a network namespace of the lease's own
// (lease_netns.h; taken from a stock of a few empty ones a background thread keeps ready, as
// creating one costs ~0.4 ms, and an ended lease's goes back there once its socket can never be
// bound again: destroying one is costlier still), with ifindex kLeaseIfindexBase + slot there, and
// the socket is created while the granting thread is inside it and handed over UNBOUND: the tenant
// maps the rings and then binds (Linux < 6.4 refuses to map a bound socket's rings; one code path
// for every kernel). The socket's namespace is fixed at creation and holds only the macvlan and a
// loopback that is down, so the tenant's bind can reach nothing else (docs/security.md). The
// namespace is pinned (bind mount) at <pin dir>/<device> for a restarted broker; everything that
// names the macvlan by ifindex (rtnetlink, the XDP attachment, Adopt) runs inside it.
//
// Why private mode: bridge mode would deliver one macvlan's frames straight to a sibling,
// past the lower device's egress (and the egress guard); vepa and private both send
// everything out of the lower device, and private also drops frames a hairpinning switch
// reflects back to a sibling, so tenants of one interface cannot reach each other at layer 2
// at all. Why the macvlan on a VLAN device (and not a VLAN device on the macvlan): the kernel
// then filters by VID before the macvlan sees a frame, and tags everything the tenant sends,
// so the tenant's device never carries another VLAN's frames and cannot send on another VLAN
// (a frame it tags itself leaves double-tagged, and the guard drops stacked tags).
//
// Receive, VLANs: the kernel takes a received frame's tag out of the data before the macvlan
// sees it, so the steering program cannot tell VLANs apart; the pool's LeaseVlanGuard (tc
// ingress on the interface, before the macvlans) drops a frame to a lease's MAC that does not
// carry the lease's VLAN (any tag, for an untagged lease).
//
// Transmit: the socket carries SO_MARK = TcEgressGuard::kMarkBase + slot, and the pool's
// TcEgressGuard on the interface lets a marked frame out only with the lease's source MAC and
// VID (untagged for an untagged lease; ARP sender MAC too). IPv4 source addresses are not
// checked (a lease has no IP address).
//
// Revocation: the lease's guard entry is removed, then its macvlan deleted (in its namespace)
// and the pin removed: the kernel unbinds the socket, so descriptors a tenant kept reach
// nothing; the MAC is free again at once.
//
// Restart: the devices, the XDP programs (attached through netlink, not links) and the
// sockets outlive the broker. Under systemd the pins die with the unit's private mount
// namespace, so every lease namespace is also kept in systemd's file descriptor store
// (netns_fd_store.h: stored at grant, removed at teardown); the pin is used where it exists,
// the stored descriptor where not. Readopt opens the lease's namespace that way and checks
// the journaled macvlan there (name, ifindex, MAC, kind) and re-registers the lease in fresh egress and VLAN guards; the steering program keeps
// running, and the broker adopts it through the device (XdpSteering::Adopt: the program
// attached to the macvlan, checked to be vfb_steer, its maps by id), so filters can still be
// changed. RemoveOrphans removes pinned or stored lease namespaces no record names (their
// macvlans first; stored ones leave the store) and devices with the pool's prefix that no record names. At a graceful stop with live leases, the steering programs and the guards
// are left in place so tenants keep their traffic and stay guarded while the broker is down.
//
// One steering program per pool: Open loads it (~1 ms, attached to nothing), and every grant
// attaches that same program to its macvlan (~50 us) and writes the lease's rules, keyed by the
// macvlan's ifindex (the kernel's ingress ifindex of the frame, xdp/steer_maps.h), and its socket
// at XSKMAP[slot]. Why not a program per lease: attaching a program the kernel's XDP dispatcher
// does not know yet updates the dispatcher and waits for an RCU grace period under the RTNL lock
// (6-17 ms measured, and every other grant's rtnetlink and bind wait behind it); a known one
// costs ~50 us. Isolation holds per device: a rule names its device and only matches frames that
// arrived on it (set by the kernel, not the tenant), and the kernel delivers to a socket only
// frames of the device and queue it is bound to. Teardown deletes the device, then removes the
// lease's rules and slot. A program left by a previous broker is adopted per lease
// (XdpSteering::Adopt); new grants use this broker's. Nothing is loaded ahead per tenant.
// The kernel forgets the program's dispatcher slot when its last attachment goes, so the pool
// keeps one more: a holder macvlan "<holder_prefix>" on the interface, never up, no rules, no
// socket, random MAC; deleted at stop, replaced by the next Open after a crash.
//
// Thread-safe.
#ifndef VFBROKER_BROKER_BACKENDS_XDP_NIC_H_
#define VFBROKER_BROKER_BACKENDS_XDP_NIC_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "broker/backends/extent_backend.h"
#include "broker/backends/lease_vlan_guard.h"
#include "broker/backends/netns_fd_store.h"
#include "broker/config/config.pb.h"
#include "broker/journal/journal.pb.h"
#include "common/unique_fd.h"
#include "vfdrivers/net/tc_egress_guard.h"
#include "vfdrivers/net/xdp_steering.h"

namespace vfbroker {

class XdpNicBackend : public ExtentBackend {
 public:
  // Resolves the interface (FAILED_PRECONDITION if missing) and attaches the egress guard.
  // `fd_store` (null: none) keeps lease namespaces in systemd's fd store and holds those that
  // came back at start.
  static absl::StatusOr<std::unique_ptr<XdpNicBackend>> Open(
      const std::string& pool_name, const config::XdpNicPool& config,
      std::shared_ptr<NetnsFdStore> fd_store = nullptr);
  ~XdpNicBackend() override;

  std::string backend_name() const override { return "xdp_nic"; }
  uint64_t capacity_bytes() const override { return config_.max_tenants(); }
  bool is_nic() const override { return true; }
  absl::StatusOr<ProvisionedExtent> Provision(uint64_t offset, uint64_t size) override;
  absl::StatusOr<ProvisionedExtent> ProvisionNic(uint64_t slot, const NicRequest& request) override;
  absl::Status ChangeFilters(const journal::ExtentState& before,
                             const journal::ExtentState& after) override;
  absl::Status Readopt(const journal::ExtentState& state) override;
  absl::StatusOr<TeardownResult> Teardown(const journal::ExtentState& state) override;
  absl::Status RemoveOrphans(const std::vector<journal::ExtentState>& known) override;
  void StopBackground() override;

  const std::string& interface() const { return config_.interface(); }
  // Device names of this pool: macvlans "<device_prefix()><slot as 4 hex digits>", VLAN
  // devices "<vlan_prefix()><vid as 3 hex digits>" (15 bytes at most, IFNAMSIZ).
  const std::string& device_prefix() const { return device_prefix_; }
  const std::string& vlan_prefix() const { return vlan_prefix_; }
  const std::string& holder_name() const { return holder_name_; }

 private:
  XdpNicBackend(std::string pool_name, config::XdpNicPool config);

  struct Live {
    journal::XdpNicState state;
    // The program steering the lease: the pool's, or adopted after a restart.
    std::shared_ptr<vfdrivers::net::XdpSteering> steering;
    // The lease's network namespace (null: a lease from before lease namespaces).
    std::shared_ptr<UniqueFd> netns;
    // A descriptor of the tenant's socket (null after a restart): see RecycleNamespace.
    std::shared_ptr<UniqueFd> socket;
  };

  // The spare-namespace stock (see the top of this file).
  void StockLoop();
  void StopStock();
  absl::StatusOr<UniqueFd> TakeNamespace();
  // Back to the stock, once the lease's device is gone and its socket can never bind again.
  void RecycleNamespace(UniqueFd lease_netns, UniqueFd socket);

  // The device the lease's macvlan sits on: the interface, or its VLAN device for `vid`
  // (created on first use, counted per lease).
  absl::StatusOr<int> AcquireVlanDevice(uint32_t vid, std::string* name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseVlanDevice(uint32_t vid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyRules(vfdrivers::net::XdpSteering& steering,
                          const journal::XdpNicState& state);
  // Removes the lease's rules and socket slot (after its device is gone). Best effort.
  void ForgetRules(vfdrivers::net::XdpSteering& steering, const journal::XdpNicState& state);
  absl::Status GuardLease(const journal::XdpNicState& state);
  // The lease's namespace after a restart: through its pin, else from the fd store. NOT_FOUND
  // if neither has it. `from_store` says which.
  // Deletes this pool's devices inside an orphaned lease namespace.
  absl::Status ClearLeaseNamespace(int netns_fd);
  absl::StatusOr<UniqueFd> OpenLeaseNamespace(const journal::XdpNicState& state,
                                              bool* from_store);

  const std::string pool_name_;
  const config::XdpNicPool config_;
  std::string device_prefix_;
  std::string vlan_prefix_;
  std::string holder_name_;
  int holder_ifindex_ = 0;  // 0: none (deleted at stop)
  std::string pin_dir_;     // lease namespace pins: <base>/<broker netns inode>
  std::shared_ptr<NetnsFdStore> fd_store_;  // never null (a disabled one outside systemd)
  int parent_ifindex_ = 0;

  absl::Mutex mu_;
  std::unique_ptr<vfdrivers::net::TcEgressGuard> guard_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<LeaseVlanGuard> vlan_guard_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> macs_ ABSL_GUARDED_BY(mu_);         // 6-byte MACs in use
  std::map<std::string, Live> live_ ABSL_GUARDED_BY(mu_);   // by device name
  std::map<uint32_t, int> vlan_users_ ABSL_GUARDED_BY(mu_);  // vid -> leases on it
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // The pool's steering program (set by Open, then only read: its rule and attach calls are
  // bpf(2) syscalls, safe from several threads).
  std::shared_ptr<vfdrivers::net::XdpSteering> program_;

  absl::Mutex stock_mu_;
  std::deque<UniqueFd> spare_netns_ ABSL_GUARDED_BY(stock_mu_);  // empty namespaces, unpinned
  bool stock_stopping_ ABSL_GUARDED_BY(stock_mu_) = false;
  std::thread stock_thread_;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_XDP_NIC_H_
