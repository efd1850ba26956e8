// Data parallelism at SD size: how much of the gradient all-reduce the backward pass hides, measured on
// the GPUs at hand and modelled for 2 and 8 (bench/NOTES.md "Data parallelism" has the model written
// out). Run by bench/gpu_check.sh; by hand:
//   mpirun -np 1 build/bench/sd_bench_dp --model sd15        (NCCL path with one process)
//   mpirun -np 2 build/bench/sd_bench_dp --model sd15        (two GPUs: the real all-reduce)
//   build/bench/sd_bench_dp --model sdxl --checkpointing     (no mpirun: timeline and model only)
//
// The step is sd_train's (train/trainer.cpp): a full fine-tune (every UNet tensor trains, f32 masters
// and moments, 16-bit compute copies), random weights in the real config (nn::UNetConfig::sd15 or
// sdxl_base) put into the tiny pipelines of tests/data, latents and text conditioning precomputed.
// Measured, on this rank's GPU:
//   - plain steps (the gradient sync's hooks disarmed: one GPU's step) with a CUDA event recorded on the
//     compute stream when each tensor's gradient is complete; from those, when each bucket of
//     --bucket_mb (the sync's own plan) is full, as milliseconds after backward began;
//   - steps through the sync (overlapped bucket reduction, NCCL under mpirun): with one process the cost
//     of the machinery (bucket copies), with several the real scaling.
// Modelled, for N GPUs at bus bandwidth B (NCCL's busbw) and latency a per call: bucket k (S_k bytes,
// full at t_k) needs c_k = a + 2(N-1)/N * S_k / B on the communication stream, which takes buckets in
// the order they fill: end_k = max(t_k, end_{k-1}) + c_k. What backward does not hide is
// exposed = max(0, end_last - T_backward); the step then takes T_1 + overhead + exposed, and the scaling
// efficiency is T_1 / (T_1 + overhead + exposed) (throughput per GPU against one GPU alone).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
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
#include "runtime/stream.h"
#include "train/distributed.h"
#include "train/loss_scaler.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/training_model.h"

