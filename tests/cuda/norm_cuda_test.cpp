// GroupNorm (+ fused SiLU), LayerNorm and softmax CUDA kernels against the CPU reference,
// forward and backward, in f32/f16/bf16: the SD UNet and VAE shapes, small odd shapes,
// channels-last inputs read in place, unaligned inputs (scalar paths), large groups (split
// statistics), rows long enough for the block-per-row kernels, softmax over inner dims.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "ops/norm.h"
#include "ops/softmax.h"
#include "ops/view.h"
#include "tests/cuda/cuda_check.h"
#ifdef SD_WITH_CUDA
#include "ops/cpu/norm.h"
#include "ops/cuda/norm.h"
#endif

namespace sd {
namespace {

using test::matches_cpu;
using test::random_tensor;

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};

// [N, C, *spatial] -> [N, *spatial, C].
Shape nhwc(const Shape& s) {
  Shape out{s[0]};
  out.insert(out.end(), s.begin() + 2, s.end());
  out.push_back(s[1]);
  return out;
}

// Dims that view a contiguous [N, *spatial, C] as [N, C, *spatial].
std::vector<int64_t> from_nhwc(int64_t nd) {
  std::vector<int64_t> p{0, nd - 1};
  for (int64_t d = 1; d < nd - 1; ++d) p.push_back(d);
  return p;
}

struct GnCase {
  Shape x;  // [N, C, *spatial]
  int64_t groups = 32;
  bool channels_last = false;
  bool silu = true;
  bool affine = true;
  double eps = 1e-5;
  std::string str() const {
    return "group_norm " + shape_str(x) + " G=" + std::to_string(groups) + (channels_last ? " channels-last" : "") +
           (silu ? " +silu" : "") + (affine ? "" : " no-affine");
  }
};

// Inputs: x (stored [N, *spatial, C] when channels-last), weight, bias (undefined without affine).
std::vector<Tensor> gn_inputs(const GnCase& c, uint64_t seed, double lo = -2.0, double hi = 3.0) {
  const int64_t C = c.x[1];
  return {random_tensor(c.channels_last ? nhwc(c.x) : c.x, DType::F32, seed, lo, hi),
          c.affine ? random_tensor({C}, DType::F32, seed + 1, 0.5, 1.5) : Tensor(),
          c.affine ? random_tensor({C}, DType::F32, seed + 2, -0.5, 0.5) : Tensor()};
}

test::Fn gn_fn(const GnCase& c) {
  return [c](const std::vector<Tensor>& in) {
    const Tensor x = c.channels_last ? permute(in[0], from_nhwc(in[0].dim())) : in[0];
    return group_norm(x, c.groups, in[1], in[2], c.eps, c.silu);
  };
}

void expect_gn(const GnCase& c, DType dt, uint64_t seed) {
  EXPECT_TRUE(matches_cpu(c.str(), gn_fn(c), gn_inputs(c, seed), dt));
}

// Every GroupNorm of the SD UNet (N = 2: the CFG batch), both layouts over the dtypes.
TEST(CudaNorm, GroupNormUNetShapes) {
  SD_REQUIRE_CUDA();
  const std::pair<int64_t, int64_t> cfgs[] = {{320, 64}, {320, 32}, {640, 64}, {640, 32}, {640, 16},
                                              {960, 64}, {960, 32}, {1280, 32}, {1280, 16}, {1280, 8},
                                              {1920, 32}, {1920, 16}, {2560, 16}, {2560, 8}};
  int i = 0;
  for (const auto& [C, hw] : cfgs)
    for (DType dt : kDtypes) {
      GnCase c;
      c.x = {2, C, hw, hw};
      c.channels_last = (i++ % 2) == 1;
      expect_gn(c, dt, uint64_t(100 + i));
    }
}

// VAE GroupNorms: fewer channels, large images, eps 1e-6, batch 1.
TEST(CudaNorm, GroupNormVaeShapes) {
  SD_REQUIRE_CUDA();
  const std::pair<int64_t, int64_t> cfgs[] = {{128, 256}, {256, 128}, {512, 64}, {512, 32}};
  int i = 0;
  for (const auto& [C, hw] : cfgs)
    for (DType dt : kDtypes) {
      GnCase c;
      c.x = {1, C, hw, hw};
      c.eps = 1e-6;
      c.channels_last = (i++ % 2) == 0;
      expect_gn(c, dt, uint64_t(200 + i));
    }
  GnCase big;  // the decoder's last blocks: 1M values per group
  big.x = {1, 128, 512, 512};
  big.eps = 1e-6;
  big.channels_last = true;
  expect_gn(big, DType::F16, 250);
}

// Small odd shapes: C not a multiple of the vector, 7x5 / 1-d / no spatial dims, one
// channel per group, with every combination of affine, SiLU and layout.
// (Not 2 elements per group: there x-hat is exactly +-1 whatever x is, dx is 0 up to eps, and
// both devices return rounding noise that a relative comparison cannot judge.)
void expect_odd_gn_cases(uint64_t seed) {
  const std::pair<Shape, int64_t> shapes[] = {{{2, 6, 7, 5}, 3},  {{3, 6, 11}, 3},     {{3, 6}, 2},
                                              {{1, 4, 3, 3}, 4},  {{2, 16, 4, 8}, 2},  {{2, 24, 5, 3, 2}, 6},
                                              {{1, 10, 1, 1}, 2}, {{2, 64, 9, 9}, 32}};
  for (const auto& [shape, G] : shapes)
    for (int variant = 0; variant < 8; ++variant)
      for (DType dt : kDtypes) {
        GnCase c;
        c.x = shape;
        c.groups = G;
        c.silu = variant & 1;
        c.affine = variant & 2;
        c.channels_last = (variant & 4) && shape.size() > 2;
        expect_gn(c, dt, seed++);
      }
}

TEST(CudaNorm, GroupNormOddShapes) {
  SD_REQUIRE_CUDA();
  expect_odd_gn_cases(300);
}

// Groups large enough that the statistics are split over several blocks per group and
// combined; values offset from zero so a naive E[x^2] - E[x]^2 would lose precision.
TEST(CudaNorm, GroupNormLargeGroupsSplitStatistics) {
  SD_REQUIRE_CUDA();
  for (bool cl : {false, true})
    for (DType dt : kDtypes) {
      GnCase c;
      c.x = {2, 64, 128, 128};
      c.channels_last = cl;
      EXPECT_TRUE(matches_cpu(c.str(), gn_fn(c), gn_inputs(c, 400, -2.0, 3.0), dt));
      // Values in [20, 21): the f32 CPU reference itself is off by ~1.3e-5 from float64 there
      // (its mean carries ~4e-6 of rounding, divided by a std of 0.29), so f32 gets 1e-4.
      test::CudaCheckOptions opt;
      opt.tol = dt == DType::F32 ? 1e-4 : 0.0;
      EXPECT_TRUE(matches_cpu(c.str() + " offset", gn_fn(c), gn_inputs(c, 401, 20.0, 21.0), dt, opt));
    }
  GnCase wide;  // one group: a single (n, g) spread over every SM
  wide.x = {1, 32, 256, 256};
  wide.groups = 1;
  EXPECT_TRUE(matches_cpu(wide.str(), gn_fn(wide), gn_inputs(wide, 402), DType::F32));
  wide.channels_last = true;
  EXPECT_TRUE(matches_cpu(wide.str(), gn_fn(wide), gn_inputs(wide, 403), DType::F16));
}

// Layouts the fast paths must not take: a pointer off the 16-byte grid (scalar loads),
// spatial dims swapped (copied to NCHW first), f64.
TEST(CudaNorm, GroupNormUnalignedStridedAndF64) {
  SD_REQUIRE_CUDA();
  const Shape shape{2, 64, 8, 8};
  const int64_t n = shape_numel(shape);
  const test::Fn unaligned = [shape, n](const std::vector<Tensor>& in) {
    return group_norm(reshape(narrow(in[0], 0, 1, n), shape), 32, in[1], in[2], 1e-5, true);
  };
  const std::vector<Tensor> flat = {random_tensor({n + 1}, DType::F32, 500), random_tensor({64}, DType::F32, 501),
                                    random_tensor({64}, DType::F32, 502)};
  const test::Fn swapped = [](const std::vector<Tensor>& in) {
    return group_norm(transpose(in[0], 2, 3), 8, in[1], in[2], 1e-5, true);
  };
  const std::vector<Tensor> sw = {random_tensor({2, 16, 7, 5}, DType::F32, 503),
                                  random_tensor({16}, DType::F32, 504), random_tensor({16}, DType::F32, 505)};
  for (DType dt : kDtypes) {
    EXPECT_TRUE(matches_cpu("group_norm unaligned", unaligned, flat, dt));
    EXPECT_TRUE(matches_cpu("group_norm swapped spatial", swapped, sw, dt));
  }
  for (bool cl : {false, true}) {
    GnCase c;
    c.x = {2, 64, 9, 16};
    c.channels_last = cl;
    expect_gn(c, DType::F64, 506);
  }
}

// A channels-last input is read in place and gives a channels-last output with the CPU's
// values; the saved statistics have the CPU's shapes, dtypes and values.
TEST(CudaNorm, GroupNormChannelsLastOutputAndStatistics) {
  SD_REQUIRE_CUDA();
#ifdef SD_WITH_CUDA
  for (DType dt : {DType::F32, DType::BF16}) {
    const Tensor x_nhwc = copy_to(random_tensor({2, 12, 10, 320}, DType::F32, 600, -1, 2), dt, Device::cpu());
    const Tensor w = copy_to(random_tensor({320}, DType::F32, 601, 0.5, 1.5), dt, Device::cpu());
    const Tensor b = copy_to(random_tensor({320}, DType::F32, 602), dt, Device::cpu());
    const Tensor x_cpu = permute(x_nhwc, {0, 3, 1, 2});
    const Tensor x_gpu = permute(copy_to(x_nhwc, dt, Device::cuda()), {0, 3, 1, 2});
    const cpu::NormForward ref = cpu::group_norm_forward(x_cpu, 32, w, b, 1e-5, true);
    const cpu::NormForward got = cuda::group_norm_forward(x_gpu, 32, copy_to(w, dt, Device::cuda()),
                                                          copy_to(b, dt, Device::cuda()), 1e-5, true);
    EXPECT_EQ(got.y.stride(1), 1);
    EXPECT_EQ(got.y.stride(3), 320);
    EXPECT_LT(test::relative_error(got.y, ref.y), test::default_tol(dt));
    EXPECT_EQ(got.mean.shape(), ref.mean.shape());
    EXPECT_EQ(got.mean.dtype(), DType::F32);
    EXPECT_EQ(got.rstd.dtype(), DType::F32);
    EXPECT_TRUE(test::all_close(got.mean, ref.mean, 1e-5, 1e-6));
    EXPECT_TRUE(test::all_close(got.rstd, ref.rstd, 1e-5, 1e-6));
  }
#endif
}

#ifdef SD_WITH_CUDA
// Turns the one-kernel GroupNorm forward on for a scope.
struct OneKernelGroupNorm {
  bool was = cuda::group_norm_one_kernel();
  OneKernelGroupNorm() { cuda::set_group_norm_one_kernel(true); }
  ~OneKernelGroupNorm() { cuda::set_group_norm_one_kernel(was); }
};
#endif

// The one-kernel forward (ops/cuda/norm.h set_group_norm_one_kernel: a group staged in shared
// memory) against the CPU, forward and backward (the backward reads its saved statistics), on
// the UNet's and VAE's shapes in both layouts, odd shapes (scalar paths), offset values (its
// two-pass statistics), f64, and groups too large for it (the three-kernel path takes over).
TEST(CudaNorm, GroupNormOneKernelPath) {
  SD_REQUIRE_CUDA();
#ifdef SD_WITH_CUDA
  OneKernelGroupNorm on;
  const int64_t calls0 = cuda::group_norm_one_kernel_calls();
  int i = 0;
  for (const auto& [C, hw] : std::vector<std::pair<int64_t, int64_t>>{{320, 64}, {640, 32}, {1280, 16}, {2560, 8},
                                                                       {960, 64}, {1920, 32}})
    for (bool cl : {false, true})
      for (DType dt : kDtypes) {
        GnCase c;
        c.x = {2, C, hw, hw};
        c.channels_last = cl;
        expect_gn(c, dt, uint64_t(700 + i++));
      }
  const int64_t unet_calls = cuda::group_norm_one_kernel_calls() - calls0;
  // Groups of up to ~226 KiB fit (sm_90): all but 960 channels at 64x64 (240 KiB in f16) and the
  // f32 1920 x 32x32 ones: 28 of the 36 cases.
  EXPECT_GE(unet_calls, 28) << "the UNet shapes that fit a block's shared memory";
  expect_odd_gn_cases(800);
  for (bool cl : {false, true}) {
    GnCase c;
    c.x = {2, 64, 32, 32};
    c.channels_last = cl;
    test::CudaCheckOptions opt;
    opt.tol = 1e-4;  // as GroupNormLargeGroupsSplitStatistics: the f32 CPU reference's own error
    EXPECT_TRUE(matches_cpu(c.str() + " offset", gn_fn(c), gn_inputs(c, 900, 20.0, 21.0), DType::F32, opt));
    c.x = {2, 64, 9, 16};
    expect_gn(c, DType::F64, 901);
  }
  // Too large for one block (a VAE layer: 4 channels x 256 x 256 per group): the other path.
  const int64_t before_big = cuda::group_norm_one_kernel_calls();
  GnCase big;
  big.x = {1, 128, 256, 256};
  big.eps = 1e-6;
  expect_gn(big, DType::F16, 902);
  EXPECT_EQ(cuda::group_norm_one_kernel_calls(), before_big);
  // Saved statistics equal the CPU's.
  const Tensor x = random_tensor({2, 320, 16, 16}, DType::F32, 903, -1, 2);
  const cpu::NormForward ref = cpu::group_norm_forward(x, 32, Tensor(), Tensor(), 1e-5, false);
  const cpu::NormForward got = cuda::group_norm_forward(copy_to(x, DType::F32, Device::cuda()), 32, Tensor(), Tensor(),
                                                        1e-5, false);
  EXPECT_TRUE(test::all_close(got.mean, ref.mean, 1e-5, 1e-6));
  EXPECT_TRUE(test::all_close(got.rstd, ref.rstd, 1e-5, 1e-6));
  std::printf("[ CudaNorm ] one-kernel GroupNorm took %lld of the calls\n",
              static_cast<long long>(cuda::group_norm_one_kernel_calls() - calls0));
#endif
}

TEST(CudaNorm, GroupNormBadInputs) {
  SD_REQUIRE_CUDA();
  const Tensor x = copy_to(random_tensor({2, 8, 4, 4}, DType::F32, 700), DType::F32, Device::cuda());
  const Tensor w_cpu = random_tensor({8}, DType::F32, 701);
  EXPECT_THROW(group_norm(x, 4, w_cpu, Tensor(), 1e-5), Error);  // weight on another device
  EXPECT_THROW(group_norm(x, 3, Tensor(), Tensor(), 1e-5), Error);  // 8 channels, 3 groups
  EXPECT_THROW(layer_norm(x, copy_to(w_cpu, DType::F32, Device::cuda()), Tensor(), 1e-5), Error);  // D is 4
}

// ------------------------------------------------------------------------- LayerNorm

TEST(CudaNorm, LayerNorm) {
  SD_REQUIRE_CUDA();
  // SD / CLIP widths, odd widths, rows longer than a warp handles (block-per-row kernel).
  // (No D = 1: its dx is exactly zero, so both devices return rounding noise.)
  const Shape shapes[] = {{2, 77, 768}, {2, 77, 1024}, {2, 1024, 1280}, {2, 4096, 320},
                          {3, 1280},    {5, 7, 33},    {4, 3000},       {3, 4096}};
  int i = 0;
  for (const Shape& s : shapes)
    for (DType dt : kDtypes)
      for (bool affine : {true, false}) {
        const int64_t D = s.back();
        std::vector<Tensor> in = {random_tensor(s, DType::F32, 800 + i, -2, 3),
                                  affine ? random_tensor({D}, DType::F32, 900 + i, 0.5, 1.5) : Tensor(),
                                  affine ? random_tensor({D}, DType::F32, 1000 + i) : Tensor()};
        ++i;
        EXPECT_TRUE(matches_cpu("layer_norm " + shape_str(s) + (affine ? "" : " no-affine"),
                                [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); }, in,
                                dt));
      }
}

