// Benchmark of whole training steps at SD1.5 size: sd_train's step, timed per step, with the
// device allocator's peak. bench/pytorch/train_step.py times diffusers' step on the same cases and
// bench/compare_train.py joins the two (bench/gpu_check.sh runs all three).
//
// What one step is (sd_train's loop, train/trainer.cpp, for one micro-batch):
//   noise and timesteps drawn on the CPU (train/objective.h draw_noise) -> TrainingModel::loss
//   (add_noise, UNet forward, f32 MSE) -> backward of loss x loss scale -> AdamWOptimizer::collect_grads
//   -> global gradient norm (unscaled; inf/NaN skips the step) -> clip to 1.0 -> fused AdamW on the
//   f32 masters (rewriting the 16-bit copies) -> loss-scale update (fp16) -> zero_grad.
// The model: the real SD1.5 UNet config (nn::UNetConfig::sd15(), 860M parameters, random weights)
// placed into the tiny SD1 pipeline of tests/data in place of its UNet, so TrainingModel sets it up
// exactly as sd_train does:
//   lora  frozen UNet in the weight dtype, rank-4 LoRA on to_q/to_k/to_v/to_out.0 (alpha 4), f32
//         masters for the adapters (diffusers' default LoRA setup)
//   full  every UNet parameter trains: f32 masters and moments, the UNet computes with 16-bit copies
// Not measured: the text encoder and the VAE. The latents [B, 4, 64, 64] (512 px) and the text
// context [B, 77, 768] are precomputed on the device, as runs with cached latents and text
// embeddings do. Gradient checkpointing off. fp16 runs with a loss scale starting at --init-scale.
//
// Timing: --warmup steps, then each of --iters steps between two device synchronizations
// (steady_clock; the step itself synchronizes on the loss and the gradient norm, as the loop does);
// the median is reported. Peak: the allocator's peak from the end of setup (weights, masters and
// moments included) through the timed steps.
//
//   sd_bench_train [--cases all|lora-fp16-b1,full-bf16-b4,...] [--warmup 3] [--iters 10]
//                  [--init-scale 1024] [--device cuda|cpu] [--tiny]
// --tiny uses the tiny pipeline's UNet config (16x16 latents): a check of this program on any machine.
//
// Prints CSV, one line per case (lines starting with '#' are notes):
//   case,method,precision,batch,latent,ms,ms_min,ms_max,peak_mib,trainable,skipped,loss
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "infer/pipeline.h"
#include "models/unet/unet.h"
#include "ops/elementwise.h"
#include "ops/optim.h"
#include "runtime/allocator.h"
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/rng.h"
#include "train/loss_scaler.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/training_model.h"

namespace {

using namespace sd;
using namespace sd::train;

struct Options {
  std::set<std::string> cases;  // empty: all
  int warmup = 3, iters = 10;
  double init_scale = 1024.0;
  Device device = Device::cuda(0);
  bool tiny = false;
  std::string pipe = SD_SOURCE_DIR "/tests/data/pipe_tiny_sd1";
};

std::string case_name(const std::string& method, const std::string& prec, int64_t batch) {
  return method + "-" + prec + "-b" + std::to_string(batch);
}

void sync(Device d) {
  if (d.is_cuda()) cudart::synchronize();
}

Allocator& alloc(Device d) { return allocator_for(d); }

// Module::init_parameters' initialisation (zeros, ones, U(+-1/sqrt(fan_in))) drawn on the device itself:
// seconds less per setup than filling 860M values on the host and copying them over.
void init_on_device(nn::Module& m, uint64_t seed, Device dev) {
  uint64_t offset = 0;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor t = empty(p->shape, DType::F32, dev);
    switch (p->init) {
      case nn::Init::Zeros: fill_(t, 0.0); break;
      case nn::Init::Ones: fill_(t, 1.0); break;
      case nn::Init::Uniform: {
        const double b = 1.0 / std::sqrt(double(std::max<int64_t>(p->fan_in, 1)));
        fill_uniform_(t, seed, offset, -b, b);
        break;
      }
    }
    offset += uniform_blocks(t.numel());
    *p->slot = t;
    p->slot->set_name(name);
  }
}

// One configuration's model, optimizer and scaler, set up as sd_train sets them up.
struct Setup {
  std::unique_ptr<TrainingModel> model;
  std::unique_ptr<AdamWOptimizer> opt;
  std::optional<LossScaler> scaler;
  int64_t latent = 64, context_dim = 768;
  uint64_t micro_step = 0;
  int64_t skipped = 0;
};

