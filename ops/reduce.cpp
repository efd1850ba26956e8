#include "ops/reduce.h"

#include <algorithm>

#include "autograd/node.h"
#include "ops/cpu/reduce.h"
#include "ops/cuda/reduce.h"
#include "ops/elementwise.h"
#include "ops/op_common.h"
#include "ops/view.h"

namespace sd {

namespace {

std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim, const char* op) {
  std::vector<int64_t> out;
  for (int64_t d : dims) out.push_back(wrap_dim(d, ndim, op));
  std::sort(out.begin(), out.end());
  SD_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, ": repeated dim");
  return out;
}

Shape drop_dims(const Shape& s, const std::vector<int64_t>& dims) {
  Shape out;
  for (int64_t d = 0; d < int64_t(s.size()); ++d)
    if (!std::binary_search(dims.begin(), dims.end(), d)) out.push_back(s[d]);
  return out;
}

// The raw reduction (no autograd), keepdim shape.
Tensor sum_raw(const Tensor& x, const std::vector<int64_t>& dims) {
  detail::check_floating("sum", x);
  return SD_DISPATCH_DEVICE(x, cpu::sum_keepdim(x, dims), cuda::sum_keepdim(x, dims));
}

Tensor reduce(const char* name, const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim, double scale) {
  SD_NVTX_RANGE(name);
  const std::vector<int64_t> dims = normalize_dims(dims_in, x.dim(), name);
  Tensor out = sum_raw(x, dims);
  if (scale != 1.0) {
    autograd::NoGrad no_grad;  // the node below covers the scaling too
    out = mul_scalar(out, scale);
  }
  Shape kept = out.shape();
  if (!keepdim) out = as_strided(out, drop_dims(kept, dims), contiguous_strides(drop_dims(kept, dims)), 0);
  if (auto node = autograd::make_node(name, {x})) {
    const Shape in_shape = x.shape();
    node->backward = [in_shape, kept, scale](Node&, const std::vector<Tensor>& g) {
      Tensor gx = contiguous(expand(reshape(g[0], kept), in_shape));
      return std::vector<Tensor>{scale != 1.0 ? mul_scalar(gx, scale) : gx};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

std::vector<int64_t> all_dims(const Tensor& x) {
  std::vector<int64_t> d(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) d[i] = i;
  return d;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return reduce("sum", x, dims, keepdim, 1.0);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  const std::vector<int64_t> d = normalize_dims(dims, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t i : d) count *= x.size(i);
  SD_CHECK(count > 0, "mean: reducing over zero elements of ", x.str());
  return reduce("mean", x, d, keepdim, 1.0 / double(count));
}

Tensor sum_all(const Tensor& x) { return sum(x, all_dims(x), false); }
Tensor mean_all(const Tensor& x) { return mean(x, all_dims(x), false); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  SD_CHECK(x.dim() >= int64_t(shape.size()), "sum_to: cannot reduce ", x.str(), " to ", shape_str(shape));
  const size_t lead = x.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t i = 0; i < x.shape().size(); ++i) {
    if (i < lead) {
      dims.push_back(int64_t(i));
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      dims.push_back(int64_t(i));
    } else {
      SD_CHECK(shape[i - lead] == x.shape()[i], "sum_to: cannot reduce ", x.str(), " to ", shape_str(shape));
    }
  }
  Tensor s = dims.empty() ? x : sum(x, dims, true);
  return reshape(s, shape);
}

}  // namespace sd
