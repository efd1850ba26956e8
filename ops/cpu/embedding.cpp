#include "ops/cpu/embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// ids of either integer dtype as int64, contiguous.
std::vector<int64_t> ids_as_i64(const Tensor& ids_in) {
  Tensor ids = contiguous_raw(ids_in);
  std::vector<int64_t> out(size_t(ids.numel()));
  if (ids.dtype() == DType::I32) {
    const int32_t* p = ids.data<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    const int64_t* p = ids.data<int64_t>();
    std::copy(p, p + out.size(), out.begin());
  }
  return out;
}

}  // namespace

bool find_bad_id(const Tensor& ids, int64_t V, int64_t& bad) {
  for (int64_t id : ids_as_i64(ids))
    if (id < 0 || id >= V) {
      bad = id;
      return true;
    }
  return false;
}

Tensor embedding(const Tensor& weight_in, const Tensor& ids_in) {
  Tensor weight = contiguous_raw(weight_in);
  const std::vector<int64_t> ids = ids_as_i64(ids_in);
  const int64_t D = weight.size(1), n = int64_t(ids.size());
  Shape shape = ids_in.shape();
  shape.push_back(D);
  Tensor out = empty(shape, weight.dtype(), Device::cpu());
  const size_t row_bytes = size_t(D) * weight.element_size();
  const char* w = static_cast<const char*>(weight.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  // A plain row copy per id: no arithmetic, so no dtype dispatch.
  parallel_for(n, D, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(o + size_t(i) * row_bytes, w + size_t(ids[i]) * row_bytes, row_bytes);
  });
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& ids_in, int64_t V) {
  const std::vector<int64_t> ids = ids_as_i64(ids_in);
  const int64_t D = grad.size(-1), n = int64_t(ids.size());
  // Sums run in f32 (f64 for f64): a row hit by many ids would lose bits in f16/bf16.
  const DType cd = grad.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor g = grad.dtype() == cd ? contiguous_raw(grad) : copy_to(grad, cd, Device::cpu());
  Tensor out = zeros({V, D}, cd, Device::cpu());
  auto scatter_add = [&](auto tag) {
    using A = decltype(tag);
    const A* pg = g.data<A>();
    A* po = out.data<A>();
    // Repeated ids make rows collide, so threads split the columns instead: each owns a
    // column range of every row and no two threads write the same element.
    parallel_for(D, n, [&](int64_t j0, int64_t j1) {
      for (int64_t i = 0; i < n; ++i) {
        const A* src = pg + i * D;
        A* dst = po + ids[size_t(i)] * D;
        for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
      }
    });
  };
  if (cd == DType::F64) {
    scatter_add(double{});
  } else {
    scatter_add(float{});
  }
  return out.dtype() == grad.dtype() ? out : copy_to(out, grad.dtype(), Device::cpu());
}

}  // namespace sd::cpu