TEST(CudaNorm, LayerNormStridedAndUnaligned) {
  SD_REQUIRE_CUDA();
  const std::vector<Tensor> in = {random_tensor({77, 2, 320}, DType::F32, 1100), random_tensor({320}, DType::F32, 1101),
                                  random_tensor({320}, DType::F32, 1102)};
  const std::vector<Tensor> flat = {random_tensor({3 * 320 + 1}, DType::F32, 1103),
                                    random_tensor({320}, DType::F32, 1104), random_tensor({320}, DType::F32, 1105)};
  for (DType dt : kDtypes) {
    EXPECT_TRUE(matches_cpu("layer_norm transposed",
                            [](const std::vector<Tensor>& x) { return layer_norm(transpose(x[0], 0, 1), x[1], x[2], 1e-5); },
                            in, dt));
    EXPECT_TRUE(matches_cpu("layer_norm unaligned",
                            [](const std::vector<Tensor>& x) {
                              return layer_norm(reshape(narrow(x[0], 0, 1, 3 * 320), {3, 320}), x[1], x[2], 1e-5);
                            },
                            flat, dt));
  }
  EXPECT_TRUE(matches_cpu("layer_norm f64", [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); },
                          {random_tensor({5, 7, 64}, DType::F32, 1106), random_tensor({64}, DType::F32, 1107),
                           random_tensor({64}, DType::F32, 1108)},
                          DType::F64));
}

