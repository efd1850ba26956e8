// Single-file checkpoints through the pipeline: a small random SD1-layout model (sizes the
// family presets of models/formats/diffusers_configs.h can describe: 32 norm groups, 8 UNet heads, 12
// CLIP heads) saved as one original-layout .safetensors, then
//   (a) loaded directly (Pipeline::load on the file: family detection, configs from the presets,
//       tokenizer from --tokenizer, scheduler preset), and
//   (b) converted to a diffusers folder (single_file_to_diffusers_folder) and loaded from there;
// both must generate the same image bit for bit, and the file's metadata (family, class, pad
// tokens, model hash = SHA-256 of the file) must be what sd_infer writes.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "infer/generate.h"
#include "infer/sha256.h"
#include "models/formats/single_file.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

nn::TensorMap tensors_of(nn::Module& m) {
  nn::TensorMap out;
  for (auto& [name, t] : m.state_dict()) out[name] = t;
  return out;
}

TEST(PipelineSingleFile, FileAndConvertedFolderGiveTheSameImage) {
  const fs::path dir = fs::temp_directory_path() / ("sd_single_file_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  nn::UNet2DConditionModel unet(nn::UNetConfig::from_json_string(R"({
      "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 32, "attention_head_dim": 8,
      "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
      "cross_attention_dim": 48, "sample_size": 8})"));
  nn::AutoencoderKL vae(nn::VaeConfig::from_json_string(R"({
      "block_out_channels": [32, 32], "layers_per_block": 1, "norm_num_groups": 32, "latent_channels": 4,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "sample_size": 16})"));
  nn::ClipTextModel clip(nn::ClipTextConfig::from_json(R"({
      "vocab_size": 1000, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 12, "hidden_act": "quick_gelu", "eos_token_id": 2})"));
  unet.init_parameters(1);
  vae.init_parameters(2);
  clip.init_parameters(3);
  const std::string file = (dir / "tiny_sd1.safetensors").string();
  nn::save_single_file(file, {{"unet", tensors_of(unet)}, {"vae", tensors_of(vae)}, {"text_encoder", tensors_of(clip)}},
                       nn::ModelFamily::SD1);

  const std::string vocab = kData + "/pipe_tiny_sd1/tokenizer";
  PipelineOptions o;
  o.tokenizer_dir = vocab;
  const auto from_file = Pipeline::load(file, o);
  EXPECT_TRUE(from_file->single_file);
  EXPECT_EQ(from_file->family, nn::ModelFamily::SD1);
  EXPECT_EQ(from_file->pipeline_class, "StableDiffusionPipeline");
  EXPECT_EQ(from_file->scheduler_config.class_name, "PNDMScheduler");
  EXPECT_EQ(from_file->tokenizer->pad_id(), from_file->tokenizer->eos_id());
  EXPECT_EQ(from_file->model_name(), "tiny_sd1");
  EXPECT_EQ(from_file->model_hash(), sha256_files_hex({file}).substr(0, 10));
  // Default size: the preset's sample_size (SD1.5's 64 latents; weights cannot tell it) times this
  // VAE's factor 2 (8 for real models: 512).
  EXPECT_EQ(from_file->defaults().width, 128);

  nn::FileToFolderOptions fo;
  fo.tokenizer_from = vocab;
  nn::single_file_to_diffusers_folder(file, (dir / "folder").string(), fo);
  const auto from_folder = Pipeline::load((dir / "folder").string());
  EXPECT_FALSE(from_folder->single_file);
  EXPECT_EQ(from_folder->family, nn::ModelFamily::SD1);

  GenerateRequest r;
  r.prompt = "a red cartoon cat";
  r.negative_prompt = "blurry";
  r.steps = 2;
  r.width = r.height = 16;
  PhiloxNoise a(9), b(9);
  const GenerateResult ra = generate(*from_file, r, a), rb = generate(*from_folder, r, b);
  EXPECT_EQ(ra.images.shape(), (Shape{1, 3, 16, 16}));
  EXPECT_TRUE(test::all_close(ra.images, rb.images, 0, 0));
  // A file without the text encoder is refused with the reason.
  const std::string partial = (dir / "unet_vae.safetensors").string();
  nn::save_single_file(partial, {{"unet", tensors_of(unet)}, {"vae", tensors_of(vae)}}, nn::ModelFamily::SD1);
  std::string err;
  try {
    Pipeline::load(partial, o);
  } catch (const std::exception& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("holds no text encoder"), std::string::npos) << err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sd::infer
