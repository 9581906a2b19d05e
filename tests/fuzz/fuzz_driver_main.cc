// A stand-in for libFuzzer's main, so that fuzz targets build and run with the ordinary
// toolchain (no -fsanitize=fuzzer) as smoke tests:
//
//   fuzzer [--runs=N] [--seed=S] [--max_len=L] [FILE_OR_DIR...]
//
// Every file named (directories: every regular file inside) is fed to LLVMFuzzerTestOneInput
// once, as is. Then N generated inputs are fed to it: mutations of those files, or of random
// text when there are none. Generation is deterministic for a given seed, so a failure
// reproduces. N defaults to 0 when files are given and to 1000 otherwise.
//
// A crash or abort in the target is the failure signal, exactly as under libFuzzer. The input
// that crashed is then written to $TEST_UNDECLARED_OUTPUTS_DIR/crash_input (under bazel test) or
// ./crash_input, ready to be replayed by naming it on the command line.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));

namespace {

struct Options {
  uint64_t runs = 0;
  bool runs_given = false;
  uint64_t seed = 1;
  size_t max_len = 16384;
  std::vector<std::string> paths;
};

[[noreturn]] void Usage(const char* argv0, const std::string& problem) {
  std::fprintf(stderr, "%s: %s\nusage: %s [--runs=N] [--seed=S] [--max_len=L] [FILE_OR_DIR...]\n",
               argv0, problem.c_str(), argv0);
  std::exit(2);
}

bool ParseNumber(std::string_view text, uint64_t* value) {
  if (text.empty() || text.size() > 19) return false;
  uint64_t result = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    result = result * 10 + static_cast<uint64_t>(c - '0');
  }
  *value = result;
  return true;
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto numeric_flag = [&](std::string_view name, uint64_t* value) {
      if (arg.substr(0, name.size()) != name) return false;
      if (!ParseNumber(arg.substr(name.size()), value)) {
        Usage(argv[0], "bad value in " + std::string(arg));
      }
      return true;
    };
    uint64_t max_len = 0;
    if (numeric_flag("--runs=", &options.runs) || numeric_flag("-runs=", &options.runs)) {
      options.runs_given = true;
    } else if (numeric_flag("--seed=", &options.seed) || numeric_flag("-seed=", &options.seed)) {
    } else if (numeric_flag("--max_len=", &max_len) || numeric_flag("-max_len=", &max_len)) {
      options.max_len = static_cast<size_t>(std::max<uint64_t>(max_len, 1));
    } else if (!arg.empty() && arg[0] == '-') {
      Usage(argv[0], "unknown flag " + std::string(arg));
    } else {
      options.paths.emplace_back(arg);
    }
  }
  if (!options.runs_given) options.runs = options.paths.empty() ? 1000 : 0;
  return options;
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> ReadInputs(const std::vector<std::string>& paths) {
  std::vector<std::string> inputs;
  for (const std::string& path : paths) {
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      std::sort(files.begin(), files.end());  // directory order is not stable across machines
      for (const auto& file : files) inputs.push_back(ReadFile(file));
    } else {
      inputs.push_back(ReadFile(path));
    }
  }
  return inputs;
}

// Byte-level mutations in the spirit of libFuzzer's, biased towards what matters in textual
// formats: structural characters, numbers at their limits, and pieces of other inputs.
class Mutator {
 public:
  Mutator(uint64_t seed, std::vector<std::string> seeds, size_t max_len)
      : rng_(seed), seeds_(std::move(seeds)), max_len_(max_len) {}

  std::string Next() {
    std::string input;
    if (!seeds_.empty() && Below(8) != 0) {
      input = seeds_[Below(seeds_.size())];
    } else {
      input = RandomText(Below(64));
    }
    const uint64_t mutations = 1 + Below(4);
    for (uint64_t i = 0; i < mutations; ++i) Mutate(input);
    if (input.size() > max_len_) input.resize(max_len_);
    return input;
  }

