// The real NvmeSriovPlatform: the kernel's NVMe admin passthrough, the VFIO container/group
// ioctls (vfio_handout.h), and the scrub through the project's own polling NVMe driver.
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/backends/nvme_sriov.h"
#include "common/logging.h"
#include "vfdrivers/block/nvme/nvme_controller.h"
#include "vfdrivers/block/nvme/nvme_transport.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfbroker {
namespace {

namespace nvme = vfdrivers::block::nvme;
namespace vfio = vfdrivers::vfio;
using vfdrivers::block::Completion;
using vfdrivers::block::CompletionStatus;
using vfdrivers::block::Queue;

// Runs every staged command to completion; the first failed completion is returned.
absl::Status Drain(Queue& queue, absl::Duration timeout) {
  absl::StatusOr<uint32_t> submitted = queue.Submit();
  if (!submitted.ok()) return submitted.status();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status first;
  Completion done[32];
  while (queue.outstanding() > 0) {
    const size_t n = queue.Poll(absl::MakeSpan(done));
    for (size_t i = 0; i < n; ++i) {
      if (absl::Status s = CompletionStatus(done[i]); !s.ok() && first.ok()) first = s;
    }
    if (n == 0 && absl::Now() > deadline) {
      return absl::DeadlineExceededError("NVMe commands did not complete in time");
    }
  }
  return first;
}

class RealPlatform : public NvmeSriovPlatform {
 public:
  absl::StatusOr<std::unique_ptr<nvme_admin::AdminChannel>> OpenAdmin(
      const std::string& device_path) override {
    return nvme_admin::OpenKernelAdminChannel(device_path);
  }

  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                      const std::string& group,
                                                      const std::string& pci_address) override {
    return OpenVfioHandles(vfio_dir, group, pci_address);
  }

  absl::StatusOr<VfFacts> InspectVf(VfioHandles handles, uint32_t nsid) override {
    absl::StatusOr<std::unique_ptr<vfio::VfioDevice>> device = vfio::VfioDevice::Adopt(
        std::move(handles.container), std::move(handles.group), std::move(handles.device));
    if (!device.ok()) return device.status();
    absl::StatusOr<std::unique_ptr<nvme::VfioTransport>> transport =
        nvme::VfioTransport::Create(device->get());
    if (!transport.ok()) return transport.status();
    nvme::ControllerOptions options;
    options.nsid = nsid;
    absl::StatusOr<std::unique_ptr<nvme::Controller>> controller =
        nvme::Controller::Create(*std::move(transport), options);
    if (!controller.ok()) return controller.status();
    VfFacts facts;
    facts.cntlid = (*controller)->info().cntlid;
    absl::StatusOr<std::vector<uint32_t>> active = (*controller)->ActiveNamespaces();
    if (!active.ok()) return active.status();
    facts.active_namespaces = *std::move(active);
    // Identify Controller (Base spec 2.0, Identify, CNS 01h): OACS, bytes 257:256, bit 3 =
    // Namespace Management and Namespace Attachment commands supported.
    absl::StatusOr<vfdrivers::memory::MemoryRegion> page = vfdrivers::memory::MemoryRegion::Allocate(
        4096, {vfdrivers::memory::HugePages::kNever});
    if (!page.ok()) return page.status();
    absl::StatusOr<vfio::DmaMapping> mapped = (*device)->MapDma(*page);
    if (!mapped.ok()) return mapped.status();
    nvme::Sqe identify;
    identify.opcode = 0x06;
    identify.prp1 = mapped->iova;
    identify.cdw10 = 0x01;
    absl::Status identified = (*controller)->AdminCommand(identify, "identify controller");
    const uint8_t* data = static_cast<const uint8_t*>(page->base());
    facts.namespace_management = ((data[256] | data[257] << 8) & (1 << 3)) != 0;
    controller->reset();  // disables the controller before the mapping goes away
    (void)(*device)->UnmapDma(mapped->iova);
    if (!identified.ok()) return identified;
    return facts;
  }

