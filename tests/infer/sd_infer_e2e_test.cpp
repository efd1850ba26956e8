// sd_infer as a user runs it: the built binary (SD_BINARY_DIR/tools/sd_infer) on the tiny
// pipelines of tests/data, checked from the outside: exit codes, the PNG files and their
// "parameters" text, the --json summary, --prompt_file, and every command-line error (non-zero exit, a
// message naming the problem, no image written), hostile LoRA/embedding/latents files and NaN runs
// included.
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
#include "infer/sha256.h"
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

// A command line: `base` followed by `extra`.
std::vector<std::string> plus(std::vector<std::string> base, const std::vector<std::string>& extra) {
  base.insert(base.end(), extra.begin(), extra.end());
  return base;
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

  // auto_device: leave the device to sd_infer (a GPU in fp16 where one exists); otherwise the run
  // is pinned to the CPU, which the expected values of these tests are for.
  RunResult run(const std::vector<std::string>& args, bool auto_device = false) {
    std::string cmd = shell_quote(kBinary);
    for (const std::string& a : args) cmd += " " + shell_quote(a);
    if (!auto_device && std::find(args.begin(), args.end(), "--device") == args.end()) cmd += " --device cpu";
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
                     "--scheduler", "dpm++2m_karras", "--seed", "7", "--output_dir", out_.string()},
                          /*auto_device=*/true);
  ASSERT_EQ(r.code, 0) << r.err;
  // The first line says which device and dtype were picked (no flags: a GPU when present, else the CPU).
  const std::string first = r.err.substr(0, r.err.find('\n'));
  EXPECT_EQ(first.rfind(test::has_cuda() ? "device: cuda:0 f16 (auto" : "device: cpu f32 (auto: no CUDA device", 0), 0u)
      << first;
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
                     "--output_dir", out_.string()},
                          /*auto_device=*/true);
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
  // No --device / --dtype: the choice and its reason are part of the summary.
  const bool gpu = test::has_cuda();
  EXPECT_EQ(j["device"], gpu ? "cuda:0" : "cpu");
  EXPECT_EQ(j["dtype"], gpu ? "f16" : "f32");
  EXPECT_NE(j["device_choice"].get<std::string>().find(gpu ? "auto: the first CUDA device" : "auto: no CUDA device"),
            std::string::npos) << j["device_choice"];
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
  // The PNG records the latents file (name and hash), not a seed that did not make the noise.
  const std::string params = read_png_text(files[0].string()).at("parameters");
  EXPECT_EQ(params.find("Seed:"), std::string::npos) << params;
  const std::string hash = infer::sha256_hex(test::read_text(lat)).substr(0, 10);
  EXPECT_NE(params.find("Latents: latents.safetensors [" + hash + "]"), std::string::npos) << params;
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
  auto with = [&](const std::vector<std::string>& extra) { return plus(base, extra); };
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

// --channels_last runs the UNet and VAE in NHWC: the same pixels, with or without a LoRA (which
// the CPU's NCHW kernels and the adapters see through the layout).
TEST_F(E2ESdInfer, ChannelsLastGivesTheSameImage) {
  const std::vector<std::string> base = {"--model", kSd1, "--prompt", "a red cartoon cat", "--steps", "3",
                                         "--scheduler", "euler", "--seed", "11", "--output_dir", out_.string()};
  auto with = [&](const std::vector<std::string>& extra) { return plus(base, extra); };
  const std::string lora = kData + "/lora/sd1_kohya.safetensors:0.7";
  for (const auto& args : {base, with({"--channels_last"}), with({"--lora", lora}),
                           with({"--lora", lora, "--channels_last"})}) {
    const RunResult r = run(args);
    ASSERT_EQ(r.code, 0) << r.err;
  }
  const auto files = pngs();
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(load_image_u8(files[1].string()).to_vector(), load_image_u8(files[0].string()).to_vector());
  EXPECT_EQ(load_image_u8(files[3].string()).to_vector(), load_image_u8(files[2].string()).to_vector());
  EXPECT_GT(mean_abs_diff(files[0], files[2]), 1.0);  // the LoRA did change the image
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
  expect_error({"--model", kSd1, "--prompt", "a cat", "--unknown_flag"}, "unknown flag --unknown_flag");
}

