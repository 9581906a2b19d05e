// Intel 82599 VF driver: see ixgbevf.h. Section numbers are of the Intel 82599 10 GbE
// Controller datasheet. Not yet run on hardware (QEMU has no 82599): see README.md.
#include "vfdrivers/net/ixgbevf/ixgbevf.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace vfdrivers::net::ixgbevf {
namespace {

#define IXGBEVF_TRY(expr)                  \
  do {                                     \
    absl::Status status_ = (expr);         \
    if (!status_.ok()) return status_;     \
  } while (0)

constexpr uint32_t kRxGiveBatch = 32;  // VFRDT moves by at least this many slots (or fewer
                                       // on small rings: half the ring)

using intel_vf::IsUnicast;
using intel_vf::kMsgAck;
using intel_vf::kMsgCts;
using intel_vf::kMsgNack;
using intel_vf::PollUntil;

}  // namespace

absl::StatusOr<std::unique_ptr<IxgbevfPort>> IxgbevfPort::Open(vfio::VfioDevice* device,
                                                               const Options& options) {
  // BAR0 of an 82599 VF is 16 KiB (§8.3); the VFIO Bar checks that and turns on bus mastering.
  absl::StatusOr<std::unique_ptr<Bar>> bar =
      intel_vf::OpenVfioBar(device, kVfBarSize, "ixgbevf", "82599 VF");
  if (!bar.ok()) return bar.status();
  return Create(*std::move(bar), options);
}

absl::StatusOr<std::unique_ptr<IxgbevfPort>> IxgbevfPort::Create(std::unique_ptr<Bar> bar,
                                                                 const Options& options) {
  if (bar == nullptr) return absl::InvalidArgumentError("ixgbevf: null bar");
  for (uint32_t n : {options.rx_ring_size, options.tx_ring_size}) {
    if (n < 8 || n > 4096 || (n & (n - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("ixgbevf: ring size %u is not a power of two in 8..4096", n));
    }
  }
  if (options.buffer_count <= options.rx_ring_size || options.buffer_count > (1u << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ixgbevf: buffer_count %u must exceed rx_ring_size %u (and be <= 2^20)",
        options.buffer_count, options.rx_ring_size));
  }
  std::unique_ptr<IxgbevfPort> port(new IxgbevfPort(std::move(bar), options));
  IXGBEVF_TRY(port->Init());
  return port;
}

IxgbevfPort::IxgbevfPort(std::unique_ptr<Bar> bar, const Options& options)
    : bar_(std::move(bar)),
      options_(options),
      mbx_(bar_.get(), kVfMailbox, kVfMbmem, options.mailbox_timeout, "ixgbevf",
           &xstats_.mailbox_messages) {}

IxgbevfPort::~IxgbevfPort() {
  Stop();
  if (mapped_) (void)bar_->UnmapDma(iova_);
}

absl::Status IxgbevfPort::Init() {
  IXGBEVF_TRY(Reset());
  IXGBEVF_TRY(NegotiateApi());
  IXGBEVF_TRY(SetupRings());
  if (options_.link_timeout > absl::ZeroDuration()) {
    IXGBEVF_TRY(WaitForLink(options_.link_timeout));
  }
  return absl::OkStatus();
}

// ---- Mailbox (§7.9 PF/VF mailbox; VFMAILBOX and VFMBMEM, §8.3.5) -------------------------

// The protocol is the 82576's: intel_vf::Mailbox (mbx_) does it, at VFMAILBOX / VFMBMEM.

// ---- Reset and API negotiation ---------------------------------------------------------------

