#include "bench/block/randread.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <vector>

#include "absl/strings/str_format.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfbroker::bench {
namespace {

using vfdrivers::block::Completion;
using vfdrivers::block::CompletionStatus;
using vfdrivers::block::Queue;
using vfdrivers::memory::BufferPool;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // vDSO: no system call
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// xoshiro-style generators are overkill; splitmix64 is fast and good enough for offsets.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) without a division (Lemire's multiply-shift).
  uint64_t Below(uint64_t n) { return uint64_t((unsigned __int128)Next() * n >> 64); }

 private:
  uint64_t state_;
};

// Log-linear latency histogram: exact below 128 ns, then 64 buckets per power of two (error
// under 1.6%). Fixed size, so recording allocates nothing.
class Histogram {
 public:
  void Record(uint64_t ns) {
    ++buckets_[Bucket(ns)];
    ++count_;
    sum_ += ns;
    max_ = std::max(max_, ns);
  }
  uint64_t Percentile(double p) const {
    if (count_ == 0) return 0;
    auto rank = static_cast<uint64_t>(p / 100.0 * double(count_ - 1)) + 1;
    uint64_t seen = 0;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      seen += buckets_[b];
      if (seen >= rank) return std::min(Midpoint(b), max_);
    }
    return max_;
  }
  uint64_t count() const { return count_; }
  uint64_t mean() const { return count_ ? sum_ / count_ : 0; }
  uint64_t max() const { return max_; }

 private:
  static constexpr int kSub = 64;
  static size_t Bucket(uint64_t v) {
    if (v < 2 * kSub) return v;
    const int msb = 63 - __builtin_clzll(v);  // >= 7
    const int shift = msb - 6;
    return 2 * kSub + size_t(msb - 7) * kSub + ((v >> shift) - kSub);
  }
  static uint64_t Midpoint(size_t b) {
    if (b < 2 * kSub) return b;
    const int msb = int((b - 2 * kSub) / kSub) + 7;
    const int shift = msb - 6;
    const uint64_t sub = (b - 2 * kSub) % kSub + kSub;
    return (sub << shift) + (uint64_t{1} << shift) / 2;
  }

  std::array<uint64_t, 2 * kSub + 57 * kSub> buckets_{};
  uint64_t count_ = 0, sum_ = 0, max_ = 0;
};

absl::Status Validate(const Queue& queue, const RandReadOptions& options) {
  const auto& geometry = queue.geometry();
  const uint32_t bs = options.block_size;
  if (bs == 0 || bs % geometry.logical_block_size != 0 || bs > geometry.max_transfer_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "block size %u is not a multiple of the device's %u-byte blocks (or too large)", bs,
        geometry.logical_block_size));
  }
  if (options.queue_depth == 0 || options.queue_depth > queue.depth()) {
    return absl::InvalidArgumentError(absl::StrFormat("queue depth %u: the queue allows 1..%u",
                                                      options.queue_depth, queue.depth()));
  }
  if (options.write_percent > 100) return absl::InvalidArgumentError("write_percent > 100");
  if (geometry.size_bytes < bs) return absl::InvalidArgumentError("device smaller than a block");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BufferPool> MakeRegisteredBuffers(Queue& queue, const RandReadOptions& options) {
  if (absl::Status s = Validate(queue, options); !s.ok()) return s;
  absl::StatusOr<BufferPool> pool = BufferPool::Allocate(options.block_size, options.queue_depth);
  if (!pool.ok()) return pool.status();
  if (absl::Status s = queue.RegisterMemory(pool->region().base(), pool->region().size());
      !s.ok()) {
    return s;
  }
  return pool;
}

