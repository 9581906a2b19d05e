// BufferPool: the application side of a VFIO NIC driver's packet-buffer pool, shared by the
// igbvf, ixgbevf and virtio-net drivers.
//
// A driver carves one DMA-mapped area into `count` buffers of kBufferSize bytes (buffer b at
// base + b * kBufferSize, device address iova + b * kBufferSize); a PacketBuffer's data starts
// kHeadroom bytes into its buffer. The pool keeps
//   - a free stack of buffer ids (free_stack()[0, free_count()), the top is popped first), and
//   - one byte per buffer saying whether the caller (the application) holds it.
// Only "held by the caller" is ever checked: a buffer on an RX ring, in flight on TX or in the
// free stack is merely "not the caller's", so the drivers' refill and reclaim loops move ids
// without writing the table. Alloc / Free are the drivers' AllocBurst / FreeBurst; Free and
// the drivers' TxBurst refuse (and count) foreign, stale, double-returned and oversized buffers.
//
// The fast paths (RxBurst / TxBurst) use the raw tables (free_stack(), set_free_count(),
// caller_table()) in local pointers, exactly as they did with their own vectors: everything is
// inline and the data layout is the same, so sharing costs no instruction.
//
// Thread safety: none; it belongs to one port, used from that port's thread.
#ifndef VFBROKER_VFDRIVERS_NET_BUFFER_POOL_H_
#define VFBROKER_VFDRIVERS_NET_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/types/span.h"
#include "vfdrivers/net/port.h"

namespace vfdrivers::net {

template <uint32_t kBufferSize, uint32_t kHeadroom = 0>
class BufferPool {
 public:
  static_assert(kHeadroom < kBufferSize, "headroom must leave room for a frame");
  // PacketBuffer::capacity of a buffer from Alloc.
  static constexpr uint32_t kCapacity = kBufferSize - kHeadroom;
  // caller_table() values.
  static constexpr uint8_t kNotCaller = 0, kCaller = 1;

  BufferPool() = default;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // All `count` buffers free, buffer 0 first out. `owner` is what PacketBuffer::pool names (the
  // port); buffers whose `pool` is anything else are refused.
  void Init(const void* owner, uint8_t* base, uint64_t iova, uint32_t count) {
    owner_ = owner;
    base_ = base;
    iova_ = iova;
    caller_.assign(count, kNotCaller);
    free_.resize(count);
    for (uint32_t i = 0; i < count; ++i) free_[i] = count - 1 - i;
    top_ = count;
  }

  uint32_t count() const { return static_cast<uint32_t>(free_.size()); }
  uint32_t free_count() const { return top_; }
  uint8_t* base() const { return base_; }
  uint64_t iova() const { return iova_; }

  // ---- Raw access for the fast paths (the driver keeps the tables consistent) ----
  uint32_t* free_stack() { return free_.data(); }
  void set_free_count(uint32_t n) { top_ = n; }
  uint8_t* caller_table() { return caller_.data(); }
  // A buffer that never reached the caller goes back (its table entry is already kNotCaller).
  void Push(uint32_t b) { free_[top_++] = b; }
  // Buffer ids ring[from, from + count) of a ring of `ring_size` slots, wrapping at most once,
  // go back in (at most) two block copies: the slots a TX ring finished. Their table entries are
  // already kNotCaller. The caller checked count <= ring_size and from < ring_size.
  void PushRingRun(const uint32_t* ring, uint32_t ring_size, uint32_t from, uint32_t count) {
    const uint32_t first = count < ring_size - from ? count : ring_size - from;
    uint32_t* dst = free_.data() + top_;
    std::memcpy(dst, ring + from, size_t{first} * sizeof(uint32_t));
    std::memcpy(dst + first, ring, size_t{count - first} * sizeof(uint32_t));
    top_ += count;
  }

  // Ours, held by the caller, data inside its buffer, length within what follows data.
  bool CallerHolds(const PacketBuffer& p) const {
    if (p.pool != owner_ || p.index >= count() || caller_[p.index] != kCaller) return false;
    const uintptr_t off = reinterpret_cast<uintptr_t>(p.data) -
                          reinterpret_cast<uintptr_t>(base_ + size_t{p.index} * kBufferSize);
    return off < kBufferSize && p.length <= kBufferSize - off;
  }

  // Hands up to out.size() free buffers to the caller (length 0, capacity kCapacity); what it
  // cannot fill is counted in stats->alloc_failed. Returns how many it filled.
  size_t Alloc(absl::Span<PacketBuffer> out, PortStats* stats) {
    const size_t n = out.size() < top_ ? out.size() : top_;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t b = free_[--top_];
      caller_[b] = kCaller;
      PacketBuffer& p = out[i];
      p.data = base_ + size_t{b} * kBufferSize + kHeadroom;
      p.device_address = iova_ + uint64_t{b} * kBufferSize + kHeadroom;
      p.length = 0;
      p.capacity = kCapacity;
      p.index = b;
      p.pool = owner_;
    }
    stats->alloc_failed += out.size() - n;
    return n;
  }

  // Takes back the buffers the caller holds (CallerHolds); every other one is counted in
  // stats->bad_buffers and left alone. Returns how many it took.
  size_t Free(absl::Span<const PacketBuffer> bufs, PortStats* stats) {
    size_t taken = 0;
    for (const PacketBuffer& p : bufs) {
      if (!CallerHolds(p)) {
        ++stats->bad_buffers;
        continue;
      }
      caller_[p.index] = kNotCaller;
      free_[top_++] = p.index;
      ++taken;
    }
    return taken;
  }

 private:
  const void* owner_ = nullptr;
  uint8_t* base_ = nullptr;
  uint64_t iova_ = 0;
  std::vector<uint8_t> caller_;  // buffer id -> kCaller / kNotCaller
  std::vector<uint32_t> free_;   // stack of buffer ids, [0, top_)
  uint32_t top_ = 0;
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_BUFFER_POOL_H_
