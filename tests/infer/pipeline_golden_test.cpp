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

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "infer/generate.h"
#include "infer/image_io.h"
#include "models/formats/single_file.h"
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

// Runs the case on its own pipeline, or on `pipe` (the same model loaded another way).
GenerateResult run_case(const std::string& name, const Pipeline* pipe = nullptr) {
  const json& c = find_case(name);
  const SafetensorsFile& f = goldens().file;
  GenerateRequest r = request_of(c);
  if (f.contains(name + ".latents")) r.latents = f.get(name + ".latents");
  std::vector<Tensor> draws;
  for (int i = 0; f.contains(name + ".noise." + std::to_string(i)); ++i) draws.push_back(f.get(name + ".noise." + std::to_string(i)));
  TableNoise noise(draws);
  const Pipeline* refiner = c.contains("refiner") ? &pipeline(c["refiner"].get<std::string>()) : nullptr;
  GenerateResult res = generate(pipe ? *pipe : pipeline(c["pipe"].get<std::string>()), r, noise, refiner);
  EXPECT_EQ(noise.used(), draws.size()) << name << ": diffusers drew " << draws.size() << " noise tensors";
  return res;
}

void check_case(const std::string& name, const Pipeline* pipe = nullptr) {
  const GenerateResult res = run_case(name, pipe);
  const SafetensorsFile& f = goldens().file;
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

// A single file of a model whose settings differ from its family's and are not recorded by the
// weights (the tiny SD1 pipeline: 8 GroupNorm groups, 4 text-encoder heads), as diffusers'
// from_single_file(config=DIR): with the folder's configs it computes diffusers' golden; with the SD1
// preset alone it is refused, naming the preset and what to give.
class GoldenSingleFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("sd_single_file_config_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    file_ = (dir_ / "tiny_sd1.safetensors").string();
    nn::diffusers_folder_to_single_file(kData + "/pipe_tiny_sd1", file_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string file_;
};

TEST_F(GoldenSingleFile, ModelConfigFolderGivesDiffusersResult) {
  PipelineOptions o;
  o.model_config = kData + "/pipe_tiny_sd1";
  const auto p = Pipeline::load(file_, o);
  EXPECT_TRUE(p->assumed_settings.empty());
  check_case("sd1_ddim", p.get());

  // The preset alone: 32 GroupNorm groups cannot split 16 channels.
  const std::string e = test::error_of([&] { Pipeline::load(file_); });
  EXPECT_NE(e.find("(unet): the weights do not fit the architecture of the sd1 preset"), std::string::npos) << e;
  EXPECT_NE(e.find("--model_config DIR"), std::string::npos) << e;

  // A folder instead of a single file, or a model config without configs: clear errors.
  EXPECT_NE(test::error_of([&] { Pipeline::load(kData + "/pipe_tiny_sd1", o); }).find("has its own configs"),
            std::string::npos);
  PipelineOptions empty;
  empty.model_config = dir_.string();
  EXPECT_NE(test::error_of([&] { Pipeline::load(file_, empty); }).find("holds none of unet/config.json"),
            std::string::npos);
}

// Shapes that fit with a hidden setting that differs: the text encoder from the preset (one 32-wide
// head where the model has four) loads and runs, the image is wrong, and the assumed settings say so.
TEST_F(GoldenSingleFile, PresetSettingsTheWeightsDoNotRecordAreReported) {
  namespace fs = std::filesystem;
  const fs::path partial = dir_ / "partial";
  fs::create_directories(partial);
  for (const char* c : {"unet", "vae", "tokenizer"}) fs::copy(kData + "/pipe_tiny_sd1/" + c, partial / c, fs::copy_options::recursive);
  PipelineOptions o;
  o.model_config = partial.string();
  const auto p = Pipeline::load(file_, o);
  ASSERT_EQ(p->assumed_settings.size(), 2u);
  EXPECT_EQ(p->assumed_settings[0].rfind("text_encoder (sd1 preset): num_attention_heads 1, hidden_act quick_gelu", 0), 0u)
      << p->assumed_settings[0];
  EXPECT_EQ(p->assumed_settings[1].rfind("scheduler (sd1 preset): _class_name PNDMScheduler", 0), 0u)
      << p->assumed_settings[1];
  const GenerateResult res = run_case("sd1_ddim", p.get());
  const double err = test::relative_error(res.images, goldens().file.get("sd1_ddim.image"));
  std::cout << "[ golden   ] the preset's text encoder: image rel err " << err << "\n";
  EXPECT_GT(err, 1e-2) << "a wrong head count should change the image";
}

}  // namespace
}  // namespace sd::infer
