// Shared Intel VF pieces: see mailbox.h. Mailbox steps follow the 82576 datasheet §7.8.2 and the
// 82599 datasheet §7.9 / §8.3.5, which describe the same protocol.
#include "vfdrivers/net/intel_vf/mailbox.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "vfdrivers/vfio/mmio_region.h"

namespace vfdrivers::net::intel_vf {
namespace {

#define INTEL_VF_TRY(expr)                 \
  do {                                     \
    absl::Status status_ = (expr);         \
    if (!status_.ok()) return status_;     \
  } while (0)

class VfioBar final : public Bar {
 public:
  VfioBar(vfio::VfioDevice* device, const vfio::MmioRegion* bar) : device_(device), bar_(bar) {}
  absl::StatusOr<uint32_t> Read32(uint32_t offset) override { return bar_->Read32(offset); }
  absl::Status Write32(uint32_t offset, uint32_t value) override {
    return bar_->Write32(offset, value);
  }
  absl::StatusOr<volatile uint32_t*> Register32(uint32_t offset) override {
    return bar_->Register32(offset);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    constexpr uint64_t kHuge = uint64_t{2} << 20;
    const bool huge = reinterpret_cast<uintptr_t>(vaddr) % kHuge == 0 && size % kHuge == 0 &&
                      (device_->iommu_info().iova_pgsizes & kHuge) != 0;
    absl::StatusOr<vfio::DmaMapping> m = device_->MapDma(vaddr, size, huge ? kHuge : 0);
    if (!m.ok()) return m.status();
    return m->iova;
  }
  absl::Status UnmapDma(uint64_t iova) override { return device_->UnmapDma(iova); }
  void Idle() override {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

 private:
  vfio::VfioDevice* device_;
  const vfio::MmioRegion* bar_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Bar>> OpenVfioBar(vfio::VfioDevice* device, uint32_t bar_size,
                                                 const char* driver, const char* part) {
  if (device == nullptr) return absl::InvalidArgumentError(absl::StrCat(driver, ": null device"));
  absl::StatusOr<const vfio::MmioRegion*> bar = device->MapBar(0);
  if (!bar.ok()) return bar.status();
  if ((*bar)->size() < bar_size) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: BAR0 is %u bytes, an %s has %u", driver, (*bar)->size(), part, bar_size));
  }
  INTEL_VF_TRY(device->EnableBusMastering());
  return std::unique_ptr<Bar>(new VfioBar(device, *bar));
}

std::string MacString(const MacAddress& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m.bytes[0], m.bytes[1], m.bytes[2],
                         m.bytes[3], m.bytes[4], m.bytes[5]);
}

bool IsUnicast(const MacAddress& m) { return (m.bytes[0] & 1) == 0 && !(m == MacAddress{}); }

void MacToWords(const MacAddress& mac, uint32_t* words) {
  uint8_t b[8] = {};
  std::memcpy(b, mac.bytes.data(), 6);
  std::memcpy(words, b, 8);
}

MacAddress MacFromWords(const uint32_t* words) {
  uint8_t b[8];
  std::memcpy(b, words, 8);
  MacAddress m;
  std::memcpy(m.bytes.data(), b, 6);
  return m;
}

Mailbox::Mailbox(Bar* bar, uint32_t mailbox, uint32_t mbmem, absl::Duration timeout,
                 const char* driver, uint64_t* messages)
    : bar_(bar),
      mailbox_(mailbox),
      mbmem_(mbmem),
      timeout_(timeout),
      driver_(driver),
      messages_(messages) {}

// PFSTS, PFACK and RSTD clear when read: keep what each read saw until a waiter consumes it.
uint32_t Mailbox::Bits() {
  absl::StatusOr<uint32_t> v = bar_->Read32(mailbox_);
  const uint32_t bits = v.ok() ? *v : 0;
  seen_ |= bits & kMbReadClear;
  return bits | seen_;
}

bool Mailbox::Take(uint32_t bit) {
  if ((Bits() & bit) == 0) return false;
  seen_ &= ~bit;
  return true;
}

absl::Status Mailbox::Await(uint32_t bit, const char* what) {
  if (PollUntil(bar_, timeout_, [&] { return Take(bit); })) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrFormat("%s mailbox: no %s from the PF within %s (VFMAILBOX 0x%02x)", driver_, what,
                      absl::FormatDuration(timeout_), Bits()));
}

absl::StatusOr<bool> Mailbox::AwaitResetDone(absl::Duration timeout, const char* reset_bit) {
  uint32_t bits = 0;
  const bool done =
      PollUntil(bar_, timeout, [&] { return ((bits = Bits()) & kMbRstd) != 0; });
  seen_ &= ~kMbRstd;
  if (!done && (bits & kMbRsti) != 0) {
    return absl::DeadlineExceededError(absl::StrFormat(
        "%s reset: the PF is still resetting (VFMAILBOX.RSTI) %s after %s", driver_,
        absl::FormatDuration(timeout), reset_bit));
  }
  return done;
}

// VF -> PF: take the buffer (set VFU, read it back set), write the message, then REQ (which
// drops VFU and interrupts the PF); the PF answers with PFACK once it has read it.
absl::Status Mailbox::Send(absl::Span<const uint32_t> msg) {
  const bool owned = PollUntil(bar_, timeout_, [&] {
    return bar_->Write32(mailbox_, kMbVfu).ok() && (Bits() & kMbVfu) != 0;
  });
  if (!owned) {
    return absl::DeadlineExceededError(absl::StrCat(
        driver_, " mailbox: could not claim the buffer (VFMAILBOX.VFU never read back set)"));
  }
  seen_ &= ~(kMbPfsts | kMbPfack);  // older news: the buffer is about to be overwritten
  for (size_t i = 0; i < msg.size(); ++i) {
    INTEL_VF_TRY(bar_->Write32(mbmem_ + 4 * static_cast<uint32_t>(i), msg[i]));
  }
  INTEL_VF_TRY(bar_->Write32(mailbox_, kMbReq));
  if (messages_ != nullptr) ++*messages_;
  // PFACK says the PF read our message. A PF that could not take the buffer to read it answers
  // with a message (PFSTS) and no PFACK (Linux igb: its NACK path; seen under QEMU's igb), so a
  // message counts as the answer too; it is left for Receive and Call judges it.
  if (PollUntil(bar_, timeout_, [&] { return Take(kMbPfack) || (Bits() & kMbPfsts) != 0; })) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(absl::StrFormat(
      "%s mailbox: no PFACK for our message from the PF within %s (VFMAILBOX 0x%02x)", driver_,
      absl::FormatDuration(timeout_), Bits()));
}

// PF -> VF: PFSTS says a message is there; take the buffer, copy it out, ACK (releases VFU).
absl::Status Mailbox::Receive(absl::Span<uint32_t> reply) {
  INTEL_VF_TRY(Await(kMbPfsts, "reply (PFSTS)"));
  // The PF may still hold the buffer for a moment (PFU) after raising PFSTS, e.g. while it
  // writes a message of its own (seen once under QEMU's igb): claim it like Send does, until
  // the deadline, rather than on one try.
  const bool owned = PollUntil(bar_, timeout_, [&] {
    return bar_->Write32(mailbox_, kMbVfu).ok() && (Bits() & kMbVfu) != 0;
  });
  if (!owned) {
    return absl::DeadlineExceededError(absl::StrCat(
        driver_, " mailbox: PF message there, but the buffer never became ours (VFU not set)"));
  }
  for (size_t i = 0; i < reply.size(); ++i) {
    absl::StatusOr<uint32_t> w = bar_->Read32(mbmem_ + 4 * static_cast<uint32_t>(i));
    if (!w.ok()) return w.status();
    reply[i] = *w;
  }
  return bar_->Write32(mailbox_, kMbAck);
}

absl::Status Mailbox::Call(absl::Span<const uint32_t> msg, absl::Span<uint32_t> reply) {
  // Once more if the first attempt got no answer or a NACK: the PF NACKs a message it failed to
  // read, too. Requests are idempotent, and a real refusal is refused again.
  absl::Status first = CallOnce(msg, reply);
  if (first.ok() || (!absl::IsDeadlineExceeded(first) && !absl::IsFailedPrecondition(first))) {
    return first;
  }
  return CallOnce(msg, reply);
}

absl::Status Mailbox::CallOnce(absl::Span<const uint32_t> msg, absl::Span<uint32_t> reply) {
  INTEL_VF_TRY(Send(msg));
  INTEL_VF_TRY(Receive(reply));
  const uint32_t r = reply[0] & ~kMsgCts;
  const uint32_t verdict = r & (kMsgAck | kMsgNack);
  if ((r & kMsgIdMask) != (msg[0] & kMsgIdMask) || verdict == 0 ||
      verdict == (kMsgAck | kMsgNack)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s mailbox: reply 0x%08x to request 0x%08x is neither its ACK nor its NACK", driver_,
        reply[0], msg[0]));
  }
  if (verdict == kMsgNack) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s mailbox: the PF refused request 0x%08x (NACK)", driver_, msg[0]));
  }
  return absl::OkStatus();
}

