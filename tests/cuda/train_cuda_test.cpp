// Training on the GPU against training on the CPU, for the tiny pipelines of tests/data.
//
// CudaTrainStep: the trainer's model (train/training_model.h, loaded as sd_train loads it) and AdamW
// (train/optimizer.h) run the same two steps on Device::cuda(0) and on the CPU, fed the latents,
// token ids, noise and timesteps of the diffusers goldens (tests/data/train_goldens, as
// tests/train/train_golden_test.cpp feeds them). Compared: the loss of each step, every trainable
// tensor's gradient at step 0, and every f32 master after the two steps (the update, after - before).
// Every tensor that should live on the GPU is checked to be there. Measured errors are printed.
//
// Tolerances (relative, L2 over the tensors named):
//   f32 (--mixed_precision no)  loss 1e-5; gradients of all trainable tensors together 1e-5 and of each
//        tensor 1e-4; updates (after - before) together 1e-5, each 1e-4; masters 1e-6. The bounds the
//        CPU meets against diffusers (train_golden_test): both devices compute in f32 (TF32 is off unless
//        --allow_tf32), so they differ in summation order only, a few f32 ulps per op.
//   bf16 / fp16 (16-bit weights and compute, f32 masters; fp16 with a loss scale of 1024)  against the
//        CPU run in the same dtype (its kernels also accumulate in f32 and round each op's output to 16
//        bits), with bounds that follow how far 16-bit rounding moves the CPU run from its f32 run,
//        measured in the same test: gradients within max(2e-2, 3x that), updates within max(0.1, 3x
//        that) but never 0.5 (a missing step is 1), masters within max(5e-3, 3x that), loss 1e-2.
//        On the CPU (this machine) the rounding itself measured: gradients 7e-3 to 9e-3 (bf16), 7e-4 to
//        9e-4 (fp16); updates 7e-2 to 1e-1 (bf16; AdamW turns a gradient element that is rounding noise
//        into a full lr-sized step of either sign), 2e-2 to 3e-2 (fp16); masters 6e-4 to 1.3e-3, loss
//        below 5e-4. One rounding per op differs between the devices, so the GPU should land at about
//        the same distance.
//   A tensor whose gradient is zero in exact arithmetic (the text encoder's k_proj biases: softmax
//   ignores a constant added to every key; LoRA A while B = 0) holds rounding noise on both sides: a
//   reference gradient below 1e-6 (16-bit: 1e-3) of the total norm is left out of the relative errors,
//   and the GPU's must stay below 10x that.
//
// CudaTrainMethodStep: the same for the other training methods' goldens: DreamBooth with prior
// preservation (sd1_dreambooth_prior: full with the text encoder, prior loss weight 0.5, noise offset;
// sdxl_dreambooth_lora_prior: LoRA, v-prediction with the DreamBooth scripts' Min-SNR weighting) and
// textual inversion (sd1_textual_inversion: 2 vectors; sdxl_textual_inversion: both encoders), each
// with its case's clipping (max_grad_norm 0: none, as textual_inversion.py) and, for textual
// inversion, TrainingModel::after_optimizer_step() after every step. Same f32 bounds as above; the
// bf16 DreamBooth-LoRA run has the 16-bit bounds above. Textual inversion also: after every step every
// token-table row but the new tokens' is bit-identical to its value before the first step (master and
// compute copy, read back from the device), and the new rows moved.
//
// CudaSdTrain: the sd_train binary (SD_BINARY_DIR/tools/sd_train) on tests/data/train_tiny with
// --device cuda and --device cpu, same seed (every random draw is made on the CPU by design, and the
// LoRA initialisation is the same Philox stream on both devices): same losses, and LoRA files that
// agree; and 16-bit runs (fp16 full fine-tune with loss scaling, bf16 LoRA) that finish and save.
//
// CudaSdTrainMethods: sd_train --device cuda and --device cpu (f32, same seed) for
//   --method textual-inversion: both exit 0 and write learned_embeds.safetensors and the A1111 file;
//        losses per step within 1e-4 relative; the learned embedding within 1e-4 relative of the CPU
//        run's, its change from the initializer's row within 1e-3 (the LoRA file's lora_B bound), and
//        it moved;
//   --method dreambooth-lora --with_prior_preservation: the GPU run generates the class images (into
//        a temporary --class_data_dir) and trains; the CPU run then finds them and generates none, so
//        both train on the same images: losses within 1e-4, gradient norms 1e-3, LoRA files as above
//        (all 1e-5, lora_B 1e-3).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/engine.h"
#include "ops/elementwise.h"
#include "ops/optim.h"
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "train/loss_scaler.h"
#include "train/training_model.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
using test::read_text;

const std::string kData = SD_TEST_DATA_DIR;

// ---------------------------------------------------------------- goldens (inputs only)

struct Golden {
  SafetensorsFile file;
  std::map<std::string, std::string> meta;
  Tensor get(const std::string& k) const { return file.get(k, file.info(k).dtype.value(), Device::cpu()); }
  bool has(const std::string& k) const { return file.contains(k); }
};

Golden open_golden(const std::string& name) {
  SafetensorsFile f = SafetensorsFile::open(kData + "/train_goldens/" + name + ".safetensors");
  std::map<std::string, std::string> meta = f.metadata();
  return Golden{std::move(f), std::move(meta)};
}

Tensor host_f32(const Tensor& t) { return copy_to(t, DType::F32, Device::cpu()); }

// The model as sd_train builds it (TrainingModel::load: the pipeline read in f32 onto `dev`, then each
// part placed in its training dtype), with the golden's method and objective.
std::unique_ptr<TrainingModel> make_model(const Golden& g, Device dev, DType wd) {
  TrainingModelOptions o;
  const std::string method = g.meta.at("method");
  o.method = method == "full" ? TrainMethod::Full : method == "lora" ? TrainMethod::Lora : TrainMethod::TextualInversion;
  // As train_golden_test.cpp: the placeholder "<shape>" from the initializer "a".
  if (o.method == TrainMethod::TextualInversion) o.ti = {"<shape>", "a", std::stoll(g.meta.at("ti_vectors"))};
  o.prior_loss_weight = std::stod(g.meta.at("prior_weight"));
  o.objective.dreambooth_snr = g.meta.at("dreambooth") == "1";
  o.weight_dtype = wd;
  o.device = dev;
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
  return TrainingModel::load(kData + "/" + g.meta.at("pipe"), o);
}

