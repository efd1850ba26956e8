// EMA of weights: EMAModel's decay schedule by hand, the averaging against a float64 loop, copy_to /
// store / restore, checkpoint state, offloading, the fixed point of a constant parameter, and
// (Golden*) the decays and averages of diffusers' EMAModel (tests/data/train_schedules/ema.json,
// made by tests/golden/make_train_schedule_goldens.py with diffusers 0.42.1 / torch 2.15.0).
#include "train/ema.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/error.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

using test::random_tensor;

TEST(Ema, DecayByHand) {
  EmaConfig c;
  EXPECT_EQ(ema_decay(c, 0), 0.0);
  EXPECT_EQ(ema_decay(c, 1), 0.0);  // the first update copies the parameters
  EXPECT_EQ(ema_decay(c, 2), 2.0 / 11.0);
  EXPECT_EQ(ema_decay(c, 11), 11.0 / 20.0);
  EXPECT_EQ(ema_decay(c, 8991), 8991.0 / 9000.0);
  EXPECT_EQ(ema_decay(c, 1000000), 0.9999);  // capped
  c.update_after_step = 5;
  EXPECT_EQ(ema_decay(c, 6), 0.0);
  EXPECT_EQ(ema_decay(c, 7), 2.0 / 11.0);
  c = {};
  c.use_ema_warmup = true;
  c.power = 0.75;
  EXPECT_EQ(ema_decay(c, 2), 1 - std::pow(2.0, -0.75));
  c.inv_gamma = 2.0;
  EXPECT_EQ(ema_decay(c, 3), 1 - std::pow(2.0, -0.75));
  c = {};
  c.min_decay = 0.5;
  EXPECT_EQ(ema_decay(c, 1), 0.0);  // before min_decay applies, as in diffusers
  EXPECT_EQ(ema_decay(c, 2), 0.5);
  c.decay = 1.5;
  EXPECT_THROW(ema_decay(c, 2), Error);
  c = {};
  c.inv_gamma = 0;
  EXPECT_THROW(validate(c), Error);
  c = {};
  c.update_after_step = -1;
  EXPECT_THROW(validate(c), Error);
}

// Float64 reference of diffusers' update s -= (1 - d) * (s - p).
void reference_step(std::vector<std::vector<double>>& ema, const std::vector<Tensor>& params, double decay) {
  for (size_t k = 0; k < ema.size(); ++k) {
    const std::vector<double> p = params[k].to_vector();
    for (size_t i = 0; i < p.size(); ++i) ema[k][i] -= (1 - decay) * (ema[k][i] - p[i]);
  }
}

TEST(Ema, StepsMatchFloat64Loop) {
  std::vector<Tensor> params = {random_tensor({7, 5}, DType::F32, 1), random_tensor({300}, DType::BF16, 2),
                                random_tensor({2, 3, 4}, DType::F16, 3)};
  EmaModel ema(params);
  ASSERT_EQ(ema.shadow_params().size(), 3u);
  for (const Tensor& s : ema.shadow_params()) EXPECT_EQ(s.dtype(), DType::F32);
  std::vector<std::vector<double>> ref;
  for (const Tensor& p : params) ref.push_back(p.to_vector());
  for (int step = 1; step <= 12; ++step) {
    for (size_t k = 0; k < params.size(); ++k) {
      Tensor next = random_tensor(params[k].shape(), params[k].dtype(), 100 * step + k);
      copy_(params[k], next);
    }
    ema.step(params);
    const double d = ema_decay(EmaConfig{}, step);
    EXPECT_EQ(ema.optimization_step(), step);
    EXPECT_EQ(ema.cur_decay_value(), d);
    reference_step(ref, params, d);
    for (size_t k = 0; k < params.size(); ++k)
      EXPECT_TRUE(test::all_close(ema.shadow_params()[k], ref[k], 1e-6, 1e-6)) << "step " << step << " tensor " << k;
    if (step == 1)  // decay 0: the averages are the parameters, exactly
      for (size_t k = 0; k < params.size(); ++k) EXPECT_EQ(ema.shadow_params()[k].to_vector(), params[k].to_vector());
  }
}

