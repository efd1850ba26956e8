#include "runtime/tensor.h"

#include <atomic>
#include <cstring>
#include <sstream>

#include "runtime/allocator.h"
#include "runtime/image_layout.h"
#include "runtime/cuda_api.h"
#include "runtime/error.h"
#include "runtime/strided_loop.h"
#include "runtime/cuda_kernels.h"

namespace sd {

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  Allocator& a = allocator_for(device);
  void* p = a.allocate(nbytes);
  return std::make_shared<Storage>(p, nbytes, device, [&a, p, nbytes] { a.deallocate(p, nbytes); });
}

// ---------------------------------------------------------------- metadata

int64_t Tensor::size(int64_t d) const { return impl_->shape[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return impl_->strides[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

void Tensor::check_dtype(DType t, const char* op) const {
  SD_CHECK(defined(), op, ": undefined tensor");
  SD_CHECK(dtype() == t, op, ": expected dtype ", dtype_name(t), ", got ", dtype_name(dtype()), " for ",
           str());
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor[undefined]";
  std::ostringstream os;
  os << "Tensor[" << dtype_name(dtype()) << " " << shape_str(shape()) << " " << device().str();
  if (!impl_->name.empty()) os << " '" << impl_->name << "'";
  os << "]";
  return os.str();
}

Tensor& Tensor::set_requires_grad(bool on) {
  SD_CHECK(!on || is_floating(dtype()), "set_requires_grad: only floating tensors can require grad, got ",
           str());
  impl_->autograd.requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(impl_->autograd.grad); }
void Tensor::set_grad(const Tensor& g) {
  if (g.defined())
    SD_CHECK(g.shape() == shape(), "set_grad: gradient ", g.str(), " does not match ", str());
  impl_->autograd.grad = g.impl_ptr();
}
void Tensor::zero_grad() { impl_->autograd.grad.reset(); }
void Tensor::add_grad_hook(GradHook h) { impl_->autograd.hooks.push_back(std::move(h)); }
Tensor& Tensor::set_name(std::string n) {
  impl_->name = std::move(n);
  return *this;
}

std::vector<double> Tensor::to_vector() const {
  Tensor c = copy_to(*this, DType::F64, Device::cpu());
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

std::vector<float> Tensor::to_float_vector() const {
  Tensor c = copy_to(*this, DType::F32, Device::cpu());
  const float* p = c.data<float>();
  return std::vector<float>(p, p + c.numel());
}

double Tensor::item() const {
  SD_CHECK(numel() == 1, "item(): expected one element, got ", str());
  return to_vector()[0];
}

// ---------------------------------------------------------------- factories

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) SD_CHECK(d >= 0, "empty: negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  fill_(t, value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor scalar_tensor(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  SD_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor host = empty(shape, DType::F64);
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(double));
  return copy_to(host, dtype, device);
}

Tensor from_floats(const std::vector<float>& values, const Shape& shape, DType dtype, Device device) {
  SD_CHECK(int64_t(values.size()) == shape_numel(shape), "from_floats: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor host = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(float));
  return copy_to(host, dtype, device);
}

Tensor arange(int64_t n, DType dtype, Device device) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = double(i);
  return from_vector(v, {n}, dtype, device);
}

// ---------------------------------------------------------------- views

Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset) {
  SD_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape_str(shape), " and strides ",
           shape_str(strides), " differ in rank");
  // The view must stay within the storage: find the lowest and highest element it touches.
  int64_t lo = offset, hi = offset;
  bool empty_view = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) empty_view = true;
    int64_t span = (shape[i] - 1) * strides[i];
    (span < 0 ? lo : hi) += span;
  }
  const int64_t capacity = int64_t(t.storage()->nbytes() / t.element_size());
  SD_CHECK(empty_view || (lo >= 0 && hi < capacity), "as_strided: view ", shape_str(shape), " strides ",
           shape_str(strides), " offset ", offset, " reaches outside storage of ", capacity, " elements");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = t.dtype();
  return Tensor(std::move(impl));
}