absl::StatusOr<MacAddress> Mailbox::Reset(absl::Span<uint32_t> reply) {
  const uint32_t msg[1] = {kMsgReset};
  absl::Status st = Send(msg);
  if (st.ok()) st = Receive(reply);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(driver_, " reset: ", st.message()));
  const uint32_t word0 = reply[0] & ~kMsgCts;
  if (word0 == (kMsgReset | kMsgNack)) {
    return absl::FailedPreconditionError(absl::StrCat(
        driver_, " reset: the PF has no MAC address for this VF (RESET|NACK); set one on the PF ",
        "(ip link set <pf> vf N mac ...)"));
  }
  if (word0 != (kMsgReset | kMsgAck)) {
    std::string words;
    for (uint32_t w : reply) absl::StrAppendFormat(&words, " 0x%08x", w);
    return absl::FailedPreconditionError(
        absl::StrCat(driver_, " reset: reply", words, " is not RESET|ACK"));
  }
  const MacAddress mac = MacFromWords(&reply[1]);
  if (!IsUnicast(mac)) {
    return absl::FailedPreconditionError(absl::StrCat(
        driver_, " reset: the PF gave MAC ", MacString(mac), ", not a unicast address"));
  }
  return mac;
}

absl::Status Mailbox::SetMac(const MacAddress& mac) {
  uint32_t msg[3] = {kMsgSetMac, 0, 0};
  MacToWords(mac, &msg[1]);
  uint32_t reply[3] = {};
  return Call(msg, reply);
}

