// The part the Intel VF drivers share (igbvf: 82576 VF, ixgbevf: 82599 VF): the BAR0 + DMA seam
// a driver runs over (VFIO or a register-level model), the MAC type, and the VF side of the PF
// mailbox. The mailbox is one protocol on both parts (82576 datasheet §7.8.2, 82599 §7.9 and
// §8.3.5): VFMAILBOX has the same bits, VMBMEM/VFMBMEM is 16 dwords, word 0 of a message is
// id | info << 16 | CTS/NACK/ACK; only the two register offsets differ, and the driver gives them.
//
// Each driver keeps its own registers, its datasheet-cited setup steps, the replies it expects
// (RESET|ACK carries 3 words on the 82576, 4 on the 82599) and its fast path.
#ifndef VFBROKER_VFDRIVERS_NET_INTEL_VF_MAILBOX_H_
#define VFBROKER_VFDRIVERS_NET_INTEL_VF_MAILBOX_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfdrivers::net::intel_vf {

// What a driver needs from below: BAR0 and DMA mapping, so the same driver runs over VFIO
// and over a register-level model.
class Bar {
 public:
  virtual ~Bar() = default;
  virtual absl::StatusOr<uint32_t> Read32(uint32_t offset) = 0;
  virtual absl::Status Write32(uint32_t offset, uint32_t value) = 0;
  // A checked pointer to a 32-bit register (RDT, TDT), for the fast path.
  virtual absl::StatusOr<volatile uint32_t*> Register32(uint32_t offset) = 0;
  virtual absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) = 0;
  virtual absl::Status UnmapDma(uint64_t iova) = 0;
  // Called from every busy-wait loop (hardware: a CPU pause; a model runs the device).
  virtual void Idle() = 0;
};

// Over VFIO: BAR0 through MmioRegion (at least `bar_size` bytes), bus mastering on. `driver`
// and `part` name the device in errors ("igbvf", "82576 VF"). The device must outlive the Bar.
absl::StatusOr<std::unique_ptr<Bar>> OpenVfioBar(vfio::VfioDevice* device, uint32_t bar_size,
                                                 const char* driver, const char* part);

struct MacAddress {
  std::array<uint8_t, 6> bytes{};
  bool operator==(const MacAddress& o) const { return bytes == o.bytes; }
};
std::string MacString(const MacAddress& m);       // aa:bb:cc:dd:ee:ff
bool IsUnicast(const MacAddress& m);              // not multicast, not all zero
// The PF's layout for a MAC in a message: 6 bytes in memory order from the given word (2 words).
void MacToWords(const MacAddress& mac, uint32_t* words);
MacAddress MacFromWords(const uint32_t* words);

// VFMAILBOX bits: PFSTS, PFACK and RSTD clear when read.
inline constexpr uint32_t kMbReq = 1u << 0, kMbAck = 1u << 1, kMbVfu = 1u << 2,
                          kMbPfu = 1u << 3, kMbPfsts = 1u << 4, kMbPfack = 1u << 5,
                          kMbRsti = 1u << 6, kMbRstd = 1u << 7;
inline constexpr uint32_t kMbReadClear = kMbPfsts | kMbPfack | kMbRstd;
inline constexpr uint32_t kMbWords = 16;  // VMBMEM / VFMBMEM

// Message word 0: id 15:0 | info 23:16 | CTS 29 | NACK 30 | ACK 31; the ids both PFs know.
inline constexpr uint32_t kMsgReset = 0x01, kMsgSetMac = 0x02, kMsgSetMulticast = 0x03,
                          kMsgSetVlan = 0x04, kMsgSetLpe = 0x05;
inline constexpr uint32_t kMsgAck = 1u << 31, kMsgNack = 1u << 30, kMsgCts = 1u << 29;
inline constexpr uint32_t kMsgInfoShift = 16;
inline constexpr uint32_t kMsgIdMask = 0xFFFF;
inline constexpr uint32_t kMaxMulticast = 30;  // addresses in one SET_MULTICAST

// Calls `done` until it is true or `timeout` passes, idling the Bar in between.
template <typename F>
bool PollUntil(Bar* bar, absl::Duration timeout, F done) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (done()) return true;
    if (absl::Now() > deadline) return false;
    bar->Idle();
  }
}

