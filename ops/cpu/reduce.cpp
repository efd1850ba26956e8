#include "ops/cpu/reduce.h"

#include "runtime/parallel.h"

namespace sd::cpu {

Tensor sum_keepdim(const Tensor& x, const std::vector<int64_t>& dims) {
  const int64_t nd = x.dim();
  std::vector<bool> reduced(nd, false);
  for (int64_t d : dims) reduced[d] = true;
  // Permute kept dims first and reduced dims last, then each output element sums one
  // contiguous run of the (copied) input.
  Shape perm_shape, perm_strides, out_shape(x.shape());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < nd; ++d)
    if (!reduced[d]) {
      perm_shape.push_back(x.shape()[d]);
      perm_strides.push_back(x.strides()[d]);
      outer *= x.shape()[d];
    }
  for (int64_t d = 0; d < nd; ++d)
    if (reduced[d]) {
      perm_shape.push_back(x.shape()[d]);
      perm_strides.push_back(x.strides()[d]);
      inner *= x.shape()[d];
      out_shape[d] = 1;
    }
  Tensor dense = contiguous_raw(as_strided(x, perm_shape, perm_strides, x.offset()));
  Tensor out = empty(out_shape, x.dtype(), x.device());
  SD_DISPATCH_FLOAT(x.dtype(), "sum", [&] {
    using T = scalar_t;
    const T* in = dense.data<T>();
    T* o = out.data<T>();
    parallel_for(outer, inner, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        double acc = 0.0;
        const T* row = in + i * inner;
        for (int64_t j = 0; j < inner; ++j) acc += double(row[j]);
        o[i] = T(acc);
      }
    });
  });
  return out;
}

}  // namespace sd::cpu