absl::Status Mailbox::SetMulticast(absl::Span<const MacAddress> addrs, uint32_t filter_type) {
  if (addrs.size() > kMaxMulticast) {
    return absl::InvalidArgumentError(
        absl::StrCat(driver_, ": more than 30 multicast addresses"));
  }
  uint32_t msg[kMbWords] = {};
  msg[0] = kMsgSetMulticast | static_cast<uint32_t>(addrs.size()) << kMsgInfoShift;
  const uint32_t shift = 4 - (filter_type & 3);  // type 0: bits 47:36 ... type 3: bits 43:32
  for (size_t i = 0; i < addrs.size(); ++i) {
    const uint32_t b4 = addrs[i].bytes[4], b5 = addrs[i].bytes[5];
    const uint32_t hash = ((b4 >> shift) | (b5 << (8 - shift))) & 0xFFF;
    msg[1 + i / 2] |= hash << (16 * (i % 2));
  }
  uint32_t reply[1] = {};
  return Call(absl::MakeConstSpan(msg, 1 + (addrs.size() + 1) / 2), reply);
}

absl::Status Mailbox::SetVlan(uint16_t vid, bool add) {
  if (vid > 4095) return absl::InvalidArgumentError(absl::StrCat(driver_, ": VLAN id above 4095"));
  const uint32_t msg[2] = {kMsgSetVlan | (add ? 1u : 0u) << kMsgInfoShift, vid};
  uint32_t reply[1] = {};
  return Call(msg, reply);
}

absl::Status Mailbox::SetLpe(uint32_t bytes) {
  const uint32_t msg[2] = {kMsgSetLpe, bytes};
  uint32_t reply[1] = {};
  return Call(msg, reply);
}

}  // namespace vfdrivers::net::intel_vf
