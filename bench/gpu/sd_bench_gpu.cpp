// GPU benchmark of sd's ops at SD shapes (bench/gpu/cases.txt), timed with CUDA events:
// warm-up, then the median of many runs, rotating among input sets larger than the L2 cache
// so every run reads from device memory. Prints one CSV line per case:
//   op,dtype,params,ms,flop,bytes
// bench/pytorch/ops.py times the same cases with PyTorch; bench/compare.py joins the two.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cuda/attention.h"
#include "ops/conv.h"
#include "ops/cuda/conv.h"
#include "ops/cuda/pointwise.h"
#include "ops/linear.h"
#include "ops/cuda/norm.h"
#include "ops/norm.h"
#include "ops/softmax.h"
#include "ops/view.h"
#include "models/unet/unet.h"
#include "runtime/allocator.h"
#include "runtime/cuda_api.h"
#include "runtime/rng.h"

namespace {

using namespace sd;

struct Case {
  std::string op;
  DType dtype;
  std::map<std::string, int64_t> p;
  std::string params;  // as written
  int64_t get(const char* k) const {
    auto it = p.find(k);
    SD_CHECK(it != p.end(), "bench case ", op, " ", params, ": missing ", k);
    return it->second;
  }
  int64_t get_or(const char* k, int64_t fallback) const {
    auto it = p.find(k);
    return it == p.end() ? fallback : it->second;
  }
};

std::vector<Case> read_cases(const std::string& path) {
  std::ifstream in(path);
  SD_CHECK(in.good(), "cannot read ", path);
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream is(line);
    Case c;
    std::string dt, kv;
    is >> c.op >> dt;
    c.dtype = parse_dtype(dt);
    while (is >> kv) {
      auto eq = kv.find('=');
      c.p[kv.substr(0, eq)] = std::stoll(kv.substr(eq + 1));
      c.params += (c.params.empty() ? "" : " ") + kv;
    }
    cases.push_back(c);
  }
  return cases;
}

Device gpu() { return Device::cuda(0); }
Tensor rnd(const Shape& s, DType dt, uint64_t seed) {
  Tensor t = empty(s, dt, gpu());
  fill_normal_(t, seed, 0);
  return t;
}
// A channels-last [N, C, H, W] view (NHWC storage).
Tensor rnd_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, DType dt, uint64_t seed) {
  return permute(rnd({n, h, w, c}, dt, seed), {0, 3, 1, 2});
}

struct Workload {
  std::function<void(int)> run;  // run(set index)
  int sets = 1;
  double flop = 0, bytes = 0;
  int reps = 0;  // 0: the command line's
};

// Enough input sets that one pass over them exceeds 3x the L2 (60 MB on H200), at most 8.
int sets_for(double bytes_per_set) {
  return int(std::clamp(3.0 * 60e6 / std::max(bytes_per_set, 1.0), 1.0, 8.0));
}