// Step k's inputs. The token ids go to the model's device (TrainingModel::tokenize makes them there);
// latents, time ids and the noise draws stay on the CPU, where the trainer makes them (loss() moves them).
MicroBatch golden_batch(const Golden& g, int64_t k, Device dev) {
  const std::string s = "step" + std::to_string(k) + ".";
  MicroBatch mb;
  mb.latents = g.get(s + "latents");
  mb.tokens.ids = to(g.get(s + "ids"), dev);
  if (g.has(s + "ids_2")) mb.tokens.ids_2 = to(g.get(s + "ids_2"), dev);
  if (g.has(s + "time_ids")) mb.time_ids = g.get(s + "time_ids");
  mb.prior_examples = std::stoll(g.meta.at("prior"));  // DreamBooth: the last ones are class images
  return mb;
}

NoiseDraws golden_draws(const Golden& g, int64_t k) {
  const std::string s = "step" + std::to_string(k) + ".";
  NoiseDraws d;
  d.noise = g.get(s + "noise");
  d.timesteps = g.get(s + "timesteps");
  if (g.has(s + "offset")) d.offset_noise = g.get(s + "offset");
  if (g.has(s + "perturbation")) d.perturbation = g.get(s + "perturbation");
  return d;
}

// Counts tensors that are not where they should be, remembering the first.
struct DeviceCheck {
  int64_t wrong = 0;
  std::string first;
  void expect(const Tensor& t, Device dev, const std::string& what) {
    if (!t.defined() || t.device() == dev) return;
    if (wrong++ == 0) first = what + " is on " + t.device().str() + ", expected " + dev.str();
  }
};

// ---------------------------------------------------------------- two AdamW steps

struct RunResult {
  std::vector<std::string> names;
  std::vector<double> losses;
  std::vector<Tensor> grads0;         // step 0, f32 on the CPU, loss scale removed (undefined: no gradient)
  std::vector<Tensor> before, after;  // the f32 masters, on the CPU
  int64_t trainable_elements = 0;
};

constexpr double kLr = 1e-3;

// Textual inversion: the token tables, read back to the host before the first step and after each
// step. Every row but the new tokens' must stay bit for bit what it was (the master, and the compute
// copy: the start rounded to its dtype), and the new rows must move.
struct TokenTableCheck {
  std::string what;
  std::vector<Tensor> start;  // f32 masters before the first step, on the CPU
  std::vector<int64_t> kept_master_worst, kept_param_worst, moved_least;
  int64_t steps = 0;

  void begin(const TrainingModel& m, Device dev, DeviceCheck& dc) {
    for (const TrainingModel::NewTokens& n : m.new_tokens()) {
      dc.expect(n.master, dev, n.component + " token table (master)");
      dc.expect(n.param, dev, n.component + " token table (compute copy)");
      dc.expect(n.original, dev, n.component + " token table (original rows)");
      start.push_back(host_f32(n.master));
      EXPECT_TRUE(bits_equal(host_f32(n.original), start.back()))
          << what << " " << n.component << ": the kept original rows are not the table's starting values";
      EXPECT_EQ(n.master.dim(), 2);
      EXPECT_LT(n.first, n.end);
      EXPECT_EQ(n.end, n.master.size(0)) << "the new tokens are the table's last rows";
    }
    kept_master_worst.assign(start.size(), 0);
    kept_param_worst.assign(start.size(), 0);
    moved_least.assign(start.size(), std::numeric_limits<int64_t>::max());
  }

  static bool bits_equal(const Tensor& a, const Tensor& b) {
    return a.numel() == b.numel() && std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.numel()) * sizeof(float)) == 0;
  }

  // Rows of `now` (f32, on the CPU) outside [first, end) that differ from `ref` in any bit.
  static int64_t changed_rows(const Tensor& now, const Tensor& ref, int64_t first, int64_t end) {
    const int64_t V = now.size(0), D = now.size(1);
    const auto* a = static_cast<const uint32_t*>(now.data_ptr());
    const auto* b = static_cast<const uint32_t*>(ref.data_ptr());
    int64_t changed = 0;
    for (int64_t v = 0; v < V; ++v) {
      if (v >= first && v < end) continue;
      for (int64_t j = 0; j < D; ++j)
        if (a[v * D + j] != b[v * D + j]) {
          ++changed;
          break;
        }
    }
    return changed;
  }

  void after_step(const TrainingModel& m, int64_t k) {
    const std::vector<TrainingModel::NewTokens>& nt = m.new_tokens();
    ASSERT_EQ(nt.size(), start.size());
    ++steps;
    for (size_t t = 0; t < nt.size(); ++t) {
      const TrainingModel::NewTokens& n = nt[t];
      const Tensor master = host_f32(n.master);
      ASSERT_EQ(master.shape(), start[t].shape()) << what << " " << n.component;
      const Tensor param = host_f32(n.param);
      const Tensor start_rounded = host_f32(copy_to(start[t], n.param.dtype(), Device::cpu()));
      const int64_t old_master = changed_rows(master, start[t], n.first, n.end);
      const int64_t old_param = changed_rows(param, start_rounded, n.first, n.end);
      EXPECT_EQ(old_master, 0) << what << " step " << k << " " << n.component
                               << ": token-table rows other than the new tokens' changed (master)";
      EXPECT_EQ(old_param, 0) << what << " step " << k << " " << n.component
                              << ": token-table rows other than the new tokens' changed (compute copy)";
      const int64_t D = master.size(1);
      const float* a = master.data<float>();
      const float* b = start[t].data<float>();
      int64_t moved = 0;
      for (int64_t i = n.first * D; i < n.end * D; ++i) moved += a[i] != b[i];
      EXPECT_GT(moved, 0) << what << " step " << k << " " << n.component << ": the new rows did not move";
      kept_master_worst[t] = std::max(kept_master_worst[t], old_master);
      kept_param_worst[t] = std::max(kept_param_worst[t], old_param);
      moved_least[t] = std::min(moved_least[t], moved);
    }
  }

  void print(const TrainingModel& m) const {
    const std::vector<TrainingModel::NewTokens>& nt = m.new_tokens();
    for (size_t t = 0; t < nt.size() && t < start.size(); ++t) {
      const TrainingModel::NewTokens& n = nt[t];
      std::printf("[ CudaTrainStep ] %-28s %s token table [%lld x %lld], after each of %lld steps: other rows changed "
                  "%lld (master) %lld (compute copy), expected 0; new rows %lld..%lld: at least %lld of %lld elements "
                  "moved\n",
                  what.c_str(), n.component.c_str(), static_cast<long long>(start[t].size(0)),
                  static_cast<long long>(start[t].size(1)), static_cast<long long>(steps),
                  static_cast<long long>(kept_master_worst[t]), static_cast<long long>(kept_param_worst[t]),
                  static_cast<long long>(n.first), static_cast<long long>(n.end - 1),
                  static_cast<long long>(steps > 0 ? moved_least[t] : 0),
                  static_cast<long long>((n.end - n.first) * start[t].size(1)));
    }
    std::fflush(stdout);
  }
};

