// The tiny golden VAE on the GPU in f32 and bf16 (plain and tiled encode/decode) against the same
// model on the CPU; the tiled decode's memory bound on the GPU; and, when SD_VAE_PEAK_TEST is set,
// the peak memory and time of a 2048x2048 decode with the real SD VAE shapes (random weights).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "autograd/node.h"
#include "ops/view.h"
#include "runtime/allocator.h"
#include "runtime/cuda_api.h"
#include "tests/models/vae/vae_golden.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

TEST(CudaVae, GoldenModelMatchesTheCpu) {
  SD_REQUIRE_CUDA();
  const auto io = test::vae_golden_io();
  auto cpu = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F32);
  const auto ref = test::run_vae_golden(*cpu, io);
  // NCHW, and channels-last (AutoencoderKL::set_channels_last).
  for (bool cl : {false, true})
    for (DType dt : {DType::F32, DType::BF16}) {
      auto gpu = AutoencoderKL::from_pretrained(test::vae_golden_dir(), dt, Device::cuda());
      gpu->set_channels_last(cl);
      EXPECT_TRUE(gpu->decoder->conv_out->weight.is_cuda());
      const auto out = test::run_vae_golden(*gpu, io, Device::cuda());
      for (const auto& [name, want] : ref) {
        const double err = test::relative_error(out.at(name), want);
        EXPECT_LE(err, dt == DType::F32 ? 1e-4 : 2e-2) << name << " " << dtype_name(dt) << (cl ? " channels-last" : "");
        std::printf("[ CudaVae ] %s%s %-12s relative error vs CPU f32 %.2e\n", dtype_name(dt),
                    cl ? " channels-last" : "", name.c_str(), err);
      }
    }
  // f16 with force_upcast: f32 parameters on the GPU, f16 in and out.
  auto up = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F16, Device::cuda());
  EXPECT_EQ(up->compute_dtype(), DType::F32);
  Tensor dec = up->decode(copy_to(io.at("latents"), DType::F16, Device::cuda()));
  EXPECT_EQ(dec.dtype(), DType::F16);
  EXPECT_LE(test::relative_error(copy_to(dec, DType::F32, Device::cpu()), ref.at("dec")), 2e-3);
}

// Peak bytes allocated while f runs, above what was allocated before. f runs once first: the
// convolutions pick their algorithms (and try workspaces) on a shape's first use.
int64_t peak_of(Allocator& a, const std::function<Tensor()>& f, int64_t* out_bytes = nullptr) {
  f();
  cudart::synchronize();
  a.reset_peak();
  const int64_t before = a.stats().current_bytes;
  Tensor out = f();
  cudart::synchronize();
  if (out_bytes) *out_bytes = int64_t(out.nbytes());
  return a.stats().peak_bytes - before;
}

TEST(CudaVae, TiledDecodeHoldsOneTileOfActivations) {
  SD_REQUIRE_CUDA();
  auto m = AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F32, Device::cuda());
  autograd::NoGrad no_grad;
  Tensor z = randn_seeded({1, 4, 64, 64}, 9, DType::F32, Device::cuda());
  Allocator& a = allocator_for(Device::cuda());
  const int64_t one = peak_of(a, [&] { return m->decode(narrow(narrow(z, 2, 0, 8), 3, 0, 8)); });
  int64_t out_bytes = 0;
  const int64_t tiled = peak_of(a, [&] { return m->decode_tiled(z, test::vae_golden_tiling()); }, &out_bytes);
  const int64_t whole = peak_of(a, [&] { return m->decode(z); });
  std::printf("[ CudaVae ] peak bytes: one 8x8 tile %lld, 64x64 tiled %lld (output %lld), 64x64 whole %lld\n",
              (long long)one, (long long)tiled, (long long)out_bytes, (long long)whole);
  // Blend strips and temporaries are a few tile outputs. On the GPU the caching allocator rounds
  // each block up to its size class and the edge tiles (other shapes) bring their own cuDNN
  // workspaces, so the bound allows 2 MiB beyond one tile + the output: on an H200 (2026-11-26)
  // one tile 99 KB, tiled 1.58 MB, whole 88 MB; the tiled peak stays under a tenth of the whole.
  EXPECT_LE(tiled, one + out_bytes + (2 << 20));
  EXPECT_LT(tiled * 10, whole);
}

// Real SD VAE shapes (random weights): peak memory and time of a 2048x2048 decode with the default
// 64-latent tiles, against one tile alone, and (bf16) a 1024x1024 decode tiled and whole. Tens of
// seconds of GPU time: run on demand (SD_VAE_PEAK_TEST=1).
TEST(CudaVae, RealSizeTiledDecodePeak) {
  SD_REQUIRE_CUDA();
  if (!std::getenv("SD_VAE_PEAK_TEST")) GTEST_SKIP() << "set SD_VAE_PEAK_TEST=1 to measure the 2048x2048 decode";
  AutoencoderKL m(VaeConfig::sd15());  // tile 512 px / 64 latents, as diffusers for SD1.5
  autograd::NoGrad no_grad;
  Allocator& a = allocator_for(Device::cuda());
  for (DType dt : {DType::BF16, DType::F32}) {
    m.init_parameters(3, dt, Device::cuda());
    const int64_t weights = a.stats().current_bytes;
    Tensor z = randn_seeded({1, 4, 256, 256}, 4, dt, Device::cuda());
    auto crop = [&](int64_t n) { return narrow(narrow(z, 2, 0, n), 3, 0, n); };
    auto run = [&](const char* what, const std::function<Tensor()>& f) {
      int64_t out_bytes = 0;
      std::chrono::steady_clock::time_point t0;
      const int64_t peak = peak_of(a, [&] { t0 = std::chrono::steady_clock::now(); return f(); }, &out_bytes);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("[ CudaVae ] %s %-26s peak %7.0f MiB above the %.0f MiB of weights (output %.0f MiB), %.2f s\n",
                  dtype_name(dt), what, peak / 1048576.0, weights / 1048576.0, out_bytes / 1048576.0, s);
      return peak;
    };
    const int64_t one = run("one 64x64-latent tile", [&] { return m.decode(crop(64)); });
    const int64_t tiled = run("2048x2048 tiled", [&] { return m.decode_tiled(z); });
    EXPECT_LE(tiled, one + int64_t(3) * 2048 * 2048 * int64_t(dtype_size(dt)) + (64 << 20));
    if (dt == DType::BF16) {
      run("1024x1024 tiled", [&] { return m.decode_tiled(crop(128)); });
      run("1024x1024 whole", [&] { return m.decode(crop(128)); });
    }
    a.empty_cache();
  }
}

}  // namespace
}  // namespace sd::nn