TEST_F(E2ESdInfer, HelpExplainsTheFlags) {
  const RunResult r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* flag : {"--model", "--prompt", "--prompt_file", "--negative_prompt", "--guidance_scale", "--scheduler",
                           "--seed", "--rng", "--init_image", "--strength", "--refiner", "--json", "--output_dir"})
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
}

// Flags from a TOML file (keys are the flag names; the command line wins) make the image the same
// command line makes.
TEST_F(E2ESdInfer, ConfigFileFlagsAndTheCommandLineWins) {
  const fs::path cfg = dir_ / "run.toml";
  test::write_text(cfg, "model = '" + kSd1 + "'\nprompt = 'a red cartoon cat'\nsteps = 3\nseed = 1\n"
                        "scheduler = 'euler'\n");
  const RunResult from_file = run({"--config", cfg.string(), "--seed", "4", "--output_dir", (dir_ / "a").string()});
  ASSERT_EQ(from_file.code, 0) << from_file.err;
  const RunResult direct = run({"--model", kSd1, "--prompt", "a red cartoon cat", "--steps", "3", "--seed", "4",
                                "--scheduler", "euler", "--output_dir", (dir_ / "b").string()});
  ASSERT_EQ(direct.code, 0) << direct.err;
  ASSERT_TRUE(fs::is_regular_file(dir_ / "a" / "4-00000.png"));  // the command line's seed won
  EXPECT_EQ(load_image_u8((dir_ / "a" / "4-00000.png").string()).to_vector(),
            load_image_u8((dir_ / "b" / "4-00000.png").string()).to_vector());
  test::write_text(cfg, "stpes = 3\n");
  expect_error({"--config", cfg.string()}, "unknown key 'stpes' (did you mean steps?)");
}

// Every tool parses with the same parser: the same --help layout, the same errors.
TEST_F(E2ESdInfer, EveryToolSharesTheHelpLayoutAndTheConfigFlag) {
  for (const char* tool : {"sd_infer", "sd_train", "sd_convert", "sd_devinfo"}) {
    const std::string bin = std::string(SD_BINARY_DIR) + "/tools/" + tool;
    const fs::path out = dir_ / "help.txt";
    const int status = std::system((shell_quote(bin) + " --help >" + shell_quote(out.string()) + " 2>&1").c_str());
    EXPECT_EQ(WEXITSTATUS(status), 0) << tool;
    const std::string help = read_text(out);
    EXPECT_EQ(help.rfind(std::string("usage: ") + tool + " [options]", 0), 0u) << help;
    EXPECT_NE(help.find("  --config FILE.toml"), std::string::npos) << tool;
    const int bad = std::system((shell_quote(bin) + " --no_such_flag >" + shell_quote(out.string()) + " 2>&1").c_str());
    EXPECT_EQ(WEXITSTATUS(bad), 2) << tool;
    EXPECT_NE(read_text(out).find("unknown flag --no_such_flag"), std::string::npos) << tool << ": " << read_text(out);
  }
}

// ---- hostile inputs: each refused with a message naming the file and what is wrong ----

// The tensors of a committed fixture, to be altered and written anew with the project's writer.
std::vector<std::pair<std::string, Tensor>> tensors_of(const std::string& file) {
  const SafetensorsFile f = SafetensorsFile::open(file);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& k : f.keys()) out.emplace_back(k, copy_to(f.get(k), DType::F32, Device::cpu()));
  return out;
}

Tensor with_nan(const Tensor& t, size_t i) {
  std::vector<double> v = t.to_vector();
  v[i] = std::nan("");
  return from_vector(v, t.shape());
}

