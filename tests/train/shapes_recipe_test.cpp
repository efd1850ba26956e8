// The built-in model's recipe still reproduces it: train/recipes/shapes_tiny/train.sh, run as its
// README says (only shorter), gives the same first losses as the logs of the run that made
// infer/default_model. Stage 3 (the VAE) starts from the recipe's random init; stage 4 (UNet + text
// encoder) from that init with the shipped VAE, as it did then. A change to the data generator, the
// initialiser, the trainer's data order, noise or losses, or to the recipe's flags without retraining
// the model, fails here.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

// The first n losses of a logs/train.jsonl.
std::vector<double> losses(const fs::path& jsonl, size_t n) {
  std::vector<double> v;
  for (const nlohmann::json& j : test::read_jsonl(jsonl)) {
    if (v.size() == n) break;
    v.push_back(j.at("loss").get<double>());
  }
  return v;
}

// Runs the recipe script with `env` added; returns its exit code (output in dir/NAME.log).
int run_recipe(const fs::path& dir, const std::string& name, const std::vector<std::pair<std::string, std::string>>& env) {
  const std::string script = std::string(SD_SOURCE_DIR) + "/train/recipes/shapes_tiny/train.sh";
  const std::string log = (dir / (name + ".log")).string();
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (std::freopen(log.c_str(), "w", stdout) == nullptr || std::freopen(log.c_str(), "a", stderr) == nullptr)
      _exit(127);
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    ::setenv("SD_BIN", (std::string(SD_BINARY_DIR) + "/tools").c_str(), 1);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    ::execl("/bin/sh", "sh", script.c_str(), (dir / "run").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void expect_same_start(const fs::path& got, const fs::path& shipped, const char* stage) {
  const std::vector<double> a = losses(got, 3), b = losses(shipped, 3);
  ASSERT_EQ(a.size(), 3u) << got;
  ASSERT_EQ(b.size(), 3u) << shipped;
  for (size_t i = 0; i < 3; ++i) {
    std::printf("[ ShapesRecipe ] %s step %zu: loss %.7f, shipped log %.7f\n", stage, i + 1, a[i], b[i]);
    // Same binary and data: equal up to the order of parallel sums (thread counts may differ).
    EXPECT_NEAR(a[i], b[i], 1e-4 * std::abs(b[i]) + 1e-7) << stage << " step " << i + 1;
  }
}

TEST(E2EShapesRecipe, FirstStepsOfBothStagesGiveTheShippedModelsLosses) {
  const fs::path model = std::string(SD_SOURCE_DIR) + "/infer/default_model";
  const fs::path dir = fs::temp_directory_path() / ("shapes_recipe_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);

  ASSERT_EQ(run_recipe(dir, "vae", {{"STAGES", "data init vae"}, {"VAE_STEPS", "3"}}), 0)
      << "see " << (dir / "vae.log");
  expect_same_start(dir / "run/vae/logs/train.jsonl", model / "logs/vae_train.jsonl", "vae");

  // Stage 4 started from the trained VAE: put the shipped one in place of the 3-step one.
  fs::remove_all(dir / "run/vae/vae");
  fs::copy(model / "vae", dir / "run/vae/vae", fs::copy_options::recursive);
  ASSERT_EQ(run_recipe(dir, "unet", {{"STAGES", "unet"}, {"UNET_STEPS", "3"}}), 0) << "see " << (dir / "unet.log");
  expect_same_start(dir / "run/model/logs/train.jsonl", model / "logs/unet_train.jsonl", "unet");
  if (!HasFailure()) fs::remove_all(dir);
}

}  // namespace
}  // namespace sd::train
