// Channels-last (NHWC) runs of the models: the layout rules of the ops a model chains
// (elementwise, concatenation, the entry/exit conversions) and the models themselves, which must
// give the same numbers in both layouts. On the CPU the convolutions and norms read NCHW, so these
// tests check that the layout is invisible to the results; the GPU tests (tests/cuda/
// channels_last_cuda_test.cpp) check that it survives every layer there.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "autograd/engine.h"
#include "models/unet/unet.h"
#include "models/vae/vae.h"
#include "ops/activation.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/optim.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/image_layout.h"
#include "tests/models/unet/unet_golden.h"
#include "tests/models/vae/vae_golden.h"
#include "tests/test_util.h"

namespace sd {
namespace {

Tensor cl_copy(const Tensor& t) { return channels_last_raw(t); }

TEST(ChannelsLast, ElementwiseResultsKeepTheLayoutOfTheirFullShapeOperands) {
  const Tensor a = test::random_tensor({2, 6, 3, 5}, DType::F32, 1), b = test::random_tensor({2, 6, 3, 5}, DType::F32, 2);
  const Tensor bias = test::random_tensor({2, 6, 1, 1}, DType::F32, 3);
  const Tensor acl = cl_copy(a), bcl = cl_copy(b);
  ASSERT_TRUE(prefers_channels_last(acl));
  // Both operands channels-last, or one broadcast (the time embedding, a bias): channels-last.
  for (const Tensor& r : {add(acl, bcl), mul(acl, bias), sub(bias, acl), silu(acl), mul_scalar(acl, 3.0)})
    EXPECT_TRUE(prefers_channels_last(r)) << r.str() << " strides " << shape_str(r.strides());
  // Any NCHW operand of the full shape keeps the result NCHW, so NCHW models never change layout.
  for (const Tensor& r : {add(acl, b), add(a, bcl), add(a, b), mul(a, bias)}) EXPECT_TRUE(r.is_contiguous()) << r.str();
  // Same values whatever the layouts.
  EXPECT_TRUE(test::all_close(add(acl, bcl), add(a, b), 0, 0));
  EXPECT_TRUE(test::all_close(add(acl, b), add(a, b), 0, 0));
  EXPECT_TRUE(test::all_close(div(bias, acl), div(bias, a), 0, 0));
  EXPECT_TRUE(test::all_close(silu(acl), silu(a), 0, 0));
  // Ambiguous tensors (C == 1, or H = W = 1) are both layouts: they do not force channels-last.
  const Tensor one_channel = test::random_tensor({2, 1, 3, 5}, DType::F32, 4);
  EXPECT_TRUE(add(one_channel, one_channel).is_contiguous());
}

TEST(ChannelsLast, GradientsOfPointwiseOpsKeepTheLayout) {
  Tensor x = cl_copy(test::random_tensor({2, 4, 3, 3}, DType::F64, 5));
  x.set_requires_grad(true);
  Tensor y = silu(x) * x;
  EXPECT_TRUE(prefers_channels_last(y));
  Tensor g = cl_copy(test::random_tensor({2, 4, 3, 3}, DType::F64, 6));
  autograd::backward(y, g);
  EXPECT_TRUE(prefers_channels_last(x.grad())) << shape_str(x.grad().strides());
  // d/dx (x silu(x)) = silu(x) + x silu'(x), checked against the NCHW run.
  Tensor xn = contiguous_raw(detach(x));
  xn.set_requires_grad(true);
  autograd::backward(silu(xn) * xn, contiguous_raw(g));
  EXPECT_TRUE(test::all_close(x.grad(), xn.grad(), 0, 0));
}

TEST(ChannelsLast, ConcatenationOfChannelsLastImagesIsChannelsLast) {
  const Tensor a = test::random_tensor({2, 3, 4, 5}, DType::F32, 7), b = test::random_tensor({2, 5, 4, 5}, DType::F32, 8);
  Tensor c = cat({cl_copy(a), cl_copy(b)}, 1);
  EXPECT_TRUE(prefers_channels_last(c)) << shape_str(c.strides());
  EXPECT_TRUE(test::all_close(c, cat({a, b}, 1), 0, 0));
  EXPECT_TRUE(cat({cl_copy(a), cl_copy(a)}, 0).shape() == (Shape{4, 3, 4, 5}));
  EXPECT_TRUE(test::all_close(cat({cl_copy(a), cl_copy(a)}, 0), cat({a, a}, 0), 0, 0));
  EXPECT_TRUE(cat({cl_copy(a), b}, 1).is_contiguous());  // mixed layouts: NCHW as before
}

TEST(ChannelsLast, ConversionsAreCountedAndDifferentiable) {
  Tensor x = test::random_tensor({1, 3, 4, 4}, DType::F64, 9);
  x.set_requires_grad(true);
  const int64_t before = layout_conversions();
  Tensor y = to_channels_last(x);
  EXPECT_TRUE(prefers_channels_last(y));
  EXPECT_TRUE(to_channels_last(y).same(y));  // no copy when it is one already
  Tensor back = contiguous(y * 2.0);
  EXPECT_EQ(layout_conversions() - before, 2);
  autograd::backward(sum_all(back));
  EXPECT_TRUE(test::all_close(x.grad(), full({1, 3, 4, 4}, 2.0, DType::F64), 0, 0));
  // Copies that are not conversions (same layout, or a strided slice) are not counted.
  const int64_t mid = layout_conversions();
  copy_to(y, DType::F64, Device::cpu());  // channels-last -> contiguous: counted
  copy_(empty_image(y.shape(), DType::F64, Device::cpu(), true), y);
  copy_(empty({1, 3, 4, 2}, DType::F64), narrow(y, 3, 0, 2));  // columns of a channels-last image: not dense
  EXPECT_EQ(layout_conversions() - mid, 1);
}

// Training after set_channels_last: a weight's gradient comes back channels-last; AdamW reads it
// through a contiguous copy, so the step equals the contiguous one. The f32 masters stay
// contiguous (the trainer's own buffers); a channels-last master is refused, naming the slot.
TEST(ChannelsLast, AdamWStepWithChannelsLastGradients) {
  const Tensor w = test::random_tensor({8, 5, 3, 3}, DType::F32, 11), g = test::random_tensor({8, 5, 3, 3}, DType::F32, 12);
  auto step = [&](bool channels_last_grad) {
    AdamWSlot s;
    s.master = copy_to(w, DType::F32, Device::cpu());
    s.grad = channels_last_grad ? cl_copy(g) : copy_to(g, DType::F32, Device::cpu());
    s.exp_avg = zeros(w.shape());
    s.exp_avg_sq = zeros(w.shape());
    std::vector<AdamWSlot> slots{s};
    fused_adamw_(slots, AdamWConfig{}, 1);
    return s.master;
  };
  const Tensor nchw = step(false), cl = step(true);
  EXPECT_FALSE(test::all_close(nchw, w, 0, 0));  // the step did move the weights
  EXPECT_TRUE(test::all_close(cl, nchw, 0, 0));
  std::vector<AdamWSlot> bad{AdamWSlot{cl_copy(w), cl_copy(g), zeros(w.shape()), zeros(w.shape()), Tensor()}};
  try {
    fused_adamw_(bad, AdamWConfig{}, 1);
    ADD_FAILURE() << "a channels-last master was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot 0: master must be contiguous"), std::string::npos) << e.what();
  }
}

