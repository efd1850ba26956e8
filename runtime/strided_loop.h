// Walks N operands of one shape with arbitrary element strides (0 for broadcast dims),
// handing the kernel one contiguous-index run at a time: body(ptrs, byte_strides, count).
// Dims that are contiguous for every operand are merged first, so a contiguous tensor is
// a single run, which is then split across threads.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "runtime/parallel.h"
#include "runtime/shape.h"

namespace sd {

template <int N>
struct StridedOperands {
  std::array<char*, N> base;
  std::array<const int64_t*, N> strides;  // element strides, one per dim of the loop shape
  std::array<int64_t, N> elem_size;
};

template <int N, class Body>
void strided_loop(const Shape& shape, const StridedOperands<N>& ops, Body&& body) {
  const int64_t total = shape_numel(shape);
  if (total == 0) return;
  // Byte strides per operand, dropping size-1 dims, then merging dims (from the inside out)
  // whose strides chain for every operand.
  std::vector<int64_t> sizes;
  std::vector<std::array<int64_t, N>> strides;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    std::array<int64_t, N> st;
    for (int k = 0; k < N; ++k) st[k] = ops.strides[k][d] * ops.elem_size[k];
    if (!sizes.empty()) {
      bool merge = true;
      for (int k = 0; k < N; ++k) merge &= st[k] == strides.back()[k] * sizes.back();
      if (merge) {
        sizes.back() *= shape[d];
        continue;
      }
    }
    sizes.push_back(shape[d]);
    strides.push_back(st);
  }
  if (sizes.empty()) {  // a single element
    sizes.push_back(1);
    strides.push_back({});
  }
  // sizes[0] is the innermost dim now.
  const int64_t inner = sizes[0];
  const int64_t rows = total / inner;
  const int64_t threads = num_threads();
  int64_t chunk = inner;
  if (rows < threads * 4 && inner > 4096) chunk = std::max<int64_t>(2048, inner * rows / (threads * 4));
  const int64_t chunks_per_row = (inner + chunk - 1) / chunk;
  const int64_t tasks = rows * chunks_per_row;
  auto run = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t row = t / chunks_per_row, c = t % chunks_per_row;
      std::array<char*, N> p = ops.base;
      int64_t r = row;
      for (size_t d = 1; d < sizes.size() && r; ++d) {
        int64_t i = r % sizes[d];
        r /= sizes[d];
        for (int k = 0; k < N; ++k) p[k] += i * strides[d][k];
      }
      const int64_t begin = c * chunk, count = std::min(chunk, inner - begin);
      for (int k = 0; k < N; ++k) p[k] += begin * strides[0][k];
      body(p, strides[0], count);
    }
  };
  parallel_for(tasks, std::min(inner, chunk), run);
}

}  // namespace sd