// A parameter that stops changing must keep its average (diffusers' form leaves it exactly in place).
// With d and 1 - d rounded to float32 separately, d = 0.9999 pulls averages towards zero by up to
// 1.7e-4 of their value; ema.h rounds d to float32 first so that the weights add up to 1.
TEST(Ema, ConstantParameterIsAFixedPoint) {
  std::vector<Tensor> params = {random_tensor({1000}, DType::F32, 7, -2.0, 2.0)};
  EmaModel ema(params);
  ema.load_state(ema.state_tensors(), 1000000);  // decay at its 0.9999 cap from here on
  for (int i = 0; i < 20000; ++i) ema.step(params);
  EXPECT_EQ(ema.cur_decay_value(), 0.9999);
  const std::vector<double> p = params[0].to_vector(), s = ema.shadow_params()[0].to_vector();
  double worst = 0;
  for (size_t i = 0; i < p.size(); ++i) worst = std::max(worst, std::abs(s[i] - p[i]) / std::abs(p[i]));
  EXPECT_LT(worst, 1e-6) << "the average drifted from a constant parameter";
}

TEST(Ema, CopyToStoreRestore) {
  std::vector<Tensor> params = {random_tensor({4, 3}, DType::F32, 1), random_tensor({5}, DType::F16, 2)};
  EmaModel ema(params);
  ema.step(params);
  const std::vector<Tensor> trained = {random_tensor({4, 3}, DType::F32, 3), random_tensor({5}, DType::F16, 4)};
  for (size_t k = 0; k < params.size(); ++k) copy_(params[k], trained[k]);
  ema.step(params);  // decay 2/11
  const std::vector<std::vector<double>> before = {params[0].to_vector(), params[1].to_vector()};
  EXPECT_FALSE(ema.has_stored());
  EXPECT_THROW(ema.restore(params), Error);
  ema.store(params);
  EXPECT_TRUE(ema.has_stored());
  ema.copy_to(params);
  EXPECT_EQ(params[0].to_vector(), ema.shadow_params()[0].to_vector());
  EXPECT_TRUE(test::all_close(params[1], ema.shadow_params()[1].to_vector(), 1e-3, 0));  // rounded to f16
  EXPECT_EQ(params[1].dtype(), DType::F16);
  EXPECT_NE(params[0].to_vector(), before[0]);
  ema.restore(params);
  EXPECT_EQ(params[0].to_vector(), before[0]);
  EXPECT_EQ(params[1].to_vector(), before[1]);
  EXPECT_FALSE(ema.has_stored());
  EXPECT_THROW(ema.restore(params), Error);  // the stored copies are dropped
  EXPECT_THROW(ema.copy_to({params[0]}), Error);
  EXPECT_THROW(ema.step({params[1], params[0]}), Error);  // shapes in another order
}