absl::StatusOr<RandReadResult> RunRandRead(Queue& queue, BufferPool& buffers,
                                           const RandReadOptions& options) {
  if (absl::Status s = Validate(queue, options); !s.ok()) return s;
  if (buffers.count() < options.queue_depth || buffers.buffer_size() < options.block_size) {
    return absl::InvalidArgumentError("buffer pool too small for the queue depth / block size");
  }
  if (queue.outstanding() != 0) {
    return absl::FailedPreconditionError("queue has commands outstanding");
  }
  const uint32_t bs = options.block_size;
  const uint64_t size = queue.geometry().size_bytes;
  const uint64_t span = options.span_bytes ? std::min(options.span_bytes, size) : size;
  const uint64_t blocks = std::max<uint64_t>(span / bs, 1);
  const uint32_t qd = options.queue_depth;

  SplitMix64 rng(options.seed);
  std::vector<uint64_t> started(qd);
  std::vector<Completion> completions(qd);
  Histogram latency;
  RandReadResult result;

  auto stage = [&](uint32_t i, uint64_t now) -> absl::Status {
    const uint64_t offset = rng.Below(blocks) * bs;
    started[i] = now;
    if (options.write_percent != 0 && rng.Below(100) < options.write_percent) {
      ++result.writes;
      return queue.Write(offset, buffers.Buffer(i), bs, i);
    }
    ++result.reads;
    return queue.Read(offset, buffers.Buffer(i), bs, i);
  };

  const uint64_t begin = NowNs();
  const uint64_t end = begin + uint64_t(absl::ToInt64Nanoseconds(options.duration));
  for (uint32_t i = 0; i < qd; ++i) {
    if (absl::Status s = stage(i, begin); !s.ok()) return s;
  }
  if (absl::StatusOr<uint32_t> n = queue.Submit(); !n.ok()) return n.status();
  ++result.submit_calls;

  absl::Status failure;
  uint32_t pending = 0;  // staged since the last Submit
  uint64_t stop = 0;     // when the measured interval ended
  while (queue.outstanding() > 0) {
    const size_t n = queue.Poll(absl::MakeSpan(completions));
    if (n == 0) {
      if (options.yield_when_idle) sched_yield();
      continue;
    }
    const uint64_t now = NowNs();
    const bool measuring = stop == 0;
    if (measuring && now >= end) stop = now;
    for (size_t k = 0; k < n; ++k) {
      const Completion& c = completions[k];
      if (absl::Status s = CompletionStatus(c); !s.ok()) {
        if (failure.ok()) failure = s;
        continue;
      }
      if (!measuring) continue;  // draining
      latency.Record(now - started[c.tag]);
      if (stop == 0 && failure.ok()) {
        if (absl::Status s = stage(static_cast<uint32_t>(c.tag), now); !s.ok()) return s;
        ++pending;
      }
    }
    // Hand the batch over once it is big enough, or when the device would otherwise idle, or
    // when we are stopping (nothing staged may be left behind).
    if (pending > 0 && (pending >= options.submit_batch || pending == queue.outstanding() ||
                        stop != 0 || !failure.ok())) {
      if (absl::StatusOr<uint32_t> s = queue.Submit(); !s.ok()) return s.status();
      ++result.submit_calls;
      pending = 0;
    }
  }
  if (!failure.ok()) return failure;
  if (stop == 0) stop = NowNs();

  result.ios = latency.count();
  result.elapsed = absl::Nanoseconds(stop - begin);
  const double seconds = absl::ToDoubleSeconds(result.elapsed);
  result.iops = double(result.ios) / seconds;
  result.mb_per_s = result.iops * bs / 1e6;
  result.lat_mean = absl::Nanoseconds(latency.mean());
  result.lat_p50 = absl::Nanoseconds(latency.Percentile(50));
  result.lat_p99 = absl::Nanoseconds(latency.Percentile(99));
  result.lat_p999 = absl::Nanoseconds(latency.Percentile(99.9));
  result.lat_max = absl::Nanoseconds(latency.max());
  return result;
}

std::string ToJson(const RandReadResult& r) {
  auto us = [](absl::Duration d) { return absl::ToDoubleMicroseconds(d); };
  return absl::StrFormat(
      "{\"ios\": %u, \"reads\": %u, \"writes\": %u, \"seconds\": %.3f, \"iops\": %.0f, "
      "\"mb_per_s\": %.1f, \"lat_mean_us\": %.2f, \"lat_p50_us\": %.2f, \"lat_p99_us\": %.2f, "
      "\"lat_p999_us\": %.2f, \"lat_max_us\": %.2f, \"submit_calls\": %u}",
      r.ios, r.reads, r.writes, absl::ToDoubleSeconds(r.elapsed), r.iops, r.mb_per_s,
      us(r.lat_mean), us(r.lat_p50), us(r.lat_p99), us(r.lat_p999), us(r.lat_max), r.submit_calls);
}

}  // namespace vfbroker::bench