absl::Status IxgbevfPort::Reset() {
  // Polling only: mask every VF interrupt cause (VTEIMC, §8.3).
  IXGBEVF_TRY(bar_->Write32(kVtEimc, 0xFFFFFFFFu));
  // VF software reset (VFCTRL.RST, §8.3): the VF's queues stop and the PF is told. While the
  // PF itself resets, VFMAILBOX.RSTI is set; RSTD (read-to-clear) says it has finished. A
  // VF reset that sees neither bit in time goes on to the RESET message, which is the real
  // handshake (RSTD may already have been consumed by an earlier open).
  mbx_.Forget();
  IXGBEVF_TRY(bar_->Write32(kVfCtrl, kVfCtrlRst));
  absl::StatusOr<bool> rstd = mbx_.AwaitResetDone(options_.reset_timeout, "VFCTRL.RST");
  if (!rstd.ok()) return rstd.status();
  if (!*rstd) ++xstats_.reset_without_rstd;

  // VF_RESET message (§7.9): RESET|ACK, permanent MAC in words 1-2, multicast filter type
  // (the PF's MCSTCTRL.MO, which bits of an address the MTA hash takes) in word 3.
  uint32_t r[kResetReplyWords] = {};
  absl::StatusOr<MacAddress> mac = mbx_.Reset(absl::MakeSpan(r));
  if (!mac.ok()) return mac.status();
  if (r[3] > 3) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ixgbevf reset: RESET|ACK word 3 is %u, not a multicast filter type 0..3", r[3]));
  }
  mac_ = *mac;
  mc_filter_type_ = r[3];
  return absl::OkStatus();
}

// API_NEGOTIATE (§7.9; revision numbers as the PF enumerates them): newest first; a NACK means
// "not that one", anything else ends the negotiation. 1.0 works with every PF but keeps jumbo
// frames off; we only need 2 KiB frames.
absl::Status IxgbevfPort::NegotiateApi() {
  for (uint32_t api : {kApi12, kApi11, kApi10}) {
    const uint32_t msg[3] = {kVfApiNegotiate, api, 0};
    uint32_t r[1] = {};
    absl::Status st = mbx_.Send(msg);
    if (st.ok()) st = mbx_.Receive(r);
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("ixgbevf API negotiation: ", st.message()));
    }
    const uint32_t word0 = r[0] & ~kMsgCts;
    if (word0 == (kVfApiNegotiate | kMsgAck)) {
      api_ = api;
      return absl::OkStatus();
    }
    if (word0 != (kVfApiNegotiate | kMsgNack)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "ixgbevf API negotiation: reply 0x%08x is neither API_NEGOTIATE|ACK nor |NACK", r[0]));
    }
  }
  return absl::FailedPreconditionError(
      "ixgbevf API negotiation: the PF NACKed mailbox API 1.2, 1.1 and 1.0");
}

// SET_MAC_ADDR, SET_MULTICAST, SET_VLAN, SET_LPE (§7.9): the 82576's messages
// (intel_vf::Mailbox). Multicast hashes follow the filter type the PF gave at reset (MO, §8.2 MTA).
absl::Status IxgbevfPort::SetMac(const MacAddress& mac) {
  if (!IsUnicast(mac)) {
    return absl::InvalidArgumentError("ixgbevf: SetMac needs a unicast address");
  }
  IXGBEVF_TRY(mbx_.SetMac(mac));
  mac_ = mac;
  return absl::OkStatus();
}

absl::Status IxgbevfPort::SetMulticast(absl::Span<const MacAddress> addrs) {
  return mbx_.SetMulticast(addrs, mc_filter_type_);
}

absl::Status IxgbevfPort::SetVlan(uint16_t vid, bool add) { return mbx_.SetVlan(vid, add); }

absl::Status IxgbevfPort::SetMaxFrame(uint32_t bytes) {
  if (bytes < 64 || bytes > kBufferSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ixgbevf: max frame %u outside 64..%u (one 2 KiB buffer per frame)", bytes, kBufferSize));
  }
  return mbx_.SetLpe(bytes);
}

bool IxgbevfPort::LinkUp() {
  absl::StatusOr<uint32_t> v = bar_->Read32(kVfLinks);  // VFLINKS (§8.3)
  return v.ok() && (*v & kVfLinksUp) != 0;
}

absl::Status IxgbevfPort::WaitForLink(absl::Duration timeout) {
  if (PollUntil(bar_.get(), timeout, [&] { return LinkUp(); })) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrFormat(
      "ixgbevf: link not up (VFLINKS.LINK_UP) within %s", absl::FormatDuration(timeout)));
}

