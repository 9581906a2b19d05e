#include "broker/backends/nvme_admin.h"

#include <fcntl.h>
#include <linux/nvme_ioctl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/unique_fd.h"

namespace vfbroker::nvme_admin {
namespace {

uint16_t Le16(absl::Span<const uint8_t> d, size_t at) {
  return static_cast<uint16_t>(d[at] | d[at + 1] << 8);
}
uint32_t Le32(absl::Span<const uint8_t> d, size_t at) {
  return uint32_t{d[at]} | uint32_t{d[at + 1]} << 8 | uint32_t{d[at + 2]} << 16 |
         uint32_t{d[at + 3]} << 24;
}
uint64_t Le64(absl::Span<const uint8_t> d, size_t at) {
  return uint64_t{Le32(d, at)} | uint64_t{Le32(d, at + 4)} << 32;
}

absl::Status CheckLength(absl::Span<const uint8_t> data, const char* what) {
  if (data.size() < kIdentifyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": reply of ", data.size(),
                                                   " bytes, want ", kIdentifyBytes));
  }
  return absl::OkStatus();
}

class KernelAdminChannel : public AdminChannel {
 public:
  KernelAdminChannel(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  absl::Status Run(const Command& command, absl::Span<uint8_t> data) override {
    nvme_admin_cmd cmd;
    std::memset(&cmd, 0, sizeof(cmd));
    cmd.opcode = command.opcode;
    cmd.nsid = command.nsid;
    cmd.cdw10 = command.cdw10;
    cmd.cdw11 = command.cdw11;
    cmd.addr = reinterpret_cast<uintptr_t>(data.data());
    cmd.data_len = static_cast<uint32_t>(data.size());
    cmd.timeout_ms = 10000;
    const int r = ::ioctl(fd_.get(), NVME_IOCTL_ADMIN_CMD, &cmd);
    if (r < 0) {
      const int err = errno;
      return absl::ErrnoToStatus(
          err, absl::StrFormat("%s: NVME_IOCTL_ADMIN_CMD opcode %02xh: %s", path_,
                               command.opcode, std::strerror(err)));
    }
    if (r > 0) {
      // The kernel returns the completion's status field (SCT << 8 | SC, plus DNR/More bits).
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: admin opcode %02xh (cdw10 %08x, nsid %u): NVMe status 0x%x", path_,
          command.opcode, command.cdw10, command.nsid, r));
    }
    return absl::OkStatus();
  }

 private:
  UniqueFd fd_;
  std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AdminChannel>> OpenKernelAdminChannel(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("open ", path, ": ", std::strerror(err)));
  }
  return std::unique_ptr<AdminChannel>(new KernelAdminChannel(std::move(fd), path));
}

Command Identify(uint32_t cns, uint32_t nsid, uint16_t cntid) {
  Command c;
  c.opcode = kOpIdentify;
  c.nsid = nsid;
  c.cdw10 = (cns & 0xff) | uint32_t{cntid} << 16;
  return c;
}

Command VirtualizationManagement(VirtAction act, VirtResource rt, uint16_t cntlid, uint16_t nr) {
  Command c;
  c.opcode = kOpVirtualizationManagement;
  c.cdw10 = (static_cast<uint32_t>(act) & 0xf) | (static_cast<uint32_t>(rt) & 0x7) << 8 |
            uint32_t{cntlid} << 16;
  c.cdw11 = nr;
  return c;
}

Command NamespaceAttachment(uint32_t nsid, bool detach) {
  Command c;
  c.opcode = kOpNamespaceAttachment;
  c.nsid = nsid;
  c.cdw10 = detach ? 1 : 0;
  return c;
}

void ControllerListData(absl::Span<const uint16_t> controllers, absl::Span<uint8_t> data) {
  std::memset(data.data(), 0, data.size());
  const size_t n = std::min<size_t>(controllers.size(), (data.size() - 2) / 2);
  data[0] = static_cast<uint8_t>(n);
  data[1] = static_cast<uint8_t>(n >> 8);
  for (size_t i = 0; i < n; ++i) {
    data[2 + 2 * i] = static_cast<uint8_t>(controllers[i]);
    data[3 + 2 * i] = static_cast<uint8_t>(controllers[i] >> 8);
  }
}

absl::StatusOr<PrimaryCapabilities> ParsePrimaryCapabilities(absl::Span<const uint8_t> d) {
  if (absl::Status s = CheckLength(d, "Primary Controller Capabilities"); !s.ok()) return s;
  PrimaryCapabilities caps;
  caps.cntlid = Le16(d, 0);
  caps.vq_flexible_total = Le32(d, 32);
  caps.vq_assigned_secondary = Le32(d, 36);
  caps.vq_flexible_primary = Le16(d, 40);
  caps.vq_secondary_max = Le16(d, 44);
  caps.vi_flexible_total = Le32(d, 64);
  caps.vi_assigned_secondary = Le32(d, 68);
  caps.vi_flexible_primary = Le16(d, 72);
  caps.vi_secondary_max = Le16(d, 76);
  if (caps.cntlid > 0xffef) {  // CNTLIDs FFF0h..FFFFh are reserved
    return absl::FailedPreconditionError(
        absl::StrCat("Primary Controller Capabilities: reserved CNTLID ", caps.cntlid));
  }
  return caps;
}

