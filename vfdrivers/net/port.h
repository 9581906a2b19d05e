// net::Port: one receive/transmit queue pair of a network device slice, driven by polling.
//
// What it is for: the tenant side of a NIC grant. The broker hands a tenant descriptors that
// reach one queue of one device (an AF_XDP socket and its UMEM today; an SR-IOV VF's VFIO
// device for igbvf / ixgbevf / virtio-net later); a Port built from them moves Ethernet frames
// with no system call per packet (at most one wakeup per burst where the device asks for it).
//
// Buffers: every frame lives in a buffer of the port's own pool (memory the device can reach:
// the UMEM for AF_XDP, DMA-mapped memory for a VF). A PacketBuffer names one such buffer:
// its address in this process, its device address (IOVA or UMEM offset), the frame's length,
// the room the buffer has, and the pool that owns it. Nothing is copied between the device
// and the caller.
//
// Ownership: RxBurst and AllocBurst hand buffers to the caller. The caller gives each one back
// exactly once, either with FreeBurst (drop it) or with TxBurst (send it; the port takes it
// back when the device has sent it). A received buffer may be transmitted as is (forwarding,
// echo). A buffer that is not the port's, or is already back, is refused and counted
// (stats().bad_buffers), never used.
//
// Fast path: RxBurst, TxBurst, AllocBurst and FreeBurst return counts, never allocate, never
// take a lock and never block; only setup (a driver's Create) is fallible with absl::Status.
//
// Thread safety: none. One port, one thread (one queue per thread); use one port per queue to
// scale across cores. A port may be moved between threads only with external synchronization.
#ifndef VFBROKER_VFDRIVERS_NET_PORT_H_
#define VFBROKER_VFDRIVERS_NET_PORT_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace vfdrivers::net {

// One packet buffer. Plain data: copying it does not copy the frame, only the handle; give the
// handle back once (see above).
struct PacketBuffer {
  // First byte of the frame (the Ethernet header) in this process.
  uint8_t* data = nullptr;
  // Device address of `data`: an IOVA (VFIO drivers) or an offset into the UMEM (AF_XDP).
  uint64_t device_address = 0;
  // Bytes of frame at `data`. Set by RxBurst; set it before TxBurst.
  uint32_t length = 0;
  // Bytes from `data` to the end of the buffer: the largest `length` this buffer can carry.
  uint32_t capacity = 0;
  // Index of the buffer in its pool (0 .. pool size - 1); a tag for per-buffer side tables.
  uint32_t index = 0;
  // The pool that owns the buffer (opaque identity, compared by the port on return).
  const void* pool = nullptr;
};

struct PortInfo {
  uint32_t queue_id = 0;           // device queue this port drives
  uint32_t buffer_count = 0;       // buffers in the pool
  uint32_t buffer_capacity = 0;    // PacketBuffer::capacity of a buffer from AllocBurst
                                   // (received ones may have less: the device's headroom)
  uint32_t rx_ring_size = 0;       // most frames the device can hold for RxBurst
  uint32_t tx_ring_size = 0;       // most frames in flight to the device
  bool zero_copy = false;          // the device DMAs into the buffers (else the kernel copies)
};

// Monotonic counters; read them from the port's own thread.
struct PortStats {
  uint64_t rx_packets = 0;
  uint64_t rx_bytes = 0;
  uint64_t tx_packets = 0;         // accepted by TxBurst
  uint64_t tx_bytes = 0;
  uint64_t tx_completed = 0;       // reported sent by the device and returned to the pool
  uint64_t tx_ring_full = 0;       // frames TxBurst could not queue (caller still owns them)
  uint64_t alloc_failed = 0;       // AllocBurst requests left unfilled (pool empty)
  uint64_t bad_buffers = 0;        // caller returned a foreign, stale or oversized buffer
  uint64_t bad_descriptors = 0;    // the device/kernel reported an address or length outside
                                   // the pool, or a buffer it did not own: dropped, not read
  uint64_t wakeups = 0;            // system calls made to wake the device (RX and TX)
  uint64_t wakeup_errors = 0;      // of which failed (other than EAGAIN/EBUSY/ENOBUFS)
};

class Port {
 public:
  virtual ~Port() = default;

  virtual const PortInfo& info() const = 0;
  virtual const PortStats& stats() const = 0;

  // Receives up to out.size() frames without blocking; returns how many were written to
  // out[0..n). The caller owns them (give each back with FreeBurst or TxBurst). Also keeps the
  // device supplied with empty buffers and reclaims transmitted ones.
  virtual size_t RxBurst(absl::Span<PacketBuffer> out) = 0;

  // Queues frames for transmission, in order, and wakes the device if it needs it. Returns n:
  // pkts[0..n) now belong to the port; pkts[n..) were not queued (ring full) and still belong
  // to the caller. A buffer that is not the port's or whose length exceeds its capacity stops
  // the burst there and is counted as bad (the caller keeps it too).
  virtual size_t TxBurst(absl::Span<const PacketBuffer> pkts) = 0;

  // Takes up to out.size() free buffers (length 0) for building frames; returns how many.
  virtual size_t AllocBurst(absl::Span<PacketBuffer> out) = 0;

  // Gives buffers back to the pool; returns how many were accepted (bad ones are counted).
  virtual size_t FreeBurst(absl::Span<const PacketBuffer> bufs) = 0;

  // Reclaims buffers the device has finished transmitting and refills the device's receive
  // buffers, without receiving. RxBurst and TxBurst do this too; call it when only idling.
  virtual void Service() = 0;
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_PORT_H_
