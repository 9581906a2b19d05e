#include "broker/journal/journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace vfbroker {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ~0ull;
  return static_cast<uint64_t>(st.st_size);
}

journal::Record Grant(const std::string& id, uint64_t offset = 0, int64_t when = 1) {
  journal::Record record;
  journal::LeaseGranted* granted = record.mutable_granted();
  granted->set_lease_id(id);
  granted->set_pool("pool0");
  granted->set_granted_unix_ms(when);
  granted->mutable_owner()->set_pid(1234);
  granted->mutable_owner()->set_uid(1000);
  granted->mutable_loop_extent()->set_offset_bytes(offset);
  granted->mutable_loop_extent()->set_size_bytes(1 << 20);
  granted->mutable_loop_extent()->set_inner_loop_index(10);
  granted->mutable_loop_extent()->set_outer_loop_index(11);
  return record;
}

journal::Record End(const std::string& id, bool reclaimed = false) {
  journal::Record record;
  record.mutable_ended()->set_lease_id(id);
  record.mutable_ended()->set_reclaimed(reclaimed);
  return record;
}

journal::Record Free(const std::string& id) {
  journal::Record record;
  record.mutable_freed()->set_lease_id(id);
  return record;
}

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string templ = absl::StrCat(base ? base : "/tmp", "/journal_test.XXXXXX");
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    path_ = dir_ + "/journal";
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::unlink((path_ + ".compact").c_str());
    ::rmdir(dir_.c_str());
  }

  std::unique_ptr<Journal> OpenOrDie(JournalReplay* replay) {
    absl::StatusOr<std::unique_ptr<Journal>> journal = Journal::Open(path_, replay);
    EXPECT_TRUE(journal.ok()) << journal.status();
    return journal.ok() ? std::move(*journal) : nullptr;
  }

  // Writes `count` grants g0..g<count-1>; returns the file size after each append.
  std::vector<uint64_t> WriteGrants(int count) {
    std::vector<uint64_t> sizes;
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    for (int i = 0; i < count; ++i) {
      EXPECT_TRUE(journal->Append(Grant(absl::StrCat("g", i), i << 20)).ok());
      sizes.push_back(FileSize(path_));
    }
    return sizes;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(JournalTest, NewJournalIsEmptyAndPrivate) {
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_NE(journal, nullptr);
  EXPECT_TRUE(replay.records.empty());
  EXPECT_EQ(replay.truncated_bytes, 0u);
  struct stat st;
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(journal->records_appended(), 0u);
}

TEST_F(JournalTest, RoundTrip) {
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_TRUE(journal->Append(Grant("a", 0)).ok());
    ASSERT_TRUE(journal->Append(Grant("b", 1 << 20)).ok());
    ASSERT_TRUE(journal->Append(End("a", true)).ok());
    ASSERT_TRUE(journal->Append(Free("a")).ok());
    EXPECT_EQ(journal->records_appended(), 4u);
  }
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 4u);
  EXPECT_EQ(replay.truncated_bytes, 0u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(replay.records[i].sequence(), uint64_t(i + 1));
  EXPECT_EQ(replay.records[0].granted().lease_id(), "a");
  EXPECT_EQ(replay.records[1].granted().loop_extent().offset_bytes(), 1u << 20);
  EXPECT_EQ(replay.records[1].granted().loop_extent().outer_loop_index(), 11);
  EXPECT_TRUE(replay.records[2].ended().reclaimed());
  EXPECT_EQ(replay.records[3].freed().lease_id(), "a");
}

TEST_F(JournalTest, FileFormatIsLengthCrcPayload) {
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_TRUE(journal->Append(Grant("a")).ok());
  }
  std::string data = ReadFile(path_);
  ASSERT_GE(data.size(), 8u);
  auto le32 = [&](size_t at) {
    const auto* b = reinterpret_cast<const unsigned char*>(data.data() + at);
    return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
  };
  const uint32_t length = le32(0);
  ASSERT_EQ(data.size(), 8u + length);
  const std::string payload = data.substr(8);
  EXPECT_EQ(le32(4), ::crc32(0, reinterpret_cast<const Bytef*>(payload.data()), length));
  journal::Record record;
  ASSERT_TRUE(record.ParseFromString(payload));
  EXPECT_EQ(record.sequence(), 1u);
  EXPECT_EQ(record.granted().lease_id(), "a");
}