 private:
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : rng_() % n; }

  char RandomChar() {
    static constexpr std::string_view kSpecial = "{}[]<>:;,\"'#\\\n\t -_.0123456789eExX/";
    switch (Below(3)) {
      case 0:
        return static_cast<char>(Below(256));
      case 1:
        return kSpecial[Below(kSpecial.size())];
      default:
        return static_cast<char>(' ' + Below(95));
    }
  }

  std::string RandomText(uint64_t length) {
    std::string text;
    for (uint64_t i = 0; i < length; ++i) text.push_back(RandomChar());
    return text;
  }

  std::string RandomPiece() {
    static constexpr std::string_view kNumbers[] = {"0",
                                                    "1",
                                                    "-1",
                                                    "4096",
                                                    "3000",
                                                    "511",
                                                    "512",
                                                    "1048576",
                                                    "4294967295",
                                                    "4294967296",
                                                    "9223372036854775807",
                                                    "9223372036854775808",
                                                    "18446744073709551615",
                                                    "18446744073709551616",
                                                    "0x10",
                                                    "1e3",
                                                    "inf",
                                                    "nan",
                                                    "true",
                                                    "false"};
    if (!seeds_.empty() && Below(2) == 0) {
      const std::string& other = seeds_[Below(seeds_.size())];
      if (other.empty()) return "";
      const size_t start = Below(other.size());
      return other.substr(start, 1 + Below(std::min<size_t>(64, other.size() - start)));
    }
    return std::string(kNumbers[Below(std::size(kNumbers))]);
  }

  void Mutate(std::string& input) {
    const size_t position = Below(input.size() + 1);
    switch (Below(7)) {
      case 0:  // flip a bit
        if (!input.empty()) input[Below(input.size())] ^= static_cast<char>(1u << Below(8));
        break;
      case 1:  // overwrite a byte
        if (!input.empty()) input[Below(input.size())] = RandomChar();
        break;
      case 2:  // insert bytes
        input.insert(position, RandomText(1 + Below(4)));
        break;
      case 3:  // erase a range
        if (!input.empty()) input.erase(Below(input.size()), 1 + Below(32));
        break;
      case 4:  // duplicate a range
        if (!input.empty()) {
          const size_t start = Below(input.size());
          input.insert(position, input.substr(start, 1 + Below(64)));
        }
        break;
      case 5:  // insert a number at a limit or a piece of another input
        input.insert(position, RandomPiece());
        break;
      default:  // truncate
        input.resize(position);
        break;
    }
  }

  std::mt19937_64 rng_;
  std::vector<std::string> seeds_;
  size_t max_len_;
};

// What the crash handler needs, prepared before any input runs: a signal handler may only use
// async-signal-safe calls (open, write, ...), so nothing here is allocated or formatted late.
struct CrashContext {
  const std::string* input = nullptr;
  std::string path;
};
CrashContext crash_context;

void WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n <= 0) return;
    data += n;
    size -= static_cast<size_t>(n);
  }
}

void WriteText(int fd, const char* text) { WriteAll(fd, text, std::strlen(text)); }

void OnCrash(int signal_number) {
  if (crash_context.input != nullptr) {
    const int fd =
        ::open(crash_context.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      WriteAll(fd, crash_context.input->data(), crash_context.input->size());
      ::close(fd);
      WriteText(STDERR_FILENO, "\nfuzz driver: the crashing input was saved to ");
      WriteText(STDERR_FILENO, crash_context.path.c_str());
      WriteText(STDERR_FILENO, "\n");
    }
  }
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

void InstallCrashHandler() {
  const char* dir = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  crash_context.path = std::string(dir != nullptr ? dir : ".") + "/crash_input";
  for (int signal_number : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) {
    ::signal(signal_number, OnCrash);
  }
}

void RunOne(const std::string& input) {
  crash_context.input = &input;
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseOptions(argc, argv);
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  InstallCrashHandler();
  const auto start = std::chrono::steady_clock::now();

  std::vector<std::string> files = ReadInputs(options.paths);
  const size_t file_count = files.size();
  for (const std::string& input : files) RunOne(input);
  crash_context.input = nullptr;

  Mutator mutator(options.seed, std::move(files), options.max_len);
  for (uint64_t i = 0; i < options.runs; ++i) {
    const std::string input = mutator.Next();
    RunOne(input);
  }
  crash_context.input = nullptr;

  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  std::printf("ran %zu file inputs and %llu generated inputs (seed %llu) in %lld ms\n", file_count,
              static_cast<unsigned long long>(options.runs),
              static_cast<unsigned long long>(options.seed),
              static_cast<long long>(elapsed.count()));
  return 0;
}