// ---- Rings ------------------------------------------------------------------------------------

// §4.6.7 / §8.3 (VFRXDCTL, VFTXDCTL): ENABLE takes effect when it reads back set.
absl::Status IxgbevfPort::EnableQueue(uint32_t reg, uint32_t value, const char* name) {
  IXGBEVF_TRY(bar_->Write32(reg, value));
  if (PollUntil(bar_.get(), options_.enable_timeout, [&] {
        absl::StatusOr<uint32_t> v = bar_->Read32(reg);
        return v.ok() && (*v & kDctlEnable) != 0;
      })) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(absl::StrFormat(
      "ixgbevf: %s.ENABLE did not read back set within %s", name,
      absl::FormatDuration(options_.enable_timeout)));
}

absl::Status IxgbevfPort::SetupRings() {
  const uint32_t nrx = options_.rx_ring_size, ntx = options_.tx_ring_size;
  // One region: RX ring | TX ring | head write-back dword (own 128-byte line) | buffers.
  const size_t rx_bytes = size_t{nrx} * sizeof(RxDesc);
  const size_t tx_bytes = size_t{ntx} * sizeof(TxDesc);
  const size_t head_off = rx_bytes + tx_bytes;
  const size_t buf_off = (head_off + 128 + kBufferSize - 1) / kBufferSize * kBufferSize;
  absl::StatusOr<memory::MemoryRegion> region = memory::MemoryRegion::Allocate(
      buf_off + size_t{options_.buffer_count} * kBufferSize, {options_.huge_pages});
  if (!region.ok()) return region.status();
  region_ = *std::move(region);
  absl::StatusOr<uint64_t> iova = bar_->MapDma(region_.base(), region_.size());
  if (!iova.ok()) return iova.status();
  iova_ = *iova;
  mapped_ = true;
  uint8_t* base = static_cast<uint8_t*>(region_.base());
  rx_ring_ = reinterpret_cast<RxDesc*>(base);
  tx_ring_ = reinterpret_cast<TxDesc*>(base + rx_bytes);
  tx_head_ = reinterpret_cast<volatile uint32_t*>(base + head_off);
  *tx_head_ = 0;
  pool_.Init(this, base + buf_off, iova_ + buf_off, options_.buffer_count);

  rx_mask_ = nrx - 1;
  tx_mask_ = ntx - 1;
  rx_give_batch_ = nrx / 2 < kRxGiveBatch ? nrx / 2 : kRxGiveBatch;
  rx_slot_.assign(nrx, 0);
  tx_slot_.assign(ntx, 0);

  absl::StatusOr<volatile uint32_t*> rdt = bar_->Register32(kVfRdt);
  if (!rdt.ok()) return rdt.status();
  absl::StatusOr<volatile uint32_t*> tdt = bar_->Register32(kVfTdt);
  if (!tdt.ok()) return tdt.status();
  rdt_ = *rdt;
  tdt_ = *tdt;

  // RX queue 0 (§4.6.7 receive init; §8.3 VFRDBAL/H, VFRDLEN, VFSRRCTL, VFRXDCTL): disabled
  // while programmed; 2 KiB packet buffers, advanced one-buffer descriptors (§7.1.6), drop
  // when out of descriptors (DROP_EN: a slow tenant never backs up the PF's switch); no
  // header split (VFPSRTYPE 0). Enabled, then the tail is written (§4.6.7: after ENABLE).
  IXGBEVF_TRY(bar_->Write32(kVfRxdctl, 0));
  IXGBEVF_TRY(bar_->Write32(kVfPsrtype, 0));
  IXGBEVF_TRY(bar_->Write32(kVfRdbal, static_cast<uint32_t>(iova_)));
  IXGBEVF_TRY(bar_->Write32(kVfRdbah, static_cast<uint32_t>(iova_ >> 32)));
  IXGBEVF_TRY(bar_->Write32(kVfRdlen, static_cast<uint32_t>(rx_bytes)));
  IXGBEVF_TRY(bar_->Write32(kVfRdh, 0));
  IXGBEVF_TRY(bar_->Write32(kVfRdt, 0));
  IXGBEVF_TRY(bar_->Write32(
      kVfSrrctl, (kBufferSize >> 10) | kSrrctlAdvOneBuf | kSrrctlDropEn));
  running_ = true;  // from here on, Stop() turns the queues off again
  IXGBEVF_TRY(EnableQueue(kVfRxdctl, kDctlEnable, "VFRXDCTL"));

  // TX queue 0 (§4.6.8 transmit init; §8.3 VFTDBAL/H, VFTDLEN, VFTDWBAL/H, VFTXDCTL): head
  // write-back to memory (Head_WB_En): the device writes VFTDH there after each RS descriptor,
  // and does not write the descriptors' DD back.
  const uint64_t tx_iova = iova_ + rx_bytes, head_iova = iova_ + head_off;
  IXGBEVF_TRY(bar_->Write32(kVfTxdctl, 0));
  IXGBEVF_TRY(bar_->Write32(kVfTdbal, static_cast<uint32_t>(tx_iova)));
  IXGBEVF_TRY(bar_->Write32(kVfTdbah, static_cast<uint32_t>(tx_iova >> 32)));
  IXGBEVF_TRY(bar_->Write32(kVfTdlen, static_cast<uint32_t>(tx_bytes)));
  IXGBEVF_TRY(bar_->Write32(kVfTdh, 0));
  IXGBEVF_TRY(bar_->Write32(kVfTdt, 0));
  IXGBEVF_TRY(bar_->Write32(kVfTdwbal, static_cast<uint32_t>(head_iova) | kTdwbalHeadWbEn));
  IXGBEVF_TRY(bar_->Write32(kVfTdwbah, static_cast<uint32_t>(head_iova >> 32)));
  // PTHRESH 32, HTHRESH 1, WTHRESH 0 (bits 6:0, 14:8, 22:16).
  IXGBEVF_TRY(EnableQueue(kVfTxdctl, kDctlEnable | 32 | 1 << 8, "VFTXDCTL"));

  info_.queue_id = 0;
  info_.buffer_count = options_.buffer_count;
  info_.buffer_capacity = kBufferSize;
  info_.rx_ring_size = nrx - 1;
  info_.tx_ring_size = ntx - 1;
  info_.zero_copy = true;
  Refill();
  GiveRx(true);
  return absl::OkStatus();
}

