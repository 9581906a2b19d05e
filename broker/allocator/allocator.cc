#include "broker/allocator/allocator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace vfbroker {
namespace {

constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

// absl::string_view is not std::string_view in this Abseil build; the hash maps look up by the
// former.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

bool IsAligned(uint64_t x, uint64_t alignment) { return (x & (alignment - 1)) == 0; }

// Broken constructor preconditions leave no object to report an error from; stop loudly rather
// than hand out overlapping or misaligned ranges.
[[noreturn]] void DieOnProgrammingError(const absl::Status& status) {
  std::fprintf(stderr, "vfbroker allocator: %s\n", status.ToString().c_str());
  std::fflush(stderr);
  std::abort();
}

// The range [offset, offset + size) as "[offset, +size)" for messages: printing the length
// rather than the end keeps unchecked ranges printable without overflow.
std::string RangeText(uint64_t offset, uint64_t size) {
  return absl::StrCat("[", offset, ", +", size, ")");
}

// Shared argument checks of Reserve and Free: the range must be a non-empty, aligned part of
// [0, capacity). Reports the range as given, without computing an end that could overflow.
absl::Status CheckRange(const char* verb, uint64_t offset, uint64_t size, uint64_t capacity,
                        uint64_t alignment) {
  if (size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot ", verb, " an empty range at ", offset));
  }
  if (!IsAligned(offset, alignment) || !IsAligned(size, alignment)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot ", verb, " ", RangeText(offset, size),
                                                   ": offset and size must be multiples of ",
                                                   alignment));
  }
  if (offset > capacity || size > capacity - offset) {
    return absl::InvalidArgumentError(absl::StrCat("cannot ", verb, " ", RangeText(offset, size),
                                                   ": beyond the capacity of ", capacity,
                                                   " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Policies

bool AccessPolicy::Admits(const Tenant& tenant) const {
  if (tenant.uid == 0 || any_user) return true;
  auto listed = [](const std::vector<uint32_t>& ids, uint32_t id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  if (listed(uids, tenant.uid) || listed(gids, tenant.gid)) return true;
  for (uint32_t group : tenant.groups) {
    if (listed(gids, group)) return true;
  }
  return false;
}

const Quota& QuotaPolicy::For(uint32_t uid) const {
  auto it = per_uid.find(uid);
  return it == per_uid.end() ? default_quota : it->second;
}

// ---------------------------------------------------------------------------------------------
// ExtentMap

absl::Status ExtentMap::CheckGeometry(uint64_t capacity, uint64_t alignment) {
  (void)capacity;  // any capacity works: it is rounded down to the alignment
  if (!IsPowerOfTwo(alignment)) {
    return absl::InvalidArgumentError(
        absl::StrCat("alignment must be a non-zero power of two, got ", alignment));
  }
  return absl::OkStatus();
}

ExtentMap::ExtentMap(uint64_t capacity, uint64_t alignment)
    : capacity_(0), alignment_(alignment), free_bytes_(0) {
  if (absl::Status status = CheckGeometry(capacity, alignment); !status.ok()) {
    DieOnProgrammingError(status);
  }
  capacity_ = capacity & ~(alignment - 1);
  free_bytes_ = capacity_;
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

absl::StatusOr<uint64_t> ExtentMap::Allocate(uint64_t size) {
  if (size == 0 || !IsAligned(size, alignment_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "extent size must be a non-zero multiple of the alignment (", alignment_, "), got ", size));
  }
  // Every free run starts on an alignment boundary, so the first run that is long enough is the
  // lowest aligned fit.
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const uint64_t run_offset = it->first;
    const uint64_t run_length = it->second;
    if (run_length < size) continue;
    auto hint = free_.erase(it);
    if (run_length > size) {
      // run_offset + run_length <= capacity_, so run_offset + size cannot overflow.
      free_.emplace_hint(hint, run_offset + size, run_length - size);
    }
    free_bytes_ -= size;
    return run_offset;
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("no free range of ", size, " bytes (largest free: ", largest_free(), ")"));
}

absl::Status ExtentMap::Reserve(uint64_t offset, uint64_t size) {
  if (absl::Status status = CheckRange("reserve", offset, size, capacity_, alignment_);
      !status.ok()) {
    return status;
  }
  const uint64_t end = offset + size;  // <= capacity_, checked above
  // The only run that can contain `offset` is the last one starting at or before it.
  auto it = free_.upper_bound(offset);
  if (it == free_.begin()) {
    return absl::FailedPreconditionError(
        absl::StrCat("range ", RangeText(offset, size), " is not free"));
  }
  --it;
  const uint64_t run_offset = it->first;
  const uint64_t run_end = it->first + it->second;  // <= capacity_
  if (run_end < end) {
    return absl::FailedPreconditionError(
        absl::StrCat("range ", RangeText(offset, size), " is not free"));
  }
  auto hint = free_.erase(it);
  if (run_end > end) hint = free_.emplace_hint(hint, end, run_end - end);
  if (offset > run_offset) free_.emplace_hint(hint, run_offset, offset - run_offset);
  free_bytes_ -= size;
  return absl::OkStatus();
}

absl::Status ExtentMap::Free(uint64_t offset, uint64_t size) {
  if (absl::Status status = CheckRange("free", offset, size, capacity_, alignment_); !status.ok()) {
    return status;
  }
  const uint64_t end = offset + size;     // <= capacity_, checked above
  auto next = free_.lower_bound(offset);  // first run starting at or after offset
  if (next != free_.end() && next->first < end) {
    return absl::FailedPreconditionError(
        absl::StrCat("range ", RangeText(offset, size), " is already partly free"));
  }
  auto prev = next == free_.begin() ? free_.end() : std::prev(next);
  if (prev != free_.end() && prev->first + prev->second > offset) {
    return absl::FailedPreconditionError(
        absl::StrCat("range ", RangeText(offset, size), " is already partly free"));
  }
  // Coalesce with the neighbours so that the free set never holds two adjacent runs.
  uint64_t merged_offset = offset;
  uint64_t merged_end = end;
  if (prev != free_.end() && prev->first + prev->second == offset) {
    merged_offset = prev->first;
    free_.erase(prev);
  }
  if (next != free_.end() && next->first == end) {
    merged_end = next->first + next->second;
    next = free_.erase(next);
  }
  free_.emplace_hint(next, merged_offset, merged_end - merged_offset);
  free_bytes_ += size;
  return absl::OkStatus();
}

uint64_t ExtentMap::largest_free() const {
  uint64_t largest = 0;
  for (const auto& [offset, length] : free_) largest = std::max(largest, length);
  return largest;
}

std::vector<std::pair<uint64_t, uint64_t>> ExtentMap::FreeRanges() const {
  return std::vector<std::pair<uint64_t, uint64_t>>(free_.begin(), free_.end());
}

// ---------------------------------------------------------------------------------------------
// Allocator

absl::Status ValidatePoolSpecs(const std::vector<BlockPoolSpec>& pools) {
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < pools.size(); ++i) {
    const BlockPoolSpec& spec = pools[i];
    if (spec.name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("pool #", i, " has an empty name"));
    }
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool \"", spec.name, "\" is configured more than once"));
    }
    if (spec.slots && (spec.alignment_bytes != 1 || spec.max_extent_bytes > 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pool \"", spec.name, "\": a slot pool has alignment 1 and one slot per lease"));
    }
    if (absl::Status status = ExtentMap::CheckGeometry(spec.capacity_bytes, spec.alignment_bytes);
        !status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool \"", spec.name, "\": ", status.message()));
    }
  }
  return absl::OkStatus();
}

