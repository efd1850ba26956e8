// Textual inversion learns: the denoising loss of the instance images conditioned on "a photo of a <tok>",
// measured on a fixed set of noise draws and timesteps (the same before and after), falls after a short
// training of the new embedding alone; the rest of the text encoder's table does not move.
#include <gtest/gtest.h>

#include <cstdio>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "infer/pipeline.h"
#include "ops/concat.h"
#include "ops/optim.h"
#include "ops/view.h"
#include "train/dataset.h"
#include "train/image_transforms.h"
#include "train/optimizer.h"
#include "train/training_model.h"

namespace sd::train {
namespace {

TEST(TextualInversionLearning, TheLearnedTokenExplainsTheInstanceImagesBetter) {
  infer::PipelineOptions po;
  po.vae_upcast = true;
  auto pipe = infer::Pipeline::load(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1", po);
  TrainingModelOptions o;
  o.method = TrainMethod::TextualInversion;
  o.ti = {"<shape>", "a", 2};
  TrainingModel m(pipe, o);

  // The instance images (the red circle, the blue square ...) as latents: posterior means, fixed.
  const TrainDataset data = TrainDataset::from_image_folder(std::string(SD_TEST_DATA_DIR) + "/train_tiny_txt", "");
  std::vector<Tensor> px;
  for (int64_t i = 0; i < data.size(); ++i)
    px.push_back(unsqueeze(transform_for_textual_inversion(data.decode(i), 32, true, Interpolation::Bicubic, 1, 0).pixels, 0));
  const auto [mean, logvar] = m.encode_posterior(cat(px, 0));
  const Tensor latents = m.sample_latents(mean, logvar, zeros_like(mean));
  const int64_t B = latents.size(0);
  const std::vector<std::string> captions(size_t(B), "a photo of a " + m.placeholder_text());
  const TokenIds ids = m.tokenize(captions);

  // 8 fixed (noise, timestep) draws per image for the measurement; other draws for training.
  ObjectiveConfig cfg = m.objective();
  auto eval = [&] {
    autograd::NoGrad ng;
    double total = 0;
    for (uint64_t k = 0; k < 8; ++k) {
      std::vector<int64_t> slots;
      for (int64_t b = 0; b < B; ++b) slots.push_back(b);
      MicroBatch mb;
      mb.latents = latents;
      mb.tokens = ids;
      total += m.loss(mb, draw_noise(cfg, latents.shape(), 12345, k, slots)).item();
    }
    return total / 8;
  };
  const double before = eval();
  const TrainingModel::NewTokens& nt = m.new_tokens()[0];
  const Tensor table_before = copy_to(nt.master, DType::F32, Device::cpu());

  AdamWConfig ac;
  ac.lr = 5e-2;
  AdamWOptimizer opt(m.trainable(), ac);
  for (uint64_t step = 0; step < 40; ++step) {
    std::vector<int64_t> slots;
    for (int64_t b = 0; b < B; ++b) slots.push_back(b);
    MicroBatch mb;
    mb.latents = latents;
    mb.tokens = ids;
    autograd::backward(m.loss(mb, draw_noise(cfg, latents.shape(), 7, step, slots)));
    opt.collect_grads();
    opt.step({ac.lr, ac.lr}, 1.0);
    m.after_optimizer_step();
    opt.zero_grad();
  }
  const double after = eval();
  std::printf("[ TextualInversionLearning ] denoising loss of the instance images with \"a photo of a <shape>\": "
              "%.5f before, %.5f after 40 steps (%.1f%% lower)\n", before, after, 100 * (before - after) / before);
  EXPECT_LT(after, before * 0.98);
  // Only the new rows moved.
  const std::vector<double> a = table_before.to_vector(), b = nt.master.to_vector();
  const int64_t D = nt.master.size(1);
  for (int64_t i = 0; i < nt.first * D; ++i) ASSERT_EQ(a[size_t(i)], b[size_t(i)]) << "row " << i / D << " moved";
}

}  // namespace
}  // namespace sd::train
