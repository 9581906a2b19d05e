// block_bench: 4 KiB random reads (optionally mixed with writes) at a fixed queue depth, on one
// core, through IoUringQueue. Prints IOPS, MB/s and latency percentiles.
//
//   block_bench --device=/dev/loop0 --seconds=10 --qd=32
//   block_bench --fd=3 ...            (an fd inherited from the broker, opened O_DIRECT)
//   block_bench ... --json            (one line of JSON, for run_block_bench.sh)
//
// Writes (--write_percent > 0) overwrite the device.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "bench/block/randread.h"
#include "client/broker_client.h"
#include "vfdrivers/block/io_uring_queue.h"

ABSL_FLAG(std::string, device, "", "block device (or file) to open with O_DIRECT");
ABSL_FLAG(int, fd, -1, "already-open O_DIRECT fd to use instead of --device");
ABSL_FLAG(int, seconds, 10, "measured duration");
ABSL_FLAG(uint32_t, qd, 32, "queue depth");
ABSL_FLAG(uint32_t, bs, 4096, "I/O size in bytes");
ABSL_FLAG(uint32_t, write_percent, 0, "percentage of writes (destroys data on the device)");
ABSL_FLAG(uint64_t, span_mb, 0, "confine offsets to the first N MiB (0: whole device)");
ABSL_FLAG(std::string, task_run, "auto", "io_uring task running: auto|defer|coop|plain");
ABSL_FLAG(bool, sqpoll, false, "use an SQ polling kernel thread");
ABSL_FLAG(int, sqpoll_cpu, -1, "pin the SQ thread to this CPU");
ABSL_FLAG(bool, register_ring_fd, true, "register the ring fd (io_uring_enter skips fd lookup)");
ABSL_FLAG(int, cpu, -1, "pin this thread to a CPU (or use taskset)");
ABSL_FLAG(bool, yield, true, "sched_yield() after an empty poll (--noyield: spin)");
ABSL_FLAG(uint32_t, submit_batch, 1, "Submit() once this many commands are staged");
ABSL_FLAG(bool, json, false, "print one JSON line instead of text");
ABSL_FLAG(std::string, broker_socket_dir, "",
          "instead of --device/--fd: allocate an extent from vfbrokerd (libvfclient) and drive the "
          "descriptor it sends");
ABSL_FLAG(std::string, pool, "scratch", "with --broker_socket_dir: the pool");
ABSL_FLAG(uint64_t, extent_mb, 1024, "with --broker_socket_dir: the extent's size in MiB");

