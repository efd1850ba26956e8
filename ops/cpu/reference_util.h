// Shared helpers of the CPU normalization / softmax / attention reference kernels.
#pragma once
#include <cstdint>

#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace sd::cpu {

// Dtype of saved per-row statistics (mean, rstd, log-sum-exp): f32 for f32/f16/bf16 inputs,
// f64 for f64, i.e. the dtype the kernel computes in.
inline DType stats_dtype(DType x) { return x == DType::F64 ? DType::F64 : DType::F32; }

// g as a contiguous tensor of `like`'s dtype: backward kernels read the incoming gradient
// with the same element type as the saved inputs.
inline Tensor dense_like(const Tensor& g, const Tensor& like) {
  return g.dtype() == like.dtype() ? contiguous_raw(g) : copy_to(g, like.dtype(), Device::cpu());
}

// Running sum that adds values into a partial sum and folds the partial into the total
// every kBlock values. Statistics over a whole GroupNorm group (up to ~1M elements in the
// VAE) are accumulated in f32; blocking keeps the rounding error growing with the number
// of blocks instead of the number of elements, at no real cost.
template <class A>
struct BlockedSum {
  static constexpr int kBlock = 256;
  A total = A(0), part = A(0);
  int count = 0;
  void add(A v) {
    part += v;
    if (++count == kBlock) {
      total += part;
      part = A(0);
      count = 0;
    }
  }
  A result() const { return total + part; }
};

}  // namespace sd::cpu
