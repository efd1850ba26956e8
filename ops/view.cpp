#include "ops/view.h"

#include <algorithm>

#include "autograd/node.h"
#include "ops/op_common.h"
#include "ops/reduce.h"
#include "runtime/image_layout.h"

namespace sd {

namespace {

// Attaches a backward that maps the output gradient to the input gradient.
template <class F>
Tensor with_grad(const char* name, const Tensor& x, Tensor out, F&& grad_fn) {
  if (auto node = autograd::make_node(name, {x})) {
    node->backward = [g = std::forward<F>(grad_fn)](Node&, const std::vector<Tensor>& go) {
      return std::vector<Tensor>{g(go[0])};
    };
    // Views alias the input's storage; the output handle must be distinct from x.
    if (out.same(x)) out = detach(x);
    autograd::set_outputs(node, {out});
  }
  return out;
}

// Strides for viewing x (with x's strides) as `shape`, if possible without a copy.
bool view_strides(const Tensor& x, const Shape& shape, Shape& strides) {
  if (x.is_contiguous()) {
    strides = contiguous_strides(shape);
    return true;
  }
  return false;
}

Shape infer_shape(const Shape& shape, int64_t numel, const char* op) {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      SD_CHECK(infer < 0, op, ": more than one -1 in ", shape_str(shape));
      infer = int64_t(i);
    } else {
      SD_CHECK(s[i] >= 0, op, ": bad size in ", shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    SD_CHECK(known > 0 && numel % known == 0, op, ": cannot infer -1 in ", shape_str(shape), " for ", numel,
             " elements");
    s[infer] = numel / known;
  }
  SD_CHECK(shape_numel(s) == numel, op, ": shape ", shape_str(shape), " does not hold ", numel, " elements");
  return s;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape_in) {
  const Shape shape = infer_shape(shape_in, x.numel(), "reshape");
  Shape strides;
  Tensor out = view_strides(x, shape, strides) ? as_strided(x, shape, strides, x.offset())
                                                : as_strided(contiguous_raw(x), shape, contiguous_strides(shape), 0);
  const Shape in_shape = x.shape();
  return with_grad("reshape", x, out, [in_shape](const Tensor& g) { return reshape(g, in_shape); });
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  int64_t s = wrap_dim(start_dim, x.dim(), "flatten"), e = wrap_dim(end_dim, x.dim(), "flatten");
  Shape shape;
  for (int64_t d = 0; d < s; ++d) shape.push_back(x.size(d));
  int64_t m = 1;
  for (int64_t d = s; d <= e; ++d) m *= x.size(d);
  shape.push_back(m);
  for (int64_t d = e + 1; d < x.dim(); ++d) shape.push_back(x.size(d));
  return reshape(x, shape);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape(), strides = x.strides();
  int64_t st = d < x.dim() ? x.strides()[d] * x.shape()[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, st);
  Tensor out = as_strided(x, shape, strides, x.offset());
  return with_grad("unsqueeze", x, out, [d](const Tensor& g) { return squeeze(g, d); });
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim(), "squeeze");
  SD_CHECK(x.size(d) == 1, "squeeze: dim ", dim, " of ", x.str(), " is not 1");
  Shape shape = x.shape(), strides = x.strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = as_strided(x, shape, strides, x.offset());
  return with_grad("squeeze", x, out, [d](const Tensor& g) { return unsqueeze(g, d); });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  SD_CHECK(int64_t(dims.size()) == x.dim(), "permute: ", dims.size(), " dims given for ", x.str());
  Shape shape(dims.size()), strides(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], x.dim(), "permute");
    SD_CHECK(inverse[d] < 0, "permute: dim ", d, " repeated");
    inverse[d] = int64_t(i);
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor out = as_strided(x, shape, strides, x.offset());
  return with_grad("permute", x, out, [inverse](const Tensor& g) { return permute(g, inverse); });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[wrap_dim(d0, x.dim(), "transpose")], dims[wrap_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  const int64_t d = wrap_dim(dim, x.dim(), "slice");
  const int64_t n = x.size(d);
  SD_CHECK(step > 0, "slice: step must be positive, got ", step);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), strides = x.strides();
  shape[d] = (end - start + step - 1) / step;
  strides[d] *= step;
  Tensor out = as_strided(x, shape, strides, x.offset() + start * x.strides()[d]);
  const Shape in_shape = x.shape();
  const DType dt = x.dtype();
  const Device dev = x.device();
  return with_grad("slice", x, out, [=](const Tensor& g) {
    Tensor gx = zeros(in_shape, dt, dev);
    copy_(slice(gx, d, start, end, step), g);
    return gx;
  });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const int64_t d = wrap_dim(dim, x.dim(), "narrow");
  SD_CHECK(start >= 0 && length >= 0 && start + length <= x.size(d), "narrow: [", start, ", ", start + length,
           ") out of range for dim ", dim, " of ", x.str());
  return slice(x, d, start, start + length);
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  const int64_t d = wrap_dim(dim, x.dim(), "select");
  if (index < 0) index += x.size(d);
  SD_CHECK(index >= 0 && index < x.size(d), "select: index ", index, " out of range for dim ", dim, " of ", x.str());
  return squeeze(slice(x, d, index, index + 1), d);
}

