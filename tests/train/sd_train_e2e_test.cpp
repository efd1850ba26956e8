// sd_train as a user runs it: the built binary (SD_BINARY_DIR/tools/sd_train) on the tiny pipelines and
// datasets of tests/data, checked from the outside: exit codes, messages, the files it writes, an exact
// resume after a real SIGKILL, a stop on SIGINT, the learning itself (the loss falls, and the LoRA loads
// in sd_infer and changes its images), and every kind of bad input (corrupt images, missing captions, a
// model without a VAE, a checkpoint of another run, a full disk while saving, a diverging loss).
#include <gtest/gtest.h>

#include <algorithm>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "infer/image_io.h"
#include "models/formats/single_file.h"
#include "runtime/safetensors.h"
#include "train/tensorboard.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
using test::read_jsonl;
using test::read_text;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kTrain = std::string(SD_BINARY_DIR) + "/tools/sd_train";
const std::string kInfer = std::string(SD_BINARY_DIR) + "/tools/sd_infer";
const std::string kSd1 = kData + "/pipe_tiny_sd1";
const std::string kSdxl = kData + "/pipe_tiny_sdxl";
const std::string kImages = kData + "/train_tiny";

struct RunResult {
  int code = -1;       // exit status, or -signal when killed
  std::string out, err;
};

bool same_bytes(const fs::path& a, const fs::path& b) { return fs::exists(a) && fs::exists(b) && read_text(a) == read_text(b); }

double mean_loss(const std::vector<nlohmann::json>& log, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += log[i]["loss"].get<double>();
  return s / double(end - begin);
}

// Common flags of a quick run on the tiny SD1 pipeline (32 px: the tiny VAE halves, latents 16x16).
std::vector<std::string> quick(const std::string& method, const fs::path& out) {
  return {"--method", method, "--pretrained_model_name_or_path", kSd1, "--train_data_dir", kImages, "--resolution",
          "32", "--train_batch_size", "2", "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--output_dir",
          out.string(), "--quiet"};
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class E2ESdTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::is_regular_file(kTrain)) << kTrain << " is not built (ninja sd_train)";
    dir_ = fs::temp_directory_path() / ("sd_train_e2e_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Starts `binary args...` with stdout/stderr into files; returns the pid. `limit_file_bytes` > 0 sets
  // RLIMIT_FSIZE in the child (a "disk full" for files beyond that size).
  pid_t spawn(const std::string& binary, const std::vector<std::string>& args, const std::string& tag,
              long long limit_file_bytes = 0) {
    const std::string so = (dir_ / (tag + ".out")).string(), se = (dir_ / (tag + ".err")).string();
    std::fflush(stdout);  // else the child writes our buffered output again
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (std::freopen(so.c_str(), "w", stdout) == nullptr || std::freopen(se.c_str(), "w", stderr) == nullptr) _exit(127);
      // ctest runs tests side by side on few cores: OpenMP threads that spin while they wait for work
      // would steal the cores from each other (a run measured 6x slower than with one thread).
      ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
      if (limit_file_bytes > 0) {
        ::signal(SIGXFSZ, SIG_IGN);  // a failed write, not a killed process
        struct rlimit rl {rlim_t(limit_file_bytes), rlim_t(limit_file_bytes)};
        ::setrlimit(RLIMIT_FSIZE, &rl);
      }
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(binary.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      _exit(127);
    }
    return pid;
  }
  RunResult wait(pid_t pid, const std::string& tag) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    RunResult r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
    r.out = read_text(dir_ / (tag + ".out"));
    r.err = read_text(dir_ / (tag + ".err"));
    return r;
  }
  RunResult run(const std::vector<std::string>& args, const std::string& binary = kTrain, long long limit = 0) {
    static int n = 0;
    const std::string tag = "run" + std::to_string(n++);
    // sd_infer would pick a GPU in fp16 where one exists; these comparisons are made on the CPU.
    std::vector<std::string> a = args;
    if (binary == kInfer && std::find(a.begin(), a.end(), "--device") == a.end()) a.insert(a.end(), {"--device", "cpu"});
    return wait(spawn(binary, a, tag, limit), tag);
  }

  fs::path dir_;
};

// ---- command line -------------------------------------------------------------------------------

