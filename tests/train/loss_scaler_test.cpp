// Dynamic loss scaling: a found-inf sequence worked out by hand, float32 overflow and underflow of
// the scale, unscaling, checkpoint state, and (Golden*) torch.amp.GradScaler's scales for recorded
// sequences (tests/data/train_schedules/loss_scaler.json, made by
// tests/golden/make_train_schedule_goldens.py with torch 2.15.0).
#include "train/loss_scaler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::train {
namespace {

TEST(LossScaler, DefaultsAreGradScalers) {
  LossScaler s;
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.inv_scale(), 1.0 / 65536.0);
  EXPECT_EQ(s.config().growth_factor, 2.0);
  EXPECT_EQ(s.config().backoff_factor, 0.5);
  EXPECT_EQ(s.config().growth_interval, 2000);
  for (int i = 0; i < 1999; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.growth_tracker(), 1999);
  s.update(false);  // the 2000th clean step in a row
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.growth_tracker(), 0);
}

TEST(LossScaler, HandDerivedSequence) {
  LossScalerConfig cfg;
  cfg.init_scale = 1024;
  cfg.growth_interval = 3;
  LossScaler s(cfg);
  // clean clean clean -> x2; inf -> /2 and the run restarts; two clean then inf: no growth.
  const bool inf[] = {false, false, false, true, false, false, true, true, false, false, false, false};
  const double want_scale[] = {1024, 1024, 2048, 1024, 1024, 1024, 512, 256, 256, 256, 512, 512};
  const int64_t want_tracker[] = {1, 2, 0, 0, 1, 2, 0, 0, 1, 2, 0, 1};
  const int64_t want_skipped[] = {0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 3};
  for (size_t i = 0; i < std::size(inf); ++i) {
    s.update(inf[i]);
    EXPECT_EQ(s.scale(), want_scale[i]) << "after update " << i;
    EXPECT_EQ(s.growth_tracker(), want_tracker[i]) << "after update " << i;
    EXPECT_EQ(s.skipped_steps(), want_skipped[i]) << "after update " << i;
  }
}

TEST(LossScaler, Float32Limits) {
  LossScalerConfig cfg;
  cfg.init_scale = std::ldexp(1.0, 127);
  cfg.growth_interval = 1;
  LossScaler big(cfg);
  big.update(false);  // 2^128 overflows float32: the scale stays, the run restarts
  EXPECT_EQ(big.scale(), std::ldexp(1.0, 127));
  EXPECT_EQ(big.growth_tracker(), 0);
  cfg.init_scale = std::ldexp(1.0, -148);
  LossScaler small(cfg);
  small.update(true);
  EXPECT_EQ(small.scale(), std::ldexp(1.0, -149));  // the smallest float32 subnormal
  small.update(true);
  EXPECT_EQ(small.scale(), 0.0);  // torch does not guard against this either
  // Factors that are not powers of two: the products are rounded to float32.
  cfg = {};
  cfg.init_scale = 1000.1;
  cfg.growth_factor = 3.0;
  cfg.backoff_factor = 0.3;
  cfg.growth_interval = 1;
  LossScaler odd(cfg);
  EXPECT_EQ(odd.scale(), double(1000.1f));
  odd.update(false);
  EXPECT_EQ(odd.scale(), double(float(double(1000.1f) * 3.0)));
  odd.update(true);
  EXPECT_EQ(odd.scale(), double(float(double(float(double(1000.1f) * 3.0)) * 0.3)));
}

TEST(LossScaler, UnscaleFindsInf) {
  LossScalerConfig cfg;
  cfg.init_scale = 8;
  LossScaler s(cfg);
  std::vector<Tensor> grads = {from_vector({8, 16, -4}, {3}), from_vector({2}, {1}, DType::F16)};
  EXPECT_FALSE(s.unscale_(grads));
  EXPECT_EQ(grads[0].to_vector(), (std::vector<double>{1, 2, -0.5}));
  EXPECT_EQ(grads[1].to_vector(), (std::vector<double>{0.25}));
  grads[1] = from_vector({std::numeric_limits<double>::infinity()}, {1}, DType::F16);
  EXPECT_TRUE(s.unscale_(grads));
}

