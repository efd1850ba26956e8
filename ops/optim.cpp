#include "ops/optim.h"

#include <cmath>

#include "ops/cpu/optim.h"
#include "ops/cuda/optim.h"
#include "ops/op_common.h"

namespace sd {

namespace {

// In-place work needs contiguous buffers: non-contiguous targets are worked on through a
// contiguous copy that finish() writes back. Parameters and their gradients (which take the
// parameter's layout) are contiguous unless a model stores channels-last weights
// (set_channels_last, an inference setting), so this is the rare path.
struct InPlaceTargets {
  std::vector<Tensor> work;
  std::vector<std::pair<Tensor, Tensor>> write_back;  // (original, contiguous copy)

  void add(const Tensor& t) {
    if (t.is_contiguous()) {
      work.push_back(t);
    } else {
      Tensor c = contiguous_raw(t);
      work.push_back(c);
      write_back.emplace_back(t, c);
    }
  }
  void finish() {
    for (auto& [orig, copy] : write_back) copy_(orig, copy);
  }
};

// One launch covers the whole list, so every tensor must live where the first one does.
void check_device(const char* op, const Tensor& t, const Tensor& first, size_t i, const char* what) {
  SD_CHECK(t.device() == first.device(), op, ": tensor ", i, ": ", what, " ", t.str(), " is on another device than ",
           first.str());
}

// The defined tensors of a gradient list, checked: floating, all on one device.
std::vector<Tensor> defined_grads(const char* op, const std::vector<Tensor>& grads) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) continue;
    SD_CHECK(is_floating(grads[i].dtype()), op, ": tensor ", i, " is ", grads[i].str(), ", not floating");
    if (!out.empty()) check_device(op, grads[i], out[0], i, "grad");
    out.push_back(grads[i]);
  }
  return out;
}

std::vector<Tensor> contiguous_all(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(contiguous_raw(t));
  return out;
}

// `first` is slot 0's master: every tensor of every slot lives on its device.
void check_slot(const AdamWSlot& s, size_t i, const Tensor& first) {
  const char* op = "fused_adamw_";
  SD_CHECK(s.master.defined() && s.exp_avg.defined() && s.exp_avg_sq.defined(), op, ": slot ", i,
           ": master, exp_avg and exp_avg_sq must all be defined");
  auto check_state = [&](const Tensor& t, const char* what) {
    SD_CHECK(t.dtype() == DType::F32, op, ": slot ", i, ": ", what, " must be f32, got ", t.str());
    SD_CHECK(t.shape() == s.master.shape(), op, ": slot ", i, ": ", what, " ", t.str(), " does not match master ",
             s.master.str());
    SD_CHECK(t.is_contiguous(), op, ": slot ", i, ": ", what, " must be contiguous, got ", t.str());
  };
  auto same_device = [&](const Tensor& t, const char* what) {
    SD_CHECK(t.device() == first.device(), op, ": slot ", i, ": ", what, " ", t.str(),
             " is on another device than slot 0's master ", first.str());
  };
  check_state(s.master, "master");
  check_state(s.exp_avg, "exp_avg");
  check_state(s.exp_avg_sq, "exp_avg_sq");
  same_device(s.master, "master");
  same_device(s.exp_avg, "exp_avg");
  same_device(s.exp_avg_sq, "exp_avg_sq");
  if (s.grad.defined()) {
    const DType g = s.grad.dtype();
    SD_CHECK(g == DType::F32 || g == DType::F16 || g == DType::BF16, op, ": slot ", i,
             ": grad must be f32, f16 or bf16, got ", s.grad.str());
    SD_CHECK(s.grad.shape() == s.master.shape(), op, ": slot ", i, ": grad ", s.grad.str(),
             " does not match master ", s.master.str());
    same_device(s.grad, "grad");
  }
  if (s.model_copy.defined()) {
    const DType c = s.model_copy.dtype();
    SD_CHECK(c == DType::F16 || c == DType::BF16, op, ": slot ", i, ": model_copy must be f16 or bf16, got ",
             s.model_copy.str());
    SD_CHECK(s.model_copy.shape() == s.master.shape(), op, ": slot ", i, ": model_copy ", s.model_copy.str(),
             " does not match master ", s.master.str());
    SD_CHECK(s.model_copy.is_contiguous(), op, ": slot ", i, ": model_copy must be contiguous, got ",
             s.model_copy.str());
    same_device(s.model_copy, "model_copy");
  }
}

// The kernels of a (non-empty) list run where its first tensor lives.
double sum_of_squares(const std::vector<Tensor>& ts) {
  if (ts.empty()) return 0.0;
  return SD_DISPATCH_DEVICE(ts[0], cpu::sum_of_squares(ts), cuda::sum_of_squares(ts));
}

bool scale_and_check(const std::vector<Tensor>& ts, double s, bool scale_first) {
  if (ts.empty()) return false;
  return SD_DISPATCH_DEVICE(ts[0], cpu::scale_and_check(ts, s, scale_first), cuda::scale_and_check(ts, s, scale_first));
}

}  // namespace

