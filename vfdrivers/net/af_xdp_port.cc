#include "vfdrivers/net/af_xdp_port.h"

#include <fcntl.h>
#include <linux/if_xdp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "vfdrivers/net/af_xdp_socket.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

namespace vfdrivers::net {
namespace {

using vfbroker::UniqueFd;

// xdp_desc.options bit for multi-buffer frames (uapi if_xdp.h, 6.6+). The port never binds
// with XDP_USE_SG, so a descriptor carrying it is malformed.
constexpr uint32_t kXdpPktContd = 1u << 0;

absl::Status Errno(const char* what) {
  int e = errno;
  return absl::Status(absl::ErrnoToStatusCode(e),
                      absl::StrCat("AfXdpPort: ", what, ": ", strerror(e)));
}

uint32_t Log2(uint32_t v) {
  uint32_t s = 0;
  while ((1u << s) < v) ++s;
  return s;
}

// A consumer ring's entries available, never more than the ring holds: a producer index that
// ran more than `size` ahead is corrupt, and reading further would re-read stale entries.
uint32_t ConsPeek(xsk_ring_cons* r, uint32_t max, uint32_t* idx) {
  uint32_t n = xsk_ring_cons__peek(r, std::min(max, r->size), idx);
  return n;
}

}  // namespace

AfXdpPort::AfXdpPort(const AfXdpLayout& layout) : layout_(layout) {
  umem_bytes_ = layout.umem_bytes();
  frame_shift_ = Log2(layout.frame_size);
  state_.assign(layout.frame_count, FrameState::kFree);
  free_.resize(layout.frame_count);
  // Free stack popped from the top: hand out low chunks first.
  for (uint32_t i = 0; i < layout.frame_count; ++i) free_[i] = layout.frame_count - 1 - i;
  free_top_ = layout.frame_count;
  // Keep at most half the chunks posted for receive so that transmit always finds some.
  fill_target_ = std::max<uint32_t>(1, std::min(layout.fill_size, layout.frame_count / 2));
  info_.queue_id = layout.queue_id;
  info_.buffer_count = layout.frame_count;
  info_.buffer_capacity = layout.frame_size - layout.frame_headroom;
  info_.rx_ring_size = layout.rx_size;
  info_.tx_ring_size = layout.tx_size;
}

AfXdpPort::~AfXdpPort() {
  for (const Mapping& m : mappings_) munmap(m.base, m.length);
}

void AfXdpPort::InitRings() {
  // Same initial cached indices as libxdp's xsk_umem__create / xsk_socket__create: a producer
  // ring's cached consumer runs `size` ahead (see xsk_prod_nb_free).
  for (xsk_ring_prod* r : {&fill_, &tx_}) {
    r->cached_prod = *r->producer;
    r->cached_cons = *r->consumer + r->size;
  }
  for (xsk_ring_cons* r : {&completion_, &rx_}) {
    r->cached_prod = *r->producer;
    r->cached_cons = *r->consumer;
  }
}

absl::StatusOr<std::unique_ptr<AfXdpPort>> AfXdpPort::CreateForTesting(const TestMemory& m,
                                                                       const AfXdpLayout& layout) {
  if (absl::Status s = ValidateAfXdpLayout(layout); !s.ok()) return s;
  std::unique_ptr<AfXdpPort> p(new AfXdpPort(layout));
  auto set = [](auto* ring, const TestRing& t, uint32_t size) {
    ring->producer = t.producer;
    ring->consumer = t.consumer;
    ring->flags = t.flags;
    ring->ring = t.descs;
    ring->size = size;
    ring->mask = size - 1;
  };
  set(&p->fill_, m.fill, layout.fill_size);
  set(&p->completion_, m.completion, layout.completion_size);
  set(&p->rx_, m.rx, layout.rx_size);
  set(&p->tx_, m.tx, layout.tx_size);
  p->umem_ = m.umem;
  p->InitRings();
  p->Refill();
  return p;
}

absl::StatusOr<std::unique_ptr<AfXdpPort>> AfXdpPort::Adopt(
    UniqueFd socket, UniqueFd umem, const AfXdpLayout& layout,
    const std::optional<AfXdpBindTarget>& bind) {
  if (absl::Status s = ValidateAfXdpLayout(layout); !s.ok()) return s;
  if (!socket || !umem) return absl::InvalidArgumentError("AfXdpPort: missing descriptor");

  int domain = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(socket.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_XDP) {
    return absl::InvalidArgumentError("AfXdpPort: socket descriptor is not AF_XDP");
  }
  struct stat st {};
  if (fstat(umem.get(), &st) != 0) return Errno("fstat UMEM");
  if (!S_ISREG(st.st_mode) || uint64_t(st.st_size) != layout.umem_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AfXdpPort: UMEM descriptor holds ", st.st_size, " bytes, layout says ",
                     layout.umem_bytes()));
  }
  // Whoever else holds the memfd must not be able to shrink it under the mapping (SIGBUS).
  int seals = fcntl(umem.get(), F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    return absl::FailedPreconditionError("AfXdpPort: UMEM memfd is not sealed (shrink, grow)");
  }

  // "XDP_MMAP_OFFSETS getsockopt" (af_xdp.rst; the flags member exists since 5.4).
  xdp_mmap_offsets off{};
  len = sizeof(off);
  if (getsockopt(socket.get(), SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) != 0) {
    return Errno("XDP_MMAP_OFFSETS");
  }
  if (len != sizeof(off)) {
    return absl::FailedPreconditionError("AfXdpPort: kernel without ring flags (need >= 5.4)");
  }

  std::unique_ptr<AfXdpPort> p(new AfXdpPort(layout));
  auto map = [&](const xdp_ring_offset& o, uint32_t size, size_t entry, off_t pgoff,
                 const char* what, auto* ring) -> absl::Status {
    // The ring's length is off.desc + size * entry; the kernel refuses a mapping longer than
    // the ring it allocated (xsk_mmap), so a size larger than the socket's fails here.
    size_t length = o.desc + size_t{size} * entry;
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      socket.get(), pgoff);
    if (base == MAP_FAILED) return Errno(what);
    p->mappings_.push_back({base, length});
    uint8_t* b = static_cast<uint8_t*>(base);
    ring->producer = reinterpret_cast<uint32_t*>(b + o.producer);
    ring->consumer = reinterpret_cast<uint32_t*>(b + o.consumer);
    ring->flags = reinterpret_cast<uint32_t*>(b + o.flags);
    ring->ring = b + o.desc;
    ring->size = size;
    ring->mask = size - 1;
    return absl::OkStatus();
  };
  if (auto s = map(off.fr, layout.fill_size, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING,
                   "mmap fill ring", &p->fill_);
      !s.ok()) {
    return s;
  }
  if (auto s = map(off.cr, layout.completion_size, sizeof(uint64_t),
                   XDP_UMEM_PGOFF_COMPLETION_RING, "mmap completion ring", &p->completion_);
      !s.ok()) {
    return s;
  }
  if (auto s = map(off.rx, layout.rx_size, sizeof(xdp_desc), XDP_PGOFF_RX_RING, "mmap RX ring",
                   &p->rx_);
      !s.ok()) {
    return s;
  }
  if (auto s = map(off.tx, layout.tx_size, sizeof(xdp_desc), XDP_PGOFF_TX_RING, "mmap TX ring",
                   &p->tx_);
      !s.ok()) {
    return s;
  }
  // Only a port that sees the rings from their start knows which chunks the kernel holds.
  for (auto [producer, consumer] :
       {std::pair<uint32_t*, uint32_t*>{p->fill_.producer, p->fill_.consumer},
        {p->completion_.producer, p->completion_.consumer},
        {p->rx_.producer, p->rx_.consumer},
        {p->tx_.producer, p->tx_.consumer}}) {
    if (__atomic_load_n(producer, __ATOMIC_ACQUIRE) != 0 ||
        __atomic_load_n(consumer, __ATOMIC_ACQUIRE) != 0) {
      return absl::FailedPreconditionError("AfXdpPort: the socket's rings were used before");
    }
  }

  void* area = mmap(nullptr, layout.umem_bytes(), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, umem.get(), 0);
  if (area == MAP_FAILED) return Errno("mmap UMEM");
  p->mappings_.push_back({area, layout.umem_bytes()});
  p->umem_ = static_cast<uint8_t*>(area);

  // Rings mapped: now bind (af_xdp.rst "Usage": bind is the last step). The kernel looks the
  // ifindex up in the socket's own namespace, not the caller's.
  if (bind.has_value()) {
    if (absl::Status s = BindAfXdpSocket(socket.get(), bind->ifindex, bind->queue_id,
                                         bind->flags);
        !s.ok()) {
      return s;
    }
    p->info_.queue_id = bind->queue_id;
  }

  xdp_options opts{};
  len = sizeof(opts);
  if (getsockopt(socket.get(), SOL_XDP, XDP_OPTIONS, &opts, &len) == 0) {
    p->info_.zero_copy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;
  }
  p->socket_ = std::move(socket);
  p->umem_fd_ = std::move(umem);
  p->InitRings();
  p->Refill();
  return p;
}

