// Pools, leases, quotas and access policy for vfbrokerd: pure logic, no system calls.
//
// The allocator decides *whether* and *where* a tenant gets a slice; it never touches a device.
// A slice lives through three states:
//   live     granted to its owner; charged to the owner's quota; its range is in use
//   ending   released or reclaimed; no longer charged to anyone, but the range stays in use
//            until the backend has reset and scrubbed it (FreeSlice)
//   (gone)   the range is free for the next grant
//
// Not thread-safe: the broker core serializes access under its own lock.
#ifndef VFBROKER_BROKER_ALLOCATOR_ALLOCATOR_H_
#define VFBROKER_BROKER_ALLOCATOR_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace vfbroker {

// Who is asking, as the kernel reported it (SO_PEERCRED / SO_PEERGROUPS).
struct Tenant {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
};

struct AccessPolicy {
  std::vector<uint32_t> uids;
  std::vector<uint32_t> gids;
  bool any_user = false;

  // Root is always admitted; otherwise uid, primary gid or any supplementary gid must be listed.
  bool Admits(const Tenant& tenant) const;
};

struct Quota {
  uint64_t max_bytes = 0;   // 0 = unlimited
  uint32_t max_leases = 0;  // 0 = unlimited
};

struct QuotaPolicy {
  Quota default_quota;
  absl::flat_hash_map<uint32_t, Quota> per_uid;

  const Quota& For(uint32_t uid) const;
};

// First-fit allocation of aligned byte ranges in [0, capacity). Free ranges are coalesced.
//
// Every range the map hands out, accepts or keeps is aligned at both ends, so the free set is
// always a set of aligned, non-adjacent runs. Ranges passed to Reserve/Free must be aligned,
// non-empty and inside [0, capacity) (INVALID_ARGUMENT otherwise).
class ExtentMap {
 public:
  // `alignment` must be a power of two (a programming error otherwise: the process aborts;
  // use CheckGeometry first for untrusted values); `capacity` is rounded down to it.
  ExtentMap(uint64_t capacity, uint64_t alignment);

  // OK if `alignment` is a usable alignment (a non-zero power of two).
  static absl::Status CheckGeometry(uint64_t capacity, uint64_t alignment);

  // The lowest aligned free range of `size` bytes (size must be a non-zero multiple of the
  // alignment, INVALID_ARGUMENT otherwise). RESOURCE_EXHAUSTED when no free range is large enough.
  absl::StatusOr<uint64_t> Allocate(uint64_t size);
  // Marks [offset, offset+size) used; FAILED_PRECONDITION if any part of it is not free.
  absl::Status Reserve(uint64_t offset, uint64_t size);
  // Returns [offset, offset+size) to the free set; FAILED_PRECONDITION if any part is already free.
  absl::Status Free(uint64_t offset, uint64_t size);

  uint64_t capacity() const { return capacity_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t free_bytes() const { return free_bytes_; }
  uint64_t largest_free() const;
  // The free set as (offset, length) pairs in offset order; for stats and tests.
  std::vector<std::pair<uint64_t, uint64_t>> FreeRanges() const;

 private:
  uint64_t capacity_;
  uint64_t alignment_;
  uint64_t free_bytes_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length, non-overlapping, coalesced
};

struct BlockPoolSpec {
  std::string name;
  uint64_t capacity_bytes = 0;
  uint64_t alignment_bytes = 1 << 20;
  uint64_t max_extent_bytes = 0;  // 0 = capacity
  AccessPolicy access;
  // A pool of slots (NIC leases, xdp_nic): capacity_bytes is the number of slots, alignment 1,
  // and a lease is one slot, taken with AllocateSlot (AllocateExtent refuses the pool, and
  // AllocateSlot refuses block pools). Slots count against a tenant's lease quota only, never
  // against max_bytes.
  bool slots = false;
};

enum class SliceState { kLive, kEnding };

struct ExtentLeaseRecord {
  std::string lease_id;
  std::string pool;
  uint32_t owner_uid = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  SliceState state = SliceState::kLive;
};

struct PoolUsage {
  std::string name;
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t largest_free_bytes = 0;
  uint64_t alignment_bytes = 0;
  uint32_t live_leases = 0;
  uint32_t ending_leases = 0;
  bool slots = false;  // a pool of slots: capacity_bytes / free_bytes count slots
};

// OK if every spec is usable by Allocator: names non-empty and unique, alignments non-zero
// powers of two. The message names the offending pool.
absl::Status ValidatePoolSpecs(const std::vector<BlockPoolSpec>& pools);

class Allocator {
 public:
  // Pool names must be unique (the config loader guarantees it). Specs that fail
  // ValidatePoolSpecs are a programming error: the process aborts. Use Create for specs that
  // did not come through the config loader.
  Allocator(std::vector<BlockPoolSpec> pools, QuotaPolicy quotas);

