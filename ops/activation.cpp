#include "ops/activation.h"

#include "autograd/node.h"
#include "ops/cpu/pointwise.h"
#include "ops/elementwise.h"
#include "ops/pointwise_ops.h"
#include "ops/view.h"

namespace sd {

Tensor silu(const Tensor& x) { return detail::unary_op(UnaryKind::Silu, x, 0, 0); }
Tensor gelu(const Tensor& x, bool tanh_approximation) {
  return detail::unary_op(tanh_approximation ? UnaryKind::GeluTanh : UnaryKind::GeluErf, x, 0, 0);
}
Tensor quick_gelu(const Tensor& x) { return detail::unary_op(UnaryKind::QuickGelu, x, 0, 0); }
Tensor sigmoid(const Tensor& x) { return detail::unary_op(UnaryKind::Sigmoid, x, 0, 0); }
Tensor tanh(const Tensor& x) { return detail::unary_op(UnaryKind::Tanh, x, 0, 0); }
Tensor relu(const Tensor& x) { return detail::unary_op(UnaryKind::Relu, x, 0, 0); }

Tensor geglu(const Tensor& x) {
  const int64_t n = x.size(-1);
  SD_CHECK(n % 2 == 0, "geglu: last dim of ", x.str(), " must be even ([hidden | gate])");
  // Inference on the CPU: one fused pass over the projection. Training takes the composite, whose
  // backward the autograd tests cover.
  if (x.is_cpu() && x.is_contiguous() && (x.dtype() == DType::F32 || x.dtype() == DType::BF16) &&
      !(autograd::grad_enabled() && x.requires_grad()))
    return cpu::geglu(x);
  Tensor hidden = slice(x, -1, 0, n / 2);
  Tensor gate = slice(x, -1, n / 2, n);
  return mul(hidden, gelu(gate));
}

}  // namespace sd