// A journal written before LeaseGranted's oneof had nvme_sriov (the bytes below are that
// schema's encoding, frozen) still replays and folds into the same loop_extent lease.
TEST_F(JournalTest, OldFormatLoopExtentGrantStillFolds) {
  const unsigned char kOld[] = {
      0x08, 0x01,                                                  // sequence 1
      0x52, 0x24,                                                  // granted (field 10)
      0x0a, 0x09, 'l', 'e', 'a', 's', 'e', '-', 'o', 'l', 'd',     //   lease_id
      0x12, 0x05, 'p', 'o', 'o', 'l', '0',                         //   pool
      0x1a, 0x06, 0x08, 0xd2, 0x09, 0x18, 0xe8, 0x07,              //   owner pid 1234 uid 1000
      0x52, 0x08, 0x10, 0x80, 0x80, 0x40, 0x18, 0x0a, 0x20, 0x0b,  //   loop_extent (field 10)
  };
  const std::string payload(reinterpret_cast<const char*>(kOld), sizeof(kOld));
  auto le32 = [](uint32_t v) {
    return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)};
  };
  WriteFile(path_, le32(payload.size()) +
                       le32(::crc32(0, reinterpret_cast<const Bytef*>(payload.data()),
                                    payload.size())) +
                       payload);
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 1u);
  EXPECT_EQ(replay.truncated_bytes, 0u);
  auto folded = FoldJournal(replay.records);
  ASSERT_EQ(folded.size(), 1u);
  const journal::LeaseGranted& granted = folded["lease-old"].granted;
  ASSERT_EQ(granted.state_case(), journal::LeaseGranted::kLoopExtent);
  EXPECT_EQ(granted.owner().pid(), 1234);
  EXPECT_EQ(granted.loop_extent().size_bytes(), 1u << 20);
  EXPECT_EQ(granted.loop_extent().inner_loop_index(), 10);
  EXPECT_EQ(granted.loop_extent().outer_loop_index(), 11);
  EXPECT_FALSE(granted.has_nvme_sriov());
}

TEST(FoldJournalTest, NvmeSriovGrantRoundTrips) {
  journal::Record record;
  journal::LeaseGranted* granted = record.mutable_granted();
  granted->set_lease_id("nv");
  granted->mutable_nvme_sriov()->set_slot(1);
  granted->mutable_nvme_sriov()->set_vf_pci_address("0000:01:00.2");
  granted->mutable_nvme_sriov()->set_namespace_id(3);
  journal::Record parsed;
  ASSERT_TRUE(parsed.ParseFromString(record.SerializeAsString()));
  auto folded = FoldJournal({parsed});
  ASSERT_EQ(folded.size(), 1u);
  EXPECT_EQ(folded["nv"].granted.nvme_sriov().vf_pci_address(), "0000:01:00.2");
  EXPECT_FALSE(folded["nv"].granted.has_loop_extent());
}

TEST_F(JournalTest, SequenceNumbersContinueAfterReopen) {
  WriteGrants(3);
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_EQ(replay.records.size(), 3u);
    ASSERT_TRUE(journal->Append(End("g1")).ok());
    EXPECT_EQ(journal->records_appended(), 1u);
  }
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 4u);
  EXPECT_EQ(replay.records[3].sequence(), 4u);
  EXPECT_EQ(replay.records[3].ended().lease_id(), "g1");
}

