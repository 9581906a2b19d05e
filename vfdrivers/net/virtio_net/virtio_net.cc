// Virtio-net driver: see virtio_net.h. STUB: the API compiles; Create returns UNIMPLEMENTED.
#include "vfdrivers/net/virtio_net/virtio_net.h"

namespace vfdrivers::net::virtio_net {

absl::StatusOr<std::unique_ptr<Transport>> OpenVfioTransport(vfio::VfioDevice& device) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}

absl::StatusOr<std::unique_ptr<VirtioNetPort>> VirtioNetPort::Create(vfio::VfioDevice& device,
                                                                     const Options& options) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}

absl::StatusOr<std::unique_ptr<VirtioNetPort>> VirtioNetPort::Create(
    std::unique_ptr<Transport> transport, const Options& options) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}

VirtioNetPort::~VirtioNetPort() = default;
size_t VirtioNetPort::RxBurst(absl::Span<PacketBuffer>) { return 0; }
size_t VirtioNetPort::TxBurst(absl::Span<const PacketBuffer>) { return 0; }
size_t VirtioNetPort::AllocBurst(absl::Span<PacketBuffer>) { return 0; }
size_t VirtioNetPort::FreeBurst(absl::Span<const PacketBuffer>) { return 0; }
void VirtioNetPort::Service() {}
absl::Status VirtioNetPort::SetMac(const std::array<uint8_t, 6>&) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}
absl::Status VirtioNetPort::SetPromiscuous(bool) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}
bool VirtioNetPort::link_up() { return false; }
absl::Status VirtioNetPort::WaitForLink(absl::Duration) {
  return absl::UnimplementedError("virtio_net: not implemented yet");
}

}  // namespace vfdrivers::net::virtio_net
