#include "broker/journal/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/unique_fd.h"

namespace vfbroker {
namespace {

constexpr size_t kFrameHeaderBytes = 8;  // u32 length + u32 CRC-32

absl::Status ErrnoStatus(absl::string_view call, absl::string_view path, int err) {
  std::string message = absl::StrCat("journal ", path, ": ", call, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case EWOULDBLOCK:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

void PutLe32(uint32_t value, char* out) {
  out[0] = static_cast<char>(value & 0xff);
  out[1] = static_cast<char>((value >> 8) & 0xff);
  out[2] = static_cast<char>((value >> 16) & 0xff);
  out[3] = static_cast<char>((value >> 24) & 0xff);
}

uint32_t GetLe32(const char* in) {
  const auto* b = reinterpret_cast<const unsigned char*>(in);
  return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
         static_cast<uint32_t>(b[2]) << 16 | static_cast<uint32_t>(b[3]) << 24;
}

uint32_t Crc32(const char* data, size_t size) {
  // zlib's crc32 takes a uInt length; payloads are bounded by kMaxJournalRecordBytes (1 MiB).
  return static_cast<uint32_t>(
      ::crc32(::crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data), size));
}

// Appends one frame (header + payload) for `record` to `out`.
absl::Status EncodeFrame(const journal::Record& record, std::string* out) {
  std::string payload;
  if (!record.SerializeToString(&payload)) {
    return absl::InternalError("journal: cannot serialize record");
  }
  if (payload.empty() || payload.size() > kMaxJournalRecordBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "journal: record of ", payload.size(), " bytes (must be 1..", kMaxJournalRecordBytes,
        ")"));
  }
  char header[kFrameHeaderBytes];
  PutLe32(static_cast<uint32_t>(payload.size()), header);
  PutLe32(Crc32(payload.data(), payload.size()), header + 4);
  out->append(header, sizeof(header));
  out->append(payload);
  return absl::OkStatus();
}

// Writes all of `data` at `offset` with as few pwrite calls as the kernel allows (one, unless it
// reports a short write), retrying EINTR.
absl::Status WriteAllAt(int fd, absl::string_view data, uint64_t offset,
                        absl::string_view path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done,
                         static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("pwrite", path, errno);
    }
    if (n == 0) return ErrnoStatus("pwrite", path, EIO);  // no progress: do not spin
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ReadWholeFile(int fd, absl::string_view path, std::string* out) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus("fstat", path, errno);
  out->clear();
  out->reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  uint64_t offset = 0;
  while (true) {
    ssize_t n = ::pread(fd, buffer, sizeof(buffer), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("pread", path, errno);
    }
    if (n == 0) break;
    out->append(buffer, static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

std::string DirectoryOf(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Makes a creation or rename inside `dir` durable: without this, a crash can lose the
// directory entry even though the file's own data was fsynced.
absl::Status FsyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open directory", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync directory", dir, errno);
  return absl::OkStatus();
}

// Advisory lock so that two brokers never append to one journal. flock(2) locks belong to the
// open file description, so they vanish with the process and survive nothing else.
absl::Status LockExclusive(int fd, absl::string_view path) {
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("journal ", path, ": locked by another open instance (another broker?)"));
    }
    return ErrnoStatus("flock", path, errno);
  }
  return absl::OkStatus();
}

