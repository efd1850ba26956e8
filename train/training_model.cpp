#include "train/training_model.h"

#include "autograd/node.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/view.h"
#include "runtime/error.h"

namespace sd::train {

namespace {

// Every parameter of `m` becomes trainable: with a 16-bit weight dtype the loaded f32 tensor becomes
// the master and the module gets a 16-bit copy.
void make_trainable(nn::Module& m, const std::string& prefix, int group, DType wd, std::vector<OptimizerParam>& out) {
  for (auto& [name, p] : m.named_parameters()) {
    SD_CHECK(p->slot->defined(), "training: parameter '", prefix, name, "' was not loaded");
    OptimizerParam op;
    op.name = prefix + name;
    op.group = group;
    if (wd != DType::F32) {
      op.master = contiguous_raw(*p->slot);
      SD_CHECK(op.master.dtype() == DType::F32, "training: '", op.name, "' must be loaded in f32 first");
      *p->slot = copy_to(op.master, wd, op.master.device());
      p->slot->set_name(name);
    }
    p->slot->set_requires_grad(true);
    op.param = *p->slot;
    out.push_back(op);
  }
}

void add_lora_params(const TrainableLora& lora, int group, DType wd, std::vector<OptimizerParam>& out) {
  for (const TrainableParam& tp : lora.params()) {
    OptimizerParam op;
    op.name = tp.name;
    op.param = tp.tensor;
    op.group = group;
    // As diffusers' cast_training_params: the adapters are created in the weight dtype and trained
    // in f32, so the master starts from the rounded initial values.
    if (wd != DType::F32) op.master = copy_to(tp.tensor, DType::F32, tp.tensor.device());
    out.push_back(op);
  }
}

}  // namespace

std::unique_ptr<TrainingModel> TrainingModel::load(const std::string& model_path, const TrainingModelOptions& opt) {
  infer::PipelineOptions po;
  po.dtype = DType::F32;  // masters come from the file's values, not from 16-bit copies
  po.device = opt.device;
  po.variant = opt.variant;
  po.model_config = opt.model_config;
  po.vae_upcast = true;
  return std::make_unique<TrainingModel>(infer::Pipeline::load(model_path, po), opt);
}

TrainingModel::TrainingModel(std::shared_ptr<infer::Pipeline> pipe, const TrainingModelOptions& opt)
    : pipe_(std::move(pipe)), opt_(opt) {
  infer::Pipeline& p = *pipe_;
  SD_CHECK(p.text_encoder, "'", p.model_path, "' is an SDXL refiner (one text encoder, aesthetic-score time ids): "
           "training it is not supported; train the SDXL base model");
  SD_CHECK(p.tokenizer || !p.text_encoder, "'", p.model_path, "' has no tokenizer");

  // The training schedule: DDPMScheduler built from the model's scheduler config, as the scripts do
  // (DDPMScheduler.from_pretrained(..., subfolder="scheduler")), with --prediction_type on top.
  infer::SchedulerConfig sc = infer::scheduler_config_for("ddpm", p.scheduler_config);
  if (!opt_.prediction_override.empty()) sc.prediction_type = opt_.prediction_override;
  SD_CHECK(sc.prediction_type == "epsilon" || sc.prediction_type == "v_prediction", "training: prediction type '",
           sc.prediction_type, "' is not supported (epsilon or v_prediction)");
  opt_.objective.prediction = sc.prediction_type == "v_prediction" ? nn::Prediction::VPrediction : nn::Prediction::Epsilon;
  opt_.objective.num_train_timesteps = sc.num_train_timesteps;
  noise_scheduler_ = infer::make_scheduler(sc);

  const DType wd = opt_.weight_dtype;
  const Device dev = opt_.device;
  // Everything on the training device first (a pipeline loaded elsewhere is moved in f32).
  if (!(p.device == dev)) {
    p.unet->to(DType::F32, dev);
    p.vae->to(DType::F32, dev);
    if (p.text_encoder) p.text_encoder->to(DType::F32, dev);
    if (p.text_encoder_2) p.text_encoder_2->to(DType::F32, dev);
  }
  std::vector<nn::ClipTextModel*> encoders;
  if (p.text_encoder) encoders.push_back(p.text_encoder.get());
  if (p.text_encoder_2) encoders.push_back(p.text_encoder_2.get());

  p.unet->set_requires_grad(false);
  p.vae->set_requires_grad(false);
  for (nn::ClipTextModel* te : encoders) te->set_requires_grad(false);
  text_grad_ = opt_.train_text_encoder;
  if (opt_.method == TrainMethod::TextualInversion) setup_textual_inversion();

  if (opt_.method == TrainMethod::Vae) {
    // The autoencoder trains; a decoder-only fine-tune leaves the encoder (and so the latents) as they are.
    if (opt_.freeze_vae_encoder) {
      make_trainable(*p.vae->decoder, "vae.decoder.", 0, wd, trainable_);
      if (p.vae->post_quant_conv) make_trainable(*p.vae->post_quant_conv, "vae.post_quant_conv.", 0, wd, trainable_);
      p.vae->encoder->to(wd, dev);
      if (p.vae->quant_conv) p.vae->quant_conv->to(wd, dev);
    } else {
      make_trainable(*p.vae, "vae.", 0, wd, trainable_);
    }
  }
  if (opt_.method == TrainMethod::Full) {
    make_trainable(*p.unet, "unet.", 0, wd, trainable_);
    if (opt_.train_text_encoder) {
      make_trainable(*p.text_encoder, "text_encoder.", 1, wd, trainable_);
      if (p.text_encoder_2) make_trainable(*p.text_encoder_2, "text_encoder_2.", 1, wd, trainable_);
    }
  }
  // Frozen parts go to the weight dtype (a trainable part already holds 16-bit copies).
  if (opt_.method != TrainMethod::Full) p.unet->to(wd, dev);
  if (opt_.method == TrainMethod::Lora || opt_.method == TrainMethod::Vae ||
      (opt_.method == TrainMethod::Full && !opt_.train_text_encoder)) {
    for (nn::ClipTextModel* te : encoders) te->to(wd, dev);
  } else if (opt_.method == TrainMethod::TextualInversion) {
    // Everything but the token tables (which hold their 16-bit copies already).
    for (NewTokens& n : ti_) {
      const Tensor table = n.encoder->text_model->embeddings->token_embedding->weight;
      n.encoder->to(wd, dev);
      n.encoder->text_model->embeddings->token_embedding->weight = table;
      n.encoder->set_requires_grad(false);
      n.encoder->text_model->embeddings->token_embedding->weight.set_requires_grad(true);
    }
  }
  // The VAE in the weight dtype, or f32 where its config asks (force_upcast: SDXL); a trained VAE holds its
  // compute copies already.
  if (opt_.method != TrainMethod::Vae) {
    p.vae->set_upcast(p.vae->config().force_upcast);
    p.vae->place(wd, dev);
  }
  p.dtype = wd;
  p.device = dev;

  if (opt_.method == TrainMethod::Lora) {
    loras_.push_back(TrainableLora::attach(*p.unet, "unet", opt_.unet_lora, opt_.seed, wd, dev));
    add_lora_params(loras_.back(), 0, wd, trainable_);
    if (opt_.train_text_encoder) {
      loras_.push_back(TrainableLora::attach(*p.text_encoder, "text_encoder", opt_.text_lora, opt_.seed, wd, dev));
      add_lora_params(loras_.back(), 1, wd, trainable_);
      if (p.text_encoder_2) {
        loras_.push_back(TrainableLora::attach(*p.text_encoder_2, "text_encoder_2", opt_.text_lora, opt_.seed, wd, dev));
        add_lora_params(loras_.back(), 1, wd, trainable_);
      }
    }
  }
  p.unet->gradient_checkpointing = opt_.gradient_checkpointing;
}

int64_t TrainingModel::num_trainable_elements() const {
  int64_t n = 0;
  for (const OptimizerParam& p : trainable_) n += p.param.numel();
  return n;
}

std::vector<const TrainableLora*> TrainingModel::loras() const {
  std::vector<const TrainableLora*> out;
  for (const TrainableLora& l : loras_) out.push_back(&l);
  return out;
}

TokenIds TrainingModel::tokenize(const std::vector<std::string>& captions) const {
  auto ids_of = [&](const ClipTokenizer& tok) {
    std::vector<double> v;
    int64_t len = 0;
    for (const std::string& c : captions) {
      // tokenizer(caption, max_length=model_max_length, padding="max_length", truncation=True)
      const std::vector<int> ids = tok.encode_padded(c);
      len = int64_t(ids.size());
      v.insert(v.end(), ids.begin(), ids.end());
    }
    return from_vector(v, {int64_t(captions.size()), len}, DType::I64, opt_.device);
  };
  TokenIds t;
  if (pipe_->tokenizer) t.ids = ids_of(*pipe_->tokenizer);
  if (pipe_->tokenizer_2) t.ids_2 = ids_of(*pipe_->tokenizer_2);
  return t;
}

TextConditioning TrainingModel::encode_text(const TokenIds& ids) const {
  std::optional<autograd::NoGrad> no_grad;
  if (!text_grad_) no_grad.emplace();
  TextConditioning out;
  if (!pipe_->is_sdxl()) {
    out.context = pipe_->text_encoder->forward(ids.ids);
    return out;
  }
  // train_text_to_image_sdxl.py encode_prompt: hidden_states[-2] of each encoder, concatenated;
  // the pooled embedding is the last encoder's first output (text_embeds of the projection model).
  nn::ClipTextRequest r1;
  r1.last_hidden_state = false;
  r1.hidden_states = {-2};
  nn::ClipTextRequest r2 = r1;
  r2.text_embeds = true;
  const nn::ClipTextOutput o1 = pipe_->text_encoder->forward(ids.ids, r1);
  const nn::ClipTextOutput o2 = pipe_->text_encoder_2->forward(ids.ids_2, r2);
  out.context = cat({o1.hidden_states[0], o2.hidden_states[0]}, -1);
  out.pooled = o2.text_embeds;
  return out;
}

Tensor TrainingModel::sdxl_time_ids(const std::vector<std::array<int64_t, 2>>& original_sizes,
                                    const std::vector<std::array<int64_t, 2>>& crops, int64_t target_h,
                                    int64_t target_w) {
  SD_CHECK(original_sizes.size() == crops.size(), "sdxl_time_ids: ", original_sizes.size(), " sizes, ", crops.size(),
           " crops");
  std::vector<double> v;
  for (size_t i = 0; i < crops.size(); ++i) {
    v.insert(v.end(), {double(original_sizes[i][0]), double(original_sizes[i][1]), double(crops[i][0]),
                       double(crops[i][1]), double(target_h), double(target_w)});
  }
  return from_vector(v, {int64_t(crops.size()), 6}, DType::F32);
}

std::pair<Tensor, Tensor> TrainingModel::encode_posterior(const Tensor& pixels) const {
  autograd::NoGrad no_grad;
  const nn::DiagonalGaussian g = pipe_->vae->encode(to(pixels, opt_.device));
  return {copy_to(g.mean, DType::F32, opt_.device), copy_to(g.logvar, DType::F32, opt_.device)};
}

Tensor TrainingModel::sample_latents(const Tensor& mean, const Tensor& logvar, const Tensor& eps) const {
  autograd::NoGrad no_grad;
  // DiagonalGaussianDistribution.sample: mean + std * eps with std = exp(0.5 * logvar).
  const Tensor z = mean + exp(mul_scalar(logvar, 0.5)) * to(eps, mean.device());
  return mul_scalar(z, pipe_->vae->config().scaling_factor);
}

Tensor TrainingModel::loss(const MicroBatch& b, const NoiseDraws& draws) const {
  const DType wd = opt_.weight_dtype;
  Tensor context = b.context, pooled = b.pooled;
  if (!context.defined()) {
    const TextConditioning tc = encode_text(b.tokens);
    context = tc.context;
    pooled = tc.pooled;
  }
  NoisyInput in;
  {
    autograd::NoGrad no_grad;
    in = make_noisy_input(to(b.latents, opt_.device), draws, *noise_scheduler_, opt_.objective);
  }
  nn::UNetAddedCond added;
  if (pipe_->is_sdxl()) {
    SD_CHECK(pooled.defined() && b.time_ids.defined(), "training: SDXL needs pooled embeddings and time ids");
    added.text_embeds = to(pooled, wd);
    added.time_ids = to(to(b.time_ids, opt_.device), wd);
  }
  const Tensor pred = pipe_->unet->forward(to(in.noisy_latents, wd), to(draws.timesteps, opt_.device),
                                           to(context, wd), added);
  return dreambooth_loss(pred, in.target, draws.timesteps, *noise_scheduler_, opt_.objective, b.prior_examples,
                         opt_.prior_loss_weight);
}

Tensor TrainingModel::vae_loss(const Tensor& pixels, const Tensor& eps, bool l1, double kl_weight,
                               double* reconstruction_out) const {
  const nn::AutoencoderKL& vae = *pipe_->vae;
  const DType wd = vae.compute_dtype();
  const Tensor x = to(to(pixels, opt_.device), wd);
  const nn::DiagonalGaussian g = vae.encode(x);
  const Tensor mean = to(g.mean, DType::F32), logvar = to(g.logvar, DType::F32);
  const Tensor z = mean + exp(mul_scalar(logvar, 0.5)) * to(eps, opt_.device);
  const Tensor rec = to(vae.decode(to(z, wd)), DType::F32);
  const Tensor diff = rec - to(x, DType::F32);
  const Tensor rec_loss = mean_all(l1 ? abs(diff) : square(diff));
  if (reconstruction_out) *reconstruction_out = rec_loss.item();
  // KL(N(mean, var) || N(0, 1)) = 0.5 sum(mean^2 + var - 1 - logvar), per example, averaged over the batch.
  const double B = double(pixels.size(0));
  const Tensor kl = mul_scalar(sum_all(add_scalar(square(mean) + exp(logvar) - logvar, -1.0)), 0.5 / B);
  return rec_loss + mul_scalar(kl, kl_weight);
}

void TrainingModel::setup_textual_inversion() {
  const TextualInversionOptions& o = opt_.ti;
  SD_CHECK(!o.placeholder.empty() && !o.initializer.empty() && o.num_vectors >= 1,
           "textual inversion needs a placeholder token, an initializer token and at least one vector");
  infer::Pipeline& p = *pipe_;
  std::vector<std::string> tokens = {o.placeholder};
  for (int64_t i = 1; i < o.num_vectors; ++i) tokens.push_back(o.placeholder + "_" + std::to_string(i));
  ti_text_.clear();
  for (const std::string& t : tokens) ti_text_ += (ti_text_.empty() ? "" : " ") + t;
  struct Side {
    nn::ClipTextModel* te;
    std::optional<ClipTokenizer>* tok;
    const char* component;
  };
  std::vector<Side> sides = {{p.text_encoder.get(), &p.tokenizer, "text_encoder"}};
  if (p.text_encoder_2) sides.push_back({p.text_encoder_2.get(), &p.tokenizer_2, "text_encoder_2"});
  for (const Side& side : sides) {
    SD_CHECK(side.tok->has_value(), "textual inversion: the model has no tokenizer for its ", side.component);
    ClipTokenizer& tok = **side.tok;
    nn::Embedding& table = *side.te->text_model->embeddings->token_embedding;
    const int64_t V = table.weight.size(0);
    SD_CHECK(tok.size() == V, "textual inversion: the ", side.component, "'s tokenizer has ", tok.size(),
             " tokens but its embedding table ", V, " rows");
    // textual_inversion.py: "The initializer token must be a single token."
    const std::vector<int> init = tok.encode(o.initializer);
    SD_CHECK(init.size() == 1, "--initializer_token '", o.initializer, "' is ", init.size(),
             " tokens for this tokenizer; the initializer token must be a single token");
    std::vector<int64_t> ids;
    for (const std::string& t : tokens) {
      const int before = tok.size();
      const int id = tok.add_token(t);
      SD_CHECK(id == before, "--placeholder_token: the tokenizer already contains the token '", t,
               "'; pass a placeholder that is not in the vocabulary (e.g. <my-", o.initializer, ">)");
      ids.push_back(id);
    }
    // The new rows start as copies of the initializer's row.
    const Tensor init_row = narrow(table.weight, 0, init[0], 1);
    std::vector<Tensor> rows(tokens.size(), copy_to(init_row, DType::F32, Device::cpu()));
    const auto [first, end] = side.te->add_tokens(cat(rows, 0));
    SD_CHECK(first == ids.front() && end == ids.back() + 1, "textual inversion: token ids ", ids.front(), "..",
             ids.back(), " but embedding rows ", first, "..", end - 1);
    NewTokens n;
    n.encoder = side.te;
    n.component = side.component;
    n.first = first;
    n.end = end;
    ti_.push_back(n);
  }
  // The tables train (whole, as in the script); rows outside the new ones are restored after each step.
  for (NewTokens& n : ti_) {
    nn::Embedding& table = *n.encoder->text_model->embeddings->token_embedding;
    n.original = copy_to(table.weight, DType::F32, table.weight.device());
    std::vector<OptimizerParam> one;
    make_trainable(table, n.component + ".text_model.embeddings.token_embedding.", 0, opt_.weight_dtype, one);
    n.param = one[0].param;
    n.master = one[0].master.defined() ? one[0].master : one[0].param;
    trainable_.push_back(one[0]);
  }
  text_grad_ = true;
}

void TrainingModel::after_optimizer_step() {
  autograd::NoGrad no_grad;
  for (const NewTokens& n : ti_) {
    const int64_t V = n.original.size(0);
    for (const Tensor& t : {n.master, n.param}) {
      if (n.first > 0) copy_(narrow(t, 0, 0, n.first), narrow(n.original, 0, 0, n.first));
      if (n.end < V) copy_(narrow(t, 0, n.end, V - n.end), narrow(n.original, 0, n.end, V - n.end));
      if (t.same(n.master) && n.param.same(n.master)) break;  // f32: one tensor
    }
  }
}

void TrainingModel::load_compute_weights(const std::vector<Tensor>& f32_values) {
  SD_CHECK(f32_values.size() == trainable_.size(), "load_compute_weights: ", f32_values.size(), " tensors for ",
           trainable_.size(), " trainable ones");
  for (size_t i = 0; i < trainable_.size(); ++i) copy_(trainable_[i].param, f32_values[i]);
}

}  // namespace sd::train