namespace {

const char* TaskRunName(vfdrivers::block::IoUringTaskRun mode) {
  switch (mode) {
    case vfdrivers::block::IoUringTaskRun::kDefer:
      return "defer";
    case vfdrivers::block::IoUringTaskRun::kCoop:
      return "coop";
    case vfdrivers::block::IoUringTaskRun::kPlain:
      return "plain";
    default:
      return "auto";
  }
}

int Fail(const std::string& message) {
  fprintf(stderr, "block_bench: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using vfdrivers::block::IoUringQueue;
  using vfdrivers::block::IoUringQueueOptions;
  using vfdrivers::block::IoUringTaskRun;

  vfbroker::bench::RandReadOptions options;
  options.block_size = absl::GetFlag(FLAGS_bs);
  options.queue_depth = absl::GetFlag(FLAGS_qd);
  options.duration = absl::Seconds(absl::GetFlag(FLAGS_seconds));
  options.write_percent = absl::GetFlag(FLAGS_write_percent);
  options.span_bytes = absl::GetFlag(FLAGS_span_mb) << 20;
  options.yield_when_idle = absl::GetFlag(FLAGS_yield);
  options.submit_batch = absl::GetFlag(FLAGS_submit_batch);

  if (int cpu = absl::GetFlag(FLAGS_cpu); cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
      return Fail(absl::StrFormat("sched_setaffinity(%d): %s", cpu, strerror(errno)));
    }
  }

  int fd = absl::GetFlag(FLAGS_fd);
  const std::string device = absl::GetFlag(FLAGS_device);
  // With a broker: the extent (and its descriptor) live as long as this process.
  std::shared_ptr<vfclient::BrokerClient> client;
  std::unique_ptr<vfclient::ExtentLease> extent;
  if (const std::string socket_dir = absl::GetFlag(FLAGS_broker_socket_dir); !socket_dir.empty()) {
    vfclient::ConnectOptions connect;
    connect.socket_dir = socket_dir;
    absl::StatusOr<std::shared_ptr<vfclient::BrokerClient>> connected =
        vfclient::BrokerClient::Connect(connect);
    if (!connected.ok()) return Fail(connected.status().ToString());
    client = *connected;
    absl::StatusOr<std::unique_ptr<vfclient::ExtentLease>> granted =
        client->AllocateExtent(absl::GetFlag(FLAGS_pool), absl::GetFlag(FLAGS_extent_mb) << 20);
    if (!granted.ok()) return Fail(granted.status().ToString());
    extent = *std::move(granted);
    fd = extent->fd();
    fprintf(stderr, "block_bench: lease %s, %s\n", extent->id().c_str(),
            extent->info().extent().device_path().c_str());
  }
  if ((fd >= 0) == !device.empty()) return Fail("give exactly one of --device, --fd, --broker_socket_dir");
  if (fd < 0) {
    const int mode = options.write_percent > 0 ? O_RDWR : O_RDONLY;
    fd = open(device.c_str(), mode | O_DIRECT | O_CLOEXEC);
    if (fd < 0) return Fail(absl::StrFormat("open %s: %s", device, strerror(errno)));
  }

  IoUringQueueOptions queue_options;
  queue_options.depth = options.queue_depth;
  queue_options.sqpoll = absl::GetFlag(FLAGS_sqpoll);
  queue_options.sqpoll_cpu = absl::GetFlag(FLAGS_sqpoll_cpu);
  queue_options.register_ring_fd = absl::GetFlag(FLAGS_register_ring_fd);
  const std::string task_run = absl::GetFlag(FLAGS_task_run);
  if (task_run == "defer") {
    queue_options.task_run = IoUringTaskRun::kDefer;
  } else if (task_run == "coop") {
    queue_options.task_run = IoUringTaskRun::kCoop;
  } else if (task_run == "plain") {
    queue_options.task_run = IoUringTaskRun::kPlain;
  } else if (task_run != "auto") {
    return Fail("--task_run must be auto, defer, coop or plain");
  }

  absl::StatusOr<std::unique_ptr<IoUringQueue>> queue = IoUringQueue::Create(fd, queue_options);
  if (!queue.ok()) return Fail(queue.status().ToString());
  if (!device.empty()) close(fd);  // the ring holds the file

  absl::StatusOr<vfdrivers::memory::BufferPool> buffers =
      vfbroker::bench::MakeRegisteredBuffers(**queue, options);
  if (!buffers.ok()) return Fail(buffers.status().ToString());
  absl::StatusOr<vfbroker::bench::RandReadResult> result =
      vfbroker::bench::RunRandRead(**queue, *buffers, options);
  if (!result.ok()) return Fail(result.status().ToString());

  const char* mode = TaskRunName((*queue)->task_run());
  if (absl::GetFlag(FLAGS_json)) {
    std::string json = vfbroker::bench::ToJson(*result);
    json.pop_back();  // add the setup to the object
    printf("%s, \"task_run\": \"%s\", \"setup_flags\": \"0x%x\"}\n", json.c_str(), mode,
           (*queue)->setup_flags());
    return 0;
  }
  const auto us = [](absl::Duration d) { return absl::ToDoubleMicroseconds(d); };
  printf("io_uring queue (%s, setup flags 0x%x%s), %u-byte %s, QD %u, %.1f s\n", mode,
         (*queue)->setup_flags(), queue_options.sqpoll ? ", sqpoll" : "", options.block_size,
         options.write_percent ? "random read/write" : "random reads", options.queue_depth,
         absl::ToDoubleSeconds(result->elapsed));
  printf("  IOPS %.0f   %.1f MB/s   (%lu reads, %lu writes issued)\n", result->iops,
         result->mb_per_s, static_cast<unsigned long>(result->reads),
         static_cast<unsigned long>(result->writes));
  printf("  latency us: mean %.1f  p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
         us(result->lat_mean), us(result->lat_p50), us(result->lat_p99), us(result->lat_p999),
         us(result->lat_max));
  return 0;
}