// The golden UNets run channels-last give diffusers' numbers, and the same numbers as NCHW.
TEST(ChannelsLast, UNetGoldensInBothLayouts) {
  for (const auto& c : test::unet_golden_cases()) {
    const auto io = test::unet_golden_io(c.name);
    auto m = nn::UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F32, Device::cpu(), c.variant);
    // In NCHW the only conversions are the ones channels-last removes: each Transformer2DModel with
    // a 1x1-conv proj_out hands it a permuted [B, C, H, W] view, which the convolution copies. The
    // layout rules add none (an NCHW operand keeps a result NCHW).
    int conv_projections = 0;
    for (auto& [name, mod] : m->named_modules())
      if (auto* t = dynamic_cast<nn::Transformer2DModel*>(mod)) conv_projections += t->proj_out_conv != nullptr;
    const int64_t before = layout_conversions();
    const Tensor nchw = test::run_unet_golden(*m, io);
    EXPECT_EQ(layout_conversions() - before, conv_projections) << c.name;
    m->set_channels_last(true);
    int cl_weights = 0;
    for (auto& [name, p] : m->named_parameters()) cl_weights += prefers_channels_last(*p->slot);
    EXPECT_GT(cl_weights, 0) << c.name;
    const Tensor cl = test::run_unet_golden(*m, io);
    EXPECT_TRUE(cl.is_contiguous()) << c.name;
    const double err_golden = test::relative_error(cl, io.at("out")), err_nchw = test::relative_error(cl, nchw);
    EXPECT_LE(err_golden, 1e-4) << c.name;
    EXPECT_LE(err_nchw, 1e-6) << c.name;
    std::printf("[ ChannelsLast ] unet %s: vs diffusers %.2e, vs NCHW %.2e\n", c.name.c_str(), err_golden, err_nchw);
    // Back to NCHW: contiguous weights with the same values.
    m->set_channels_last(false);
    for (auto& [name, p] : m->named_parameters()) EXPECT_TRUE(p->slot->is_contiguous()) << name;
    EXPECT_TRUE(test::all_close(test::run_unet_golden(*m, io), nchw, 0, 0)) << c.name;
  }
}