void IxgbevfPort::Stop() {
  if (!running_) return;
  (void)bar_->Write32(kVfRxdctl, 0);
  (void)bar_->Write32(kVfTxdctl, 0);
  (void)bar_->Write32(kVfCtrl, kVfCtrlRst);  // ends any DMA still in progress before the unmap
  running_ = false;
}

// ---- Fast path ----------------------------------------------------------------------------------
// The loops work on local copies of members: stores through rings and tables could otherwise
// alias them and force reloads.

// Empty slots [tail + filled, next) get free buffers: read format, packet address and a zero
// header address (which also clears the previous write-back's DD).
void IxgbevfPort::Refill() {
  const uint32_t mask = rx_mask_;
  uint32_t n = mask + 1 - rx_posted_ - rx_filled_;
  if (n > pool_.free_count()) n = pool_.free_count();
  uint32_t slot = (rx_tail_ + rx_filled_) & mask, top = pool_.free_count();
  const uint32_t* free_list = pool_.free_stack();
  uint32_t* slots = rx_slot_.data();
  RxDesc* ring = rx_ring_;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t b = free_list[--top];
    slots[slot] = b;
    ring[slot].pkt_addr = pool_.iova() + uint64_t{b} * kBufferSize;
    ring[slot].hdr_addr = 0;
    slot = (slot + 1) & mask;
  }
  pool_.set_free_count(top);
  rx_filled_ += n;
}

