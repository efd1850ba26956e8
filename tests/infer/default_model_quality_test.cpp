// The built-in model draws what it is asked for: a fixed set of captions (drawn from the shapes
// dataset's own distribution, with a seed the training set does not use) and fixed seeds go through
// the full pipeline exactly as `sd_infer --prompt ...` runs it (tokenizer, text encoder, UNet, the
// model's scheduler, VAE), and the shapes classifier (train/shapes_dataset.h) reads each image back.
// The accuracies measured when the model was trained are in infer/default_model/README.md; the
// thresholds below sit under them with a margin, so a broken pipeline, a wrong weight or a damaged
// model folder fails here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "infer/generate.h"
#include "infer/noise.h"
#include "infer/pipeline.h"
#include "ops/view.h"
#include "train/shapes_dataset.h"

namespace sd::infer {
namespace {

// [3, H, W] f32 in [-1, 1] -> [H, W, 3] u8, as images are saved ((x / 2 + 0.5) clamped, x 255, rounded).
Tensor to_hwc_u8(const Tensor& chw) {
  const Tensor c = contiguous(chw);
  const int64_t H = c.size(1), W = c.size(2);
  Tensor out = empty({H, W, 3}, DType::U8);
  const float* src = c.data<float>();
  uint8_t* dst = out.data<uint8_t>();
  for (int64_t ch = 0; ch < 3; ++ch)
    for (int64_t i = 0; i < H * W; ++i) {
      const double v = std::clamp(src[ch * H * W + i] / 2.0 + 0.5, 0.0, 1.0);
      dst[i * 3 + ch] = uint8_t(std::lround(v * 255.0));
    }
  return out;
}

// Measured when the model was shipped (this set, these seeds): shape 30.0%, colour 83.3%, background
// 100%, position 33.3%, size 93.3% (chance: 17%, 12.5%, 12.5%, 20%, 50%). Thresholds: those less a
// margin of three to five images in 60, for builds whose float rounding flips a borderline image.
constexpr double kMinColor = 75, kMinBackground = 95, kMinShape = 23, kMinPosition = 25, kMinSize = 85;

TEST(DefaultModel, DrawsTheShapeColourBackgroundAndPositionItIsAskedFor) {
  const std::string dir = default_model_dir();
  ASSERT_TRUE(std::filesystem::exists(std::filesystem::path(dir) / "model_index.json")) << dir;
  auto pipe = Pipeline::load(dir, PipelineOptions{});

  // 60 captions as the dataset writes them; seed 20261206 is not the training set's (1).
  constexpr int kImages = 60;
  train::ShapeAccuracy acc;
  for (int i = 0; i < kImages; ++i) {
    const train::ShapeScene scene = train::shape_scene(20261206, uint64_t(i));
    GenerateRequest req;
    req.prompt = train::shape_caption(scene.attr);
    std::unique_ptr<NoiseStream> noise = make_noise_stream("philox", uint64_t(1000 + i));
    const GenerateResult res = generate(*pipe, req, *noise);
    ASSERT_EQ(res.images.size(2), 64);
    const train::ShapeEstimate est = train::classify_shape_image(to_hwc_u8(select(res.images, 0, 0)));
    acc.add(scene.attr, est);
  }
  std::printf("[ DefaultModel ] %s\n", acc.summary().c_str());
  auto pct = [&](int64_t n) { return 100.0 * double(n) / double(acc.images); };
  EXPECT_GE(pct(acc.color), kMinColor);
  EXPECT_GE(pct(acc.background), kMinBackground);
  EXPECT_GE(pct(acc.shape), kMinShape);
  EXPECT_GE(pct(acc.position), kMinPosition);
  EXPECT_GE(pct(acc.size), kMinSize);
}

}  // namespace
}  // namespace sd::infer
