// The tiny pipelines on the GPU against the same pipelines on the CPU: txt2img with CFG (SD1,
// Euler), SDXL (time ids, pooled embeddings), img2img (VAE encode + add_noise), in f32 and bf16.
// Same noise on both sides (Philox draws on the CPU, copied to the device).
#include <gtest/gtest.h>

#include <cstdio>

#include "infer/generate.h"
#include "infer/image_io.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

const std::string kData = SD_TEST_DATA_DIR;

GenerateResult run(const std::string& name, DType dt, Device d, const GenerateRequest& r) {
  PipelineOptions o;
  o.dtype = dt;
  o.device = d;
  const auto p = Pipeline::load(kData + "/pipe_tiny_" + name, o);
  PhiloxNoise noise(17);
  return generate(*p, r, noise);
}

TEST(CudaPipeline, TinyPipelinesMatchTheCpu) {
  SD_REQUIRE_CUDA();
  struct Case {
    const char* pipe;
    const char* scheduler;
    bool img2img;
  };
  for (const Case& c : {Case{"sd1", "euler", false}, Case{"sdxl", "dpm++2m", false}, Case{"sd1", "ddim", true},
                        Case{"lcm", "", false}}) {
    GenerateRequest r;
    r.prompt = "a red cartoon cat";
    r.negative_prompt = "blurry";
    r.steps = 4;
    r.scheduler = c.scheduler;
    r.num_images = 2;
    if (c.img2img) {
      r.init_image = load_image(kData + "/pipelines/init.png");
      r.strength = 0.6;
    } else {
      r.width = 48;
      r.height = 32;
    }
    const GenerateResult ref = run(c.pipe, DType::F32, Device::cpu(), r);
    for (DType dt : {DType::F32, DType::BF16}) {
      const GenerateResult got = run(c.pipe, dt, Device::cuda(), r);
      const double err = test::relative_error(got.images, ref.images);
      std::printf("[ CudaPipeline ] %s %s%s %s: image relative error vs CPU f32 %.2e\n", c.pipe, c.scheduler,
                  c.img2img ? " img2img" : "", dtype_name(dt), err);
      EXPECT_LE(err, dt == DType::F32 ? 1e-4 : 5e-2) << c.pipe << " " << c.scheduler << " " << dtype_name(dt);
    }
  }
}

}  // namespace
}  // namespace sd::infer