// ------------------------------------------------------------------------- softmax

const test::Fn kSoftmaxLast = [](const std::vector<Tensor>& x) { return softmax(x[0], -1); };
const test::Fn kLogSoftmaxLast = [](const std::vector<Tensor>& x) { return log_softmax(x[0], -1); };

TEST(CudaSoftmax, LastDim) {
  SD_REQUIRE_CUDA();
  // Attention-like rows (77 tokens), a vector multiple, odd lengths, rows for the block kernel.
  const Shape shapes[] = {{2, 8, 77, 77}, {4, 1024}, {5, 33}, {7, 1}, {4, 3000}, {3, 4096}, {2, 8192}};
  int i = 0;
  for (const Shape& s : shapes)
    for (DType dt : kDtypes) {
      const std::vector<Tensor> in = {random_tensor(s, DType::F32, 1200 + i++, -6, 6)};
      EXPECT_TRUE(matches_cpu("softmax " + shape_str(s), kSoftmaxLast, in, dt));
      EXPECT_TRUE(matches_cpu("log_softmax " + shape_str(s), kLogSoftmaxLast, in, dt));
    }
  // Large logits: the max subtraction keeps exp finite.
  const std::vector<Tensor> big = {random_tensor({6, 500}, DType::F32, 1250, -80, 80)};
  for (DType dt : kDtypes) {
    EXPECT_TRUE(matches_cpu("softmax large logits", kSoftmaxLast, big, dt));
    EXPECT_TRUE(matches_cpu("log_softmax large logits", kLogSoftmaxLast, big, dt));
  }
}

