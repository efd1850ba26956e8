// Pieces the CPU attention kernels share: head gathering, the broadcast mask view, and the
// tiled f32 forward (attention_forward_tiled.cpp) that attention_forward uses for f32/f16/bf16.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace sd::cpu {

// Copies head (b, h) of a [B, H, L, E] tensor into a dense compute-type buffer, [L, E], or
// [E, L] when `transposed` (so that loops over keys run over contiguous memory). With l0 and
// rows, only rows [l0, l0 + rows) of the head (a block of queries).
template <class T, class A>
void gather_head(const Tensor& t, int64_t b, int64_t h, bool transposed, std::vector<A>& out, int64_t l0 = 0,
                 int64_t rows = -1) {
  const int64_t L = rows < 0 ? t.size(2) : rows, E = t.size(3);
  const int64_t sl = t.stride(2), se = t.stride(3);
  const T* p = t.data<T>() + b * t.stride(0) + h * t.stride(1) + l0 * sl;
  out.resize(size_t(L * E));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e) out[size_t(transposed ? e * L + l : l * E + e)] = A(p[l * sl + e * se]);
}

// The mask seen as [B, H, Lq, Lk] through broadcast strides (0 along broadcast dims).
template <class T>
struct MaskView {
  const T* additive = nullptr;  // floating mask, added to the scores
  const bool* keep = nullptr;   // Bool mask, true = attend
  std::array<int64_t, 4> st{0, 0, 0, 0};

  explicit MaskView(const Tensor& mask) {
    if (!mask.defined()) return;
    const int64_t lead = 4 - mask.dim();
    for (int64_t d = 0; d < mask.dim(); ++d)
      if (mask.size(d) != 1) st[size_t(lead + d)] = mask.stride(d);
    if (mask.dtype() == DType::Bool)
      keep = mask.data<bool>();
    else
      additive = mask.data<T>();
  }
  bool any() const { return additive || keep; }
  int64_t row_offset(int64_t b, int64_t h, int64_t i) const { return b * st[0] + h * st[1] + i * st[2]; }
};

// The forward for f32/f16/bf16 inputs, computed in f32 with GEMM tiles: out [B, H, Lq, Dv] in
// q's dtype and lse [B, H, Lq] f32, both preallocated and contiguous. Same contract as
// attention_forward.
void attention_forward_tiled(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                             bool causal, Tensor& out, Tensor& lse);

}  // namespace sd::cpu
