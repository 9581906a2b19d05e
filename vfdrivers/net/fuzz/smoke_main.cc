// Runs a libFuzzer target (LLVMFuzzerTestOneInput) on N deterministic random inputs with the
// ordinary toolchain, so the targets build and run under `bazel test`:
//   <target>_smoke [--runs=N] [--seed=S]
// A crash or abort is the failure; real fuzzing builds the target with clang -fsanitize=fuzzer.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  uint64_t runs = 20000, seed = 1;
  for (int i = 1; i < argc; ++i) {
    if (strncmp(argv[i], "--runs=", 7) == 0) runs = strtoull(argv[i] + 7, nullptr, 10);
    if (strncmp(argv[i], "--seed=", 7) == 0) seed = strtoull(argv[i] + 7, nullptr, 10);
  }
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> input;
  for (uint64_t r = 0; r < runs; ++r) {
    input.resize(rng() % 600);
    for (auto& b : input) b = static_cast<uint8_t>(rng());
    LLVMFuzzerTestOneInput(input.data(), input.size());
  }
  printf("%llu inputs\n", static_cast<unsigned long long>(runs));
  return 0;
}
