#include "ops/linear.h"

#include "autograd/node.h"
#include "ops/cpu/gemm.h"
#include "ops/cuda/gemm.h"
#include "ops/elementwise.h"
#include "ops/op_common.h"
#include "ops/reduce.h"
#include "ops/view.h"

namespace sd {

namespace {

// The raw batched product on 3-d operands (no autograd).
Tensor bmm_raw(const Tensor& a, const Tensor& b) {
  return SD_DISPATCH_DEVICE(a, cpu::bmm(a, b), cuda::bmm(a, b));
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  SD_NVTX_RANGE("matmul");
  detail::check_same("matmul", {a, b});
  detail::check_floating("matmul", a);
  SD_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands need at least 2 dims, got ", a.str(), " and ", b.str());
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  SD_CHECK(b.size(-2) == K, "matmul: inner dims differ: ", a.str(), " @ ", b.str());

  Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  Tensor out;
  if (b.dim() == 2 && a.is_contiguous()) {
    // Every batch shares b: fold the batch into M for one large GEMM.
    const int64_t rows = shape_numel(a_batch) * M;
    Tensor a3 = as_strided(a, {1, rows, K}, {0, K, 1}, a.offset());
    Tensor b3 = as_strided(b, {1, K, N}, {0, b.stride(0), b.stride(1)}, b.offset());
    out = bmm_raw(a3, b3);
  } else {
    const Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
    const int64_t Bn = shape_numel(batch);
    auto to3 = [&](const Tensor& t, int64_t R, int64_t C) {
      Shape full = batch;
      full.push_back(R);
      full.push_back(C);
      Tensor e = expand(detach(t), full);  // raw view: autograd is handled below
      // The batch folds into one stride when its non-1 dims chain like a contiguous block.
      std::vector<int64_t> bdims;
      for (size_t d = 0; d < batch.size(); ++d)
        if (batch[d] != 1) bdims.push_back(int64_t(d));
      bool chained = true;
      for (size_t k = 0; k + 1 < bdims.size(); ++k)
        chained &= e.stride(bdims[k]) == e.stride(bdims[k + 1]) * batch[bdims[k + 1]];
      if (!chained) e = contiguous_raw(e);
      const int64_t bs = bdims.empty() ? 0 : (chained ? e.stride(bdims.back()) : R * C);
      return as_strided(e, {Bn, R, C}, {bs, e.stride(-2), e.stride(-1)}, e.offset());
    };
    out = bmm_raw(to3(a, M, K), to3(b, K, N));
    a_batch = batch;
  }
  Shape out_shape = a_batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  out = as_strided(out, out_shape, contiguous_strides(out_shape), 0);

  if (auto node = autograd::make_node("matmul", {a, b})) {
    const bool need_a = node->needs_input_grad(0), need_b = node->needs_input_grad(1);
    node->save(need_b ? a : Tensor());
    node->save(need_a ? b : Tensor());
    const Shape sa = a.shape(), sb = b.shape();
    node->backward = [need_a, need_b, sa, sb](Node& n, const std::vector<Tensor>& go) {
      const Tensor& g = go[0];
      Tensor ga, gb;
      if (need_a) ga = sum_to(matmul(g, transpose(n.saved[1], -1, -2)), sa);
      if (need_b) {
        if (sb.size() == 2) {  // shared b: sum over every row of every batch in one GEMM
          Tensor a2 = reshape(n.saved[0], {-1, sa.back()});
          Tensor g2 = reshape(g, {-1, g.size(-1)});
          gb = matmul(transpose(a2, 0, 1), g2);
        } else {
          gb = sum_to(matmul(transpose(n.saved[0], -1, -2), g), sb);
        }
      }
      return std::vector<Tensor>{ga, gb};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  SD_NVTX_RANGE("linear");
  SD_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got ", weight.str());
  SD_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ", x.str(), " does not match weight ",
           weight.str());
  // On the GPU, bias and product in one cuBLASLt call (bias epilogue), with its own backward.
  if (x.is_cuda() && bias.defined() && x.dtype() != DType::F64 && x.dim() >= 2 && bias.dtype() == x.dtype() &&
      bias.dim() == 1 && bias.size(0) == weight.size(0) && weight.is_contiguous() && bias.is_contiguous()) {
    detail::check_same("linear", {x, weight, bias});
    Shape out_shape = x.shape();
    out_shape.back() = weight.size(0);
    Tensor x2 = contiguous_raw(detach(x));
    x2 = as_strided(x2, {x.numel() / x.size(-1), x.size(-1)}, {x.size(-1), 1}, x2.offset());
    Tensor y2 = cuda::linear_bias(x2, weight, bias);
    Tensor y = as_strided(y2, out_shape, contiguous_strides(out_shape), 0);
    if (auto node = autograd::make_node("linear", {x, weight, bias})) {
      const bool need_x = node->needs_input_grad(0), need_w = node->needs_input_grad(1),
                 need_b = node->needs_input_grad(2);
      node->save(need_w ? x2 : Tensor());
      node->save(need_x ? weight : Tensor());
      const Shape xs = x.shape();
      node->backward = [need_x, need_w, need_b, xs](Node& n, const std::vector<Tensor>& go) {
        Tensor g2 = reshape(go[0], {-1, go[0].size(-1)});
        Tensor gx, gw, gb;
        if (need_x) gx = reshape(matmul(g2, n.saved[1]), xs);
        if (need_w) gw = matmul(transpose(g2, 0, 1), n.saved[0]);
        if (need_b) gb = sum(g2, {0});
        return std::vector<Tensor>{gx, gw, gb};
      };
      autograd::set_outputs(node, {y});
    }
    return y;
  }
  Tensor y = matmul(x.dim() == 1 ? unsqueeze(x, 0) : x, transpose(weight, 0, 1));
  if (x.dim() == 1) y = squeeze(y, 0);
  if (bias.defined()) {
    SD_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias ", bias.str(), " does not match weight ",
             weight.str());
    y = add(y, bias);
  }
  return y;
}

}  // namespace sd
