#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "infer/pipeline.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/optim.h"
#include "ops/view.h"
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/file_io.h"
#include "ops/cuda/gemm.h"
#include "train/checkpoint.h"
#include "train/dataset.h"
#include "train/ema.h"
#include "train/embedding_saving.h"
#include "train/feature_cache.h"
#include "train/flags.h"
#include "train/image_transforms.h"
#include "train/loss_scaler.h"
#include "train/lr_schedule.h"
#include "train/model_saving.h"
#include "train/random_draws.h"
#include "train/tensorboard.h"
#include "train/train_log.h"
#include "train/training_data.h"
#include "train/training_model.h"
#include "train/validation.h"

namespace sd::train {

namespace fs = std::filesystem;

// ---- stop signals ---------------------------------------------------------------------------------

namespace {
std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);  // a second Ctrl-C: stop now
    std::raise(sig);
  }
}
}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}
bool stop_requested() { return g_stop.load(); }
void request_stop() { g_stop.store(true); }

namespace {

Device resolve_device(const std::string& d) {
  if (d.empty()) return cudart::device_count() > 0 ? Device::cuda(0) : Device::cpu();
  if (d == "cpu") return Device::cpu();
  if (d.rfind("cuda", 0) == 0) {
    int index = 0;
    if (d.size() > 5 && d[4] == ':') index = int(parse_int(d.substr(5)));
    else SD_CHECK(d == "cuda", "--device '", d, "': expected cpu, cuda or cuda:N");
    SD_CHECK(cudart::device_count() > index, "--device ", d, ": no usable GPU (", cudart::unavailable_reason(), ")");
    return Device::cuda(index);
  }
  SD_FAIL("--device '", d, "': expected cpu, cuda or cuda:N");
}

DType weight_dtype_of(MixedPrecision p) {
  switch (p) {
    case MixedPrecision::Fp16: return DType::F16;
    case MixedPrecision::Bf16: return DType::BF16;
    default: return DType::F32;
  }
}

DType save_dtype_of(const std::string& s) {
  if (s == "fp16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  return DType::F32;
}

// What the loop keeps between steps and checkpoints.
struct Position {
  int64_t global_step = 0;      // optimizer steps done (skipped fp16 steps included)
  int64_t epoch = 0;            // the epoch the next micro-batch comes from
  int64_t batch_in_epoch = 0;   // its batch index in that epoch
  int64_t micro_step = 0;       // micro-batches done in all: the key of their random draws
};

class Loop {
 public:
  Loop(const TrainArgs& args, std::shared_ptr<GradientSync> sync) : a_(args), sync_(std::move(sync)) {}
  int run();

 private:
  bool is_main() const { return sync_->rank() == 0; }
  void say(const std::string& s) {
    if (!is_main()) return;
    if (bar_) bar_->message(s);
    else std::fprintf(stderr, "%s\n", s.c_str());
  }
  void write_run_config() const;
  void load_data();
  void load_model();
  void setup_schedule();
  nlohmann::json fingerprint() const;
  void resume();
  bool train_micro_batch(double loss_multiplier, double& loss_out, int64_t& examples_out);
  StepRecord optimizer_step();
  void save_checkpoint_now();
  void validate_now();
  void save_final();
  double lr_for_step(int64_t k, int group) const;
  // The f32 master of every LoRA tensor by its file name (the model holds 16-bit copies with mixed precision).
  LoraValues lora_masters() const {
    LoraValues v;
    for (size_t i = 0; i < opt_->params().size(); ++i) v[opt_->params()[i].name] = opt_->master(i);
    return v;
  }
  // The starting model's config.json of a component ("" for single files), copied into checkpoints.
  std::string source_config(const std::string& component) const {
    const fs::path p = fs::path(a_.pretrained_model_name_or_path) / component / "config.json";
    return fs::is_regular_file(p) ? p.string() : std::string();
  }
  std::vector<Tensor> ema_targets() const;

  TrainArgs a_;
  std::shared_ptr<GradientSync> sync_;
  Device device_ = Device::cpu();
  DType wd_ = DType::F32;
  std::unique_ptr<TrainingData> data_;
  std::unique_ptr<TrainingModel> model_;
  std::unique_ptr<AdamWOptimizer> opt_;
  std::optional<LossScaler> scaler_;
  std::unique_ptr<EmaModel> ema_;
  std::unique_ptr<BatchSampler> sampler_;
  std::optional<FeatureCache> cache_;
  std::string vae_fp_, text_fp_;
  LrScheduleConfig lr_cfg_;
  double te_lr_ = 0;
  int64_t max_steps_ = 0, steps_per_epoch_ = 0, num_epochs_ = 0;
  Position pos_;
  int64_t log_bytes_at_start_ = 0;
  std::unique_ptr<JsonlLog> log_;
  std::unique_ptr<TensorBoardWriter> tb_;
  std::unique_ptr<ProgressBar> bar_;
  std::set<std::string> reported_bad_;
  int64_t bad_examples_ = 0;
  int64_t last_checkpoint_step_ = -1;
  int64_t last_validation_step_ = -1;
};

void Loop::load_data() {
  // The data first: an empty or unreadable dataset fails before minutes of model loading.
  data_ = std::make_unique<TrainingData>(a_, [this](const std::string& m) { say(m); });
  say("data: " + data_->describe());
}

void Loop::load_model() {
  TrainingModelOptions o;
  o.method = a_.method;
  o.weight_dtype = wd_;
  o.device = device_;
  o.train_text_encoder = a_.train_text_encoder;
  o.gradient_checkpointing = a_.gradient_checkpointing;
  o.unet_lora.rank = a_.rank;
  o.unet_lora.alpha = a_.lora_alpha.value_or(0.0);
  o.unet_lora.use_rslora = a_.use_rslora;
  o.unet_lora.targets = unet_lora_targets(a_.lora_target);
  o.text_lora = o.unet_lora;
  o.text_lora.targets = text_encoder_lora_targets();
  o.seed = draw_key(a_.seed, DrawPurpose::LoraInit);
  o.objective.snr_gamma = a_.snr_gamma;
  o.objective.noise_offset = a_.noise_offset;
  o.objective.input_perturbation = a_.input_perturbation;
  o.prediction_override = a_.prediction_type;
  o.variant = a_.variant;
  o.model_config = a_.model_config;
  o.ti.placeholder = a_.placeholder_token;
  o.ti.initializer = a_.initializer_token;
  o.ti.num_vectors = a_.num_vectors;
  o.prior_loss_weight = a_.prior_loss_weight;
  o.freeze_vae_encoder = a_.freeze_vae_encoder;
  o.objective.dreambooth_snr = a_.dreambooth;
  if (a_.offset_noise) o.objective.noise_offset = 0.1;  // train_dreambooth.py's --offset_noise
  // DreamBooth prior preservation: the missing class images first, with a pipeline of their own (freed
  // before the training model loads), as train_dreambooth.py does.
  if (a_.dreambooth && a_.with_prior_preservation) {
    const DType gen = a_.prior_generation_precision == "fp16"   ? DType::F16
                      : a_.prior_generation_precision == "bf16" ? DType::BF16
                      : a_.prior_generation_precision == "fp32" ? DType::F32
                                                                : wd_;
    data_->prepare_class_images(a_.pretrained_model_name_or_path, gen, device_, is_main(),
                                [this] { sync_->any(false); });  // the other processes wait for rank 0
    say("data: " + data_->describe());
  }
  say("loading " + a_.pretrained_model_name_or_path + " on " + (device_.is_cuda() ? "cuda:" + std::to_string(device_.index) : "cpu") +
      (a_.mixed_precision == MixedPrecision::No ? std::string(" (fp32)")
                                                : " (" + std::string(mixed_precision_name(a_.mixed_precision)) + " mixed precision)"));
  model_ = TrainingModel::load(a_.pretrained_model_name_or_path, o);
  infer::Pipeline& p = model_->pipeline();
  say("model: " + p.describe_family() + ", prediction " +
      nn::prediction_name(model_->objective().prediction) + ", " + std::to_string(model_->num_trainable_elements()) +
      " trainable parameters in " + std::to_string(model_->trainable().size()) + " tensors (" + a_.method_text + ")");
  if (a_.resolution == 0) a_.resolution = p.unet->config().sample_size[0] * p.vae_scale_factor();
  data_->configure(a_.resolution, model_->placeholder_text());
  if (a_.enable_bucket) say(data_->bucket_summary());
  if (a_.cache_latents) {
    cache_.emplace((fs::path(a_.output_dir) / "cache").string());
    vae_fp_ = weights_fingerprint(p.vae->state_dict()) + dtype_name(p.vae->compute_dtype());
    if (!model_->text_encoder_trains()) {
      std::vector<std::pair<std::string, Tensor>> st = p.text_encoder->state_dict();
      if (p.text_encoder_2)
        for (auto& kv : p.text_encoder_2->state_dict()) st.push_back(kv);
      text_fp_ = weights_fingerprint(st) + dtype_name(wd_) + (p.is_sdxl() ? "sdxl" : "sd");
    }
  }
}

void Loop::setup_schedule() {
  sampler_ = data_->make_sampler(a_.train_batch_size, sync_->world_size(), a_.seed);
  const int64_t batches = sampler_->batches_per_epoch();
  steps_per_epoch_ = (batches + a_.gradient_accumulation_steps - 1) / a_.gradient_accumulation_steps;
  max_steps_ = a_.max_train_steps ? *a_.max_train_steps : a_.num_train_epochs * steps_per_epoch_;
  num_epochs_ = (max_steps_ + steps_per_epoch_ - 1) / steps_per_epoch_;

  double lr = a_.learning_rate, te_lr = a_.text_encoder_lr.value_or(a_.learning_rate);
  if (a_.scale_lr) {
    const double k = double(a_.train_batch_size * a_.gradient_accumulation_steps * sync_->world_size());
    lr *= k;
    te_lr *= k;
  }
  te_lr_ = te_lr;
  lr_cfg_.name = a_.lr_scheduler;
  lr_cfg_.base_lr = lr;
  lr_cfg_.warmup_steps = a_.lr_warmup_steps;
  lr_cfg_.total_steps = max_steps_;
  lr_cfg_.num_cycles = double(a_.lr_num_cycles);
  lr_cfg_.power = a_.lr_power;
  validate(lr_cfg_);

  AdamWConfig ac;
  ac.lr = lr;
  ac.beta1 = a_.adam_beta1;
  ac.beta2 = a_.adam_beta2;
  ac.eps = a_.adam_epsilon;
  ac.weight_decay = a_.adam_weight_decay;
  opt_ = std::make_unique<AdamWOptimizer>(model_->trainable(), ac);
  if (a_.mixed_precision == MixedPrecision::Fp16) scaler_.emplace();
  if (a_.use_ema) {
    EmaConfig ec;
    ec.decay = a_.ema_decay;
    ec.min_decay = a_.ema_min_decay;
    ec.update_after_step = a_.ema_update_after_step;
    ec.use_ema_warmup = a_.use_ema_warmup;
    ec.inv_gamma = a_.ema_inv_gamma;
    ec.power = a_.ema_power;
    ec.offload = a_.offload_ema;
    std::vector<Tensor> masters;
    std::vector<std::string> names;
    for (size_t i = 0; i < opt_->params().size(); ++i)
      if (opt_->params()[i].group == 0) {
        masters.push_back(opt_->master(i));
        names.push_back(opt_->params()[i].name);
      }
    ema_ = std::make_unique<EmaModel>(masters, ec, names);
  }
  say("schedule: " + std::to_string(num_epochs_) + " epoch(s) of " + std::to_string(batches) + " batch(es) of " +
      std::to_string(a_.train_batch_size) + " x " + std::to_string(sync_->world_size()) + " process(es), " +
      std::to_string(a_.gradient_accumulation_steps) + " per step: " + std::to_string(max_steps_) + " steps");
}

double Loop::lr_for_step(int64_t k, int group) const {
  LrScheduleConfig c = lr_cfg_;
  if (group == 1) c.base_lr = te_lr_;
  return lr_at(c, k);
}

std::vector<Tensor> Loop::ema_targets() const {
  std::vector<Tensor> out;
  for (size_t i = 0; i < opt_->params().size(); ++i)
    if (opt_->params()[i].group == 0) out.push_back(opt_->master(i));
  return out;
}

nlohmann::json Loop::fingerprint() const {
  nlohmann::json f;
  f["method"] = method_name(a_.method);
  std::error_code ec;
  f["model"] = fs::weakly_canonical(a_.pretrained_model_name_or_path, ec).string();
  f["family"] = nn::family_name(model_->pipeline().family);
  int64_t n = 0;
  for (const OptimizerParam& p : model_->trainable()) n += p.param.numel();
  f["trainable"] = std::to_string(model_->trainable().size()) + " tensors, " + std::to_string(n) + " elements";
  f["train_batch_size"] = a_.train_batch_size;
  f["gradient_accumulation_steps"] = a_.gradient_accumulation_steps;
  f["seed"] = a_.seed;
  f["dataset"] = data_->fingerprint();
  f["resolution"] = a_.resolution;
  f["mixed_precision"] = mixed_precision_name(a_.mixed_precision);
  f["world_size"] = sync_->world_size();
  return f;
}

void Loop::resume() {
  if (a_.resume_from_checkpoint.empty()) return;
  const std::optional<std::string> dir = find_checkpoint(a_.output_dir, a_.resume_from_checkpoint);
  if (!dir) {
    say("no checkpoint in '" + a_.output_dir + "': starting a new run");
    return;
  }
  LoadedCheckpoint ck = load_checkpoint(*dir);
  check_fingerprint(ck.state.value("fingerprint", nlohmann::json::object()), fingerprint(), *dir);
  const nlohmann::json& s = ck.state;
  pos_.global_step = s.at("global_step").get<int64_t>();
  pos_.epoch = s.at("epoch").get<int64_t>();
  pos_.batch_in_epoch = s.at("batch_in_epoch").get<int64_t>();
  pos_.micro_step = s.at("micro_step").get<int64_t>();
  NamedTensors opt_tensors, ema_tensors;
  for (auto& [name, t] : ck.tensors) {
    if (name.rfind("ema.", 0) == 0) ema_tensors.emplace_back(name.substr(4), t);
    else opt_tensors.emplace_back(name, t);
  }
  opt_->load_state_tensors(opt_tensors, s.at("optimizer_steps").get<int64_t>());
  if (scaler_) {
    SD_CHECK(s.contains("loss_scaler"), "checkpoint '", *dir, "' has no loss-scaler state");
    LossScalerState ls;
    ls.scale = s["loss_scaler"].at("scale").get<double>();
    ls.growth_tracker = s["loss_scaler"].at("growth_tracker").get<int64_t>();
    ls.skipped_steps = s["loss_scaler"].at("skipped_steps").get<int64_t>();
    scaler_->load_state(ls);
  }
  if (ema_) {
    SD_CHECK(!ema_tensors.empty(), "checkpoint '", *dir, "' has no EMA weights (unet_ema/), and this run uses --use_ema");
    ema_->load_state(ema_tensors, s.at("ema_step").get<int64_t>());
  }
  log_bytes_at_start_ = s.value("log_bytes", int64_t(0));
  bad_examples_ = s.value("bad_examples", int64_t(0));
  last_checkpoint_step_ = pos_.global_step;
  say("resumed from " + *dir + " at step " + std::to_string(pos_.global_step) + " (epoch " +
      std::to_string(pos_.epoch) + ", batch " + std::to_string(pos_.batch_in_epoch) + ")");
}

// One micro-batch: forward, backward of loss * multiplier, gradients collected. Returns false when no
// example of it could be loaded.
bool Loop::train_micro_batch(double multiplier, double& loss_out, int64_t& examples_out) {
  const std::vector<int64_t> idx = sampler_->batch(pos_.epoch, pos_.batch_in_epoch, sync_->rank());
  const int64_t first_slot = int64_t(sync_->rank()) * a_.train_batch_size;
  // Class images (DreamBooth) draw from slots after the whole global batch's instance slots.
  const int64_t class_slot_base = a_.train_batch_size * sync_->world_size() + first_slot;
  TrainingData::Batch loaded = data_->load(idx, pos_.epoch, uint64_t(pos_.micro_step), first_slot, class_slot_base,
                                           [this](const std::string& name, const std::string& why) {
                                             ++bad_examples_;
                                             if (reported_bad_.insert(name).second)
                                               say("skipping an unreadable example: " + why);
                                           });
  std::vector<LoadedExample>& ex = loaded.examples;
  // With prior preservation a batch must keep its instance/class halves: drop it whole if one side lost
  // an image (the loss splits the batch in two equal halves, as the script's torch.chunk).
  if (loaded.class_images > 0 && loaded.class_images * 2 != int64_t(ex.size())) return false;
  if (ex.empty()) return false;
  const int64_t B = int64_t(ex.size());
  infer::Pipeline& p = model_->pipeline();

  if (a_.method == TrainMethod::Vae) {
    // The autoencoder: reconstruct the images through a posterior sample (eps keyed like the latents').
    std::vector<Tensor> px, eps;
    const int64_t f = p.vae_scale_factor(), L = p.vae->config().latent_channels;
    for (const LoadedExample& e : ex) {
      px.push_back(unsqueeze(e.image.pixels, 0));
      eps.push_back(draw_normal({1, L, e.image.pixels.size(1) / f, e.image.pixels.size(2) / f},
                                draw_key(a_.seed, DrawPurpose::Posterior, uint64_t(pos_.micro_step), uint64_t(e.slot))));
    }
    const Tensor loss = model_->vae_loss(cat(px, 0), cat(eps, 0), a_.vae_loss == "l1", a_.kl_weight);
    loss_out = loss.item();
    SD_CHECK(std::isfinite(loss_out), "the VAE loss is ", loss_out, " at step ", pos_.global_step + 1,
             ": training diverged; lower --learning_rate");
    autograd::backward(mul_scalar(loss, multiplier));
    opt_->collect_grads();
    examples_out = B;
    return true;
  }

  // ---- latents: the VAE posterior (cached or encoded now), sampled with this step's draws ----
  std::vector<Tensor> means(static_cast<size_t>(B)), logvars(static_cast<size_t>(B));
  std::vector<size_t> todo;
  std::vector<std::string> keys(static_cast<size_t>(B));
  for (size_t j = 0; j < ex.size(); ++j) {
    if (cache_) {
      keys[j] = FeatureCache::key({"latents-v2", ex[j].dataset->content_hash(ex[j].index), data_->transform_key(ex[j]),
                                   vae_fp_});
      if (auto hit = cache_->get(keys[j])) {
        means[j] = (*hit)[0].first == "mean" ? (*hit)[0].second : (*hit)[1].second;
        logvars[j] = (*hit)[0].first == "mean" ? (*hit)[1].second : (*hit)[0].second;
        continue;
      }
    }
    todo.push_back(j);
  }
  if (!todo.empty()) {
    std::vector<Tensor> px;
    for (size_t j : todo) px.push_back(unsqueeze(ex[j].image.pixels, 0));
    const auto [mean, logvar] = model_->encode_posterior(cat(px, 0));
    for (size_t t = 0; t < todo.size(); ++t) {
      const size_t j = todo[t];
      means[j] = narrow(mean, 0, int64_t(t), 1);
      logvars[j] = narrow(logvar, 0, int64_t(t), 1);
      if (cache_ && is_main()) cache_->put(keys[j], {{"mean", means[j]}, {"logvar", logvars[j]}});
    }
  }
  for (size_t j = 0; j < means.size(); ++j) {  // cache hits come from the host
    means[j] = to(means[j], device_);
    logvars[j] = to(logvars[j], device_);
  }
  const Tensor mean = cat(means, 0), logvar = cat(logvars, 0);
  std::vector<Tensor> eps;
  for (const LoadedExample& e : ex) {
    Shape s = mean.shape();
    s[0] = 1;
    eps.push_back(draw_normal(s, draw_key(a_.seed, DrawPurpose::Posterior, uint64_t(pos_.micro_step), uint64_t(e.slot))));
  }
  MicroBatch mb;
  mb.latents = model_->sample_latents(mean, logvar, to(cat(eps, 0), device_));

  // ---- conditioning ----
  std::vector<std::string> captions;
  for (const LoadedExample& e : ex) captions.push_back(e.caption);
  if (cache_ && !text_fp_.empty()) {
    std::vector<Tensor> ctx, pooled;
    for (const std::string& c : captions) {
      const std::string k = FeatureCache::key({"text-v1", c, text_fp_});
      std::optional<std::vector<std::pair<std::string, Tensor>>> hit = cache_->get(k);
      if (!hit) {
        autograd::NoGrad ng;
        const TextConditioning tc = model_->encode_text(model_->tokenize({c}));
        std::vector<std::pair<std::string, Tensor>> v = {{"context", tc.context}};
        if (tc.pooled.defined()) v.emplace_back("pooled", tc.pooled);
        if (is_main()) cache_->put(k, v);
        hit = v;
      }
      for (const auto& [name, t] : *hit) (name == "context" ? ctx : pooled).push_back(to(t, device_));
    }
    mb.context = cat(ctx, 0);
    if (!pooled.empty()) mb.pooled = cat(pooled, 0);
  } else {
    mb.tokens = model_->tokenize(captions);
  }
  if (p.is_sdxl()) {
    std::vector<std::array<int64_t, 2>> sizes, crops;
    for (const LoadedExample& e : ex) {
      sizes.push_back(e.image.original_size);
      crops.push_back(e.image.crop_top_left);
    }
    // target_size: the training size (a bucket's with --enable_bucket), (height, width) as the scripts order it.
    mb.time_ids = TrainingModel::sdxl_time_ids(sizes, crops, ex[0].image.pixels.size(1), ex[0].image.pixels.size(2));
  }

  // ---- loss and backward ----
  std::vector<int64_t> slots;
  for (const LoadedExample& e : ex) slots.push_back(e.slot);
  mb.prior_examples = loaded.class_images;
  const NoiseDraws draws = draw_noise(model_->objective(), mb.latents.shape(), a_.seed, uint64_t(pos_.micro_step), slots);
  const Tensor loss = model_->loss(mb, draws);
  loss_out = loss.item();
  if (!std::isfinite(loss_out) && !scaler_)
    SD_FAIL("the loss is ", loss_out, " at step ", pos_.global_step + 1, " (epoch ", pos_.epoch,
            "): training diverged; lower --learning_rate, or use --max_grad_norm / --mixed_precision bf16. Nothing was "
            "saved from this step", last_checkpoint_step_ >= 0 ? "; the last checkpoint is intact" : "");
  autograd::backward(mul_scalar(loss, multiplier));
  opt_->collect_grads();
  examples_out = B;
  return true;
}

// Test hooks, for tests/train/mpi_train_test.cpp only (they exist for nothing else):
//   SD_TRAIN_TEST_FAIL_RANK=R SD_TRAIN_TEST_FAIL_STEP=S: process R raises in the middle of step S
//     (after its backward, before the gradients meet): the whole job must end, naming the rank.
//   SD_TRAIN_TEST_INF_RANK=R SD_TRAIN_TEST_INF_STEP=S: process R's averaged gradients become inf at step
//     S, on that process alone (under ZeRO-1: the part it owns): every process must skip the step.
bool test_hook(const char* rank_var, const char* step_var, int rank, int64_t step) {
  const char* r = std::getenv(rank_var);
  const char* s = std::getenv(step_var);
  return r && s && std::atoi(r) == rank && std::atoll(s) == step;
}

StepRecord Loop::optimizer_step() {
  StepRecord r;
  double loss_sum = 0;
  int64_t micro = 0, examples = 0, micro_batches = 0;
  const int64_t batches = sampler_->batches_per_epoch();
  const int world = sync_->world_size();
  const double scale = scaler_ ? scaler_->scale() : 1.0;
  // accelerate divides every micro-batch's loss by the accumulation count, also in a short group at
  // the end of an epoch.
  const double multiplier = scale / double(a_.gradient_accumulation_steps);
  r.epoch = pos_.epoch;
  for (int64_t m = 0; m < a_.gradient_accumulation_steps; ++m) {
    // Only the step's last micro-batch communicates (its gradients start travelling from the
    // grad-ready hooks while its backward runs); the ones before accumulate locally.
    sync_->begin_backward(m + 1 == a_.gradient_accumulation_steps || pos_.batch_in_epoch + 1 == batches);
    // Each process's loss is the mean over its share of the global batch. Weighted by that share
    // (n_r * W / N: exactly 1 for an even split), the average over processes is the mean over the
    // global batch, also when a short last batch splits unevenly or leaves a process nothing.
    double share = 1.0;
    if (world > 1) {
      int64_t mine = 0, all = 0;
      for (int q = 0; q < world; ++q) {
        const int64_t k = int64_t(sampler_->batch(pos_.epoch, pos_.batch_in_epoch, q).size());
        all += k;
        if (q == sync_->rank()) mine = k;
      }
      share = all > 0 ? double(mine * world) / double(all) : 0.0;
    }
    double l = 0;
    int64_t n = 0;
    if (train_micro_batch(multiplier * share, l, n)) {
      loss_sum += l * share;
      ++micro;
      examples += n;
    }
    ++micro_batches;
    ++pos_.micro_step;
    if (++pos_.batch_in_epoch == batches) {
      pos_.batch_in_epoch = 0;
      ++pos_.epoch;
      break;  // an optimizer step never spans two epochs (the scripts' dataloader ends the group)
    }
  }
  ++pos_.global_step;
  r.step = pos_.global_step;
  if (test_hook("SD_TRAIN_TEST_FAIL_RANK", "SD_TRAIN_TEST_FAIL_STEP", sync_->rank(), r.step))
    SD_FAIL("failing on purpose at step ", r.step, " (SD_TRAIN_TEST_FAIL_RANK / SD_TRAIN_TEST_FAIL_STEP: a test hook)");
  if (world == 1) {
    r.loss = micro > 0 ? loss_sum / double(micro) : std::nan("");
    r.examples = examples;
  } else {
    const bool any_loaded = sync_->any(micro > 0);
    r.loss = any_loaded ? sync_->sum(loss_sum) / double(world * micro_batches) : std::nan("");
    r.examples = int64_t(sync_->sum(double(examples)));
  }

  // The gradients meet here (all-reduce, or ZeRO-1's reduce-scatter), then the norm over all of them.
  sync_->reduce(*opt_);
  const std::vector<Tensor> grads = opt_->grads();
  if (test_hook("SD_TRAIN_TEST_INF_RANK", "SD_TRAIN_TEST_INF_STEP", sync_->rank(), r.step))
    for (const Tensor& g : grads)
      if (g.defined()) fill_(g, INFINITY);
  const double inv = scaler_ ? scaler_->inv_scale() : 1.0;
  double norm = sync_->grad_norm(grads) * inv;
  const bool found_inf = sync_->any(!std::isfinite(norm));
  r.loss_scale = scale;
  r.grad_norm = norm;
  r.lr = lr_for_step(opt_->step_count(), 0);
  if (found_inf && !scaler_)
    SD_FAIL("the gradients are not finite at step ", r.step, " (epoch ", r.epoch,
            "): training diverged; lower --learning_rate or use --max_grad_norm. Nothing was saved from this step");
  if (found_inf) {
    r.skipped = true;
  } else {
    double clip = 1.0;
    if (a_.max_grad_norm > 0 && norm > a_.max_grad_norm) clip = a_.max_grad_norm / (norm + 1e-6);
    // torch.nn.utils.clip_grad_norm_ multiplies the gradients by a float32 coefficient.
    const double g = double(float(inv)) * double(float(clip));
    const int64_t k = opt_->step_count();
    opt_->step({lr_for_step(k, 0), lr_for_step(k, 1)}, g);
  }
  sync_->after_step(*opt_);  // ZeRO-1: every process's updated part to all (skipped steps too)
  if (!found_inf) model_->after_optimizer_step();  // textual inversion: every row but the new tokens' back
  if (ema_) ema_->step(ema_targets());  // diffusers steps the EMA on every synchronised step
  if (scaler_) {
    scaler_->update(found_inf);
    SD_CHECK(scaler_->scale() >= std::ldexp(1.0, -24), "fp16 loss scale fell below 2^-24 at step ", r.step,
             ": every step overflows; train with --mixed_precision bf16 or no, or lower --learning_rate");
  }
  opt_->zero_grad();
  return r;
}

void Loop::save_checkpoint_now() {
  // Under ZeRO-1 the optimizer state is spread over the processes: all of them take part in gathering
  // it to rank 0, which alone writes. Every process notes the step (a stop request asks all alike).
  const NamedTensors opt_state = sync_->gather_state(*opt_);
  last_checkpoint_step_ = pos_.global_step;
  if (!is_main()) return;
  CheckpointContents c;
  nlohmann::json& s = c.state;
  s["global_step"] = pos_.global_step;
  s["epoch"] = pos_.epoch;
  s["batch_in_epoch"] = pos_.batch_in_epoch;
  s["micro_step"] = pos_.micro_step;
  s["optimizer_steps"] = opt_->step_count();
  if (scaler_) {
    const LossScalerState ls = scaler_->state();
    s["loss_scaler"] = {{"scale", ls.scale}, {"growth_tracker", ls.growth_tracker}, {"skipped_steps", ls.skipped_steps}};
  }
  if (ema_) s["ema_step"] = ema_->optimization_step();
  s["log_bytes"] = log_ ? log_->bytes() : 0;
  s["bad_examples"] = bad_examples_;
  s["fingerprint"] = fingerprint();
  // Moments in optimizer.safetensors; the f32 masters as loadable files (diffusers' checkpoint layout).
  CheckpointFile moments{"optimizer.safetensors", "", {}, {}, {}, ""};
  std::map<std::string, CheckpointFile> components;
  for (auto& [name, t] : opt_state) {
    if (name.rfind("exp_avg", 0) == 0) {
      moments.tensors.emplace_back(name, t);
      continue;
    }
    if (a_.method == TrainMethod::Lora) continue;  // the LoRA file below holds the adapters
    if (a_.method == TrainMethod::TextualInversion) {  // whole token tables (the new rows are in them)
      if (components.empty() || components.begin()->first != "tables")
        components["tables"] = CheckpointFile{"token_embeddings.safetensors", "", {}, {}, {}, ""};
      components["tables"].tensors.emplace_back(name, t);
      continue;
    }
    const std::string component = name.substr(0, name.find('.'));
    CheckpointFile& f = components[component];
    if (f.path.empty()) {
      f.path = component + "/" + (component.rfind("text_encoder", 0) == 0 ? "model.safetensors"
                                                                          : "diffusion_pytorch_model.safetensors");
      f.prefix = component + ".";
      f.copy_config_from = source_config(component);
    }
    f.tensors.emplace_back(name.substr(component.size() + 1), t);
  }
  c.files.push_back(std::move(moments));
  for (auto& [component, f] : components) c.files.push_back(std::move(f));
  if (a_.method == TrainMethod::Lora) {
    CheckpointFile lora;
    lora.path = "pytorch_lora_weights.safetensors";
    lora.write = [this](const std::string& path) {
      const LoraValues masters = lora_masters();
      save_lora_diffusers(path, model_->loras(), DType::F32, {}, &masters);
    };
    c.files.push_back(std::move(lora));
  }
  if (a_.method == TrainMethod::TextualInversion) {
    CheckpointFile emb;  // the embedding as people load it (diffusers' learned_embeds.safetensors)
    emb.path = "learned_embeds.safetensors";
    emb.prefix = "learned.";  // read back under names the optimizer ignores
    emb.write = [this](const std::string& path) {
      save_learned_embeds(*model_, fs::path(path).parent_path().string(), "learned_embeds", DType::F32);
    };
    c.files.push_back(std::move(emb));
  }
  if (ema_) {
    CheckpointFile e{"unet_ema/diffusion_pytorch_model.safetensors", "ema.unet.", {}, {}, {}, source_config("unet")};
    for (auto& [name, t] : ema_->state_tensors()) e.tensors.emplace_back(name.substr(5), t);  // "unet." off
    c.files.push_back(std::move(e));
  }
  const std::string dir = save_checkpoint(a_.output_dir, pos_.global_step, c);
  if (a_.checkpoints_total_limit) prune_checkpoints(a_.output_dir, *a_.checkpoints_total_limit);
  say("saved " + dir);
}

void Loop::validate_now() {
  if (a_.validation_prompts.empty() || !is_main() || last_validation_step_ == pos_.global_step) return;
  last_validation_step_ = pos_.global_step;
  std::vector<Tensor> compute;
  if (ema_) {
    // As diffusers: validate with the EMA weights, then put the trained ones back.
    for (size_t i = 0; i < opt_->params().size(); ++i)
      if (opt_->params()[i].group == 0) compute.push_back(opt_->params()[i].param);
    ema_->store(compute);
    ema_->copy_to(compute);
  }
  ValidationConfig vc;
  vc.prompts = a_.validation_prompts;
  if (a_.method == TrainMethod::TextualInversion && a_.num_vectors > 1) {
    // "<tok>" in a prompt stands for all its vectors, as diffusers' maybe_convert_prompt expands it.
    for (std::string& prompt : vc.prompts)
      for (size_t at = prompt.find(a_.placeholder_token); at != std::string::npos;
           at = prompt.find(a_.placeholder_token, at + model_->placeholder_text().size()))
        prompt.replace(at, a_.placeholder_token.size(), model_->placeholder_text());
  }
  vc.num_images = a_.num_validation_images;
  vc.steps = a_.validation_inference_steps;
  vc.guidance_scale = a_.validation_guidance_scale;
  vc.seed = a_.seed;
  vc.resolution = a_.resolution;
  try {
    const ValidationResult r = run_validation(model_->pipeline(), vc, pos_.global_step, a_.output_dir,
                                              model_->pipeline().model_name());
    say("validation: " + r.grid);
  } catch (...) {
    if (ema_) ema_->restore(compute);
    throw;
  }
  if (ema_) ema_->restore(compute);
}

void Loop::save_final() {
  if (!is_main()) return;
  infer::Pipeline& p = model_->pipeline();
  const DType sd = save_dtype_of(a_.save_precision);
  if (a_.method == TrainMethod::TextualInversion) {
    for (const std::string& path : save_learned_embeds(*model_, a_.output_dir, "learned_embeds", sd)) say("saved " + path);
    const std::string name = a_.output_name.empty() ? embedding_file_name(a_.placeholder_token) : a_.output_name;
    say("saved " + save_a1111_embedding(*model_, a_.output_dir, name, sd) + " (A1111/ComfyUI: trigger \"" + name + "\")");
    return;
  }
  if (a_.method == TrainMethod::Lora) {
    const std::string path = (fs::path(a_.output_dir) / "pytorch_lora_weights.safetensors").string();
    const LoraValues masters = lora_masters();
    save_lora_diffusers(path, model_->loras(), sd, {}, &masters);
    say("saved " + path);
    if (a_.save_format == "kohya") {
      const std::string name = a_.output_name.empty() ? "pytorch_lora_weights_kohya" : a_.output_name;
      const std::string kpath = (fs::path(a_.output_dir) / (name + ".safetensors")).string();
      std::map<std::string, std::string> meta = {{"ss_output_name", name},
                                                 {"ss_learning_rate", std::to_string(a_.learning_rate)},
                                                 {"ss_max_train_steps", std::to_string(max_steps_)},
                                                 {"ss_seed", std::to_string(a_.seed)},
                                                 {"ss_resolution", "(" + std::to_string(a_.resolution) + ", " +
                                                                       std::to_string(a_.resolution) + ")"},
                                                 {"ss_mixed_precision", mixed_precision_name(a_.mixed_precision)},
                                                 {"ss_sd_model_name", p.model_name()},
                                                 {"ss_training_comment", "sd_train"}};
      save_lora_kohya(kpath, model_->loras(), p.is_sdxl(), sd, meta, &masters);
      say("saved " + kpath);
    }
    return;
  }
  PipelineSaveRequest req;
  req.source = a_.pretrained_model_name_or_path;
  req.variant = a_.variant;
  req.output_dir = a_.output_dir;
  req.dtype = sd;
  req.family = p.family;
  req.prediction = model_->objective().prediction;
  req.tokenizer_dir = infer::clip_data_dir();
  req.model_config = a_.model_config;
  // The saved UNet is the EMA when there is one (diffusers' train_text_to_image.py does the same).
  std::vector<Tensor> ema_values;
  if (ema_) ema_values = ema_->shadow_params();
  size_t e = 0;
  for (size_t i = 0; i < opt_->params().size(); ++i) {
    const OptimizerParam& op = opt_->params()[i];
    const size_t dot = op.name.find('.');
    const std::string component = op.name.substr(0, dot), key = op.name.substr(dot + 1);
    const Tensor value = (ema_ && op.group == 0) ? ema_values[e++] : opt_->master(i);
    req.trained[component].emplace_back(key, value);
  }
  save_diffusers_pipeline(req);
  say("saved the pipeline to " + a_.output_dir);
  if (a_.save_single_file) {
    const std::string name = a_.output_name.empty() ? "model" : a_.output_name;
    const std::string path = (fs::path(a_.output_dir) / (name + ".safetensors")).string();
    save_pipeline_single_file(req, path, {{"sd_train_steps", std::to_string(pos_.global_step)}});
    say("saved " + path);
  }
}

// The run's flags as a TOML file next to its outputs: `sd_train --config <output_dir>/sd_train_config.toml`
// repeats the run (kohya's habit of keeping runs in config files). Written to a temporary name and
// renamed, as every file of a run.
void Loop::write_run_config() const {
  if (!a_.effective_config.empty()) write_file_atomic(fs::path(a_.output_dir) / kRunConfigFile, a_.effective_config);
}

int Loop::run() {
  device_ = resolve_device(a_.device);
  if (sync_->world_size() > 1 && device_.is_cuda()) {
    // One process per GPU: the rank among this machine's processes picks it (an explicit cuda:N stays).
    if (a_.device.empty() || a_.device == "cuda") {
      SD_CHECK(sync_->local_rank() < cudart::device_count(), "process ", sync_->rank(), " is number ",
               sync_->local_rank(), " on its machine, which has ", cudart::device_count(),
               " GPU(s): start at most one process per GPU (mpirun -np N, or -H host:N per machine)");
      device_ = Device::cuda(sync_->local_rank());
    }
    cudart::set_device(device_.index);
  }
  wd_ = weight_dtype_of(a_.mixed_precision);
  // --allow_tf32: f32 matrix multiplies and convolutions on TF32 tensor cores (torch.backends' switch).
  if (device_.is_cuda()) cuda::set_allow_tf32(a_.allow_tf32);
  if (is_main()) {
    fs::create_directories(a_.output_dir);
    write_run_config();
    // Leftovers of a save that was killed midway are never checkpoints: remove them.
    for (const auto& e : fs::directory_iterator(a_.output_dir)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("checkpoint-", 0) == 0 && (n.find(".tmp-") != std::string::npos || n.find(".old-") != std::string::npos)) {
        std::error_code ec;
        fs::remove_all(e.path(), ec);
      }
    }
  }
  sync_->any(false);  // a barrier: the others look for checkpoints only after that clean-up
  load_data();
  load_model();
  setup_schedule();
  // Data parallelism: buckets and grad-ready hooks on the trainable tensors; under ZeRO-1 the optimizer
  // keeps only this process's part of its state from here on (and so must the model: no full masters).
  sync_->attach(*opt_);
  if (opt_->sharded()) model_->release_masters();
  if (sync_->communicates()) say("processes: " + sync_->describe());
  resume();
  if (is_main()) {
    log_ = std::make_unique<JsonlLog>((fs::path(a_.output_dir) / "logs" / "train.jsonl").string(), log_bytes_at_start_);
    if (a_.report_to == "tensorboard") tb_ = std::make_unique<TensorBoardWriter>((fs::path(a_.output_dir) / a_.logging_dir).string());
  }
  bar_ = std::make_unique<ProgressBar>(max_steps_, pos_.global_step, is_main() && !a_.quiet);
  bool stopped = false;
  while (pos_.global_step < max_steps_) {
    const int64_t epoch_before = pos_.epoch;
    const StepRecord r = optimizer_step();
    if (is_main()) {
      log_->write(step_json(r));
      if (tb_) {
        tb_->add_scalar("train_loss", r.loss, r.step);
        tb_->add_scalar("lr", r.lr, r.step);
        tb_->add_scalar("grad_norm", r.grad_norm, r.step);
        if (scaler_) tb_->add_scalar("loss_scale", r.loss_scale, r.step);
        tb_->flush();
      }
    }
    bar_->update(r, peak_memory_bytes(device_));
    if (pos_.global_step % a_.checkpointing_steps == 0) save_checkpoint_now();
    if (a_.method == TrainMethod::TextualInversion && pos_.global_step % a_.save_steps == 0 && is_main())
      save_learned_embeds(*model_, a_.output_dir, "learned_embeds-steps-" + std::to_string(pos_.global_step), DType::F32);
    const bool epoch_done = pos_.epoch != epoch_before;
    if ((a_.validation_steps && pos_.global_step % *a_.validation_steps == 0) ||
        (epoch_done && a_.validation_epochs && pos_.epoch % *a_.validation_epochs == 0 && pos_.global_step < max_steps_))
      validate_now();
    if (sync_->any(stop_requested())) {  // every process stops after the same step
      if (last_checkpoint_step_ != pos_.global_step) save_checkpoint_now();
      say("stopped at step " + std::to_string(pos_.global_step) + "; continue with --resume_from_checkpoint latest");
      stopped = true;
      break;
    }
  }
  bar_->finish();
  if (sync_->communicates()) {
    const double bytes = sync_->max(double(opt_->state_bytes()));
    say("optimizer state: " + std::to_string(int64_t(bytes)) + " bytes on the largest process (moments, and f32 "
        "masters of 16-bit tensors" + std::string(opt_->sharded() ? "; ZeRO-1 shards" : "") + ")");
    say(sync_->report());
  }
  if (stopped) return 0;
  save_final();
  validate_now();
  if (bad_examples_ > 0) say(std::to_string(bad_examples_) + " example load(s) failed and were skipped (named above)");
  if (scaler_ && scaler_->skipped_steps() > 0)
    say(std::to_string(scaler_->skipped_steps()) + " step(s) skipped by the fp16 loss scaler (inf/NaN gradients)");
  return 0;
}

}  // namespace

int run_training(const TrainArgs& args, std::shared_ptr<GradientSync> sync) {
  if (!sync) sync = std::make_shared<GradientSync>();
  Loop loop(args, std::move(sync));
  return loop.run();
}

}  // namespace sd::train
