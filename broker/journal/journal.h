// The broker's write-ahead journal: an append-only file of framed journal::Record messages.
//
// Every grant and release is appended and made durable (fdatasync) before the broker
// acknowledges it, so a broker killed at any instant restarts knowing every lease it granted.
//
// File format: a sequence of frames, each
//   u32 little-endian  payload length (<= kMaxRecordBytes)
//   u32 little-endian  CRC-32 (zlib) of the payload
//   payload            a serialized journal::Record
// A frame that is cut short, fails its CRC or does not parse ends the journal: Open() keeps the
// intact prefix and truncates the rest (a torn last write after a crash is expected, not an error).
//
// Thread-safe: Append and Compact may be called from any thread.
#ifndef VFBROKER_BROKER_JOURNAL_JOURNAL_H_
#define VFBROKER_BROKER_JOURNAL_JOURNAL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "broker/journal/journal.pb.h"

namespace vfbroker {

inline constexpr uint32_t kMaxJournalRecordBytes = 1 << 20;

struct JournalReplay {
  std::vector<journal::Record> records;  // every intact record, in order
  uint64_t truncated_bytes = 0;          // bytes of torn or corrupt tail that were cut off
};

class Journal {
 public:
  // Opens `path` (creating it, mode 0600, if missing), reads every intact record into
  // `replay`, truncates a torn or corrupt tail, and positions for appending. Takes an exclusive
  // flock(2) on the file for the Journal's lifetime: FAILED_PRECONDITION if another open Journal
  // (in this or another process) holds it. `replay` may be null.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const std::string& path,
                                                       JournalReplay* replay);
  ~Journal();

  // Assigns the next sequence number, appends, and returns once the record is durable.
  // Concurrent appends share one write and one fdatasync (group commit).
  // A failed write is cut back off the file. A failed fdatasync leaves the file in an unknowable
  // state (the kernel may already have dropped the dirty pages), so it closes the journal:
  // every later Append and Compact returns DATA_LOSS, and the broker must restart and replay.
  absl::Status Append(journal::Record record);

  // Atomically replaces the journal with `records` (renumbered from 1): written to a temporary
  // file, fsynced, renamed over the journal, directory fsynced. Used after replay to keep the
  // journal as short as the live state.
  absl::Status Compact(std::vector<journal::Record> records);

  uint64_t records_appended() const;

 private:
  Journal(std::string path, int fd, uint64_t next_sequence, uint64_t size_bytes);

  const std::string path_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_);
  uint64_t appended_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t size_bytes_ ABSL_GUARDED_BY(mu_);  // end of the last intact frame: where to append
  absl::Status failed_ ABSL_GUARDED_BY(mu_);  // set once an fdatasync failed; sticky

  // Group commit (see Append). Frames wait in `pending_` for the batch `open_batch_`; one
  // appender at a time flushes (`flushing_`, with mu_ released during the I/O).
  void FlushPendingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string pending_ ABSL_GUARDED_BY(mu_);
  uint64_t pending_records_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t open_batch_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t completed_batch_ ABSL_GUARDED_BY(mu_) = 0;
  bool flushing_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, absl::Status> failed_batches_ ABSL_GUARDED_BY(mu_);
};

// What the journal says about one lease after folding all its records.
struct JournaledLease {
  journal::LeaseGranted granted;
  bool ended = false;      // a LeaseEnded was seen: the slice still needs reset and scrub
  bool reclaimed = false;  // ... because the session ended (not an explicit Release)
};

// Folds records into the leases whose slices are not yet freed, keyed by lease id. Records for
// unknown leases (an end or free without a grant) are ignored; a freed lease disappears. A second
// grant for a lease id that is still present is ignored (the first one's slice is the one that
// still has to be scrubbed). An update replaces the state of a live lease of its kind.
absl::flat_hash_map<std::string, JournaledLease> FoldJournal(
    const std::vector<journal::Record>& records);

// The records that reproduce `leases` (a grant, plus an end for ended ones): what Compact writes.
// Ordered by grant time, then lease id; sequence numbers are left for Compact to assign.
std::vector<journal::Record> SnapshotRecords(
    const absl::flat_hash_map<std::string, JournaledLease>& leases);

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_JOURNAL_JOURNAL_H_
