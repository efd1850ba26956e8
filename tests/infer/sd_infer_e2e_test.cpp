// sd_infer as a user runs it: the built binary (SD_BINARY_DIR/tools/sd_infer) on the tiny
// pipelines of tests/data, checked from the outside: exit codes, the PNG files and their
// "parameters" text, the --json summary, and every command-line error (non-zero exit, a message
// naming the problem, no image written).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/image_io.h"
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

namespace fs = std::filesystem;
using test::read_text;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kBinary = std::string(SD_BINARY_DIR) + "/tools/sd_infer";

struct RunResult {
  int code = -1;
  std::string out, err;
};

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class E2ESdInfer : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::is_regular_file(kBinary)) << kBinary << " is not built (ninja sd_infer)";
    dir_ = fs::temp_directory_path() /
           ("sd_infer_e2e_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    out_ = dir_ / "outputs";
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult run(const std::vector<std::string>& args) {
    std::string cmd = shell_quote(kBinary);
    for (const std::string& a : args) cmd += " " + shell_quote(a);
    const fs::path so = dir_ / "stdout.txt", se = dir_ / "stderr.txt";
    cmd += " >" + shell_quote(so.string()) + " 2>" + shell_quote(se.string());
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_text(so);
    r.err = read_text(se);
    return r;
  }

  std::vector<fs::path> pngs() const {
    std::vector<fs::path> v;
    if (fs::is_directory(out_))
      for (const auto& e : fs::directory_iterator(out_)) v.push_back(e.path());
    std::sort(v.begin(), v.end());
    return v;
  }

  // An error case: non-zero exit, stderr names the problem, no image anywhere.
  void expect_error(const std::vector<std::string>& args, const std::string& message) {
    std::vector<std::string> a = args;
    a.push_back("--output_dir");
    a.push_back(out_.string());
    const RunResult r = run(a);
    EXPECT_NE(r.code, 0) << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << "stderr: " << r.err;
    EXPECT_TRUE(pngs().empty()) << "a file was written for a failed run";
  }

  fs::path dir_, out_;
};

const std::string kSd1 = kData + "/pipe_tiny_sd1";

TEST_F(E2ESdInfer, Txt2ImgWritesPngWithA1111Parameters) {
  const RunResult r = run({"--model", kSd1, "--prompt", "a red cartoon cat", "--negative_prompt", "blurry", "--steps", "4",
                     "--scheduler", "dpm++2m_karras", "--seed", "7", "--output_dir", out_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto files = pngs();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "7-00000.png");
  const Tensor img = load_image_u8(files[0].string());
  EXPECT_EQ(img.shape(), (Shape{32, 32, 3}));  // the tiny UNet's sample_size 16 x VAE factor 2

  // The model hash, independently: sha256sum over the weight files (unet, text encoder, vae).
  const std::string hash_cmd = "cat " + shell_quote(kSd1 + "/unet/diffusion_pytorch_model.safetensors") + " " +
                               shell_quote(kSd1 + "/text_encoder/model.safetensors") + " " +
                               shell_quote(kSd1 + "/vae/diffusion_pytorch_model.safetensors") +
                               " | sha256sum > " + shell_quote((dir_ / "hash.txt").string());
  ASSERT_EQ(std::system(hash_cmd.c_str()), 0);
  const std::string hash = read_text(dir_ / "hash.txt").substr(0, 10);

  const std::string expected =
      "a red cartoon cat\n"
      "Negative prompt: blurry\n"
      "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 7, Size: 32x32, Model hash: " +
      hash + ", Model: pipe_tiny_sd1, RNG: philox, Version: sd_infer";
  EXPECT_EQ(read_png_text(files[0].string()).at("parameters"), expected);
  EXPECT_NE(r.err.find("wrote"), std::string::npos);
  EXPECT_NE(r.err.find("it/s"), std::string::npos) << "progress bar on stderr";

  // The same command again: a new name, the first file untouched, the same pixels (seeded).
  const RunResult again = run({"--model", kSd1, "--prompt", "a red cartoon cat", "--negative_prompt", "blurry", "--steps",
                         "4", "--scheduler", "dpm++2m_karras", "--seed", "7", "--output_dir", out_.string(), "--quiet"});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_TRUE(again.err.empty()) << "--quiet printed: " << again.err;
  const auto both = pngs();
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[1].filename(), "7-00001.png");
  EXPECT_EQ(load_image_u8(both[1].string()).to_vector(), img.to_vector());
}