void fused_adamw_(std::vector<AdamWSlot>& slots, const AdamWConfig& cfg, int64_t step, double grad_scale) {
  SD_NVTX_RANGE("fused_adamw_");
  SD_CHECK(step >= 1, "fused_adamw_: step counts from 1, got ", step);
  SD_CHECK(cfg.lr >= 0 && cfg.eps >= 0 && cfg.weight_decay >= 0, "fused_adamw_: lr ", cfg.lr, ", eps ", cfg.eps,
           " and weight_decay ", cfg.weight_decay, " must be >= 0");
  SD_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 && cfg.beta2 < 1, "fused_adamw_: betas (", cfg.beta1,
           ", ", cfg.beta2, ") must be in [0, 1)");
  SD_CHECK(std::isfinite(grad_scale), "fused_adamw_: grad_scale must be finite, got ", grad_scale);

  std::vector<AdamWSlot> work;
  for (size_t i = 0; i < slots.size(); ++i) {
    check_slot(slots[i], i, slots[0].master);
    if (!slots[i].grad.defined()) continue;  // no gradient reached this parameter
    AdamWSlot s = slots[i];
    s.grad = contiguous_raw(s.grad);  // read only: a copy is enough when it is strided
    work.push_back(s);
  }

  const double bc1 = 1.0 - std::pow(cfg.beta1, double(step));
  const double bc2 = 1.0 - std::pow(cfg.beta2, double(step));
  cpu::AdamWStep s;
  s.decay_factor = float(1.0 - cfg.lr * cfg.weight_decay);
  s.beta1 = float(cfg.beta1);
  s.one_minus_beta1 = float(1.0 - cfg.beta1);
  s.beta2 = float(cfg.beta2);
  s.one_minus_beta2 = float(1.0 - cfg.beta2);
  s.step_size = float(cfg.lr / bc1);
  s.bc2_sqrt = float(std::sqrt(bc2));
  s.eps = float(cfg.eps);
  s.grad_scale = float(grad_scale);
  if (work.empty()) return;
  SD_DISPATCH_DEVICE(work[0].master, cpu::fused_adamw(work, s), cuda::fused_adamw(work, s));
}

void ema_update_(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay) {
  SD_NVTX_RANGE("ema_update_");
  const char* op = "ema_update_";
  SD_CHECK(ema.size() == params.size(), op, ": ", ema.size(), " EMA tensors for ", params.size(), " parameters");
  SD_CHECK(decay >= 0 && decay <= 1, op, ": decay must be in [0, 1], got ", decay);
  InPlaceTargets targets;
  std::vector<Tensor> srcs;
  for (size_t i = 0; i < ema.size(); ++i) {
    SD_CHECK(ema[i].defined() && params[i].defined(), op, ": tensor ", i, " is undefined");
    SD_CHECK(is_floating(ema[i].dtype()) && is_floating(params[i].dtype()), op, ": tensor ", i,
             ": needs floating tensors, got ema ", ema[i].str(), " and param ", params[i].str());
    SD_CHECK(ema[i].shape() == params[i].shape(), op, ": tensor ", i, ": ema ", ema[i].str(),
             " does not match param ", params[i].str());
    check_device(op, ema[i], ema[0], i, "ema");
    check_device(op, params[i], ema[0], i, "param");
    targets.add(ema[i]);
    srcs.push_back(contiguous_raw(params[i]));
  }
  if (ema.empty()) return;
  SD_DISPATCH_DEVICE(ema[0], cpu::ema_update(targets.work, srcs, decay), cuda::ema_update(targets.work, srcs, decay));
  targets.finish();
}

double global_grad_norm(const std::vector<Tensor>& grads) {
  SD_NVTX_RANGE("global_grad_norm");
  return std::sqrt(sum_of_squares(contiguous_all(defined_grads("global_grad_norm", grads))));
}

double clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm) {
  SD_NVTX_RANGE("clip_grad_norm_");
  SD_CHECK(max_norm > 0, "clip_grad_norm_: max_norm must be > 0, got ", max_norm);
  const std::vector<Tensor> gs = defined_grads("clip_grad_norm_", grads);
  const double norm = std::sqrt(sum_of_squares(contiguous_all(gs)));
  // PyTorch multiplies by min(1, max_norm / (norm + 1e-6)); a factor of 1 changes nothing,
  // so only a factor below 1 is applied.
  const double coef = max_norm / (norm + 1e-6);
  if (!gs.empty() && std::isfinite(norm) && coef < 1.0) {
    InPlaceTargets targets;
    for (const Tensor& g : gs) targets.add(g);
    SD_DISPATCH_DEVICE(gs[0], cpu::scale(targets.work, coef), cuda::scale(targets.work, coef));
    targets.finish();
  }
  return norm;
}

bool has_non_finite(const std::vector<Tensor>& ts) {
  SD_NVTX_RANGE("has_non_finite");
  return scale_and_check(contiguous_all(defined_grads("has_non_finite", ts)), 1.0, false);
}

bool unscale_and_check_(const std::vector<Tensor>& grads, double inv_scale) {
  SD_NVTX_RANGE("unscale_and_check_");
  InPlaceTargets targets;
  for (const Tensor& g : defined_grads("unscale_and_check_", grads)) targets.add(g);
  const bool bad = scale_and_check(targets.work, inv_scale, true);
  targets.finish();
  return bad;
}

}  // namespace sd