TEST_F(E2ESdTrain, HelpListsTheDiffusersFlagsWithDefaults) {
  const RunResult r = run({"--help"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"--pretrained_model_name_or_path", "--train_data_dir", "--dataset_name", "--caption_column",
                        "--resolution", "--center_crop", "--random_flip", "--train_batch_size", "--max_train_steps",
                        "--gradient_accumulation_steps", "--gradient_checkpointing", "--learning_rate", "--scale_lr",
                        "--lr_scheduler", "--lr_warmup_steps", "--snr_gamma", "--use_ema", "--mixed_precision",
                        "--checkpointing_steps", "--checkpoints_total_limit", "--resume_from_checkpoint",
                        "--validation_prompt", "--report_to", "--rank", "--lora_alpha", "--train_text_encoder",
                        "--save_format", "--save_single_file", "--noise_offset", "--prediction_type", "--seed"})
    EXPECT_NE(r.out.find(f), std::string::npos) << "--help does not list " << f;
  EXPECT_NE(r.out.find("(default: 500)"), std::string::npos);
  EXPECT_NE(r.out.find("(default: constant)"), std::string::npos);
}

TEST_F(E2ESdTrain, BadFlagsAreErrorsBeforeAnythingIsWritten) {
  const fs::path out = dir_ / "never";
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {plus(quick("lora", out), {"--lerning_rate", "1"}), "did you mean --learning_rate"},
      {{"--pretrained_model_name_or_path", kSd1, "--train_data_dir", kImages, "--output_dir", out.string()},
       "--method is required"},
      {plus(quick("lora", out), {"--use_ema"}), "--use_ema averages the trained base weights"},
      {plus(quick("full", out), {"--rank", "8"}), "--rank is a LoRA setting"},
      {plus(quick("lora", out), {"--dataset_name", kImages}), "either --train_data_dir or --dataset_name"},
      {plus(quick("lora", out), {"--resolution", "30"}), "must be a multiple of 8"},
      {plus(quick("lora", out), {"--mixed_precision", "fp8"}), "must be one of: no, fp16, bf16"},
      {plus(quick("lora", out), {"--lr_scheduler", "cosine_annealing"}), "must be one of"},
      {plus(quick("lora", out), {"--train_batch_size", "0"}), "must be at least 1"},
      {plus(quick("lora", out), {"--cache_latents"}), "--cache_latents needs --center_crop"},
  };
  for (const Case& c : cases) {
    const RunResult r = run(c.args);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << "stderr: " << r.err;
  }
  EXPECT_FALSE(fs::exists(out)) << "a failed command line created the output folder";
}

// ---- exact resume ---------------------------------------------------------------------------------