Tensor detach(const Tensor& t) {
  if (!t.defined()) return t;
  return as_strided(t, t.shape(), t.strides(), t.offset());
}

// ---------------------------------------------------------------- copies

namespace {

// src viewed with dst's shape: broadcast dims get stride 0.
Tensor broadcast_view(const Tensor& src, const Shape& shape) {
  SD_CHECK(src.dim() <= int64_t(shape.size()), "copy_: cannot broadcast ", src.str(), " to ",
           shape_str(shape));
  Shape st(shape.size(), 0);
  size_t lead = shape.size() - src.shape().size();
  for (size_t i = 0; i < src.shape().size(); ++i) {
    int64_t s = src.shape()[i], d = shape[lead + i];
    SD_CHECK(s == d || s == 1, "copy_: cannot broadcast ", src.str(), " to ", shape_str(shape));
    st[lead + i] = s == 1 ? 0 : src.strides()[i];
  }
  return as_strided(src, shape, st, src.offset());
}

template <class D, class S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, bool>) {
    return static_cast<float>(v) != 0.0f;
  } else if constexpr (std::is_same_v<D, Half> || std::is_same_v<D, BFloat16>) {
    return D(static_cast<float>(v));
  } else if constexpr (std::is_same_v<S, Half> || std::is_same_v<S, BFloat16>) {
    return static_cast<D>(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

void copy_cpu(const Tensor& dst, const Tensor& src_b) {
  StridedOperands<2> ops{{static_cast<char*>(dst.data_ptr()), static_cast<char*>(src_b.data_ptr())},
                         {dst.strides().data(), src_b.strides().data()},
                         {int64_t(dst.element_size()), int64_t(src_b.element_size())}};
  if (dst.dtype() == src_b.dtype()) {
    const size_t es = dst.element_size();
    strided_loop<2>(dst.shape(), ops, [es](std::array<char*, 2> p, const std::array<int64_t, 2>& s, int64_t n) {
      if (s[0] == int64_t(es) && s[1] == int64_t(es)) {
        std::memcpy(p[0], p[1], size_t(n) * es);
        return;
      }
      for (int64_t i = 0; i < n; ++i) std::memcpy(p[0] + i * s[0], p[1] + i * s[1], es);
    });
    return;
  }
  SD_DISPATCH_ALL(dst.dtype(), "copy_", [&] {
    using D = scalar_t;
    SD_DISPATCH_ALL(src_b.dtype(), "copy_", [&] {
      using S = scalar_t;
      strided_loop<2>(dst.shape(), ops, [](std::array<char*, 2> p, const std::array<int64_t, 2>& s, int64_t n) {
        for (int64_t i = 0; i < n; ++i)
          *reinterpret_cast<D*>(p[0] + i * s[0]) = convert<D>(*reinterpret_cast<const S*>(p[1] + i * s[1]));
      });
    });
  });
}

std::atomic<int64_t> g_layout_conversions{0};

// A same-shape copy between the two dense image layouts (either way) is a layout conversion.
void count_layout_conversion(const Tensor& dst, const Tensor& src) {
  if (dst.dim() != 4 || src.shape() != dst.shape()) return;
  const bool dst_cl = prefers_channels_last(dst), src_cl = prefers_channels_last(src);
  if ((dst_cl && src.is_contiguous()) || (src_cl && dst.is_contiguous())) g_layout_conversions.fetch_add(1);
}

}  // namespace

int64_t layout_conversions() { return g_layout_conversions.load(); }

void copy_(const Tensor& dst, const Tensor& src) {
  SD_CHECK(dst.defined() && src.defined(), "copy_: undefined tensor");
  if (dst.numel() == 0) return;
  count_layout_conversion(dst, src);
  Tensor s = broadcast_view(src, dst.shape());
  if (dst.is_cpu() && s.is_cpu()) return copy_cpu(dst, s);
  // A GPU tensor exists only where the CUDA backend is linked (the CPU-only backend's kernels raise).
  if (dst.device() == s.device()) return cuda_kernels::copy_strided(dst, s);
  if (s.is_cuda() && dst.is_cpu()) {
    // Make the source contiguous on its device, bring it over, then convert/scatter on the host.
    Tensor dense = s.is_contiguous() && src.shape() == dst.shape() ? s : copy_to(s, s.dtype(), s.device());
    Tensor host = empty(dense.shape(), dense.dtype(), Device::cpu());
    cudart::memcpy_d2h(host.data_ptr(), dense.data_ptr(), host.nbytes());
    return copy_cpu(dst, host);
  }
  if (s.is_cpu() && dst.is_cuda()) {
    Tensor host = (s.dtype() == dst.dtype() && s.is_contiguous() && src.shape() == dst.shape())
                      ? s
                      : copy_to(s, dst.dtype(), Device::cpu());
    if (dst.is_contiguous()) return cudart::memcpy_h2d(dst.data_ptr(), host.data_ptr(), dst.nbytes());
    Tensor staged = empty(dst.shape(), dst.dtype(), dst.device());
    cudart::memcpy_h2d(staged.data_ptr(), host.data_ptr(), staged.nbytes());
    return cuda_kernels::copy_strided(dst, staged);
  }
  // GPU to another GPU: through the host (peer copies are not needed by any workflow yet).
  Tensor host = copy_to(s, s.dtype(), Device::cpu());
  return copy_(dst, host);
}

Tensor copy_to(const Tensor& t, DType dtype, Device device) {
  Tensor out = empty(t.shape(), dtype, device);
  copy_(out, t);
  return out;
}

Tensor contiguous_raw(const Tensor& t) {
  return t.is_contiguous() ? t : copy_to(t, t.dtype(), t.device());
}

void fill_(const Tensor& t, double value) {
  if (t.numel() == 0) return;
  if (t.is_cuda()) return cuda_kernels::fill(t, value);
  SD_DISPATCH_ALL(t.dtype(), "fill_", [&] {
    const scalar_t v = convert<scalar_t>(value);
    StridedOperands<1> ops{{static_cast<char*>(t.data_ptr())}, {t.strides().data()}, {int64_t(t.element_size())}};
    strided_loop<1>(t.shape(), ops, [v](std::array<char*, 1> p, const std::array<int64_t, 1>& s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<scalar_t*>(p[0] + i * s[0]) = v;
    });
  });
}

void axpy_(const Tensor& dst, const Tensor& src, double alpha) {
  SD_CHECK(dst.device() == src.device(), "axpy_: ", dst.str(), " and ", src.str(), " are on different devices");
  if (dst.numel() == 0) return;
  Tensor s = broadcast_view(src, dst.shape());
  if (dst.is_cuda()) return cuda_kernels::axpy(dst, s, alpha);
  SD_DISPATCH_FLOAT(dst.dtype(), "axpy_", [&] {
    using D = scalar_t;
    using A = acc_t<D>;
    SD_DISPATCH_FLOAT(s.dtype(), "axpy_", [&] {
      using S = scalar_t;
      const A a = A(alpha);
      StridedOperands<2> ops{{static_cast<char*>(dst.data_ptr()), static_cast<char*>(s.data_ptr())},
                             {dst.strides().data(), s.strides().data()},
                             {int64_t(dst.element_size()), int64_t(s.element_size())}};
      strided_loop<2>(dst.shape(), ops, [a](std::array<char*, 2> p, const std::array<int64_t, 2>& st, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          D* d = reinterpret_cast<D*>(p[0] + i * st[0]);
          const S* v = reinterpret_cast<const S*>(p[1] + i * st[1]);
          *d = D(A(*d) + a * A(*v));
        }
      });
    });
  });
}

}  // namespace sd
