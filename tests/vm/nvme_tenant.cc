// nvme_tenant: a tenant of an nvme_sriov pool, for the guest scenario broker_nvme.sh.
//
// Connects to vfbrokerd with libvfclient, allocates an extent (a VF with its own namespace),
// adopts the VFIO descriptors it was sent, brings the VF's controller up with the project's
// polling NVMe driver, checks the namespace reads zeroes (a previous tenant's data was
// scrubbed), writes a pattern derived from --seed and reads it back.
//
//   nvme_tenant [--uid=N [--gid=N]]   (as root: raise RLIMIT_MEMLOCK to 64 MiB, then drop)
//               [--socket_dir=/run/vfbroker] [--pool=nvme] [--seed=S]
//               [--hold | --hold_device_only | --release] [--no_expect_zeroes]
//
// Prints "TENANT OK lease=<id> vf=<bdf> nsid=<n> group=<path> uid=<uid>" on success (with
// --hold, then "HOLDING" and sleeps until killed), "TENANT FAIL: <why>" and exits 1 otherwise.
// --hold_device_only: closes every descriptor but the VFIO device's (not adopting), releases
// the lease and sleeps: the broker must keep the slice quarantined while that one fd lives.
// --escape_nsid=N --escape_cntlid=C (C: its own controller): after its I/O, asks its own VF's
// controller to attach namespace N to controller C (Namespace Attachment; detached again if
// accepted) and to give C a queue resource (Virtualization Management).
// --steal_nsid=N --steal_cntlid=C2: asks it to detach namespace N from controller C2 (another
// tenant's), attach it to its own and read it (and puts everything back). Each attempt prints
// "ESCAPE <what>: ACCEPTED|refused (...)"; the scenario judges.
// --peek=<path>: first tries to open <path> (another tenant's /dev/vfio/<group>) and prints
// "PEEK <path> errno=<name>" or "PEEK <path> OPENED" (which is a failure).
#include <fcntl.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/broker_client.h"
#include "vfdrivers/block/nvme/nvme_controller.h"
#include "vfdrivers/block/nvme/nvme_transport.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace {

namespace nvme = vfdrivers::block::nvme;
using vfdrivers::block::Completion;
using vfdrivers::block::CompletionStatus;
using vfdrivers::block::Queue;

constexpr uint32_t kChunk = 64 * 1024;
constexpr uint64_t kPatternBytes = 2 << 20;  // written and verified at the start ...
constexpr int kSamples = 16;                  // ... and at this many places spread over the rest

int Fail(const std::string& why) {
  std::printf("TENANT FAIL: %s\n", why.c_str());
  std::fflush(stdout);
  return 1;
}

absl::Status Run1(Queue& q, bool write, uint64_t offset, void* buffer, uint32_t length) {
  absl::Status staged = write ? q.Write(offset, buffer, length, 1) : q.Read(offset, buffer, length, 1);
  if (!staged.ok()) return staged;
  absl::StatusOr<uint32_t> submitted = q.Submit();
  if (!submitted.ok()) return submitted.status();
  Completion done[1];
  while (q.Poll(absl::MakeSpan(done)) == 0) {
  }
  return CompletionStatus(done[0]);
}

