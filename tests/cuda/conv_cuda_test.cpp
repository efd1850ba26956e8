// conv2d (both GPU backends: cuDNN and im2col + cuBLAS), pad2d, upsample_nearest2d and
// embedding on the GPU against the CPU reference: forward and every gradient, f32/f16/bf16,
// NCHW and channels-last inputs, odd sizes; the output layouts; the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "autograd/engine.h"
#include "ops/conv.h"
#include "ops/cuda/conv.h"
#include "ops/cuda/gemm.h"
#include "runtime/image_layout.h"
#include "ops/embedding.h"
#include "ops/upsample.h"
#include "ops/view.h"
#include "tests/cuda/cuda_check.h"

namespace sd {
namespace {

using test::matches_cpu;
using test::random_tensor;

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};

// cuBLAS/cuDNN TF32 switch; only CUDA builds have it (elsewhere these tests skip first).
void allow_tf32(bool on) {
#ifdef SD_WITH_CUDA
  cuda::set_allow_tf32(on);
#else
  (void)on;
#endif
}

// ---- conv2d ----

struct ConvCase {
  int64_t N, C, H, W, O, kh, kw, sh, sw, ph, pw;
  bool bias;
  bool vae_pad;  // pad2d(0, 1, 0, 1) before the conv, as the VAE's Downsample2D does
};

const ConvCase kConvCases[] = {
    {2, 4, 7, 5, 320, 3, 3, 1, 1, 1, 1, true, false},    // conv_in: 4 -> 320 channels, 3x3 pad 1
    {2, 320, 7, 5, 4, 3, 3, 1, 1, 1, 1, true, false},    // conv_out: 320 -> 4
    {1, 320, 8, 6, 640, 1, 1, 1, 1, 0, 0, true, false},  // 1x1 shortcut
    {2, 3, 9, 11, 5, 3, 3, 2, 2, 1, 1, true, false},     // stride 2, pad 1, 3 channels
    {2, 6, 8, 7, 6, 3, 3, 2, 2, 0, 0, true, true},       // VAE downsample: asymmetric pad, stride 2
    {2, 6, 7, 5, 6, 3, 3, 2, 2, 1, 1, false, false},     // stride 2 on odd sizes, no bias
    {3, 5, 6, 9, 7, 2, 3, 2, 1, 0, 1, false, false},     // non-square kernel, mixed stride and pad
    {2, 64, 16, 16, 96, 3, 3, 1, 1, 1, 1, true, false},  // more channels than one tile
};

std::string describe(const ConvCase& c) {
  return "conv N" + std::to_string(c.N) + " C" + std::to_string(c.C) + " " + std::to_string(c.H) + "x" +
         std::to_string(c.W) + " O" + std::to_string(c.O) + " k" + std::to_string(c.kh) + "x" + std::to_string(c.kw) +
         " s" + std::to_string(c.sh) + "," + std::to_string(c.sw) + " p" + std::to_string(c.ph) + "," +
         std::to_string(c.pw) + (c.bias ? " bias" : "") + (c.vae_pad ? " vae-pad" : "");
}

// Inputs: x as [N, C, H, W], or [N, H, W, C] for channels-last (the function permutes it,
// giving the strided view a channels-last network passes), weight, bias if any.
std::vector<Tensor> conv_inputs(const ConvCase& c, bool channels_last, uint64_t seed) {
  const Shape xs = channels_last ? Shape{c.N, c.H, c.W, c.C} : Shape{c.N, c.C, c.H, c.W};
  const double ws = 1.0 / std::sqrt(double(c.C * c.kh * c.kw));
  std::vector<Tensor> in = {random_tensor(xs, DType::F32, seed),
                            random_tensor({c.O, c.C, c.kh, c.kw}, DType::F32, seed + 1, -ws, ws)};
  if (c.bias) in.push_back(random_tensor({c.O}, DType::F32, seed + 2));
  return in;
}

test::Fn conv_fn(const ConvCase& c, bool channels_last) {
  return [c, channels_last](const std::vector<Tensor>& in) {
    Tensor x = channels_last ? permute(in[0], {0, 3, 1, 2}) : in[0];
    if (c.vae_pad) x = pad2d(x, 0, 1, 0, 1);
    return conv2d(x, in[1], c.bias ? in[2] : Tensor(), {c.sh, c.sw}, {c.ph, c.pw});
  };
}

// Runs the body under a conv backend, restoring the previous one (also on failure).
struct BackendScope {
  cuda::ConvBackend prev;
  explicit BackendScope(cuda::ConvBackend b) : prev(cuda::conv_backend()) { cuda::set_conv_backend(b); }
  ~BackendScope() { cuda::set_conv_backend(prev); }
};

const std::pair<const char*, cuda::ConvBackend> kBackends[] = {{"auto", cuda::ConvBackend::Auto},
                                                               {"im2col", cuda::ConvBackend::Im2col},
                                                               {"graph", cuda::ConvBackend::CudnnGraph}};

TEST(CudaConv, MatchesCpuBothBackendsAndLayouts) {
  SD_REQUIRE_CUDA();
  std::printf("cuDNN %s\n", cuda::cudnn_available() ? "available" : "not available (auto = im2col)");
  uint64_t seed = 100;
  for (const auto& [bname, backend] : kBackends) {
    BackendScope scope(backend);
    for (const ConvCase& c : kConvCases)
      for (bool cl : {false, true}) {
        const std::vector<Tensor> in = conv_inputs(c, cl, seed += 3);
        for (DType dt : kDtypes)
          EXPECT_TRUE(matches_cpu(describe(c) + (cl ? " channels-last" : " NCHW") + " [" + bname + "]",
                                  conv_fn(c, cl), in, dt));
      }
  }
}

// The graph-API backend really runs (rather than falling back) for the UNet's convolutions:
// forward with the bias, both gradients, both layouts, in f16 and bf16, and matches the CPU.
TEST(CudaConv, CudnnGraphRunsTheUNetShapes) {
  SD_REQUIRE_CUDA();
  if (!cuda::cudnn_available()) GTEST_SKIP() << "no cuDNN in this build";
  BackendScope scope(cuda::ConvBackend::CudnnGraph);
  const ConvCase cases[] = {{2, 64, 16, 16, 96, 3, 3, 1, 1, 1, 1, true, false},
                            {2, 32, 16, 16, 32, 3, 3, 2, 2, 1, 1, true, false},
                            {1, 64, 8, 6, 128, 1, 1, 1, 1, 0, 0, true, false}};
  uint64_t seed = 360;
  for (const ConvCase& c : cases)
    for (bool cl : {false, true})
      for (DType dt : {DType::F16, DType::BF16}) {
        const int64_t before = cuda::cudnn_graph_runs();
        EXPECT_TRUE(matches_cpu(describe(c) + (cl ? " channels-last" : " NCHW") + " [graph]", conv_fn(c, cl),
                                conv_inputs(c, cl, seed += 3), dt));
        const int64_t runs = cuda::cudnn_graph_runs() - before;
        EXPECT_GE(runs, 3) << describe(c) << (cl ? " channels-last " : " NCHW ") << dtype_name(dt)
                           << ": forward, data and filter gradients through the graph API";
        std::printf("[ CudaConv ] graph API %s %s %s: %lld runs\n", describe(c).c_str(), cl ? "NHWC" : "NCHW",
                    dtype_name(dt), static_cast<long long>(runs));
      }
}

TEST(CudaConv, OnlySomeGradients) {
  SD_REQUIRE_CUDA();
  const ConvCase c{2, 5, 7, 5, 6, 3, 3, 1, 1, 1, 1, true, false};
  for (const auto& [bname, backend] : kBackends) {
    BackendScope scope(backend);
    for (bool cl : {false, true}) {
      const std::vector<Tensor> in = conv_inputs(c, cl, 300);
      const std::vector<bool> subsets[] = {{true, false, false}, {false, true, false}, {false, false, true},
                                           {false, true, true}};
      for (const std::vector<bool>& which : subsets) {
        test::CudaCheckOptions opt;
        opt.grad = which;
        EXPECT_TRUE(matches_cpu(describe(c) + " some grads [" + bname + "]", conv_fn(c, cl), in, DType::F32, opt));
      }
    }
  }
}

TEST(CudaConv, GenericStridedInputIsCopied) {
  SD_REQUIRE_CUDA();
  // Neither NCHW nor channels-last: the inputs go through test::non_contiguous.
  const ConvCase c{2, 6, 7, 5, 8, 3, 3, 1, 1, 1, 1, true, false};
  auto f = [c](const std::vector<Tensor>& in) {
    return conv2d(test::non_contiguous(in[0]), test::non_contiguous(in[1]), in[2], {c.sh, c.sw}, {c.ph, c.pw});
  };
  for (const auto& [bname, backend] : kBackends) {
    BackendScope scope(backend);
    for (DType dt : kDtypes)
      EXPECT_TRUE(matches_cpu(std::string("non-contiguous [") + bname + "]", f, conv_inputs(c, false, 310), dt));
  }
}

TEST(CudaConv, OutputLayoutFollowsInput) {
  SD_REQUIRE_CUDA();
  // Channels-last in, channels-last out; the upstream gradient is channels-last too (as in a
  // channels-last network), and every gradient still matches the CPU's.
  const Tensor w_cpu = random_tensor({16, 8, 3, 3}, DType::F32, 320, -0.2, 0.2);
  const Tensor b_cpu = random_tensor({16}, DType::F32, 321);
  const Tensor nhwc_cpu = random_tensor({2, 7, 5, 8}, DType::F32, 322);
  const Tensor g_nhwc = random_tensor({2, 7, 5, 16}, DType::F32, 323);
  auto run = [&](Device dev) {
    std::vector<Tensor> leaves = {copy_to(nhwc_cpu, DType::F32, dev), copy_to(w_cpu, DType::F32, dev),
                                  copy_to(b_cpu, DType::F32, dev)};
    for (Tensor& t : leaves) t.set_requires_grad(true);
    Tensor y = conv2d(permute(leaves[0], {0, 3, 1, 2}), leaves[1], leaves[2], {1, 1}, {1, 1});
    autograd::backward(y, permute(copy_to(g_nhwc, DType::F32, dev), {0, 3, 1, 2}));
    leaves.push_back(y);
    return leaves;
  };
  const std::vector<Tensor> ref = run(Device::cpu());
  for (const auto& [bname, backend] : kBackends) {
    BackendScope scope(backend);
    SCOPED_TRACE(bname);
    const std::vector<Tensor> got = run(Device::cuda());
    const Tensor& y = got[3];
    EXPECT_TRUE(is_channels_last_dense(y) && !y.is_contiguous()) << y.str();
    EXPECT_LT(test::relative_error(y, ref[3]), 1e-5);
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(test::relative_error(got[i].grad(), ref[i].grad()), 1e-5) << "input " << i;
    EXPECT_TRUE(got[1].grad().is_contiguous());

    const Tensor wg = copy_to(w_cpu, DType::F16, Device::cuda());
    const Tensor x = permute(copy_to(nhwc_cpu, DType::F16, Device::cuda()), {0, 3, 1, 2});
    Tensor yn = conv2d(copy_to(x, DType::F16, Device::cuda()), wg, Tensor(), {2, 2}, {1, 1});  // NCHW copy of x
    EXPECT_TRUE(yn.is_contiguous()) << yn.str();
    // The VAE's pad keeps channels-last, and so does the strided conv after it.
    Tensor yp = conv2d(pad2d(x, 0, 1, 0, 1), wg, Tensor(), {2, 2}, {0, 0});
    EXPECT_TRUE(is_channels_last_dense(yp) && !yp.is_contiguous()) << yp.str();
  }
}

TEST(CudaConv, Im2colBatchChunks) {
  SD_REQUIRE_CUDA();
  BackendScope scope(cuda::ConvBackend::Im2col);
  // Budgets of two images (chunks of 2 + 1) and of nothing (one image per chunk).
  const ConvCase c{3, 5, 7, 5, 6, 3, 3, 1, 1, 1, 1, true, false};
  for (int64_t images : {2, 0})
    for (bool cl : {false, true})
      for (DType dt : kDtypes) {
        const int64_t per_image = c.C * c.kh * c.kw * c.H * c.W * int64_t(dtype_size(dt));
        cuda::set_conv_im2col_budget(images ? images * per_image : 1);
        const bool ok = matches_cpu(describe(c) + " chunks of " + std::to_string(images ? images : 1) +
                                        (cl ? " channels-last" : " NCHW"),
                                    conv_fn(c, cl), conv_inputs(c, cl, 330), dt);
        cuda::set_conv_im2col_budget(0);
        EXPECT_TRUE(ok);
      }
}

TEST(CudaConv, CudnnBenchmarkMode) {
  SD_REQUIRE_CUDA();
  if (!cuda::cudnn_available()) GTEST_SKIP() << "no cuDNN in this build";
  cuda::set_conv_benchmark(true);
  uint64_t seed = 340;
  bool ok = true;
  for (const ConvCase& c : {kConvCases[0], kConvCases[3], kConvCases[7]})
    for (bool cl : {false, true})
      for (DType dt : kDtypes) {
        const bool r = matches_cpu(describe(c) + " (cudnnFind)", conv_fn(c, cl), conv_inputs(c, cl, seed += 3), dt);
        EXPECT_TRUE(r);
        ok = ok && r;
      }
  cuda::set_conv_benchmark(false);
  EXPECT_TRUE(ok);
}

TEST(CudaConv, Tf32AndF64) {
  SD_REQUIRE_CUDA();
  const ConvCase c{2, 32, 9, 7, 24, 3, 3, 1, 1, 1, 1, true, false};
  for (const auto& [bname, backend] : kBackends) {
    BackendScope scope(backend);
    for (bool cl : {false, true}) {
      // f64 always runs im2col (cuDNN is not used for it).
      EXPECT_TRUE(matches_cpu(describe(c) + " f64 [" + bname + "]", conv_fn(c, cl), conv_inputs(c, cl, 350),
                              DType::F64));
      allow_tf32(true);
      test::CudaCheckOptions opt;
      opt.tol = 5e-3;  // TF32 keeps 10 mantissa bits
      const bool ok = matches_cpu(describe(c) + " tf32 [" + bname + "]", conv_fn(c, cl), conv_inputs(c, cl, 351),
                                  DType::F32, opt);
      allow_tf32(false);
      EXPECT_TRUE(ok);
    }
  }
}

TEST(CudaConv, BadArgumentsRaise) {
  SD_REQUIRE_CUDA();
  Tensor x = zeros({1, 3, 5, 5}, DType::F32, Device::cuda());
  EXPECT_THROW(conv2d(x, zeros({4, 2, 3, 3}, DType::F32, Device::cuda())), Error);          // channels
  EXPECT_THROW(conv2d(x, zeros({4, 3, 7, 7}, DType::F32, Device::cuda())), Error);          // kernel too large
  EXPECT_THROW(conv2d(x, zeros({4, 3, 3, 3}, DType::F32, Device::cpu())), Error);           // devices
  EXPECT_THROW(conv2d(x, zeros({4, 3, 3, 3}, DType::F16, Device::cuda())), Error);          // dtypes
  EXPECT_THROW(conv2d(x, zeros({4, 3, 3, 3}, DType::F32, Device::cuda()), zeros({3}, DType::F32, Device::cuda())),
               Error);  // bias size
}

// ---- pad2d ----

TEST(CudaConv, Pad2dMatchesCpu) {
  SD_REQUIRE_CUDA();
  for (DType dt : kDtypes) {
    const std::vector<Tensor> in = {random_tensor({2, 3, 7, 5}, DType::F32, 360)};
    EXPECT_TRUE(matches_cpu("pad2d vae", [](const std::vector<Tensor>& x) { return pad2d(x[0], 0, 1, 0, 1); }, in,
                            dt));
    EXPECT_TRUE(matches_cpu(
        "pad2d value", [](const std::vector<Tensor>& x) { return pad2d(x[0], 2, 1, 3, 0, -0.5); }, in, dt));
    EXPECT_TRUE(matches_cpu(
        "pad2d channels-last",
        [](const std::vector<Tensor>& x) { return pad2d(permute(x[0], {0, 3, 1, 2}), 1, 2, 0, 1, 0.25); },
        {random_tensor({2, 7, 5, 6}, DType::F32, 361)}, dt));
    EXPECT_TRUE(matches_cpu(
        "pad2d 3-d", [](const std::vector<Tensor>& x) { return pad2d(x[0], 1, 1, 1, 1); },
        {random_tensor({3, 4, 5}, DType::F32, 362)}, dt));
  }
}

// ---- upsample_nearest2d ----

struct UpCase {
  Shape shape;  // [N, C, H, W]
  int64_t s;
};
const UpCase kUpCases[] = {{{2, 3, 7, 5}, 2}, {{1, 320, 4, 4}, 2}, {{2, 5, 3, 4}, 3}, {{1, 2, 1, 1}, 1},
                           {{2, 4, 1, 3}, 2}};

TEST(CudaUpsample, MatchesCpu) {
  SD_REQUIRE_CUDA();
  uint64_t seed = 400;
  for (const UpCase& c : kUpCases) {
    const int64_t s = c.s;
    const std::string what = "upsample " + shape_str(c.shape) + " x" + std::to_string(s);
    const Tensor x = random_tensor(c.shape, DType::F32, ++seed);
    const Tensor x_nhwc = random_tensor({c.shape[0], c.shape[2], c.shape[3], c.shape[1]}, DType::F32, ++seed);
    for (DType dt : kDtypes) {
      EXPECT_TRUE(matches_cpu(what, [s](const std::vector<Tensor>& t) { return upsample_nearest2d(t[0], s); }, {x},
                              dt));
      EXPECT_TRUE(matches_cpu(
          what + " channels-last",
          [s](const std::vector<Tensor>& t) { return upsample_nearest2d(permute(t[0], {0, 3, 1, 2}), s); }, {x_nhwc},
          dt));
      EXPECT_TRUE(matches_cpu(
          what + " strided",
          // A differentiable strided view (test::non_contiguous copies without a gradient).
          [s](const std::vector<Tensor>& t) { return upsample_nearest2d(transpose(contiguous(transpose(t[0], 2, 3)), 2, 3), s); },
          {x}, dt));
    }
  }
}

TEST(CudaUpsample, LayoutAndExactF32) {
  SD_REQUIRE_CUDA();
  // Channels-last stays channels-last, both ways; f32 sums in the CPU's order, so the
  // gradient is bit-for-bit the CPU's.
  Tensor nhwc_cpu = random_tensor({2, 6, 5, 7}, DType::F32, 410);
  Tensor nhwc = copy_to(nhwc_cpu, DType::F32, Device::cuda());
  nhwc.set_requires_grad(true);
  Tensor y = upsample_nearest2d(permute(nhwc, {0, 3, 1, 2}), 2);
  EXPECT_TRUE(is_channels_last_dense(y) && !y.is_contiguous()) << y.str();
  Tensor g_nhwc = random_tensor({2, 12, 10, 7}, DType::F32, 411);
  Tensor g = permute(copy_to(g_nhwc, DType::F32, Device::cuda()), {0, 3, 1, 2});  // channels-last upstream
  autograd::backward(y, g);
  nhwc_cpu.set_requires_grad(true);
  autograd::backward(upsample_nearest2d(permute(nhwc_cpu, {0, 3, 1, 2}), 2), permute(g_nhwc, {0, 3, 1, 2}));
  EXPECT_TRUE(test::all_close(copy_to(nhwc.grad(), DType::F32, Device::cpu()), nhwc_cpu.grad(), 0, 0));
  EXPECT_TRUE(upsample_nearest2d(copy_to(random_tensor({1, 3, 4, 5}, DType::F32, 412), DType::F32, Device::cuda()), 2)
                  .is_contiguous());
}

// ---- embedding ----

// Ids uniform in [0, hi): with hi small against the count, many repeat.
Tensor random_ids(const Shape& shape, int64_t hi, DType dt, uint64_t seed) {
  std::vector<double> v = random_tensor(shape, DType::F64, seed, 0.0, double(hi)).to_vector();
  for (double& x : v) x = std::min(std::floor(x), double(hi - 1));
  return from_vector(v, shape, dt);
}

TEST(CudaEmbedding, MatchesCpu) {
  SD_REQUIRE_CUDA();
  test::CudaCheckOptions opt;
  opt.grad = {true, false};
  uint64_t seed = 500;
  for (DType idt : {DType::I32, DType::I64}) {
    const std::pair<Shape, int64_t> id_cases[] = {{{2, 77}, 10}, {{2, 77}, 49}, {{5}, 3}, {{3, 1, 4}, 49}};
    for (const auto& [shape, hi] : id_cases) {
      const std::string what = "embedding ids " + shape_str(shape) + " < " + std::to_string(hi);
      const Tensor ids = random_ids(shape, hi, idt, ++seed);
      for (DType dt : kDtypes) {
        EXPECT_TRUE(matches_cpu(what, [](const std::vector<Tensor>& t) { return embedding(t[0], t[1]); },
                                {random_tensor({49, 77}, DType::F32, ++seed), ids}, dt, opt));
        // A transposed table (non-contiguous weight) and a strided id tensor.
        EXPECT_TRUE(matches_cpu(
            what + " strided",
            [](const std::vector<Tensor>& t) {
              return embedding(transpose(t[0], 0, 1), t[1].dim() > 1 ? transpose(t[1], 0, 1) : t[1]);
            },
            {random_tensor({77, 49}, DType::F32, ++seed), ids}, dt, opt));
      }
    }
  }
}

TEST(CudaEmbedding, BackwardIsDeterministicAndExactInF32) {
  SD_REQUIRE_CUDA();
  // Rows hit many times: the GPU sums each row in the CPU's order, so f32 agrees bit for bit.
  const Tensor ids_cpu = random_ids({4, 77}, 7, DType::I64, 520);
  const Tensor g_cpu = random_tensor({4, 77, 33}, DType::F32, 521);
  Tensor w_cpu = random_tensor({7, 33}, DType::F32, 522);
  w_cpu.set_requires_grad(true);
  autograd::backward(embedding(w_cpu, ids_cpu), g_cpu);
  for (int rep = 0; rep < 2; ++rep) {
    Tensor w = copy_to(w_cpu, DType::F32, Device::cuda());
    w.set_requires_grad(true);
    autograd::backward(embedding(w, copy_to(ids_cpu, DType::I64, Device::cuda())),
                       copy_to(g_cpu, DType::F32, Device::cuda()));
    EXPECT_TRUE(test::all_close(copy_to(w.grad(), DType::F32, Device::cpu()), w_cpu.grad(), 0, 0));
  }
}

TEST(CudaEmbedding, OutOfRangeIdsRaise) {
  SD_REQUIRE_CUDA();
  Tensor w = zeros({10, 4}, DType::F32, Device::cuda());
  for (DType idt : {DType::I32, DType::I64}) {
    EXPECT_THROW(embedding(w, from_vector({1, 10, 2}, {3}, idt, Device::cuda())), Error);
    EXPECT_THROW(embedding(w, from_vector({-1}, {1}, idt, Device::cuda())), Error);
    EXPECT_NO_THROW(embedding(w, from_vector({0, 9}, {2}, idt, Device::cuda())));
  }
  EXPECT_THROW(embedding(w, from_vector({1}, {1}, DType::I64, Device::cpu())), Error);  // devices differ
  EXPECT_THROW(embedding(w, from_vector({1}, {1}, DType::F32, Device::cuda())), Error);  // float ids
}

}  // namespace
}  // namespace sd