PacketBuffer AfXdpPort::MakeBuffer(uint32_t frame, uint64_t addr, uint32_t length) const {
  PacketBuffer b;
  b.data = umem_ + addr;
  b.device_address = addr;
  b.length = length;
  b.capacity = static_cast<uint32_t>(((uint64_t{frame} + 1) << frame_shift_) - addr);
  b.index = frame;
  b.pool = this;
  return b;
}

void AfXdpPort::Refill() {
  if (in_fill_ >= fill_target_ || free_top_ == 0) return;
  uint32_t want = std::min(fill_target_ - in_fill_, free_top_);
  uint32_t room = xsk_prod_nb_free(&fill_, want);
  uint32_t n = std::min(want, room);
  if (n == 0) return;
  uint32_t idx = 0;
  if (xsk_ring_prod__reserve(&fill_, n, &idx) != n) return;
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t frame = free_[--free_top_];
    state_[frame] = FrameState::kFill;
    // "UMEM Fill Ring": the chunk's address; the kernel adds headroom itself.
    *xsk_ring_prod__fill_addr(&fill_, idx + i) = uint64_t{frame} << frame_shift_;
  }
  xsk_ring_prod__submit(&fill_, n);
  in_fill_ += n;
}

void AfXdpPort::ReclaimCompletions() {
  uint32_t idx = 0;
  uint32_t n = ConsPeek(&completion_, completion_.size, &idx);
  if (n == 0) return;
  for (uint32_t i = 0; i < n; ++i) {
    // "UMEM Completion Ring": the address of a TX descriptor the kernel has sent.
    uint64_t addr = *xsk_ring_cons__comp_addr(&completion_, idx + i);
    if (addr >= umem_bytes_) {
      ++stats_.bad_descriptors;
      continue;
    }
    uint32_t frame = static_cast<uint32_t>(addr >> frame_shift_);
    if (state_[frame] != FrameState::kTx) {  // never sent, or completed twice
      ++stats_.bad_descriptors;
      continue;
    }
    state_[frame] = FrameState::kFree;
    free_[free_top_++] = frame;
    --in_tx_;
    ++stats_.tx_completed;
  }
  xsk_ring_cons__release(&completion_, n);
}