// Two optimizer steps as sd_train's loop takes them: loss -> backward of loss x scale -> collect ->
// global norm (unscaled) -> clip to the case's max_grad_norm (0: no clipping) -> fused AdamW with
// grad_scale = (1/scale) x clip -> after_optimizer_step (textual inversion: the old rows back) -> zero_grad.
RunResult run_steps(const std::string& golden, Device dev, DType wd, double loss_scale, int64_t steps = 2) {
  const Golden g = open_golden(golden);
  std::unique_ptr<TrainingModel> m = make_model(g, dev, wd);
  const std::vector<OptimizerParam>& params = m->trainable();
  EXPECT_EQ(int64_t(params.size()), std::stoll(g.meta.at("trainable"))) << golden << ": trainable tensor count";
  const double max_grad_norm = std::stod(g.meta.at("max_grad_norm"));
  RunResult r;
  r.trainable_elements = m->num_trainable_elements();
  DeviceCheck dc;
  for (const OptimizerParam& p : params) {
    r.names.push_back(p.name);
    dc.expect(p.param, dev, "parameter " + p.name);
    dc.expect(p.master, dev, "master of " + p.name);
    EXPECT_EQ(p.param.dtype(), wd) << p.name;
    if (wd != DType::F32) {
      EXPECT_TRUE(p.master.defined()) << p.name << ": a 16-bit parameter needs an f32 master";
    }
    // LoRA starts from PEFT's initial values (the goldens hold them); masters and 16-bit copies alike.
    if (g.has("init." + p.name)) {
      const Tensor init = g.get("init." + p.name);
      copy_(p.master.defined() ? p.master : p.param, init);
      if (p.master.defined()) copy_(p.param, p.master);
    }
  }
  // The frozen UNet (LoRA) and text encoders are placed too.
  for (auto& [name, p] : m->pipeline().unet->named_parameters()) dc.expect(*p->slot, dev, "unet." + name);
  if (m->pipeline().text_encoder)
    for (auto& [name, p] : m->pipeline().text_encoder->named_parameters())
      dc.expect(*p->slot, dev, "text_encoder." + name);
  if (m->pipeline().text_encoder_2)
    for (auto& [name, p] : m->pipeline().text_encoder_2->named_parameters())
      dc.expect(*p->slot, dev, "text_encoder_2." + name);
  TokenTableCheck tables;
  tables.what = golden + " " + dtype_name(wd) + " on " + dev.str();
  if (g.meta.at("method") == "textual_inversion") {
    EXPECT_EQ(m->new_tokens().size(), m->is_sdxl() ? 2u : 1u) << golden << ": token tables with new rows";
    tables.begin(*m, dev, dc);
  } else {
    EXPECT_TRUE(m->new_tokens().empty()) << golden;
  }
  AdamWConfig ac;
  ac.lr = kLr;
  ac.weight_decay = 1e-2;
  AdamWOptimizer opt(params, ac);
  for (size_t i = 0; i < params.size(); ++i) r.before.push_back(host_f32(opt.master(i)));

  const double inv = 1.0 / loss_scale;
  for (int64_t k = 0; k < steps; ++k) {
    const MicroBatch mb = golden_batch(g, k, dev);
    const NoiseDraws d = golden_draws(g, k);
    const Tensor loss = m->loss(mb, d);
    dc.expect(loss, dev, "loss");
    EXPECT_EQ(loss.dtype(), DType::F32);
    EXPECT_EQ(loss.numel(), 1);
    r.losses.push_back(loss.item());
    autograd::backward(loss_scale == 1.0 ? loss : mul_scalar(loss, loss_scale));
    opt.collect_grads();
    const std::vector<Tensor> grads = opt.grads();
    int64_t with_grad = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;
      ++with_grad;
      dc.expect(grads[i], dev, "gradient of " + params[i].name);
      EXPECT_EQ(grads[i].dtype(), DType::F32) << params[i].name;
    }
    EXPECT_GT(with_grad, 0) << "no gradient reached any trainable tensor";
    if (k == 0)
      for (const Tensor& t : grads) r.grads0.push_back(t.defined() ? mul_scalar(host_f32(t), inv) : Tensor());
    const double norm = global_grad_norm(grads) * inv;
    EXPECT_TRUE(std::isfinite(norm)) << "step " << k << ": gradient norm " << norm;
    EXPECT_FALSE(has_non_finite(grads)) << "step " << k;
    const double clip = max_grad_norm > 0 && norm > max_grad_norm ? max_grad_norm / (norm + 1e-6) : 1.0;
    opt.step({kLr, kLr}, double(float(inv)) * double(float(clip)));
    m->after_optimizer_step();
    opt.zero_grad();
    if (!tables.start.empty()) tables.after_step(*m, k);
  }
  if (!tables.start.empty()) tables.print(*m);
  for (size_t i = 0; i < params.size(); ++i) {
    r.after.push_back(host_f32(opt.master(i)));
    dc.expect(opt.master(i), dev, "master of " + params[i].name + " after the steps");
    // The 16-bit compute copy is the master rounded (the fused AdamW rewrote it).
    if (params[i].master.defined()) {
      const double e = test::relative_error(host_f32(params[i].param), host_f32(copy_to(opt.master(i), wd, dev)));
      EXPECT_EQ(e, 0.0) << params[i].name << ": the model's 16-bit copy is not its master rounded";
    }
  }
  EXPECT_EQ(dc.wrong, 0) << dc.wrong << " tensor(s) on the wrong device; first: " << dc.first;
  return r;
}

// Relative errors of one run against another (L2 over the tensors named).
struct Errors {
  double loss = 0;    // worst step
  double grad = 0;    // step 0's gradients, all trainable tensors together (noise tensors left out)
  double grad_worst = 0;
  double update = 0;  // after - before over the steps, all together (noise tensors left out)
  double update_worst = 0;
  double master = 0;  // the masters after the steps, all together
};

double l2(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return s;
}

