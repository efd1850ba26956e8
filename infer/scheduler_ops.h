// Tensor arithmetic of the scheduler steps, one sd op per diffusers (torch) op so each result
// rounds the way diffusers' does. Scalars are float32, like diffusers' 0-dim float32 tensors.
#pragma once
#include <cmath>

#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/tensor.h"

namespace sd::infer::detail {

// s * x (torch: 0-dim float32 tensor times a tensor).
inline Tensor smul(const Tensor& x, float s) { return mul_scalar(x, double(s)); }
// x / s as a true division (torch divides by a 0-dim tensor; x * (1 / s) would round differently).
inline Tensor sdiv(const Tensor& x, float s) { return div(x, full({}, double(s), x.dtype(), x.device())); }
// x in float32 (diffusers' sample.to(torch.float32)); the same tensor when it already is.
inline Tensor as_f32(const Tensor& x) { return x.dtype() == DType::F32 ? x : to(x, DType::F32); }
inline Tensor as_dtype(const Tensor& x, DType d) { return x.dtype() == d ? x : to(x, d); }

// float32 exp / log / expm1 evaluated in double and rounded once: correctly rounded (nearly
// always), so the same with every C library. torch's float32 versions (SLEEF) are within an ulp.
inline float exp_f(float x) { return float(std::exp(double(x))); }
inline float log_f(float x) { return float(std::log(double(x))); }
inline float expm1_f(float x) { return float(std::expm1(double(x))); }

// DPM-Solver / UniPC: sigma -> (alpha_t, sigma_t) = (1 / sqrt(sigma^2 + 1), sigma * alpha_t)
// and lambda = log(alpha_t) - log(sigma_t) (+inf at sigma 0), in float32.
struct AlphaSigma {
  float alpha, sigma;
};
inline AlphaSigma alpha_sigma(float s) {
  const float a = 1.0f / std::sqrt(s * s + 1.0f);
  return {a, s * a};
}
inline float lambda_of(AlphaSigma v) { return log_f(v.alpha) - log_f(v.sigma); }

}  // namespace sd::infer::detail
