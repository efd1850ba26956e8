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

inline double exp_any(double x) { return std::exp(x); }
inline float exp_any(float x) { return exp_f32(x); }

// x / (1 + exp(-x)), the SiLU, through exp_any.
template <class A>
inline A silu_of(A x) {
  return x / (A(1) + exp_any(-x));
}

}  // namespace sd::cpu