Tensor expand(const Tensor& x, const Shape& shape_in) {
  SD_CHECK(int64_t(shape_in.size()) >= x.dim(), "expand: ", shape_str(shape_in), " has fewer dims than ", x.str());
  Shape shape = shape_in, strides(shape_in.size(), 0);
  const size_t lead = shape.size() - x.shape().size();
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      SD_CHECK(shape[i] >= 0, "expand: new leading dims need a size, got ", shape_str(shape_in));
      continue;
    }
    int64_t s = x.shape()[i - lead];
    if (shape[i] == -1) shape[i] = s;
    SD_CHECK(s == shape[i] || s == 1, "expand: cannot expand ", x.str(), " to ", shape_str(shape_in));
    strides[i] = s == 1 && shape[i] != 1 ? 0 : x.strides()[i - lead];
  }
  Tensor out = as_strided(x, shape, strides, x.offset());
  const Shape in_shape = x.shape();
  return with_grad("expand", x, out, [in_shape](const Tensor& g) { return sum_to(g, in_shape); });
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  // The gradient goes back in x's layout when that was channels-last (a channels-last model's
  // exit), so the layers before see one conversion here instead of one per use.
  const bool channels_last = prefers_channels_last(x);
  return with_grad("contiguous", x, copy_to(x, x.dtype(), x.device()),
                   [channels_last](const Tensor& g) { return channels_last ? channels_last_raw(g) : g; });
}

Tensor to_channels_last(const Tensor& x) {
  SD_CHECK(x.defined() && x.dim() == 4, "to_channels_last: needs an image [N, C, H, W], got ",
           x.defined() ? x.str() : std::string("an undefined tensor"));
  if (is_channels_last_dense(x)) return x;
  return with_grad("to_channels_last", x, channels_last_raw(x), [](const Tensor& g) { return g; });
}

Tensor clone(const Tensor& x) {
  return with_grad("clone", x, copy_to(x, x.dtype(), x.device()), [](const Tensor& g) { return g; });
}

Tensor to(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  const DType back = x.dtype();
  Tensor out = copy_to(x, dtype, x.device());
  if (!is_floating(dtype) || !is_floating(back)) return out;  // integer casts carry no gradient
  return with_grad("to_dtype", x, out, [back](const Tensor& g) { return to(g, back); });
}

Tensor to(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  const Device back = x.device();
  return with_grad("to_device", x, copy_to(x, x.dtype(), device), [back](const Tensor& g) { return to(g, back); });
}

}  // namespace sd