Setup make_setup(const Options& o, const std::string& method, const std::string& prec) {
  infer::PipelineOptions po;
  po.dtype = DType::F32;
  po.device = o.device;
  po.vae_upcast = true;
  std::shared_ptr<infer::Pipeline> pipe = infer::Pipeline::load(o.pipe, po);
  Setup s;
  // The SD1.5 UNet (--tiny: the pipeline's own config), random weights in f32 on the device, where
  // TrainingModel::load would have read the file's.
  const nn::UNetConfig cfg = o.tiny ? pipe->unet->config() : nn::UNetConfig::sd15();
  pipe->unet = std::make_shared<nn::UNet2DConditionModel>(cfg);
  init_on_device(*pipe->unet, 1234, o.device);
  s.latent = pipe->unet->config().sample_size[0];
  s.context_dim = pipe->unet->config().cross_attention_dim.at(0);
  TrainingModelOptions to;
  to.method = method == "full" ? TrainMethod::Full : TrainMethod::Lora;
  to.weight_dtype = prec == "fp16" ? DType::F16 : DType::BF16;
  to.device = o.device;
  to.gradient_checkpointing = false;
  to.unet_lora.rank = 4;
  to.unet_lora.alpha = 4;
  to.unet_lora.targets = unet_lora_targets({"attn"});
  to.seed = 7;
  s.model = std::make_unique<TrainingModel>(pipe, to);
  AdamWConfig ac;
  ac.lr = 1e-4;
  ac.weight_decay = 1e-2;
  s.opt = std::make_unique<AdamWOptimizer>(s.model->trainable(), ac);
  if (prec == "fp16") {
    LossScalerConfig lc;
    lc.init_scale = o.init_scale;
    s.scaler.emplace(lc);
  }
  return s;
}

// One optimizer step as Loop::optimizer_step takes it (one micro-batch). Returns the loss.
double train_step(Setup& s, const MicroBatch& mb, const std::vector<int64_t>& slots) {
  const NoiseDraws draws = draw_noise(s.model->objective(), mb.latents.shape(), 42, s.micro_step++, slots);
  const Tensor loss = s.model->loss(mb, draws);
  const double loss_value = loss.item();
  const double scale = s.scaler ? s.scaler->scale() : 1.0;
  autograd::backward(mul_scalar(loss, scale));
  s.opt->collect_grads();
  const std::vector<Tensor> grads = s.opt->grads();
  const double inv = s.scaler ? s.scaler->inv_scale() : 1.0;
  const double norm = global_grad_norm(grads) * inv;
  const bool found_inf = !std::isfinite(norm);
  if (found_inf) {
    ++s.skipped;
  } else {
    const double clip = norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0;
    s.opt->step({1e-4, 1e-4}, double(float(inv)) * double(float(clip)));
  }
  if (s.scaler) s.scaler->update(found_inf);
  s.opt->zero_grad();
  return loss_value;
}

