#include "ops/cpu/pointwise.h"

#include <type_traits>

#include "ops/cpu/vec_math.h"
#include "runtime/image_layout.h"
#include "runtime/parallel.h"
#include "runtime/strided_loop.h"

namespace sd::cpu {

namespace {
// View of t broadcast to `shape` (stride 0 where t has size 1 or lacks the dim).
Tensor broadcast_to_shape(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  const size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) st[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return as_strided(t, shape, st, t.offset());
}

// Only f32 has fast loops; other dtypes take the generic one.
template <class T>
bool unary_contiguous_fast(UnaryKind, const T*, T*, int64_t) {
  return false;
}

// o[i] = f(x[i]) over n contiguous floats for the transcendental activations, through the
// vectorisable exp of vec_math.h (a per-element switch over kinds and a libm call kept these
// loops scalar: GELU ran at 1.8 GB/s). False for kinds left to the generic loop.
bool unary_contiguous_fast(UnaryKind k, const float* x, float* o, int64_t n) {
  constexpr float kSqrt2OverPi = 0.79788456080286535588f;
  auto each = [&](auto f) {
    for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
    return true;
  };
  switch (k) {
    case UnaryKind::Exp: return each([](float v) { return exp_f32(v); });
    case UnaryKind::Sigmoid: return each([](float v) { return 1.0f / (1.0f + exp_f32(-v)); });
    case UnaryKind::Tanh: return each([](float v) { return tanh_f32(v); });
    case UnaryKind::Silu: return each([](float v) { return silu_of(v); });
    case UnaryKind::QuickGelu: return each([](float v) { return v / (1.0f + exp_f32(-1.702f * v)); });
    case UnaryKind::GeluErf: return each([](float v) { return gelu_erf_f32(v); });
    case UnaryKind::GeluTanh:
      return each([=](float v) { return 0.5f * v * (1.0f + tanh_f32(kSqrt2OverPi * (v + 0.044715f * v * v * v))); });
    default: return false;
  }
}

}  // namespace

Tensor binary(BinaryKind k, const Tensor& a, const Tensor& b) {
  const Shape full = broadcast_shapes(a.shape(), b.shape(), binary_name(k));
  const bool cl = channels_last_result(full, {&a, &b});
  Tensor out = empty_image(full, a.dtype(), a.device(), cl);
  // The loop walks the result's memory order, where a channels-last result is contiguous.
  const Tensor ab = memory_order(broadcast_to_shape(a, full), cl), bb = memory_order(broadcast_to_shape(b, full), cl);
  const Tensor out_view = memory_order(out, cl);
  const Shape& shape = out_view.shape();
  SD_DISPATCH_FLOAT(a.dtype(), binary_name(k), [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const int64_t es = sizeof(T);
    StridedOperands<3> ops{{static_cast<char*>(out_view.data_ptr()), static_cast<char*>(ab.data_ptr()),
                            static_cast<char*>(bb.data_ptr())},
                           {out_view.strides().data(), ab.strides().data(), bb.strides().data()},
                           {es, es, es}};
    strided_loop<3>(shape, ops, [k](std::array<char*, 3> p, const std::array<int64_t, 3>& s, int64_t n) {
      T* o = reinterpret_cast<T*>(p[0]);
      const char* pa = p[1];
      const char* pb = p[2];
      for (int64_t i = 0; i < n; ++i) {
        A va = A(*reinterpret_cast<const T*>(pa + i * s[1]));
        A vb = A(*reinterpret_cast<const T*>(pb + i * s[2]));
        o[i] = T(binary_apply<A>(k, va, vb));
      }
    });
  });
  return out;
}

Tensor unary(UnaryKind k, const Tensor& x_in, double p0, double p1) {
  const bool cl = channels_last_result(x_in.shape(), {&x_in});
  Tensor out = empty_image(x_in.shape(), x_in.dtype(), x_in.device(), cl);
  const Tensor x = memory_order(x_in, cl), out_view = memory_order(out, cl);
  SD_DISPATCH_FLOAT(x.dtype(), unary_name(k), [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const A a0 = A(p0), a1 = A(p1);
    StridedOperands<2> ops{{static_cast<char*>(out_view.data_ptr()), static_cast<char*>(x.data_ptr())},
                           {out_view.strides().data(), x.strides().data()},
                           {int64_t(sizeof(T)), int64_t(sizeof(T))}};
    strided_loop<2>(x.shape(), ops, [&](std::array<char*, 2> p, const std::array<int64_t, 2>& s, int64_t n) {
      T* o = reinterpret_cast<T*>(p[0]);
      if (s[0] == int64_t(sizeof(T)) && s[1] == int64_t(sizeof(T)) &&
          unary_contiguous_fast(k, reinterpret_cast<const T*>(p[1]), o, n))
        return;
      for (int64_t i = 0; i < n; ++i)
        o[i] = T(unary_apply<A>(k, A(*reinterpret_cast<const T*>(p[1] + i * s[1])), a0, a1));
    });
  });
  return out;
}

Tensor geglu(const Tensor& x) {
  SD_CHECK(x.is_contiguous() && (x.dtype() == DType::F32 || x.dtype() == DType::BF16),
           "cpu::geglu: needs a contiguous f32 or bf16 tensor, got ", x.str());
  const int64_t n = x.size(-1) / 2, rows = x.numel() / std::max<int64_t>(x.size(-1), 1);
  Shape shape = x.shape();
  shape.back() = n;
  Tensor out = empty(shape, x.dtype(), x.device());
  auto run = [&](auto* in, auto* o) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
    parallel_for(rows, n * 24, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* h = in + r * 2 * n;
        const T* g = h + n;
        T* y = o + r * n;
        // Plain loop: omp simd on bf16 stores stops the vectoriser (see vec_math.h).
        for (int64_t i = 0; i < n; ++i) y[i] = T(float(h[i]) * gelu_erf_f32(float(g[i])));
      }
    });
  };
  if (x.dtype() == DType::F32)
    run(x.data<float>(), out.data<float>());
  else
    run(static_cast<const BFloat16*>(x.data_ptr()), static_cast<BFloat16*>(out.data_ptr()));
  return out;
}

Tensor unary_backward(UnaryKind k, const Tensor& grad_in, const Tensor& x_in, double p0, double p1) {
  const bool cl = channels_last_result(x_in.shape(), {&grad_in, &x_in});
  Tensor out = empty_image(x_in.shape(), x_in.dtype(), x_in.device(), cl);
  const Tensor grad = memory_order(grad_in, cl), x = memory_order(x_in, cl), out_view = memory_order(out, cl);
  SD_DISPATCH_FLOAT(x.dtype(), unary_name(k), [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const A a0 = A(p0), a1 = A(p1);
    const int64_t es = sizeof(T);
    StridedOperands<3> ops{{static_cast<char*>(out_view.data_ptr()), static_cast<char*>(grad.data_ptr()),
                            static_cast<char*>(x.data_ptr())},
                           {out_view.strides().data(), grad.strides().data(), x.strides().data()},
                           {es, es, es}};
    strided_loop<3>(x.shape(), ops, [&](std::array<char*, 3> p, const std::array<int64_t, 3>& s, int64_t n) {
      T* o = reinterpret_cast<T*>(p[0]);
      for (int64_t i = 0; i < n; ++i) {
        A g = A(*reinterpret_cast<const T*>(p[1] + i * s[1]));
        A v = A(*reinterpret_cast<const T*>(p[2] + i * s[2]));
        o[i] = T(g * unary_derivative<A>(k, v, a0, a1));
      }
    });
  });
  return out;
}

}  // namespace sd::cpu
