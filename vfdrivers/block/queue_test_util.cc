#include "vfdrivers/block/queue_test_util.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace vfdrivers::block::testing {

absl::StatusOr<std::vector<Completion>> SubmitAndWait(Queue& queue, size_t count,
                                                      absl::Duration timeout) {
  absl::StatusOr<uint32_t> submitted = queue.Submit();
  if (!submitted.ok()) return submitted.status();
  std::vector<Completion> done;
  const absl::Time deadline = absl::Now() + timeout;
  Completion batch[16];
  while (done.size() < count) {
    size_t n = queue.Poll(absl::MakeSpan(batch, std::min<size_t>(16, count - done.size())));
    done.insert(done.end(), batch, batch + n);
    if (n == 0 && absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("got ", done.size(), " of ", count, " completions"));
    }
  }
  return done;
}

absl::Status RunOne(Queue& queue, absl::Status staged) {
  if (!staged.ok()) return staged;
  absl::StatusOr<std::vector<Completion>> done = SubmitAndWait(queue, 1);
  if (!done.ok()) return done.status();
  return CompletionStatus((*done)[0]);
}

namespace {

enum class Kind { kRead, kWrite, kZeroes, kFlush };

struct InFlight {
  Kind kind;
  uint64_t first_block;
  uint32_t blocks;
  uint8_t* buffer;
  bool busy = false;
};

}  // namespace

void CheckAgainstModel(Queue& queue, memory::BufferPool& pool, const ModelCheckOptions& options) {
  const uint32_t bs = queue.geometry().logical_block_size;
  uint64_t bytes = options.device_bytes ? options.device_bytes : queue.geometry().size_bytes;
  bytes = std::min<uint64_t>({bytes, queue.geometry().size_bytes, uint64_t{64} << 20});
  const uint64_t nblocks = bytes / bs;
  ASSERT_GE(nblocks, options.max_blocks * 2u);
  const uint32_t depth = queue.depth();
  const size_t buffer_bytes = size_t{options.max_blocks} * bs;

  ASSERT_GE(pool.count(), depth);
  ASSERT_GE(pool.buffer_size(), buffer_bytes);

  std::vector<uint8_t> model(nblocks * bs, 0);
  std::vector<uint8_t> locked(nblocks, 0);  // blocks touched by a command in flight
  std::vector<InFlight> slots(depth);
  std::mt19937_64 rng(options.seed);

  // Known starting point.
  for (uint64_t block = 0; block < nblocks;) {
    uint64_t n = std::min<uint64_t>(nblocks - block, (uint64_t{16} << 20) / bs);
    ASSERT_TRUE(RunOne(queue, queue.WriteZeroes(block * bs, n * bs, 0)).ok());
    block += n;
  }

  uint64_t issued = 0, completed = 0, reads_checked = 0;
  Completion batch[64];
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (completed < options.ops) {
    // Fill every free slot with a command that conflicts with nothing in flight.
    for (uint32_t s = 0; s < depth && issued < options.ops; ++s) {
      if (slots[s].busy) continue;
      InFlight& f = slots[s];
      const int dice = static_cast<int>(rng() % 100);
      f.kind = dice < 45   ? Kind::kRead
               : dice < 90 ? Kind::kWrite
               : dice < 97 ? (options.zeroes ? Kind::kZeroes : Kind::kWrite)
                           : Kind::kFlush;
      f.blocks = 1 + static_cast<uint32_t>(rng() % options.max_blocks);
      f.first_block = rng() % (nblocks - f.blocks + 1);
      f.buffer = static_cast<uint8_t*>(pool.Buffer(s));
      if (f.kind != Kind::kFlush) {
        bool conflict = false;
        for (uint32_t b = 0; b < f.blocks; ++b) conflict |= locked[f.first_block + b] != 0;
        if (conflict) continue;  // try this slot again on the next round
      }
      absl::Status st;
      const uint64_t offset = f.first_block * bs;
      const uint32_t length = f.blocks * bs;
      switch (f.kind) {
        case Kind::kRead:
          memset(f.buffer, 0xee, length);
          st = queue.Read(offset, f.buffer, length, s);
          break;
        case Kind::kWrite:
          for (uint32_t i = 0; i < length; i += 8) {
            uint64_t v = rng();
            memcpy(f.buffer + i, &v, 8);
          }
          // No command in flight overlaps, so the device will hold this when anyone looks.
          memcpy(&model[offset], f.buffer, length);
          st = queue.Write(offset, f.buffer, length, s);
          break;
        case Kind::kZeroes:
          memset(&model[offset], 0, length);
          st = queue.WriteZeroes(offset, length, s);
          break;
        case Kind::kFlush:
          st = queue.Flush(s);
          break;
      }
      ASSERT_TRUE(st.ok()) << st;
      if (f.kind != Kind::kFlush) {
        for (uint32_t b = 0; b < f.blocks; ++b) locked[f.first_block + b] = 1;
      }
      f.busy = true;
      ++issued;
    }
    ASSERT_LE(queue.outstanding(), depth);
    absl::StatusOr<uint32_t> submitted = queue.Submit();
    ASSERT_TRUE(submitted.ok()) << submitted.status();

    size_t n = queue.Poll(absl::MakeSpan(batch));
    for (size_t i = 0; i < n; ++i) {
      const Completion& c = batch[i];
      ASSERT_LT(c.tag, depth);
      InFlight& f = slots[c.tag];
      ASSERT_TRUE(f.busy) << "completion for an idle slot " << c.tag;
      ASSERT_TRUE(CompletionStatus(c).ok()) << CompletionStatus(c);
      const uint64_t offset = f.first_block * bs;
      const uint32_t length = f.blocks * bs;
      if (f.kind == Kind::kRead || f.kind == Kind::kWrite) {
        ASSERT_EQ(c.result, static_cast<int32_t>(length));
      } else {
        ASSERT_EQ(c.result, 0);
      }
      if (f.kind == Kind::kRead) {
        ASSERT_EQ(memcmp(f.buffer, &model[offset], length), 0)
            << "read of blocks [" << f.first_block << ", +" << f.blocks << ") differs";
        ++reads_checked;
      }
      if (f.kind != Kind::kFlush) {
        for (uint32_t b = 0; b < f.blocks; ++b) locked[f.first_block + b] = 0;
      }
      f.busy = false;
      ++completed;
    }
    ASSERT_LT(absl::Now(), deadline) << "stuck at " << completed << " completions";
  }
  EXPECT_EQ(queue.outstanding(), 0u);
  EXPECT_GT(reads_checked, 0u);

  // Finally the whole device, read back in buffer-sized pieces.
  uint8_t* buffer = static_cast<uint8_t*>(pool.Buffer(0));
  for (uint64_t offset = 0; offset < nblocks * bs; offset += buffer_bytes) {
    const auto length =
        static_cast<uint32_t>(std::min<uint64_t>(buffer_bytes, nblocks * bs - offset));
    ASSERT_TRUE(RunOne(queue, queue.Read(offset, buffer, length, 0)).ok());
    ASSERT_EQ(memcmp(buffer, &model[offset], length), 0) << "final image differs at " << offset;
  }
}

}  // namespace vfdrivers::block::testing
