// Intel 82576 VF driver: see igbvf.h. Section numbers are of the 82576EB GbE Controller datasheet.
#include "vfdrivers/net/igbvf/igbvf.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace vfdrivers::net::igbvf {
namespace {

#define RETURN_IF_ERROR(expr)              \
  do {                                     \
    absl::Status _st = (expr);             \
    if (!_st.ok()) return _st;             \
  } while (0)

constexpr uint32_t kRxRefillBatch = 32;  // RDT is written once per this many buffers at most

}  // namespace

absl::StatusOr<std::unique_ptr<Bar>> OpenVfioBar(vfio::VfioDevice* device) {
  return intel_vf::OpenVfioBar(device, kBarSize, "igbvf", "82576 VF");
}

absl::StatusOr<std::unique_ptr<IgbvfPort>> IgbvfPort::Open(vfio::VfioDevice* device,
                                                           const Options& options) {
  absl::StatusOr<std::unique_ptr<Bar>> bar = OpenVfioBar(device);
  if (!bar.ok()) return bar.status();
  return Create(*std::move(bar), options);
}

absl::StatusOr<std::unique_ptr<IgbvfPort>> IgbvfPort::Create(std::unique_ptr<Bar> bar,
                                                             const Options& options) {
  if (bar == nullptr) return absl::InvalidArgumentError("igbvf: null bar");
  for (uint32_t n : {options.rx_ring_size, options.tx_ring_size}) {
    // RDLEN/TDLEN are multiples of 128 bytes (8 descriptors); powers of two keep index math a mask.
    if (n < 8 || n > 4096 || (n & (n - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("igbvf: ring size %u is not a power of two in 8..4096", n));
    }
  }
  if (options.buffer_count <= options.rx_ring_size || options.buffer_count > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "igbvf: buffer_count %u must exceed rx_ring_size %u", options.buffer_count,
        options.rx_ring_size));
  }
  std::unique_ptr<IgbvfPort> port(new IgbvfPort(std::move(bar), options));
  RETURN_IF_ERROR(port->Init());
  return port;
}

IgbvfPort::IgbvfPort(std::unique_ptr<Bar> bar, const Options& options)
    : bar_(std::move(bar)),
      options_(options),
      mbx_(bar_.get(), kMailbox, kMbmem, options.mailbox_timeout, "igbvf",
           &xstats_.mailbox_messages) {}

absl::Status IgbvfPort::Init() {
  RETURN_IF_ERROR(ResetVf());
  RETURN_IF_ERROR(SetupQueues());
  if (options_.link_timeout > absl::ZeroDuration()) {
    RETURN_IF_ERROR(WaitForLink(options_.link_timeout));
  }
  return absl::OkStatus();
}

// ---- Mailbox (§7.8.2: VFMAILBOX, VMBMEM): intel_vf::Mailbox, the same protocol as the 82599's --

// ---- Reset (VTCTRL.RST, then the mailbox RESET message) -----------------------------------------

absl::Status IgbvfPort::ResetVf() {
  // Quiesce: no interrupts are used (polling), mask them all (VTEIMC).
  RETURN_IF_ERROR(bar_->Write32(kEimc, 0xFFFFFFFFu));
  // §7.8.2 / VF reset: setting VTCTRL.RST resets the VF's queues and tells the PF (VFLRE).
  // RSTI in VFMAILBOX means the PF is resetting: we must wait for RSTD before we talk. RSTD is
  // only raised when the PF finishes its own reset (CTRL_EXT.PFRSTD) and clears when read, so a
  // VF reset after the first finds neither bit (QEMU's igb behaves so): that is not an error,
  // the RESET message below is what the PF answers.
  mbx_.Forget();
  RETURN_IF_ERROR(bar_->Write32(kCtrl, kCtrlRst));
  absl::StatusOr<bool> rstd = mbx_.AwaitResetDone(options_.reset_timeout, "VTCTRL.RST");
  if (!rstd.ok()) return rstd.status();
  if (!*rstd) ++xstats_.reset_without_rstd;
  // RESET message: the PF re-enables our queues (VFRE/VFTE) and answers RESET|ACK with the
  // permanent MAC in words 1-2, or RESET|NACK when it has none for us.
  uint32_t reply[3] = {};
  absl::StatusOr<MacAddress> mac = mbx_.Reset(absl::MakeSpan(reply));
  if (!mac.ok()) return mac.status();
  mac_ = *mac;
  return absl::OkStatus();
}

