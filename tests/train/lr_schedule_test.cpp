// Learning-rate schedules: hand-derived values of each formula, the checks of validate(), and
// (Golden*) the learning rate the optimizer holds at every step of diffusers' get_scheduler
// schedules (tests/data/train_schedules/lr_schedules.json, made by
// tests/golden/make_train_schedule_goldens.py with diffusers 0.42.1 / torch 2.15.0).
#include "train/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "runtime/error.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

LrScheduleConfig make(const std::string& name, int64_t warmup, int64_t total, double lr = 1e-4) {
  LrScheduleConfig c;
  c.name = name;
  c.base_lr = lr;
  c.warmup_steps = warmup;
  c.total_steps = total;
  return c;
}

TEST(LrSchedule, ConstantAndWarmup) {
  const auto c = make("constant", 10, 100);
  for (int64_t k : {0, 1, 9, 10, 99, 1000}) EXPECT_EQ(lr_at(c, k), 1e-4) << k;  // warmup ignored
  const auto w = make("constant_with_warmup", 10, 100);
  EXPECT_EQ(lr_at(w, 0), 0.0);  // the first step of a warmup runs at lr 0, as in diffusers
  EXPECT_EQ(lr_at(w, 1), 1e-4 * (1.0 / 10.0));
  EXPECT_EQ(lr_at(w, 5), 1e-4 * 0.5);
  EXPECT_EQ(lr_at(w, 10), 1e-4);
  EXPECT_EQ(lr_at(w, 500), 1e-4);
  EXPECT_EQ(lr_at(make("constant_with_warmup", 0, 0), 0), 1e-4);
}

TEST(LrSchedule, Linear) {
  const auto c = make("linear", 10, 110);
  EXPECT_EQ(lr_at(c, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 4), 0.4e-4);
  EXPECT_EQ(lr_at(c, 10), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 60), 0.5e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 109), 0.01e-4);
  EXPECT_EQ(lr_at(c, 110), 0.0);
  EXPECT_EQ(lr_at(c, 200), 0.0);  // clamped at 0 past the end
}

TEST(LrSchedule, CosineIsHalfACosineWhateverNumCycles) {
  auto c = make("cosine", 0, 100);
  EXPECT_EQ(lr_at(c, 0), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 50), 0.5e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 25), 1e-4 * 0.5 * (1 + std::cos(std::numbers::pi * 0.25)));
  EXPECT_EQ(lr_at(c, 100), 0.0);
  // Past the end the cosine comes back up (diffusers does not clamp the progress).
  EXPECT_DOUBLE_EQ(lr_at(c, 150), 0.5e-4);
  // get_scheduler does not pass num_cycles to the cosine schedule.
  for (double cycles : {0.5, 1.0, 3.0}) {
    c.num_cycles = cycles;
    EXPECT_DOUBLE_EQ(lr_at(c, 50), 0.5e-4) << cycles;
  }
}

TEST(LrSchedule, CosineWithRestarts) {
  auto c = make("cosine_with_restarts", 10, 110);
  c.num_cycles = 2;
  EXPECT_DOUBLE_EQ(lr_at(c, 5), 0.5e-4);  // warmup
  EXPECT_EQ(lr_at(c, 10), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 35), 0.5e-4);  // half way through the first cycle
  EXPECT_EQ(lr_at(c, 60), 1e-4);           // restart
  EXPECT_DOUBLE_EQ(lr_at(c, 85), 0.5e-4);
  EXPECT_EQ(lr_at(c, 110), 0.0);  // progress >= 1
  EXPECT_EQ(lr_at(c, 150), 0.0);
  c.num_cycles = 1;
  EXPECT_DOUBLE_EQ(lr_at(c, 60), 0.5e-4);
}

TEST(LrSchedule, Polynomial) {
  auto c = make("polynomial", 10, 110);
  EXPECT_DOUBLE_EQ(lr_at(c, 5), 0.5e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 10), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(c, 60), (1e-4 - 1e-7) * 0.5 + 1e-7);
  EXPECT_DOUBLE_EQ(lr_at(c, 110), 1e-7);  // lr_end at the end and after
  EXPECT_DOUBLE_EQ(lr_at(c, 111), 1e-7);
  c.power = 2;
  EXPECT_DOUBLE_EQ(lr_at(c, 60), (1e-4 - 1e-7) * 0.25 + 1e-7);
  c.lr_end = 1e-5;
  EXPECT_DOUBLE_EQ(lr_at(c, 60), (1e-4 - 1e-5) * 0.25 + 1e-5);
}

TEST(LrSchedule, PiecewiseConstant) {
  auto c = make("piecewise_constant", 0, 0);
  c.step_rules = "1:10,0.1:20,0.01:30,0.005";
  EXPECT_EQ(lr_at(c, 0), 1e-4 * 1);
  EXPECT_EQ(lr_at(c, 9), 1e-4 * 1);
  EXPECT_EQ(lr_at(c, 10), 1e-4 * 0.1);
  EXPECT_EQ(lr_at(c, 29), 1e-4 * 0.01);
  EXPECT_EQ(lr_at(c, 30), 1e-4 * 0.005);
  c.step_rules = " 0.5 : 50, 2:25,0.25:50,  0.125 ";  // unsorted; the repeated bound keeps the last value
  EXPECT_EQ(lr_at(c, 0), 1e-4 * 2);
  EXPECT_EQ(lr_at(c, 25), 1e-4 * 0.25);
  EXPECT_EQ(lr_at(c, 50), 1e-4 * 0.125);
  c.step_rules = "0.3";  // only the final multiplier
  EXPECT_EQ(lr_at(c, 7), 1e-4 * 0.3);
}