TEST(Ema, StateRoundTrip) {
  std::vector<Tensor> params = {random_tensor({4, 3}, DType::F32, 1), random_tensor({5}, DType::F32, 2)};
  params[0].set_name("down.weight");
  params[1].set_name("down.bias");
  EmaModel ema(params);
  for (int i = 0; i < 3; ++i) {
    copy_(params[0], random_tensor({4, 3}, DType::F32, 10 + i));
    ema.step(params);
  }
  const auto state = ema.state_tensors();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state[0].first, "down.weight");
  EXPECT_EQ(state[1].first, "down.bias");
  // A resumed run: fresh EMA from other weights, then the checkpoint (given in another order).
  std::vector<std::pair<std::string, Tensor>> saved;
  for (auto it = state.rbegin(); it != state.rend(); ++it)
    saved.emplace_back(it->first, copy_to(it->second, DType::F64, Device::cpu()));
  EmaModel resumed({random_tensor({4, 3}, DType::F32, 50), random_tensor({5}, DType::F32, 51)}, {},
                   {"down.weight", "down.bias"});
  resumed.load_state(saved, ema.optimization_step());
  EXPECT_EQ(resumed.optimization_step(), 3);
  for (size_t k = 0; k < 2; ++k)
    EXPECT_EQ(resumed.shadow_params()[k].to_vector(), ema.shadow_params()[k].to_vector()) << k;
  ema.step(params);
  resumed.step(params);
  for (size_t k = 0; k < 2; ++k)
    EXPECT_EQ(resumed.shadow_params()[k].to_vector(), ema.shadow_params()[k].to_vector()) << k;

  // Bad states leave the EMA unchanged.
  const std::vector<double> kept = resumed.shadow_params()[0].to_vector();
  auto missing = saved;
  missing.pop_back();
  auto unknown = saved;
  unknown.emplace_back("up.weight", zeros({1}));
  auto twice = saved;
  twice.push_back(saved[0]);
  auto bad_shape = saved;
  bad_shape[1].second = zeros({3, 4});
  for (const auto* bad : {&missing, &unknown, &twice, &bad_shape}) {
    EXPECT_THROW(resumed.load_state(*bad, 9), Error);
    EXPECT_EQ(resumed.optimization_step(), 4);
    EXPECT_EQ(resumed.shadow_params()[0].to_vector(), kept);
  }
  EXPECT_THROW(resumed.load_state(saved, -1), Error);

  // Names: unnamed tensors get their index; duplicates are refused.
  EmaModel unnamed({zeros({2}), zeros({3})});
  EXPECT_EQ(unnamed.names(), (std::vector<std::string>{"0", "1"}));
  EXPECT_THROW(EmaModel({zeros({2}), zeros({3})}, {}, {"a", "a"}), Error);
  EXPECT_THROW(EmaModel({zeros({2})}, {}, {"a", "b"}), Error);
  EXPECT_THROW(EmaModel({zeros({2}, DType::I64)}), Error);
}

TEST(Ema, OffloadOnTheHostGivesTheSameAverages) {
  std::vector<Tensor> params = {random_tensor({6, 5}, DType::F32, 1), random_tensor({9}, DType::BF16, 2)};
  EmaConfig off;
  off.offload = true;
  EmaModel a(params), b(params, off);
  for (int step = 0; step < 5; ++step) {
    for (size_t k = 0; k < params.size(); ++k)
      copy_(params[k], random_tensor(params[k].shape(), params[k].dtype(), 20 + 3 * step + k));
    a.step(params);
    b.step(params);
  }
  for (size_t k = 0; k < params.size(); ++k) {
    EXPECT_TRUE(b.shadow_params()[k].is_cpu());
    EXPECT_EQ(a.shadow_params()[k].to_vector(), b.shadow_params()[k].to_vector()) << k;
  }
}

// On a GPU: averages on the device, and offloaded to the host while the parameters stay on the
// device, give the CPU's values bit for bit (the kernels compute the same float32 expression).
TEST(CudaEma, DeviceAndOffloadMatchCpu) {
  SD_REQUIRE_CUDA();
  std::vector<Tensor> host = {random_tensor({64, 33}, DType::F32, 1), random_tensor({100}, DType::BF16, 2)};
  std::vector<Tensor> dev;
  for (const Tensor& p : host) dev.push_back(copy_to(p, p.dtype(), Device::cuda()));
  EmaConfig off;
  off.offload = true;
  EmaModel on_cpu(host), on_gpu(dev), offloaded(dev, off);
  EXPECT_TRUE(on_gpu.shadow_params()[0].is_cuda());
  EXPECT_TRUE(offloaded.shadow_params()[0].is_cpu());
  for (int step = 0; step < 6; ++step) {
    for (size_t k = 0; k < host.size(); ++k) {
      Tensor next = random_tensor(host[k].shape(), host[k].dtype(), 40 + 2 * step + k);
      copy_(host[k], next);
      copy_(dev[k], next);
    }
    on_cpu.step(host);
    on_gpu.step(dev);
    offloaded.step(dev);
  }
  for (size_t k = 0; k < host.size(); ++k) {
    EXPECT_EQ(on_gpu.shadow_params()[k].to_vector(), on_cpu.shadow_params()[k].to_vector()) << k;
    EXPECT_EQ(offloaded.shadow_params()[k].to_vector(), on_cpu.shadow_params()[k].to_vector()) << k;
  }
  offloaded.store(dev);
  offloaded.copy_to(dev);
  EXPECT_EQ(copy_to(dev[0], DType::F32, Device::cpu()).to_vector(), on_cpu.shadow_params()[0].to_vector());
  offloaded.restore(dev);
  EXPECT_EQ(dev[1].to_vector(), host[1].to_vector());
}