// SET_MAC, SET_MULTICAST, SET_VLAN, SET_LPE (§7.8.2): the messages are the 82599's too
// (intel_vf::Mailbox). The PF hashes multicast addresses into its MTA with MO = 00b (bits 47:36).
absl::Status IgbvfPort::SetMac(const MacAddress& mac) {
  RETURN_IF_ERROR(mbx_.SetMac(mac));
  mac_ = mac;
  return absl::OkStatus();
}

absl::Status IgbvfPort::SetMulticast(absl::Span<const MacAddress> addrs) {
  return mbx_.SetMulticast(addrs, /*filter_type=*/0);
}

absl::Status IgbvfPort::SetVlan(uint16_t vid, bool add) { return mbx_.SetVlan(vid, add); }

absl::Status IgbvfPort::SetMaxFrame(uint32_t bytes) {
  if (bytes < 64 || bytes > kBufferSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "igbvf: max frame %u outside 64..%u (one buffer per frame)", bytes, kBufferSize));
  }
  return mbx_.SetLpe(bytes);
}

bool IgbvfPort::LinkUp() {
  absl::StatusOr<uint32_t> s = bar_->Read32(kStatus);
  return s.ok() && (*s & kStatusLu) != 0;
}

absl::Status IgbvfPort::WaitForLink(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!LinkUp()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "igbvf: link not up (VFSTATUS.LU) within %s", absl::FormatDuration(timeout)));
    }
    bar_->Idle();
  }
  return absl::OkStatus();
}

// ---- Queues (§7.1.5 receive, §7.2.2 transmit; queue registers in the VF map) --------------------