Allocator::Allocator(std::vector<BlockPoolSpec> pools, QuotaPolicy quotas)
    : quotas_(std::move(quotas)) {
  if (absl::Status status = ValidatePoolSpecs(pools); !status.ok()) {
    DieOnProgrammingError(status);
  }
  pools_.reserve(pools.size());
  for (BlockPoolSpec& spec : pools) {
    ExtentMap map(spec.capacity_bytes, spec.alignment_bytes);
    pools_.push_back(Pool{std::move(spec), std::move(map)});
  }
}

absl::StatusOr<Allocator> Allocator::Create(std::vector<BlockPoolSpec> pools, QuotaPolicy quotas) {
  if (absl::Status status = ValidatePoolSpecs(pools); !status.ok()) return status;
  return Allocator(std::move(pools), std::move(quotas));
}

Allocator::Pool* Allocator::FindPool(std::string_view name) {
  for (Pool& pool : pools_) {
    if (pool.spec.name == name) return &pool;
  }
  return nullptr;
}

const Allocator::Pool* Allocator::FindPool(std::string_view name) const {
  for (const Pool& pool : pools_) {
    if (pool.spec.name == name) return &pool;
  }
  return nullptr;
}

absl::StatusOr<ExtentLeaseRecord> Allocator::AllocateExtent(const Tenant& tenant,
                                                            std::string_view pool_name,
                                                            uint64_t size, std::string lease_id) {
  return Allocate(tenant, pool_name, size, std::move(lease_id), /*slot=*/false);
}