Workload make(const Case& c) {
  Workload w;
  const DType dt = c.dtype;
  const double es = double(dtype_size(dt));
  if (c.op == "copy") {
    const int64_t n = c.get("n");
    auto src = std::make_shared<Tensor>(rnd({n}, dt, 1));
    auto dst = std::make_shared<Tensor>(empty({n}, dt, gpu()));
    w.run = [src, dst](int) { copy_(*dst, *src); };
    w.bytes = 2.0 * n * es;
  } else if (c.op == "matmul") {
    const int64_t M = c.get("M"), N = c.get("N"), K = c.get("K");
    w.sets = sets_for((M * K + K * N) * es);
    auto a = std::make_shared<std::vector<Tensor>>(), b = std::make_shared<std::vector<Tensor>>();
    for (int i = 0; i < w.sets; ++i) {
      a->push_back(rnd({M, K}, dt, 10 + i));
      b->push_back(rnd({K, N}, dt, 20 + i));
    }
    w.run = [a, b](int i) { matmul((*a)[i], (*b)[i]); };
    w.flop = 2.0 * M * N * K;
    w.bytes = (M * K + K * N + M * N) * es;
  } else if (c.op == "attention_fwd" || c.op == "attention_fwdbwd") {
    // det=1: the deterministic flash backward (cuda::set_attention_deterministic); v3=1: flash
    // forward version 3 (cuda::set_flash_forward_v3); sd only.
    const int64_t B = c.get("B"), H = c.get("H"), Lq = c.get("Lq"), Lk = c.get("Lk"), D = c.get("D");
    const bool bwd = c.op == "attention_fwdbwd", det = c.get_or("det", 0) != 0, v3 = c.get_or("v3", 0) != 0;
    w.sets = sets_for((2 * B * H * Lq * D + 2 * B * H * Lk * D) * es);
    auto in = std::make_shared<std::vector<std::array<Tensor, 4>>>();
    for (int i = 0; i < w.sets; ++i)
      in->push_back({rnd({B, H, Lq, D}, dt, 30 + i), rnd({B, H, Lk, D}, dt, 40 + i), rnd({B, H, Lk, D}, dt, 50 + i),
                     rnd({B, H, Lq, D}, dt, 60 + i)});
    w.run = [in, bwd, det, v3](int i) {
      auto& s = (*in)[i];
      cuda::set_attention_deterministic(det);
      cuda::set_flash_forward_v3(v3);
      if (!bwd) {
        autograd::NoGrad ng;
        scaled_dot_product_attention(s[0], s[1], s[2]);
        cuda::set_flash_forward_v3(false);
        return;
      }
      Tensor q = detach(s[0]), k = detach(s[1]), v = detach(s[2]);
      q.set_requires_grad(true);
      k.set_requires_grad(true);
      v.set_requires_grad(true);
      Tensor o = scaled_dot_product_attention(q, k, v);
      autograd::backward(o, s[3]);
      cuda::set_attention_deterministic(false);
      cuda::set_flash_forward_v3(false);
    };
    w.flop = 4.0 * B * H * Lq * Lk * D * (bwd ? 3.5 : 1.0);  // backward = 2.5x forward (FlashAttention convention)
    w.bytes = (2 * B * H * Lq * D + 2 * B * H * Lk * D) * es * (bwd ? 2 : 1);
  } else if (c.op == "group_norm_silu") {
    // cl=1: a channels-last input (read in place); onek=1: the one-kernel forward
    // (cuda::set_group_norm_one_kernel), where the group fits a block's shared memory.
    const int64_t N = c.get("N"), C = c.get("C"), H = c.get("H"), W = c.get("W");
    const bool cl = c.get_or("cl", 0) != 0, one_kernel = c.get_or("onek", 0) != 0;
    w.sets = sets_for(N * C * H * W * es);
    auto xs = std::make_shared<std::vector<Tensor>>();
    for (int i = 0; i < w.sets; ++i) xs->push_back(cl ? rnd_nhwc(N, C, H, W, dt, 70 + i) : rnd({N, C, H, W}, dt, 70 + i));
    auto g = std::make_shared<Tensor>(rnd({C}, dt, 7)), b = std::make_shared<Tensor>(rnd({C}, dt, 8));
    w.run = [xs, g, b, one_kernel](int i) {
      autograd::NoGrad ng;
      cuda::set_group_norm_one_kernel(one_kernel);
      group_norm((*xs)[i], 32, *g, *b, 1e-5, true);
      cuda::set_group_norm_one_kernel(false);
    };
    w.bytes = 2.0 * N * C * H * W * es;
  } else if (c.op == "conv3x3") {
    // Channels-last input and weight, padding 1, stride s (2: the downsamplers); graph=1: cuDNN's
    // graph API with the bias fused (cuda::ConvBackend::CudnnGraph), else the default backend.
    const int64_t N = c.get("N"), C = c.get("C"), H = c.get("H"), W = c.get("W"), O = c.get("O");
    const int64_t st = c.get_or("s", 1), Ho = (H - 1) / st + 1, Wo = (W - 1) / st + 1;
    const cuda::ConvBackend backend = c.get_or("graph", 0) ? cuda::ConvBackend::CudnnGraph : cuda::ConvBackend::Auto;
    w.sets = sets_for(N * C * H * W * es);
    auto xs = std::make_shared<std::vector<Tensor>>();
    for (int i = 0; i < w.sets; ++i) xs->push_back(rnd_nhwc(N, C, H, W, dt, 80 + i));
    auto wt = std::make_shared<Tensor>(rnd_nhwc(O, C, 3, 3, dt, 9)), bias = std::make_shared<Tensor>(rnd({O}, dt, 10));
    w.run = [xs, wt, bias, st, backend](int i) {
      autograd::NoGrad ng;
      cuda::set_conv_backend(backend);
      conv2d((*xs)[i], *wt, *bias, {st, st}, {1, 1});
      cuda::set_conv_backend(cuda::ConvBackend::Auto);
    };
    w.flop = 2.0 * N * O * Ho * Wo * C * 9;
    w.bytes = (N * C * H * W + N * O * Ho * Wo + O * C * 9) * es;
  } else if (c.op == "geglu") {
    // The feed-forward's GEGLU on [rows, 2n]: fused=1 is sd's one-kernel path (cuda::set_fused_geglu),
    // fused=0 the composite (gelu, then the product).
    const int64_t R = c.get("rows"), n = c.get("n");
    const bool fused = c.get_or("fused", 0) != 0;
    w.sets = sets_for(R * 2 * n * es);
    auto xs = std::make_shared<std::vector<Tensor>>();
    for (int i = 0; i < w.sets; ++i) xs->push_back(rnd({R, 2 * n}, dt, 95 + i));
    w.run = [xs, fused](int i) {
      autograd::NoGrad ng;
      cuda::set_fused_geglu(fused);
      geglu((*xs)[i]);
      cuda::set_fused_geglu(false);
    };
    w.bytes = 3.0 * R * n * es;  // the fused minimum: read [hidden | gate], write the product
  } else if (c.op == "layer_norm" || c.op == "softmax") {
    const int64_t R = c.get("rows"), D = c.get("D");
    w.sets = sets_for(R * D * es);
    auto xs = std::make_shared<std::vector<Tensor>>();
    for (int i = 0; i < w.sets; ++i) xs->push_back(rnd({R, D}, dt, 90 + i));
    auto g = std::make_shared<Tensor>(rnd({D}, dt, 11)), b = std::make_shared<Tensor>(rnd({D}, dt, 12));
    const bool ln = c.op == "layer_norm";
    w.run = [xs, g, b, ln](int i) {
      autograd::NoGrad ng;
      if (ln) layer_norm((*xs)[i], *g, *b, 1e-5);
      else softmax((*xs)[i], -1);
    };
    w.bytes = 2.0 * R * D * es;
  } else if (c.op == "unet_fwd" || c.op == "unet_fwdbwd") {
    // A full-size SD1.5 UNet with random weights: one denoising step (batch 2 = CFG), or one
    // training step's forward + backward (no optimizer).
    // xl=1: SDXL's UNet (text_time conditioning); cl=1: run channels-last (set_channels_last);
    // graph=1: convolutions through cuDNN's graph API; compile=N is PyTorch's (torch.compile
    // modes) and runs the same step here.
    const int64_t B = c.get("B"), H = c.get("H"), W = c.get("W");
    const cuda::ConvBackend backend = c.get_or("graph", 0) ? cuda::ConvBackend::CudnnGraph : cuda::ConvBackend::Auto;
    const bool bwd = c.op == "unet_fwdbwd", xl = c.get_or("xl", 0) != 0;
    auto model = std::make_shared<nn::UNet2DConditionModel>(xl ? nn::UNetConfig::sdxl_base() : nn::UNetConfig::sd15());
    model->init_parameters(1, dt, gpu());
    if (c.get_or("cl", 0)) model->set_channels_last(true);
    if (bwd) model->set_requires_grad(true);
    auto x = std::make_shared<Tensor>(rnd({B, 4, H, W}, dt, 100));
    auto ctx = std::make_shared<Tensor>(rnd({B, 77, xl ? 2048 : 768}, dt, 101));
    auto t = std::make_shared<Tensor>(full({B}, 500.0, DType::F32, gpu()));
    auto added = std::make_shared<nn::UNetAddedCond>();
    if (xl) *added = {rnd({B, 1280}, dt, 102), full({B, 6}, 1024.0, dt, gpu())};
    w.run = [model, x, ctx, t, added, bwd, backend](int) {
      cuda::set_conv_backend(backend);
      if (!bwd) {
        autograd::NoGrad ng;
        model->forward(*x, *t, *ctx, *added);
      } else {
        Tensor out = model->forward(*x, *t, *ctx, *added);
        autograd::backward(out, *x);
      }
      cuda::set_conv_backend(cuda::ConvBackend::Auto);
    };
    w.reps = 10;
  } else {
    SD_FAIL("unknown bench op ", c.op);
  }
  return w;
}