TEST(LossScaler, StateAndValidation) {
  LossScalerConfig cfg;
  cfg.growth_interval = 4;
  LossScaler s(cfg);
  s.update(true);
  s.update(false);
  s.update(false);
  const LossScalerState st = s.state();
  EXPECT_EQ(st.scale, 32768.0);
  EXPECT_EQ(st.growth_tracker, 2);
  EXPECT_EQ(st.skipped_steps, 1);
  LossScaler r(cfg);
  r.load_state(st);
  s.update(false);
  r.update(false);
  s.update(false);
  r.update(false);
  EXPECT_EQ(r.scale(), 65536.0);
  EXPECT_EQ(r.scale(), s.scale());
  EXPECT_EQ(r.growth_tracker(), s.growth_tracker());
  EXPECT_EQ(r.skipped_steps(), 1);

  for (const LossScalerState& bad : {LossScalerState{0.0, 0, 0}, LossScalerState{-1.0, 0, 0},
                                     LossScalerState{std::numeric_limits<double>::infinity(), 0, 0},
                                     LossScalerState{0.1, 0, 0},  // not a float32 value
                                     LossScalerState{1024.0, 4, 0}, LossScalerState{1024.0, -1, 0},
                                     LossScalerState{1024.0, 0, -1}}) {
    EXPECT_THROW(r.load_state(bad), Error) << bad.scale << " " << bad.growth_tracker << " " << bad.skipped_steps;
    EXPECT_EQ(r.scale(), 65536.0);
  }
  auto make = [](double init, double growth, double backoff, int64_t interval) {
    return LossScaler(LossScalerConfig{init, growth, backoff, interval});
  };
  EXPECT_THROW(make(0, 2, 0.5, 10), Error);
  EXPECT_THROW(make(1e39, 2, 0.5, 10), Error);  // beyond float32
  EXPECT_THROW(make(1, 1.0, 0.5, 10), Error);
  EXPECT_THROW(make(1, 2, 1.0, 10), Error);
  EXPECT_THROW(make(1, 2, 0.0, 10), Error);
  EXPECT_THROW(make(1, 2, 0.5, 0), Error);
}

TEST(GoldenLossScaler, MatchesTorchGradScaler) {
  const std::string path = std::string(SD_TEST_DATA_DIR) + "/train_schedules/loss_scaler.json";
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << "cannot read " << path;
  const nlohmann::json root = nlohmann::json::parse(f);
  int cases = 0;
  for (const auto& c : root.at("cases")) {
    const auto& j = c.at("config");
    LossScaler s(LossScalerConfig{j.at("init_scale").get<double>(), j.at("growth_factor").get<double>(),
                                  j.at("backoff_factor").get<double>(), j.at("growth_interval").get<int64_t>()});
    const auto flags = c.at("found_inf").get<std::vector<bool>>();
    const auto scales = c.at("scale").get<std::vector<double>>();
    const auto trackers = c.at("growth_tracker").get<std::vector<int64_t>>();
    const auto skipped = c.at("skipped").get<std::vector<bool>>();
    int64_t skipped_count = 0;
    for (size_t i = 0; i < flags.size(); ++i) {
      EXPECT_EQ(skipped[i], flags[i]);  // torch skipped exactly the optimizer steps with inf gradients
      s.update(flags[i]);
      skipped_count += flags[i];
      EXPECT_EQ(s.scale(), scales[i]) << j.dump() << " update " << i;
      EXPECT_EQ(s.growth_tracker(), trackers[i]) << j.dump() << " update " << i;
      EXPECT_EQ(s.skipped_steps(), skipped_count);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 3);
}

}  // namespace
}  // namespace sd::train