absl::Status IgbvfPort::SetupQueues() {
  const uint32_t nrx = options_.rx_ring_size, ntx = options_.tx_ring_size;
  // One region: RX ring, TX ring, head write-back dword (own 128-byte line), then buffers.
  const size_t rx_bytes = size_t{nrx} * sizeof(RxDesc), tx_bytes = size_t{ntx} * sizeof(TxDesc);
  const size_t wb_off = rx_bytes + tx_bytes;
  const size_t buf_off = (wb_off + 128 + kBufferSize - 1) / kBufferSize * kBufferSize;
  const size_t total = buf_off + size_t{options_.buffer_count} * kBufferSize;
  absl::StatusOr<memory::MemoryRegion> region =
      memory::MemoryRegion::Allocate(total, {options_.huge_pages});
  if (!region.ok()) return region.status();
  region_ = *std::move(region);
  absl::StatusOr<uint64_t> iova = bar_->MapDma(region_.base(), region_.size());
  if (!iova.ok()) return iova.status();
  iova_ = *iova;
  mapped_ = true;
  uint8_t* base = static_cast<uint8_t*>(region_.base());
  rx_ring_ = reinterpret_cast<RxDesc*>(base);
  tx_ring_ = reinterpret_cast<TxDesc*>(base + rx_bytes);
  tx_head_wb_ = reinterpret_cast<volatile uint32_t*>(base + wb_off);
  pool_.Init(this, base + buf_off, iova_ + buf_off, options_.buffer_count);

  rx_mask_ = nrx - 1;
  tx_mask_ = ntx - 1;
  rx_slot_.assign(nrx, 0);
  tx_slot_.assign(ntx, 0);

  absl::StatusOr<volatile uint32_t*> rdt = bar_->Register32(kRdt);
  if (!rdt.ok()) return rdt.status();
  absl::StatusOr<volatile uint32_t*> tdt = bar_->Register32(kTdt);
  if (!tdt.ok()) return tdt.status();
  rdt_ = *rdt;
  tdt_ = *tdt;

  // Receive queue 0 (§7.1 receive initialization, §7.1.5 descriptors): queue disabled while it is set up,
  // ring base/length, head = tail = 0, SRRCTL = 2 KiB buffers, advanced one-buffer descriptors,
  // drop when no descriptor is free (so a stalled tenant never backs up the PF's switch).
  RETURN_IF_ERROR(bar_->Write32(kRxdctl, 0));
  RETURN_IF_ERROR(bar_->Write32(kRdbal, static_cast<uint32_t>(iova_)));
  RETURN_IF_ERROR(bar_->Write32(kRdbah, static_cast<uint32_t>(iova_ >> 32)));
  RETURN_IF_ERROR(bar_->Write32(kRdlen, static_cast<uint32_t>(rx_bytes)));
  RETURN_IF_ERROR(bar_->Write32(kRdh, 0));
  RETURN_IF_ERROR(bar_->Write32(kRdt, 0));
  RETURN_IF_ERROR(bar_->Write32(
      kSrrctl, (kBufferSize >> kSrrctlBsizeShift) | kSrrctlDescAdvOneBuf | kSrrctlDropEn));
  // RXDCTL: PTHRESH 16, HTHRESH 8, WTHRESH 1 (write back each descriptor: polling wants them now).
  RETURN_IF_ERROR(bar_->Write32(kRxdctl, kQueueEnable | 16 | 8 << 8 | 1 << 16));

  // Transmit queue 0 (§7.2.2): disabled, base/length, head = tail = 0, head write-back to memory
  // (TDWBAL/H, bit 0 enables it: the device writes TDH there after each RS descriptor).
  const uint64_t wb_iova = iova_ + wb_off;
  *tx_head_wb_ = 0;
  RETURN_IF_ERROR(bar_->Write32(kTxdctl, 0));
  RETURN_IF_ERROR(bar_->Write32(kTdbal, static_cast<uint32_t>(iova_ + rx_bytes)));
  RETURN_IF_ERROR(bar_->Write32(kTdbah, static_cast<uint32_t>((iova_ + rx_bytes) >> 32)));
  RETURN_IF_ERROR(bar_->Write32(kTdlen, static_cast<uint32_t>(tx_bytes)));
  RETURN_IF_ERROR(bar_->Write32(kTdh, 0));
  RETURN_IF_ERROR(bar_->Write32(kTdt, 0));
  RETURN_IF_ERROR(bar_->Write32(kTdwbal, static_cast<uint32_t>(wb_iova) | kTdwbalEnable));
  RETURN_IF_ERROR(bar_->Write32(kTdwbah, static_cast<uint32_t>(wb_iova >> 32)));
  RETURN_IF_ERROR(bar_->Write32(kTxdctl, kQueueEnable | 8 | 1 << 8));
  queues_on_ = true;

  info_.queue_id = 0;
  info_.buffer_count = options_.buffer_count;
  info_.buffer_capacity = kBufferSize;
  info_.rx_ring_size = nrx - 1;
  info_.tx_ring_size = ntx - 1;
  info_.zero_copy = true;
  Refill();
  return absl::OkStatus();
}

void IgbvfPort::StopDevice() {
  if (!queues_on_) return;
  (void)bar_->Write32(kRxdctl, 0);
  (void)bar_->Write32(kTxdctl, 0);
  // VTCTRL.RST stops whatever DMA the queues still had in progress before the unmap.
  (void)bar_->Write32(kCtrl, kCtrlRst);
  queues_on_ = false;
}

IgbvfPort::~IgbvfPort() {
  StopDevice();
  if (mapped_) (void)bar_->UnmapDma(iova_);
}

// ---- Fast path ----------------------------------------------------------------------------------