TEST(CudaSoftmax, OtherDimsStridedAndF64) {
  SD_REQUIRE_CUDA();
  struct Case {
    Shape shape;
    int64_t dim;
  };
  const Case cases[] = {{{3, 5, 7}, 1}, {{3, 5, 7}, 0}, {{2, 77, 40}, 1}, {{4, 3, 9, 9}, 1}, {{2, 3000, 3}, 1}};
  int i = 0;
  for (const Case& c : cases)
    for (DType dt : kDtypes) {
      const std::vector<Tensor> in = {random_tensor(c.shape, DType::F32, 1300 + i++, -4, 4)};
      const int64_t dim = c.dim;
      EXPECT_TRUE(matches_cpu("softmax dim " + std::to_string(dim) + " " + shape_str(c.shape),
                              [dim](const std::vector<Tensor>& x) { return softmax(x[0], dim); }, in, dt));
      EXPECT_TRUE(matches_cpu("log_softmax dim " + std::to_string(dim) + " " + shape_str(c.shape),
                              [dim](const std::vector<Tensor>& x) { return log_softmax(x[0], dim); }, in, dt));
    }
  const std::vector<Tensor> in = {random_tensor({77, 2, 64}, DType::F32, 1350, -4, 4)};
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F64}) {
    EXPECT_TRUE(matches_cpu("softmax permuted",
                            [](const std::vector<Tensor>& x) { return softmax(permute(x[0], {1, 2, 0}), -1); }, in, dt));
    EXPECT_TRUE(matches_cpu("log_softmax permuted",
                            [](const std::vector<Tensor>& x) { return log_softmax(transpose(x[0], 0, 1), 1); }, in,
                            dt));
  }
}

// A row of all -inf gives NaN on both devices; rows with some -inf give exact zeros there.
TEST(CudaSoftmax, MinusInfinityRows) {
  SD_REQUIRE_CUDA();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<double> v = {-inf, -inf, -inf, -inf, 1.0, -inf, 2.0, 0.5};
  for (int64_t dim : {-1, 0}) {
    const Tensor x = from_vector(v, {2, 4}, DType::F32);
    const Tensor xt = dim == -1 ? x : transpose(x, 0, 1);  // the same rows seen as columns
    const Tensor ref = softmax(xt, dim);
    const Tensor got = softmax(copy_to(xt, DType::F32, Device::cuda()), dim);
    const std::vector<double> r = ref.to_vector(), g = got.to_vector();
    ASSERT_EQ(r.size(), g.size());
    for (size_t i = 0; i < r.size(); ++i) {
      if (std::isnan(r[i])) {
        EXPECT_TRUE(std::isnan(g[i])) << "element " << i;
      } else {
        EXPECT_NEAR(g[i], r[i], 1e-6) << "element " << i;
      }
    }
  }
}

}  // namespace
}  // namespace sd