void AfXdpPort::KickRx() {
  ++stats_.wakeups;
  if (!socket_) return;
  // "XDP_USE_NEED_WAKEUP bind flag": with the flag set on the fill ring, the kernel needs a
  // poll()/recvfrom() to go on receiving.
  if (recvfrom(socket_.get(), nullptr, 0, MSG_DONTWAIT, nullptr, nullptr) < 0 &&
      errno != EAGAIN && errno != EBUSY && errno != ENOBUFS && errno != EINTR) {
    ++stats_.wakeup_errors;
  }
}

void AfXdpPort::KickTx() {
  ++stats_.wakeups;
  if (!socket_) return;
  // "XDP_USE_NEED_WAKEUP bind flag": sendto() makes the kernel process the TX ring (in copy
  // mode it sends a bounded batch per call; the rest waits for the next kick).
  if (sendto(socket_.get(), nullptr, 0, MSG_DONTWAIT, nullptr, 0) < 0 && errno != EAGAIN &&
      errno != EBUSY && errno != ENOBUFS && errno != EINTR && errno != ENETDOWN) {
    ++stats_.wakeup_errors;
  }
}

absl::StatusOr<xdp_statistics> AfXdpPort::KernelStatistics() const {
  if (!socket_) return absl::FailedPreconditionError("AfXdpPort: no socket (test mode)");
  xdp_statistics st{};
  socklen_t len = sizeof(st);
  if (getsockopt(socket_.get(), SOL_XDP, XDP_STATISTICS, &st, &len) != 0) {
    return Errno("XDP_STATISTICS");
  }
  return st;
}