void run_case(const Options& o, Setup& s, const std::string& method, const std::string& prec, int64_t batch) {
  const DType wd = prec == "fp16" ? DType::F16 : DType::BF16;
  MicroBatch mb;
  mb.latents = empty({batch, 4, s.latent, s.latent}, DType::F32, o.device);
  fill_normal_(mb.latents, 100 + uint64_t(batch), 0);
  mb.context = empty({batch, 77, s.context_dim}, wd, o.device);
  fill_normal_(mb.context, 200 + uint64_t(batch), 0);
  std::vector<int64_t> slots;
  for (int64_t j = 0; j < batch; ++j) slots.push_back(j);
  s.skipped = 0;

  sync(o.device);
  alloc(o.device).reset_peak();
  double loss = 0;
  for (int i = 0; i < o.warmup; ++i) loss = train_step(s, mb, slots);
  sync(o.device);
  const int64_t skipped_in_warmup = s.skipped;
  std::vector<double> ms;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    loss = train_step(s, mb, slots);
    sync(o.device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const double peak_mib = double(alloc(o.device).stats().peak_bytes) / (1 << 20);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  std::printf("%s,%s,%s,%lld,%lld,%.3f,%.3f,%.3f,%.0f,%lld,%lld,%.6f\n", case_name(method, prec, batch).c_str(),
              method.c_str(), prec.c_str(), static_cast<long long>(batch), static_cast<long long>(s.latent), median,
              sorted.front(), sorted.back(), peak_mib, static_cast<long long>(s.model->num_trainable_elements()),
              static_cast<long long>(s.skipped - skipped_in_warmup), loss);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      SD_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf("usage: sd_bench_train [--cases all|lora-fp16-b1,...] [--warmup 3] [--iters 10] [--init-scale 1024]\n"
                  "                      [--device cuda|cpu] [--tiny]\n"
                  "Times sd_train's training step (SD1.5 UNet, random weights, 512 px; LoRA rank 4 and full fine-tune;\n"
                  "fp16 and bf16; batch 1 and 4) and prints CSV:\n"
                  "case,method,precision,batch,latent,ms,ms_min,ms_max,peak_mib,trainable,skipped,loss\n");
      return 0;
    }
    try {
      if (a == "--cases") {
        const std::string v = next();
        if (v != "all") {
          std::stringstream ss(v);
          for (std::string c; std::getline(ss, c, ',');)
            if (!c.empty()) o.cases.insert(c);
        }
      } else if (a == "--warmup") {
        o.warmup = std::stoi(next());
      } else if (a == "--iters") {
        o.iters = std::max(1, std::stoi(next()));
      } else if (a == "--init-scale") {
        o.init_scale = std::stod(next());
      } else if (a == "--device") {
        o.device = parse_device(next());
      } else if (a == "--tiny") {
        o.tiny = true;
      } else if (a == "--pipe") {
        o.pipe = next();
      } else {
        std::fprintf(stderr, "sd_bench_train: unknown argument %s (see --help)\n", a.c_str());
        return 2;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sd_bench_train: %s: %s\n", a.c_str(), e.what());
      return 2;
    }
  }
  if (o.device.is_cuda() && cudart::device_count() == 0) {
    std::fprintf(stderr, "sd_bench_train: no GPU (%s)\n", cudart::unavailable_reason().c_str());
    return 1;
  }
  std::printf("# sd_bench_train: sd_train's step on %s: %s UNet, random weights; text encoder and VAE excluded "
              "(latents and text context precomputed, as cached-latents runs); gradient checkpointing off; "
              "ms = forward + backward + optimizer per step (median of %d after %d warm-up); peak = device allocator "
              "peak over the steps, weights and optimizer state included\n",
              o.device.is_cuda() ? cudart::device_summary(o.device.index).c_str() : "cpu",
              o.tiny ? "tiny test" : "SD1.5", o.iters, o.warmup);
  std::printf("case,method,precision,batch,latent,ms,ms_min,ms_max,peak_mib,trainable,skipped,loss\n");
  std::fflush(stdout);
  int failures = 0;
  for (const std::string method : {"lora", "full"}) {
    for (const std::string prec : {"fp16", "bf16"}) {
      std::vector<int64_t> batches;
      for (int64_t b : {1, 4})
        if (o.cases.empty() || o.cases.count(case_name(method, prec, b))) batches.push_back(b);
      if (batches.empty()) continue;
      try {
        const auto t0 = std::chrono::steady_clock::now();
        Setup s = make_setup(o, method, prec);
        sync(o.device);
        std::printf("# %s %s: setup %.1f s, %lld trainable elements in %zu tensors\n", method.c_str(), prec.c_str(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    static_cast<long long>(s.model->num_trainable_elements()), s.model->trainable().size());
        std::fflush(stdout);
        for (int64_t b : batches) {
          try {
            run_case(o, s, method, prec, b);
          } catch (const std::exception& e) {
            ++failures;
            std::printf("%s,%s,%s,%lld,%lld,nan,nan,nan,nan,0,0,nan\n", case_name(method, prec, b).c_str(),
                        method.c_str(), prec.c_str(), static_cast<long long>(b), static_cast<long long>(s.latent));
            std::fprintf(stderr, "sd_bench_train: %s: %s\n", case_name(method, prec, b).c_str(), e.what());
            std::fflush(stdout);
          }
        }
      } catch (const std::exception& e) {
        ++failures;
        std::fprintf(stderr, "sd_bench_train: %s %s setup: %s\n", method.c_str(), prec.c_str(), e.what());
      }
      if (o.device.is_cuda()) cuda_allocator(o.device.index).empty_cache();
    }
  }
  return failures ? 1 : 0;
}