// RX ring: the device owns [rx_next_, rx_tail_) (rx_posted_ slots); the rest are empty, at least
// one (RDH == RDT means "no descriptors", so at most size - 1 are the device's).
//
// Posts free buffers into empty slots (read format: packet address, header address 0, which
// also clears the previous write-back's DD), then one RDT write.
// The fast-path loops work on local copies of the members: stores through the rings and tables
// could otherwise alias them. The empty slots wrap at most once: two runs, pointers walking.
void IgbvfPort::Refill() {
  const uint32_t mask = rx_mask_;
  uint32_t room = mask - rx_posted_;  // at most size - 1 owned by the device
  const uint32_t top = pool_.free_count();
  if (room > top) room = top;
  const uint32_t start = rx_tail_;
  const uint32_t* fp = pool_.free_stack() + top;
  uint32_t* const slots = rx_slot_.data();
  RxDesc* const ring = rx_ring_;
  const uint64_t iova = pool_.iova();
  // The caller table is not written: a free buffer is already "not the caller's".
  const uint32_t run1 = room < mask + 1 - start ? room : mask + 1 - start;
  for (int run = 0; run < 2; ++run) {
    const uint32_t from = run == 0 ? start : 0;
    const uint32_t count = run == 0 ? run1 : room - run1;
    RxDesc* d = ring + from;
    RxDesc* const end = d + count;
    uint32_t* s = slots + from;
    for (; d != end; ++d, ++s) {
      const uint32_t b = *--fp;
      *s = b;
      d->pkt_addr = iova + uint64_t{b} * kBufferSize;
      d->hdr_addr = 0;
    }
  }
  pool_.set_free_count(top - room);
  if (room == 0) return;
  const uint32_t new_tail = (start + room) & mask;
  rx_tail_ = new_tail;
  rx_posted_ += room;
  __atomic_thread_fence(__ATOMIC_RELEASE);  // descriptors visible before the tail moves
  *rdt_ = new_tail;
}

// Reaps written-back descriptors in slots [from, from + count), a run that does not wrap, up to
// the first one without DD; returns how many slots it consumed and advances *out. Descriptor
// and slot pointers walk together, no index masking, no call in the loop; a bad descriptor's
// buffer goes straight back to the free stack. With kRefill each reaped slot at once gets a
// fresh buffer from the free stack (RxBurst checked there are enough and that exactly one slot
// is empty, and afterwards gives them or puts the fresh buffers back).
template <bool kRefill>
uint32_t IgbvfPort::Reap(PacketBuffer** out, uint32_t from, uint32_t count) {
  volatile RxDesc* d = rx_ring_ + from;
  volatile RxDesc* const end = d + count;
  uint32_t* s = rx_slot_.data() + from;
  uint32_t* fp = pool_.free_stack() + pool_.free_count();
  uint8_t* const caller = pool_.caller_table();
  uint8_t* const buffers = pool_.base();
  const uint64_t to_iova = pool_.iova() - reinterpret_cast<uintptr_t>(buffers);
  PacketBuffer* q = *out;
  uint64_t bytes = 0;
  for (; d != end; ++d, ++s) {
    const uint64_t wb = d->hdr_addr;  // status/error 31:0, length 47:32
    const uint32_t staterr = static_cast<uint32_t>(wb);
    if ((staterr & kRxStatDd) == 0) break;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);  // the rest of the write-back after DD
    const uint32_t len = static_cast<uint32_t>(wb >> 32) & 0xFFFF;
    const uint32_t b = *s;
    if (kRefill) {
      const uint32_t fresh = *--fp;
      *s = fresh;
      d->pkt_addr = reinterpret_cast<uintptr_t>(buffers + size_t{fresh} * kBufferSize) + to_iova;
      d->hdr_addr = 0;
    }
    // Length and EOP checked before anything is handed out; a bad one goes back to the pool.
    if (__builtin_expect(((staterr & (kRxStatEop | kRxErrFrame)) ^ kRxStatEop) |
                             ((len - 1) >> 11),
                         0)) {
      if (len - 1 >= kBufferSize) {
        ++stats_.bad_descriptors;
        ++xstats_.bad_rx_length;
      } else if ((staterr & kRxStatEop) == 0) {
        ++stats_.bad_descriptors;
        ++xstats_.bad_rx_no_eop;
      } else {
        ++xstats_.rx_frame_errors;
      }
      *fp++ = b;  // not the caller's: a dropped buffer never reached the caller
      continue;
    }
    caller[b] = Pool::kCaller;
    uint8_t* const data = buffers + size_t{b} * kBufferSize;
    q->data = data;
    q->device_address = reinterpret_cast<uintptr_t>(data) + to_iova;
    q->length = len;
    q->capacity = kBufferSize;
    q->index = b;
    q->pool = this;
    ++q;
    bytes += len;
  }
  *out = q;
  pool_.set_free_count(static_cast<uint32_t>(fp - pool_.free_stack()));
  stats_.rx_bytes += bytes;
  return static_cast<uint32_t>(d - (rx_ring_ + from));
}

