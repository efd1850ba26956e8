// Tensor: a shared handle to a view (shape, strides, offset, dtype) of a Storage, plus the
// autograd fields the tape needs. Copying a Tensor copies the handle, never the data.
//
// This header holds only what needs no op: metadata, raw views, copies and factories.
// Differentiable views (reshape, permute, slice ...) are ops: see ops/view.h.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/shape.h"
#include "runtime/storage.h"

namespace sd {

struct Node;  // autograd/node.h
class Tensor;

// Called once per backward pass, when a leaf's gradient for that pass is complete.
using GradHook = std::function<void(const Tensor& param)>;

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // the node that produced this tensor (non-leaf), or null
  uint32_t output_nr = 0;         // which output of grad_fn this is
  std::shared_ptr<struct TensorImpl> grad;  // accumulated gradient of a leaf
  std::vector<GradHook> hooks;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  AutogradMeta autograd;
  std::string name;    // optional: parameters carry their state-dict key
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t d) const;    // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t offset() const { return impl_->offset; }
  int64_t numel() const { return shape_numel(impl_->shape); }
  DType dtype() const { return impl_->dtype; }
  size_t element_size() const { return dtype_size(impl_->dtype); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  Device device() const { return impl_->storage->device(); }
  bool is_cpu() const { return device().is_cpu(); }
  bool is_cuda() const { return device().is_cuda(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }

  // Address of element 0 of this view.
  void* data_ptr() const {
    return static_cast<char*>(impl_->storage->data()) + impl_->offset * int64_t(element_size());
  }
  // Typed pointer; raises sd::Error if T is not this tensor's element type.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>::value, "data<T>()");
    return static_cast<T*>(data_ptr());
  }

  // ---- autograd fields (the tape lives in autograd/) ----
  bool requires_grad() const { return impl_ && impl_->autograd.requires_grad; }
  // Marks a leaf as a parameter whose gradient is accumulated into grad().
  Tensor& set_requires_grad(bool on = true);
  bool is_leaf() const { return !impl_->autograd.grad_fn; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->autograd.grad_fn; }
  Tensor grad() const;           // undefined until a backward reaches this leaf
  void set_grad(const Tensor& g);
  void zero_grad();              // drops the gradient (next backward starts from zero)
  void add_grad_hook(GradHook h);
  const std::string& name() const { return impl_->name; }
  Tensor& set_name(std::string n);

  // ---- reading values (tests, tools) ----
  std::string str() const;                 // "Tensor[f32 (2, 3) cpu]"
  std::vector<double> to_vector() const;   // every element as double, row-major
  std::vector<float> to_float_vector() const;
  double item() const;                     // the single element of a one-element tensor

  void check_dtype(DType t, const char* op) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
// Values given row-major as doubles, converted to `dtype`.
Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype = DType::F32,
                   Device device = Device::cpu());
Tensor from_floats(const std::vector<float>& values, const Shape& shape, DType dtype = DType::F32,
                   Device device = Device::cpu());
Tensor arange(int64_t n, DType dtype = DType::F32, Device device = Device::cpu());
Tensor scalar_tensor(double value, DType dtype = DType::F32, Device device = Device::cpu());

// ---- raw (non-differentiable) views and copies ----
// A view of t's storage with the given geometry; checks that it stays inside the storage.
Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset);
// Alias of t's data with no autograd history (what autograd nodes save).
Tensor detach(const Tensor& t);
// dst[...] = src[...] with src broadcast to dst's shape, converting dtype and crossing devices.
void copy_(const Tensor& dst, const Tensor& src);
// A new contiguous tensor with t's values, on `device` and in `dtype`.
Tensor copy_to(const Tensor& t, DType dtype, Device device);
// A new contiguous tensor only when needed (no autograd: use sd::contiguous in ops).
Tensor contiguous_raw(const Tensor& t);
// Fill every element of t (any strides) with value.
void fill_(const Tensor& t, double value);
// dst += alpha * src, src broadcast to dst, computed in f32 (f64 for f64) and rounded to
// dst's dtype. The one accumulation kernel: gradients, optimizer updates, in-place adds.
void axpy_(const Tensor& dst, const Tensor& src, double alpha = 1.0);

}  // namespace sd
