#include "vfdrivers/net/xdp_program.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace vfdrivers::net {
namespace {

absl::Status LibbpfError(const std::string& what, int err) {
  if (err < 0) err = -err;
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat("XDP program: ", what, ": ", strerror(err)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<XdpProgram>> XdpProgram::Load(const unsigned char* object,
                                                               size_t size,
                                                               const std::string& program) {
  std::unique_ptr<XdpProgram> p(new XdpProgram());
  p->object_ = bpf_object__open_mem(object, size, nullptr);
  if (p->object_ == nullptr) return LibbpfError("open object", errno);
  if (int err = bpf_object__load(p->object_); err != 0) return LibbpfError("load", err);
  bpf_program* prog = bpf_object__find_program_by_name(p->object_, program.c_str());
  if (prog == nullptr) return absl::NotFoundError(absl::StrCat("XDP program: no ", program));
  p->program_fd_ = bpf_program__fd(prog);
  return p;
}

absl::Status XdpProgram::AttachTo(int ifindex, XdpAttachMode mode) {
  if (attached_ || ifindex_ != 0) {
    return absl::FailedPreconditionError("XDP program: attached already");
  }
  auto try_attach = [&](uint32_t mode_flag) {
    uint32_t flags = XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flag;
    int err = bpf_xdp_attach(ifindex, program_fd_, flags, nullptr);
    if (err == 0) {
      ifindex_ = ifindex;
      attach_flags_ = mode_flag;
      attached_ = true;
    }
    return err;
  };
  int err = 0;
  switch (mode) {
    case XdpAttachMode::kNative:
      err = try_attach(XDP_FLAGS_DRV_MODE);
      break;
    case XdpAttachMode::kGeneric:
      err = try_attach(XDP_FLAGS_SKB_MODE);
      generic_ = true;
      break;
    case XdpAttachMode::kAuto:
      err = try_attach(XDP_FLAGS_DRV_MODE);
      if (err != 0) {
        err = try_attach(XDP_FLAGS_SKB_MODE);
        generic_ = true;
      }
      break;
  }
  if (err != 0) return LibbpfError(absl::StrCat("attach to ifindex ", ifindex), err);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<XdpProgram>> XdpProgram::Attach(const unsigned char* object,
                                                                 size_t size,
                                                                 const std::string& program,
                                                                 int ifindex,
                                                                 XdpAttachMode mode) {
  absl::StatusOr<std::unique_ptr<XdpProgram>> p = Load(object, size, program);
  if (!p.ok()) return p.status();
  if (absl::Status s = (*p)->AttachTo(ifindex, mode); !s.ok()) return s;
  return p;
}

XdpProgram::~XdpProgram() {
  if (attached_) {
    // Detach only if our program is still the one attached.
    LIBBPF_OPTS(bpf_xdp_attach_opts, opts, .old_prog_fd = program_fd_);
    bpf_xdp_detach(ifindex_, attach_flags_ | XDP_FLAGS_REPLACE, &opts);
  }
  if (object_ != nullptr) bpf_object__close(object_);
}

absl::StatusOr<int> XdpProgram::MapFd(const std::string& map) const {
  bpf_map* m = bpf_object__find_map_by_name(object_, map.c_str());
  if (m == nullptr) return absl::NotFoundError(absl::StrCat("XDP program: no map ", map));
  return bpf_map__fd(m);
}

absl::Status XdpProgram::SetXsk(const std::string& map, uint32_t queue, int xsk_fd) {
  absl::StatusOr<int> fd = MapFd(map);
  if (!fd.ok()) return fd.status();
  uint32_t value = static_cast<uint32_t>(xsk_fd);
  if (bpf_map_update_elem(*fd, &queue, &value, BPF_ANY) != 0) {
    return LibbpfError(absl::StrCat("xskmap[", queue, "]"), errno);
  }
  return absl::OkStatus();
}

absl::Status XdpProgram::ClearXsk(const std::string& map, uint32_t queue) {
  absl::StatusOr<int> fd = MapFd(map);
  if (!fd.ok()) return fd.status();
  if (bpf_map_delete_elem(*fd, &queue) != 0 && errno != ENOENT) {
    return LibbpfError(absl::StrCat("delete xskmap[", queue, "]"), errno);
  }
  return absl::OkStatus();
}

}  // namespace vfdrivers::net