absl::StatusOr<std::vector<SecondaryController>> ParseSecondaryList(
    absl::Span<const uint8_t> d) {
  if (absl::Status s = CheckLength(d, "Secondary Controller List"); !s.ok()) return s;
  const size_t count = d[0];
  if (count > 127) {
    return absl::FailedPreconditionError(
        absl::StrCat("Secondary Controller List: ", count, " entries, at most 127 fit"));
  }
  std::vector<SecondaryController> list;
  for (size_t i = 0; i < count; ++i) {
    const size_t at = 32 + 32 * i;
    SecondaryController c;
    c.scid = Le16(d, at);
    c.pcid = Le16(d, at + 2);
    c.online = (d[at + 4] & 1) != 0;
    c.vfn = Le16(d, at + 8);
    c.nvq = Le16(d, at + 10);
    c.nvi = Le16(d, at + 12);
    list.push_back(c);
  }
  return list;
}

absl::StatusOr<std::vector<uint16_t>> ParseControllerList(absl::Span<const uint8_t> d) {
  if (absl::Status s = CheckLength(d, "Controller List"); !s.ok()) return s;
  const size_t count = Le16(d, 0);
  if (count > 2047) {
    return absl::FailedPreconditionError(
        absl::StrCat("Controller List: ", count, " entries, at most 2047 fit"));
  }
  std::vector<uint16_t> ids;
  for (size_t i = 0; i < count; ++i) ids.push_back(Le16(d, 2 + 2 * i));
  return ids;
}

absl::StatusOr<NamespaceFacts> ParseAllocatedNamespace(absl::Span<const uint8_t> d) {
  if (absl::Status s = CheckLength(d, "Identify Namespace"); !s.ok()) return s;
  NamespaceFacts facts;
  facts.blocks = Le64(d, 0);
  if (facts.blocks == 0) return facts;  // not allocated
  facts.allocated = true;
  const uint32_t nlbaf = d[25];  // 0's based
  const uint32_t flbas = d[26];
  // FLBAS bits 3:0, with bits 6:5 as the upper bits when more than 16 formats exist.
  const uint32_t index = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
  if (index > nlbaf || index >= 64) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Identify Namespace: LBA format ", index, " selected, but NLBAF is ", nlbaf));
  }
  const uint32_t lbads = d[128 + 4 * index + 2];
  if (lbads < 9 || lbads > 16) {
    return absl::FailedPreconditionError(
        absl::StrCat("Identify Namespace: LBA data size 2^", lbads, " outside 512 B..64 KiB"));
  }
  facts.block_size = uint32_t{1} << lbads;
  if (facts.blocks > (~uint64_t{0} >> lbads)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Identify Namespace: ", facts.blocks, " blocks overflow a byte count"));
  }
  facts.bytes = facts.blocks << lbads;
  facts.may_be_shared = (d[30] & 1) != 0;
  return facts;
}

absl::StatusOr<PrimaryCapabilities> GetPrimaryCapabilities(AdminChannel& admin) {
  std::vector<uint8_t> data(kIdentifyBytes);
  if (absl::Status s = admin.Run(Identify(kCnsPrimaryCapabilities), absl::MakeSpan(data));
      !s.ok()) {
    return s;
  }
  return ParsePrimaryCapabilities(data);
}

absl::StatusOr<std::vector<SecondaryController>> GetSecondaryList(AdminChannel& admin) {
  std::vector<uint8_t> data(kIdentifyBytes);
  if (absl::Status s = admin.Run(Identify(kCnsSecondaryList), absl::MakeSpan(data)); !s.ok()) {
    return s;
  }
  return ParseSecondaryList(data);
}

absl::StatusOr<std::vector<uint16_t>> GetNamespaceControllers(AdminChannel& admin,
                                                              uint32_t nsid) {
  std::vector<uint8_t> data(kIdentifyBytes);
  if (absl::Status s = admin.Run(Identify(kCnsNamespaceControllers, nsid), absl::MakeSpan(data));
      !s.ok()) {
    return s;
  }
  return ParseControllerList(data);
}

absl::StatusOr<NamespaceFacts> GetAllocatedNamespace(AdminChannel& admin, uint32_t nsid) {
  std::vector<uint8_t> data(kIdentifyBytes);
  if (absl::Status s = admin.Run(Identify(kCnsAllocatedNamespace, nsid), absl::MakeSpan(data));
      !s.ok()) {
    return s;
  }
  return ParseAllocatedNamespace(data);
}

absl::Status Virt(AdminChannel& admin, VirtAction act, VirtResource rt, uint16_t cntlid,
                  uint16_t nr) {
  return admin.Run(VirtualizationManagement(act, rt, cntlid, nr), {});
}

absl::Status AttachNamespace(AdminChannel& admin, uint32_t nsid, uint16_t cntlid, bool detach) {
  std::vector<uint8_t> data(kIdentifyBytes);
  const uint16_t list[] = {cntlid};
  ControllerListData(list, absl::MakeSpan(data));
  return admin.Run(NamespaceAttachment(nsid, detach), absl::MakeSpan(data));
}

}  // namespace vfbroker::nvme_admin