// Measures `run` against `ref` and prints the errors. A tensor whose reference gradient is at most
// `noise` x the norm of all gradients is rounding noise of a gradient that is zero in exact arithmetic:
// it is left out of the relative errors, and with `check_noise` its gradient in `run` must stay below
// 10 x that (the factor keeps a small real gradient near the threshold from failing on one side).
Errors measure(const std::string& what, const RunResult& run, const RunResult& ref, double noise, bool check_noise) {
  Errors e;
  EXPECT_EQ(run.names, ref.names) << what << ": trainable tensors differ";
  EXPECT_EQ(run.trainable_elements, ref.trainable_elements) << what;
  if (run.names != ref.names || run.losses.size() != ref.losses.size() || run.grads0.size() != ref.grads0.size()) {
    ADD_FAILURE() << what << ": runs of different shape";
    e.loss = e.grad = e.update = e.master = INFINITY;
    return e;
  }
  for (size_t k = 0; k < run.losses.size(); ++k) {
    const double le = std::abs(run.losses[k] - ref.losses[k]) / std::abs(ref.losses[k]);
    std::printf("[ CudaTrainStep ] %-28s step %zu loss %.8f vs %.8f: rel err %.2e\n", what.c_str(), k, run.losses[k],
                ref.losses[k], le);
    e.loss = std::max(e.loss, std::isfinite(le) ? le : INFINITY);
  }
  const size_t n = run.names.size();
  std::vector<double> ref_n2(n, 0);
  double ref_all = 0;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(run.grads0[i].defined(), ref.grads0[i].defined()) << what << ": the gradient of " << run.names[i]
                                                                << " reached one run only";
    if (!ref.grads0[i].defined()) continue;
    ref_n2[i] = l2(ref.grads0[i].to_vector());
    ref_all += ref_n2[i];
  }
  EXPECT_GT(ref_all, 0) << what << ": every reference gradient is zero";
  const double scale = std::sqrt(ref_all);
  auto is_noise = [&](size_t i) { return !ref.grads0[i].defined() || std::sqrt(ref_n2[i]) <= noise * scale; };

  double d_all = 0, r_all = 0, noise_largest = 0;
  int64_t noise_tensors = 0;
  std::string g_worst_name, u_worst_name;
  for (size_t i = 0; i < n; ++i) {
    if (!ref.grads0[i].defined() || !run.grads0[i].defined()) continue;
    const std::vector<double> a = run.grads0[i].to_vector(), b = ref.grads0[i].to_vector();
    if (a.size() != b.size()) {
      ADD_FAILURE() << what << ": " << run.names[i] << " has " << a.size() << " elements vs " << b.size();
      continue;
    }
    if (is_noise(i)) {
      ++noise_tensors;
      const double mine = std::sqrt(l2(a)) / scale;
      noise_largest = std::max(noise_largest, mine);
      if (check_noise)
        EXPECT_LE(mine, 10 * noise) << what << ": the gradient of " << run.names[i]
                                    << " is noise in the reference but not small here";
      continue;
    }
    double d2 = 0;
    for (size_t j = 0; j < a.size(); ++j) d2 += (a[j] - b[j]) * (a[j] - b[j]);
    d_all += d2;
    r_all += ref_n2[i];
    const double te = std::sqrt(d2 / ref_n2[i]);
    if (!(te <= e.grad_worst)) {
      e.grad_worst = te;
      g_worst_name = run.names[i];
    }
  }
  e.grad = r_all > 0 ? std::sqrt(d_all / r_all) : INFINITY;

  double ud_all = 0, ur_all = 0, pd_all = 0, pr_all = 0;
  int64_t moved = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::vector<double> a = run.after[i].to_vector(), b = ref.after[i].to_vector(), s0 = ref.before[i].to_vector(),
                              s1 = run.before[i].to_vector();
    if (a.size() != b.size()) continue;
    EXPECT_TRUE(s0 == s1) << what << ": " << run.names[i] << " did not start from the same values in both runs";
    double ud = 0, ur = 0, pd = 0, pr = 0;
    for (size_t j = 0; j < a.size(); ++j) {
      const double ua = a[j] - s0[j], ub = b[j] - s0[j];
      ud += (ua - ub) * (ua - ub);
      ur += ub * ub;
      pd += (a[j] - b[j]) * (a[j] - b[j]);
      pr += b[j] * b[j];
    }
    pd_all += pd;
    pr_all += pr;
    if (ur > 0) ++moved;
    if (is_noise(i) || ur == 0) continue;  // AdamW turns noise into lr-sized steps of either sign
    ud_all += ud;
    ur_all += ur;
    const double te = std::sqrt(ud / ur);
    if (!(te <= e.update_worst)) {
      e.update_worst = te;
      u_worst_name = run.names[i];
    }
  }
  EXPECT_GT(moved, 0) << what << ": no master moved in " << ref.losses.size() << " steps";
  e.update = ur_all > 0 ? std::sqrt(ud_all / ur_all) : INFINITY;
  e.master = std::sqrt(pd_all / std::max(pr_all, 1e-300));
  std::printf("[ CudaTrainStep ] %-28s %zu trainable tensors (%lld elements): gradients rel err %.2e (worst tensor %.2e "
              "%s), %lld noise tensors (largest %.1e of the norm); after %zu AdamW steps: updates rel err %.2e (worst "
              "tensor %.2e %s), masters rel err %.2e\n",
              what.c_str(), n, static_cast<long long>(run.trainable_elements), e.grad, e.grad_worst,
              g_worst_name.c_str(), static_cast<long long>(noise_tensors), noise_largest, run.losses.size(), e.update,
              e.update_worst, u_worst_name.c_str(), e.master);
  std::fflush(stdout);
  return e;
}

// f32: the GPU step against the CPU step, tight bounds (see the top of the file).
void gpu_matches_cpu_f32(const std::string& golden) {
  const RunResult cpu = run_steps(golden, Device::cpu(), DType::F32, 1.0);
  const RunResult gpu = run_steps(golden, Device::cuda(0), DType::F32, 1.0);
  const Errors e = measure(golden + " f32 gpu-vs-cpu", gpu, cpu, 1e-6, true);
  EXPECT_LE(e.loss, 1e-5) << golden << ": loss";
  EXPECT_LE(e.grad, 1e-5) << golden << ": gradients, all together";
  EXPECT_LE(e.grad_worst, 1e-4) << golden << ": gradient of one tensor (printed above)";
  EXPECT_LE(e.update, 1e-5) << golden << ": updates, all together";
  EXPECT_LE(e.update_worst, 1e-4) << golden << ": update of one tensor (printed above)";
  EXPECT_LE(e.master, 1e-6) << golden << ": masters after the steps";
}

