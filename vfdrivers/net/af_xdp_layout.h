// AfXdpLayout: how an AF_XDP socket and its UMEM were set up, the numbers the broker creates
// them with (AfXdpSocket, as root) and sends along with the two descriptors, and that the
// tenant's AfXdpPort needs to map the rings. The kernel does not report ring sizes or the
// chunk geometry back through the socket, so they travel with the descriptors.
//
// The UMEM is aligned mode (Documentation/networking/af_xdp.rst, "UMEM"): frame_count chunks
// of frame_size bytes, frame_size a power of two from 2048 to the page size, headroom bytes
// reserved at the start of every chunk. Ring sizes are powers of two ("XDP_{RX|TX|UMEM_FILL|
// UMEM_COMPLETION}_RING setsockopts").
#ifndef VFBROKER_VFDRIVERS_NET_AF_XDP_LAYOUT_H_
#define VFBROKER_VFDRIVERS_NET_AF_XDP_LAYOUT_H_

#include <cstdint>

#include "absl/status/status.h"

namespace vfdrivers::net {

struct AfXdpLayout {
  uint32_t frame_size = 4096;
  uint32_t frame_count = 4096;
  uint32_t frame_headroom = 0;  // XDP_UMEM_REG headroom
  uint32_t fill_size = 2048;
  uint32_t completion_size = 2048;
  uint32_t rx_size = 2048;
  uint32_t tx_size = 2048;
  // The socket was bound with XDP_USE_NEED_WAKEUP: the kernel sets XDP_RING_NEED_WAKEUP on the
  // fill / TX ring when it needs a system call. Without it the port kicks TX on every burst.
  bool need_wakeup = true;
  uint32_t queue_id = 0;  // informational (PortInfo)

  uint64_t umem_bytes() const { return uint64_t{frame_size} * frame_count; }
};

// Checks the invariants above (and that the rings can hold the frames they are given):
// INVALID_ARGUMENT naming the first one broken.
absl::Status ValidateAfXdpLayout(const AfXdpLayout& layout);

// Kernel's XDP_PACKET_HEADROOM (include/linux/netdevice.h... uapi: 256), which the kernel keeps
// in front of received data in every chunk in copy mode and in most zero-copy drivers.
inline constexpr uint32_t kXdpPacketHeadroom = 256;

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_AF_XDP_LAYOUT_H_
