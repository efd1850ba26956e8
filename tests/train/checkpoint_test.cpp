// Training checkpoints: round trip, atomic replacement (a save that fails midway leaves no checkpoint and
// changes nothing else),
// "latest", pruning, and the fingerprint check that refuses a checkpoint of another run with reasons.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

class TrainCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_ckpt_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CheckpointContents contents(double v, int64_t n = 1000) const {
    CheckpointContents c;
    c.state["global_step"] = 3;
    c.state["fingerprint"] = {{"method", "lora"}, {"model", "/m"}};
    c.files.push_back({"optimizer.safetensors", "", {{"exp_avg.unet.w", full({n}, v / 2)}}, {}, {}, ""});
    c.files.push_back({"unet/diffusion_pytorch_model.safetensors", "unet.", {{"w", full({n}, v)}}, {}, {}, ""});
    c.files.push_back({"unet_ema/diffusion_pytorch_model.safetensors", "ema.unet.", {{"w", full({n}, v * 3)}}, {}, {}, ""});
    return c;
  }
  fs::path dir_;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_F(TrainCheckpoint, SaveLoadRoundTrip) {
  const std::string path = save_checkpoint(dir_.string(), 3, contents(1.5));
  EXPECT_EQ(fs::path(path).filename(), "checkpoint-3");
  const LoadedCheckpoint ck = load_checkpoint(path);
  EXPECT_EQ(ck.state["global_step"], 3);
  EXPECT_EQ(ck.state["step"], 3);
  ASSERT_EQ(ck.tensors.size(), 3u);
  std::map<std::string, double> first;
  for (const auto& [name, t] : ck.tensors) first[name] = t.to_vector()[999];
  EXPECT_EQ(first, (std::map<std::string, double>{{"exp_avg.unet.w", 0.75}, {"unet.w", 1.5}, {"ema.unet.w", 4.5}}));
  // The weights are diffusers component files with their own names.
  EXPECT_TRUE(SafetensorsFile::open(path + "/unet/diffusion_pytorch_model.safetensors").contains("w"));
}

TEST_F(TrainCheckpoint, AFailedSaveLeavesNoCheckpointAndTheOthersIntact) {
  save_checkpoint(dir_.string(), 2, contents(1.0));
  const std::string before = read_file(dir_ / "checkpoint-2" / "optimizer.safetensors");
  // A write that fails after the optimizer and EMA files are written (the full-disk case runs the binary
  // under a file-size limit in tests/train/sd_train_e2e_test.cpp).
  CheckpointContents c = contents(2.0);
  CheckpointFile extra;
  extra.path = "extra.safetensors";
  extra.write = [](const std::string& p) { SD_FAIL("cannot write '", p, "': No space left on device"); };
  c.files.push_back(extra);
  try {
    save_checkpoint(dir_.string(), 4, c);
    FAIL() << "the save succeeded";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("extra.safetensors"), std::string::npos) << m;
    EXPECT_NE(m.find("earlier checkpoints are intact"), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(dir_ / "checkpoint-4"));
  EXPECT_EQ(read_file(dir_ / "checkpoint-2" / "optimizer.safetensors"), before);
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  EXPECT_EQ(*find_checkpoint(dir_.string(), "latest"), (dir_ / "checkpoint-2").string());
}

TEST_F(TrainCheckpoint, LatestIgnoresTemporariesAndPruneKeepsTheNewest) {
  EXPECT_FALSE(find_checkpoint(dir_.string(), "latest").has_value());
  for (int64_t s : {5, 10, 15, 20}) save_checkpoint(dir_.string(), s, contents(double(s)));
  fs::create_directories(dir_ / "checkpoint-25.tmp-123");   // a save killed midway
  fs::create_directories(dir_ / "checkpoint-30");           // no state.json: not a checkpoint
  EXPECT_EQ(*find_checkpoint(dir_.string(), "latest"), (dir_ / "checkpoint-20").string());
  prune_checkpoints(dir_.string(), 2);
  EXPECT_FALSE(fs::exists(dir_ / "checkpoint-5"));
  EXPECT_FALSE(fs::exists(dir_ / "checkpoint-10"));
  EXPECT_TRUE(fs::exists(dir_ / "checkpoint-15"));
  EXPECT_TRUE(fs::exists(dir_ / "checkpoint-20"));
  EXPECT_THROW(find_checkpoint(dir_.string(), (dir_ / "checkpoint-30").string()), Error);
  EXPECT_THROW(find_checkpoint(dir_.string(), (dir_ / "nope").string()), Error);
}

TEST_F(TrainCheckpoint, ResavingAStepReplacesItWhole) {
  save_checkpoint(dir_.string(), 7, contents(1.0));
  save_checkpoint(dir_.string(), 7, contents(9.0));
  for (const auto& [name, t] : load_checkpoint((dir_ / "checkpoint-7").string()).tensors)
    if (name == "unet.w") EXPECT_EQ(t.to_vector()[0], 9.0);
}

TEST_F(TrainCheckpoint, DamagedCheckpointsAreNamedErrors) {
  save_checkpoint(dir_.string(), 1, contents(1.0));
  { std::ofstream(dir_ / "checkpoint-1" / "state.json", std::ios::trunc) << "{broken"; }
  try {
    load_checkpoint((dir_ / "checkpoint-1").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("state.json"), std::string::npos) << e.what();
  }
  save_checkpoint(dir_.string(), 2, contents(1.0));
  fs::resize_file(dir_ / "checkpoint-2" / "optimizer.safetensors", 100);
  try {
    load_checkpoint((dir_ / "checkpoint-2").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.safetensors"), std::string::npos) << e.what();
  }
}

TEST(TrainCheckpointFingerprint, EveryDifferenceIsListedWithItsReason) {
  nlohmann::json a = {{"method", "lora"}, {"model", "/a"}, {"seed", 1}, {"train_batch_size", 2}};
  nlohmann::json b = {{"method", "full"}, {"model", "/b"}, {"seed", 1}, {"train_batch_size", 4}};
  EXPECT_NO_THROW(check_fingerprint(a, a, "ck"));
  try {
    check_fingerprint(a, b, "ck");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("another training method"), std::string::npos) << m;
    EXPECT_NE(m.find("another model"), std::string::npos) << m;
    EXPECT_NE(m.find("another batch size"), std::string::npos) << m;
    EXPECT_EQ(m.find("seed"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace sd::train
