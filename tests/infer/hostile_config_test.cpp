// The hostile config.json / scheduler_config.json / model_index.json / tokenizer_config.json
// values of the untrusted-files report: each is refused before anything is allocated from it,
// with the file and the key in the message -- no bare std::bad_alloc, no undefined cast, no
// silently wrong image.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "infer/pipeline.h"
#include "infer/scheduler_config.h"
#include "models/clip/clip_text_config.h"
#include "models/unet/unet_config.h"
#include "models/vae/vae_config.h"
#include "tests/test_util.h"

namespace sd {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::peak_rss_mib;
using json = nlohmann::json;

// Each message must name the source and the key.
void expect_refused(const std::string& msg, const std::string& source, const std::string& key) {
  EXPECT_NE(msg.find(source), std::string::npos) << "no source '" << source << "' in: " << msg;
  EXPECT_NE(msg.find("\"" + key + "\""), std::string::npos) << "no key '" << key << "' in: " << msg;
}

std::string with(const std::string& base_json, const std::string& key, const json& value) {
  json j = json::parse(base_json);
  j[key] = value;
  return j.dump();
}

TEST(HostileConfig, UNetSizesAreRangeCheckedBeforeAllocation) {
  const std::string base = test::read_text(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1/unet/config.json");
  ASSERT_FALSE(base.empty());
  const double before = peak_rss_mib();
  struct Case {
    const char* key;
    json value;
  };
  const Case cases[] = {
      {"layers_per_block", 1e9},          {"layers_per_block", -1},
      {"transformer_layers_per_block", 1e9}, {"sample_size", 1e30},
      {"norm_eps", -1e-5},                {"norm_eps", 0},
      {"block_out_channels", json::array({32, 1e12})},
      {"attention_head_dim", 1e9},        {"cross_attention_dim", -5},
      {"norm_num_groups", 1e9},           {"in_channels", 1e9},
  };
  for (const Case& c : cases)
    expect_refused(error_of([&] { nn::UNetConfig::from_json_string(with(base, c.key, c.value), "'unet/config.json'"); }),
                   "unet/config.json", c.key);
  EXPECT_LT(peak_rss_mib() - before, 100.0);
  expect_refused(error_of([&] { nn::UNetConfig::from_json_string(with(base, "_class_name", 5), "'u.json'"); }), "u.json",
                 "_class_name");
}

TEST(HostileConfig, VaeAndTextEncoderValuesAreRangeChecked) {
  const std::string vae = test::read_text(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1/vae/config.json");
  for (const json& v : {json(-0.18215), json(0), json(1e300)})
    expect_refused(error_of([&] { nn::VaeConfig::from_json_string(with(vae, "scaling_factor", v), "'vae/config.json'"); }),
                   "vae/config.json", "scaling_factor");
  expect_refused(error_of([&] { nn::VaeConfig::from_json_string(with(vae, "layers_per_block", 1e9), "'v.json'"); }),
                 "v.json", "layers_per_block");
  expect_refused(error_of([&] { nn::VaeConfig::from_json_string(with(vae, "latents_std", json::array({1, 0, 1, 1})),
                                                                "'v.json'"); }),
                 "v.json", "latents_std");

  const fs::path te = fs::temp_directory_path() / ("sd_hostile_te_" + std::to_string(::getpid()) + ".json");
  const std::string text = test::read_text(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1/text_encoder/config.json");
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"num_hidden_layers", 1e9}, {"num_hidden_layers", 1000000000}, {"vocab_size", -1},
           {"max_position_embeddings", 18446744073709551615ull}, {"layer_norm_eps", -1e-5}}) {
    test::write_text(te, with(text, key, value));
    expect_refused(error_of([&] { nn::ClipTextConfig::from_file(te.string()); }), te.string(), key);
  }
  fs::remove(te);
}

TEST(HostileConfig, SchedulerValuesAreRangeChecked) {
  const std::string base = test::read_text(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1/scheduler/scheduler_config.json");
  ASSERT_FALSE(base.empty());
  const double before = peak_rss_mib();
  struct Case {
    const char* key;
    json value;
  };
  const Case cases[] = {{"num_train_timesteps", 1e9}, {"num_train_timesteps", 1e30}, {"beta_start", 1.0},
                        {"beta_start", -1},           {"beta_end", 2.0},            {"beta_end", "NaN"},
                        {"steps_offset", -3}};
  for (const Case& c : cases)
    expect_refused(error_of([&] { infer::SchedulerConfig::from_json_string(with(base, c.key, c.value), "sched.json"); }),
                   "sched.json", c.key);
  EXPECT_LT(peak_rss_mib() - before, 100.0);
  // trained_betas all 2.0 (with as many entries as timesteps).
  json j = json::parse(base);
  j["num_train_timesteps"] = 10;
  j["trained_betas"] = std::vector<double>(10, 2.0);
  expect_refused(error_of([&] { infer::SchedulerConfig::from_json_string(j.dump(), "sched.json"); }), "sched.json",
                 "trained_betas");
  // An unknown class in the file, with no class asked for: named with the file.
  const std::string unknown = error_of([&] {
    infer::SchedulerConfig::from_json_string(with(base, "_class_name", "NoSuchScheduler"), "sched.json");
  });
  EXPECT_NE(unknown.find("sched.json"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("NoSuchScheduler"), std::string::npos) << unknown;
  EXPECT_NE(error_of([&] { infer::SchedulerConfig::from_json_string(with(base, "_class_name", 5), "s.json", "DDIMScheduler"); })
                .find("not a scheduler class name"),
            std::string::npos);
}

// A copy of the tiny SD1 pipeline with one JSON file changed.
class HostilePipelineFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_hostile_pipe_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::copy(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1", dir_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void edit(const std::string& file, const std::function<void(json&)>& f) {
    json j = json::parse(test::read_text(dir_ / file));
    f(j);
    test::write_text(dir_ / file, j.dump());
  }
  std::string load_error() {
    return error_of([&] { infer::Pipeline::load(dir_.string()); });
  }
  fs::path dir_;
};

TEST_F(HostilePipelineFolder, ModelIndexTypesAndClassesAreChecked) {
  ASSERT_EQ(load_error(), "");  // the unchanged copy loads
  edit("model_index.json", [](json& j) { j["_class_name"] = 5; });
  expect_refused(load_error(), "model_index.json", "_class_name");
  edit("model_index.json", [](json& j) {
    j["_class_name"] = "StableDiffusionPipeline";
    j["unet"] = {"diffusers", "UNet3DConditionModel"};
  });
  expect_refused(load_error(), "model_index.json", "unet");
  edit("model_index.json", [](json& j) {
    j["unet"] = {"diffusers", "UNet2DConditionModel"};
    j["scheduler"] = {"diffusers", "NotAThing"};
  });
  expect_refused(load_error(), "model_index.json", "scheduler");
}

TEST_F(HostilePipelineFolder, SchedulerFileClassAndTokenizerLengthAreChecked) {
  edit("scheduler/scheduler_config.json", [](json& j) { j["_class_name"] = "NoSuchScheduler"; });
  std::string msg = load_error();
  EXPECT_NE(msg.find("scheduler_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("NoSuchScheduler"), std::string::npos) << msg;
  edit("scheduler/scheduler_config.json", [](json& j) { j["_class_name"] = "PNDMScheduler"; });
  for (const json& v : {json(0), json(1000000000)}) {
    edit("tokenizer/tokenizer_config.json", [&](json& j) { j["model_max_length"] = v; });
    expect_refused(load_error(), "tokenizer_config.json", "model_max_length");
  }
  // transformers' "unset" value is not an error.
  edit("tokenizer/tokenizer_config.json", [](json& j) { j["model_max_length"] = 1e30; });
  EXPECT_EQ(load_error(), "");
}

}  // namespace
}  // namespace sd