TEST_F(E2ESdInfer, JsonSummary) {
  const RunResult r = run({"--model", kSd1, "--prompt", "a red cartoon cat", "--steps", "3", "--scheduler", "euler",
                     "--num_images_per_prompt", "2", "--batch_size", "1", "--seed", "3", "--json", "--quiet",
                     "--output_dir", out_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["images"].size(), 2u);
  for (const auto& p : j["images"]) EXPECT_TRUE(fs::is_regular_file(p.get<std::string>()));
  EXPECT_EQ(j["family"], "sd1");
  EXPECT_EQ(j["seed"], 3);
  EXPECT_EQ(j["steps"], 3);
  EXPECT_EQ(j["sampler"], "Euler");
  EXPECT_EQ(j["width"], 32);
  EXPECT_EQ(j["num_images"], 2);
  for (const char* k : {"load_s", "text_encode_s", "denoise_s", "decode_s", "total_s"})
    EXPECT_GE(j["timings"][k].get<double>(), 0.0) << k;
  EXPECT_GT(j["timings"]["denoise_s"].get<double>(), 0.0);
  EXPECT_GT(j["it_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["unet_evals"], 6);  // 3 steps x 2 batches
  EXPECT_GT(j["peak_memory"]["cpu_tensors_bytes"].get<int64_t>(), 0);
  EXPECT_GT(j["peak_memory"]["max_rss_bytes"].get<int64_t>(), 0);
  // Batch positions in the parameters.
  const std::string p1 = read_png_text(j["images"][1].get<std::string>()).at("parameters");
  EXPECT_NE(p1.find("Batch size: 2, Batch pos: 1"), std::string::npos) << p1;
}

// --latents: diffusers' starting latents of the sd1_pndm golden give diffusers' image, to the
// 8-bit quantisation.
TEST_F(E2ESdInfer, GivenLatentsReproduceDiffusers) {
  const SafetensorsFile g = SafetensorsFile::open(kData + "/pipelines/goldens.safetensors");
  const fs::path lat = dir_ / "latents.safetensors";
  save_safetensors(lat.string(), {{"latents", g.get("sd1_pndm.latents")}});
  const RunResult r = run({"--model", kSd1, "--prompt", "a red cartoon cat", "--steps", "6", "--guidance_scale", "7.5",
                     "--width", "32", "--height", "32", "--latents", lat.string(), "--seed", "0", "--quiet",
                     "--output_dir", out_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto files = pngs();
  ASSERT_EQ(files.size(), 1u);
  const std::vector<double> got = load_image_u8(files[0].string()).to_vector();  // [H, W, 3]
  const Tensor want = g.get("sd1_pndm.image");                                   // [1, 3, H, W] in [-1, 1]
  const std::vector<double> w = want.to_vector();
  const int64_t H = want.size(2), W = want.size(3);
  int worst = 0;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const double v = std::min(1.0, std::max(0.0, w[size_t((c * H + y) * W + x)] / 2 + 0.5));
        const int expect = int(std::lround(v * 255));
        worst = std::max(worst, std::abs(int(got[size_t((y * W + x) * 3 + c)]) - expect));
      }
  EXPECT_LE(worst, 1) << "pixel levels off diffusers' image";
}

TEST_F(E2ESdInfer, ErrorBadModelPath) {
  expect_error({"--model", (dir_ / "no_such_model").string(), "--prompt", "a cat"}, "does not exist");
  EXPECT_FALSE(fs::exists(out_)) << "the output folder was created for a failed run";
}

// No --model: the built-in shapes model (infer/default_model), 64x64, what the README's first command runs.
TEST_F(E2ESdInfer, WithoutModelUsesTheBuiltInShapesModel) {
  const RunResult r = run({"--prompt", "a large red circle on a blue background, center", "--seed", "1",
                           "--output_dir", out_.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto files = pngs();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(load_image_u8(files[0].string()).shape(), (Shape{64, 64, 3}));
  EXPECT_NE(read_png_text(files[0].string()).at("parameters").find("Model: default_model"), std::string::npos);
}

TEST_F(E2ESdInfer, WithoutModelAndNoBuiltInModelIsAClearError) {
  ::setenv("SD_DATA_DIR", (dir_ / "empty_data_dir").string().c_str(), 1);
  expect_error({"--prompt", "a cat"}, "the built-in model is missing");
  ::unsetenv("SD_DATA_DIR");
}

TEST_F(E2ESdInfer, ErrorFolderIsNotAModel) {
  expect_error({"--model", kData + "/clip", "--prompt", "a cat"}, "is not a diffusers pipeline folder");
}

TEST_F(E2ESdInfer, ErrorSizeNotMultipleOf8) {
  expect_error({"--model", kSd1, "--prompt", "a cat", "--width", "30"}, "multiples of 8");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--height", "20"}, "multiples of 8");
}

TEST_F(E2ESdInfer, ErrorEmptyPrompt) {
  expect_error({"--model", kSd1, "--prompt", ""}, "--prompt is empty");
  expect_error({"--model", kSd1, "--prompt", "   "}, "--prompt is empty");
  expect_error({"--model", kSd1}, "--prompt is required");
}

TEST_F(E2ESdInfer, ErrorUnknownScheduler) {
  expect_error({"--model", kSd1, "--prompt", "a cat", "--scheduler", "dpm_magic"}, "unknown scheduler \"dpm_magic\"");
}

// Mean absolute difference of two 8-bit images, in pixel levels.
double mean_abs_diff(const fs::path& a, const fs::path& b) {
  const std::vector<double> va = load_image_u8(a.string()).to_vector(), vb = load_image_u8(b.string()).to_vector();
  EXPECT_EQ(va.size(), vb.size());
  double s = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) s += std::fabs(va[i] - vb[i]);
  return s / double(std::max<size_t>(va.size(), 1));
}

TEST_F(E2ESdInfer, LoraInBothLayoutsChangesTheImageTheSameWay) {
  const std::vector<std::string> base = {"--model", kSd1, "--prompt", "a red cartoon cat", "--steps", "4",
                                         "--scheduler", "euler", "--seed", "7", "--output_dir", out_.string()};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(run(base).code, 0);
  const RunResult kohya = run(with({"--lora", kData + "/lora/sd1_kohya.safetensors:0.7"}));
  ASSERT_EQ(kohya.code, 0) << kohya.err;
  EXPECT_NE(kohya.err.find("0 keys unmatched"), std::string::npos) << kohya.err;
  const RunResult peft = run(with({"--lora", kData + "/lora/sd1_peft.safetensors:0.7"}));
  ASSERT_EQ(peft.code, 0) << peft.err;
  const auto files = pngs();
  ASSERT_EQ(files.size(), 3u);
  // The two files hold the same adapter (tests/golden/make_lora_goldens.py): same image, and a
  // visible change from the plain one.
  EXPECT_LE(mean_abs_diff(files[1], files[2]), 0.05);
  EXPECT_GT(mean_abs_diff(files[0], files[1]), 1.0);
  EXPECT_NE(read_png_text(files[1].string())["parameters"].find("a red cartoon cat"), std::string::npos);
}

TEST_F(E2ESdInfer, LoraForAnotherFamilyIsAClearError) {
  expect_error({"--model", kSd1, "--prompt", "a cat", "--lora", kData + "/lora/sdxl_kohya.safetensors"},
               "sdxl_kohya.safetensors");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--lora", "missing.safetensors:0.8"}, "missing.safetensors");
}

TEST_F(E2ESdInfer, EmbeddingTriggerIsUsable) {
  const std::vector<std::string> base = {"--model", kSd1, "--prompt", "a photo of tinyemb", "--steps", "4",
                                         "--scheduler", "euler", "--seed", "7", "--output_dir", out_.string()};
  ASSERT_EQ(run(base).code, 0);
  std::vector<std::string> a = base;
  a.push_back("--embedding");
  a.push_back(kData + "/lora/ti/tinyemb.safetensors");
  const RunResult r = run(a);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("trigger 'tinyemb'"), std::string::npos) << r.err;
  const auto files = pngs();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_GT(mean_abs_diff(files[0], files[1]), 0.5) << "the embedding did not change the conditioning";
}

TEST_F(E2ESdInfer, EmbeddingForAnotherFamilyIsAClearError) {
  // An SDXL embedding (clip_l + clip_g) on SD1, which has no second text encoder.
  expect_error({"--model", kSd1, "--prompt", "a cat", "--embedding", kData + "/lora/ti/tinyxl.safetensors"},
               "tinyxl");
}

TEST_F(E2ESdInfer, ErrorAfterLoadingWritesNothing) {
  // The refiner alone needs an image: found only once the model is loaded.
  expect_error({"--model", kData + "/pipe_tiny_sdxl_refiner", "--prompt", "a cat"}, "--init_image");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--unknown_flag"}, "unknown argument");
}

TEST_F(E2ESdInfer, HelpExplainsTheFlags) {
  const RunResult r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--model", "--prompt", "--negative_prompt", "--guidance_scale", "--scheduler", "--seed",
                           "--rng", "--init_image", "--strength", "--refiner", "--json", "--output_dir"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace sd::infer
