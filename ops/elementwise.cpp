#include "ops/elementwise.h"

#include "autograd/node.h"
#include "ops/cpu/pointwise.h"
#include "ops/cuda/pointwise.h"
#include "ops/op_common.h"
#include "ops/pointwise_ops.h"
#include "ops/reduce.h"

namespace sd {

const char* binary_name(BinaryKind k) {
  switch (k) {
    case BinaryKind::Add: return "add";
    case BinaryKind::Sub: return "sub";
    case BinaryKind::Mul: return "mul";
    case BinaryKind::Div: return "div";
  }
  return "binary";
}

const char* unary_name(UnaryKind k) {
  static const char* names[] = {"neg", "exp", "log", "sqrt", "rsqrt", "square", "abs", "add_scalar", "mul_scalar",
                                "rsub_scalar", "pow_scalar", "clamp", "sigmoid", "tanh", "silu", "gelu",
                                "gelu_tanh", "quick_gelu", "relu"};
  return names[int(k)];
}

namespace detail {

Tensor binary_op(BinaryKind k, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(k);
  SD_NVTX_RANGE(name);
  check_same(name, {a, b});
  check_floating(name, a);
  Tensor out = SD_DISPATCH_DEVICE(a, cpu::binary(k, a, b), cuda::binary(k, a, b));
  if (auto node = autograd::make_node(name, {a, b})) {
    const bool need_a = node->needs_input_grad(0), need_b = node->needs_input_grad(1);
    // Mul and div need the operands themselves in backward.
    if (k == BinaryKind::Mul || k == BinaryKind::Div) {
      node->save(need_b ? a : Tensor());
      node->save(need_a || k == BinaryKind::Div ? b : Tensor());
    }
    const Shape sa = a.shape(), sb = b.shape();
    node->backward = [k, need_a, need_b, sa, sb](Node& n, const std::vector<Tensor>& go) {
      const Tensor& g = go[0];
      Tensor ga, gb;
      switch (k) {
        case BinaryKind::Add:
          if (need_a) ga = sum_to(g, sa);
          if (need_b) gb = sum_to(g, sb);
          break;
        case BinaryKind::Sub:
          if (need_a) ga = sum_to(g, sa);
          if (need_b) gb = sum_to(neg(g), sb);
          break;
        case BinaryKind::Mul:
          if (need_a) ga = sum_to(mul(g, n.saved[1]), sa);
          if (need_b) gb = sum_to(mul(g, n.saved[0]), sb);
          break;
        case BinaryKind::Div: {
          Tensor ginv = div(g, n.saved[1]);  // g / b
          if (need_a) ga = sum_to(ginv, sa);
          if (need_b) gb = sum_to(neg(mul(ginv, div(n.saved[0], n.saved[1]))), sb);  // -g a / b^2
          break;
        }
      }
      return std::vector<Tensor>{ga, gb};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

Tensor unary_op(UnaryKind k, const Tensor& x, double p0, double p1) {
  const char* name = unary_name(k);
  SD_NVTX_RANGE(name);
  check_floating(name, x);
  Tensor out = SD_DISPATCH_DEVICE(x, cpu::unary(k, x, p0, p1), cuda::unary(k, x, p0, p1));
  if (auto node = autograd::make_node(name, {x})) {
    const bool needs_x = !(k == UnaryKind::AddScalar || k == UnaryKind::MulScalar || k == UnaryKind::RsubScalar ||
                           k == UnaryKind::Neg);
    node->save(needs_x ? x : Tensor());
    node->backward = [k, p0, p1, needs_x](Node& n, const std::vector<Tensor>& go) {
      if (!needs_x) {  // constant derivative: no need to keep x alive
        double d = k == UnaryKind::MulScalar ? p0 : (k == UnaryKind::AddScalar ? 1.0 : -1.0);
        return std::vector<Tensor>{d == 1.0 ? go[0] : mul_scalar(go[0], d)};
      }
      const Tensor& g = go[0];
      const Tensor& x = n.saved[0];
      return std::vector<Tensor>{SD_DISPATCH_DEVICE(x, cpu::unary_backward(k, g, x, p0, p1),
                                                    cuda::unary_backward(k, g, x, p0, p1))};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

}  // namespace detail

using detail::binary_op;
using detail::unary_op;

Tensor add(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::Add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::Sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::Mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_op(BinaryKind::Div, a, b); }

Tensor add_scalar(const Tensor& x, double s) { return unary_op(UnaryKind::AddScalar, x, s); }
Tensor mul_scalar(const Tensor& x, double s) { return unary_op(UnaryKind::MulScalar, x, s); }
Tensor pow_scalar(const Tensor& x, double p) { return unary_op(UnaryKind::PowScalar, x, p); }
Tensor rsub_scalar(const Tensor& x, double s) { return unary_op(UnaryKind::RsubScalar, x, s); }
Tensor neg(const Tensor& x) { return unary_op(UnaryKind::Neg, x); }
Tensor exp(const Tensor& x) { return unary_op(UnaryKind::Exp, x); }
Tensor log(const Tensor& x) { return unary_op(UnaryKind::Log, x); }
Tensor sqrt(const Tensor& x) { return unary_op(UnaryKind::Sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary_op(UnaryKind::Rsqrt, x); }
Tensor square(const Tensor& x) { return unary_op(UnaryKind::Square, x); }
Tensor abs(const Tensor& x) { return unary_op(UnaryKind::Abs, x); }
Tensor clamp(const Tensor& x, double lo, double hi) { return unary_op(UnaryKind::Clamp, x, lo, hi); }

void add_(const Tensor& x, const Tensor& y, double alpha) {
  detail::check_same("add_", {x, y});
  axpy_(x, y, alpha);
}

void mul_scalar_(const Tensor& x, double s) {
  detail::check_floating("mul_scalar_", x);
  autograd::NoGrad no_grad;
  copy_(x, mul_scalar(x, s));
}

}  // namespace sd