TEST_F(JournalTest, TornLastRecordAtEveryOffset) {
  const std::vector<uint64_t> sizes = WriteGrants(3);
  const std::string full = ReadFile(path_);
  ASSERT_EQ(full.size(), sizes[2]);
  const uint64_t prefix = sizes[1];
  for (uint64_t cut = prefix; cut < full.size(); ++cut) {
    SCOPED_TRACE(absl::StrCat("cut at ", cut, " of ", full.size()));
    WriteFile(path_, full.substr(0, cut));
    {
      JournalReplay replay;
      std::unique_ptr<Journal> journal = OpenOrDie(&replay);
      ASSERT_NE(journal, nullptr);
      ASSERT_EQ(replay.records.size(), 2u);
      EXPECT_EQ(replay.records[1].granted().lease_id(), "g1");
      EXPECT_EQ(replay.truncated_bytes, cut - prefix);
      EXPECT_EQ(FileSize(path_), prefix);
      ASSERT_TRUE(journal->Append(End("g0")).ok());
    }
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_EQ(replay.records.size(), 3u);
    EXPECT_EQ(replay.truncated_bytes, 0u);
    EXPECT_EQ(replay.records[2].sequence(), 3u);
    EXPECT_EQ(replay.records[2].ended().lease_id(), "g0");
  }
}

TEST_F(JournalTest, CorruptCrcInTheMiddleEndsTheJournal) {
  const std::vector<uint64_t> sizes = WriteGrants(5);
  std::string data = ReadFile(path_);
  // Flip one payload byte of the third record.
  data[sizes[1] + 8 + 3] ^= 0x40;
  WriteFile(path_, data);
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 2u);
  EXPECT_EQ(replay.truncated_bytes, sizes[4] - sizes[1]);
  EXPECT_EQ(FileSize(path_), sizes[1]);
  ASSERT_TRUE(journal->Append(Grant("after")).ok());
  journal.reset();
  journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 3u);
  EXPECT_EQ(replay.records[2].granted().lease_id(), "after");
}

TEST_F(JournalTest, CorruptCrcFieldEndsTheJournal) {
  const std::vector<uint64_t> sizes = WriteGrants(3);
  std::string data = ReadFile(path_);
  data[sizes[0] + 5] ^= 0x01;  // CRC of the second record
  WriteFile(path_, data);
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  EXPECT_EQ(replay.records.size(), 1u);
  EXPECT_EQ(FileSize(path_), sizes[0]);
}

TEST_F(JournalTest, OversizeLengthEndsTheJournal) {
  const std::vector<uint64_t> sizes = WriteGrants(2);
  std::string data = ReadFile(path_);
  const uint32_t huge = kMaxJournalRecordBytes + 1;
  std::string frame(8, '\0');
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((huge >> (8 * i)) & 0xff);
  frame += std::string(64, 'x');
  WriteFile(path_, data + frame);
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  EXPECT_EQ(replay.records.size(), 2u);
  EXPECT_EQ(replay.truncated_bytes, frame.size());
  EXPECT_EQ(FileSize(path_), sizes[1]);
}

TEST_F(JournalTest, ZeroFilledTailEndsTheJournal) {
  const std::vector<uint64_t> sizes = WriteGrants(2);
  WriteFile(path_, ReadFile(path_) + std::string(4096, '\0'));
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  EXPECT_EQ(replay.records.size(), 2u);
  EXPECT_EQ(replay.truncated_bytes, 4096u);
  EXPECT_EQ(FileSize(path_), sizes[1]);
}

TEST_F(JournalTest, ReplayedFrameOfAnOlderSequenceEndsTheJournal) {
  const std::vector<uint64_t> sizes = WriteGrants(2);
  std::string data = ReadFile(path_);
  WriteFile(path_, data + data.substr(0, sizes[0]));  // record 1 again after record 2
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  EXPECT_EQ(replay.records.size(), 2u);
  EXPECT_EQ(replay.truncated_bytes, sizes[0]);
}

