// Whole pipelines against diffusers 0.42 (tests/golden/make_pipeline_goldens.py): the tiny
// pipelines in tests/data/pipe_tiny_*, run from the same starting latents (and, for img2img and
// LCM, the same noise draws in the same order), must give diffusers' final latents and decoded
// images (before clamping and quantisation).
//
// Tolerance: relative error of the whole tensor (||a - e|| / ||e||) <= 2e-5 for the latents and the
// images. Everything runs in float32 on both sides; each UNet evaluation agrees with diffusers to
// ~1e-6 (tests/models/unet/unet_test.cpp), the schedulers' trajectories to ~1e-6 (scheduler goldens),
// and 4-10 steps of CFG amplify this (guidance 5-7.5 multiplies the difference of the two UNet
// halves): the measured errors are 3e-7 .. 2.5e-6 (printed by the test), so 2e-5 leaves a margin of
// ~7x while a wrong step (timestep, scaling, sign, order of CFG halves, time ids, skipped layer)
// gives errors of 1e-2 and more.
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "infer/image_io.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

using json = nlohmann::json;

const std::string kData = SD_TEST_DATA_DIR;
constexpr double kTol = 2e-5;

struct Goldens {
  json meta;
  SafetensorsFile file;
};

const Goldens& goldens() {
  static const Goldens g = [] {
    std::ifstream in(kData + "/pipelines/cases.json");
    EXPECT_TRUE(in.good()) << "missing " << kData << "/pipelines/cases.json";
    return Goldens{json::parse(in), SafetensorsFile::open(kData + "/pipelines/goldens.safetensors")};
  }();
  return g;
}

const Pipeline& pipeline(const std::string& name) {
  static std::map<std::string, std::shared_ptr<Pipeline>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, Pipeline::load(kData + "/pipe_tiny_" + name)).first;
  return *it->second;
}

const json& find_case(const std::string& name) {
  for (const json& c : goldens().meta["cases"])
    if (c["name"] == name) return c;
  throw std::runtime_error("no golden case " + name);
}

GenerateRequest request_of(const json& c) {
  GenerateRequest r;
  r.prompt = goldens().meta["prompt"].get<std::string>();
  if (c.contains("negative_prompt") && !c["negative_prompt"].is_null())
    r.negative_prompt = c["negative_prompt"].get<std::string>();
  r.steps = c["steps"];
  r.guidance_scale = c["guidance_scale"].get<double>();
  r.guidance_rescale = c.value("guidance_rescale", 0.0);
  r.prompt_options.clip_skip = c.value("clip_skip", 0);
  r.num_images = c.value("num_images", 1);
  r.scheduler = c["scheduler"].is_null() ? "" : c["scheduler"].get<std::string>();
  auto size = [&](const char* key) -> std::optional<SizeHW> {
    if (!c.contains(key)) return std::nullopt;
    return SizeHW{c[key][0].get<int64_t>(), c[key][1].get<int64_t>()};
  };
  r.original_size = size("original_size");
  r.target_size = size("target_size");
  if (auto crop = size("crops_coords_top_left")) r.crops_coords_top_left = *crop;
  if (c.contains("init_image")) {
    r.init_image = load_image(kData + "/pipelines/" + c["init_image"].get<std::string>());
    r.strength = c["strength"];
  } else {
    r.height = c["height"];
    r.width = c["width"];
  }
  if (c.contains("high_noise_frac")) r.denoising_end = c["high_noise_frac"];
  return r;
}

void check_case(const std::string& name) {
  const json& c = find_case(name);
  const SafetensorsFile& f = goldens().file;
  GenerateRequest r = request_of(c);
  if (f.contains(name + ".latents")) r.latents = f.get(name + ".latents");
  std::vector<Tensor> draws;
  for (int i = 0; f.contains(name + ".noise." + std::to_string(i)); ++i) draws.push_back(f.get(name + ".noise." + std::to_string(i)));
  TableNoise noise(draws);
  const Pipeline* refiner = c.contains("refiner") ? &pipeline(c["refiner"].get<std::string>()) : nullptr;
  const GenerateResult res = generate(pipeline(c["pipe"].get<std::string>()), r, noise, refiner);
  EXPECT_EQ(noise.used(), draws.size()) << name << ": diffusers drew " << draws.size() << " noise tensors";
  const Tensor want_latents = f.get(name + ".out_latents"), want_image = f.get(name + ".image");
  ASSERT_EQ(res.latents.shape(), want_latents.shape()) << name;
  ASSERT_EQ(res.images.shape(), want_image.shape()) << name;
  const double el = test::relative_error(res.latents, want_latents), ei = test::relative_error(res.images, want_image);
  std::cout << "[ golden   ] " << name << ": latents rel err " << el << ", image rel err " << ei << " ("
            << res.steps_run << " steps)\n";
  EXPECT_LE(el, kTol) << name << " latents";
  EXPECT_LE(ei, kTol) << name << " image";
}

TEST(GoldenPipeline, Sd1Ddim) { check_case("sd1_ddim"); }
TEST(GoldenPipeline, Sd1EulerGuidanceRescale) { check_case("sd1_euler"); }
TEST(GoldenPipeline, Sd1DpmppKarrasClipSkip) { check_case("sd1_dpmpp_2m_karras"); }
TEST(GoldenPipeline, Sd1Pndm) { check_case("sd1_pndm"); }
TEST(GoldenPipeline, Sd1Img2Img) { check_case("sd1_img2img"); }
TEST(GoldenPipeline, Sd2VPredictionEuler) { check_case("sd2_euler"); }
TEST(GoldenPipeline, Sd2VPredictionDdim) { check_case("sd2_ddim"); }
TEST(GoldenPipeline, SdxlEulerZeroNegative) { check_case("sdxl_euler"); }
TEST(GoldenPipeline, SdxlDpmppMicroConditioning) { check_case("sdxl_dpmpp_2m"); }
TEST(GoldenPipeline, SdxlBaseRefiner) { check_case("sdxl_refiner"); }
TEST(GoldenPipeline, Lcm4Steps) { check_case("lcm_4"); }

}  // namespace
}  // namespace sd::infer
