#include "train/train_args.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"
#include "train/flags.h"

namespace sd::train {

const char* method_name(TrainMethod m) {
  switch (m) {
    case TrainMethod::Full: return "full";
    case TrainMethod::Lora: return "lora";
    case TrainMethod::TextualInversion: return "textual-inversion";
    case TrainMethod::Vae: return "vae";
  }
  return "?";
}

const char* mixed_precision_name(MixedPrecision p) {
  switch (p) {
    case MixedPrecision::No: return "no";
    case MixedPrecision::Fp16: return "fp16";
    case MixedPrecision::Bf16: return "bf16";
  }
  return "?";
}

namespace {

const char* kSummary =
    R"(Trains Stable Diffusion models (SD1.x, SD2.x, SDXL) from a diffusers folder or a single-file
checkpoint, with the flags of diffusers' training scripts: swap `accelerate launch
train_text_to_image(_lora)(_sdxl).py` for `sd_train --method full|lora` and keep the rest.
  --method full   fine-tunes the UNet (and the text encoder(s) with --train_text_encoder) and saves a
                  diffusers pipeline folder (and a single file with --save_single_file)
  --method lora   trains LoRA adapters and saves pytorch_lora_weights.safetensors (diffusers/PEFT
                  layout) or, with --save_format kohya, a kohya-named file for A1111/ComfyUI
Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and exits 0;
--resume_from_checkpoint latest continues exactly where it stopped.)";

const char* kEpilog =
    R"(example (the tiny pipeline and dataset the repository ships; under a minute on a CPU):
  sd_train --method lora --pretrained_model_name_or_path tests/data/pipe_tiny_sd1 \
    --train_data_dir tests/data/train_tiny --resolution 32 --train_batch_size 4 --max_train_steps 120 \
    --learning_rate 1e-2 --lr_warmup_steps 0 --rank 8 --lora_target attn,ff,proj,conv --output_dir outputs/lora_tiny
)";

// Each binding reads the flag into its field and shows the field back as TOML (the effective
// configuration sd_train writes next to its outputs).
FlagBinding set_string(std::string& field) {
  return {[&field](const std::string& v) { field = v; }, [&field] { return toml_string(field); }};
}

FlagBinding set_switch(bool& field) {
  return {[&field](const std::string&) { field = true; }, [&field] { return toml_bool(field); }};
}

FlagBinding set_int(int64_t& field, int64_t min) {
  return {[&field, min](const std::string& v) {
            const int64_t x = parse_int(v);
            SD_CHECK(x >= min, "must be at least ", min);
            field = x;
          },
          [&field] { return toml_int(field); }};
}

FlagBinding set_opt_int(std::optional<int64_t>& field, int64_t min) {
  return {[&field, min](const std::string& v) {
            const int64_t x = parse_int(v);
            SD_CHECK(x >= min, "must be at least ", min);
            field = x;
          },
          [&field] { return field ? toml_int(*field) : std::string(); }};
}

FlagBinding set_double(double& field) {
  return {[&field](const std::string& v) {
            const double x = parse_double(v);
            SD_CHECK(std::isfinite(x), "must be a finite number");
            field = x;
          },
          [&field] { return toml_double(field); }};
}

FlagBinding set_opt_double(std::optional<double>& field) {
  return {[&field](const std::string& v) {
            const double x = parse_double(v);
            SD_CHECK(std::isfinite(x), "must be a finite number");
            field = x;
          },
          [&field] { return field ? toml_double(*field) : std::string(); }};
}

FlagBinding set_choice(std::string& field, std::vector<std::string> choices) {
  return {[&field, choices](const std::string& v) {
            if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
              std::string list;
              for (const std::string& c : choices) list += (list.empty() ? "" : ", ") + c;
              SD_FAIL("must be one of: ", list);
            }
            field = v;
          },
          [&field] { return field.empty() ? std::string() : toml_string(field); }};
}

void add_flags(FlagParser& p, TrainArgs& a, std::string& method_text, std::string& mixed_text) {
  const std::string M = "model and output", D = "data", S = "steps and batches", O = "optimizer and schedule",
                    L = "loss", T = "what trains (LoRA)", E = "EMA (full fine-tune)", P = "precision and device",
                    C = "checkpoints", V = "validation", G = "logs";
  p.add({"method", "NAME", "", "what to train (required): full (fine-tune), lora (adapters), dreambooth, "
         "dreambooth-lora (the same on a subject's photos with prior preservation), textual-inversion (new token "
         "embeddings), vae (the autoencoder: reconstruction + KL)", M,
         set_choice(method_text, {"full", "lora", "dreambooth", "dreambooth-lora", "textual-inversion", "vae"})});
  p.add({"pretrained_model_name_or_path", "PATH", "",
         "diffusers pipeline folder or single-file checkpoint (.safetensors/.ckpt) to start from (required)", M,
         set_string(a.pretrained_model_name_or_path)});
  p.add({"variant", "NAME", "", "read <name>.<NAME>.safetensors weights (e.g. fp16)", M, set_string(a.variant)});
  p.add({"model_config", "DIR", "the family preset", "single files: a diffusers folder of the same model whose configs "
         "give the architecture (as diffusers' from_single_file(config=DIR)), for fine-tunes whose GroupNorm groups or "
         "head counts differ from the family's", M, set_string(a.model_config)});
  p.add({"output_dir", "DIR", "sd-model-finetuned(-lora)",
         "where checkpoints, logs, validation images and the trained model go", M, set_string(a.output_dir)});
  p.add({"save_single_file", "", "", "full: also save one .safetensors checkpoint with the original key names "
         "(A1111/ComfyUI)", M, set_switch(a.save_single_file)});
  p.add({"save_precision", "fp32|fp16|bf16", "fp16", "dtype of the saved weights", M,
         set_choice(a.save_precision, {"fp32", "fp16", "bf16"})});
  p.add({"save_format", "diffusers|kohya", "diffusers",
         "lora: diffusers/PEFT pytorch_lora_weights.safetensors, or kohya names with alphas", M,
         set_choice(a.save_format, {"diffusers", "kohya"})});
  p.add({"output_name", "NAME", "model / pytorch_lora_weights_kohya", "file stem of single files and kohya LoRAs", M,
         set_string(a.output_name)});

  p.add({"train_data_dir", "DIR", "", "image folder: metadata.jsonl (file_name + caption column) or same-name "
         ".txt captions; PNG, JPEG, WebP", D, set_string(a.train_data_dir)});
  p.add({"dataset_name", "DIR", "", "a Hugging Face dataset saved locally (data/*.parquet shards)", D,
         set_string(a.dataset_name)});
  p.add({"image_column", "NAME", "image", "dataset column holding the images", D, set_string(a.image_column)});
  p.add({"caption_column", "NAME", "text", "metadata.jsonl / dataset column holding the captions", D,
         set_string(a.caption_column)});
  p.add({"max_train_samples", "N", "", "use only the first N examples", D, set_opt_int(a.max_train_samples, 1)});
  p.add({"resolution", "PX", "the model's (512 SD1, 768 SD2-v, 1024 SDXL)",
         "train at PX x PX: shorter side resized to PX, then cropped", D, set_int(a.resolution, 8)});
  p.add({"center_crop", "", "", "crop the center (default: a random crop)", D, set_switch(a.center_crop)});
  p.add({"random_flip", "", "", "flip images horizontally at random", D, set_switch(a.random_flip)});
  p.add({"image_interpolation_mode", "MODE", "lanczos", "resize filter: lanczos, bilinear, bicubic, nearest", D,
         set_choice(a.image_interpolation_mode, {"lanczos", "bilinear", "bicubic", "nearest"})});
  p.add({"caption_dropout", "P", "0", "replace a caption by the empty one with probability P", D,
         set_double(a.caption_dropout), {"proportion_empty_prompts"}});
  p.add({"cache_latents", "", "", "encode each image once and keep its latent distribution on disk "
         "(output_dir/cache, keyed by the file's content and the transform)", D, set_switch(a.cache_latents)});

  const std::string DB = "DreamBooth (--method dreambooth, dreambooth-lora)", TI = "textual inversion",
                    BK = "aspect-ratio buckets", MP = "processes (mpirun)";
  p.add({"instance_data_dir", "DIR", "", "photos of the subject", DB, set_string(a.instance_data_dir)});
  p.add({"instance_prompt", "TEXT", "", "the subject's prompt, e.g. \"a photo of sks dog\"", DB,
         set_string(a.instance_prompt)});
  p.add({"with_prior_preservation", "", "", "also train on images of the class (generated when missing)", DB,
         set_switch(a.with_prior_preservation)});
  p.add({"class_data_dir", "DIR", "", "images of the class; the missing ones are generated here", DB,
         set_string(a.class_data_dir)});
  p.add({"class_prompt", "TEXT", "", "the class's prompt, e.g. \"a photo of dog\"", DB, set_string(a.class_prompt)});
  p.add({"num_class_images", "N", "100", "class images wanted in --class_data_dir", DB, set_int(a.num_class_images, 1)});
  p.add({"prior_loss_weight", "W", "1.0", "weight of the class images' loss", DB, set_double(a.prior_loss_weight)});
  p.add({"sample_batch_size", "N", "4", "batch size when generating class images", DB, set_int(a.sample_batch_size, 1)});
  p.add({"prior_generation_precision", "fp32|fp16|bf16", "the training precision", "dtype of class-image generation",
         DB, set_choice(a.prior_generation_precision, {"fp32", "fp16", "bf16"})});
  p.add({"offset_noise", "", "", "train_dreambooth.py's offset noise: noise + 0.1 N(0, 1) per channel", DB,
         set_switch(a.offset_noise)});
  p.add({"placeholder_token", "TOKEN", "", "the new token, e.g. \"<cat-toy>\"", TI, set_string(a.placeholder_token)});
  p.add({"initializer_token", "WORD", "", "a single-token word whose embedding starts the new one", TI,
         set_string(a.initializer_token)});
  p.add({"num_vectors", "N", "1", "vectors of the new token (<tok>, <tok>_1, ...)", TI, set_int(a.num_vectors, 1)});
  p.add({"learnable_property", "object|style", "object", "which prompt templates train it", TI,
         set_choice(a.learnable_property, {"object", "style"})});
  p.add({"repeats", "N", "100", "how many times each image appears per epoch", TI, set_int(a.repeats, 1)});
  p.add({"save_steps", "N", "500", "save learned_embeds-steps-N.safetensors every N steps", TI, set_int(a.save_steps, 1)});
  const std::string VA = "VAE (--method vae)";
  p.add({"vae_loss", "l1|l2", "l1", "reconstruction loss of the autoencoder", VA, set_choice(a.vae_loss, {"l1", "l2"})});
  p.add({"kl_weight", "W", "1e-6", "weight of the KL term of the latent distribution", VA, set_double(a.kl_weight)});
  p.add({"freeze_vae_encoder", "", "", "train the decoder only (latents of the model stay as they are)", VA,
         set_switch(a.freeze_vae_encoder)});
  p.add({"enable_bucket", "", "", "train images of mixed shapes in resolution buckets instead of cropping to squares "
         "(kohya's algorithm; batches come from one bucket)", BK, set_switch(a.enable_bucket)});
  p.add({"min_bucket_reso", "PX", "256", "", BK, set_int(a.min_bucket_reso, 8)});
  p.add({"max_bucket_reso", "PX", "1024", "", BK, set_int(a.max_bucket_reso, 8)});
  p.add({"bucket_reso_steps", "PX", "64", "bucket sides are multiples of this", BK, set_int(a.bucket_reso_steps, 8)});
  p.add({"bucket_no_upscale", "", "", "never enlarge an image to fill its bucket", BK, set_switch(a.bucket_no_upscale)});
  p.add({"bucket_mb", "MB", "25", "gradient all-reduce bucket size (each starts while backward still runs)", MP,
         set_double(a.bucket_mb)});
  p.add({"zero_stage", "0|1", "0", "1: shard the optimizer state (f32 masters and moments) across processes", MP,
         set_int(a.zero_stage, 0)});
  p.add({"sync_grad_reduce", "", "", "reduce the gradients after backward instead of during it (the same result; "
         "for debugging)", MP, set_switch(a.sync_grad_reduce)});
  p.add({"train_batch_size", "N", "16", "examples per step per process", S, set_int(a.train_batch_size, 1)});
  p.add({"num_train_epochs", "N", "100", "epochs (overridden by --max_train_steps)", S,
         set_int(a.num_train_epochs, 1)});
  p.add({"max_train_steps", "N", "", "optimizer steps in all", S, set_opt_int(a.max_train_steps, 1)});
  p.add({"gradient_accumulation_steps", "N", "1", "micro-batches per optimizer step", S,
         set_int(a.gradient_accumulation_steps, 1)});
  p.add({"gradient_checkpointing", "", "", "recompute each block's activations in backward (less memory)", S,
         set_switch(a.gradient_checkpointing)});
  p.add({"seed", "N", "0", "seed of the data order, noise, timesteps and LoRA init", S,
         FlagBinding{[&a](const std::string& v) {
                       const int64_t x = parse_int(v);
                       SD_CHECK(x >= 0, "must not be negative");
                       a.seed = uint64_t(x);
                     },
                     [&a] { return std::to_string(a.seed); }}});

  p.add({"learning_rate", "LR", "1e-4", "AdamW learning rate", O, set_double(a.learning_rate)});
  p.add({"text_encoder_lr", "LR", "learning_rate", "learning rate of the text encoder(s)", O,
         set_opt_double(a.text_encoder_lr)});
  p.add({"scale_lr", "", "", "multiply the learning rate by batch size x accumulation x processes", O,
         set_switch(a.scale_lr)});
  p.add({"adam_beta1", "B", "0.9", "", O, set_double(a.adam_beta1)});
  p.add({"adam_beta2", "B", "0.999", "", O, set_double(a.adam_beta2)});
  p.add({"adam_weight_decay", "W", "1e-2", "decoupled weight decay", O, set_double(a.adam_weight_decay)});
  p.add({"adam_epsilon", "E", "1e-08", "", O, set_double(a.adam_epsilon)});
  p.add({"max_grad_norm", "N", "1.0", "clip the gradients' global L2 norm (0: no clipping)", O,
         set_double(a.max_grad_norm)});
  p.add({"lr_scheduler", "NAME", "constant",
         "linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup", O,
         set_choice(a.lr_scheduler,
                    {"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"})});
  p.add({"lr_warmup_steps", "N", "500", "steps of linear warmup", O, set_int(a.lr_warmup_steps, 0)});
  p.add({"lr_num_cycles", "N", "1", "cosine_with_restarts: hard restarts", O, set_int(a.lr_num_cycles, 1)});
  p.add({"lr_power", "P", "1.0", "polynomial: power", O, set_double(a.lr_power)});

  p.add({"snr_gamma", "G", "", "Min-SNR weighting gamma (5.0 recommended)", L, set_opt_double(a.snr_gamma)});
  p.add({"noise_offset", "S", "0", "offset noise scale", L, set_double(a.noise_offset)});
  p.add({"input_perturbation", "G", "0", "input perturbation (0.1 recommended)", L, set_double(a.input_perturbation)});
  p.add({"prediction_type", "epsilon|v_prediction", "the model's scheduler config", "training target", L,
         set_choice(a.prediction_type, {"epsilon", "v_prediction"})});

  p.add({"train_text_encoder", "", "", "also train the text encoder(s) (full: all weights; lora: adapters on "
         "q/k/v/out_proj)", T, set_switch(a.train_text_encoder)});
  p.add({"rank", "R", "4", "LoRA rank", T, set_int(a.rank, 1), {"network_dim"}});
  p.add({"lora_alpha", "A", "rank", "LoRA alpha: scale alpha/rank", T, set_opt_double(a.lora_alpha),
         {"network_alpha"}});
  p.add({"use_rslora", "", "", "rank-stabilised scale alpha/sqrt(rank)", T, set_switch(a.use_rslora)});
  p.add({"lora_target", "LIST", "attn",
         "UNet layers with adapters, comma-separated: attn (to_q,to_k,to_v,to_out.0), ff (feed-forward), proj "
         "(proj_in/out), conv (3x3 convs as LoCon), or module-name suffixes", T,
         FlagBinding{[&a](const std::string& v) {
                       a.lora_target = split_list(v);
                       SD_CHECK(!a.lora_target.empty(), "needs at least one target");
                     },
                     [&a] {
                       std::string list;
                       for (const std::string& t : a.lora_target) list += (list.empty() ? "" : ",") + t;
                       return toml_string(list);
                     }}});

  p.add({"use_ema", "", "", "keep an exponential moving average of the weights; the saved model is the EMA", E,
         set_switch(a.use_ema)});
  p.add({"offload_ema", "", "", "keep the EMA in host memory", E, set_switch(a.offload_ema)});
  p.add({"ema_decay", "D", "0.9999", "EMA decay (upper bound of the schedule)", E, set_double(a.ema_decay)});
  p.add({"ema_min_decay", "D", "0.0", "", E, set_double(a.ema_min_decay)});
  p.add({"ema_update_after_step", "N", "0", "", E, set_int(a.ema_update_after_step, 0)});
  p.add({"use_ema_warmup", "", "", "decay 1 - (1 + step/inv_gamma)^-power", E, set_switch(a.use_ema_warmup)});
  p.add({"ema_inv_gamma", "G", "1.0", "", E, set_double(a.ema_inv_gamma)});
  p.add({"ema_power", "P", "2/3", "", E, set_double(a.ema_power)});

  p.add({"mixed_precision", "no|fp16|bf16", "no",
         "frozen weights and compute in 16 bits, trained weights kept in f32 (fp16: dynamic loss scale)", P,
         set_choice(mixed_text, {"no", "fp16", "bf16"})});
  p.add({"allow_tf32", "", "", "TF32 matrix multiplies on Ampere+ GPUs", P, set_switch(a.allow_tf32)});
  p.add({"device", "cpu|cuda[:N]", "cuda when a GPU is usable, else cpu", "", P, set_string(a.device)});

  p.add({"checkpointing_steps", "N", "500", "save a resumable checkpoint every N optimizer steps", C,
         set_int(a.checkpointing_steps, 1)});
  p.add({"checkpoints_total_limit", "N", "", "keep at most N checkpoints (oldest removed)", C,
         set_opt_int(a.checkpoints_total_limit, 1)});
  p.add({"resume_from_checkpoint", "DIR|latest", "", "continue a run exactly (same batches, same noise)", C,
         set_string(a.resume_from_checkpoint)});

  FlagSpec vp{"validation_prompt", "TEXT", "", "generate images for this prompt during training (repeatable)", V,
              FlagBinding{[&a](const std::string& v) { a.validation_prompts.push_back(v); },
                          [&a] {
                            std::vector<std::string> rendered;
                            for (const std::string& t : a.validation_prompts) rendered.push_back(toml_string(t));
                            return toml_array(rendered);
                          }},
              {"validation_prompts"}, true};
  p.add(vp);
  p.add({"num_validation_images", "N", "4", "images per validation prompt", V, set_int(a.num_validation_images, 1)});
  p.add({"validation_steps", "N", "", "validate every N optimizer steps", V, set_opt_int(a.validation_steps, 1)});
  p.add({"validation_epochs", "N", "1 when prompts are given", "validate every N epochs", V,
         set_opt_int(a.validation_epochs, 1)});
  p.add({"validation_inference_steps", "N", "25", "denoising steps of validation images", V,
         set_int(a.validation_inference_steps, 1)});
  p.add({"validation_guidance_scale", "G", "7.5", "", V, set_double(a.validation_guidance_scale)});

  p.add({"report_to", "tensorboard|none", "tensorboard", "where scalars go besides logs/train.jsonl", G,
         set_choice(a.report_to, {"tensorboard", "none"})});
  p.add({"logging_dir", "DIR", "logs", "TensorBoard folder, relative to output_dir", G, set_string(a.logging_dir)});
  p.add({"quiet", "", "", "no progress bar (errors and warnings still go to stderr)", G, set_switch(a.quiet)});

  p.add_ignored("enable_xformers_memory_efficient_attention", false, "attention is always the fused kernel");
  p.add_ignored("dataloader_num_workers", true, "images are decoded by the trainer's own threads");
  p.add_ignored("local_rank", true, "ranks come from MPI (mpirun)");
  p.add_ignored("tracker_project_name", true, "TensorBoard folders are named by --logging_dir");
  p.add_ignored("foreach_ema", false, "the EMA update is always one fused pass");
  p.add_ignored("non_ema_revision", true, "no hub revisions: models are local folders or files");
  p.add_ignored("revision", true, "no hub revisions: models are local folders or files");
  p.add_ignored("cache_dir", true, "no hub downloads");
}

}  // namespace

std::string train_help() {
  TrainArgs a;
  std::string m, mp;
  FlagParser p("sd_train", kSummary);
  add_flags(p, a, m, mp);
  p.set_epilog(kEpilog);
  return p.help();
}

std::optional<TrainArgs> parse_train_args(int argc, const char* const* argv) {
  TrainArgs a;
  std::string method, mixed = "no";
  FlagParser p("sd_train", kSummary);
  add_flags(p, a, method, mixed);
  p.set_epilog(kEpilog);
  if (!p.parse(argc, argv)) return std::nullopt;

  SD_CHECK(!method.empty(), "--method is required: full, lora, dreambooth, dreambooth-lora, textual-inversion or vae");
  a.method_text = method;
  a.method = method == "full" || method == "dreambooth" ? TrainMethod::Full
             : method == "textual-inversion"             ? TrainMethod::TextualInversion
             : method == "vae"                           ? TrainMethod::Vae
                                                         : TrainMethod::Lora;
  a.dreambooth = method == "dreambooth" || method == "dreambooth-lora";
  a.mixed_precision = mixed == "fp16" ? MixedPrecision::Fp16 : mixed == "bf16" ? MixedPrecision::Bf16 : MixedPrecision::No;
  if (a.output_dir.empty())
    a.output_dir = method == "full"                ? "sd-model-finetuned"
                   : method == "lora"              ? "sd-model-finetuned-lora"
                   : method == "dreambooth"        ? "dreambooth-model"
                   : method == "dreambooth-lora"   ? "lora-dreambooth-model"
                   : method == "vae"               ? "vae-finetuned"
                                                   : "text-inversion-model";
  if (!a.validation_prompts.empty() && !a.validation_steps && !a.validation_epochs) a.validation_epochs = 1;
  // The defaults of the diffusers script each method replaces, where they differ from
  // train_text_to_image's (TRAINERS.md, appendix A), unless the flag was given.
  auto method_default = [&](const char* flag, auto& field, auto value) {
    if (!p.was_given(flag)) field = value;
  };
  if (a.dreambooth) {
    method_default("train_batch_size", a.train_batch_size, int64_t(4));
    method_default("num_train_epochs", a.num_train_epochs, int64_t(1));
    method_default("learning_rate", a.learning_rate, method == "dreambooth" ? 5e-6 : 5e-4);
    // train_dreambooth.py resizes with bilinear (the LoRA scripts take --image_interpolation_mode).
    if (method == "dreambooth") method_default("image_interpolation_mode", a.image_interpolation_mode, std::string("bilinear"));
  }
  if (a.method == TrainMethod::TextualInversion) {
    if (!p.was_given("max_train_steps") && !p.was_given("num_train_epochs")) a.max_train_steps = 5000;
    method_default("max_grad_norm", a.max_grad_norm, 0.0);  // textual_inversion.py does not clip
    method_default("image_interpolation_mode", a.image_interpolation_mode, std::string("bicubic"));
  }

  // Flags that belong to another method are contradictions, not silent no-ops.
  for (const char* f : {"instance_data_dir", "instance_prompt", "with_prior_preservation", "class_data_dir",
                        "class_prompt", "num_class_images", "prior_loss_weight", "sample_batch_size",
                        "prior_generation_precision", "offset_noise"})
    SD_CHECK(a.dreambooth || !p.was_given(f), "--", f, " is a DreamBooth setting; use --method dreambooth or "
             "dreambooth-lora");
  for (const char* f : {"placeholder_token", "initializer_token", "num_vectors", "learnable_property", "repeats",
                        "save_steps"})
    SD_CHECK(a.method == TrainMethod::TextualInversion || !p.was_given(f), "--", f,
             " is a textual-inversion setting; use --method textual-inversion");
  for (const char* f : {"vae_loss", "kl_weight", "freeze_vae_encoder"})
    SD_CHECK(a.method == TrainMethod::Vae || !p.was_given(f), "--", f, " is a VAE setting; use --method vae");
  if (a.method == TrainMethod::Vae) {
    for (const char* f : {"rank", "lora_alpha", "use_rslora", "lora_target", "save_format", "train_text_encoder",
                          "snr_gamma", "noise_offset", "input_perturbation", "prediction_type", "caption_dropout",
                          "validation_prompt"})
      SD_CHECK(!p.was_given(f), "--", f, " means nothing with --method vae (the autoencoder learns to reconstruct "
               "images; no text, no noise schedule)");
    SD_CHECK(a.mixed_precision != MixedPrecision::Fp16, "--method vae: train the autoencoder in fp32 or bf16 (its "
             "decoder overflows float16, which is why SDXL's VAE runs upcast)");
  }
  if (a.method == TrainMethod::TextualInversion) {
    for (const char* f : {"rank", "lora_alpha", "use_rslora", "lora_target", "save_format", "train_text_encoder",
                          "use_ema", "save_single_file"})
      SD_CHECK(!p.was_given(f), "--", f, " means nothing with --method textual-inversion (only the new token's "
               "embedding trains)");
  } else if (a.method == TrainMethod::Full || a.method == TrainMethod::Vae) {
    for (const char* f : {"rank", "lora_alpha", "use_rslora", "lora_target", "save_format"})
      SD_CHECK(!p.was_given(f), "--", f, " is a LoRA setting; it means nothing with --method ", method);
  } else {
    for (const char* f : {"use_ema", "offload_ema", "ema_decay", "ema_min_decay", "ema_update_after_step",
                          "use_ema_warmup", "ema_inv_gamma", "ema_power"})
      SD_CHECK(!p.was_given(f), "--", f, " averages the trained base weights, which --method lora leaves "
               "untouched; use it with --method full");
    SD_CHECK(!p.was_given("save_single_file"), "--save_single_file writes a whole model; --method lora saves "
             "adapters (use --save_format kohya for A1111/ComfyUI)");
  }
  SD_CHECK(!(p.was_given("offload_ema") && !a.use_ema), "--offload_ema needs --use_ema");
  validate_train_args(a);
  a.effective_config = p.effective_config(
      "sd_train configuration of this run: every flag given, or set from another flag's value; the others\n"
      "are commented with their default. Repeat the run with: sd_train --config " + std::string(kRunConfigFile) +
      "\n(flags on the command line win over the file, e.g. --output_dir for a new folder)");
  return a;
}

void validate_train_args(const TrainArgs& a) {
  SD_CHECK(!a.pretrained_model_name_or_path.empty(),
           "--pretrained_model_name_or_path is required: a diffusers folder or a single-file checkpoint");
  if (a.dreambooth) {
    SD_CHECK(!a.instance_data_dir.empty() && !a.instance_prompt.empty(),
             "DreamBooth needs --instance_data_dir (the subject's photos) and --instance_prompt (e.g. \"a photo of "
             "sks dog\")");
    SD_CHECK(a.train_data_dir.empty() && a.dataset_name.empty(), "DreamBooth reads --instance_data_dir, not "
             "--train_data_dir / --dataset_name");
    if (a.with_prior_preservation) {
      SD_CHECK(!a.class_data_dir.empty(), "--with_prior_preservation needs --class_data_dir (where the class images "
               "are, or will be generated)");
      SD_CHECK(!a.class_prompt.empty(), "--with_prior_preservation needs --class_prompt (e.g. \"a photo of dog\")");
    }
  } else {
    SD_CHECK(a.train_data_dir.empty() != a.dataset_name.empty(),
             a.train_data_dir.empty() ? "give the training data: --train_data_dir DIR (images with metadata.jsonl or "
                                        ".txt captions) or --dataset_name DIR (a saved Hugging Face dataset)"
                                      : "give either --train_data_dir or --dataset_name, not both");
  }
  if (a.method == TrainMethod::TextualInversion) {
    SD_CHECK(!a.placeholder_token.empty() && !a.initializer_token.empty(), "textual inversion needs "
             "--placeholder_token (the new token, e.g. \"<cat-toy>\") and --initializer_token (e.g. \"toy\")");
  }
  SD_CHECK(a.zero_stage == 0 || a.zero_stage == 1, "--zero_stage ", a.zero_stage, ": 0 or 1");
  SD_CHECK(!(a.zero_stage == 1 && a.method == TrainMethod::TextualInversion && a.mixed_precision != MixedPrecision::No),
           "--zero_stage 1 with textual inversion needs --mixed_precision no (the rows it restores after each step "
           "live in the f32 masters, which ZeRO-1 spreads over the processes)");
  SD_CHECK(a.bucket_mb > 0, "--bucket_mb must be positive");
  SD_CHECK(a.min_bucket_reso <= a.max_bucket_reso, "--min_bucket_reso must not exceed --max_bucket_reso");
  SD_CHECK(a.resolution == 0 || a.resolution % 8 == 0, "--resolution ", a.resolution,
           " must be a multiple of 8 (the VAE downsamples by 8)");
  SD_CHECK(a.caption_dropout >= 0 && a.caption_dropout <= 1, "--caption_dropout must be in [0, 1]");
  SD_CHECK(!a.snr_gamma || *a.snr_gamma > 0, "--snr_gamma must be positive");
  SD_CHECK(a.learning_rate > 0, "--learning_rate must be positive");
  SD_CHECK(a.max_grad_norm >= 0, "--max_grad_norm must not be negative (0 turns clipping off)");
  SD_CHECK(a.adam_beta1 >= 0 && a.adam_beta1 < 1 && a.adam_beta2 >= 0 && a.adam_beta2 < 1,
           "--adam_beta1/--adam_beta2 must be in [0, 1)");
  SD_CHECK(a.adam_epsilon > 0, "--adam_epsilon must be positive");
  SD_CHECK(a.ema_decay > 0 && a.ema_decay <= 1, "--ema_decay must be in (0, 1]");
  SD_CHECK(a.noise_offset >= 0 && a.input_perturbation >= 0, "--noise_offset and --input_perturbation must not be negative");
  SD_CHECK(!a.lora_alpha || *a.lora_alpha > 0, "--lora_alpha must be positive");
  SD_CHECK(a.cache_latents ? a.center_crop : true,
           "--cache_latents needs --center_crop: a random crop is a new image every epoch, which a cache cannot hold "
           "(kohya refuses the same combination)");
  SD_CHECK(!(a.device == "cpu" && a.allow_tf32), "--allow_tf32 is a GPU setting; it means nothing with --device cpu");
}

}  // namespace sd::train
