#include "vfdrivers/net/af_xdp_layout.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace vfdrivers::net {
namespace {

bool PowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

absl::Status ValidateAfXdpLayout(const AfXdpLayout& l) {
  const long page = sysconf(_SC_PAGESIZE);
  if (!PowerOfTwo(l.frame_size) || l.frame_size < 2048 || l.frame_size > uint64_t(page)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AF_XDP layout: frame_size ", l.frame_size,
                     " must be a power of two in [2048, page size]"));
  }
  // The kernel keeps XDP_PACKET_HEADROOM in front of received data and needs room for a frame.
  if (l.frame_headroom > l.frame_size - kXdpPacketHeadroom - 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("AF_XDP layout: frame_headroom ", l.frame_headroom, " too large"));
  }
  if (l.frame_count == 0 || l.frame_count > (1u << 24)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AF_XDP layout: frame_count ", l.frame_count, " out of range"));
  }
  for (auto [name, size] : {std::pair<const char*, uint32_t>{"fill_size", l.fill_size},
                            {"completion_size", l.completion_size},
                            {"rx_size", l.rx_size},
                            {"tx_size", l.tx_size}}) {
    if (!PowerOfTwo(size) || size > (1u << 20)) {
      return absl::InvalidArgumentError(
          absl::StrCat("AF_XDP layout: ", name, " ", size, " must be a power of two <= 2^20"));
    }
  }
  // Every frame the port sends can complete at once: the completion ring must hold the TX ring.
  if (l.completion_size < l.tx_size) {
    return absl::InvalidArgumentError("AF_XDP layout: completion_size < tx_size");
  }
  return absl::OkStatus();
}

}  // namespace vfdrivers::net
