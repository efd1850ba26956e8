#include "models/nn/attention_blocks.h"

#include <cmath>

#include "autograd/checkpoint.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/nvtx.h"

namespace sd::nn {

Attention::Attention(const AttentionOptions& o) : opt(o), inner_dim(o.heads * o.dim_head) {
  SD_CHECK(o.query_dim > 0 && o.heads > 0 && o.dim_head > 0, "Attention: query_dim ", o.query_dim, ", heads ",
           o.heads, " and dim_head ", o.dim_head, " must be > 0");
  SD_CHECK(o.rescale_output_factor != 0.0, "Attention: rescale_output_factor must not be 0");
  const int64_t kv_dim = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
  if (o.norm_num_groups > 0)
    group_norm = register_module("group_norm", std::make_shared<GroupNorm>(o.norm_num_groups, o.query_dim, o.eps));
  to_q = register_module("to_q", std::make_shared<Linear>(o.query_dim, inner_dim, o.bias));
  to_k = register_module("to_k", std::make_shared<Linear>(kv_dim, inner_dim, o.bias));
  to_v = register_module("to_v", std::make_shared<Linear>(kv_dim, inner_dim, o.bias));
  // to_out is a ModuleList [Linear, Dropout] in diffusers: the Linear's keys are "to_out.0.*".
  to_out = register_module("to_out.0", std::make_shared<Linear>(inner_dim, o.query_dim, o.out_bias));
}

Tensor Attention::forward(const Tensor& x, const Tensor& context) const {
  SD_NVTX_RANGE(trace_name("Attention"));
  const bool spatial = x.dim() == 4;
  SD_CHECK((x.dim() == 3 && x.size(2) == opt.query_dim) || (spatial && x.size(1) == opt.query_dim), "Attention: input ",
           x.str(), " is neither [B, L, ", opt.query_dim, "] nor [B, ", opt.query_dim, ", H, W]");
  const int64_t B = x.size(0);
  Tensor h;  // [B, L, C]
  if (spatial) {
    Tensor n = group_norm ? group_norm->forward(x) : x;
    h = transpose(reshape(n, {B, opt.query_dim, -1}), 1, 2);
  } else {
    h = group_norm ? transpose(group_norm->forward(transpose(x, 1, 2)), 1, 2) : x;
  }
  Tensor kv = h;
  if (opt.cross_attention_dim > 0) {
    SD_CHECK(context.defined() && context.dim() == 3 && context.size(0) == B &&
                 context.size(2) == opt.cross_attention_dim,
             "Attention: cross-attention needs a context [", B, ", Lk, ", opt.cross_attention_dim, "], got ",
             context.defined() ? context.str() : std::string("none"));
    kv = context;
  } else {
    SD_CHECK(!context.defined(), "Attention: self-attention layer was given a context ", context.str());
  }
  const int64_t L = h.size(1), Lk = kv.size(1);
  // [B, L, H*D] -> [B, H, L, D] as a permuted view; the attention kernels take strided input.
  auto split_heads = [&](const Tensor& t, int64_t len) {
    return permute(reshape(t, {B, len, opt.heads, opt.dim_head}), {0, 2, 1, 3});
  };
  Tensor q = split_heads(to_q->forward(h), L);
  Tensor k = split_heads(to_k->forward(kv), Lk);
  Tensor v = split_heads(to_v->forward(kv), Lk);
  Tensor o = scaled_dot_product_attention(q, k, v, Tensor(), 1.0 / std::sqrt(double(opt.dim_head)));
  o = reshape(permute(o, {0, 2, 1, 3}), {B, L, inner_dim});  // merge heads
  o = to_out->forward(o);                                        // [B, L, C]
  if (spatial) o = reshape(transpose(o, 1, 2), x.shape());       // back to [B, C, H, W]
  if (opt.residual_connection) o = o + x;
  if (opt.rescale_output_factor != 1.0) o = o * (1.0 / opt.rescale_output_factor);
  return o;
}

GEGLU::GEGLU(int64_t dim_in, int64_t dim_out) {
  proj = register_module("proj", std::make_shared<Linear>(dim_in, 2 * dim_out));
}

Tensor GEGLU::forward(const Tensor& x) const { return geglu(proj->forward(x)); }

FeedForward::FeedForward(int64_t dim, int64_t mult) {
  act = register_module("net.0", std::make_shared<GEGLU>(dim, dim * mult));
  out = register_module("net.2", std::make_shared<Linear>(dim * mult, dim));
}

Tensor FeedForward::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("FeedForward"));
  return out->forward(act->forward(x));
}