// bf16 / fp16: the GPU step against the CPU step in the same dtype. The bounds scale with how far
// 16-bit rounding itself moves the CPU run from its f32 run (measured here, printed): the GPU must be
// within 3x that of the CPU, and never worse than the fixed floors below; the updates never worse
// than 0.5 (a missing or wrong-signed update is 1 or more).
void gpu_matches_cpu_16bit(const std::string& golden, DType wd) {
  const double scale = wd == DType::F16 ? 1024.0 : 1.0;  // fp16 with a loss scale, as sd_train runs it
  const std::string what = golden + " " + dtype_name(wd);
  const RunResult cpu32 = run_steps(golden, Device::cpu(), DType::F32, 1.0);
  const RunResult cpu = run_steps(golden, Device::cpu(), wd, scale);
  const RunResult gpu = run_steps(golden, Device::cuda(0), wd, scale);
  const Errors rounding = measure(what + " cpu-vs-cpu-f32", cpu, cpu32, 1e-3, false);
  const Errors e = measure(what + " gpu-vs-cpu", gpu, cpu, 1e-3, true);
  const double grad_tol = std::max(2e-2, 3 * rounding.grad), update_tol = std::min(0.5, std::max(0.1, 3 * rounding.update)),
               master_tol = std::max(5e-3, 3 * rounding.master);
  std::printf("[ CudaTrainStep ] %-28s bounds: loss 1e-2, gradients %.2e, updates %.2e, masters %.2e\n", what.c_str(),
              grad_tol, update_tol, master_tol);
  EXPECT_LE(e.loss, 1e-2) << what << ": loss";
  EXPECT_LE(e.grad, grad_tol) << what << ": gradients, all together";
  EXPECT_LE(e.update, update_tol) << what << ": updates, all together";
  EXPECT_LE(e.master, master_tol) << what << ": masters after the steps";
}

TEST(CudaTrainStep, Sd1LoraWithTextEncoderF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sd1_lora_te");
}

TEST(CudaTrainStep, Sd1FullWithTextEncoderF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sd1_full");
}

TEST(CudaTrainStep, Sd1LoraBf16AndFp16MatchCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_16bit("sd1_lora_te", DType::BF16);
  gpu_matches_cpu_16bit("sd1_lora_te", DType::F16);
}

TEST(CudaTrainStep, Sd1FullBf16AndFp16MatchCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_16bit("sd1_full", DType::BF16);
  gpu_matches_cpu_16bit("sd1_full", DType::F16);
}

TEST(CudaTrainStep, SdxlFullAndLoraF32MatchCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sdxl_full");
  gpu_matches_cpu_f32("sdxl_lora");
}

// DreamBooth with prior preservation: the batch's last `prior` examples are class images, their loss
// weighted by prior_weight; the instance half with the DreamBooth scripts' Min-SNR weighting.
TEST(CudaTrainMethodStep, Sd1DreamBoothPriorWithTextEncoderF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sd1_dreambooth_prior");
}

TEST(CudaTrainMethodStep, SdxlDreamBoothLoraPriorF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sdxl_dreambooth_lora_prior");
}

TEST(CudaTrainMethodStep, SdxlDreamBoothLoraPriorBf16MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_16bit("sdxl_dreambooth_lora_prior", DType::BF16);
}

// Textual inversion: the whole token table gets gradients and updates; after_optimizer_step puts every
// row but the new tokens' back (checked bit for bit on the device's tables in run_steps).
TEST(CudaTrainMethodStep, Sd1TextualInversionTwoVectorsF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sd1_textual_inversion");
}

TEST(CudaTrainMethodStep, SdxlTextualInversionBothEncodersF32MatchesCpu) {
  SD_REQUIRE_CUDA();
  gpu_matches_cpu_f32("sdxl_textual_inversion");
}

// fp16 loss scaling on the GPU: an overflowing backward leaves inf/NaN in the f32 gradient
// accumulators, and the checks the loop uses (global_grad_norm, has_non_finite, the scaler's unscale_)
// see it; a clean step right after is finite; one planted inf or NaN in one GPU gradient is found.
TEST(CudaTrainStep, Fp16InfGradientIsDetected) {
  SD_REQUIRE_CUDA();
  const Device dev = Device::cuda(0);
  const Golden g = open_golden("sd1_lora_te");
  std::unique_ptr<TrainingModel> m = make_model(g, dev, DType::F16);
  for (const OptimizerParam& p : m->trainable())
    if (g.has("init." + p.name)) {
      copy_(p.master, g.get("init." + p.name));
      copy_(p.param, p.master);
    }
  AdamWOptimizer opt(m->trainable(), AdamWConfig{});
  const MicroBatch mb = golden_batch(g, 0, dev);
  const NoiseDraws d = golden_draws(g, 0);
  auto on_device = [&](const std::vector<Tensor>& grads) {
    int64_t n = 0;
    for (const Tensor& t : grads) {
      if (!t.defined()) continue;
      EXPECT_TRUE(t.is_cuda());
      ++n;
    }
    EXPECT_GT(n, 0);
  };

  // 1e30 x the loss: its gradient overflows fp16 where the f32 loss meets the UNet's fp16 output.
  {
    const Tensor loss = m->loss(mb, d);
    ASSERT_TRUE(std::isfinite(loss.item()));
    autograd::backward(mul_scalar(loss, 1e30));
    opt.collect_grads();
    const std::vector<Tensor> grads = opt.grads();
    on_device(grads);
    const double norm = global_grad_norm(grads);
    std::printf("[ CudaTrainStep ] fp16 overflowing step: gradient norm %g\n", norm);
    EXPECT_FALSE(std::isfinite(norm));
    EXPECT_TRUE(has_non_finite(grads));
    LossScaler scaler;
    EXPECT_TRUE(scaler.unscale_(grads));
    opt.zero_grad();
  }
  // A clean step: scale 1024, finite.
  const Tensor loss = m->loss(mb, d);
  autograd::backward(mul_scalar(loss, 1024.0));
  opt.collect_grads();
  std::vector<Tensor> grads = opt.grads();
  on_device(grads);
  const double norm = global_grad_norm(grads) / 1024.0;
  std::printf("[ CudaTrainStep ] fp16 clean step: gradient norm %g\n", norm);
  ASSERT_TRUE(std::isfinite(norm));
  ASSERT_FALSE(has_non_finite(grads));
  // One planted inf, then one NaN, in the middle of one gradient tensor.
  size_t target = 0;
  while (target < grads.size() && (!grads[target].defined() || grads[target].numel() < 3)) ++target;
  ASSERT_LT(target, grads.size());
  for (double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    Tensor h = host_f32(grads[target]);
    const float keep = h.data<float>()[h.numel() / 2];
    h.data<float>()[h.numel() / 2] = float(bad);
    copy_(grads[target], h);
    EXPECT_TRUE(has_non_finite(grads)) << bad;
    EXPECT_FALSE(std::isfinite(global_grad_norm(grads))) << bad;
    h.data<float>()[h.numel() / 2] = keep;
    copy_(grads[target], h);
    EXPECT_FALSE(has_non_finite(grads)) << bad;
  }
  opt.zero_grad();
}