  // Like the constructor, but returns ValidatePoolSpecs' error instead of aborting.
  static absl::StatusOr<Allocator> Create(std::vector<BlockPoolSpec> pools, QuotaPolicy quotas);

  // Grants `size` bytes (rounded up to the pool's alignment) of `pool` to `tenant` as `lease_id`.
  //   NOT_FOUND          no such pool
  //   PERMISSION_DENIED  the pool's policy does not admit the tenant
  //   INVALID_ARGUMENT   size 0, size that overflows when rounded, larger than the pool's max
  //                      extent; lease_id empty or already in use
  //   RESOURCE_EXHAUSTED quota (bytes or leases) exceeded, or no free range large enough
  absl::StatusOr<ExtentLeaseRecord> AllocateExtent(const Tenant& tenant, std::string_view pool,
                                                   uint64_t size, std::string lease_id);

  // Grants one slot of a slot pool (the lowest free one: record.offset is the slot index,
  // record.size is 1). Same errors as AllocateExtent, except that the lease quota is the only
  // quota, and FAILED_PRECONDITION if `pool` is a block pool. AllocateExtent answers
  // FAILED_PRECONDITION for a slot pool.
  absl::StatusOr<ExtentLeaseRecord> AllocateSlot(const Tenant& tenant, std::string_view pool,
                                                 std::string lease_id);

  // Re-creates a lease from the journal after a restart, in the given state. No policy or quota
  // check (the grant was valid when made); FAILED_PRECONDITION if the range overlaps another or
  // the lease id is already known; NOT_FOUND if the pool no longer exists; INVALID_ARGUMENT if
  // the range is empty, misaligned or outside the pool, or the lease id is empty.
  absl::Status RestoreExtent(const ExtentLeaseRecord& record);

  // live -> ending: uncharges the owner's quota; the range stays in use. NOT_FOUND if unknown,
  // FAILED_PRECONDITION if already ending.
  absl::Status EndLease(std::string_view lease_id);
  // Forgets the lease (live or ending) and frees its range. NOT_FOUND if unknown.
  absl::Status FreeSlice(std::string_view lease_id);

  const ExtentLeaseRecord* Find(std::string_view lease_id) const;
  std::vector<const ExtentLeaseRecord*> Leases() const;  // sorted by lease id
  bool PoolExists(std::string_view pool) const;
  bool Admits(const Tenant& tenant, std::string_view pool) const;
  std::vector<PoolUsage> Pools() const;  // in configuration order

  // What `uid` has live right now.
  uint64_t BytesHeldBy(uint32_t uid) const;
  uint32_t LeasesHeldBy(uint32_t uid) const;

 private:
  struct Pool {
    BlockPoolSpec spec;
    ExtentMap map;
  };
  struct Usage {
    uint64_t bytes = 0;
    uint32_t leases = 0;
  };

  absl::StatusOr<ExtentLeaseRecord> Allocate(const Tenant& tenant, std::string_view pool,
                                             uint64_t size, std::string lease_id, bool slot);
  // Removes a live lease's charge from its owner's usage.
  void Uncharge(const ExtentLeaseRecord& record);
  // Bytes a live lease is charged for: its size, or 0 in a slot pool.
  uint64_t ChargedBytes(const ExtentLeaseRecord& record) const;
  Pool* FindPool(std::string_view name);
  const Pool* FindPool(std::string_view name) const;

  std::vector<Pool> pools_;
  QuotaPolicy quotas_;
  absl::flat_hash_map<std::string, ExtentLeaseRecord> leases_;
  absl::flat_hash_map<uint32_t, Usage> usage_;  // live leases only
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_ALLOCATOR_ALLOCATOR_H_
