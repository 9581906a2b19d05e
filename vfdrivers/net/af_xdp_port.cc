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

#define AFXDP_ALWAYS_INLINE inline __attribute__((always_inline))
#define AFXDP_RUN __attribute__((noinline))

// DescWords reads xdp_desc's len and options as one little-endian word.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "DescWords assumes little-endian");

// A consumer ring's entries available, at most `max` (callers pass at most the ring's size: a
// producer index that ran more than `size` ahead is corrupt, and reading further would re-read
// stale entries); *first is the ring slot of the first one and *run1 how many lie before the
// ring's end (the rest start at slot 0).
AFXDP_ALWAYS_INLINE uint32_t ConsPeek(xsk_ring_cons* r, uint32_t max, uint32_t* first,
                                      uint32_t* run1) {
  uint32_t idx = 0;
  const uint32_t n = xsk_ring_cons__peek(r, max, &idx);
  *first = idx & r->mask;
  *run1 = std::min(n, r->size - *first);
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

// Puts chunks from the top of the free stack (free_end[-1], free_end[-2], ...) into fill ring
// slots [f, f + count), a run that does not wrap.
AFXDP_RUN void AfXdpPort::FillRun(uint64_t* f, uint32_t count,
                                            const uint32_t* free_end) {
  uint64_t* const end = f + count;
  FrameState* const state = state_.data();
  const uint32_t shift = frame_shift_;
  for (; f != end; ++f) {
    const uint32_t frame = *--free_end;
    state[frame] = FrameState::kFill;
    // "UMEM Fill Ring": the chunk's address; the kernel adds headroom itself.
    *f = uint64_t{frame} << shift;
  }
}

void AfXdpPort::Refill() {
  if (in_fill_ >= fill_target_ || free_top_ == 0) return;
  const uint32_t want = std::min(fill_target_ - in_fill_, free_top_);
  const uint32_t n = std::min(want, xsk_prod_nb_free(&fill_, want));
  if (n == 0) return;
  const uint32_t prod = fill_.cached_prod;
  const uint32_t first = prod & fill_.mask;
  const uint32_t run1 = std::min(n, fill_.size - first);
  uint64_t* const ring = static_cast<uint64_t*>(fill_.ring);
  const uint32_t* const free_end = free_.data() + free_top_;
  FillRun(ring + first, run1, free_end);
  if (n > run1) FillRun(ring, n - run1, free_end - run1);
  free_top_ -= n;
  in_fill_ += n;
  fill_.cached_prod = prod + n;
  __atomic_store_n(fill_.producer, prod + n, __ATOMIC_RELEASE);  // entries before the index
}

// Completion ring slots [c, c + count), a run that does not wrap: each address is the kernel's
// claim that a chunk the port sent is done ("UMEM Completion Ring"). Only a chunk inside the
// UMEM that is in the TX state goes back to the free stack; anything else is counted and
// skipped. Returns how many chunks were reclaimed.
AFXDP_RUN uint32_t AfXdpPort::ReclaimRun(const volatile uint64_t* c, uint32_t count) {
  const volatile uint64_t* const end = c + count;
  FrameState* const state = state_.data();
  uint32_t* const free_start = free_.data() + free_top_;
  uint32_t* fp = free_start;
  const uint64_t umem_bytes = umem_bytes_;
  const uint32_t shift = frame_shift_;
  for (; c != end; ++c) {
    const uint64_t addr = *c;  // one load from shared memory: check and use this copy
    if (__builtin_expect(addr >= umem_bytes, 0)) {
      ++stats_.bad_descriptors;
      continue;
    }
    const uint64_t frame = addr >> shift;
    if (__builtin_expect(state[frame] != FrameState::kTx, 0)) {  // never sent, or done twice
      ++stats_.bad_descriptors;
      continue;
    }
    state[frame] = FrameState::kFree;
    *fp++ = static_cast<uint32_t>(frame);
  }
  const uint32_t done = static_cast<uint32_t>(fp - free_start);
  free_top_ += done;
  return done;
}

void AfXdpPort::ReclaimCompletions() {
  uint32_t first = 0, run1 = 0;
  const uint32_t n = ConsPeek(&completion_, completion_.size, &first, &run1);
  if (n == 0) return;
  const volatile uint64_t* const ring = static_cast<const volatile uint64_t*>(completion_.ring);
  uint32_t done = ReclaimRun(ring + first, run1);
  if (n > run1) done += ReclaimRun(ring, n - run1);
  xsk_ring_cons__release(&completion_, n);
  in_tx_ -= done;
  stats_.tx_completed += done;
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

// RX ring slots [d, d + count), a run that does not wrap, into out[0..): each descriptor is
// copied out of shared memory once (two loads), then checked: inside the UMEM, a chunk the
// kernel was given for receive (once), 0 < len <= the room from addr to the chunk's end, no
// option bit (the only one the kernel writes on RX is XDP_PKT_CONTD, uapi if_xdp.h 6.6+, and
// only for sockets bound with XDP_USE_SG, which the port never asks for). A bad one is counted and
// dropped; if its chunk was identified as the kernel's, the chunk goes back to the free stack.
// Returns the end of what was written to out.
AFXDP_RUN PacketBuffer* AfXdpPort::ReceiveRun(const volatile DescWords* d,
                                                        uint32_t count, PacketBuffer* out) {
  const volatile DescWords* const end = d + count;
  FrameState* const state = state_.data();
  uint8_t* const umem = umem_;
  const uint64_t umem_bytes = umem_bytes_;
  const uint32_t shift = frame_shift_;
  PacketBuffer* q = out;
  for (; d != end; ++d) {
    const uint64_t addr = d->addr;
    const uint64_t len_options = d->len_options;
    if (__builtin_expect(addr >= umem_bytes, 0)) {
      ++stats_.bad_descriptors;
      continue;
    }
    const uint64_t frame = addr >> shift;
    if (__builtin_expect(state[frame] != FrameState::kFill, 0)) {  // not given, or twice
      ++stats_.bad_descriptors;
      continue;
    }
    const uint64_t room = ((frame + 1) << shift) - addr;  // to the chunk's end
    // len == 0 wraps to the largest value; any option bit puts it above 2^32 > room.
    if (__builtin_expect(len_options - 1 >= room, 0)) {
      // The chunk is identified and was the kernel's: take it back, drop the frame.
      ++stats_.bad_descriptors;
      --in_fill_;
      state[frame] = FrameState::kFree;
      free_[free_top_++] = static_cast<uint32_t>(frame);
      continue;
    }
    state[frame] = FrameState::kApp;
    q->data = umem + addr;
    q->device_address = addr;
    q->length = static_cast<uint32_t>(len_options);
    q->capacity = static_cast<uint32_t>(room);
    q->index = static_cast<uint32_t>(frame);
    q->pool = this;
    ++q;
    stats_.rx_bytes += len_options;  // options are 0 here
  }
  return q;
}

size_t AfXdpPort::RxBurst(absl::Span<PacketBuffer> out) {
  if (in_tx_ != 0) ReclaimCompletions();
  const uint32_t max = out.size() < rx_.size ? static_cast<uint32_t>(out.size()) : rx_.size;
  uint32_t first = 0, run1 = 0;
  const uint32_t n = max == 0 ? 0 : ConsPeek(&rx_, max, &first, &run1);
  size_t k = 0;
  if (n != 0) {
    const volatile DescWords* const ring = static_cast<const volatile DescWords*>(rx_.ring);
    PacketBuffer* q = ReceiveRun(ring + first, run1, out.data());
    if (n > run1) q = ReceiveRun(ring, n - run1, q);
    xsk_ring_cons__release(&rx_, n);
    k = static_cast<size_t>(q - out.data());
    in_fill_ -= static_cast<uint32_t>(k);
    stats_.rx_packets += k;
  }
  Refill();
  // "XDP_USE_NEED_WAKEUP bind flag": nothing came and the kernel asks to be woken.
  if (n == 0 && !out.empty() && xsk_ring_prod__needs_wakeup(&fill_)) KickRx();
  return k;
}

// pkts[0, count) into TX ring slots [d, d + count), a run that does not wrap; stops at the first
// bad buffer (counted). A buffer must be one of ours that the caller holds, with its data inside
// its own chunk and 0 < length <= the room from data to the chunk's end. Returns how many were
// queued.
AFXDP_RUN uint32_t AfXdpPort::TransmitRun(const PacketBuffer* p, uint32_t count,
                                                    DescWords* d) {
  const PacketBuffer* const start = p;
  const PacketBuffer* const end = p + count;
  FrameState* const state = state_.data();
  const uintptr_t base = reinterpret_cast<uintptr_t>(umem_);
  const uint32_t frame_count = layout_.frame_count;
  const uintptr_t frame_size = layout_.frame_size;
  for (; p != end; ++p, ++d) {
    const uint32_t b = p->index;
    const uint32_t len = p->length;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(p->data) - base;  // UMEM offset
    // Offset of data in chunk b ("below the chunk" wraps to a huge value) and of its last
    // byte (len == 0 wraps len - 1 to 2^32 - 1, past any chunk). Both are < frame_size, a power
    // of two, exactly when their OR is.
    const uintptr_t off = addr - uintptr_t{b} * frame_size;
    const uintptr_t last = off + static_cast<uint32_t>(len - 1);
    if (__builtin_expect(p->pool != this || b >= frame_count ||
                             state[b] != FrameState::kApp || (off | last) >= frame_size,
                         0)) {
      ++stats_.bad_buffers;
      break;
    }
    state[b] = FrameState::kTx;
    d->addr = addr;
    d->len_options = len;  // options 0
    stats_.tx_bytes += len;
  }
  return static_cast<uint32_t>(p - start);
}

size_t AfXdpPort::TxBurst(absl::Span<const PacketBuffer> pkts) {
  if (in_tx_ != 0) ReclaimCompletions();
  const uint32_t want = pkts.size() < tx_.size ? static_cast<uint32_t>(pkts.size()) : tx_.size;
  const uint32_t n = want == 0 ? 0 : std::min(want, xsk_prod_nb_free(&tx_, want));
  uint32_t sent = 0;
  if (n != 0) {
    const uint32_t prod = tx_.cached_prod;
    const uint32_t first = prod & tx_.mask;
    const uint32_t run1 = std::min(n, tx_.size - first);
    DescWords* const ring = static_cast<DescWords*>(tx_.ring);
    sent = TransmitRun(pkts.data(), run1, ring + first);
    if (sent == run1 && n > run1) sent += TransmitRun(pkts.data() + run1, n - run1, ring);
    if (sent != 0) {
      tx_.cached_prod = prod + sent;
      __atomic_store_n(tx_.producer, prod + sent, __ATOMIC_RELEASE);  // entries before index
      in_tx_ += sent;
      stats_.tx_packets += sent;
    }
  }
  if (sent == n) stats_.tx_ring_full += pkts.size() - n;
  // "XDP_USE_NEED_WAKEUP bind flag": kick only when the kernel asks (always without the flag).
  if (sent != 0 && (!layout_.need_wakeup || xsk_ring_prod__needs_wakeup(&tx_))) KickTx();
  return sent;
}

size_t AfXdpPort::AllocBurst(absl::Span<PacketBuffer> out) {
  const size_t n = std::min<size_t>(out.size(), free_top_);
  FrameState* const state = state_.data();
  const uint32_t* fp = free_.data() + free_top_;
  const uint32_t shift = frame_shift_;
  const uint32_t headroom = layout_.frame_headroom;
  const uint32_t capacity = layout_.frame_size - headroom;
  for (PacketBuffer *q = out.data(), *end = q + n; q != end; ++q) {
    const uint32_t frame = *--fp;
    state[frame] = FrameState::kApp;
    const uint64_t addr = (uint64_t{frame} << shift) + headroom;
    q->data = umem_ + addr;
    q->device_address = addr;
    q->length = 0;
    q->capacity = capacity;
    q->index = frame;
    q->pool = this;
  }
  free_top_ -= static_cast<uint32_t>(n);
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