TEST_F(E2ESdTrain, ResumeAfterSigkillEqualsAStraightRunBitForBit) {
  // fp16 loss scaling and gradient accumulation 2, random flips, a warmup schedule: 6 steps straight vs
  // 3 steps, a real SIGKILL somewhere after checkpoint-3, and a resume to 6.
  auto args = [&](const fs::path& out) {
    return plus(quick("lora", out), {"--gradient_accumulation_steps", "2", "--mixed_precision", "fp16", "--random_flip",
                                     "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--max_train_steps", "8",
                                     "--checkpointing_steps", "4", "--seed", "11", "--train_text_encoder",
                                     "--report_to", "none"});
  };
  const fs::path a = dir_ / "straight", b = dir_ / "killed";
  const RunResult straight = run(args(a));
  ASSERT_EQ(straight.code, 0) << straight.err;

  const pid_t pid = spawn(kTrain, args(b), "killed");
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(b / "checkpoint-4" / "state.json") && std::chrono::steady_clock::now() - t0 < std::chrono::minutes(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ::kill(pid, SIGKILL);
  const RunResult killed = wait(pid, "killed");
  ASSERT_EQ(killed.code, -SIGKILL) << "the run ended before the kill (" << killed.code << "): " << killed.err;
  ASSERT_TRUE(fs::exists(b / "checkpoint-4" / "state.json"));
  EXPECT_FALSE(fs::exists(b / "pytorch_lora_weights.safetensors"));

  const RunResult resumed = run(plus(args(b), {"--resume_from_checkpoint", "latest"}));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resumed from"), std::string::npos) << resumed.err;
  EXPECT_TRUE(same_bytes(a / "pytorch_lora_weights.safetensors", b / "pytorch_lora_weights.safetensors"))
      << "the trained LoRA differs";
  EXPECT_TRUE(same_bytes(a / "checkpoint-8" / "optimizer.safetensors", b / "checkpoint-8" / "optimizer.safetensors"))
      << "optimizer state (masters and moments) differs";
  EXPECT_EQ(read_text(a / "checkpoint-8" / "state.json"), read_text(b / "checkpoint-8" / "state.json"));
  EXPECT_EQ(read_text(a / "logs" / "train.jsonl"), read_text(b / "logs" / "train.jsonl")) << "log lines differ";
  EXPECT_EQ(read_jsonl(b / "logs" / "train.jsonl").size(), 8u);
}

// The run's flags land in <output_dir>/sd_train_config.toml; `sd_train --config` on that file alone (a new
// --output_dir on the command line, which wins) trains the same weights, byte for byte.
TEST_F(E2ESdTrain, TheWrittenConfigFileRepeatsTheRun) {
  const fs::path a = dir_ / "first", b = dir_ / "again";
  const RunResult first = run(plus(quick("lora", a), {"--max_train_steps", "3", "--seed", "9", "--rank", "2",
                                                      "--random_flip", "--lora_target", "attn,ff", "--report_to", "none"}));
  ASSERT_EQ(first.code, 0) << first.err;
  const fs::path cfg = a / "sd_train_config.toml";
  ASSERT_TRUE(fs::is_regular_file(cfg));
  const std::string text = read_text(cfg);
  EXPECT_NE(text.find("method = 'lora'"), std::string::npos) << text;
  EXPECT_NE(text.find("rank = 2"), std::string::npos) << text;
  EXPECT_NE(text.find("# adam_beta1 = 0.9"), std::string::npos) << text;  // defaults as comments
  const RunResult again = run({"--config", cfg.string(), "--output_dir", b.string()});
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_TRUE(same_bytes(a / "pytorch_lora_weights.safetensors", b / "pytorch_lora_weights.safetensors"));
  // The second run's file differs only in the output folder.
  std::string expected = text;
  for (size_t at; (at = expected.find(a.string())) != std::string::npos;) expected.replace(at, a.string().size(), b.string());
  EXPECT_EQ(read_text(b / "sd_train_config.toml"), expected);
}

TEST_F(E2ESdTrain, SigintFinishesTheStepSavesACheckpointAndExitsZero) {
  const fs::path out = dir_ / "run";
  const pid_t pid = spawn(kTrain, plus(quick("lora", out), {"--max_train_steps", "100000", "--checkpointing_steps", "100000"}), "int");
  const auto t0 = std::chrono::steady_clock::now();
  while (read_jsonl(out / "logs" / "train.jsonl").size() < 2 && std::chrono::steady_clock::now() - t0 < std::chrono::minutes(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ::kill(pid, SIGINT);
  const RunResult r = wait(pid, "int");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto log = read_jsonl(out / "logs" / "train.jsonl");
  ASSERT_FALSE(log.empty());
  const int64_t last = log.back()["step"].get<int64_t>();
  EXPECT_TRUE(fs::exists(out / ("checkpoint-" + std::to_string(last)) / "state.json")) << r.err;
  EXPECT_NE(r.err.find("--resume_from_checkpoint latest"), std::string::npos) << r.err;
}

// ---- learning ----------------------------------------------------------------------------------------

TEST_F(E2ESdTrain, LoraLearnsAndChangesSdInferImagesInBothLayouts) {
  const fs::path out = dir_ / "lora";
  const RunResult r = run(plus(quick("lora", out), {"--max_train_steps", "120", "--train_batch_size", "4", "--rank", "8",
                                                    "--lora_target", "attn,ff,proj,conv", "--learning_rate", "1e-2",
                                                    "--save_format", "kohya", "--checkpointing_steps", "1000"}));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto log = read_jsonl(out / "logs" / "train.jsonl");
  ASSERT_EQ(log.size(), 120u);
  const double first = mean_loss(log, 0, 20), last = mean_loss(log, 100, 120);
  std::printf("[ E2ESdTrain ] LoRA loss: first 20 steps %.4f, last 20 steps %.4f (x%.2f)\n", first, last, first / last);
  EXPECT_GT(first / last, 1.8) << "the LoRA did not learn";

  // The LoRA in sd_infer, both layouts: the same image, and a different one than without it.
  auto infer = [&](const std::string& lora, const std::string& name) {
    std::vector<std::string> a = {"--model", kSd1, "--prompt", "a red circle on a white background", "--steps", "4",
                                  "--seed", "3", "--output_dir", (dir_ / name).string(), "--quiet"};
    if (!lora.empty()) a.insert(a.end(), {"--lora", lora});
    const RunResult ri = run(a, kInfer);
    EXPECT_EQ(ri.code, 0) << ri.err;
    return infer::load_image_u8((dir_ / name / "3-00000.png").string()).to_vector();
  };
  const auto base = infer("", "base");
  const auto diffusers = infer((out / "pytorch_lora_weights.safetensors").string(), "peft");
  const auto kohya = infer((out / "pytorch_lora_weights_kohya.safetensors").string(), "kohya");
  double change = 0, layouts = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    change += std::abs(diffusers[i] - base[i]);
    layouts += std::abs(diffusers[i] - kohya[i]);
  }
  change /= double(base.size());
  layouts /= double(base.size());
  std::printf("[ E2ESdTrain ] sd_infer with the LoRA: mean change %.2f levels; diffusers vs kohya file %.3f levels\n",
              change, layouts);
  EXPECT_GT(change, 1.0);
  EXPECT_LT(layouts, 0.05);
}

// A single file whose architecture differs from its family preset (the tiny SD1 model: 8 GroupNorm
// groups) trains with --model_config (a diffusers folder of it), and the saved pipeline carries those
// configs, so sd_infer runs it; without the flag the run stops naming the preset.
TEST_F(E2ESdTrain, SingleFileWithModelConfigTrainsAndSavesItsArchitecture) {
  const fs::path file = dir_ / "tiny_sd1.safetensors";
  nn::diffusers_folder_to_single_file(kSd1, file.string());
  auto args = [&](const fs::path& out) {
    std::vector<std::string> a = quick("full", out);
    a[3] = file.string();  // --pretrained_model_name_or_path
    return plus(a, {"--max_train_steps", "2", "--report_to", "none"});
  };
  const RunResult refused = run(args(dir_ / "preset"));
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.err.find("the weights do not fit the architecture of the sd1 preset"), std::string::npos) << refused.err;

  const fs::path out = dir_ / "with_config";
  const RunResult r = run(plus(args(out), {"--model_config", kSd1}));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"unet/config.json", "vae/config.json", "text_encoder/config.json"})
    EXPECT_EQ(nlohmann::json::parse(read_text(out / f)), nlohmann::json::parse(read_text(fs::path(kSd1) / f))) << f;
  const RunResult ri = run({"--model", out.string(), "--prompt", "a blue square", "--steps", "2", "--seed", "1",
                            "--output_dir", (dir_ / "img").string(), "--quiet"}, kInfer);
  EXPECT_EQ(ri.code, 0) << ri.err;
}

