// tenant_probe: a hostile-or-honest tenant process for the host integration tests.
//
// The tests run it under unprivileged uids against the real vfbrokerd. It prints `key=value`
// lines that the tests parse, and exits 0 when the command ran (whatever the broker answered).
//
//   tenant_probe SOCKET_DIR alloc-io POOL SIZE SEED      allocate, write, verify, release
//   tenant_probe SOCKET_DIR hold POOL SIZE SEED          allocate, write, then verify/rewrite
//                                                        blocks until stdin closes; release
//   tenant_probe SOCKET_DIR read-zeroes POOL SIZE        allocate; is every byte zero?
//   tenant_probe SOCKET_DIR escape POOL SIZE             try to reach outside the extent
//   tenant_probe SOCKET_DIR release LEASE_ID             try to release a lease
//   tenant_probe SOCKET_DIR quota POOL SIZE              allocate until refused
//   tenant_probe SOCKET_DIR bad-requests POOL            malformed and unauthorized calls
//   tenant_probe SOCKET_DIR churn POOL SIZE              allocate, check zeroes, dirty, release,
//                                                        until stdin closes
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "client/broker_client.h"
#include "common/grpc_status.h"
#include "common/session_metadata.h"

namespace {

using vfclient::BrokerClient;
using vfclient::ExtentLease;
namespace v1 = vfbroker::v1;

constexpr uint32_t kBlock = 4096;

struct AlignedBuffer {
  explicit AlignedBuffer(size_t bytes) {
    if (posix_memalign(&data, kBlock, bytes) != 0) std::abort();
    std::memset(data, 0, bytes);
  }
  ~AlignedBuffer() { std::free(data); }
  uint8_t* bytes() { return static_cast<uint8_t*>(data); }
  void* data = nullptr;
};

void FillBlock(uint8_t* block, uint64_t seed, uint64_t offset) {
  for (uint32_t i = 0; i < kBlock; i += 8) {
    uint64_t word = (seed * 0x100000001B3ull) ^ ((offset + i) * 0x9E3779B97F4A7C15ull);
    std::memcpy(block + i, &word, 8);
  }
}

std::string CodeString(const absl::Status& status) {
  return absl::StatusCodeToString(status.code());
}

bool WritePattern(int fd, uint64_t size, uint64_t seed) {
  AlignedBuffer block(kBlock);
  for (uint64_t offset = 0; offset < size; offset += kBlock) {
    FillBlock(block.bytes(), seed, offset);
    if (::pwrite(fd, block.data, kBlock, static_cast<off_t>(offset)) != kBlock) return false;
  }
  return ::fsync(fd) == 0;
}

uint64_t CountMismatches(int fd, uint64_t size, uint64_t seed) {
  AlignedBuffer block(kBlock), expected(kBlock);
  uint64_t bad = 0;
  for (uint64_t offset = 0; offset < size; offset += kBlock) {
    FillBlock(expected.bytes(), seed, offset);
    if (::pread(fd, block.data, kBlock, static_cast<off_t>(offset)) != kBlock ||
        std::memcmp(block.data, expected.data, kBlock) != 0) {
      ++bad;
    }
  }
  return bad;
}

absl::StatusOr<std::unique_ptr<ExtentLease>> Allocate(BrokerClient& client, const char* pool,
                                                      const char* size) {
  uint64_t bytes = 0;
  if (!absl::SimpleAtoi(size, &bytes)) return absl::InvalidArgumentError("size");
  return client.AllocateExtent(pool, bytes);
}

bool StdinClosed(int timeout_ms) {
  pollfd pfd{0, POLLIN, 0};
  if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
  char c;
  return ::read(0, &c, 1) <= 0;
}

int AllocIo(BrokerClient& client, char** argv) {
  auto lease = Allocate(client, argv[0], argv[1]);
  if (!lease.ok()) {
    std::printf("status=%s\nmessage=%s\n", CodeString(lease.status()).c_str(),
                std::string(lease.status().message()).c_str());
    return 0;
  }
  const uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  std::printf("lease=%s\nsize=%" PRIu64 "\ndevice=%s\n", (*lease)->id().c_str(),
              (*lease)->size_bytes(), (*lease)->info().extent().device_path().c_str());
  const bool wrote = WritePattern((*lease)->fd(), (*lease)->size_bytes(), seed);
  const uint64_t bad = CountMismatches((*lease)->fd(), (*lease)->size_bytes(), seed);
  std::printf("wrote=%s\nmismatches=%" PRIu64 "\n", wrote ? "yes" : "no", bad);
  absl::Status released = (*lease)->Release();
  std::printf("release=%s\nstatus=OK\n", CodeString(released).c_str());
  return 0;
}

int Hold(BrokerClient& client, char** argv) {
  auto lease = Allocate(client, argv[0], argv[1]);
  if (!lease.ok()) {
    std::printf("status=%s\n", CodeString(lease.status()).c_str());
    return 0;
  }
  const uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  const int fd = (*lease)->fd();
  const uint64_t size = (*lease)->size_bytes();
  if (!WritePattern(fd, size, seed)) {
    std::printf("status=WRITE_FAILED\n");
    return 0;
  }
  std::printf("ready lease=%s device=%s\n", (*lease)->id().c_str(),
              (*lease)->info().extent().device_path().c_str());
  std::fflush(stdout);
  // Keep doing verified I/O with no help from the broker until told to stop.
  std::mt19937_64 rng(seed);
  AlignedBuffer block(kBlock), expected(kBlock);
  uint64_t ops = 0, errors = 0;
  absl::Time last_report = absl::Now();
  while (!StdinClosed(0)) {
    const uint64_t offset = (rng() % (size / kBlock)) * kBlock;
    FillBlock(expected.bytes(), seed, offset);
    if (::pread(fd, block.data, kBlock, static_cast<off_t>(offset)) != kBlock ||
        std::memcmp(block.data, expected.data, kBlock) != 0) {
      ++errors;
    }
    if (::pwrite(fd, expected.data, kBlock, static_cast<off_t>(offset)) != kBlock) ++errors;
    ++ops;
    if (absl::Now() - last_report > absl::Milliseconds(50)) {
      std::printf("progress ops=%" PRIu64 " errors=%" PRIu64 "\n", ops, errors);
      std::fflush(stdout);
      last_report = absl::Now();
    }
  }
  const uint64_t bad = CountMismatches(fd, size, seed);
  absl::Status released = (*lease)->Release();
  std::printf("final ops=%" PRIu64 " errors=%" PRIu64 " mismatches=%" PRIu64 "\nrelease=%s\n",
              ops, errors, bad, CodeString(released).c_str());
  if (!released.ok()) {
    std::printf("release_message=%s\n", std::string(released.message()).c_str());
  }
  return 0;
}

int ReadZeroes(BrokerClient& client, char** argv) {
  auto lease = Allocate(client, argv[0], argv[1]);
  if (!lease.ok()) {
    std::printf("status=%s\n", CodeString(lease.status()).c_str());
    return 0;
  }
  AlignedBuffer block(kBlock), zero(kBlock);
  uint64_t nonzero = 0;
  for (uint64_t offset = 0; offset < (*lease)->size_bytes(); offset += kBlock) {
    if (::pread((*lease)->fd(), block.data, kBlock, static_cast<off_t>(offset)) != kBlock ||
        std::memcmp(block.data, zero.data, kBlock) != 0) {
      ++nonzero;
    }
  }
  std::printf("lease=%s\nnonzero_blocks=%" PRIu64 "\nstatus=OK\n", (*lease)->id().c_str(),
              nonzero);
  return 0;
}

// Scans everything readable through `fd` for bytes the tenant did not write (its extent is
// zero-filled first, so anything non-zero is someone else's).
uint64_t ForeignBlocks(int fd) {
  AlignedBuffer block(kBlock), zero(kBlock);
  uint64_t foreign = 0;
  for (uint64_t offset = 0;; offset += kBlock) {
    ssize_t got = ::pread(fd, block.data, kBlock, static_cast<off_t>(offset));
    if (got <= 0) break;
    if (std::memcmp(block.data, zero.data, static_cast<size_t>(got)) != 0) ++foreign;
    if (offset > (uint64_t{1} << 32)) break;
  }
  return foreign;
}

int Escape(BrokerClient& client, char** argv) {
  auto lease = Allocate(client, argv[0], argv[1]);
  if (!lease.ok()) {
    std::printf("status=%s\n", CodeString(lease.status()).c_str());
    return 0;
  }
  const int fd = (*lease)->fd();
  const uint64_t size = (*lease)->size_bytes();
  AlignedBuffer zero(kBlock);
  for (uint64_t offset = 0; offset < size; offset += kBlock) {
    (void)!::pwrite(fd, zero.data, kBlock, static_cast<off_t>(offset));
  }
  ::fsync(fd);
  std::printf("lease=%s\nforeign_before=%" PRIu64 "\n", (*lease)->id().c_str(), ForeignBlocks(fd));

  // Past the end.
  AlignedBuffer block(kBlock);
  std::printf("read_past_end=%zd\n", ::pread(fd, block.data, kBlock, static_cast<off_t>(size)));
  std::printf("write_past_end=%zd\n",
              ::pwrite(fd, zero.data, kBlock, static_cast<off_t>(size)));

  // Widen the loop device: no size limit, then an offset that would start beyond the extent.
  loop_info64 info{};
  int rc = ::ioctl(fd, LOOP_GET_STATUS64, &info);
  std::printf("get_status=%d\n", rc == 0 ? 0 : errno);
  info.lo_sizelimit = 0;
  info.lo_offset = 0;
  rc = ::ioctl(fd, LOOP_SET_STATUS64, &info);
  std::printf("set_status_widen=%d\n", rc == 0 ? 0 : errno);
  ::ioctl(fd, BLKRRPART, 0);
  std::printf("foreign_after_widen=%" PRIu64 "\n", ForeignBlocks(fd));
  info.lo_offset = size;
  rc = ::ioctl(fd, LOOP_SET_STATUS64, &info);
  std::printf("set_status_offset=%d\n", rc == 0 ? 0 : errno);
  std::printf("foreign_after_offset=%" PRIu64 "\n", ForeignBlocks(fd));
  info.lo_offset = 0;
  ::ioctl(fd, LOOP_SET_STATUS64, &info);

  // Detach the device (and try to re-aim it at something else).
  rc = ::ioctl(fd, LOOP_CLR_FD, 0);
  std::printf("clr_fd=%d\n", rc == 0 ? 0 : errno);
  std::printf("io_after_clr_fd=%zd\n", ::pread(fd, block.data, kBlock, 0));
  int other = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  rc = ::ioctl(fd, LOOP_CHANGE_FD, other);
  std::printf("change_fd=%d\n", rc == 0 ? 0 : errno);
  ::close(other);
  // Discard everything it can see: must only touch its own extent.
  uint64_t range[2] = {0, size};
  rc = ::ioctl(fd, BLKDISCARD, range);
  std::printf("discard=%d\n", rc == 0 ? 0 : errno);
  std::printf("foreign_final=%" PRIu64 "\nstatus=OK\n", ForeignBlocks(fd));
  std::fflush(stdout);
  // Keep the lease until told to go, so the test can inspect the pool meanwhile.
  while (!StdinClosed(1000)) {
  }
  return 0;
}

// Allocates, checks the new extent reads as zeroes at both ends, dirties it, releases; again and
// again until stdin closes. A slice handed out twice, or reused unscrubbed, shows up as "dirty".
int Churn(BrokerClient& client, char** argv) {
  AlignedBuffer block(kBlock), zero(kBlock), pattern(kBlock);
  std::memset(pattern.data, 0xA5, kBlock);
  uint64_t grants = 0, dirty = 0, refused = 0;
  absl::Time last_report = absl::Now();
  while (!StdinClosed(0)) {
    auto lease = Allocate(client, argv[0], argv[1]);
    if (!lease.ok()) {
      ++refused;
      continue;
    }
    ++grants;
    const int fd = (*lease)->fd();
    const off_t last = static_cast<off_t>((*lease)->size_bytes() - kBlock);
    for (off_t at : {off_t{0}, last}) {
      if (::pread(fd, block.data, kBlock, at) != kBlock ||
          std::memcmp(block.data, zero.data, kBlock) != 0) {
        ++dirty;
      }
      (void)!::pwrite(fd, pattern.data, kBlock, at);
    }
    ::fsync(fd);
    (void)(*lease)->Release();
    if (absl::Now() - last_report > absl::Milliseconds(50)) {
      std::printf("progress grants=%" PRIu64 " dirty=%" PRIu64 " refused=%" PRIu64 "\n", grants,
                  dirty, refused);
      std::fflush(stdout);
      last_report = absl::Now();
    }
  }
  std::printf("final grants=%" PRIu64 " dirty=%" PRIu64 " refused=%" PRIu64 "\n", grants, dirty,
              refused);
  return 0;
}

int ReleaseForeign(BrokerClient& client, char** argv) {
  absl::Status status = client.Release(argv[0]);
  std::printf("release=%s\n", CodeString(status).c_str());
  auto leases = client.ListLeases();
  std::printf("visible_leases=%zu\n", leases.ok() ? leases->size() : 0);
  return 0;
}

int Quota(BrokerClient& client, char** argv) {
  std::vector<std::unique_ptr<ExtentLease>> held;
  for (int i = 0; i < 1000; ++i) {
    auto lease = Allocate(client, argv[0], argv[1]);
    if (!lease.ok()) {
      std::printf("granted=%zu\nstatus=%s\nmessage=%s\n", held.size(),
                  CodeString(lease.status()).c_str(),
                  std::string(lease.status().message()).c_str());
      return 0;
    }
    held.push_back(*std::move(lease));
  }
  std::printf("granted=%zu\nstatus=OK\n", held.size());
  return 0;
}

// Raw calls, so that nothing in the client library can paper over a bad request.
int BadRequests(BrokerClient& client, char** argv) {
  const std::string pool = argv[0];
  v1::Broker::Stub& stub = client.stub();
  auto call = [&](const char* name, const std::string& token, auto invoke) {
    grpc::ClientContext context;
    if (!token.empty()) context.AddMetadata(vfbroker::kSessionMetadataKey, token);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = invoke(context);
    std::printf("%s=%s\n", name, CodeString(vfbroker::FromGrpcStatus(status)).c_str());
  };
  const std::string token = client.session_token();
  auto allocate = [&](std::string pool_name, uint64_t size) {
    return [&stub, pool_name, size](grpc::ClientContext& context) {
      v1::AllocateExtentRequest request;
      request.set_pool(pool_name);
      request.set_size_bytes(size);
      v1::AllocateExtentResponse response;
      return stub.AllocateExtent(&context, request, &response);
    };
  };
  call("no_token", "", allocate(pool, 1 << 20));
  call("forged_token", "s-00000000000000000000000000000000", allocate(pool, 1 << 20));
  call("zero_size", token, allocate(pool, 0));
  call("huge_size", token, allocate(pool, ~uint64_t{0}));
  call("near_overflow_size", token, allocate(pool, ~uint64_t{0} - 4095));
  call("unknown_pool", token, allocate("no-such-pool", 1 << 20));
  call("restricted_pool", token, allocate("restricted", 1 << 20));
  call("empty_pool", token, allocate("", 1 << 20));
  call("long_pool_name", token, allocate(std::string(200, 'p'), 1 << 20));
  call("oversize_request", token, allocate(std::string(200 * 1024, 'p'), 1 << 20));
  call("nic_on_block_pool", token, [&](grpc::ClientContext& context) {
    v1::AllocateNicRequest request;
    request.set_pool(pool);
    v1::AllocateNicResponse response;
    return stub.AllocateNic(&context, request, &response);
  });
  call("release_missing", token, [&](grpc::ClientContext& context) {
    v1::ReleaseRequest request;
    request.set_lease_id("lease-0000000000000000");
    v1::ReleaseResponse response;
    return stub.Release(&context, request, &response);
  });
  call("release_empty", token, [&](grpc::ClientContext& context) {
    v1::ReleaseRequest request;
    v1::ReleaseResponse response;
    return stub.Release(&context, request, &response);
  });
  call("list_no_token", "", [&](grpc::ClientContext& context) {
    v1::ListLeasesResponse response;
    return stub.ListLeases(&context, v1::ListLeasesRequest(), &response);
  });
  auto leases = client.ListLeases();
  std::printf("leases_after=%zu\n", leases.ok() ? leases->size() : 999);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: tenant_probe SOCKET_DIR COMMAND ARGS...\n");
    return 64;
  }
  vfclient::ConnectOptions options;
  options.socket_dir = argv[1];
  absl::StatusOr<std::shared_ptr<BrokerClient>> client = BrokerClient::Connect(options);
  if (!client.ok()) {
    std::printf("status=%s\nmessage=%s\n", CodeString(client.status()).c_str(),
                std::string(client.status().message()).c_str());
    return 0;
  }
  std::printf("uid=%u\npid=%d\n", (*client)->hello().uid(), (*client)->hello().pid());
  const std::string command = argv[2];
  char** args = argv + 3;
  const int nargs = argc - 3;
  struct Command {
    const char* name;
    int args;
    int (*run)(BrokerClient&, char**);
  };
  static const Command kCommands[] = {
      {"alloc-io", 3, AllocIo}, {"hold", 3, Hold},       {"read-zeroes", 2, ReadZeroes},
      {"escape", 2, Escape},    {"release", 1, ReleaseForeign}, {"quota", 2, Quota},
      {"bad-requests", 1, BadRequests}, {"churn", 2, Churn},
  };
  for (const Command& c : kCommands) {
    if (command == c.name && nargs == c.args) {
      int rc = c.run(**client, args);
      std::fflush(stdout);
      return rc;
    }
  }
  std::fprintf(stderr, "tenant_probe: unknown command or wrong arguments: %s\n",
               command.c_str());
  return 64;
}
