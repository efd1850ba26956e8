// The small parts of the training loop: the command line (argparse habits, contradictions), the random
// draws (keyed by seed, step and example slot: independent of batch composition), the objective against
// hand-written formulas, and the optimizer's f32 gradient accumulation and state round trip with 16-bit
// compute copies.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/engine.h"
#include "infer/scheduler.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/error.h"
#include "tests/test_util.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/random_draws.h"
#include "train/train_args.h"

namespace sd::train {
namespace {

std::optional<TrainArgs> parse(std::vector<std::string> args) {
  std::vector<const char*> argv = {"sd_train"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_train_args(int(argv.size()), argv.data());
}

std::vector<std::string> base() {
  return {"--method", "lora", "--pretrained_model_name_or_path", "m", "--train_data_dir", "d"};
}

TEST(TrainArgs, DiffusersSpellingsAndDefaults) {
  auto a = parse(base());
  ASSERT_TRUE(a);
  EXPECT_EQ(a->train_batch_size, 16);
  EXPECT_EQ(a->lr_warmup_steps, 500);
  EXPECT_EQ(a->output_dir, "sd-model-finetuned-lora");
  EXPECT_EQ(a->lora_target, (std::vector<std::string>{"attn"}));
  std::vector<std::string> v = base();
  for (const std::string& s : {"--learning_rate=3e-4", "--train-batch-size", "2", "--proportion_empty_prompts", "0.1",
                               "--validation_prompt", "a", "--validation_prompts", "b", "--random_flip=false",
                               "--center_crop=true", "--network_dim", "8", "--mixed_precision", "bf16",
                               "--enable_xformers_memory_efficient_attention", "--dataloader_num_workers", "4"})
    v.push_back(s);
  a = parse(v);
  ASSERT_TRUE(a);
  EXPECT_DOUBLE_EQ(a->learning_rate, 3e-4);
  EXPECT_EQ(a->train_batch_size, 2);
  EXPECT_DOUBLE_EQ(a->caption_dropout, 0.1);
  EXPECT_EQ(a->validation_prompts, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(a->validation_epochs, 1);  // prompts without a frequency validate every epoch
  EXPECT_FALSE(a->random_flip);
  EXPECT_TRUE(a->center_crop);
  EXPECT_EQ(a->rank, 8);
  EXPECT_EQ(a->mixed_precision, MixedPrecision::Bf16);
}

TEST(TrainArgs, ContradictionsAndBadValuesAreSentences) {
  auto expect_error = [](std::vector<std::string> extra, const std::string& msg) {
    std::vector<std::string> v = base();
    v.insert(v.end(), extra.begin(), extra.end());
    try {
      parse(v);
      ADD_FAILURE() << "accepted: " << msg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  expect_error({"--snr_gamma", "-1"}, "--snr_gamma must be positive");
  expect_error({"--learning_rate", "abc"}, "expected a number");
  expect_error({"--max_train_steps"}, "needs a value");
  expect_error({"stray"}, "unexpected argument 'stray'");
  expect_error({"--offload_ema"}, "--offload_ema averages");  // a LoRA run: EMA flags are contradictions
  expect_error({"--save_single_file"}, "--save_single_file writes a whole model");
  expect_error({"--caption_dropout", "2"}, "--caption_dropout must be in [0, 1]");
  expect_error({"--device", "cpu", "--allow_tf32"}, "--allow_tf32 is a GPU setting");
  EXPECT_FALSE(parse({"--help"}).has_value());
}

TEST(TrainDraws, KeyedBySeedStepAndSlotOnly) {
  ObjectiveConfig cfg;
  cfg.noise_offset = 0.1;
  const NoiseDraws a = draw_noise(cfg, {3, 4, 2, 2}, 7, 5, {0, 1, 2});
  const NoiseDraws b = draw_noise(cfg, {1, 4, 2, 2}, 7, 5, {1});  // example 1 drawn alone
  const std::vector<double> av = a.noise.to_vector(), bv = b.noise.to_vector();
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(av[16 + i], bv[i]);
  EXPECT_EQ(a.timesteps.to_vector()[1], b.timesteps.to_vector()[0]);
  EXPECT_EQ(a.offset_noise.to_vector()[4], b.offset_noise.to_vector()[0]);
  EXPECT_NE(draw_noise(cfg, {1, 4, 2, 2}, 7, 6, {1}).noise.to_vector(), bv);  // another step
  EXPECT_NE(draw_noise(cfg, {1, 4, 2, 2}, 8, 5, {1}).noise.to_vector(), bv);  // another seed
  EXPECT_FALSE(a.perturbation.defined());
  // Timesteps cover [0, T) uniformly enough.
  std::vector<int64_t> slots;
  for (int64_t i = 0; i < 4000; ++i) slots.push_back(i);
  const std::vector<double> t = draw_noise(cfg, {4000, 1, 1, 1}, 1, 0, slots).timesteps.to_vector();
  double mean = 0, lo = 1e9, hi = -1;
  for (double x : t) mean += x / 4000, lo = std::min(lo, x), hi = std::max(hi, x);
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 999);
  EXPECT_NEAR(mean, 499.5, 15);
}

TEST(TrainObjective, NoisyInputTargetAndMinSnrAsTheFormulas) {
  infer::SchedulerConfig sc = infer::SchedulerConfig::defaults("DDPMScheduler");
  sc.beta_schedule = "scaled_linear";
  sc.beta_start = 0.00085;
  sc.beta_end = 0.012;
  auto sched = infer::make_scheduler(sc);
  const std::vector<float>& ac = sched->alphas_cumprod();
  const Tensor latents = test::random_tensor({2, 1, 1, 2}, DType::F32, 3);
  NoiseDraws d;
  d.noise = test::random_tensor({2, 1, 1, 2}, DType::F32, 4);
  d.timesteps = from_vector({10, 900}, {2}, DType::I64);
  d.offset_noise = test::random_tensor({2, 1, 1, 1}, DType::F32, 5);
  ObjectiveConfig cfg;
  cfg.noise_offset = 0.5;
  cfg.snr_gamma = 5.0;
  for (nn::Prediction p : {nn::Prediction::Epsilon, nn::Prediction::VPrediction}) {
    cfg.prediction = p;
    const NoisyInput in = make_noisy_input(latents, d, *sched, cfg);
    const auto x0 = latents.to_vector(), n = d.noise.to_vector(), off = d.offset_noise.to_vector();
    const auto noisy = in.noisy_latents.to_vector(), target = in.target.to_vector();
    for (size_t i = 0; i < 4; ++i) {
      const size_t b = i / 2;
      const double a = ac[b == 0 ? 10 : 900];
      const double eps = n[i] + 0.5 * off[b];
      EXPECT_NEAR(noisy[i], std::sqrt(a) * x0[i] + std::sqrt(1 - a) * eps, 1e-6);
      const double want = p == nn::Prediction::Epsilon ? eps : std::sqrt(a) * eps - std::sqrt(1 - a) * x0[i];
      EXPECT_NEAR(target[i], want, 1e-6);
    }
    const auto w = snr_weights(d.timesteps, *sched, cfg).to_vector();
    for (size_t b = 0; b < 2; ++b) {
      const double a = ac[b == 0 ? 10 : 900], snr = a / (1 - a);
      const double want = std::min(snr, 5.0) / (p == nn::Prediction::Epsilon ? snr : snr + 1);
      EXPECT_NEAR(w[b], want, 1e-5 * want);
    }
  }
  // The loss: weighted per-example means, averaged over the batch.
  const Tensor pred = test::random_tensor({2, 1, 1, 2}, DType::F32, 6);
  const Tensor target = test::random_tensor({2, 1, 1, 2}, DType::F32, 7);
  const Tensor w = from_vector({0.5, 2.0}, {2});
  const auto pv = pred.to_vector(), tv = target.to_vector();
  double e0 = 0, e1 = 0;
  for (size_t i = 0; i < 2; ++i) e0 += (pv[i] - tv[i]) * (pv[i] - tv[i]) / 2;
  for (size_t i = 2; i < 4; ++i) e1 += (pv[i] - tv[i]) * (pv[i] - tv[i]) / 2;
  EXPECT_NEAR(diffusion_loss(pred, target, w).item(), (0.5 * e0 + 2.0 * e1) / 2, 1e-6);
  EXPECT_NEAR(diffusion_loss(pred, target, Tensor()).item(), (e0 + e1) / 2, 1e-6);
}

TEST(TrainOptimizer, SixteenBitParamsAccumulateInF32AndStateRoundTrips) {
  for (DType dt : {DType::F16, DType::BF16}) {
    const Tensor master = test::random_tensor({64}, DType::F32, 1);
    Tensor param = copy_to(master, dt, Device::cpu());
    param.set_requires_grad(true);
    AdamWConfig cfg;
    cfg.lr = 1e-2;
    AdamWOptimizer opt({{"w", param, master, 0}}, cfg);
    // Two micro-batches: grads of 2x and 3x, collected into one f32 accumulator.
    for (double k : {2.0, 3.0}) {
      autograd::backward(sum_all(mul_scalar(to(param, DType::F32), k)));
      opt.collect_grads();
      EXPECT_FALSE(param.grad().defined()) << "the 16-bit gradient stayed on the parameter";
    }
    const Tensor g = opt.grads()[0];
    EXPECT_EQ(g.dtype(), DType::F32);
    for (double v : g.to_vector()) EXPECT_EQ(v, 5.0);
    opt.step({1e-2}, 1.0);
    opt.zero_grad();
    // The compute copy is the rounded master.
    EXPECT_EQ(param.to_vector(), copy_to(opt.master(0), dt, Device::cpu()).to_vector());
    // State round trip into a fresh optimizer.
    const auto state = opt.state_tensors();
    std::vector<std::pair<std::string, Tensor>> saved;
    for (const auto& [k, t] : state) saved.emplace_back(k, copy_to(t, DType::F32, Device::cpu()));
    Tensor master2 = zeros({64});
    Tensor param2 = zeros({64}, dt);
    param2.set_requires_grad(true);
    AdamWOptimizer opt2({{"w", param2, master2, 0}}, cfg);
    opt2.load_state_tensors(saved, opt.step_count());
    EXPECT_EQ(opt2.master(0).to_vector(), opt.master(0).to_vector());
    EXPECT_EQ(param2.to_vector(), param.to_vector());
    EXPECT_EQ(opt2.step_count(), 1);
    // A missing or mis-shaped tensor is refused before anything changes.
    saved.pop_back();
    EXPECT_THROW(opt2.load_state_tensors(saved, 1), Error);
  }
}

}  // namespace
}  // namespace sd::train