size_t AfXdpPort::RxBurst(absl::Span<PacketBuffer> out) {
  ReclaimCompletions();
  Refill();
  if (out.empty()) return 0;
  uint32_t idx = 0;
  uint32_t n = ConsPeek(&rx_, static_cast<uint32_t>(std::min<size_t>(out.size(), rx_.size)),
                        &idx);
  size_t k = 0;
  for (uint32_t i = 0; i < n; ++i) {
    // Copy the descriptor out of shared memory once; check that copy, use that copy.
    const xdp_desc d = *xsk_ring_cons__rx_desc(&rx_, idx + i);
    if (d.addr >= umem_bytes_) {
      ++stats_.bad_descriptors;
      continue;
    }
    const uint32_t frame = static_cast<uint32_t>(d.addr >> frame_shift_);
    if (state_[frame] != FrameState::kFill) {  // not a chunk the kernel was given, or twice
      ++stats_.bad_descriptors;
      continue;
    }
    --in_fill_;
    const uint64_t end = (uint64_t{frame} + 1) << frame_shift_;
    if (d.len == 0 || d.len > end - d.addr || (d.options & kXdpPktContd) != 0) {
      // The chunk is identified and was the kernel's: take it back, drop the frame.
      ++stats_.bad_descriptors;
      state_[frame] = FrameState::kFree;
      free_[free_top_++] = frame;
      continue;
    }
    state_[frame] = FrameState::kApp;
    out[k++] = MakeBuffer(frame, d.addr, d.len);
    stats_.rx_bytes += d.len;
  }
  if (n > 0) xsk_ring_cons__release(&rx_, n);
  stats_.rx_packets += k;
  if (n == 0 && xsk_ring_prod__needs_wakeup(&fill_)) KickRx();
  if (n > 0) Refill();
  return k;
}

size_t AfXdpPort::TxBurst(absl::Span<const PacketBuffer> pkts) {
  ReclaimCompletions();
  size_t k = 0;
  if (!pkts.empty()) {
    uint32_t want = static_cast<uint32_t>(std::min<size_t>(pkts.size(), tx_.size));
    uint32_t room = std::min(want, xsk_prod_nb_free(&tx_, want));
    uint32_t idx = 0;
    if (room > 0 && xsk_ring_prod__reserve(&tx_, room, &idx) == room) {
      for (; k < room; ++k) {
        const PacketBuffer& b = pkts[k];
        // The buffer must be one of ours that the caller holds, and the frame must lie in
        // its chunk.
        const uintptr_t base = reinterpret_cast<uintptr_t>(umem_);
        const uintptr_t at = reinterpret_cast<uintptr_t>(b.data);
        if (b.pool != this || b.index >= layout_.frame_count ||
            state_[b.index] != FrameState::kApp || at < base) {
          ++stats_.bad_buffers;
          break;
        }
        const uint64_t addr = static_cast<uint64_t>(at - base);
        const uint64_t end = (uint64_t{b.index} + 1) << frame_shift_;
        if ((addr >> frame_shift_) != b.index || b.length == 0 || b.length > end - addr) {
          ++stats_.bad_buffers;
          break;
        }
        xdp_desc* d = xsk_ring_prod__tx_desc(&tx_, idx + static_cast<uint32_t>(k));
        d->addr = addr;
        d->len = b.length;
        d->options = 0;
        state_[b.index] = FrameState::kTx;
        stats_.tx_bytes += b.length;
      }
      tx_.cached_prod -= room - static_cast<uint32_t>(k);  // give back unused reservations
      if (k > 0) xsk_ring_prod__submit(&tx_, static_cast<uint32_t>(k));
      in_tx_ += static_cast<uint32_t>(k);
      stats_.tx_packets += k;
    }
    if (k == room) stats_.tx_ring_full += pkts.size() - k;
  }
  if (k > 0 && (!layout_.need_wakeup || xsk_ring_prod__needs_wakeup(&tx_))) KickTx();
  return k;
}

size_t AfXdpPort::AllocBurst(absl::Span<PacketBuffer> out) {
  size_t n = std::min<size_t>(out.size(), free_top_);
  for (size_t i = 0; i < n; ++i) {
    uint32_t frame = free_[--free_top_];
    state_[frame] = FrameState::kApp;
    out[i] = MakeBuffer(frame, (uint64_t{frame} << frame_shift_) + layout_.frame_headroom, 0);
  }
  stats_.alloc_failed += out.size() - n;
  return n;
}

size_t AfXdpPort::FreeBurst(absl::Span<const PacketBuffer> bufs) {
  size_t accepted = 0;
  for (const PacketBuffer& b : bufs) {
    if (b.pool != this || b.index >= layout_.frame_count ||
        state_[b.index] != FrameState::kApp) {
      ++stats_.bad_buffers;
      continue;
    }
    state_[b.index] = FrameState::kFree;
    free_[free_top_++] = b.index;
    ++accepted;
  }
  return accepted;
}

void AfXdpPort::Service() {
  ReclaimCompletions();
  Refill();
  // Descriptors still waiting in the TX ring (copy mode sends a bounded batch per kick).
  if (in_tx_ > 0 && __atomic_load_n(tx_.consumer, __ATOMIC_ACQUIRE) != *tx_.producer &&
      (!layout_.need_wakeup || xsk_ring_prod__needs_wakeup(&tx_))) {
    KickTx();
  }
}

}  // namespace vfdrivers::net
