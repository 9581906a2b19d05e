// XdpProgram: an XDP program (an embedded BPF object, see xdp/bpf_object.bzl) loaded with
// libbpf and attached to one network device, detached again when the object is destroyed.
// Loading (open + verify, the expensive part: milliseconds) and attaching are separate steps,
// so a loaded program can wait, unattached, until a device needs it; it is then only
// descriptors in this process and goes away with it.
// The broker's side (root: CAP_NET_ADMIN, CAP_BPF or CAP_SYS_ADMIN); tenants never see its
// descriptors. Used today by the host tests to steer a device's queues into AF_XDP sockets.
//
// Attaching uses XDP_FLAGS_UPDATE_IF_NOEXIST (never replaces somebody else's program) and
// detaching names this program (XDP_FLAGS_REPLACE with its fd), so two owners cannot undo each
// other's attachment. Thread-compatible.
#ifndef VFBROKER_VFDRIVERS_NET_XDP_PROGRAM_H_
#define VFBROKER_VFDRIVERS_NET_XDP_PROGRAM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct bpf_object;

namespace vfdrivers::net {

enum class XdpAttachMode {
  kNative,   // XDP_FLAGS_DRV_MODE: in the driver (veth has it)
  kGeneric,  // XDP_FLAGS_SKB_MODE: after the skb is built, on any device (macvlan)
  kAuto,     // native, else generic
};

class XdpProgram {
 public:
  // Opens the ELF object in [object, object+size) and loads it (the kernel verifies it);
  // `program` must be one of its programs. Attached to nothing yet.
  static absl::StatusOr<std::unique_ptr<XdpProgram>> Load(const unsigned char* object,
                                                           size_t size,
                                                           const std::string& program);
  // Attaches the loaded program to `ifindex` (once: FAILED_PRECONDITION if attached already).
  absl::Status AttachTo(int ifindex, XdpAttachMode mode);
  // Load, then AttachTo.
  static absl::StatusOr<std::unique_ptr<XdpProgram>> Attach(const unsigned char* object,
                                                             size_t size,
                                                             const std::string& program,
                                                             int ifindex, XdpAttachMode mode);
  ~XdpProgram();
  XdpProgram(const XdpProgram&) = delete;
  XdpProgram& operator=(const XdpProgram&) = delete;

  // Descriptor of the named map, or NOT_FOUND.
  absl::StatusOr<int> MapFd(const std::string& map) const;
  // xskmap[queue] = xsk_fd (a BPF_MAP_TYPE_XSKMAP named `map`).
  absl::Status SetXsk(const std::string& map, uint32_t queue, int xsk_fd);
  absl::Status ClearXsk(const std::string& map, uint32_t queue);

  // Leaves the program attached when this object is destroyed (it keeps running without us).
  void LeaveAttached() { attached_ = false; }

  bool attached() const { return attached_; }
  bool generic() const { return generic_; }
  int program_fd() const { return program_fd_; }

 private:
  XdpProgram() = default;

  bpf_object* object_ = nullptr;
  int program_fd_ = -1;
  int ifindex_ = 0;
  uint32_t attach_flags_ = 0;
  bool generic_ = false;
  bool attached_ = false;
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_XDP_PROGRAM_H_