double time_median_ms(const Workload& w, int warmup, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < warmup; ++i) w.run(i % w.sets);
  cudaDeviceSynchronize();
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start);
    w.run(i % w.sets);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string cases_path = "bench/gpu/cases.txt";
  int reps = 30;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: sd_bench_gpu [--cases bench/gpu/cases.txt] [--reps 30]\n"
                  "Times each case with CUDA events (median after warm-up) and prints CSV:\n"
                  "op,dtype,params,ms,flop,bytes\n");
      return 0;
    }
    if (a == "--cases" && i + 1 < argc) cases_path = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
  }
  if (cudart::device_count() == 0) {
    std::fprintf(stderr, "sd_bench_gpu: no GPU (%s)\n", cudart::unavailable_reason().c_str());
    return 1;
  }
  std::printf("op,dtype,params,ms,flop,bytes,peak_mib\n");
  for (const Case& c : read_cases(cases_path)) {
    try {
      cuda_allocator(0).reset_peak();
      Workload w = make(c);
      const double ms = time_median_ms(w, 3, w.reps ? w.reps : reps);
      const double peak_mib = double(cuda_allocator(0).stats().peak_bytes) / (1 << 20);
      std::printf("%s,%s,%s,%.5f,%.6g,%.6g,%.0f\n", c.op.c_str(), dtype_name(c.dtype), c.params.c_str(), ms, w.flop,
                  w.bytes, peak_mib);
    } catch (const std::exception& e) {
      std::printf("%s,%s,%s,nan,0,0,0\n", c.op.c_str(), dtype_name(c.dtype), c.params.c_str());
      std::fprintf(stderr, "sd_bench_gpu: %s %s: %s\n", c.op.c_str(), c.params.c_str(), e.what());
    }
    std::fflush(stdout);
    cuda_allocator(0).empty_cache();
  }
  return 0;
}