TEST(LrSchedule, Validation) {
  const std::string unknown = test::error_of([] { validate(make("cosine_annealing", 0, 10)); });
  EXPECT_NE(unknown.find("cosine_annealing"), std::string::npos) << unknown;
  for (const auto& n : lr_scheduler_names()) EXPECT_NE(unknown.find(n), std::string::npos) << n;
  EXPECT_EQ(lr_scheduler_names().size(), 7u);
  for (const auto& n : lr_scheduler_names()) {
    auto c = make(n, 10, 100);
    c.step_rules = "1:5,0.5";
    EXPECT_NO_THROW(validate(c)) << n;
    EXPECT_THROW(lr_at(c, -1), Error) << n;
    c.warmup_steps = -1;
    EXPECT_THROW(validate(c), Error) << n;
    c.warmup_steps = 10;
    c.total_steps = -5;
    EXPECT_THROW(validate(c), Error) << n;
    c.total_steps = 100;
    c.base_lr = std::nan("");
    EXPECT_THROW(validate(c), Error) << n;
  }
  auto p = make("polynomial", 10, 100, 1e-7);  // lr_end must be below the learning rate
  EXPECT_NE(test::error_of([&] { validate(p); }).find("lr_end"), std::string::npos);
  EXPECT_THROW(validate(make("polynomial", 10, 10)), Error);  // would divide by zero at step 10
  EXPECT_NO_THROW(validate(make("polynomial", 30, 20)));      // warmup past the end works in diffusers
  p = make("polynomial", 10, 100);
  p.power = -1;
  EXPECT_THROW(validate(p), Error);
  auto pw = make("piecewise_constant", 0, 0);
  for (const char* bad : {"", "1:10,", "1:10:20,0.5", "x:10,0.5", "1:1.5,0.5", "1:10,0.5,", "1;10,0.5"}) {
    pw.step_rules = bad;
    EXPECT_THROW(validate(pw), Error) << bad;
  }
}

// ---- against diffusers -------------------------------------------------------------------------

nlohmann::json load_json(const std::string& name) {
  const std::string path = std::string(SD_TEST_DATA_DIR) + "/train_schedules/" + name;
  std::ifstream f(path);
  if (!f.good()) ADD_FAILURE() << "cannot read " << path;
  return nlohmann::json::parse(f);
}

TEST(GoldenLrSchedule, MatchesDiffusersGetScheduler) {
  const nlohmann::json root = load_json("lr_schedules.json");
  int cases = 0, values = 0, exact = 0;
  for (const auto& c : root.at("cases")) {
    LrScheduleConfig cfg;
    cfg.name = c.at("name").get<std::string>();
    cfg.base_lr = c.at("base_lr").get<double>();
    cfg.warmup_steps = c.at("warmup_steps").get<int64_t>();
    cfg.total_steps = c.at("total_steps").get<int64_t>();
    cfg.num_cycles = c.at("num_cycles").get<double>();
    cfg.power = c.at("power").get<double>();
    if (c.contains("step_rules")) cfg.step_rules = c.at("step_rules").get<std::string>();
    const auto steps = c.at("steps").get<std::vector<int64_t>>();
    const auto lrs = c.at("lr").get<std::vector<double>>();
    ASSERT_EQ(steps.size(), lrs.size());
    const std::string what = cfg.name + " warmup " + std::to_string(cfg.warmup_steps) + " total " +
                             std::to_string(cfg.total_steps) + " cycles " + std::to_string(cfg.num_cycles) +
                             " power " + std::to_string(cfg.power) + " rules \"" + cfg.step_rules + "\"";
    // Without cos or a non-trivial pow, nothing depends on the libm: the doubles must be identical.
    const bool must_be_exact = !(cfg.name == "cosine" || cfg.name == "cosine_with_restarts" ||
                                 (cfg.name == "polynomial" && cfg.power != 1.0));
    for (size_t i = 0; i < steps.size(); ++i) {
      const double got = lr_at(cfg, steps[i]), want = lrs[i];
      EXPECT_LE(std::abs(got - want), 1e-12 * std::abs(want)) << what << " step " << steps[i] << ": " << got
                                                              << " vs diffusers " << want;
      if (must_be_exact) EXPECT_EQ(got, want) << what << " step " << steps[i];
      exact += got == want;
      ++values;
    }
    ++cases;
  }
  EXPECT_GE(cases, 25);
  // Same double operations in the same order: with glibc every value is bit-identical (the
  // tolerance above allows for another libm's cos and pow).
  std::printf("[ lr ] %d cases, %d of %d learning rates bit-identical to diffusers\n", cases, exact, values);
}

}  // namespace
}  // namespace sd::train