// ---------------------------------------------------------------- sd_train on the GPU

const std::string kSdTrain = std::string(SD_BINARY_DIR) + "/tools/sd_train";

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class CudaSdTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    SD_REQUIRE_CUDA();
    ASSERT_TRUE(fs::is_regular_file(kSdTrain)) << kSdTrain << " is not built (ninja sd_train)";
    dir_ = fs::temp_directory_path() / ("sd_train_cuda_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Runs sd_train with the common flags plus `extra`, output in dir_/<name>; returns the exit status
  // (stderr printed on failure).
  int train(const std::string& name, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--pretrained_model_name_or_path", kData + "/pipe_tiny_sd1", "--train_data_dir",
                                     kData + "/train_tiny", "--train_batch_size", "2", "--max_train_steps", "3",
                                     "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--seed", "7",
                                     "--output_dir", (dir_ / name).string(), "--report_to", "none", "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_sd_train(name, args);
  }

  // Runs sd_train with exactly `args`; stdout and stderr go to dir_/<name>.stdout.txt / .stderr.txt.
  int run_sd_train(const std::string& name, const std::vector<std::string>& args) {
    std::string cmd = shell_quote(kSdTrain);
    for (const std::string& a : args) cmd += " " + shell_quote(a);
    const fs::path err = dir_ / (name + ".stderr.txt");
    cmd += " >" + shell_quote((dir_ / (name + ".stdout.txt")).string()) + " 2>" + shell_quote(err.string());
    const int status = std::system(cmd.c_str());
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const std::string text = read_text(err);
    std::printf("[ CudaSdTrain ] %s: exit %d\n%s", name.c_str(), code, text.c_str());
    return code;
  }

  std::vector<nlohmann::json> log(const std::string& name) {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir_ / name / "logs" / "train.jsonl");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  fs::path dir_;
};

TEST_F(CudaSdTrain, LoraRunMatchesCpuRun) {
  const std::vector<std::string> flags = {"--method", "lora", "--train_text_encoder", "--save_precision", "fp32"};
  std::vector<std::string> gpu_flags = flags, cpu_flags = flags;
  gpu_flags.insert(gpu_flags.end(), {"--device", "cuda"});
  cpu_flags.insert(cpu_flags.end(), {"--device", "cpu"});
  ASSERT_EQ(train("gpu", gpu_flags), 0);
  ASSERT_EQ(train("cpu", cpu_flags), 0);
  EXPECT_NE(read_text(dir_ / "gpu.stderr.txt").find(" on cuda:"), std::string::npos)
      << "the GPU run did not say it loads on cuda";

  const std::vector<nlohmann::json> lg = log("gpu"), lc = log("cpu");
  ASSERT_EQ(lg.size(), 3u);
  ASSERT_EQ(lc.size(), 3u);
  for (size_t k = 0; k < lg.size(); ++k) {
    ASSERT_FALSE(lg[k]["loss"].is_null()) << "step " << k + 1;
    const double a = lg[k]["loss"].get<double>(), b = lc[k]["loss"].get<double>();
    const double na = lg[k]["grad_norm"].get<double>(), nb = lc[k]["grad_norm"].get<double>();
    std::printf("[ CudaSdTrain ] step %zu loss gpu %.8f cpu %.8f (rel %.2e), grad norm gpu %.8f cpu %.8f (rel %.2e)\n",
                k + 1, a, b, std::abs(a - b) / std::abs(b), na, nb, std::abs(na - nb) / std::abs(nb));
    EXPECT_LE(std::abs(a - b), 1e-4 * std::abs(b)) << "loss at step " << k + 1;
    EXPECT_LE(std::abs(na - nb), 1e-3 * std::abs(nb)) << "grad norm at step " << k + 1;
    EXPECT_EQ(lg[k]["examples"], lc[k]["examples"]);
  }

  // The LoRA files: same keys and shapes; B (zero at the start: only the updates) within 1e-3 relative
  // all together, A and B together within 1e-5.
  const fs::path fg = dir_ / "gpu" / "pytorch_lora_weights.safetensors", fc = dir_ / "cpu" / "pytorch_lora_weights.safetensors";
  ASSERT_TRUE(fs::is_regular_file(fg));
  ASSERT_TRUE(fs::is_regular_file(fc));
  SafetensorsFile sg = SafetensorsFile::open(fg.string()), sc = SafetensorsFile::open(fc.string());
  ASSERT_EQ(sg.keys(), sc.keys());
  double d_all = 0, r_all = 0, d_b = 0, r_b = 0;
  for (const std::string& k : sc.keys()) {
    const std::vector<double> a = sg.get(k, DType::F32, Device::cpu()).to_vector();
    const std::vector<double> b = sc.get(k, DType::F32, Device::cpu()).to_vector();
    ASSERT_EQ(a.size(), b.size()) << k;
    const bool is_b = k.find("lora_B") != std::string::npos;
    for (size_t j = 0; j < a.size(); ++j) {
      const double d = (a[j] - b[j]) * (a[j] - b[j]), r = b[j] * b[j];
      d_all += d;
      r_all += r;
      if (is_b) {
        d_b += d;
        r_b += r;
      }
    }
  }
  ASSERT_GT(r_b, 0) << "lora_B did not move in 3 steps";
  const double e_all = std::sqrt(d_all / r_all), e_b = std::sqrt(d_b / r_b);
  std::printf("[ CudaSdTrain ] LoRA file (%zu tensors): rel err all %.2e, lora_B %.2e\n", sc.keys().size(), e_all, e_b);
  EXPECT_LE(e_all, 1e-5);
  EXPECT_LE(e_b, 1e-3);
}

