// CPU GEMM through the op layer (matmul), at shapes the UNet and text encoders produce.
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "ops/linear.h"
#include "runtime/rng.h"

namespace sd {
namespace {

void BM_Matmul(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  autograd::NoGrad ng;
  Tensor a = randn({M, K}), b = randn({K, N});
  for (auto _ : state) {
    Tensor c = matmul(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
// Rows of a 64x64 latent token grid against SD1 widths; CLIP's 77 tokens x 768.
BENCHMARK(BM_Matmul)->Args({4096, 320, 320})->Args({1024, 640, 640})->Args({77, 768, 3072})->Args({1024, 1024, 1024})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace sd