TEST_F(JournalTest, GarbageFileYieldsNothingAndIsReusable) {
  std::string garbage;
  uint32_t x = 12345;
  for (int i = 0; i < 1000; ++i) {
    x = x * 1103515245u + 12345u;
    garbage.push_back(static_cast<char>(x >> 24));
  }
  WriteFile(path_, garbage);
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_NE(journal, nullptr);
    EXPECT_TRUE(replay.records.empty());
    EXPECT_EQ(replay.truncated_bytes, garbage.size());
    EXPECT_EQ(FileSize(path_), 0u);
    ASSERT_TRUE(journal->Append(Grant("x")).ok());
  }
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 1u);
  EXPECT_EQ(replay.records[0].sequence(), 1u);
}

TEST_F(JournalTest, SecondOpenIsRefusedWhileTheFirstIsAlive) {
  JournalReplay replay;
  std::unique_ptr<Journal> first = OpenOrDie(&replay);
  absl::StatusOr<std::unique_ptr<Journal>> second = Journal::Open(path_, &replay);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  first.reset();
  EXPECT_TRUE(Journal::Open(path_, &replay).ok());
}

TEST_F(JournalTest, ConcurrentAppendsAreAllDurableAndNumberedOnce) {
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&journal, t] {
        for (int i = 0; i < 25; ++i) {
          EXPECT_TRUE(journal->Append(Grant(absl::StrCat("t", t, "-", i))).ok());
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(journal->records_appended(), 100u);
  }
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(replay.records[i].sequence(), uint64_t(i + 1));
  EXPECT_EQ(FoldJournal(replay.records).size(), 100u);
}

TEST(FoldJournalTest, GrantIsLive) {
  auto leases = FoldJournal({Grant("a", 4096)});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_FALSE(leases["a"].ended);
  EXPECT_EQ(leases["a"].granted.loop_extent().offset_bytes(), 4096u);
}

TEST(FoldJournalTest, GrantThenEndIsEnded) {
  auto leases = FoldJournal({Grant("a"), End("a", /*reclaimed=*/true), Grant("b"), End("b")});
  ASSERT_EQ(leases.size(), 2u);
  EXPECT_TRUE(leases["a"].ended);
  EXPECT_TRUE(leases["a"].reclaimed);
  EXPECT_TRUE(leases["b"].ended);
  EXPECT_FALSE(leases["b"].reclaimed);
}

TEST(FoldJournalTest, FreedLeaseDisappears) {
  auto leases = FoldJournal({Grant("a"), Grant("b"), End("a"), Free("a")});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_TRUE(leases.contains("b"));
}

TEST(FoldJournalTest, EndOrFreeWithoutGrantIsIgnored) {
  auto leases = FoldJournal({End("ghost"), Free("ghost2"), Grant("a"), Free("b")});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_TRUE(leases.contains("a"));
  EXPECT_FALSE(leases["a"].ended);
}

TEST(FoldJournalTest, EndBeforeGrantDoesNotEndTheLaterGrant) {
  auto leases = FoldJournal({End("a"), Grant("a")});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_FALSE(leases["a"].ended);
}

TEST(FoldJournalTest, SecondGrantForALiveIdKeepsTheFirst) {
  auto leases = FoldJournal({Grant("a", 0), Grant("a", 8192)});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases["a"].granted.loop_extent().offset_bytes(), 0u);
}

TEST(FoldJournalTest, IdCanBeGrantedAgainAfterFree) {
  auto leases = FoldJournal({Grant("a", 0), End("a"), Free("a"), Grant("a", 8192)});
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_FALSE(leases["a"].ended);
  EXPECT_EQ(leases["a"].granted.loop_extent().offset_bytes(), 8192u);
}

