// Float exp that the compiler can vectorise. std::exp is a call into libm per element (GCC only
// swaps in the vector libmvec versions under -ffast-math), which made softmax, attention and
// SiLU loops run at a few GB/s. These are plain branch-free expressions, so loops over them
// compile to AVX2/AVX-512 code; f64 keeps std::exp (the gradchecks' reference precision).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace sd::cpu {

// exp(x) for float, within a few ulp on [-86.9, 88.72]; 0 below -86.9 (so exp(-inf) = 0, as
// masked scores need; the true values there are at the edge of the denormals), +inf above
// 88.72, NaN for NaN (a NaN loss must stay visible).
// Method: x = k ln2 + r with |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial (Horner),
// 2^k put into the exponent bits as 2^(k-1) * 2, so that k = 128 near the top stays finite.
inline float exp_f32(float x) {
  const float xc = x < -86.9f ? -86.9f : (x > 88.72f ? 88.72f : x);
  // Round x / ln2 to the nearest integer by adding and subtracting 1.5 * 2^23.
  const float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // ln2 split into a part exact in float and the rest, so r keeps its low bits.
  const float r = (xc - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(kf) + 126) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale * 2.0f;
  y = x < -86.9f ? 0.0f : y;
  y = x > 88.72f ? INFINITY : y;
  return x != x ? x : y;
}

// tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)): absolute error ~1e-7 (relative error grows for
// |x| < 1e-3, which the activations that use it absorb: they add 1 to it).
inline float tanh_f32(float x) {
  const float a = x < 0.0f ? -x : x;
  const float t = 1.0f - 2.0f / (exp_f32(2.0f * a) + 1.0f);
  return x < 0.0f ? -t : t;
}

// erfc(z) with relative error below ~1.2e-7 everywhere: the Chebyshev-fitted exponent of
// Numerical Recipes' erfcc, t exp(-z^2 + P(t)) with t = 1 / (1 + |z| / 2), and erfc(-z) = 2 - erfc(z).
// Relative accuracy in the tail matters for GELU of negative inputs: 0.5 x erfc(-x / sqrt 2).
inline float erfc_f32(float z) {
  const float a = z < 0.0f ? -z : z;
  const float t = 1.0f / (1.0f + 0.5f * a);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float r = t * exp_f32(-a * a + p);
  return z < 0.0f ? 2.0f - r : r;
}

// GELU (erf form) 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2): the unary kernel and the
// fused GEGLU use this one expression, so the fused path gives the composite's bits.
inline float gelu_erf_f32(float x) { return 0.5f * x * erfc_f32(-x * 0.70710678118654752440f); }

inline double exp_any(double x) { return std::exp(x); }
inline float exp_any(float x) { return exp_f32(x); }

// x / (1 + exp(-x)), the SiLU, through exp_any.
template <class A>
inline A silu_of(A x) {
  return x / (A(1) + exp_any(-x));
}

}  // namespace sd::cpu
