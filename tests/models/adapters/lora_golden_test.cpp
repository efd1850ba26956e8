// LoRA files applied to the tiny SD1 / SDXL models against diffusers + PEFT with the same files loaded
// (tests/golden/make_lora_goldens.py): UNet at scale 0.7, text encoders at 1.0; both the diffusers
// (PEFT, with lora_adapter_metadata patterns and rsLoRA) and the kohya file (SDXL: sgm UNet names),
// on the fly and merged. f32, relative error of the whole output <= 1e-4 (the references are float64
// runs of the same float16 values), and the LoRA must move every output by more than 1e-2.
#include <gtest/gtest.h>

#include <cstdio>

#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

constexpr double kTol = 1e-4;
constexpr double kMinEffect = 1e-2;

void check(const std::string& model, const std::string& format, LoraMode mode) {
  test::LoraModels m = test::load_lora_models(model);
  const auto io = test::lora_golden_io(model);
  LoraOptions opt;
  opt.multiplier = 0.7;
  opt.text_encoder_multiplier = 1.0;
  opt.mode = mode;
  LoadedLora lora = load_lora(test::lora_file(model + "_" + format + ".safetensors"), m.targets(), opt);
  const LoraReport& r = lora.report();
  EXPECT_TRUE(r.unmatched.empty()) << r.str();
  EXPECT_EQ(r.format, format == "kohya" ? LoraFormat::Kohya : LoraFormat::Diffusers);
  EXPECT_EQ(r.applied.at("unet"), model == "sd1" ? 79 : 119) << r.str();
  EXPECT_EQ(r.applied.at("text_encoder"), 12) << r.str();
  if (model == "sdxl") EXPECT_EQ(r.applied.at("text_encoder_2"), 12) << r.str();

  const test::LoraOutputs out = test::run_lora_models(m);
  auto expect = [&](const char* what, const Tensor& actual) {
    const Tensor ref = io.at(std::string(what) + "_lora"), base = io.at(std::string(what) + "_base");
    ASSERT_EQ(actual.shape(), ref.shape()) << what;
    const double err = test::relative_error(actual, ref), effect = test::relative_error(actual, base);
    std::printf("[ GoldenLora ] %-4s %-5s %-9s %-10s rel err %.2e (LoRA effect %.3f)\n", model.c_str(),
                format.c_str(), mode == LoraMode::Merge ? "merged" : "on-the-fly", what, err, effect);
    EXPECT_LE(err, kTol) << model << " " << format << " " << what;
    EXPECT_GT(effect, kMinEffect) << model << " " << format << " " << what;
  };
  expect("unet", out.unet);
  expect("te", out.te);
  if (model == "sdxl") {
    expect("te2", out.te2);
    expect("te2_embeds", out.te2_embeds);
  }
}

TEST(GoldenLora, Sd1DiffusersPeftOnTheFly) { check("sd1", "peft", LoraMode::OnTheFly); }
TEST(GoldenLora, Sd1KohyaOnTheFly) { check("sd1", "kohya", LoraMode::OnTheFly); }
TEST(GoldenLora, Sd1DiffusersPeftMerged) { check("sd1", "peft", LoraMode::Merge); }
TEST(GoldenLora, Sd1KohyaMerged) { check("sd1", "kohya", LoraMode::Merge); }
TEST(GoldenLora, SdxlDiffusersPeftRsLoraOnTheFly) { check("sdxl", "peft", LoraMode::OnTheFly); }
TEST(GoldenLora, SdxlKohyaSgmNamesOnTheFly) { check("sdxl", "kohya", LoraMode::OnTheFly); }
TEST(GoldenLora, SdxlDiffusersPeftRsLoraMerged) { check("sdxl", "peft", LoraMode::Merge); }
TEST(GoldenLora, SdxlKohyaSgmNamesMerged) { check("sdxl", "kohya", LoraMode::Merge); }

// An early-diffusers torch pickle (attention-processor and lora_linear_layer names, no alphas) for the
// SD1 text encoder: read without Python, same output as diffusers gives for it.
TEST(GoldenLora, Sd1OldDiffusersTextEncoderBin) {
  auto te = ClipTextModel::from_pretrained(std::string(SD_TEST_DATA_DIR) + "/clip_tiny_l");
  LoraTargets t;
  t.text_encoder = te.get();
  LoadedLora lora = load_lora(test::lora_file("sd1_te_old.bin"), t);
  EXPECT_EQ(lora.report().applied.at("text_encoder"), 12) << lora.report().str();
  EXPECT_TRUE(lora.report().unmatched.empty()) << lora.report().str();
  const auto io = test::lora_golden_io("sd1");
  const double err = test::relative_error(te->forward(test::clip_golden_ids("l")), io.at("te_lora_old_bin"));
  std::printf("[ GoldenLora ] sd1 old .bin text encoder rel err %.2e\n", err);
  EXPECT_LE(err, kTol);
}

}  // namespace
}  // namespace sd::nn
