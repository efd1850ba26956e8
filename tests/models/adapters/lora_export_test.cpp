// LoRA files converted between layouts (sd_convert --lora, models/adapters/lora_export.h): kohya ->
// diffusers -> kohya gives back the same tensors bit for bit (names, dtypes, alphas), PEFT -> kohya ->
// PEFT the same values, SDXL kohya names use the sgm paths; and sd_convert --merge_lora writes a model
// whose UNet and text encoder compute what the base model with the LoRA on the fly computes.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "infer/pipeline.h"
#include "models/adapters/lora.h"
#include "models/adapters/lora_export.h"
#include "runtime/safetensors.h"
#include "tests/models/adapters/lora_fixtures.h"
#include "tests/test_util.h"

namespace sd::nn {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

class LoraExport : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_lora_export_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Loads `file` onto the tiny models the LoRA fixtures are for and writes it in `format`.
  std::string convert(const std::string& model, const std::string& file, LoraFormat format, const std::string& out) {
    const test::LoraModels m = test::load_lora_models(model);
    LoraOptions lo;
    lo.strict = true;
    LoadedLora l = load_lora(file, m.targets(), lo);
    LoraExportOptions eo;
    eo.format = format;
    eo.sdxl = model == "sdxl";
    eo.unet = m.unet.get();
    const std::string path = (dir_ / out).string();
    save_lora(path, l, eo);
    return path;
  }

  static void expect_same_tensors(const std::string& a, const std::string& b, bool same_names = true) {
    const SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
    if (same_names) ASSERT_EQ(fa.keys(), fb.keys());
    ASSERT_EQ(fa.size(), fb.size());
    if (!same_names) return;
    for (const std::string& k : fa.keys()) {
      EXPECT_EQ(fa.info(k).dtype_str, fb.info(k).dtype_str) << k;
      EXPECT_EQ(fa.info(k).shape, fb.info(k).shape) << k;
      EXPECT_EQ(fa.get(k).to_vector(), fb.get(k).to_vector()) << k;
    }
  }
  fs::path dir_;
};

TEST_F(LoraExport, KohyaToDiffusersAndBackIsBitExact) {
  for (const std::string model : {"sd1", "sdxl"}) {
    const std::string src = kData + "/lora/" + model + "_kohya.safetensors";
    const std::string d = convert(model, src, LoraFormat::Diffusers, model + "_d.safetensors");
    const std::string k = convert(model, d, LoraFormat::Kohya, model + "_k.safetensors");
    expect_same_tensors(src, k);
  }
}

TEST_F(LoraExport, PeftToKohyaAndBackKeepsEveryTensorAndScale) {
  for (const std::string model : {"sd1", "sdxl"}) {
    const std::string src = kData + "/lora/" + model + "_peft.safetensors";
    const std::string k = convert(model, src, LoraFormat::Kohya, model + "_k.safetensors");
    const std::string d = convert(model, k, LoraFormat::Diffusers, model + "_d.safetensors");
    // The same outputs as the original file (the scales, rsLoRA and alpha patterns included), bit for bit.
    test::LoraModels ref = test::load_lora_models(model);
    LoadedLora a = load_lora(src, ref.targets());
    const test::LoraOutputs want = test::run_lora_models(ref);
    for (const std::string& f : {k, d}) {
      test::LoraModels m = test::load_lora_models(model);
      LoadedLora b = load_lora(f, m.targets());
      const test::LoraOutputs got = test::run_lora_models(m);
      EXPECT_EQ(got.unet.to_vector(), want.unet.to_vector()) << f;
      EXPECT_EQ(got.te.to_vector(), want.te.to_vector()) << f;
      if (model == "sdxl") EXPECT_EQ(got.te2_embeds.to_vector(), want.te2_embeds.to_vector()) << f;
    }
  }
  // SDXL kohya files name the UNet by its sgm paths, as kohya's SDXL trainer does.
  const SafetensorsFile k = SafetensorsFile::open((dir_ / "sdxl_k.safetensors").string());
  bool sgm = false;
  for (const std::string& key : k.keys()) sgm = sgm || key.rfind("lora_unet_input_blocks_", 0) == 0;
  EXPECT_TRUE(sgm);
}

TEST_F(LoraExport, SdConvertMergesALoraIntoAModel) {
  const std::string bin = std::string(SD_BINARY_DIR) + "/tools/sd_convert";
  const std::string lora = kData + "/lora/sd1_kohya.safetensors";
  const std::string out = (dir_ / "merged").string();
  const std::string cmd = bin + " --from " + kData + "/pipe_tiny_sd1 --merge_lora " + lora + ":0.7 --to " + out +
                          " > " + (dir_ / "log").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  infer::PipelineOptions po;
  auto merged = infer::Pipeline::load(out, po);
  auto base = infer::Pipeline::load(kData + "/pipe_tiny_sd1", po);
  LoraOptions lo;
  lo.multiplier = 0.7;
  LoadedLora l = load_lora(lora, {base->unet.get(), base->text_encoder.get(), nullptr}, lo);
  const Tensor x = test::random_tensor({1, 4, 8, 8}, DType::F32, 3);
  const Tensor ctx = test::random_tensor({1, 5, base->unet->config().cross_attention_dim[0]}, DType::F32, 4);
  const double unet_err = test::relative_error(merged->unet->forward(x, 321.0, ctx), base->unet->forward(x, 321.0, ctx));
  const Tensor ids = from_vector({998, 320, 500, 999, 999}, {1, 5}, DType::I64);
  const double te_err = test::relative_error(merged->text_encoder->forward(ids), base->text_encoder->forward(ids));
  std::printf("[ LoraExport ] merged model vs LoRA on the fly: UNet rel err %.2e, text encoder %.2e\n", unet_err, te_err);
  EXPECT_LT(unet_err, 1e-5);
  EXPECT_LT(te_err, 1e-5);
  // And into a single file.
  const std::string file = (dir_ / "merged.safetensors").string();
  const std::string cmd2 = bin + " --from " + kData + "/pipe_tiny_sd1 --merge_lora " + lora + " --to " + file +
                           " --save_precision fp16 > " + (dir_ / "log2").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd2.c_str()), 0);
  const SafetensorsFile f = SafetensorsFile::open(file);
  EXPECT_TRUE(f.contains("model.diffusion_model.input_blocks.0.0.weight"));
  EXPECT_EQ(f.info("model.diffusion_model.input_blocks.0.0.weight").dtype_str, "F16");
}

}  // namespace
}  // namespace sd::nn
