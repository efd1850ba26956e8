#include "ops/activation.h"

#include "autograd/node.h"
#include "ops/cpu/pointwise.h"
#include "ops/cuda/pointwise.h"
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
  // On the GPU (switch cuda::set_fused_geglu): one kernel each way, saving only x.
  if (x.is_cuda() && x.is_contiguous() && is_floating(x.dtype()) && cuda::fused_geglu()) {
    Tensor out = cuda::geglu(x);
    if (auto node = autograd::make_node("geglu", {x})) {
      node->save(x);
      node->backward = [](Node& nd, const std::vector<Tensor>& go) {
        return std::vector<Tensor>{cuda::geglu_backward(go[0], nd.saved[0])};
      };
      autograd::set_outputs(node, {out});
    }
    return out;
  }
  Tensor hidden = slice(x, -1, 0, n / 2);
  Tensor gate = slice(x, -1, n / 2, n);
  return mul(hidden, gelu(gate));
}

}  // namespace sd