// Parses the frames of `data`. Returns how many leading bytes are intact.
uint64_t ParseFrames(const std::string& data, std::vector<journal::Record>* records) {
  uint64_t pos = 0;
  uint64_t last_sequence = 0;
  while (data.size() - pos >= kFrameHeaderBytes) {
    const uint32_t length = GetLe32(data.data() + pos);
    const uint32_t crc = GetLe32(data.data() + pos + 4);
    // Zero length is never written (every record carries a sequence number), so a run of zero
    // bytes (a file extended by a crash before its data reached the disk) ends the journal.
    if (length == 0 || length > kMaxJournalRecordBytes) break;
    if (data.size() - pos - kFrameHeaderBytes < length) break;  // torn
    const char* payload = data.data() + pos + kFrameHeaderBytes;
    if (Crc32(payload, length) != crc) break;
    journal::Record record;
    if (!record.ParseFromArray(payload, static_cast<int>(length))) break;
    // Sequence numbers only ever grow; anything else is not a frame this journal wrote.
    if (record.sequence() <= last_sequence) break;
    last_sequence = record.sequence();
    records->push_back(std::move(record));
    pos += kFrameHeaderBytes + length;
  }
  return pos;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path,
                                                       JournalReplay* replay) {
  JournalReplay local_replay;
  if (replay == nullptr) replay = &local_replay;
  *replay = JournalReplay();

  bool created = false;
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid() && errno == ENOENT) {
    fd.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    created = fd.valid();
    // Lost a race with a concurrent creator: open what it made.
    if (!fd.valid() && errno == EEXIST) fd.reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  }
  if (!fd.valid()) return ErrnoStatus("open", path, errno);
  if (absl::Status locked = LockExclusive(fd.get(), path); !locked.ok()) return locked;

  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("fstat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("journal ", path, ": not a regular file"));
  }
  if (created) {
    if (absl::Status synced = FsyncDirectory(DirectoryOf(path)); !synced.ok()) return synced;
  }

  std::string data;
  if (absl::Status read = ReadWholeFile(fd.get(), path, &data); !read.ok()) return read;
  const uint64_t intact = ParseFrames(data, &replay->records);
  replay->truncated_bytes = data.size() - intact;
  if (intact < data.size()) {
    // Cut the torn or corrupt tail now: a later append after garbage would never be replayed.
    if (::ftruncate(fd.get(), static_cast<off_t>(intact)) != 0) {
      return ErrnoStatus("ftruncate", path, errno);
    }
    if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", path, errno);
  }
  const uint64_t next_sequence =
      replay->records.empty() ? 1 : replay->records.back().sequence() + 1;
  return std::unique_ptr<Journal>(new Journal(path, fd.release(), next_sequence, intact));
}

Journal::Journal(std::string path, int fd, uint64_t next_sequence, uint64_t size_bytes)
    : path_(std::move(path)), fd_(fd), next_sequence_(next_sequence), size_bytes_(size_bytes) {}

Journal::~Journal() {
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) ::close(fd_);
}

absl::Status Journal::Append(journal::Record record) {
  absl::MutexLock lock(&mu_);
  if (!failed_.ok()) return failed_;
  record.set_sequence(next_sequence_);
  if (absl::Status encoded = EncodeFrame(record, &pending_); !encoded.ok()) return encoded;
  ++next_sequence_;
  ++pending_records_;
  // Group commit: every record appended while a flush is under way joins the next batch, and
  // one appender writes and fdatasyncs the whole batch for all of them. Under concurrency the
  // cost of an fdatasync is shared instead of queued.
  const uint64_t my_batch = open_batch_;
  while (completed_batch_ < my_batch) {
    if (flushing_) {
      auto done_or_free = [this, my_batch]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return !flushing_ || completed_batch_ >= my_batch;
      };
      mu_.Await(absl::Condition(&done_or_free));
      continue;
    }
    FlushPendingLocked();
  }
  auto failure = failed_batches_.find(my_batch);
  return failure == failed_batches_.end() ? absl::OkStatus() : failure->second;
}

void Journal::FlushPendingLocked() {
  flushing_ = true;
  const uint64_t batch = open_batch_++;
  const std::string frames = std::move(pending_);
  pending_.clear();
  const uint64_t records = std::exchange(pending_records_, 0);
  const uint64_t offset = size_bytes_;
  mu_.Unlock();
  absl::Status result = WriteAllAt(fd_, frames, offset, path_);
  bool cut = true;
  int sync_errno = 0;
  if (!result.ok()) {
    // Take back a partial batch so that the next append starts on a frame boundary.
    cut = ::ftruncate(fd_, static_cast<off_t>(offset)) == 0;
  } else if (::fdatasync(fd_) != 0) {
    sync_errno = errno;
  }
  mu_.Lock();
  if (!result.ok() && !cut) {
    failed_ = absl::DataLossError(absl::StrCat(
        result.message(), "; and cannot cut the partial frame (ftruncate: ",
        std::strerror(errno), "): journal closed for appends"));
  } else if (sync_errno != 0) {
    // After a failed fdatasync the kernel may have dropped the dirty pages and cleared the
    // error, so nothing more can be known about what reached the disk: stop appending
    // rather than acknowledge grants on top of a hole. A restart replays what is really there.
    failed_ = absl::DataLossError(absl::StrCat(
        ErrnoStatus("fdatasync", path_, sync_errno).message(), ": journal closed for appends"));
    result = failed_;
  }
  if (result.ok()) {
    size_bytes_ += frames.size();
    appended_ += records;
  } else {
    failed_batches_[batch] = result;
    // Waiters of old batches have long since read their result.
    while (failed_batches_.size() > 64) failed_batches_.erase(failed_batches_.begin());
  }
  completed_batch_ = batch;
  flushing_ = false;
}