// Hands filled slots to the device with one VFRDT write (§7.1.6 / §8.3 VFRDT), keeping one slot
// back (RDH == RDT means "no descriptors"). Waits for a batch unless forced or the device has
// nothing left.
void IxgbevfPort::GiveRx(bool force) {
  const uint32_t room = rx_mask_ - rx_posted_;
  const uint32_t give = rx_filled_ < room ? rx_filled_ : room;
  if (give == 0 || (give < rx_give_batch_ && !force && rx_posted_ != 0)) return;
  rx_tail_ = (rx_tail_ + give) & rx_mask_;
  rx_posted_ += give;
  rx_filled_ -= give;
  ++xstats_.rx_tail_writes;
  __atomic_thread_fence(__ATOMIC_RELEASE);  // descriptors before the tail
  *rdt_ = rx_tail_;
}

// Reaps written-back descriptors in slots [from, from + count), a run that does not wrap, up to
// the first one without DD; returns how many slots it consumed and advances *out. With kRefill
// each reaped slot at once gets a fresh buffer from the free stack (RxBurst checked there are
// enough and that no slot is empty, so the reaped slots extend the filled run). Written for
// the register allocator: descriptor and slot pointers walk together, no index masking, no
// call, the free stack as a pointer, the byte count straight into stats_.
template <bool kRefill>
uint32_t IxgbevfPort::Reap(PacketBuffer** out, uint32_t from, uint32_t count) {
  volatile RxDesc* d = rx_ring_ + from;
  volatile RxDesc* const end = d + count;
  uint32_t* s = rx_slot_.data() + from;
  uint32_t* fp = pool_.free_stack() + pool_.free_count();
  uint8_t* const caller = pool_.caller_table();
  uint8_t* const buffers = pool_.base();
  const uint64_t to_iova = pool_.iova() - reinterpret_cast<uintptr_t>(buffers);
  PacketBuffer* q = *out;
  for (; d != end; ++d, ++s) {
    // §7.1.6.2 write-back: extended status 19:0 (DD bit 0, EOP bit 1), errors 31:20, PKT_LEN
    // 47:32 of the second quadword.
    const uint64_t wb = d->hdr_addr;
    if ((wb & kRxDd) == 0) break;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    const uint32_t len = static_cast<uint32_t>(wb >> 32) & 0xFFFF;
    const uint32_t b = *s;
    if (kRefill) {
      // §7.1.6.1 read format: packet buffer address, header address 0 (clears DD).
      const uint32_t fresh = *--fp;
      *s = fresh;
      d->pkt_addr = reinterpret_cast<uintptr_t>(buffers + size_t{fresh} * kBufferSize) + to_iova;
      d->hdr_addr = 0;
    }
    if (__builtin_expect(((static_cast<uint32_t>(wb) & (kRxEop | kRxErrRxe)) ^ kRxEop) |
                             ((len - 1) >> 11),
                         0)) {
      *fp++ = b;  // never reached the caller
      if (len - 1 >= kBufferSize) {
        ++stats_.bad_descriptors;
        ++xstats_.bad_rx_length;
      } else if ((wb & kRxEop) == 0) {
        ++stats_.bad_descriptors;
        ++xstats_.bad_rx_no_eop;
      } else {
        ++xstats_.rx_frame_errors;
      }
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
    stats_.rx_bytes += len;
  }
  *out = q;
  pool_.set_free_count(static_cast<uint32_t>(fp - pool_.free_stack()));
  return static_cast<uint32_t>(d - (rx_ring_ + from));
}

size_t IxgbevfPort::RxBurst(absl::Span<PacketBuffer> out) {
  if (tx_in_flight_ != 0) ReclaimTx();
  const uint32_t size = rx_mask_ + 1;
  const uint32_t limit =
      out.size() < rx_posted_ ? static_cast<uint32_t>(out.size()) : rx_posted_;
  // Only slots the device owns are looked at: [rx_next_, rx_next_ + limit), in at most two runs
  // (the ring wraps at most once).
  const bool refill = rx_posted_ + rx_filled_ == size && pool_.free_count() >= limit;
  const uint32_t first = rx_next_;
  const uint32_t run1 = limit < size - first ? limit : size - first;
  PacketBuffer* q = out.data();
  uint32_t reaped = refill ? Reap<true>(&q, first, run1) : Reap<false>(&q, first, run1);
  if (reaped == run1 && limit > run1) {
    reaped += refill ? Reap<true>(&q, 0, limit - run1) : Reap<false>(&q, 0, limit - run1);
  }
  rx_next_ = (first + reaped) & rx_mask_;
  rx_posted_ -= reaped;
  if (refill) rx_filled_ += reaped;
  const size_t n = static_cast<size_t>(q - out.data());
  stats_.rx_packets += n;
  if (rx_posted_ + rx_filled_ != size) Refill();
  GiveRx(false);
  return n;
}

// Everything from tx_clean_ up to the written-back head is sent (§7.2.3, head write-back). A
// head outside the ring or past what is in flight is counted and ignored. The finished slots'
// buffer ids go to the free stack in (at most) two block copies: the ring may wrap once.
void IxgbevfPort::ReclaimTx() {
  const uint32_t mask = tx_mask_;
  const uint32_t head = *tx_head_;
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
// together (no index masking), the byte count goes straight into stats_.
uint32_t IxgbevfPort::Fill(const PacketBuffer* p, uint32_t from, uint32_t count) {
  const PacketBuffer* const end = p + count;
  const PacketBuffer* const start = p;
  TxDesc* d = tx_ring_ + from;
  uint32_t* s = tx_slot_.data() + from;
  uint8_t* const caller = pool_.caller_table();
  const uintptr_t buffers = reinterpret_cast<uintptr_t>(pool_.base());
  const uint64_t to_iova = pool_.iova() - buffers;
  for (; p != end; ++p, ++d, ++s) {
    const uint32_t b = p->index;
    const uint32_t len = p->length;
    const uintptr_t data = reinterpret_cast<uintptr_t>(p->data);
    const uintptr_t off = data - (buffers + uintptr_t{b} * kBufferSize);
    // Ours, in the caller's hands, data inside its buffer, 0 < length <= what follows data.
    if (__builtin_expect(p->pool != this || b >= options_.buffer_count ||
                             caller[b] != Pool::kCaller || off >= kBufferSize ||
                             len - 1 >= kBufferSize - off,
                         0)) {
      ++stats_.bad_buffers;
      break;
    }
    caller[b] = Pool::kNotCaller;
    *s = b;
    // §7.2.3.2.4 advanced data descriptor: DTALEN = PAYLEN = len, DTYP data, DEXT, EOP (one
    // buffer per frame), IFCS (the MAC appends the CRC). Both dwords in one store.
    d->addr = data + to_iova;
    const uint64_t words = (uint64_t{len} << (32 + kTxPaylenShift)) |
                           (len | kTxDtypData | kTxDext | kTxEop | kTxIfcs);
    std::memcpy(&d->cmd_type_len, &words, sizeof words);
    stats_.tx_bytes += len;
  }
  return static_cast<uint32_t>(p - start);
}

size_t IxgbevfPort::TxBurst(absl::Span<const PacketBuffer> pkts) {
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
    tx_ring_[(new_tail - 1) & mask].cmd_type_len |= kTxRs;  // one head write-back per burst
    tx_tail_ = new_tail;
    tx_in_flight_ += sent;
    stats_.tx_packets += sent;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *tdt_ = new_tail;  // §7.2.3 / §8.3 VFTDT: one write per burst
  }
  if (sent == n && n < pkts.size()) stats_.tx_ring_full += pkts.size() - n;
  return sent;
}

size_t IxgbevfPort::AllocBurst(absl::Span<PacketBuffer> out) {
  return pool_.Alloc(out, &stats_);
}

size_t IxgbevfPort::FreeBurst(absl::Span<const PacketBuffer> bufs) {
  return pool_.Free(bufs, &stats_);
}

void IxgbevfPort::Service() {
  ReclaimTx();
  Refill();
  GiveRx(true);
}

}  // namespace vfdrivers::net::ixgbevf