namespace {

using namespace sd;
using namespace sd::train;

struct Options {
  std::string model = "sd15";  // sd15 | sdxl
  std::string precision = "bf16";
  int64_t batch = 0;           // 0: 4 for sd15 (512 px), 1 for sdxl (1024 px)
  int warmup = 2, iters = 5;
  double bucket_mb = 25;
  bool checkpointing = false;
  bool tiny = false;
  std::vector<double> busbw = {350, 20, 45};  // GB/s: NVLink (H100/H200 HGX), PCIe 4.0 x16, 400 Gb/s IB
  double latency_us = 20;
};

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

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? NAN : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const ProcessInfo proc = mpi.info();
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "sd_bench_dp: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") o.model = next();
    else if (a == "--precision") o.precision = next();
    else if (a == "--batch") o.batch = std::stoll(next());
    else if (a == "--iters") o.iters = std::max(1, std::stoi(next()));
    else if (a == "--warmup") o.warmup = std::stoi(next());
    else if (a == "--bucket_mb") o.bucket_mb = std::stod(next());
    else if (a == "--checkpointing") o.checkpointing = true;
    else if (a == "--tiny") o.tiny = true;
    else if (a == "--latency_us") o.latency_us = std::stod(next());
    else if (a == "--busbw") {
      o.busbw.clear();
      const std::string v = next();
      for (size_t at = 0; at < v.size();) {
        const size_t comma = v.find(',', at);
        o.busbw.push_back(std::stod(v.substr(at, comma - at)));
        at = comma == std::string::npos ? v.size() : comma + 1;
      }
    } else {
      std::printf("usage: [mpirun -np N] sd_bench_dp [--model sd15|sdxl] [--precision bf16|fp16] [--batch B]\n"
                  "         [--iters 5] [--warmup 2] [--bucket_mb 25] [--checkpointing] [--busbw 350,20,45]\n"
                  "         [--latency_us 20] [--tiny]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  const bool main_rank = proc.rank == 0;
  try {
    SD_CHECK(cudart::device_count() > proc.local_rank, "no GPU for local rank ", proc.local_rank, " (",
             cudart::device_count() > 0 ? "too few GPUs" : cudart::unavailable_reason(), ")");
    const Device dev = Device::cuda(proc.local_rank);
    cudart::set_device(dev.index);
    const bool xl = o.model == "sdxl";
    if (o.batch == 0) o.batch = xl ? 1 : 4;
    infer::PipelineOptions po;
    po.dtype = DType::F32;
    po.device = dev;
    std::shared_ptr<infer::Pipeline> pipe =
        infer::Pipeline::load(std::string(SD_SOURCE_DIR) + (xl ? "/tests/data/pipe_tiny_sdxl" : "/tests/data/pipe_tiny_sd1"), po);
    const nn::UNetConfig cfg = o.tiny ? pipe->unet->config() : xl ? nn::UNetConfig::sdxl_base() : nn::UNetConfig::sd15();
    pipe->unet = std::make_shared<nn::UNet2DConditionModel>(cfg);
    init_on_device(*pipe->unet, 1234, dev);
    const DType wd = o.precision == "fp16" ? DType::F16 : DType::BF16;
    TrainingModelOptions to;
    to.method = TrainMethod::Full;
    to.weight_dtype = wd;
    to.device = dev;
    to.gradient_checkpointing = o.checkpointing;
    to.seed = 7;
    auto model = std::make_unique<TrainingModel>(pipe, to);
    AdamWConfig ac;
    ac.lr = 1e-6;
    AdamWOptimizer opt(model->trainable(), ac);
    std::optional<LossScaler> scaler;
    if (wd == DType::F16) scaler.emplace();

    DataParallelOptions dp;
    dp.bucket_mb = o.bucket_mb;
    std::shared_ptr<GradientSync> sync = make_gradient_sync(proc, dp);
    sync->attach(opt);

    // Every tensor's gradient completion as an event on the compute stream.
    const size_t n = opt.params().size();
    std::vector<std::unique_ptr<Event>> ready(n);
    std::vector<char> fired(n, 0);  // this step (a tensor no gradient reached has no time)
    for (size_t i = 0; i < n; ++i) {
      ready[i] = std::make_unique<Event>();
      Tensor p = opt.params()[i].param;
      p.add_grad_hook([&ready, &fired, i](const Tensor&) {
        ready[i]->record();
        fired[i] = 1;
      });
    }
    std::vector<int64_t> numels;
    int64_t total = 0;
    for (const OptimizerParam& p : opt.params()) {
      numels.push_back(p.param.numel());
      total += p.param.numel();
    }
    const BucketPlan plan = plan_buckets(numels, std::max<int64_t>(1, int64_t(o.bucket_mb * 1024 * 1024 / 4)),
                                         sync->world_size());

    const int64_t lat = pipe->unet->config().sample_size[0];
    const int64_t cdim = pipe->unet->config().cross_attention_dim.at(0);
    MicroBatch mb;
    mb.latents = empty({o.batch, 4, lat, lat}, DType::F32, dev);
    fill_normal_(mb.latents, 100, 0);
    mb.context = empty({o.batch, 77, cdim}, wd, dev);
    fill_normal_(mb.context, 200, 0);
    if (xl) {
      mb.pooled = empty({o.batch, 1280}, wd, dev);
      fill_normal_(mb.pooled, 300, 0);
      std::vector<std::array<int64_t, 2>> sizes(size_t(o.batch), {lat * 8, lat * 8}), crops(size_t(o.batch), {0, 0});
      mb.time_ids = TrainingModel::sdxl_time_ids(sizes, crops, lat * 8, lat * 8);
    }
    std::vector<int64_t> slots;
    for (int64_t j = 0; j < o.batch; ++j) slots.push_back(int64_t(proc.rank) * o.batch + j);

    Event fwd0, bwd0, bwd1, step1;
    uint64_t micro = 0;
    // One step; through the sync when `communicate`. Returns {forward, backward, step} ms.
    auto step = [&](bool communicate) {
      fwd0.record();
      const NoiseDraws draws = draw_noise(model->objective(), mb.latents.shape(), 42, micro++, slots);
      const Tensor loss = model->loss(mb, draws);
      const double scale = scaler ? scaler->scale() : 1.0;
      sync->begin_backward(communicate);
      bwd0.record();
      autograd::backward(mul_scalar(loss, scale));
      opt.collect_grads();
      bwd1.record();
      if (communicate) sync->reduce(opt);
      const double inv = scaler ? scaler->inv_scale() : 1.0;
      const double norm = sync->grad_norm(opt.grads()) * inv;
      const bool found_inf = communicate ? sync->any(!std::isfinite(norm)) : !std::isfinite(norm);
      if (!found_inf) opt.step({1e-6, 1e-6}, double(float(inv)) * double(float(norm > 1 ? 1 / (norm + 1e-6) : 1.0)));
      if (communicate) sync->after_step(opt);
      if (scaler) scaler->update(found_inf);
      opt.zero_grad();
      step1.record();
      step1.synchronize();
      return std::array<double, 3>{fwd0.elapsed_ms(bwd0), bwd0.elapsed_ms(bwd1), fwd0.elapsed_ms(step1)};
    };

    // Plain steps: the timeline of one GPU's backward.
    for (int k = 0; k < o.warmup; ++k) step(false);
    std::vector<double> fwd, bwd, tot;
    std::vector<std::vector<double>> bucket_ready(plan.buckets.size());
    for (int k = 0; k < o.iters; ++k) {
      std::fill(fired.begin(), fired.end(), 0);
      const auto t = step(false);
      fwd.push_back(t[0]);
      bwd.push_back(t[1]);
      tot.push_back(t[2]);
      for (size_t b = 0; b < plan.buckets.size(); ++b) {
        double last = 0;
        for (size_t i : plan.buckets[b].params)
          if (fired[i]) last = std::max(last, double(bwd0.elapsed_ms(*ready[i])));
        bucket_ready[b].push_back(last);
      }
    }
    // Through the sync (overlapped reduction; every process takes part).
    for (int k = 0; k < o.warmup; ++k) step(true);
    std::vector<double> synced;
    for (int k = 0; k < o.iters; ++k) synced.push_back(step(true)[2]);

    const double t_fwd = median(fwd), t_bwd = median(bwd), t1 = median(tot), tn = median(synced);
    const double overhead = sync->world_size() == 1 ? std::max(0.0, tn - t1) : NAN;
    std::vector<std::pair<double, double>> buckets;  // (ready ms, bytes), in the order they fill
    for (size_t b = 0; b < plan.buckets.size(); ++b) buckets.emplace_back(median(bucket_ready[b]), double(plan.buckets[b].padded) * 4);
    std::sort(buckets.begin(), buckets.end());
    if (main_rank) {
      std::printf("# sd_bench_dp: %s UNet full fine-tune, %s, batch %lld per GPU at %lld px%s, %s\n", o.tiny ? "tiny" : o.model.c_str(),
                  o.precision.c_str(), static_cast<long long>(o.batch), static_cast<long long>(lat * 8),
                  o.checkpointing ? ", gradient checkpointing" : "", cudart::device_summary(dev.index).c_str());
      std::printf("# %.1fM trainable elements: %.0f MB of f32 gradients in %zu bucket(s) of <= %g MB; %s\n", double(total) / 1e6,
                  double(total) * 4 / 1e6, plan.buckets.size(), o.bucket_mb, sync->describe().c_str());
      std::printf("# one GPU (median of %d): forward %.2f ms, backward %.2f ms, step %.2f ms; buckets full at %.2f / %.2f / "
                  "%.2f ms after backward began (first / median / last)\n",
                  o.iters, t_fwd, t_bwd, t1, buckets.front().first, buckets[buckets.size() / 2].first, buckets.back().first);
      if (sync->world_size() == 1)
        std::printf("# through the sync, 1 process: step %.2f ms (+%.2f ms: bucket copies and the 1-process %s calls)\n", tn,
                    tn - t1, sync->communicates() ? "NCCL/MPI" : "(no sync: not under mpirun)");
      else
        std::printf("# measured: %d processes, step %.2f ms against %.2f ms alone: scaling efficiency %.1f%%\n",
                    sync->world_size(), tn, t1, 100 * t1 / tn);
      std::printf("model,gpus,busbw_gbs,comm_ms,exposed_ms,hidden_pct,efficiency_pct\n");
      for (int gpus : {2, 8}) {
        for (double bw : o.busbw) {
          double end = 0, comm = 0;
          for (const auto& [t, bytes] : buckets) {
            const double c = o.latency_us / 1000 + 2.0 * (gpus - 1) / gpus * bytes / (bw * 1e9) * 1000;
            comm += c;
            end = std::max(end, t) + c;
          }
          const double exposed = std::max(0.0, end - t_bwd);
          const double ovh = std::isfinite(overhead) ? overhead : 0.0;
          std::printf("%s,%d,%g,%.2f,%.2f,%.1f,%.1f\n", o.model.c_str(), gpus, bw, comm, exposed,
                      comm > 0 ? 100 * (1 - exposed / comm) : 100.0, 100 * t1 / (t1 + ovh + exposed));
        }
      }
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_bench_dp: rank %d: %s\n", proc.rank, e.what());
    std::fflush(stderr);
    abort_all_processes(1);
    return 1;
  }
}
