#include "vfdrivers/net/af_xdp_socket.h"

#include <fcntl.h>
#include <linux/if_xdp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

namespace vfdrivers::net {
namespace {

using vfbroker::UniqueFd;

absl::Status Errno(const char* what) {
  int e = errno;
  return absl::Status(absl::ErrnoToStatusCode(e), absl::StrCat("AF_XDP setup: ", what, ": ",
                                                                strerror(e)));
}

absl::StatusOr<UniqueFd> MakeUmemMemfd(uint64_t bytes) {
  UniqueFd fd(memfd_create("vfbroker-umem", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return Errno("memfd_create");
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return Errno("ftruncate UMEM");
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return Errno("seal UMEM");
  }
  return fd;
}

absl::Status SetRing(int fd, int option, uint32_t size, const char* name) {
  if (setsockopt(fd, SOL_XDP, option, &size, sizeof(size)) != 0) return Errno(name);
  return absl::OkStatus();
}

}  // namespace

uint16_t AfXdpBindFlags(XdpBindMode mode, bool need_wakeup) {
  const uint16_t wake = need_wakeup ? XDP_USE_NEED_WAKEUP : 0;
  return static_cast<uint16_t>((mode == XdpBindMode::kZeroCopy ? XDP_ZEROCOPY : XDP_COPY) | wake);
}

absl::Status BindAfXdpSocket(int fd, int ifindex, uint32_t queue_id, uint16_t flags) {
  if ((flags & XDP_SHARED_UMEM) != 0) {
    return absl::InvalidArgumentError("AF_XDP bind: XDP_SHARED_UMEM is not for this socket");
  }
  if (ifindex <= 0) return absl::InvalidArgumentError("AF_XDP bind: no ifindex");
  sockaddr_xdp addr{};
  addr.sxdp_family = AF_XDP;
  addr.sxdp_ifindex = static_cast<uint32_t>(ifindex);
  addr.sxdp_queue_id = queue_id;
  addr.sxdp_flags = flags;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    return absl::Status(absl::ErrnoToStatusCode(e),
                        absl::StrCat("AF_XDP bind to ifindex ", ifindex, " queue ", queue_id,
                                     ": ", strerror(e)));
  }
  return absl::OkStatus();
}

absl::StatusOr<AfXdpSocket> CreateAfXdpSocket(const AfXdpSocketOptions& options) {
  AfXdpSocket out;
  out.layout = options.layout;
  out.layout.queue_id = options.queue_id;
  const AfXdpLayout& l = out.layout;
  if (absl::Status s = ValidateAfXdpLayout(l); !s.ok()) return s;
  if (options.ifindex <= 0) return absl::InvalidArgumentError("AF_XDP setup: no ifindex");

  absl::StatusOr<UniqueFd> memfd = MakeUmemMemfd(l.umem_bytes());
  if (!memfd.ok()) return memfd.status();
  out.umem = std::move(*memfd);

  out.socket = UniqueFd(socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0));
  if (!out.socket) return Errno("socket(AF_XDP)");
  const int fd = out.socket.get();

  if (options.mark != 0 &&
      setsockopt(fd, SOL_SOCKET, SO_MARK, &options.mark, sizeof(options.mark)) != 0) {
    return Errno("SO_MARK");
  }

  // "XDP_UMEM_REG setsockopt": the kernel pins [addr, addr+len) and keeps the pages.
  void* area = mmap(nullptr, l.umem_bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    out.umem.get(), 0);
  if (area == MAP_FAILED) return Errno("mmap UMEM");
  xdp_umem_reg reg{};
  reg.addr = reinterpret_cast<uint64_t>(area);
  reg.len = l.umem_bytes();
  reg.chunk_size = l.frame_size;
  reg.headroom = l.frame_headroom;
  reg.flags = 0;  // aligned chunks
  int rc = setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg));
  int reg_errno = errno;
  munmap(area, l.umem_bytes());
  if (rc != 0) {
    errno = reg_errno;
    return Errno("XDP_UMEM_REG");
  }

  if (auto s = SetRing(fd, XDP_UMEM_FILL_RING, l.fill_size, "XDP_UMEM_FILL_RING"); !s.ok()) {
    return s;
  }
  if (auto s = SetRing(fd, XDP_UMEM_COMPLETION_RING, l.completion_size,
                       "XDP_UMEM_COMPLETION_RING");
      !s.ok()) {
    return s;
  }
  if (auto s = SetRing(fd, XDP_RX_RING, l.rx_size, "XDP_RX_RING"); !s.ok()) return s;
  if (auto s = SetRing(fd, XDP_TX_RING, l.tx_size, "XDP_TX_RING"); !s.ok()) return s;

  if (!options.bind) return out;

  const uint16_t wake = l.need_wakeup ? XDP_USE_NEED_WAKEUP : 0;
  auto Bind = [](int fd, int ifindex, uint32_t queue, uint16_t flags) {
    return BindAfXdpSocket(fd, ifindex, queue, flags);
  };
  switch (options.mode) {
    case XdpBindMode::kCopy:
      if (auto s = Bind(fd, options.ifindex, options.queue_id, XDP_COPY | wake); !s.ok()) return s;
      break;
    case XdpBindMode::kZeroCopy:
      if (auto s = Bind(fd, options.ifindex, options.queue_id, XDP_ZEROCOPY | wake); !s.ok()) {
        return s;
      }
      break;
    case XdpBindMode::kAny:
      // A failed bind leaves the socket unbound and reusable ("Usage": bind is the last step).
      if (!Bind(fd, options.ifindex, options.queue_id, XDP_ZEROCOPY | wake).ok()) {
        if (auto s = Bind(fd, options.ifindex, options.queue_id, XDP_COPY | wake); !s.ok()) {
          return s;
        }
      }
      break;
  }

  xdp_options opts{};
  socklen_t len = sizeof(opts);
  if (getsockopt(fd, SOL_XDP, XDP_OPTIONS, &opts, &len) == 0) {
    out.zero_copy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;
  }
  return out;
}

}  // namespace vfdrivers::net
