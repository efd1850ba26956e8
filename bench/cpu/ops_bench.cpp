// CPU reference ops at representative (scaled-down) SD shapes: conv 3x3, GroupNorm+SiLU and
// attention, forward only, with achieved GFLOP/s or GB/s.
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/norm.h"
#include "ops/view.h"
#include "runtime/rng.h"

namespace sd {
namespace {

// x [N, C, H, W] -> conv 3x3 pad 1 to O channels.
void BM_Conv3x3(benchmark::State& state) {
  const int64_t N = state.range(3), C = state.range(0), HW = state.range(1), O = state.range(2);
  autograd::NoGrad ng;
  Tensor x = randn({N, C, HW, HW}), w = randn({O, C, 3, 3}), b = randn({O});
  for (auto _ : state) {
    Tensor y = conv2d(x, w, b, {1, 1}, {1, 1});
    benchmark::DoNotOptimize(y.data_ptr());
  }
  const double flops = 2.0 * N * O * HW * HW * C * 9;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
// {C, H = W, O, N}: the SD1.5 UNet's levels at 512x512 and 256x256 (batch 2 under guidance) and VAE layers
// (the last at 512x512 output).
BENCHMARK(BM_Conv3x3)->Args({960, 64, 320, 2})->Args({320, 64, 320, 2})->Args({320, 32, 320, 2})
    ->Args({640, 16, 640, 2})->Args({1280, 8, 1280, 2})->Args({1280, 4, 1280, 2})->Args({2560, 4, 1280, 2})
    ->Args({128, 64, 128, 1})->Args({256, 256, 256, 1})->Args({128, 256, 3, 1})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_GroupNormSilu(benchmark::State& state) {
  const int64_t C = state.range(0), HW = state.range(1);
  autograd::NoGrad ng;
  Tensor x = randn({2, C, HW, HW}), g = randn({C}), b = randn({C});
  for (auto _ : state) {
    Tensor y = group_norm(x, 32, g, b, 1e-5, true);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  const double bytes = 2.0 * double(x.nbytes());  // one read, one write
  state.counters["GB/s"] = benchmark::Counter(bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GroupNormSilu)->Args({320, 64})->Args({640, 32})->Unit(benchmark::kMillisecond)->UseRealTime();

// q [1, 8, L, D] against L keys (self-attention) or 77 (cross-attention).
void BM_Attention(benchmark::State& state) {
  const int64_t L = state.range(0), Lk = state.range(1), D = state.range(2);
  autograd::NoGrad ng;
  Tensor q = randn({1, 8, L, D}), k = randn({1, 8, Lk, D}), v = randn({1, 8, Lk, D});
  for (auto _ : state) {
    Tensor o = scaled_dot_product_attention(q, k, v);
    benchmark::DoNotOptimize(o.data_ptr());
  }
  const double flops = 4.0 * 8 * L * Lk * D;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Attention)->Args({1024, 1024, 40})->Args({4096, 77, 40})->Args({1024, 1024, 64})->Args({4096, 4096, 40})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// Memory-bound ops of a UNet block at 64x64 latents, batch 2: the residual add, GELU (of the
// GEGLU feed-forward), LayerNorm over tokens, and the [B, L, H, E] -> [B, H, L, E] copy.
void report_bytes(benchmark::State& state, double bytes) {
  state.counters["GB/s"] = benchmark::Counter(bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void BM_Add(benchmark::State& state) {
  autograd::NoGrad ng;
  Tensor a = randn({2, 320, 64, 64}), b = randn({2, 320, 64, 64});
  for (auto _ : state) benchmark::DoNotOptimize(add(a, b).data_ptr());
  report_bytes(state, 3.0 * double(a.nbytes()));
}
BENCHMARK(BM_Add)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Gelu(benchmark::State& state) {
  autograd::NoGrad ng;
  Tensor x = randn({2, 4096, 1280});
  for (auto _ : state) benchmark::DoNotOptimize(gelu(x).data_ptr());
  report_bytes(state, 2.0 * double(x.nbytes()));
}
BENCHMARK(BM_Gelu)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_LayerNorm(benchmark::State& state) {
  autograd::NoGrad ng;
  Tensor x = randn({2, 4096, 320}), g = randn({320}), b = randn({320});
  for (auto _ : state) benchmark::DoNotOptimize(layer_norm(x, g, b, 1e-5).data_ptr());
  report_bytes(state, 2.0 * double(x.nbytes()));
}
BENCHMARK(BM_LayerNorm)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_HeadsTranspose(benchmark::State& state) {
  autograd::NoGrad ng;
  Tensor x = randn({2, 4096, 8, 40});
  for (auto _ : state) benchmark::DoNotOptimize(contiguous(permute(x, {0, 2, 1, 3})).data_ptr());
  report_bytes(state, 2.0 * double(x.nbytes()));
}
BENCHMARK(BM_HeadsTranspose)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace sd