TEST_F(CudaSdTrain, MixedPrecisionRunsFinishAndSave) {
  // fp16 full fine-tune: the loss scaler and the f32 masters on the GPU; the pipeline is saved.
  ASSERT_EQ(train("full_fp16", {"--method", "full", "--mixed_precision", "fp16", "--device", "cuda"}), 0);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "full_fp16" / "unet" / "diffusion_pytorch_model.safetensors"));
  // bf16 LoRA with LoCon convolutions.
  ASSERT_EQ(train("lora_bf16", {"--method", "lora", "--mixed_precision", "bf16", "--lora_target", "attn,conv",
                                "--device", "cuda"}), 0);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "lora_bf16" / "pytorch_lora_weights.safetensors"));
  for (const std::string name : {"full_fp16", "lora_bf16"}) {
    const std::vector<nlohmann::json> l = log(name);
    ASSERT_EQ(l.size(), 3u) << name;
    for (const nlohmann::json& j : l) {
      ASSERT_FALSE(j["loss"].is_null()) << name << " " << j.dump();
      EXPECT_TRUE(std::isfinite(j["loss"].get<double>())) << name << " " << j.dump();
      if (name == "lora_bf16") EXPECT_FALSE(j["skipped"].get<bool>()) << name << " " << j.dump();
    }
  }
}

// ---------------------------------------------------------------- sd_train's other methods on the GPU