size_t IgbvfPort::RxBurst(absl::Span<PacketBuffer> out) {
  if (tx_in_flight_ != 0) ReclaimTx();
  const uint32_t mask = rx_mask_;
  const uint32_t first = rx_next_;
  // Only slots the driver gave the device are looked at: [rx_next_, rx_next_ + limit), in order,
  // in at most two runs (the ring wraps at most once).
  const uint32_t limit = out.size() < rx_posted_ ? static_cast<uint32_t>(out.size()) : rx_posted_;
  const uint32_t run1 = limit < mask + 1 - first ? limit : mask + 1 - first;
  // Refill inside the loop when exactly one slot is empty (it is then the one before rx_next_,
  // at rx_tail_) and the free stack covers the burst.
  const bool refill = rx_posted_ == mask && pool_.free_count() >= limit;
  PacketBuffer* q = out.data();
  uint32_t reaped = refill ? Reap<true>(&q, first, run1) : Reap<false>(&q, first, run1);
  if (reaped == run1 && limit > run1) {
    reaped += refill ? Reap<true>(&q, 0, limit - run1) : Reap<false>(&q, 0, limit - run1);
  }
  const size_t n = static_cast<size_t>(q - out.data());
  rx_next_ = (first + reaped) & mask;
  rx_posted_ -= reaped;
  if (refill) {
    if (reaped >= kRxRefillBatch) {
      // The empty slot was the one before `first`; the reaped slots hold fresh buffers. The last
      // of them hands its buffer to the empty slot and becomes the empty one, then all are given
      // with one RDT write (what Refill would have posted, without its second loop).
      const uint32_t empty = (first - 1) & mask, last = (first + reaped - 1) & mask;
      uint32_t* const slots = rx_slot_.data();
      slots[empty] = slots[last];
      rx_ring_[empty].pkt_addr = rx_ring_[last].pkt_addr;
      rx_ring_[empty].hdr_addr = 0;
      rx_tail_ = last;
      rx_posted_ = mask;
      __atomic_thread_fence(__ATOMIC_RELEASE);  // descriptors visible before the tail moves
      *rdt_ = last;
    } else {
      // Fewer than a batch: the fresh buffers go back to the free stack (slots not given are
      // always rewritten by Refill before the device gets them).
      uint32_t* const fl = pool_.free_stack();
      const uint32_t* const slots = rx_slot_.data();
      uint32_t top = pool_.free_count();
      for (uint32_t i = 0; i < reaped; ++i) fl[top++] = slots[(first + i) & mask];
      pool_.set_free_count(top);
    }
  }
  stats_.rx_packets += n;
  // One RDT write per at least kRxRefillBatch slots to give.
  if (mask - rx_posted_ >= kRxRefillBatch) Refill();
  return n;
}

// Reads the head the device wrote back; everything between tx_clean_ and it is sent. A head
// outside the ring, or beyond the slots in flight, is counted and ignored. The finished slots'
// buffer ids go to the free stack in (at most) two block copies: the ring may wrap once.
void IgbvfPort::ReclaimTx() {
  const uint32_t mask = tx_mask_;
  const uint32_t head = *tx_head_wb_;
  const uint32_t clean = tx_clean_;
  const uint32_t done = (head - clean) & mask;
  if (__builtin_expect(head > mask || done > tx_in_flight_, 0)) {
    ++stats_.bad_descriptors;
    ++xstats_.bad_tx_head;
    return;
  }
  if (done == 0) return;
  pool_.PushRingRun(tx_slot_.data(), mask + 1, clean, done);
  tx_clean_ = head;
  tx_in_flight_ -= done;
  stats_.tx_completed += done;
}