BasicTransformerBlock::BasicTransformerBlock(int64_t dim, int64_t heads, int64_t dim_head,
                                             int64_t cross_attention_dim, bool upcast_attention, double norm_eps) {
  SD_CHECK(cross_attention_dim > 0, "BasicTransformerBlock: cross_attention_dim must be > 0");
  AttentionOptions a;
  a.query_dim = dim;
  a.heads = heads;
  a.dim_head = dim_head;
  a.upcast_attention = upcast_attention;
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(dim, norm_eps));
  attn1 = register_module("attn1", std::make_shared<Attention>(a));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(dim, norm_eps));
  a.cross_attention_dim = cross_attention_dim;
  attn2 = register_module("attn2", std::make_shared<Attention>(a));
  norm3 = register_module("norm3", std::make_shared<LayerNorm>(dim, norm_eps));
  ff = register_module("ff", std::make_shared<FeedForward>(dim));
}

Tensor BasicTransformerBlock::forward(const Tensor& x, const Tensor& context) const {
  SD_NVTX_RANGE(trace_name("BasicTransformerBlock"));
  Tensor h = x + attn1->forward(norm1->forward(x));
  h = h + attn2->forward(norm2->forward(h), context);
  return h + ff->forward(norm3->forward(h));
}

Transformer2DModel::Transformer2DModel(const Options& o) : opt(o), inner_dim(o.heads * o.dim_head) {
  SD_CHECK(o.in_channels > 0 && o.num_layers >= 1, "Transformer2DModel: in_channels ", o.in_channels,
           " and num_layers ", o.num_layers, " must be positive");
  norm = register_module("norm", std::make_shared<GroupNorm>(o.norm_num_groups, o.in_channels, 1e-6));
  if (o.use_linear_projection)
    proj_in_linear = register_module("proj_in", std::make_shared<Linear>(o.in_channels, inner_dim));
  else
    proj_in_conv = register_module("proj_in", std::make_shared<Conv2d>(o.in_channels, inner_dim, 1));
  for (int64_t i = 0; i < o.num_layers; ++i)
    transformer_blocks.push_back(register_module(
        "transformer_blocks." + std::to_string(i),
        std::make_shared<BasicTransformerBlock>(inner_dim, o.heads, o.dim_head, o.cross_attention_dim,
                                                o.upcast_attention)));
  if (o.use_linear_projection)
    proj_out_linear = register_module("proj_out", std::make_shared<Linear>(inner_dim, o.in_channels));
  else
    proj_out_conv = register_module("proj_out", std::make_shared<Conv2d>(inner_dim, o.in_channels, 1));
}

Tensor Transformer2DModel::forward(const Tensor& x, const Tensor& context, bool use_checkpoint) const {
  SD_NVTX_RANGE(trace_name("Transformer2DModel"));
  SD_CHECK(x.dim() == 4 && x.size(1) == opt.in_channels, "Transformer2DModel: input ", x.str(), " is not [B, ",
           opt.in_channels, ", H, W]");
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  Tensor h = norm->forward(x);
  // To tokens [B, H*W, inner]: the conv form projects first, the linear form after flattening.
  if (proj_in_conv) {
    h = reshape(permute(proj_in_conv->forward(h), {0, 2, 3, 1}), {B, H * W, inner_dim});
  } else {
    h = proj_in_linear->forward(reshape(permute(h, {0, 2, 3, 1}), {B, H * W, opt.in_channels}));
  }
  for (const auto& block : transformer_blocks) {
    if (use_checkpoint) {
      auto blk = block;
      h = autograd::checkpoint(
          [blk](const std::vector<Tensor>& in) { return std::vector<Tensor>{blk->forward(in[0], in[1])}; },
          std::vector<Tensor>{h, context})[0];
    } else {
      h = block->forward(h, context);
    }
  }
  if (proj_out_conv) {
    h = proj_out_conv->forward(permute(reshape(h, {B, H, W, inner_dim}), {0, 3, 1, 2}));
  } else {
    h = permute(reshape(proj_out_linear->forward(h), {B, H, W, opt.in_channels}), {0, 3, 1, 2});
  }
  return h + x;
}

}  // namespace sd::nn