absl::StatusOr<ExtentLeaseRecord> Allocator::AllocateSlot(const Tenant& tenant,
                                                          std::string_view pool_name,
                                                          std::string lease_id) {
  return Allocate(tenant, pool_name, 1, std::move(lease_id), /*slot=*/true);
}

uint64_t Allocator::ChargedBytes(const ExtentLeaseRecord& record) const {
  const Pool* pool = FindPool(record.pool);
  return pool != nullptr && pool->spec.slots ? 0 : record.size;
}

absl::StatusOr<ExtentLeaseRecord> Allocator::Allocate(const Tenant& tenant,
                                                      std::string_view pool_name, uint64_t size,
                                                      std::string lease_id, bool slot) {
  Pool* pool = FindPool(pool_name);
  if (pool == nullptr) {
    return absl::NotFoundError(absl::StrCat("no pool named \"", AsAbsl(pool_name), "\""));
  }
  if (!pool->spec.access.Admits(tenant)) {
    return absl::PermissionDeniedError(absl::StrCat("uid ", tenant.uid, " (gid ", tenant.gid,
                                                    ") may not allocate from pool \"",
                                                    pool->spec.name, "\""));
  }
  if (pool->spec.slots != slot) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pool \"", pool->spec.name, "\" is a ", pool->spec.slots ? "NIC" : "block",
        " pool; use ", pool->spec.slots ? "AllocateNic" : "AllocateExtent"));
  }
  if (lease_id.empty()) return absl::InvalidArgumentError("lease id must not be empty");
  if (leases_.contains(lease_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease id \"", lease_id, "\" is already in use"));
  }

  const uint64_t alignment = pool->map.alignment();
  if (size == 0) return absl::InvalidArgumentError("extent size must be greater than 0");
  if (size > kMaxU64 - (alignment - 1)) {
    return absl::InvalidArgumentError(absl::StrCat("extent size ", size,
                                                   " is too large to round up to the alignment of ",
                                                   alignment, " bytes"));
  }
  const uint64_t rounded = (size + (alignment - 1)) & ~(alignment - 1);
  const uint64_t max_extent =
      pool->spec.max_extent_bytes == 0 ? pool->map.capacity() : pool->spec.max_extent_bytes;
  if (rounded > max_extent) {
    return absl::InvalidArgumentError(absl::StrCat("extent of ", rounded,
                                                   " bytes is larger than pool \"", pool->spec.name,
                                                   "\" allows (", max_extent, " bytes)"));
  }

  const Quota& quota = quotas_.For(tenant.uid);
  const uint64_t held_bytes = BytesHeldBy(tenant.uid);
  const uint32_t held_leases = LeasesHeldBy(tenant.uid);
  // What the byte quota sees: nothing for a slot.
  const uint64_t charged = slot ? 0 : rounded;
  // held_bytes never exceeds max_bytes for a grant made here, but leases restored from the
  // journal skip the quota check (and quotas may have shrunk since), so compare without
  // subtracting past zero.
  if (quota.max_bytes != 0 &&
      (held_bytes > quota.max_bytes || charged > quota.max_bytes - held_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", tenant.uid, " holds ", held_bytes, " bytes; another ", rounded,
                     " would exceed its quota of ", quota.max_bytes, " bytes"));
  }
  if (quota.max_leases != 0 && held_leases >= quota.max_leases) {
    return absl::ResourceExhaustedError(absl::StrCat("uid ", tenant.uid, " holds ", held_leases,
                                                     " leases, its quota is ", quota.max_leases));
  }
  // Unlimited quotas still have to fit the counters.
  if (charged > kMaxU64 - held_bytes || held_leases == std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", tenant.uid, " holds too much to count another lease"));
  }

  absl::StatusOr<uint64_t> offset = pool->map.Allocate(rounded);
  if (!offset.ok()) {
    if (absl::IsResourceExhausted(offset.status())) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pool \"", pool->spec.name, "\" has no free range of ", rounded,
                       " bytes (largest free: ", pool->map.largest_free(), ")"));
    }
    return offset.status();
  }

  ExtentLeaseRecord record;
  record.lease_id = std::move(lease_id);
  record.pool = pool->spec.name;
  record.owner_uid = tenant.uid;
  record.offset = *offset;
  record.size = rounded;
  record.state = SliceState::kLive;
  Usage& usage = usage_[tenant.uid];
  usage.bytes += charged;  // cannot wrap: checked against kMaxU64 - held_bytes above
  usage.leases += 1;       // cannot wrap: checked against the uint32 maximum above
  leases_.emplace(record.lease_id, record);
  return record;
}