absl::Status Journal::Compact(std::vector<journal::Record> records) {
  absl::MutexLock lock(&mu_);
  // The flusher writes to fd_ without holding mu_: let it finish before fd_ changes.
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !flushing_ && pending_.empty(); };
  mu_.Await(absl::Condition(&idle));
  if (!failed_.ok()) return failed_;
  std::string contents;
  uint64_t sequence = 1;
  for (journal::Record& record : records) {
    record.set_sequence(sequence++);
    if (absl::Status encoded = EncodeFrame(record, &contents); !encoded.ok()) return encoded;
  }

  const std::string temp_path = path_ + ".compact";
  UniqueFd temp(::open(temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!temp.valid()) return ErrnoStatus("open", temp_path, errno);
  auto discard_temp = [&](absl::Status status) {
    ::unlink(temp_path.c_str());
    return status;
  };
  // Lock before the rename makes it visible, so the lock carries over to the new journal.
  if (absl::Status locked = LockExclusive(temp.get(), temp_path); !locked.ok()) {
    return discard_temp(locked);
  }
  if (absl::Status written = WriteAllAt(temp.get(), contents, 0, temp_path); !written.ok()) {
    return discard_temp(written);
  }
  if (::fsync(temp.get()) != 0) return discard_temp(ErrnoStatus("fsync", temp_path, errno));
  if (::rename(temp_path.c_str(), path_.c_str()) != 0) {
    return discard_temp(ErrnoStatus("rename", temp_path, errno));
  }
  // From here the new file is the journal, whether or not the directory fsync succeeds: the
  // old descriptor now refers to an unlinked file, so switch over before reporting anything.
  ::close(fd_);
  fd_ = temp.release();
  size_bytes_ = contents.size();
  next_sequence_ = sequence;
  return FsyncDirectory(DirectoryOf(path_));
}

uint64_t Journal::records_appended() const {
  absl::MutexLock lock(&mu_);
  return appended_;
}

absl::flat_hash_map<std::string, JournaledLease> FoldJournal(
    const std::vector<journal::Record>& records) {
  absl::flat_hash_map<std::string, JournaledLease> leases;
  for (const journal::Record& record : records) {
    switch (record.kind_case()) {
      case journal::Record::kGranted: {
        // A second grant for a lease id that is not freed yet cannot come from a correct
        // broker (ids are random); keep the first, whose slice certainly still needs a scrub.
        leases.try_emplace(record.granted().lease_id(), JournaledLease{record.granted()});
        break;
      }
      case journal::Record::kEnded: {
        auto it = leases.find(record.ended().lease_id());
        if (it == leases.end()) break;
        it->second.ended = true;
        it->second.reclaimed = record.ended().reclaimed();
        break;
      }
      case journal::Record::kFreed:
        leases.erase(record.freed().lease_id());
        break;
      case journal::Record::kUpdated: {
        // Only a lease of the same kind that is still live changes (an update after the end
        // cannot come from a correct broker: the slice is being torn down as granted).
        auto it = leases.find(record.updated().lease_id());
        if (it == leases.end() || it->second.ended || !it->second.granted.has_xdp_nic()) break;
        *it->second.granted.mutable_xdp_nic() = record.updated().xdp_nic();
        break;
      }
      case journal::Record::KIND_NOT_SET:
        break;
    }
  }
  return leases;
}

std::vector<journal::Record> SnapshotRecords(
    const absl::flat_hash_map<std::string, JournaledLease>& leases) {
  // Deterministic order (grant time, then id) so equal states compact to identical files.
  std::vector<const JournaledLease*> ordered;
  ordered.reserve(leases.size());
  for (const auto& [id, lease] : leases) ordered.push_back(&lease);
  std::sort(ordered.begin(), ordered.end(), [](const JournaledLease* a, const JournaledLease* b) {
    return std::make_tuple(a->granted.granted_unix_ms(), a->granted.lease_id()) <
           std::make_tuple(b->granted.granted_unix_ms(), b->granted.lease_id());
  });
  std::vector<journal::Record> records;
  for (const JournaledLease* lease : ordered) {
    journal::Record granted;
    *granted.mutable_granted() = lease->granted;
    records.push_back(std::move(granted));
    if (lease->ended) {
      journal::Record ended;
      ended.mutable_ended()->set_lease_id(lease->granted.lease_id());
      ended.mutable_ended()->set_reclaimed(lease->reclaimed);
      records.push_back(std::move(ended));
    }
  }
  return records;
}

}  // namespace vfbroker