// ---- against diffusers -------------------------------------------------------------------------

nlohmann::json load_json(const std::string& name) {
  const std::string path = std::string(SD_TEST_DATA_DIR) + "/train_schedules/" + name;
  std::ifstream f(path);
  if (!f.good()) ADD_FAILURE() << "cannot read " << path;
  return nlohmann::json::parse(f);
}

EmaConfig config_of(const nlohmann::json& j) {
  EmaConfig c;
  c.decay = j.at("decay").get<double>();
  c.min_decay = j.at("min_decay").get<double>();
  c.update_after_step = j.at("update_after_step").get<int64_t>();
  c.use_ema_warmup = j.at("use_ema_warmup").get<bool>();
  c.inv_gamma = j.at("inv_gamma").get<double>();
  c.power = j.at("power").get<double>();
  return c;
}

TEST(GoldenEma, DecaysMatchDiffusers) {
  const nlohmann::json root = load_json("ema.json");
  int n = 0;
  for (const auto& c : root.at("decays")) {
    const EmaConfig cfg = config_of(c.at("config"));
    const auto steps = c.at("steps").get<std::vector<int64_t>>();
    const auto decays = c.at("decay").get<std::vector<double>>();
    ASSERT_EQ(steps.size(), decays.size());
    for (size_t i = 0; i < steps.size(); ++i, ++n)
      EXPECT_LE(std::abs(ema_decay(cfg, steps[i]) - decays[i]), 1e-12 * std::abs(decays[i]))
          << c.at("config").dump() << " step " << steps[i] << ": " << ema_decay(cfg, steps[i]) << " vs " << decays[i];
  }
  EXPECT_GE(n, 300);
}

TEST(GoldenEma, AveragesMatchDiffusers) {
  const nlohmann::json root = load_json("ema.json");
  for (const auto& c : root.at("values")) {
    const EmaConfig cfg = config_of(c.at("config"));
    const auto shapes = c.at("shapes").get<std::vector<std::vector<int64_t>>>();
    const auto initial = c.at("initial").get<std::vector<std::vector<double>>>();
    std::vector<Tensor> params;
    for (size_t k = 0; k < shapes.size(); ++k) params.push_back(from_vector(initial[k], Shape(shapes[k])));
    EmaModel ema(params, cfg);
    int step = 0;
    for (const auto& s : c.at("steps")) {
      ++step;
      const auto values = s.at("params").get<std::vector<std::vector<double>>>();
      for (size_t k = 0; k < params.size(); ++k) copy_(params[k], from_vector(values[k], Shape(shapes[k])));
      ema.step(params);
      EXPECT_LE(std::abs(ema.cur_decay_value() - s.at("decay").get<double>()), 1e-12) << "step " << step;
      const auto want = s.at("ema").get<std::vector<std::vector<double>>>();
      for (size_t k = 0; k < params.size(); ++k)
        EXPECT_TRUE(test::all_close(ema.shadow_params()[k], want[k], 1e-6, 1e-6))
            << c.at("config").dump() << " step " << step << " tensor " << k;
    }
    EXPECT_EQ(step, 6);
  }
}

}  // namespace
}  // namespace sd::train
