#include "ops/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/reference_util.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// A contiguous tensor seen as [outer, L, inner] around `dim`: row r = (o, i) holds the L
// elements o * L * inner + i + l * inner.
struct Rows {
  int64_t outer = 1, len = 1, inner = 1;
  Rows(const Shape& s, int64_t dim) {
    for (int64_t d = 0; d < dim; ++d) outer *= s[size_t(d)];
    len = s[size_t(dim)];
    for (size_t d = size_t(dim) + 1; d < s.size(); ++d) inner *= s[d];
  }
  int64_t count() const { return outer * inner; }
  int64_t base(int64_t r) const { return (r / inner) * len * inner + r % inner; }
};

}  // namespace

Tensor softmax_forward(const Tensor& x, int64_t dim, bool log) {
  const Tensor xc = contiguous_raw(x);
  Tensor y = empty(x.shape(), x.dtype());
  const Rows rows(x.shape(), dim);
  SD_DISPATCH_FLOAT(x.dtype(), log ? "log_softmax" : "softmax", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* xp = xc.data<T>();
    T* yp = y.data<T>();
    const int64_t L = rows.len, st = rows.inner;
    parallel_for(rows.count(), 8 * L, [&](int64_t r0, int64_t r1) {
      std::vector<A> e(static_cast<size_t>(L));  // exp(x - max) of the current row
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + rows.base(r);
        T* yr = yp + rows.base(r);
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t l = 0; l < L; ++l) m = std::max(m, A(xr[l * st]));
        // A row of all -inf gives NaN (exp(-inf - -inf)), as in PyTorch.
        BlockedSum<A> s;
        for (int64_t l = 0; l < L; ++l) {
          e[size_t(l)] = std::exp(A(xr[l * st]) - m);
          s.add(e[size_t(l)]);
        }
        if (log) {
          // (x - max) - log(sum) rather than x - (max + log(sum)): x - max is exact for
          // nearby values, where forming max + log(sum) would round at max's magnitude.
          const A log_sum = std::log(s.result());
          for (int64_t l = 0; l < L; ++l) yr[l * st] = T((A(xr[l * st]) - m) - log_sum);
        } else {
          const A inv = A(1) / s.result();
          for (int64_t l = 0; l < L; ++l) yr[l * st] = T(e[size_t(l)] * inv);
        }
      }
    });
  });
  return y;
}

Tensor softmax_backward(const Tensor& dy, const Tensor& y, int64_t dim, bool log) {
  const Tensor yc = contiguous_raw(y), gc = dense_like(dy, y);
  Tensor dx = empty(y.shape(), y.dtype());
  const Rows rows(y.shape(), dim);
  SD_DISPATCH_FLOAT(y.dtype(), log ? "log_softmax_backward" : "softmax_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* yp = yc.data<T>();
    const T* gp = gc.data<T>();
    T* dp = dx.data<T>();
    const int64_t L = rows.len, st = rows.inner;
    parallel_for(rows.count(), 6 * L, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = rows.base(r);
        const T* yr = yp + b;
        const T* gr = gp + b;
        T* dr = dp + b;
        BlockedSum<A> s;
        for (int64_t l = 0; l < L; ++l) s.add(log ? A(gr[l * st]) : A(gr[l * st]) * A(yr[l * st]));
        const A sum = s.result();
        for (int64_t l = 0; l < L; ++l) {
          const A yv = A(yr[l * st]), gv = A(gr[l * st]);
          dr[l * st] = T(log ? gv - std::exp(yv) * sum : yv * (gv - sum));
        }
      }
    });
  });
  return dx;
}

}  // namespace sd::cpu