absl::Status Allocator::RestoreExtent(const ExtentLeaseRecord& record) {
  if (record.lease_id.empty()) return absl::InvalidArgumentError("lease id must not be empty");
  if (leases_.contains(record.lease_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease \"", record.lease_id, "\" is already known"));
  }
  Pool* pool = FindPool(record.pool);
  if (pool == nullptr) {
    return absl::NotFoundError(absl::StrCat("lease \"", record.lease_id, "\" names pool \"",
                                            record.pool, "\", which is not configured"));
  }
  if (absl::Status status = pool->map.Reserve(record.offset, record.size); !status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("cannot restore lease \"", record.lease_id, "\" in pool \"",
                                     pool->spec.name, "\": ", status.message()));
  }
  if (record.state == SliceState::kLive) {
    // Saturate rather than wrap. Only totals beyond 2^64 bytes or 2^32 leases saturate, which
    // no real set of devices reaches; a saturated total still refuses further grants.
    Usage& usage = usage_[record.owner_uid];
    const uint64_t charged = ChargedBytes(record);
    usage.bytes = charged > kMaxU64 - usage.bytes ? kMaxU64 : usage.bytes + charged;
    if (usage.leases < std::numeric_limits<uint32_t>::max()) usage.leases += 1;
  }
  leases_.emplace(record.lease_id, record);
  return absl::OkStatus();
}

void Allocator::Uncharge(const ExtentLeaseRecord& record) {
  auto usage = usage_.find(record.owner_uid);
  // Every live lease was charged when it was granted or restored, so the entry exists and holds
  // at least this lease; min() only matters for totals that saturated in RestoreExtent.
  if (usage == usage_.end()) return;
  usage->second.bytes -= std::min(usage->second.bytes, ChargedBytes(record));
  if (usage->second.leases > 0) usage->second.leases -= 1;
  if (usage->second.leases == 0) usage_.erase(usage);
}