// Training through a channels-last UNet: gradients of the sample, the context and every
// parameter equal the NCHW run's (f64, the tiny golden SD1-like model).
TEST(ChannelsLast, UNetGradientsInBothLayouts) {
  const auto& c = test::unet_golden_cases()[0];
  const auto io = test::unet_golden_io(c.name);
  auto m = nn::UNet2DConditionModel::from_pretrained(test::unet_golden_dir(c.name), DType::F64, Device::cpu(), c.variant);
  m->set_requires_grad(true);
  auto grads = [&](bool channels_last) {
    m->set_channels_last(channels_last);
    for (auto& [k, p] : m->named_parameters()) p->slot->zero_grad();
    Tensor sample = copy_to(io.at("sample"), DType::F64, Device::cpu()), ehs = copy_to(io.at("encoder_hidden_states"), DType::F64, Device::cpu());
    sample.set_requires_grad(true);
    ehs.set_requires_grad(true);
    const Tensor& t = io.at("timestep");
    Tensor out = t.numel() == 1 ? m->forward(sample, t.item(), ehs) : m->forward(sample, t, ehs);
    autograd::backward(out, copy_to(io.at("grad_weight"), DType::F64, Device::cpu()));
    std::map<std::string, Tensor> g{{"sample", sample.grad()}, {"context", ehs.grad()}};
    for (auto& [k, p] : m->named_parameters()) g[k] = contiguous_raw(p->slot->grad());
    return g;
  };
  const auto nchw = grads(false), cl = grads(true);
  ASSERT_EQ(nchw.size(), cl.size());
  double worst = 0;
  for (const auto& [k, g] : nchw) {
    ASSERT_TRUE(g.defined() && cl.at(k).defined()) << k;
    const double e = test::relative_error(cl.at(k), g);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-12) << k;
  }
  std::printf("[ ChannelsLast ] unet %s gradients (%zu tensors): worst relative difference %.2e\n", c.name.c_str(),
              nchw.size(), worst);
}

TEST(ChannelsLast, VaeGoldenInBothLayouts) {
  const auto io = test::vae_golden_io();
  auto m = nn::AutoencoderKL::from_pretrained(test::vae_golden_dir(), DType::F32);
  const auto nchw = test::run_vae_golden(*m, io);
  m->set_channels_last(true);
  EXPECT_TRUE(m->channels_last());
  const auto cl = test::run_vae_golden(*m, io);
  for (const auto& [name, got] : cl) {
    const double e = test::relative_error(got, io.at(name)), en = test::relative_error(got, nchw.at(name));
    EXPECT_LE(e, 1e-4) << name;
    EXPECT_LE(en, 1e-6) << name;
    std::printf("[ ChannelsLast ] vae %-12s vs diffusers %.2e, vs NCHW %.2e\n", name.c_str(), e, en);
  }
}

}  // namespace
}  // namespace sd