// Queues pkts[0, count) into slots [from, from + count), a run that does not wrap; stops at the
// first bad buffer. Returns how many were queued. Descriptor, slot and packet pointers walk
// together (no index masking).
uint32_t IgbvfPort::Fill(const PacketBuffer* p, uint32_t from, uint32_t count) {
  const PacketBuffer* const start = p;
  const PacketBuffer* const end = p + count;
  TxDesc* d = tx_ring_ + from;
  uint32_t* s = tx_slot_.data() + from;
  uint8_t* const caller = pool_.caller_table();
  const uintptr_t buffers = reinterpret_cast<uintptr_t>(pool_.base());
  const uint64_t to_iova = pool_.iova() - buffers;  // IOVA = address + this, inside the pool
  const uint32_t buffer_count = options_.buffer_count;
  uint64_t bytes = 0;
  for (; p != end; ++p, ++d, ++s) {
    const uint32_t b = p->index;
    const uint32_t len = p->length;
    const uintptr_t data = reinterpret_cast<uintptr_t>(p->data);
    // Ours, in the caller's hands, data inside its buffer, 0 < length <= room after data.
    const uintptr_t off = data - (buffers + uintptr_t{b} * kBufferSize);
    if (__builtin_expect(p->pool != this || b >= buffer_count || caller[b] != Pool::kCaller ||
                             off >= kBufferSize || len - 1 >= kBufferSize - off,
                         0)) {
      ++stats_.bad_buffers;
      break;
    }
    caller[b] = Pool::kNotCaller;
    *s = b;
    // §7.2.2 advanced data descriptor: DEXT, DTYP = data, EOP (one buffer per frame), IFCS
    // (the device appends the CRC); PAYLEN = the frame's length. Both dwords in one store.
    d->addr = data + to_iova;
    const uint64_t words = (uint64_t{len} << (32 + kTxPaylenShift)) |
                           (len | kTxDtypData | kTxCmdDext | kTxCmdEop | kTxCmdIfcs);
    std::memcpy(&d->cmd_type_len, &words, sizeof words);
    bytes += len;
  }
  stats_.tx_bytes += bytes;
  return static_cast<uint32_t>(p - start);
}

size_t IgbvfPort::TxBurst(absl::Span<const PacketBuffer> pkts) {
  if (tx_in_flight_ != 0) ReclaimTx();
  const uint32_t mask = tx_mask_;
  const uint32_t room = mask - tx_in_flight_;
  const uint32_t n = pkts.size() < room ? static_cast<uint32_t>(pkts.size()) : room;
  const uint32_t tail = tx_tail_;
  // At most two runs: the ring wraps at most once.
  const uint32_t run1 = n < mask + 1 - tail ? n : mask + 1 - tail;
  uint32_t sent = Fill(pkts.data(), tail, run1);
  if (sent == run1 && n > run1) sent += Fill(pkts.data() + run1, 0, n - run1);
  if (sent != 0) {
    const uint32_t new_tail = (tail + sent) & mask;
    // RS on the last descriptor of the burst only: one head write-back per burst.
    tx_ring_[(new_tail - 1) & mask].cmd_type_len |= kTxCmdRs;
    tx_tail_ = new_tail;
    tx_in_flight_ += sent;
    stats_.tx_packets += sent;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *tdt_ = new_tail;  // §7.2.2: one TDT write per burst
  }
  if (sent == n && n < pkts.size()) stats_.tx_ring_full += pkts.size() - n;
  return sent;
}

size_t IgbvfPort::AllocBurst(absl::Span<PacketBuffer> out) {
  return pool_.Alloc(out, &stats_);
}

size_t IgbvfPort::FreeBurst(absl::Span<const PacketBuffer> bufs) {
  return pool_.Free(bufs, &stats_);
}

void IgbvfPort::Service() {
  ReclaimTx();
  if (rx_posted_ != rx_mask_) Refill();
}

}  // namespace vfdrivers::net::igbvf