TEST_F(E2ESdTrain, FullFineTuneLearnsAndSavesAPipelineFolderAndASingleFile) {
  const fs::path out = dir_ / "full";
  const RunResult r = run(plus(quick("full", out), {"--max_train_steps", "60", "--learning_rate", "2e-3",
                                                    "--save_single_file", "--checkpointing_steps", "1000", "--use_ema",
                                                    "--ema_decay", "0.9"}));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto log = read_jsonl(out / "logs" / "train.jsonl");
  ASSERT_EQ(log.size(), 60u);
  const double first = mean_loss(log, 0, 15), last = mean_loss(log, 45, 60);
  std::printf("[ E2ESdTrain ] full fine-tune loss: first 15 steps %.4f, last 15 steps %.4f (x%.2f)\n", first, last,
              first / last);
  EXPECT_GT(first / last, 1.5) << "the fine-tune did not learn";
  for (const char* f : {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                        "tokenizer/vocab.json", "scheduler/scheduler_config.json", "model.safetensors"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  // The folder is a pipeline sd_infer runs, and its images differ from the starting model's.
  auto image = [&](const std::string& model, const std::string& name) {
    const RunResult ri = run({"--model", model, "--prompt", "a blue square", "--steps", "4", "--seed", "1",
                              "--output_dir", (dir_ / name).string(), "--quiet"}, kInfer);
    EXPECT_EQ(ri.code, 0) << model << ": " << ri.err;
    return infer::load_image_u8((dir_ / name / "1-00000.png").string()).to_vector();
  };
  const auto base = image(kSd1, "base"), tuned = image(out.string(), "tuned");
  double change = 0;
  for (size_t i = 0; i < base.size(); ++i) change += std::abs(tuned[i] - base[i]);
  EXPECT_GT(change / double(base.size()), 1.0);
  // The single file holds the same UNet under the original names (the tiny model's sizes have no family
  // preset, so it is read back with the converter rather than through sd_infer).
  const SafetensorsFile folder_unet = SafetensorsFile::open((out / "unet/diffusion_pytorch_model.safetensors").string());
  const nn::SingleFileCheckpoint ck = nn::load_single_file((out / "model.safetensors").string(),
                                                           {false, nn::ModelFamily::SD1, true});
  const nn::ComponentTensors comps = ck.stored_tensors();
  ASSERT_TRUE(comps.count("unet"));
  EXPECT_EQ(comps.at("unet").size(), folder_unet.size());
  for (const std::string& k : folder_unet.keys()) {
    ASSERT_TRUE(comps.at("unet").count(k)) << k;
    EXPECT_EQ(copy_to(comps.at("unet").at(k), DType::F32, Device::cpu()).to_vector(),
              folder_unet.get(k, DType::F32, Device::cpu()).to_vector()) << k;
  }
}

// ---- data sources, outputs ---------------------------------------------------------------------------

TEST_F(E2ESdTrain, ParquetDatasetCaptionFilesValidationTensorBoardAndSdxl) {
  // A Hugging Face dataset saved locally (parquet with an Image column).
  RunResult r = run(plus(quick("lora", dir_ / "pq"), {"--max_train_steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> pq = quick("lora", dir_ / "pq2");
  pq[5] = kData + "/train_tiny_parquet";
  pq[4] = "--dataset_name";
  r = run(plus(pq, {"--max_train_steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("8 example(s)"), std::string::npos) << r.err;

  // Same-name .txt captions (kohya layout, PNG/JPEG/WebP, one 80x48 image), validation images, TensorBoard.
  std::vector<std::string> txt = quick("lora", dir_ / "txt");
  txt[5] = kData + "/train_tiny_txt";
  r = run(plus(txt, {"--max_train_steps", "4", "--validation_prompt", "a red circle", "--validation_prompt",
                     "a blue square", "--num_validation_images", "2", "--validation_steps", "2",
                     "--validation_inference_steps", "3"}));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"validation/step-000002/prompt0-00.png", "validation/step-000002/prompt1-01.png",
                        "validation/step-000002/grid.png", "validation/step-000004/grid.png"})
    EXPECT_TRUE(fs::exists(dir_ / "txt" / f)) << f;
  const auto params = infer::read_png_text((dir_ / "txt" / "validation/step-000002/prompt1-01.png").string());
  ASSERT_TRUE(params.count("parameters"));
  EXPECT_NE(params.at("parameters").find("a blue square\nSteps: 3"), std::string::npos) << params.at("parameters");
  EXPECT_EQ(infer::load_image_u8((dir_ / "txt" / "validation/step-000002/grid.png").string()).shape(), (Shape{64, 64, 3}));
  std::vector<ScalarEvent> events;
  for (const auto& e : fs::directory_iterator(dir_ / "txt" / "logs"))
    if (e.path().filename().string().rfind("events.out.tfevents", 0) == 0) events = read_scalar_events(e.path().string());
  int64_t losses = 0;
  for (const ScalarEvent& e : events) losses += e.tag == "train_loss";
  EXPECT_EQ(losses, 4);

  // SDXL: two text encoders, pooled embeddings, time ids from each image's size and crop; kohya output.
  std::vector<std::string> xl = quick("lora", dir_ / "xl");
  xl[3] = kSdxl;
  r = run(plus(xl, {"--max_train_steps", "3", "--train_text_encoder", "--save_format", "kohya", "--random_flip"}));
  ASSERT_EQ(r.code, 0) << r.err;
  const SafetensorsFile k = SafetensorsFile::open((dir_ / "xl" / "pytorch_lora_weights_kohya.safetensors").string());
  // kohya's SDXL trainer names UNet layers by their sgm path (the tiny UNet's attention is in input block 3).
  EXPECT_TRUE(k.contains("lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight"));
  EXPECT_TRUE(k.contains("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"));
}

TEST_F(E2ESdTrain, CachedLatentsTrainTheSameAsEncodingEveryStep) {
  const std::vector<std::string> extra = {"--max_train_steps", "4", "--center_crop", "--random_flip"};
  RunResult r = run(plus(quick("lora", dir_ / "plain"), extra));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(plus(quick("lora", dir_ / "cached"), plus(extra, {"--cache_latents"})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(same_bytes(dir_ / "plain" / "pytorch_lora_weights.safetensors",
                         dir_ / "cached" / "pytorch_lora_weights.safetensors"));
  int64_t entries = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "cached" / "cache")) entries += e.is_regular_file();
  EXPECT_GT(entries, 0);
  // A second run reads the cache (same result); a changed image gets a new entry.
  r = run(plus(quick("lora", dir_ / "cached"), plus(extra, {"--cache_latents"})));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(same_bytes(dir_ / "plain" / "pytorch_lora_weights.safetensors",
                         dir_ / "cached" / "pytorch_lora_weights.safetensors"));
  int64_t again = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "cached" / "cache")) again += e.is_regular_file();
  EXPECT_EQ(again, entries) << "the second run computed new entries instead of reading the cache";
}

// ---- DreamBooth, textual inversion, buckets ------------------------------------------------------------

TEST_F(E2ESdTrain, DreamBoothWithPriorPreservationGeneratesClassImagesAndLearns) {
  const fs::path out = dir_ / "db", cls = dir_ / "class";
  fs::create_directories(cls);
  // One class image already there: it is kept, and only the missing ones are generated.
  fs::copy_file(kData + "/train_tiny/00_red_circle.png", cls / "existing.png");
  const std::vector<std::string> a = {"--method", "dreambooth-lora", "--pretrained_model_name_or_path", kSd1,
                                      "--instance_data_dir", kData + "/dreambooth_dog", "--instance_prompt",
                                      "a photo of sks dog", "--with_prior_preservation", "--class_data_dir",
                                      cls.string(), "--class_prompt", "a photo of a dog", "--num_class_images", "3",
                                      "--sample_batch_size", "2", "--resolution", "32", "--train_batch_size", "2",
                                      "--max_train_steps", "60", "--learning_rate", "1e-2", "--rank", "8",
                                      "--lora_target", "attn,ff,proj,conv", "--output_dir", out.string(), "--quiet",
                                      "--save_format", "kohya"};
  const RunResult r = run(a);
  ASSERT_EQ(r.code, 0) << r.err;
  int64_t images = 0;
  for (const auto& e : fs::directory_iterator(cls)) images += e.path().extension() == ".png";
  EXPECT_EQ(images, 3);
  EXPECT_TRUE(fs::exists(cls / "existing.png"));
  EXPECT_NE(r.err.find("generating 2 class image(s)"), std::string::npos) << r.err;
  const auto log = read_jsonl(out / "logs" / "train.jsonl");
  ASSERT_EQ(log.size(), 60u);
  const double first = mean_loss(log, 0, 10), last = mean_loss(log, 50, 60);
  std::printf("[ E2ESdTrain ] DreamBooth-LoRA with prior: loss %.4f -> %.4f (x%.2f)\n", first, last, first / last);
  EXPECT_GT(first / last, 1.3);
  EXPECT_EQ(log[0]["examples"].get<int64_t>(), 4);  // 2 instance + 2 class images
  // A second run finds enough class images and generates none.
  const RunResult again = run(plus(a, {"--max_train_steps", "1", "--output_dir", (dir_ / "db2").string()}));
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(again.err.find("generating"), std::string::npos) << again.err;
  // Both files change sd_infer's image.
  for (const char* f : {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"}) {
    const RunResult ri = run({"--model", kSd1, "--lora", (out / f).string(), "--prompt", "a photo of sks dog",
                              "--steps", "3", "--output_dir", (dir_ / "img").string(), "--quiet"}, kInfer);
    EXPECT_EQ(ri.code, 0) << f << ": " << ri.err;
  }
}

TEST_F(E2ESdTrain, TextualInversionLearnsAnEmbeddingThatLoadsInSdInfer) {
  const fs::path out = dir_ / "ti";
  const RunResult r = run({"--method", "textual-inversion", "--pretrained_model_name_or_path", kSd1, "--train_data_dir",
                           kData + "/train_tiny_txt", "--placeholder_token", "<shape>", "--initializer_token", "a",
                           "--num_vectors", "2", "--resolution", "32", "--train_batch_size", "4", "--max_train_steps",
                           "80", "--learning_rate", "5e-2", "--lr_warmup_steps", "0", "--save_steps", "40",
                           "--output_dir", out.string(), "--quiet"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f : {"learned_embeds.safetensors", "shape.safetensors", "learned_embeds-steps-40.safetensors",
                        "learned_embeds-steps-80.safetensors"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const SafetensorsFile emb = SafetensorsFile::open((out / "learned_embeds.safetensors").string());
  ASSERT_TRUE(emb.contains("<shape>"));
  EXPECT_EQ(emb.info("<shape>").shape, (Shape{2, 32}));
  const SafetensorsFile a1111 = SafetensorsFile::open((out / "shape.safetensors").string());
  EXPECT_TRUE(a1111.contains("emb_params"));
  const auto log = read_jsonl(out / "logs" / "train.jsonl");
  const double first = mean_loss(log, 0, 15), last = mean_loss(log, 65, 80);
  std::printf("[ E2ESdTrain ] textual inversion loss %.4f -> %.4f (x%.2f)\n", first, last, first / last);
  EXPECT_LT(last, first) << "the embedding did not learn";
  // The trigger in sd_infer, from both files: different images than the initializer word gives.
  auto image = [&](const std::vector<std::string>& extra, const std::string& prompt, const std::string& name) {
    std::vector<std::string> a = {"--model", kSd1, "--prompt", prompt, "--steps", "4", "--seed", "5", "--output_dir",
                                  (dir_ / name).string(), "--quiet"};
    a.insert(a.end(), extra.begin(), extra.end());
    const RunResult ri = run(a, kInfer);
    EXPECT_EQ(ri.code, 0) << ri.err;
    return infer::load_image_u8((dir_ / name / "5-00000.png").string()).to_vector();
  };
  const auto base = image({}, "a photo of a a", "base");
  const auto learned = image({"--embedding", (out / "learned_embeds.safetensors").string()}, "a photo of a <shape>", "ti");
  const auto a1 = image({"--embedding", (out / "shape.safetensors").string()}, "a photo of a shape", "a1111");
  double change = 0, same = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    change += std::abs(learned[i] - base[i]);
    same += std::abs(learned[i] - a1[i]);
  }
  EXPECT_GT(change / double(base.size()), 0.5);
  EXPECT_LT(same / double(base.size()), 0.05) << "the diffusers and A1111 files give different images";
}

TEST_F(E2ESdTrain, BucketsTrainMixedShapesOneBucketPerBatch) {
  // train_tiny_txt has 64x64 images and one 80x48: with buckets at 64 px and steps of 16 the wide image
  // trains at 80x48-like shape instead of being cropped to a square.
  std::vector<std::string> a = quick("lora", dir_ / "out");
  a[5] = kData + "/train_tiny_txt";
  a[7] = "64";
  const RunResult r = run(plus(a, {"--enable_bucket", "--min_bucket_reso", "32", "--max_bucket_reso", "128",
                                   "--bucket_reso_steps", "16", "--max_train_steps", "6", "--train_batch_size", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("aspect-ratio buckets: 64x64 x3 80x48 x1"), std::string::npos) << r.err;
  int64_t examples = 0;
  for (const auto& line : read_jsonl(dir_ / "out" / "logs" / "train.jsonl")) examples += line["examples"].get<int64_t>();
  // 2 epochs of 3 square + 1 wide (80x48 -> its own 80x48 bucket) examples: batches of 2 and 1 squares and
  // 1 wide, 3 steps per epoch.
  EXPECT_EQ(examples, 8);
}

TEST_F(E2ESdTrain, MethodSpecificBadInputIsAClearError) {
  const fs::path empty = dir_ / "empty";
  fs::create_directories(empty);
  std::vector<std::string> db = {"--method", "dreambooth", "--pretrained_model_name_or_path", kSd1, "--instance_data_dir",
                                 empty.string(), "--instance_prompt", "a photo of sks dog", "--output_dir",
                                 (dir_ / "o").string(), "--quiet"};
  RunResult r = run(db);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--instance_data_dir"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("holds no usable images"), std::string::npos) << r.err;
  db[5] = kImages;
  r = run(plus(db, {"--with_prior_preservation", "--class_data_dir", (dir_ / "c").string()}));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("needs --class_prompt"), std::string::npos) << r.err;
  std::vector<std::string> ti = {"--method", "textual-inversion", "--pretrained_model_name_or_path", kSd1,
                                 "--train_data_dir", kImages, "--output_dir", (dir_ / "t").string(), "--quiet",
                                 "--resolution", "32", "--max_train_steps", "1"};
  r = run(plus(ti, {"--placeholder_token", "a", "--initializer_token", "a"}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already contains the token 'a'"), std::string::npos) << r.err;
  r = run(plus(ti, {"--placeholder_token", "<x>", "--initializer_token", "a photo"}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("must be a single token"), std::string::npos) << r.err;
}

// ---- bad input ---------------------------------------------------------------------------------------

TEST_F(E2ESdTrain, CorruptImagesAreSkippedAndNamed) {
  const fs::path data = dir_ / "data";
  fs::copy(kImages, data);
  { std::ofstream(data / "02_green_triangle.png", std::ios::binary | std::ios::trunc) << "not an image at all"; }
  // A PNG whose header is fine but whose pixel data is cut off: found only when decoding.
  const std::string png = read_text(data / "05_white_triangle.png");
  { std::ofstream(data / "05_white_triangle.png", std::ios::binary | std::ios::trunc) << png.substr(0, png.size() / 2); }
  std::vector<std::string> a = quick("lora", dir_ / "out");
  a[5] = data.string();
  const RunResult r = run(plus(a, {"--max_train_steps", "8"}));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("02_green_triangle.png"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("05_white_triangle.png"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("7 example(s)"), std::string::npos) << r.err;
}

TEST_F(E2ESdTrain, MissingCaptionEmptyDatasetAndMissingVaeAreClearErrors) {
  const fs::path data = dir_ / "txt";
  fs::copy(kData + "/train_tiny_txt", data);
  fs::remove(data / "01_blue_square.txt");
  std::vector<std::string> a = quick("lora", dir_ / "out");
  a[5] = data.string();
  RunResult r = run(a);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no caption file"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("01_blue_square.jpg"), std::string::npos) << r.err;

  fs::create_directories(dir_ / "empty");
  a[5] = (dir_ / "empty").string();
  r = run(a);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("holds no usable images"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("loading"), std::string::npos) << "the model was loaded before the data was checked";

  const fs::path model = dir_ / "novae";
  fs::create_directories(model);
  for (const char* c : {"unet", "text_encoder", "tokenizer", "scheduler"})
    fs::copy(kSd1 + "/" + c, model / c, fs::copy_options::recursive);
  fs::copy_file(kSd1 + "/model_index.json", model / "model_index.json");
  a = quick("lora", dir_ / "out");
  a[3] = model.string();
  r = run(a);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no vae/ component"), std::string::npos) << r.err;
}

TEST_F(E2ESdTrain, ResumeFromAnotherRunIsRefusedWithTheReason) {
  const fs::path out = dir_ / "out";
  RunResult r = run(plus(quick("lora", out), {"--max_train_steps", "2", "--checkpointing_steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(plus(quick("full", out), {"--max_train_steps", "4", "--resume_from_checkpoint", "latest"}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("a checkpoint of another training method"), std::string::npos) << r.err;
  std::vector<std::string> xl = quick("lora", out);
  xl[3] = kSdxl;
  r = run(plus(xl, {"--max_train_steps", "4", "--resume_from_checkpoint", (out / "checkpoint-2").string()}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("a checkpoint of another model"), std::string::npos) << r.err;
  r = run(plus(quick("lora", out), {"--max_train_steps", "4", "--resume_from_checkpoint", (out / "logs").string()}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not a complete checkpoint"), std::string::npos) << r.err;
}

TEST_F(E2ESdTrain, AFullDiskWhileSavingKeepsThePreviousCheckpoint) {
  const fs::path out = dir_ / "out";
  const std::vector<std::string> a = plus(quick("full", out), {"--checkpointing_steps", "2", "--report_to", "none"});
  RunResult r = run(plus(a, {"--max_train_steps", "2"}));
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path ck = out / "checkpoint-2";
  const std::string before = read_text(ck / "optimizer.safetensors");
  // Files may not grow past half the optimizer state: the next checkpoint cannot be written.
  r = run(plus(a, {"--max_train_steps", "4", "--resume_from_checkpoint", "latest"}), kTrain,
          static_cast<long long>(before.size() / 2));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("saving checkpoint"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("optimizer.safetensors"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "checkpoint-4"));
  EXPECT_EQ(read_text(ck / "optimizer.safetensors"), before) << "the previous checkpoint changed";
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "left behind: " << e.path();
  // And the run can go on from it once there is space.
  r = run(plus(a, {"--max_train_steps", "4", "--resume_from_checkpoint", "latest"}));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "checkpoint-4" / "state.json"));
}

TEST_F(E2ESdTrain, ADivergingLossStopsWithAMessage) {
  const RunResult r = run(plus(quick("full", dir_ / "out"), {"--learning_rate", "1e12", "--max_train_steps", "20",
                                                             "--max_grad_norm", "0", "--checkpointing_steps", "1000"}));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("training diverged"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "out" / "unet")) << "a diverged model was saved";
}

}  // namespace
}  // namespace sd::train