absl::Status Allocator::EndLease(std::string_view lease_id) {
  auto it = leases_.find(AsAbsl(lease_id));
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("no lease \"", AsAbsl(lease_id), "\""));
  }
  ExtentLeaseRecord& record = it->second;
  if (record.state == SliceState::kEnding) {
    return absl::FailedPreconditionError(
        absl::StrCat("lease \"", record.lease_id, "\" is already ending"));
  }
  record.state = SliceState::kEnding;
  Uncharge(record);
  return absl::OkStatus();
}

absl::Status Allocator::FreeSlice(std::string_view lease_id) {
  auto it = leases_.find(AsAbsl(lease_id));
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("no lease \"", AsAbsl(lease_id), "\""));
  }
  const ExtentLeaseRecord& record = it->second;
  // Pools never go away and every lease's range was taken from its pool's map, so neither
  // error below can happen unless the allocator itself is broken; nothing is changed then.
  Pool* pool = FindPool(record.pool);
  if (pool == nullptr) {
    return absl::InternalError(
        absl::StrCat("lease \"", record.lease_id, "\" names unknown pool \"", record.pool, "\""));
  }
  if (absl::Status status = pool->map.Free(record.offset, record.size); !status.ok()) {
    return absl::InternalError(absl::StrCat("lease \"", record.lease_id, "\" in pool \"",
                                            record.pool, "\": ", status.message()));
  }
  if (record.state == SliceState::kLive) Uncharge(record);
  leases_.erase(it);
  return absl::OkStatus();
}

const ExtentLeaseRecord* Allocator::Find(std::string_view lease_id) const {
  auto it = leases_.find(AsAbsl(lease_id));
  return it == leases_.end() ? nullptr : &it->second;
}

std::vector<const ExtentLeaseRecord*> Allocator::Leases() const {
  std::vector<const ExtentLeaseRecord*> out;
  out.reserve(leases_.size());
  for (const auto& [id, record] : leases_) out.push_back(&record);
  std::sort(out.begin(), out.end(), [](const ExtentLeaseRecord* a, const ExtentLeaseRecord* b) {
    return a->lease_id < b->lease_id;
  });
  return out;
}

bool Allocator::PoolExists(std::string_view pool) const { return FindPool(pool) != nullptr; }

bool Allocator::Admits(const Tenant& tenant, std::string_view pool_name) const {
  const Pool* pool = FindPool(pool_name);
  return pool != nullptr && pool->spec.access.Admits(tenant);
}

std::vector<PoolUsage> Allocator::Pools() const {
  std::vector<PoolUsage> out;
  out.reserve(pools_.size());
  for (const Pool& pool : pools_) {
    PoolUsage usage;
    usage.name = pool.spec.name;
    usage.capacity_bytes = pool.map.capacity();
    usage.free_bytes = pool.map.free_bytes();
    usage.largest_free_bytes = pool.map.largest_free();
    usage.alignment_bytes = pool.map.alignment();
    usage.slots = pool.spec.slots;
    out.push_back(std::move(usage));
  }
  for (const auto& [id, record] : leases_) {
    for (size_t i = 0; i < pools_.size(); ++i) {
      if (pools_[i].spec.name != record.pool) continue;
      if (record.state == SliceState::kLive) {
        ++out[i].live_leases;
      } else {
        ++out[i].ending_leases;
      }
    }
  }
  return out;
}

uint64_t Allocator::BytesHeldBy(uint32_t uid) const {
  auto it = usage_.find(uid);
  return it == usage_.end() ? 0 : it->second.bytes;
}

uint32_t Allocator::LeasesHeldBy(uint32_t uid) const {
  auto it = usage_.find(uid);
  return it == usage_.end() ? 0 : it->second.leases;
}

}  // namespace vfbroker