// The VF side of the mailbox. Every wait is bounded by `timeout`; errors start with `driver`
// ("igbvf mailbox: ...") and name the VFMAILBOX bit waited for. One thread, as the driver.
class Mailbox {
 public:
  // `mailbox` / `mbmem`: the VFMAILBOX and VMBMEM offsets in BAR0. `messages` (optional) is
  // incremented per message sent. `bar` and `messages` must outlive the Mailbox.
  Mailbox(Bar* bar, uint32_t mailbox, uint32_t mbmem, absl::Duration timeout, const char* driver,
          uint64_t* messages);

  // VFMAILBOX as read now, plus read-to-clear bits seen earlier and not yet taken.
  uint32_t Bits();
  // Whether `bit` is (or was) set; consumes it.
  bool Take(uint32_t bit);
  // Forgets the read-to-clear bits seen so far (before a VF reset).
  void Forget() { seen_ = 0; }
  // Waits for `bit` (consuming it); DEADLINE_EXCEEDED "no <what> from the PF ..." otherwise.
  absl::Status Await(uint32_t bit, const char* what);

  // After the driver's VF reset: waits up to `timeout` for RSTD (consumed). RSTI still set at the
  // deadline (the PF is resetting) is DEADLINE_EXCEEDED naming `reset_bit`; neither bit is not an
  // error (RSTD is read-to-clear: an earlier open may have taken it) and returns false.
  absl::StatusOr<bool> AwaitResetDone(absl::Duration timeout, const char* reset_bit);

  // VF -> PF: claim the buffer (VFU read back set), write the words, REQ, wait for PFACK.
  absl::Status Send(absl::Span<const uint32_t> msg);
  // PF -> VF: wait for PFSTS, claim the buffer, copy `reply.size()` words out, ACK.
  absl::Status Receive(absl::Span<uint32_t> reply);
  // Send + Receive; the reply must carry the request's id and exactly one of ACK / NACK
  // (CTS ignored): FAILED_PRECONDITION for a NACK or a reply that makes no sense. Tried twice
  // when the first attempt times out or is refused (the PF also NACKs what it failed to read).
  absl::Status Call(absl::Span<const uint32_t> msg, absl::Span<uint32_t> reply);

  // The RESET message after a VF reset: the PF answers RESET|ACK with the permanent MAC in words
  // 1-2 (`reply` gets as many words as it holds, at least 3), or RESET|NACK when it has no MAC
  // for this VF. FAILED_PRECONDITION for a NACK, any other reply, or a MAC that is not unicast.
  absl::StatusOr<MacAddress> Reset(absl::Span<uint32_t> reply);

  // The requests both PFs take, as the PF expects them (FAILED_PRECONDITION on NACK):
  // SET_MAC (the MAC in words 1-2).
  absl::Status SetMac(const MacAddress& mac);
  // SET_MULTICAST: the count in the info field, then one 12-bit MTA hash per address, 16 bits
  // each. `filter_type` (MCSTCTRL.MO, 0..3) picks the address bits hashed: 0 = bits 47:36 ...
  // 3 = bits 43:32. INVALID_ARGUMENT for more than 30 addresses.
  absl::Status SetMulticast(absl::Span<const MacAddress> addrs, uint32_t filter_type);
  // SET_VLAN: info bit 0 = add, word 1 = the id. INVALID_ARGUMENT above 4095.
  absl::Status SetVlan(uint16_t vid, bool add);
  // SET_LPE: word 1 = the largest frame, bytes.
  absl::Status SetLpe(uint32_t bytes);

 private:
  absl::Status CallOnce(absl::Span<const uint32_t> msg, absl::Span<uint32_t> reply);
  Bar* bar_;
  uint32_t mailbox_, mbmem_;
  absl::Duration timeout_;
  const char* driver_;
  uint64_t* messages_;
  uint32_t seen_ = 0;  // read-to-clear bits seen, not yet consumed
};

}  // namespace vfdrivers::net::intel_vf

#endif  // VFBROKER_VFDRIVERS_NET_INTEL_VF_MAILBOX_H_
