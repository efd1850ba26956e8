#include "ops/norm.h"

#include "autograd/node.h"
#include "ops/cpu/norm.h"
#include "ops/cuda/norm.h"
#include "ops/op_common.h"

namespace sd {

namespace {

// weight/bias: undefined, or 1-d of `n` elements with x's dtype and device.
void check_param(const char* op, const char* what, const Tensor& p, int64_t n, const Tensor& x) {
  if (!p.defined()) return;
  SD_CHECK(p.dim() == 1 && p.size(0) == n, op, ": ", what, " must be [", n, "] for input ", x.str(), ", got ", p.str());
  detail::check_same(op, {x, p});
}

}  // namespace

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps,
                  bool fuse_silu) {
  SD_NVTX_RANGE("group_norm");
  detail::check_floating("group_norm", x);
  SD_CHECK(x.dim() >= 2, "group_norm: input must be [N, C, *spatial], got ", x.str());
  const int64_t C = x.size(1);
  SD_CHECK(groups > 0 && C % groups == 0, "group_norm: channels C=", C, " of ", x.str(),
           " are not divisible by groups=", groups);
  check_param("group_norm", "weight", weight, C, x);
  check_param("group_norm", "bias", bias, C, x);

  cpu::NormForward f = SD_DISPATCH_DEVICE(x, cpu::group_norm_forward(x, groups, weight, bias, eps, fuse_silu),
                                          cuda::group_norm_forward(x, groups, weight, bias, eps, fuse_silu));
  if (auto node = autograd::make_node("group_norm", {x, weight, bias})) {
    const bool need_x = node->needs_input_grad(0), need_w = node->needs_input_grad(1),
               need_b = node->needs_input_grad(2);
    node->save(x);
    node->save(f.mean);
    node->save(f.rstd);
    node->save(weight);
    node->save(fuse_silu ? bias : Tensor());  // the pre-activation is recomputed for SiLU's derivative
    node->backward = [groups, fuse_silu, need_x, need_w, need_b](Node& n, const std::vector<Tensor>& go) {
      const std::vector<Tensor>& s = n.saved;
      cpu::NormGrads g = SD_DISPATCH_DEVICE(s[0],
                                            cpu::group_norm_backward(go[0], s[0], s[1], s[2], s[3], s[4], groups,
                                                                     fuse_silu, need_x, need_w, need_b),
                                            cuda::group_norm_backward(go[0], s[0], s[1], s[2], s[3], s[4], groups,
                                                                      fuse_silu, need_x, need_w, need_b));
      return std::vector<Tensor>{g.dx, g.dweight, g.dbias};
    };
    autograd::set_outputs(node, {f.y});
  }
  return f.y;
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  SD_NVTX_RANGE("layer_norm");
  detail::check_floating("layer_norm", x);
  SD_CHECK(x.dim() >= 1, "layer_norm: input must have at least one dim, got ", x.str());
  const int64_t D = x.size(-1);
  check_param("layer_norm", "weight", weight, D, x);
  check_param("layer_norm", "bias", bias, D, x);

  cpu::NormForward f = SD_DISPATCH_DEVICE(x, cpu::layer_norm_forward(x, weight, bias, eps),
                                          cuda::layer_norm_forward(x, weight, bias, eps));
  if (auto node = autograd::make_node("layer_norm", {x, weight, bias})) {
    const bool need_x = node->needs_input_grad(0), need_w = node->needs_input_grad(1),
               need_b = node->needs_input_grad(2);
    node->save(x);
    node->save(f.mean);
    node->save(f.rstd);
    node->save(weight);
    node->backward = [need_x, need_w, need_b](Node& n, const std::vector<Tensor>& go) {
      const std::vector<Tensor>& s = n.saved;
      cpu::NormGrads g =
          SD_DISPATCH_DEVICE(s[0], cpu::layer_norm_backward(go[0], s[0], s[1], s[2], s[3], need_x, need_w, need_b),
                             cuda::layer_norm_backward(go[0], s[0], s[1], s[2], s[3], need_x, need_w, need_b));
      return std::vector<Tensor>{g.dx, g.dweight, g.dbias};
    };
    autograd::set_outputs(node, {f.y});
  }
  return f.y;
}

}  // namespace sd