TEST_F(E2ESdInfer, LoraWithNanIsRefusedNamingFileAndKey) {
  auto t = tensors_of(kData + "/lora/sd1_kohya.safetensors");
  // The last weight in key order (any would do: every tensor is read before the first is applied).
  auto it = std::find_if(t.rbegin(), t.rend(), [](const auto& kv) { return kv.first.find(".lora_up.weight") != std::string::npos; });
  ASSERT_NE(it, t.rend());
  const std::string key = it->first;
  it->second = with_nan(it->second, 0);
  const fs::path bad = dir_ / "nan_lora.safetensors";
  save_safetensors(bad.string(), t);
  expect_error({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--lora", bad.string() + ":0.7"},
               "nan_lora.safetensors': key '" + key + "'");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--lora", bad.string()}, "holds NaN or Inf");
}

TEST_F(E2ESdInfer, LoraArgumentErrorsSayWhatIsWrong) {
  const std::string lora = kData + "/lora/sd1_kohya.safetensors";
  const std::vector<std::string> base = {"--model", kSd1, "--prompt", "a cat"};
  auto with = [&](const std::string& spec) { return plus(base, {"--lora", spec}); };
  expect_error(with(lora + ":nan"), "the scale 'nan' is not a finite number");
  expect_error(with(lora + ":abc"), "the scale 'abc' is not a finite number");
  expect_error(with(lora + ":inf"), "the scale 'inf' is not a finite number");
  expect_error(with(kData + "/lora"), "is a directory; expected a LoRA file");
  expect_error(with(kData + "/lora:0.5"), "is a directory; expected a LoRA file");
  expect_error(with((dir_ / "missing.safetensors").string() + ":0.5"), "missing.safetensors' does not exist");
  expect_error(with((dir_ / "missing.safetensors").string()), "missing.safetensors' does not exist");
  for (const auto& r : {run(with(lora + ":nan")), run(with(kData + "/lora"))})
    EXPECT_EQ(r.err.find("does not exist"), std::string::npos) << r.err;
  // A file whose name holds ':' is still a file.
  const fs::path colon = dir_ / "a:b.safetensors";
  fs::copy_file(lora, colon);
  const RunResult ok = run({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--lora", colon.string(), "--quiet",
                            "--output_dir", out_.string()});
  EXPECT_EQ(ok.code, 0) << ok.err;
}

TEST_F(E2ESdInfer, LoraMatchingNoLayerIsAnErrorEvenWithQuiet) {
  // A UNet LoRA in a naming no layer of this model answers to.
  auto t = tensors_of(kData + "/lora/sd1_peft.safetensors");
  for (auto& [k, v] : t) k = "transformer." + k;
  const fs::path bad = dir_ / "other_model_lora.safetensors";
  save_safetensors(bad.string(), t);
  expect_error({"--model", kSd1, "--prompt", "a cat", "--lora", bad.string(), "--quiet"},
               "other_model_lora.safetensors': none of its " + std::to_string(t.size()) + " keys addresses a layer");
  const RunResult r = run({"--model", kSd1, "--prompt", "a cat", "--lora", bad.string(), "--quiet", "--output_dir",
                           out_.string()});
  EXPECT_NE(r.err.find("'transformer."), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("' (kohya) or 'unet."), std::string::npos) << r.err;
}

TEST_F(E2ESdInfer, EmbeddingErrorsNameTheFile) {
  // NaN in the vectors.
  auto t = tensors_of(kData + "/lora/ti/tinyemb.safetensors");
  t.front().second = with_nan(t.front().second, 3);
  const fs::path bad = dir_ / "nanemb.safetensors";
  save_safetensors(bad.string(), t);
  expect_error({"--model", kSd1, "--prompt", "a photo of nanemb", "--embedding", bad.string()},
               "nanemb.safetensors': key '" + t.front().first + "'");
  // Paths: missing, a folder that is not a diffusers embedding folder (a folder that is one works).
  expect_error({"--model", kSd1, "--prompt", "a cat", "--embedding", (dir_ / "nope.pt").string()}, "nope.pt' does not exist");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--embedding", kData + "/lora"},
               "is a directory without learned_embeds.safetensors");
  const RunResult ok = run({"--model", kSd1, "--prompt", "a <cat-toy>", "--steps", "2", "--embedding",
                            kData + "/lora/ti/cat_toy", "--quiet", "--output_dir", out_.string()});
  EXPECT_EQ(ok.code, 0) << ok.err;
}

