// Training steps against diffusers' training logic (tests/golden/make_train_goldens.py): the tiny SD1 and
// SDXL pipelines, full fine-tune (with the text encoder on SD1) and LoRA (with text-encoder LoRA on SD1),
// epsilon and v-prediction, Min-SNR, noise offset and input perturbation, fed the latents, noise and
// timesteps PyTorch drew. Three AdamW steps with a linear warmup schedule and gradient clipping; the loss
// of every step, the gradient of every trainable tensor at step 0 and every trainable tensor after the
// three steps must match within 1e-5 relative (f32; each tensor within 1e-4). Also the VAE posterior sample of the latent pipeline.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "autograd/engine.h"
#include "infer/pipeline.h"
#include "ops/optim.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "train/lr_schedule.h"
#include "train/training_model.h"

namespace sd::train {
namespace {

constexpr double kTol = 1e-5;      // all trainable tensors together
constexpr double kTolEach = 1e-4;  // each one

std::string golden(const std::string& name) { return std::string(SD_TEST_DATA_DIR) + "/train_goldens/" + name; }

struct Golden {
  SafetensorsFile file;
  std::map<std::string, std::string> meta;
  Tensor get(const std::string& k) const { return file.get(k, file.info(k).dtype.value(), Device::cpu()); }
  bool has(const std::string& k) const { return file.contains(k); }
};

Golden open_golden(const std::string& name) {
  SafetensorsFile f = SafetensorsFile::open(golden(name + ".safetensors"));
  std::map<std::string, std::string> meta = f.metadata();
  return Golden{std::move(f), std::move(meta)};
}

std::unique_ptr<TrainingModel> make_model(const Golden& g, bool gradient_checkpointing = false) {
  infer::PipelineOptions po;
  po.vae_upcast = true;
  auto pipe = infer::Pipeline::load(std::string(SD_TEST_DATA_DIR) + "/" + g.meta.at("pipe"), po);
  TrainingModelOptions o;
  const std::string method = g.meta.at("method");
  o.method = method == "full" ? TrainMethod::Full : method == "lora" ? TrainMethod::Lora : TrainMethod::TextualInversion;
  if (o.method == TrainMethod::TextualInversion) o.ti = {"<shape>", "a", std::stoll(g.meta.at("ti_vectors"))};
  o.prior_loss_weight = std::stod(g.meta.at("prior_weight"));
  o.objective.dreambooth_snr = g.meta.at("dreambooth") == "1";
  o.train_text_encoder = g.meta.at("train_text_encoder") == "1";
  o.unet_lora.rank = std::stoll(g.meta.at("rank"));
  o.unet_lora.alpha = std::stod(g.meta.at("alpha"));
  o.unet_lora.targets = unet_lora_targets({"attn"});
  o.text_lora = o.unet_lora;
  o.text_lora.targets = text_encoder_lora_targets();
  if (!g.meta.at("snr_gamma").empty()) o.objective.snr_gamma = std::stod(g.meta.at("snr_gamma"));
  o.objective.noise_offset = std::stod(g.meta.at("noise_offset"));
  o.objective.input_perturbation = std::stod(g.meta.at("input_perturbation"));
  o.prediction_override = g.meta.at("prediction_override");
  o.gradient_checkpointing = gradient_checkpointing;
  return std::make_unique<TrainingModel>(pipe, o);
}

void run_case(const std::string& name, bool gradient_checkpointing = false) {
  const Golden g = open_golden(name);
  std::unique_ptr<TrainingModel> m = make_model(g, gradient_checkpointing);
  const std::vector<OptimizerParam>& params = m->trainable();
  ASSERT_EQ(int64_t(params.size()), std::stoll(g.meta.at("trainable"))) << name << ": trainable tensor count";
  EXPECT_EQ(nn::prediction_name(m->objective().prediction), g.meta.at("prediction"));
  // Every trainable tensor has its golden, and LoRA starts from PEFT's initial values.
  for (const OptimizerParam& p : params) {
    ASSERT_TRUE(g.has("grad." + p.name)) << name << ": no golden for trainable '" << p.name << "'";
    if (g.has("init." + p.name)) copy_(p.param, g.get("init." + p.name));
  }
  AdamWConfig ac;
  ac.lr = 1e-3;
  ac.weight_decay = 1e-2;
  AdamWOptimizer opt(params, ac);
  LrScheduleConfig lr;
  lr.name = "linear";
  lr.base_lr = 1e-3;
  lr.warmup_steps = 2;
  lr.total_steps = 10;

  const int64_t steps = std::stoll(g.meta.at("steps"));
  std::vector<Tensor> init;
  for (size_t i = 0; i < params.size(); ++i) init.push_back(copy_to(opt.master(i), DType::F64, Device::cpu()));
  std::vector<Tensor> grads0;
  for (int64_t k = 0; k < steps; ++k) {
    const std::string s = "step" + std::to_string(k) + ".";
    MicroBatch mb;
    mb.latents = g.get(s + "latents");
    mb.tokens.ids = g.get(s + "ids");
    // The tokenizer must give diffusers' ids for the recorded captions.
    std::vector<std::string> captions;
    std::string caps = g.meta.at(s + "captions");
    for (size_t b = 0, e; b <= caps.size(); b = e + 1) {
      e = caps.find('\n', b);
      if (e == std::string::npos) e = caps.size();
      captions.push_back(caps.substr(b, e - b));
    }
    const TokenIds ours = m->tokenize(captions);
    EXPECT_EQ(ours.ids.to_vector(), mb.tokens.ids.to_vector()) << name << " step " << k << ": token ids";
    if (g.has(s + "ids_2")) {
      mb.tokens.ids_2 = g.get(s + "ids_2");
      EXPECT_EQ(ours.ids_2.to_vector(), mb.tokens.ids_2.to_vector()) << name << " step " << k << ": token ids 2";
    }
    if (g.has(s + "time_ids")) mb.time_ids = g.get(s + "time_ids");
    mb.prior_examples = std::stoll(g.meta.at("prior"));
    NoiseDraws d;
    d.noise = g.get(s + "noise");
    d.timesteps = g.get(s + "timesteps");
    if (g.has(s + "offset")) d.offset_noise = g.get(s + "offset");
    if (g.has(s + "perturbation")) d.perturbation = g.get(s + "perturbation");

    const Tensor loss = m->loss(mb, d);
    const double ref_loss = g.get(s + "loss").item();
    std::printf("[ GoldenTrain ] %-12s step %lld loss %.7f (diffusers %.7f)\n", name.c_str(),
                static_cast<long long>(k), loss.item(), ref_loss);
    EXPECT_NEAR(loss.item(), ref_loss, kTol * std::abs(ref_loss)) << name << " step " << k;
    autograd::backward(loss);
    opt.collect_grads();
    if (k == 0)
      for (const Tensor& t : opt.grads()) grads0.push_back(t);
    EXPECT_NEAR(lr_at(lr, k), g.get(s + "lr").item(), 1e-15) << name << " step " << k;
    const double max_norm = std::stod(g.meta.at("max_grad_norm"));
    const double norm = global_grad_norm(opt.grads());
    const double clip = max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
    opt.step({lr_at(lr, k), lr_at(lr, k)}, double(float(clip)));
    m->after_optimizer_step();
    opt.zero_grad();
    // Textual inversion: every row but the new tokens' is its original value, bit for bit.
    for (const TrainingModel::NewTokens& n : m->new_tokens()) {
      const std::vector<double> now = n.master.to_vector(), orig = n.original.to_vector();
      const int64_t D = n.master.size(1);
      int64_t changed_old = 0, changed_new = 0;
      for (int64_t i = 0; i < int64_t(now.size()); ++i) {
        const bool is_new = i / D >= n.first && i / D < n.end;
        if (now[size_t(i)] != orig[size_t(i)]) (is_new ? changed_new : changed_old)++;
      }
      EXPECT_EQ(changed_old, 0) << name << " step " << k << ": rows other than the new tokens changed";
      if (k >= 1) EXPECT_GT(changed_new, 0) << name << " step " << k << ": the new rows did not move";
    }
  }

  // Gradients at step 0 and updates (after - before) over the 3 steps: the relative error of all the
  // trainable tensors together must be within kTol, and of each one within kTolEach. A tensor whose
  // gradient is zero in exact arithmetic (the text encoder's k_proj biases: softmax ignores a constant
  // added to every key) holds only rounding noise on both sides; its gradient must be as small as the
  // reference's, and its update (AdamW turns noise into steps of size lr) is left out.
  double g_ref_all = 0, g_diff_all = 0, u_ref_all = 0, u_diff_all = 0, worst_g = 0, worst_u = 0;
  std::vector<double> gref_norm(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor ref = g.get("grad." + params[i].name);
    const std::vector<double> r = ref.to_vector();
    double n2 = 0;
    for (double v : r) n2 += v * v;
    gref_norm[i] = std::sqrt(n2);
    g_ref_all += n2;
  }
  const double g_scale = std::sqrt(g_ref_all);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor ref = g.get("grad." + params[i].name);
    const Tensor ours_g = grads0[i].defined() ? grads0[i] : zeros_like(ref);
    const std::vector<double> a = ours_g.to_vector(), b = ref.to_vector();
    double d2 = 0;
    for (size_t j = 0; j < a.size(); ++j) d2 += (a[j] - b[j]) * (a[j] - b[j]);
    const bool zero_grad = gref_norm[i] <= 1e-6 * g_scale;
    if (zero_grad) {
      EXPECT_LE(std::sqrt(d2), 1e-6 * g_scale) << name << ": gradient of " << params[i].name << " (zero in exact arithmetic)";
      continue;
    }
    g_diff_all += d2;
    worst_g = std::max(worst_g, std::sqrt(d2) / gref_norm[i]);
    EXPECT_LE(std::sqrt(d2) / gref_norm[i], kTolEach) << name << ": gradient of " << params[i].name;

    const std::vector<double> fin = opt.master(i).to_vector(), fin_ref = g.get("final." + params[i].name).to_vector(),
                              start = init[i].to_vector();
    double ud2 = 0, ur2 = 0;
    for (size_t j = 0; j < fin.size(); ++j) {
      const double ua = fin[j] - start[j], ub = fin_ref[j] - start[j];
      ud2 += (ua - ub) * (ua - ub);
      ur2 += ub * ub;
    }
    u_diff_all += ud2;
    u_ref_all += ur2;
    if (ur2 > 0) {
      worst_u = std::max(worst_u, std::sqrt(ud2 / ur2));
      EXPECT_LE(std::sqrt(ud2 / ur2), kTolEach) << name << ": update of " << params[i].name << " over " << steps << " steps";
    }
  }
  const double g_err = std::sqrt(g_diff_all / g_ref_all), u_err = std::sqrt(u_diff_all / u_ref_all);
  std::printf("[ GoldenTrain ] %-12s %zu trainable tensors: gradients rel err %.2e (worst tensor %.2e), "
              "updates rel err %.2e (worst tensor %.2e)\n", name.c_str(), params.size(), g_err, worst_g, u_err, worst_u);
  EXPECT_LE(g_err, kTol) << name << ": gradients at step 0";
  EXPECT_LE(u_err, kTol) << name << ": updates over " << steps << " steps";
}

TEST(GoldenTrain, Sd1FullWithTextEncoderMinSnrPerturbation) { run_case("sd1_full"); }
TEST(GoldenTrain, Sd1LoraWithTextEncoderLoraVPredictionMinSnr) { run_case("sd1_lora_te"); }
TEST(GoldenTrain, SdxlFullMinSnr) { run_case("sdxl_full"); }
TEST(GoldenTrain, SdxlLoraVPredictionNoiseOffset) { run_case("sdxl_lora"); }

// --gradient_checkpointing recomputes each block in backward: the same numbers.
TEST(GoldenTrain, Sd1FullWithGradientCheckpointing) { run_case("sd1_full", true); }
TEST(GoldenTrain, SdxlLoraWithGradientCheckpointing) { run_case("sdxl_lora", true); }

TEST(GoldenTrain, Sd1DreamBoothPriorPreservationWithTextEncoder) { run_case("sd1_dreambooth_prior"); }
TEST(GoldenTrain, SdxlDreamBoothLoraPriorVPredictionMinSnr) { run_case("sdxl_dreambooth_lora_prior"); }
TEST(GoldenTrain, Sd1TextualInversionTwoVectors) { run_case("sd1_textual_inversion"); }
TEST(GoldenTrain, SdxlTextualInversionBothEncoders) { run_case("sdxl_textual_inversion"); }

// --method vae: L1 reconstruction of a posterior sample + 1e-2 KL, the whole tiny VAE, 3 AdamW steps.
TEST(GoldenTrain, VaeReconstructionAndKl) {
  const Golden g = open_golden("vae_training");
  infer::PipelineOptions po;
  po.vae_upcast = true;
  auto pipe = infer::Pipeline::load(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1", po);
  TrainingModelOptions o;
  o.method = TrainMethod::Vae;
  TrainingModel m(pipe, o);
  const std::vector<OptimizerParam>& params = m.trainable();
  ASSERT_EQ(int64_t(params.size()), std::stoll(g.meta.at("trainable")));
  std::vector<Tensor> init;
  for (const OptimizerParam& p : params) init.push_back(copy_to(p.param, DType::F64, Device::cpu()));
  AdamWConfig ac;
  ac.lr = 1e-3;
  AdamWOptimizer opt(params, ac);
  LrScheduleConfig lr;
  lr.name = "linear";
  lr.base_lr = 1e-3;
  lr.warmup_steps = 2;
  lr.total_steps = 10;
  const double kl_weight = std::stod(g.meta.at("kl_weight"));
  double worst_g = 0, worst_u = 0;
  std::set<size_t> zero_grad;
  auto sum_sq = [](const Tensor& t) {
    double s = 0;
    for (double v : t.to_vector()) s += v * v;
    return s;
  };
  for (int64_t k = 0; k < 3; ++k) {
    const std::string s = "step" + std::to_string(k) + ".";
    const Tensor loss = m.vae_loss(g.get(s + "pixels"), g.get(s + "eps"), true, kl_weight);
    const double ref = g.get(s + "loss").item();
    std::printf("[ GoldenTrain ] vae step %lld loss %.7f (diffusers %.7f)\n", static_cast<long long>(k), loss.item(), ref);
    EXPECT_NEAR(loss.item(), ref, kTol * std::abs(ref));
    autograd::backward(loss);
    opt.collect_grads();
    if (k == 0) {
      const std::vector<Tensor> grads = opt.grads();
      double total = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        const double n = std::sqrt(sum_sq(g.get("grad." + params[i].name)));
        total += n * n;
      }
      for (size_t i = 0; i < params.size(); ++i) {
        const Tensor ref = g.get("grad." + params[i].name);
        // The attention key biases have an exactly zero gradient (softmax ignores a constant added to every
        // key): both sides hold rounding noise there, and AdamW turns it into steps of size lr.
        if (std::sqrt(sum_sq(ref)) <= 1e-6 * std::sqrt(total)) {
          zero_grad.insert(i);
          EXPECT_LE(std::sqrt(sum_sq(grads[i])), 1e-6 * std::sqrt(total)) << params[i].name;
          continue;
        }
        const double e = test::relative_error(grads[i], ref);
        worst_g = std::max(worst_g, e);
        EXPECT_LE(e, kTolEach) << params[i].name;
      }
    }
    const double norm = global_grad_norm(opt.grads());
    const double clip = norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0;
    opt.step({lr_at(lr, k)}, double(float(clip)));
    opt.zero_grad();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (zero_grad.count(i)) continue;
    const std::vector<double> fin = opt.master(i).to_vector(), ref = g.get("final." + params[i].name).to_vector(),
                              start = init[i].to_vector();
    double d2 = 0, r2 = 0;
    for (size_t j = 0; j < fin.size(); ++j) {
      d2 += ((fin[j] - start[j]) - (ref[j] - start[j])) * ((fin[j] - start[j]) - (ref[j] - start[j]));
      r2 += (ref[j] - start[j]) * (ref[j] - start[j]);
    }
    if (r2 > 0) worst_u = std::max(worst_u, std::sqrt(d2 / r2));
  }
  std::printf("[ GoldenTrain ] vae: worst gradient rel err %.2e, worst update %.2e\n", worst_g, worst_u);
  EXPECT_LE(worst_u, kTolEach);
}

TEST(GoldenTrain, VaePosteriorSampleTimesScalingFactor) {
  infer::PipelineOptions po;
  po.vae_upcast = true;
  auto pipe = infer::Pipeline::load(std::string(SD_TEST_DATA_DIR) + "/pipe_tiny_sd1", po);
  TrainingModelOptions o;
  o.method = TrainMethod::Lora;
  o.unet_lora.targets = unet_lora_targets({"attn"});
  TrainingModel m(pipe, o);
  SafetensorsFile f = SafetensorsFile::open(golden("vae_sd1.safetensors"));
  const auto [mean, logvar] = m.encode_posterior(f.get("pixels", DType::F32, Device::cpu()));
  EXPECT_LE(test::relative_error(mean, f.get("mean", DType::F32, Device::cpu())), 1e-5);
  EXPECT_LE(test::relative_error(logvar, f.get("logvar", DType::F32, Device::cpu())), 1e-5);
  const Tensor z = m.sample_latents(mean, logvar, f.get("eps", DType::F32, Device::cpu()));
  EXPECT_LE(test::relative_error(z, f.get("latents", DType::F32, Device::cpu())), 1e-5);
}

}  // namespace
}  // namespace sd::train