TEST(SnapshotRecordsTest, ReproducesTheFoldedState) {
  std::vector<journal::Record> history = {Grant("a", 0, 30),  Grant("b", 4096, 10),
                                          End("b", true),     Grant("c", 8192, 20),
                                          End("c"),           Free("c"),
                                          Grant("d", 0, 20)};
  auto folded = FoldJournal(history);
  std::vector<journal::Record> snapshot = SnapshotRecords(folded);
  // b (t=10) grant + end, d (t=20), a (t=30).
  ASSERT_EQ(snapshot.size(), 4u);
  EXPECT_EQ(snapshot[0].granted().lease_id(), "b");
  EXPECT_EQ(snapshot[1].ended().lease_id(), "b");
  EXPECT_TRUE(snapshot[1].ended().reclaimed());
  EXPECT_EQ(snapshot[2].granted().lease_id(), "d");
  EXPECT_EQ(snapshot[3].granted().lease_id(), "a");
  auto refolded = FoldJournal(snapshot);
  ASSERT_EQ(refolded.size(), folded.size());
  for (const auto& [id, lease] : folded) {
    ASSERT_TRUE(refolded.contains(id));
    EXPECT_EQ(refolded[id].granted.SerializeAsString(), lease.granted.SerializeAsString());
    EXPECT_EQ(refolded[id].ended, lease.ended);
    EXPECT_EQ(refolded[id].reclaimed, lease.reclaimed);
  }
}

TEST_F(JournalTest, CompactThenReopenYieldsTheSameFoldedState) {
  std::vector<journal::Record> history = {Grant("a", 0, 1), Grant("b", 4096, 2), End("a"),
                                          Grant("c", 8192, 3), End("c", true), Free("a"),
                                          Grant("d", 1 << 20, 4)};
  absl::flat_hash_map<std::string, JournaledLease> before;
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    for (const journal::Record& record : history) ASSERT_TRUE(journal->Append(record).ok());
    journal.reset();
    journal = OpenOrDie(&replay);
    before = FoldJournal(replay.records);
    ASSERT_EQ(before.size(), 3u);
    ASSERT_TRUE(journal->Compact(SnapshotRecords(before)).ok());
    // The journal keeps appending, to the compacted file, numbering after it.
    ASSERT_TRUE(journal->Append(End("d")).ok());
  }
  EXPECT_NE(::access((path_ + ".compact").c_str(), F_OK), 0);
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  EXPECT_EQ(replay.truncated_bytes, 0u);
  ASSERT_EQ(replay.records.size(), 5u);  // b, c, end c, d, end d
  for (int i = 0; i < 5; ++i) EXPECT_EQ(replay.records[i].sequence(), uint64_t(i + 1));
  auto after = FoldJournal(replay.records);
  before["d"].ended = true;
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [id, lease] : before) {
    ASSERT_TRUE(after.contains(id)) << id;
    EXPECT_EQ(after[id].granted.SerializeAsString(), lease.granted.SerializeAsString());
    EXPECT_EQ(after[id].ended, lease.ended) << id;
    EXPECT_EQ(after[id].reclaimed, lease.reclaimed) << id;
  }
}

TEST_F(JournalTest, CompactToNothingLeavesAnEmptyJournal) {
  WriteGrants(3);
  {
    JournalReplay replay;
    std::unique_ptr<Journal> journal = OpenOrDie(&replay);
    ASSERT_TRUE(journal->Compact({}).ok());
    EXPECT_EQ(FileSize(path_), 0u);
    ASSERT_TRUE(journal->Append(Grant("z")).ok());
  }
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 1u);
  EXPECT_EQ(replay.records[0].sequence(), 1u);
}