class CudaSdTrainMethods : public CudaSdTrain {
 protected:
  // The GPU run's log against the CPU run's: `steps` entries each, finite losses within 1e-4 relative,
  // gradient norms (where logged) within 1e-3, the same example counts (`examples` each step). Returns
  // the worst loss error.
  double compare_logs(const std::string& what, size_t steps, int64_t examples) {
    const std::vector<nlohmann::json> lg = log("gpu"), lc = log("cpu");
    EXPECT_EQ(lg.size(), steps) << what << ": steps logged by the GPU run";
    EXPECT_EQ(lc.size(), steps) << what << ": steps logged by the CPU run";
    double worst = 0;
    for (size_t k = 0; k < std::min(lg.size(), lc.size()); ++k) {
      if (lg[k]["loss"].is_null() || lc[k]["loss"].is_null()) {
        ADD_FAILURE() << what << " step " << k + 1 << ": no loss (gpu " << lg[k].dump() << ", cpu " << lc[k].dump() << ")";
        return INFINITY;
      }
      const double a = lg[k]["loss"].get<double>(), b = lc[k]["loss"].get<double>();
      const double le = std::abs(a - b) / std::abs(b);
      std::printf("[ CudaSdTrain ] %s step %zu loss gpu %.8f cpu %.8f (rel %.2e)", what.c_str(), k + 1, a, b, le);
      EXPECT_TRUE(std::isfinite(a)) << what << " step " << k + 1;
      EXPECT_LE(std::abs(a - b), 1e-4 * std::abs(b)) << what << ": loss at step " << k + 1;
      worst = std::max(worst, std::isfinite(le) ? le : INFINITY);
      const bool ng = lg[k].contains("grad_norm") && lg[k]["grad_norm"].is_number(),
                 nc = lc[k].contains("grad_norm") && lc[k]["grad_norm"].is_number();
      EXPECT_EQ(ng, nc) << what << " step " << k + 1 << ": the gradient norm is logged by one run only";
      if (ng && nc) {
        const double na = lg[k]["grad_norm"].get<double>(), nb = lc[k]["grad_norm"].get<double>();
        std::printf(", grad norm gpu %.8f cpu %.8f (rel %.2e)", na, nb, std::abs(na - nb) / std::abs(nb));
        EXPECT_LE(std::abs(na - nb), 1e-3 * std::abs(nb)) << what << ": grad norm at step " << k + 1;
      }
      std::printf("\n");
      EXPECT_EQ(lg[k]["examples"], lc[k]["examples"]) << what << " step " << k + 1;
      if (lg[k]["examples"].is_number()) EXPECT_EQ(lg[k]["examples"].get<int64_t>(), examples) << what << " step " << k + 1;
    }
    std::fflush(stdout);
    return worst;
  }
};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The initializer's row of the tiny SD1 text encoder's token table, as the file holds it (in f32).
std::vector<double> initializer_row(const std::string& pipe, const std::string& word) {
  std::ifstream vf(pipe + "/tokenizer/vocab.json");
  const nlohmann::json vocab = nlohmann::json::parse(vf);
  const std::string key = word + "</w>";
  if (!vocab.contains(key)) {
    ADD_FAILURE() << "'" << key << "' is not in " << pipe << "/tokenizer/vocab.json";
    return {};
  }
  const int64_t id = vocab.at(key).get<int64_t>();
  const SafetensorsFile f = SafetensorsFile::open(pipe + "/text_encoder/model.safetensors");
  for (const std::string& k : f.keys()) {
    const std::string suffix = "token_embedding.weight";
    if (k.size() < suffix.size() || k.compare(k.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const Tensor table = f.get(k, DType::F32, Device::cpu());
    const std::vector<double> all = table.to_vector();
    const int64_t D = table.size(1);
    return std::vector<double>(all.begin() + id * D, all.begin() + (id + 1) * D);
  }
  ADD_FAILURE() << pipe << "/text_encoder/model.safetensors has no token_embedding.weight";
  return {};
}

// Textual inversion, 2 vectors, 3 steps on each device: the learned embedding (saved in f32) agrees.
TEST_F(CudaSdTrainMethods, TextualInversionRunMatchesCpuRun) {
  const std::string pipe = kData + "/pipe_tiny_sd1";
  const std::vector<std::string> flags = {
      "--method", "textual-inversion", "--pretrained_model_name_or_path", pipe, "--train_data_dir",
      kData + "/train_tiny_txt", "--placeholder_token", "<shape>", "--initializer_token", "a", "--num_vectors", "2",
      "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "3", "--learning_rate", "1e-3",
      "--lr_warmup_steps", "0", "--seed", "7", "--save_precision", "fp32", "--report_to", "none", "--quiet"};
  ASSERT_EQ(run_sd_train("gpu", with(flags, {"--output_dir", (dir_ / "gpu").string(), "--device", "cuda"})), 0);
  ASSERT_EQ(run_sd_train("cpu", with(flags, {"--output_dir", (dir_ / "cpu").string(), "--device", "cpu"})), 0);
  EXPECT_NE(read_text(dir_ / "gpu.stderr.txt").find(" on cuda:"), std::string::npos)
      << "the GPU run did not say it loads on cuda";
  for (const char* run : {"gpu", "cpu"})
    for (const char* f : {"learned_embeds.safetensors", "shape.safetensors"})
      EXPECT_TRUE(fs::is_regular_file(dir_ / run / f)) << run << ": " << f << " was not written";
  const double loss_err = compare_logs("textual inversion", 3, 2);

  const fs::path fg = dir_ / "gpu" / "learned_embeds.safetensors", fc = dir_ / "cpu" / "learned_embeds.safetensors";
  ASSERT_TRUE(fs::is_regular_file(fg));
  ASSERT_TRUE(fs::is_regular_file(fc));
  const SafetensorsFile sg = SafetensorsFile::open(fg.string()), sc = SafetensorsFile::open(fc.string());
  ASSERT_TRUE(sg.contains("<shape>"));
  ASSERT_TRUE(sc.contains("<shape>"));
  EXPECT_EQ(sg.info("<shape>").shape, (Shape{2, 32}));
  EXPECT_EQ(sg.info("<shape>").shape, sc.info("<shape>").shape);
  EXPECT_EQ(sg.info("<shape>").dtype_str, "F32") << "--save_precision fp32";
  const std::vector<double> a = sg.get("<shape>", DType::F32, Device::cpu()).to_vector();
  const std::vector<double> b = sc.get("<shape>", DType::F32, Device::cpu()).to_vector();
  const std::vector<double> init = initializer_row(pipe, "a");
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 2 * init.size()) << "2 vectors of the table's width";
  // Relative L2: the embeddings, and their change from the initializer's row (both vectors start there).
  double d = 0, r = 0, du = 0, ru = 0;
  for (size_t j = 0; j < a.size(); ++j) {
    const double i0 = init[j % init.size()];
    d += (a[j] - b[j]) * (a[j] - b[j]);
    r += b[j] * b[j];
    du += ((a[j] - i0) - (b[j] - i0)) * ((a[j] - i0) - (b[j] - i0));
    ru += (b[j] - i0) * (b[j] - i0);
  }
  ASSERT_GT(r, 0);
  ASSERT_GT(ru, 0) << "the CPU run's embedding did not move from the initializer's row";
  const double e = std::sqrt(d / r), eu = std::sqrt(du / ru), moved = std::sqrt(ru / r);
  std::printf("[ CudaSdTrain ] textual inversion learned_embeds [2 x %zu] after 3 steps: rel err %.2e, change from the "
              "initializer rel err %.2e (the change is %.2e of the embedding), worst loss rel err %.2e\n",
              init.size(), e, eu, moved, loss_err);
  std::fflush(stdout);
  EXPECT_LE(e, 1e-4) << "the learned embedding";
  EXPECT_LE(eu, 1e-3) << "the learned embedding's change from the initializer's row";
}

// DreamBooth-LoRA with prior preservation: the class images are generated on the GPU; the CPU run then
// finds them and trains on the same images.
TEST_F(CudaSdTrainMethods, DreamBoothLoraPriorClassImagesOnGpuRunMatchesCpuRun) {
  const fs::path cls = dir_ / "class";
  const std::vector<std::string> flags = {
      "--method", "dreambooth-lora", "--pretrained_model_name_or_path", kData + "/pipe_tiny_sd1",
      "--instance_data_dir", kData + "/dreambooth_dog", "--instance_prompt", "a photo of sks dog",
      "--with_prior_preservation", "--class_data_dir", cls.string(), "--class_prompt", "a photo of a dog",
      "--num_class_images", "2", "--sample_batch_size", "2", "--resolution", "32", "--train_batch_size", "2",
      "--max_train_steps", "3", "--learning_rate", "1e-3", "--lr_warmup_steps", "0", "--seed", "7",
      "--save_precision", "fp32", "--report_to", "none", "--quiet"};
  ASSERT_EQ(run_sd_train("gpu", with(flags, {"--output_dir", (dir_ / "gpu").string(), "--device", "cuda"})), 0);
  const std::string gpu_err = read_text(dir_ / "gpu.stderr.txt");
  EXPECT_NE(gpu_err.find(" on cuda:"), std::string::npos) << "the GPU run did not say it loads on cuda";
  EXPECT_NE(gpu_err.find("generating 2 class image(s)"), std::string::npos) << gpu_err;
  int64_t images = 0;
  for (const auto& e : fs::directory_iterator(cls)) images += e.path().extension() == ".png";
  EXPECT_EQ(images, 2) << "class images in " << cls;
  ASSERT_EQ(run_sd_train("cpu", with(flags, {"--output_dir", (dir_ / "cpu").string(), "--device", "cpu"})), 0);
  EXPECT_EQ(read_text(dir_ / "cpu.stderr.txt").find("generating"), std::string::npos)
      << "the CPU run generated class images although the GPU run left enough";
  const double loss_err = compare_logs("DreamBooth-LoRA with prior", 3, 4);  // 2 instance + 2 class images

  const fs::path fg = dir_ / "gpu" / "pytorch_lora_weights.safetensors", fc = dir_ / "cpu" / "pytorch_lora_weights.safetensors";
  ASSERT_TRUE(fs::is_regular_file(fg));
  ASSERT_TRUE(fs::is_regular_file(fc));
  const SafetensorsFile sg = SafetensorsFile::open(fg.string()), sc = SafetensorsFile::open(fc.string());
  ASSERT_EQ(sg.keys(), sc.keys());
  double d_all = 0, r_all = 0, d_b = 0, r_b = 0;
  for (const std::string& k : sc.keys()) {
    const std::vector<double> a = sg.get(k, DType::F32, Device::cpu()).to_vector();
    const std::vector<double> b = sc.get(k, DType::F32, Device::cpu()).to_vector();
    ASSERT_EQ(a.size(), b.size()) << k;
    const bool is_b = k.find("lora_B") != std::string::npos;
    for (size_t j = 0; j < a.size(); ++j) {
      const double dd = (a[j] - b[j]) * (a[j] - b[j]), rr = b[j] * b[j];
      d_all += dd;
      r_all += rr;
      if (is_b) {
        d_b += dd;
        r_b += rr;
      }
    }
  }
  ASSERT_GT(r_all, 0);
  ASSERT_GT(r_b, 0) << "lora_B did not move in 3 steps";
  const double e_all = std::sqrt(d_all / r_all), e_b = std::sqrt(d_b / r_b);
  std::printf("[ CudaSdTrain ] DreamBooth-LoRA with prior (%lld class images generated on the GPU): LoRA file (%zu "
              "tensors): rel err all %.2e, lora_B %.2e; worst loss rel err %.2e\n",
              static_cast<long long>(images), sc.keys().size(), e_all, e_b, loss_err);
  std::fflush(stdout);
  EXPECT_LE(e_all, 1e-5);
  EXPECT_LE(e_b, 1e-3);
}

}  // namespace
}  // namespace sd::train