TEST_F(E2ESdInfer, NanLatentsStopWithTheStepNotABlackImage) {
  // A LoRA scale far too large: finite, so accepted, but the UNet's output overflows at once.
  const RunResult r = run({"--model", kSd1, "--prompt", "a cat", "--steps", "4", "--scheduler", "euler", "--lora",
                           kData + "/lora/sd1_kohya.safetensors:1e30", "--output_dir", out_.string()});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("latents became NaN/Inf at step 1 of 4 (denoise, UNet f32)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("a --lora scale too large"), std::string::npos) << r.err;
  EXPECT_TRUE(pngs().empty());
  // Starting latents with a NaN: stopped before the first step, and the file is named as the cause.
  std::vector<double> v(4 * 16 * 16, 0.1);
  v[5] = std::nan("");
  const fs::path lat = dir_ / "nan_latents.safetensors";
  save_safetensors(lat.string(), {{"latents", from_vector(v, {1, 4, 16, 16})}});
  expect_error({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--latents", lat.string()},
               "starting latents hold NaN/Inf");
  const RunResult s = run({"--model", kSd1, "--prompt", "a cat", "--latents", lat.string(), "--output_dir", out_.string()});
  EXPECT_NE(s.err.find("nan_latents.safetensors' holds NaN/Inf values"), std::string::npos) << s.err;
}

TEST_F(E2ESdInfer, PromptWeightOverflowIsRefusedBeforeLoading) {
  const std::string deep = std::string(1000, '(') + "cat" + std::string(1000, ')');
  expect_error({"--model", kSd1, "--prompt", deep}, "--prompt: prompt emphasis: the weight of \"cat\"");
  expect_error({"--model", kSd1, "--prompt", "a cat", "--negative_prompt", "(dog:1000000000)"}, "--negative_prompt");
  const RunResult r = run({"--model", kSd1, "--prompt", deep, "--output_dir", out_.string()});
  EXPECT_EQ(r.code, 2) << "a usage error, found before loading: " << r.err;
  EXPECT_EQ(r.err.find("loading"), std::string::npos) << r.err;
}

// ---- --output_dir: checked writable before the model loads ----

TEST_F(E2ESdInfer, UnwritableOutputDirFailsBeforeAnyWork) {
  const fs::path file = dir_ / "a_file";
  test::write_text(file, "x");
  auto expect_early = [&](const std::string& out, const std::string& message) {
    const RunResult r = run({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--output_dir", out});
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("--output_dir '" + out + "' " + message), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("loading"), std::string::npos) << "the model was loaded first: " << r.err;
    EXPECT_EQ(r.err.find("denoise"), std::string::npos) << r.err;
  };
  expect_early(file.string(), "is not a directory");
  expect_early((file / "sub").string(), "cannot be created");
  // A folder nobody can create files in, root included (files cannot be made in /proc).
  if (fs::is_directory("/proc")) expect_early("/proc", "is not writable");
  if (::geteuid() != 0) {  // permissions stop everyone but root
    const fs::path ro = dir_ / "read_only";
    fs::create_directories(ro);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
    expect_early(ro.string(), "is not writable");
    fs::permissions(ro, fs::perms::owner_all);
  }
  // A missing folder is created (and a failed run takes it away again).
  const fs::path fresh = dir_ / "new" / "deeper";
  const RunResult bad = run({"--model", kData + "/pipe_tiny_sdxl_refiner", "--prompt", "a cat", "--output_dir", fresh.string()});
  EXPECT_NE(bad.code, 0);
  EXPECT_FALSE(fs::exists(dir_ / "new")) << "the folders made for a failed run stayed";
  const RunResult good = run({"--model", kSd1, "--prompt", "a cat", "--steps", "2", "--quiet", "--output_dir", fresh.string()});
  ASSERT_EQ(good.code, 0) << good.err;
  ASSERT_TRUE(fs::is_directory(fresh));
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(fresh)) n += e.path().extension() == ".png" ? 1 : 100;  // no probe left
  EXPECT_EQ(n, 1u);
}

// ---- --prompt_file ----

TEST_F(E2ESdInfer, PromptFileMakesTheImagesOfEachLine) {
  const fs::path prompts = dir_ / "prompts.txt";
  // CRLF, blank lines, surrounding spaces and a byte-order mark, as editors leave them.
  test::write_text(prompts, "\xEF\xBB\xBF" "a red cartoon cat\r\n\r\n   \n  a (blue:1.2) dog  \n");
  const std::vector<std::string> common = {"--model", kSd1, "--steps", "3", "--scheduler", "euler", "--seed", "9",
                                           "--num_images_per_prompt", "2", "--json", "--quiet", "--output_dir",
                                           out_.string()};
  std::vector<std::string> a = common;
  a.insert(a.end(), {"--prompt_file", prompts.string()});
  const RunResult r = run(a);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompts"], nlohmann::json::array({"a red cartoon cat", "a (blue:1.2) dog"}));
  EXPECT_EQ(j["prompt_file"], prompts.string());
  EXPECT_EQ(j["num_images"], 4);
  EXPECT_EQ(j["unet_evals"], 6);  // 3 steps x 2 prompts (both images of a prompt in one batch)
  ASSERT_EQ(j["images"].size(), 4u);
  std::vector<std::string> files;
  for (const auto& f : j["images"]) files.push_back(f.get<std::string>());
  // Parameters: each image its line's prompt, all the same seed and batch positions.
  for (size_t i = 0; i < 4; ++i) {
    const std::string p = read_png_text(files[i]).at("parameters");
    EXPECT_EQ(p.rfind(i < 2 ? "a red cartoon cat\n" : "a (blue:1.2) dog\n", 0), 0u) << p;
    EXPECT_NE(p.find("Seed: 9,"), std::string::npos) << p;
    EXPECT_NE(p.find("Batch pos: " + std::to_string(i % 2)), std::string::npos) << p;
  }
  // Each line's images are what --prompt with its text gives (the PNG's parameters reproduce it).
  std::vector<std::string> b = common;
  b.insert(b.end(), {"--prompt", "a (blue:1.2) dog"});
  const RunResult single = run(b);
  ASSERT_EQ(single.code, 0) << single.err;
  const nlohmann::json js = nlohmann::json::parse(single.out);
  EXPECT_EQ(js["prompt"], "a (blue:1.2) dog");
  for (size_t i = 0; i < 2; ++i)
    EXPECT_EQ(load_image_u8(js["images"][i].get<std::string>()).to_vector(), load_image_u8(files[2 + i]).to_vector()) << i;
  EXPECT_GT(mean_abs_diff(files[0], files[2]), 1.0) << "the two lines gave the same image";
}

TEST_F(E2ESdInfer, PromptFileErrorsNameTheLine) {
  const fs::path p = dir_ / "p.txt";
  test::write_text(p, "a cat\n");
  expect_error({"--model", kSd1, "--prompt", "a dog", "--prompt_file", p.string()}, "--prompt and --prompt_file exclude each other");
  expect_error({"--model", kSd1, "--prompt_file", (dir_ / "none.txt").string()}, "none.txt' does not exist");
  expect_error({"--model", kSd1, "--prompt_file", dir_.string()}, "is a directory; expected a text file");
  test::write_text(p, "\n  \n\r\n");
  expect_error({"--model", kSd1, "--prompt_file", p.string()}, "holds no prompt (only blank lines)");
  test::write_text(p, std::string("a cat\nbinary\0junk\n", 18));
  expect_error({"--model", kSd1, "--prompt_file", p.string()}, "p.txt' line 2 holds a NUL byte");
  test::write_text(p, "a cat\n\na \xFF\xFE dog\n");
  expect_error({"--model", kSd1, "--prompt_file", p.string()}, "p.txt' line 3 is not valid UTF-8");
  test::write_text(p, "a cat\n" + std::string(500, '(') + "dog\n");
  expect_error({"--model", kSd1, "--prompt_file", p.string()}, "p.txt' line 2: prompt emphasis: the weight of \"dog\"");
  // An error while generating a line names it too.
  test::write_text(p, "a cat\na dog\n");
  const RunResult r = run({"--model", kSd1, "--prompt_file", p.string(), "--steps", "2", "--scheduler", "euler", "--lora",
                           kData + "/lora/sd1_kohya.safetensors:1e30", "--output_dir", out_.string()});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("p.txt' line 1: latents became NaN/Inf at step 1 of 2"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace sd::infer
