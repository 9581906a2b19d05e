// extent_io: a tenant that asks vfbrokerd for a disk extent and drives it from userspace.
//
//   extent_io --socket_dir=/run/vfbroker --pool=scratch --size=64M
//
// It allocates an extent, writes a pattern over all of it through an io_uring queue (registered
// file and buffers, batched submission, polled completions), reads it back and verifies every
// byte, runs 4 KiB random reads for a moment, prints what it measured, and releases the extent
// (the lease object does that when it goes out of scope).
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/broker_client.h"
#include "vfdrivers/block/io_uring_queue.h"
#include "vfdrivers/memory/memory_region.h"

ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "Where vfbrokerd's sockets are");
ABSL_FLAG(std::string, pool, "scratch", "Pool to allocate from");
ABSL_FLAG(std::string, size, "64M", "Extent size (bytes, or with K/M/G suffix)");
ABSL_FLAG(double, random_read_seconds, 1.0, "How long to run 4 KiB random reads");
ABSL_FLAG(uint32_t, depth, 32, "Queue depth");

namespace {

using vfdrivers::block::Completion;
using vfdrivers::block::IoUringQueue;

constexpr uint32_t kChunk = 128 * 1024;  // sequential pass transfer size

bool ParseSize(const std::string& text, uint64_t* bytes) {
  if (text.empty()) return false;
  uint64_t multiplier = 1;
  std::string digits = text;
  switch (text.back()) {
    case 'K': case 'k': multiplier = 1ull << 10; digits.pop_back(); break;
    case 'M': case 'm': multiplier = 1ull << 20; digits.pop_back(); break;
    case 'G': case 'g': multiplier = 1ull << 30; digits.pop_back(); break;
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(digits, &value) || value > UINT64_MAX / multiplier) return false;
  *bytes = value * multiplier;
  return true;
}

// The byte pattern at `offset`: a function of the offset only, so a misplaced block shows.
void FillPattern(uint8_t* buffer, uint64_t offset, uint32_t length) {
  for (uint32_t i = 0; i < length; i += 8) {
    uint64_t word = (offset + i) * 0x9E3779B97F4A7C15ull;
    std::memcpy(buffer + i, &word, 8);
  }
}

// Runs `count` transfers of `length` bytes at offsets chosen by `next_offset`, keeping the
// queue `depth` deep. Verifies reads when `verify` is set. Returns false on the first error.
template <typename NextOffset>
bool RunPass(IoUringQueue& queue, vfdrivers::memory::BufferPool& buffers, bool write,
             bool verify, uint64_t count, uint32_t length, NextOffset next_offset,
             uint64_t* mismatches) {
  std::vector<uint64_t> offset_of(buffers.count());
  std::vector<Completion> completions(queue.depth());
  uint64_t issued = 0, done = 0;
  while (done < count) {
    while (issued < count && queue.outstanding() < queue.depth()) {
      void* buffer = buffers.Get();
      if (buffer == nullptr) break;
      const uint64_t offset = next_offset(issued);
      const uint32_t index = buffers.IndexOf(buffer);
      offset_of[index] = offset;
      absl::Status staged =
          write ? (FillPattern(static_cast<uint8_t*>(buffer), offset, length),
                   queue.Write(offset, buffer, length, index))
                : queue.Read(offset, buffer, length, index);
      if (!staged.ok()) {
        std::fprintf(stderr, "extent_io: staging failed: %s\n", staged.ToString().c_str());
        return false;
      }
      ++issued;
    }
    if (absl::StatusOr<uint32_t> submitted = queue.Submit(); !submitted.ok()) {
      std::fprintf(stderr, "extent_io: submit failed: %s\n",
                   submitted.status().ToString().c_str());
      return false;
    }
    const size_t reaped = queue.Poll(absl::MakeSpan(completions));
    for (size_t i = 0; i < reaped; ++i) {
      const Completion& c = completions[i];
      if (c.tag >= buffers.count() || c.result != static_cast<int32_t>(length)) {
        std::fprintf(stderr, "extent_io: I/O failed: %s\n",
                     vfdrivers::block::CompletionStatus(c).ToString().c_str());
        return false;
      }
      void* buffer = buffers.Buffer(static_cast<uint32_t>(c.tag));
      if (verify) {
        static thread_local std::vector<uint8_t> expected;
        expected.resize(length);
        FillPattern(expected.data(), offset_of[c.tag], length);
        if (std::memcmp(expected.data(), buffer, length) != 0) ++*mismatches;
      }
      (void)buffers.Put(buffer);
      ++done;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("A vfbroker tenant: allocate a disk extent and do verified I/O");
  absl::ParseCommandLine(argc, argv);
  uint64_t size = 0;
  if (!ParseSize(absl::GetFlag(FLAGS_size), &size) || size == 0) {
    std::fprintf(stderr, "extent_io: --size: not a size: %s\n",
                 absl::GetFlag(FLAGS_size).c_str());
    return 1;
  }

  vfclient::ConnectOptions options;
  options.socket_dir = absl::GetFlag(FLAGS_socket_dir);
  absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> client =
      vfclient::BrokerClient::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "extent_io: %s\n", client.status().ToString().c_str());
    return 2;
  }
  const vfbroker::v1::SessionHello hello = (*client)->hello();
  std::printf("session: broker sees uid %u pid %d\n", hello.uid(), hello.pid());

  const absl::Time asked = absl::Now();
  absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> extent =
      (*client)->AllocateExtent(absl::GetFlag(FLAGS_pool), size);
  if (!extent.ok()) {
    std::fprintf(stderr, "extent_io: allocate: %s\n", extent.status().ToString().c_str());
    return 3;
  }
  std::printf("lease %s: %" PRIu64 " bytes of pool %s (%s), granted in %.2f ms\n",
              (*extent)->id().c_str(), (*extent)->size_bytes(),
              absl::GetFlag(FLAGS_pool).c_str(), (*extent)->info().extent().device_path().c_str(),
              absl::ToDoubleMilliseconds(absl::Now() - asked));

  vfdrivers::block::IoUringQueueOptions queue_options;
  queue_options.depth = absl::GetFlag(FLAGS_depth);
  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue =
      IoUringQueue::Create((*extent)->fd(), queue_options);
  if (!queue.ok()) {
    std::fprintf(stderr, "extent_io: queue: %s\n", queue.status().ToString().c_str());
    return 4;
  }
  absl::StatusOr<vfdrivers::memory::BufferPool> buffers =
      vfdrivers::memory::BufferPool::Allocate(kChunk, queue_options.depth);
  if (!buffers.ok()) {
    std::fprintf(stderr, "extent_io: buffers: %s\n", buffers.status().ToString().c_str());
    return 4;
  }
  if (absl::Status registered =
          (*queue)->RegisterMemory(buffers->region().base(), buffers->region().size());
      !registered.ok()) {
    std::fprintf(stderr, "extent_io: register: %s\n", registered.ToString().c_str());
    return 4;
  }

  const uint64_t chunks = (*extent)->size_bytes() / kChunk;
  auto sequential = [](uint64_t i) { return i * kChunk; };
  uint64_t mismatches = 0;
  absl::Time start = absl::Now();
  if (!RunPass(**queue, *buffers, /*write=*/true, false, chunks, kChunk, sequential,
               &mismatches)) {
    return 5;
  }
  const double write_s = absl::ToDoubleSeconds(absl::Now() - start);
  start = absl::Now();
  if (!RunPass(**queue, *buffers, /*write=*/false, /*verify=*/true, chunks, kChunk, sequential,
               &mismatches)) {
    return 5;
  }
  const double read_s = absl::ToDoubleSeconds(absl::Now() - start);
  const double mib = static_cast<double>(chunks * kChunk) / (1 << 20);
  std::printf("sequential write: %.0f MiB/s, read+verify: %.0f MiB/s, mismatched chunks: %" PRIu64
              "\n",
              mib / write_s, mib / read_s, mismatches);

  // 4 KiB random reads for a moment (block-aligned offsets inside the extent).
  std::mt19937_64 rng(42);
  const uint64_t blocks = (*extent)->size_bytes() / 4096;
  uint64_t random_reads = 0;
  const absl::Duration budget = absl::Seconds(absl::GetFlag(FLAGS_random_read_seconds));
  start = absl::Now();
  while (absl::Now() - start < budget) {
    constexpr uint64_t kBatch = 4096;
    if (!RunPass(**queue, *buffers, false, false, kBatch, 4096,
                 [&](uint64_t) { return (rng() % blocks) * 4096; }, &mismatches)) {
      return 5;
    }
    random_reads += kBatch;
  }
  const double random_s = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("4 KiB random read, QD%u: %.0f IOPS\n", queue_options.depth,
              random_reads / random_s);

  queue->reset();
  if (absl::Status released = (*extent)->Release(); !released.ok()) {
    std::fprintf(stderr, "extent_io: release: %s\n", released.ToString().c_str());
    return 6;
  }
  std::printf("released; the broker scrubs the extent before anyone else gets it\n");
  return mismatches == 0 ? 0 : 7;
}