TEST_F(JournalTest, CompactKeepsTheFileLocked) {
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  ASSERT_TRUE(journal->Compact({Grant("a")}).ok());
  EXPECT_EQ(Journal::Open(path_, &replay).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(JournalTest, OversizeRecordIsRefusedAndTheJournalStaysUsable) {
  JournalReplay replay;
  std::unique_ptr<Journal> journal = OpenOrDie(&replay);
  journal::Record big = Grant("big");
  big.mutable_granted()->set_pool(std::string(kMaxJournalRecordBytes, 'p'));
  EXPECT_EQ(journal->Append(big).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(journal->Append(Grant("small")).ok());
  journal.reset();
  journal = OpenOrDie(&replay);
  ASSERT_EQ(replay.records.size(), 1u);
  EXPECT_EQ(replay.records[0].sequence(), 1u);
}

TEST_F(JournalTest, OpenFailsOnADirectory) {
  JournalReplay replay;
  EXPECT_FALSE(Journal::Open(dir_, &replay).ok());
}

}  // namespace
}  // namespace vfbroker

namespace vfbroker {
namespace {

TEST(JournalGroupCommitTest, ConcurrentAppendsAreAllDurableAndReplayInSequence) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/group_commit.journal";
  std::remove(path.c_str());
  constexpr int kThreads = 16;
  constexpr int kPerThread = 50;
  {
    auto journal = Journal::Open(path, nullptr);
    ASSERT_TRUE(journal.ok()) << journal.status();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          journal::Record record;
          record.mutable_freed()->set_lease_id(absl::StrCat("lease-", t, "-", i));
          ASSERT_TRUE((*journal)->Append(record).ok());
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ((*journal)->records_appended(), uint64_t{kThreads * kPerThread});
  }
  JournalReplay replay;
  auto reopened = Journal::Open(path, &replay);
  ASSERT_TRUE(reopened.ok());
  ASSERT_EQ(replay.records.size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(replay.truncated_bytes, 0u);
  for (size_t i = 0; i < replay.records.size(); ++i) {
    EXPECT_EQ(replay.records[i].sequence(), i + 1);
  }
}


// xdp_nic: filter changes are "updated" records that replace the live lease's state; an update
// after the end, for another kind of lease or for an unknown lease changes nothing.
TEST(FoldJournalTest, NicUpdatesReplaceLiveStateOnly) {
  std::vector<journal::Record> records;
  auto grant = [&](const std::string& id, bool nic) {
    journal::Record r;
    r.mutable_granted()->set_lease_id(id);
    r.mutable_granted()->set_pool("p");
    if (nic) {
      r.mutable_granted()->mutable_xdp_nic()->set_device("vfbx000000.0001");
      r.mutable_granted()->mutable_xdp_nic()->set_mac(std::string("\x02\0\0\0\0\x01", 6));
    } else {
      r.mutable_granted()->mutable_loop_extent()->set_size_bytes(1);
    }
    records.push_back(r);
  };
  auto update = [&](const std::string& id, int filters) {
    journal::Record r;
    r.mutable_updated()->set_lease_id(id);
    r.mutable_updated()->mutable_xdp_nic()->set_device("vfbx000000.0001");
    for (int i = 0; i < filters; ++i) {
      r.mutable_updated()->mutable_xdp_nic()->add_filters()->set_dst_port(1000 + i);
    }
    records.push_back(r);
  };
  grant("nic", true);
  grant("loop", false);
  update("nic", 2);
  update("loop", 3);
  update("ghost", 1);
  auto folded = FoldJournal(records);
  ASSERT_EQ(folded.size(), 2u);
  EXPECT_EQ(folded["nic"].granted.xdp_nic().filters_size(), 2);
  EXPECT_FALSE(folded["loop"].granted.has_xdp_nic());
  journal::Record ended;
  ended.mutable_ended()->set_lease_id("nic");
  records.push_back(ended);
  update("nic", 5);
  folded = FoldJournal(records);
  EXPECT_EQ(folded["nic"].granted.xdp_nic().filters_size(), 2);
  EXPECT_TRUE(folded["nic"].ended);
  // The snapshot of a folded NIC lease carries its latest state in the grant.
  std::vector<journal::Record> snapshot = SnapshotRecords(folded);
  auto refolded = FoldJournal(snapshot);
  EXPECT_EQ(refolded["nic"].granted.xdp_nic().filters_size(), 2);
  journal::Record freed;
  freed.mutable_freed()->set_lease_id("nic");
  records.push_back(freed);
  EXPECT_FALSE(FoldJournal(records).contains("nic"));
}

}  // namespace
}  // namespace vfbroker
