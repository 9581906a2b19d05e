// Creating an AF_XDP socket and its UMEM for someone else to drive: the broker's half of an
// AF_XDP grant (and the host tests', which play the broker). Needs CAP_NET_RAW (socket) and,
// for the XDP program, CAP_NET_ADMIN + CAP_BPF/CAP_SYS_ADMIN: run as root. The unprivileged
// tenant then adopts the two descriptors with AfXdpPort::Adopt.
//
// Steps (Documentation/networking/af_xdp.rst, "Usage" and the setsockopt sections):
//   1. UMEM: a memfd of frame_count * frame_size bytes, sealed against shrinking and growing
//      (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: neither holder can change the size the
//      kernel registered), mapped MAP_SHARED and registered with XDP_UMEM_REG (aligned mode,
//      chunk = frame_size, headroom = frame_headroom). The kernel pins the pages; the broker's
//      mapping is removed right after, and the tenant maps the same pages from the memfd.
//   2. Ring sizes: XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING.
//   3. bind(ifindex, queue) with XDP_COPY or XDP_ZEROCOPY, and XDP_USE_NEED_WAKEUP, unless
//      `bind` is false: the socket is then handed over unbound and its holder binds it after
//      mapping the rings (Linux < 6.4 refuses to map the rings of a bound socket: xsk_mmap
//      wants XSK_READY). The broker creates such a socket inside a network namespace that
//      holds only the tenant's device (broker/backends/xdp_nic.h), so that bind can reach
//      nothing else.
// After bind the socket's setup setsockopts fail (the socket is no longer XSK_READY) and it
// cannot be bound again, so the descriptor gives its holder that one queue and nothing more.
// Before bind, the UMEM and the ring sizes are already set and cannot be set again (EBUSY /
// EINVAL), and a socket with a UMEM of its own cannot share another's (XDP_SHARED_UMEM:
// EINVAL).
//
// Not on any fast path. Thread-compatible.
#ifndef VFBROKER_VFDRIVERS_NET_AF_XDP_SOCKET_H_
#define VFBROKER_VFDRIVERS_NET_AF_XDP_SOCKET_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "vfdrivers/net/af_xdp_layout.h"

namespace vfdrivers::net {

enum class XdpBindMode {
  kCopy,      // XDP_COPY: works on every device (veth, macvlan, generic XDP)
  kZeroCopy,  // XDP_ZEROCOPY: the driver DMAs into the UMEM; fails where unsupported
  kAny,       // zero-copy if the driver can, else copy
};

struct AfXdpSocketOptions {
  int ifindex = 0;
  uint32_t queue_id = 0;
  XdpBindMode mode = XdpBindMode::kCopy;
  AfXdpLayout layout;  // layout.queue_id is overwritten with queue_id
  // SO_MARK for the socket (0: none). Frames it transmits carry it as skb->mark, which the
  // egress guard (tc_egress_guard.h) checks; the tenant cannot change it (CAP_NET_ADMIN).
  uint32_t mark = 0;
  // false: stop before bind (see above); the caller binds with AfXdpBindFlags().
  bool bind = true;
};

// What the broker sends the tenant: both descriptors (close-on-exec) and the layout.
struct AfXdpSocket {
  vfbroker::UniqueFd socket;  // AF_XDP socket, bound
  vfbroker::UniqueFd umem;    // memfd holding the UMEM, sealed
  AfXdpLayout layout;
  bool zero_copy = false;     // what bind obtained (false if not bound)
};

// sockaddr_xdp.sxdp_flags for `mode` (kCopy or kZeroCopy) and the layout's need_wakeup.
uint16_t AfXdpBindFlags(XdpBindMode mode, bool need_wakeup);

// bind(2) of an AF_XDP socket to (ifindex, queue) of its own network namespace with `flags`
// (sockaddr_xdp.sxdp_flags; XDP_SHARED_UMEM refused here). Needs no capability. The kernel's
// errno as a status (EBUSY: already bound, or the queue has a socket; ENODEV: no such device
// in the socket's namespace; EINVAL: no such queue).
absl::Status BindAfXdpSocket(int fd, int ifindex, uint32_t queue_id, uint16_t flags);

// INVALID_ARGUMENT for a bad layout; the kernel's errno otherwise (EBUSY: the queue already
// has a socket; EOPNOTSUPP: zero-copy unsupported; ENOMEM: RLIMIT_MEMLOCK for non-root).
absl::StatusOr<AfXdpSocket> CreateAfXdpSocket(const AfXdpSocketOptions& options);

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_AF_XDP_SOCKET_H_