uint8_t PatternByte(uint32_t seed, uint64_t offset) {
  return static_cast<uint8_t>((offset / 512 * 131 + seed * 7 + 1) | 1);  // never zero
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_dir = "/run/vfbroker", pool = "nvme", peek;
  uint32_t seed = 1, uid = 0, gid = 0, escape_nsid = 0, escape_cntlid = 0, steal_nsid = 0,
           steal_cntlid = 0;
  bool hold = false, hold_device_only = false, release = false, expect_zeroes = true;
  bool drop = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = absl::StrCat("--", name, "=");
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("socket_dir")) socket_dir = v;
    else if (const char* v = value("pool")) pool = v;
    else if (const char* v = value("peek")) peek = v;
    else if (const char* v = value("seed")) (void)absl::SimpleAtoi(v, &seed);
    else if (const char* v = value("uid")) drop = absl::SimpleAtoi(v, &uid);
    else if (const char* v = value("gid")) (void)absl::SimpleAtoi(v, &gid);
    else if (const char* v = value("escape_nsid")) (void)absl::SimpleAtoi(v, &escape_nsid);
    else if (const char* v = value("escape_cntlid")) (void)absl::SimpleAtoi(v, &escape_cntlid);
    else if (const char* v = value("steal_nsid")) (void)absl::SimpleAtoi(v, &steal_nsid);
    else if (const char* v = value("steal_cntlid")) (void)absl::SimpleAtoi(v, &steal_cntlid);
    else if (arg == "--hold") hold = true;
    else if (arg == "--hold_device_only") hold_device_only = true;
    else if (arg == "--release") release = true;
    else if (arg == "--no_expect_zeroes") expect_zeroes = false;
    else return Fail(absl::StrCat("unknown argument ", arg));
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (drop) {
    // VFIO charges every DMA-mapped page to RLIMIT_MEMLOCK; only root may raise the hard limit.
    struct rlimit limit = {64 << 20, 64 << 20};
    if (::setrlimit(RLIMIT_MEMLOCK, &limit) != 0) {
      return Fail(absl::StrCat("setrlimit(RLIMIT_MEMLOCK): ", std::strerror(errno)));
    }
    if (gid == 0) gid = uid;
    if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0) {
      return Fail(absl::StrCat("dropping to uid ", uid, ": ", std::strerror(errno)));
    }
  }
  if (!peek.empty()) {
    const int fd = ::open(peek.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      std::printf("PEEK %s OPENED\n", peek.c_str());
      return Fail(absl::StrCat("opened ", peek, " as uid ", ::getuid()));
    }
    std::printf("PEEK %s errno=%s\n", peek.c_str(), strerrorname_np(errno));
  }

  vfclient::ConnectOptions options;
  options.socket_dir = socket_dir;
  options.reconnect_window = absl::Seconds(5);
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
      vfclient::BrokerClient::Connect(options);
  if (!client.ok()) return Fail(absl::StrCat("connect: ", client.status().ToString()));
  absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> lease =
      (*client)->AllocateExtent(pool, 1 << 20);
  if (!lease.ok()) return Fail(absl::StrCat("allocate: ", lease.status().ToString()));
  const vfbroker::v1::Extent& extent = (*lease)->info().extent();
  const std::string lease_id = (*lease)->id();
  if (!(*lease)->is_vfio() || extent.nvme_namespace_id() == 0) {
    return Fail("the lease carries no VF (is the pool an nvme_sriov pool?)");
  }
  absl::StatusOr<vfclient::VfioDescriptors> fds = (*lease)->TakeVfioDescriptors();
  if (!fds.ok()) return Fail(fds.status().ToString());

  if (hold_device_only) {
    // Keep only the device descriptor: the kernel must keep the group busy through it.
    vfbroker::UniqueFd device = std::move(fds->device);
    fds->container.reset();
    fds->group.reset();
    if (absl::Status released = (*lease)->Release(); !released.ok()) {
      return Fail(absl::StrCat("release: ", released.ToString()));
    }
    std::printf("HOLDING-DEVICE-ONLY lease=%s vf=%s fd=%d\n", lease_id.c_str(),
                extent.pci_address().c_str(), device.get());
    while (true) ::pause();
  }

  absl::StatusOr<std::unique_ptr<vfdrivers::vfio::VfioDevice>> device =
      vfdrivers::vfio::VfioDevice::Adopt(std::move(fds->container), std::move(fds->group),
                                         std::move(fds->device));
  if (!device.ok()) return Fail(absl::StrCat("adopt: ", device.status().ToString()));
  absl::StatusOr<std::unique_ptr<nvme::VfioTransport>> transport =
      nvme::VfioTransport::Create(device->get());
  if (!transport.ok()) return Fail(absl::StrCat("transport: ", transport.status().ToString()));
  nvme::ControllerOptions controller_options;
  controller_options.nsid = extent.nvme_namespace_id();
  absl::StatusOr<std::unique_ptr<nvme::Controller>> controller =
      nvme::Controller::Create(*std::move(transport), controller_options);
  if (!controller.ok()) return Fail(absl::StrCat("controller: ", controller.status().ToString()));
  absl::StatusOr<std::unique_ptr<nvme::QueuePair>> queue = (*controller)->CreateIoQueuePair(8);
  if (!queue.ok()) return Fail(absl::StrCat("queue pair: ", queue.status().ToString()));
  Queue& q = **queue;
  const uint64_t size = q.geometry().size_bytes;
  if (size < kPatternBytes + kChunk) return Fail(absl::StrCat("namespace of ", size, " bytes"));
  absl::StatusOr<vfdrivers::memory::MemoryRegion> region =
      vfdrivers::memory::MemoryRegion::Allocate(kChunk, {vfdrivers::memory::HugePages::kNever});
  if (!region.ok()) return Fail(region.status().ToString());
  if (absl::Status s = q.RegisterMemory(region->base(), region->size()); !s.ok()) {
    return Fail(absl::StrCat("register memory: ", s.ToString()));
  }
  uint8_t* buf = static_cast<uint8_t*>(region->base());

  // Where to look: the first kPatternBytes, then kSamples chunks spread over the rest.
  std::vector<uint64_t> places;
  for (uint64_t at = 0; at < kPatternBytes; at += kChunk) places.push_back(at);
  for (int i = 1; i <= kSamples; ++i) {
    places.push_back((kPatternBytes + (size - kPatternBytes - kChunk) / kSamples * i) / 4096 *
                     4096);
  }
  if (expect_zeroes) {
    for (uint64_t at : places) {
      std::memset(buf, 0xee, kChunk);
      if (absl::Status s = Run1(q, false, at, buf, kChunk); !s.ok()) {
        return Fail(absl::StrCat("read at ", at, ": ", s.ToString()));
      }
      for (uint32_t i = 0; i < kChunk; ++i) {
        if (buf[i] != 0) {
          return Fail(absl::StrCat("byte ", at + i, " reads ", int(buf[i]),
                                   " before this tenant wrote anything (not scrubbed)"));
        }
      }
    }
    std::printf("ZEROES-FIRST yes (%zu chunks of %u bytes checked)\n", places.size(), kChunk);
  }
  for (uint64_t at : places) {
    for (uint32_t i = 0; i < kChunk; ++i) buf[i] = PatternByte(seed, at + i);
    if (absl::Status s = Run1(q, true, at, buf, kChunk); !s.ok()) {
      return Fail(absl::StrCat("write at ", at, ": ", s.ToString()));
    }
  }
  for (uint64_t at : places) {
    std::memset(buf, 0, kChunk);
    if (absl::Status s = Run1(q, false, at, buf, kChunk); !s.ok()) {
      return Fail(absl::StrCat("read back at ", at, ": ", s.ToString()));
    }
    for (uint32_t i = 0; i < kChunk; ++i) {
      if (buf[i] != PatternByte(seed, at + i)) {
        return Fail(absl::StrCat("byte ", at + i, " reads ", int(buf[i]), " after writing ",
                                 int(PatternByte(seed, at + i))));
      }
    }
  }
  if (escape_nsid != 0 || steal_nsid != 0) {
    // Admin commands a tenant can send its own VF's controller to reach beyond its namespace.
    // Reported, not judged: the scenario decides what it expects (the broker refuses VFs that
    // advertise Namespace Management unless the pool allows it).
    absl::StatusOr<vfdrivers::memory::MemoryRegion> page =
        vfdrivers::memory::MemoryRegion::Allocate(8192, {vfdrivers::memory::HugePages::kNever});
    if (!page.ok()) return Fail(page.status().ToString());
    absl::StatusOr<vfdrivers::vfio::DmaMapping> mapped = (*device)->MapDma(*page);
    if (!mapped.ok()) return Fail(mapped.status().ToString());
    uint8_t* list = static_cast<uint8_t*>(page->base());
    auto attachment = [&](uint32_t nsid, uint16_t cntlid, bool detach) {
      std::memset(list, 0, 4096);
      list[0] = 1;  // Controller List: one entry
      list[2] = static_cast<uint8_t>(cntlid);
      list[3] = static_cast<uint8_t>(cntlid >> 8);
      nvme::Sqe sqe;
      sqe.opcode = 0x15;  // Namespace Attachment; SEL 0 attach, 1 detach
      sqe.nsid = nsid;
      sqe.prp1 = mapped->iova;
      sqe.cdw10 = detach ? 1 : 0;
      return (*controller)->AdminCommand(sqe, "namespace attachment");
    };
    auto verdict = [](const absl::Status& s) {
      return s.ok() ? std::string("ACCEPTED") : absl::StrCat("refused (", s.ToString(), ")");
    };
    if (escape_nsid != 0) {
      absl::Status attached = attachment(escape_nsid, escape_cntlid, false);
      std::printf("ESCAPE ns-attach nsid=%u cntlid=%u: %s\n", escape_nsid, escape_cntlid,
                  verdict(attached).c_str());
      if (attached.ok()) (void)attachment(escape_nsid, escape_cntlid, true);  // put it back
      nvme::Sqe virt;
      virt.opcode = 0x1c;  // Virtualization Management: act 8 (assign), RT 0 (VQ), 1 resource
      virt.cdw10 = 8u | uint32_t{escape_cntlid} << 16;
      virt.cdw11 = 1;
      std::printf("ESCAPE virt-assign cntlid=%u: %s\n", escape_cntlid,
                  verdict((*controller)->AdminCommand(virt, "virtualization management")).c_str());
    }
    if (steal_nsid != 0) {
      // Another tenant's namespace: detach it from its controller, attach it to ours, read it.
      absl::Status detached = attachment(steal_nsid, steal_cntlid, true);
      std::printf("ESCAPE detach-other nsid=%u from cntlid=%u: %s\n", steal_nsid, steal_cntlid,
                  verdict(detached).c_str());
      if (detached.ok()) {
        absl::Status attached = attachment(steal_nsid, escape_cntlid, false);
        std::printf("ESCAPE attach-other nsid=%u to cntlid=%u: %s\n", steal_nsid,
                    escape_cntlid, verdict(attached).c_str());
        if (attached.ok()) {
          nvme::Sqe read;
          read.opcode = 0x02;  // Read, 8 blocks of 512 at LBA 0
          read.nsid = steal_nsid;
          read.prp1 = mapped->iova + 4096;
          read.cdw12 = 7;
          std::memset(list + 4096, 0, 4096);
          absl::Status r = (*queue)->StageRaw(read, 99);
          if (r.ok()) r = (*queue)->Submit().status();
          Completion done[1];
          while (r.ok() && (*queue)->Poll(absl::MakeSpan(done)) == 0) {
          }
          if (r.ok()) r = CompletionStatus(done[0]);
          size_t nonzero = 0;
          for (int i = 0; i < 4096; ++i) nonzero += list[4096 + i] != 0;
          std::printf("ESCAPE read-other nsid=%u: %s, %zu of 4096 bytes non-zero, first %02x\n",
                      steal_nsid, verdict(r).c_str(), nonzero, list[4096]);
          (void)attachment(steal_nsid, escape_cntlid, true);
        }
        (void)attachment(steal_nsid, steal_cntlid, false);  // give it back
      }
    }
    (void)(*device)->UnmapDma(mapped->iova);
  }
  std::printf("TENANT OK lease=%s vf=%s nsid=%u group=%s uid=%u bytes=%llu\n", lease_id.c_str(),
              extent.pci_address().c_str(), extent.nvme_namespace_id(),
              (*device)->group_path().c_str(), static_cast<unsigned>(::getuid()),
              static_cast<unsigned long long>(size));
  if (hold) {
    std::printf("HOLDING\n");
    while (true) ::pause();
  }
  if (release) {
    // The device first: the broker scrubs only once no descriptor reaches the VF.
    queue->reset();
    controller->reset();
    device->reset();
    if (absl::Status released = (*lease)->Release(); !released.ok()) {
      return Fail(absl::StrCat("release: ", released.ToString()));
    }
    std::printf("RELEASED lease=%s\n", lease_id.c_str());
  }
  return 0;
}
