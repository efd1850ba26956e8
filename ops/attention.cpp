#include "ops/attention.h"

#include <cmath>

#include "autograd/node.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/attention.h"
#include "ops/view.h"
#include "ops/op_common.h"

namespace sd {

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                                    bool causal) {
  constexpr const char* op = "scaled_dot_product_attention";
  SD_NVTX_RANGE(op);
  detail::check_same(op, {q, k, v});
  detail::check_floating(op, q);
  detail::check_dim(op, q, 4, "q [B, H, Lq, D]");
  detail::check_dim(op, k, 4, "k [B, H, Lk, D]");
  detail::check_dim(op, v, 4, "v [B, H, Lk, Dv]");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2);
  SD_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D, op, ": k ", k.str(), " does not match q ", q.str());
  SD_CHECK(v.size(0) == B && v.size(1) == H && v.size(2) == Lk, op, ": v ", v.str(), " does not match k ", k.str());
  if (mask.defined()) {
    SD_CHECK(mask.dtype() == DType::Bool || mask.dtype() == q.dtype(), op, ": mask ", mask.str(),
             " must be Bool or have q's dtype ", dtype_name(q.dtype()));
    SD_CHECK(mask.device() == q.device(), op, ": mask ", mask.str(), " is not on q's device");
    const Shape full{B, H, Lq, Lk};
    bool ok = mask.dim() <= 4;
    for (int64_t d = 0; ok && d < mask.dim(); ++d) {
      const int64_t m = mask.size(d);
      ok = m == 1 || m == full[size_t(4 - mask.dim() + d)];
    }
    SD_CHECK(ok, op, ": mask ", mask.str(), " does not broadcast to scores ", shape_str(full));
  }
  if (scale == 0.0) {
    SD_CHECK(D > 0, op, ": head dim of q ", q.str(), " is 0; cannot default scale to 1/sqrt(D)");
    scale = 1.0 / std::sqrt(double(D));
  }

  cpu::AttentionForward f;
  if (q.is_cuda()) {
    // The GPU kernels read the mask through [B, H, Lq, Lk] strides (0 on broadcast dims).
    const Tensor mask4 = mask.defined() ? expand(detach(mask), {B, H, Lq, Lk}) : Tensor();
    auto r = cuda::attention_forward(q, k, v, mask4, scale, causal);
    f.out = r[0];
    f.lse = r[1];
  } else {
    f = cpu::attention_forward(q, k, v, mask, scale, causal);
  }
  // The mask is an input so that the node sees it, but its gradient is never computed.
  if (auto node = autograd::make_node(op, {q, k, v, mask})) {
    const bool need_q = node->needs_input_grad(0), need_k = node->needs_input_grad(1),
               need_v = node->needs_input_grad(2);
    node->save(q);
    node->save(k);
    node->save(v);
    node->save(mask);
    node->save(f.out);
    node->save(f.lse);
    node->backward = [scale, causal, need_q, need_k, need_v](Node& n, const std::vector<Tensor>& go) {
      const std::vector<Tensor>& s = n.saved;
      if (s[0].is_cuda()) {
        const Tensor& q = s[0];
        const Tensor mask4 =
            s[3].defined() ? expand(s[3], {q.size(0), q.size(1), q.size(2), s[1].size(2)}) : Tensor();
        auto g = cuda::attention_backward(go[0], q, s[1], s[2], s[4], s[5], mask4, scale, causal);
        return std::vector<Tensor>{need_q ? g[0] : Tensor(), need_k ? g[1] : Tensor(), need_v ? g[2] : Tensor(),
                                   Tensor()};
      }
      cpu::AttentionGrads g =
          cpu::attention_backward(go[0], s[0], s[1], s[2], s[3], s[4], s[5], scale, causal, need_q, need_k, need_v);
      return std::vector<Tensor>{g.dq, g.dk, g.dv, Tensor()};
    };
    autograd::set_outputs(node, {f.out});
  }
  return f.out;
}

}  // namespace sd