  absl::Status ScrubNamespace(VfioHandles handles, uint32_t nsid) override {
    absl::StatusOr<std::unique_ptr<vfio::VfioDevice>> device = vfio::VfioDevice::Adopt(
        std::move(handles.container), std::move(handles.group), std::move(handles.device));
    if (!device.ok()) return device.status();
    // Function-level reset: whatever the tenant left programmed (queues, DMA) is gone.
    if ((*device)->supports_reset()) {
      if (absl::Status s = (*device)->Reset(); !s.ok()) return s;
    }
    absl::StatusOr<std::unique_ptr<nvme::VfioTransport>> transport =
        nvme::VfioTransport::Create(device->get());
    if (!transport.ok()) return transport.status();
    nvme::ControllerOptions options;
    options.nsid = nsid;
    absl::StatusOr<std::unique_ptr<nvme::Controller>> controller =
        nvme::Controller::Create(*std::move(transport), options);
    if (!controller.ok()) return controller.status();
    absl::StatusOr<std::unique_ptr<nvme::QueuePair>> queue =
        (*controller)->CreateIoQueuePair(32);
    if (!queue.ok()) return queue.status();
    Queue& q = **queue;
    const vfdrivers::block::Geometry& g = q.geometry();
    const uint64_t bs = g.logical_block_size;
    if (bs == 0 || g.size_bytes == 0 || g.max_transfer_bytes < bs) {
      return absl::FailedPreconditionError("namespace geometry unusable");
    }
    const uint32_t chunk = static_cast<uint32_t>(g.max_transfer_bytes / bs * bs);
    absl::StatusOr<vfdrivers::memory::MemoryRegion> region =
        vfdrivers::memory::MemoryRegion::Allocate(
            chunk, {vfdrivers::memory::HugePages::kNever});
    if (!region.ok()) return region.status();
    if (absl::Status s = q.RegisterMemory(region->base(), region->size()); !s.ok()) return s;
    uint8_t* buffer = static_cast<uint8_t*>(region->base());

    // Write Zeroes (NVM Command Set spec, Write Zeroes command), at most 65536 blocks per
    // command; a controller without it (ONCS bit 3 clear) gets ordinary writes of zeroes.
    const uint64_t wz_step = 65536 * bs;
    bool write_zeroes = true;
    uint64_t offset = 0;
    const absl::Duration timeout = absl::Seconds(30);
    while (offset < g.size_bytes) {
      uint32_t staged = 0;
      while (offset < g.size_bytes && staged < q.depth()) {
        absl::Status s;
        uint64_t step;
        if (write_zeroes) {
          step = std::min(wz_step, g.size_bytes - offset);
          s = q.WriteZeroes(offset, step, offset);
          if (s.code() == absl::StatusCode::kUnimplemented) {
            write_zeroes = false;
            continue;
          }
        } else {
          step = std::min<uint64_t>(chunk, g.size_bytes - offset);
          s = q.Write(offset, buffer, static_cast<uint32_t>(step), offset);
        }
        if (!s.ok()) return s;
        offset += step;
        ++staged;
      }
      if (absl::Status s = Drain(q, timeout); !s.ok()) return s;
    }
    if (absl::Status s = q.Flush(0); !s.ok()) return s;
    if (absl::Status s = Drain(q, timeout); !s.ok()) return s;

    // Read back: the first and last chunk and 30 spread between them must be all zeroes.
    std::vector<uint64_t> samples;
    const uint64_t last = g.size_bytes > chunk ? (g.size_bytes - chunk) / bs * bs : 0;
    for (int i = 0; i < 32; ++i) samples.push_back(last / 31 * i / bs * bs);
    samples.push_back(last);
    for (uint64_t at : samples) {
      const uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(chunk, g.size_bytes - at));
      std::memset(buffer, 0xa5, length);
      if (absl::Status s = q.Read(at, buffer, length, at); !s.ok()) return s;
      if (absl::Status s = Drain(q, timeout); !s.ok()) return s;
      for (uint32_t i = 0; i < length; ++i) {
        if (buffer[i] != 0) {
          return absl::DataLossError(
              absl::StrCat("byte ", at + i, " reads ", buffer[i], " after the scrub"));
        }
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<NvmeSriovPlatform> MakeRealNvmeSriovPlatform() {
  return std::make_unique<RealPlatform>();
}

}  // namespace vfbroker
