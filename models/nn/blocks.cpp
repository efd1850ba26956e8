#include "models/nn/blocks.h"

#include "ops/activation.h"
#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/upsample.h"
#include "ops/view.h"
#include "runtime/nvtx.h"

namespace sd::nn {

ResnetBlock2D::ResnetBlock2D(const Options& o)
    : in_channels(o.in_channels),
      out_channels(o.out_channels > 0 ? o.out_channels : o.in_channels),
      output_scale_factor(o.output_scale_factor) {
  SD_CHECK(in_channels > 0, "ResnetBlock2D: in_channels must be > 0, got ", in_channels);
  SD_CHECK(output_scale_factor != 0.0, "ResnetBlock2D: output_scale_factor must not be 0");
  const int64_t groups_out = o.groups_out > 0 ? o.groups_out : o.groups;
  // Registration order follows diffusers' __init__, so state dicts list keys alike.
  norm1 = register_module("norm1", std::make_shared<GroupNorm>(o.groups, in_channels, o.eps));
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in_channels, out_channels, 3, 1, 1));
  if (o.temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj", std::make_shared<Linear>(o.temb_channels, out_channels));
  norm2 = register_module("norm2", std::make_shared<GroupNorm>(groups_out, out_channels, o.eps));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out_channels, out_channels, 3, 1, 1));
  if (in_channels != out_channels)
    conv_shortcut = register_module("conv_shortcut", std::make_shared<Conv2d>(in_channels, out_channels, 1, 1, 0));
}

Tensor ResnetBlock2D::forward(const Tensor& x, const Tensor& temb) const {
  SD_NVTX_RANGE(trace_name("ResnetBlock2D"));
  SD_CHECK(x.dim() == 4 && x.size(1) == in_channels, "ResnetBlock2D: input ", x.str(), " is not [N, ", in_channels,
           ", H, W]");
  SD_CHECK(temb.defined() == bool(time_emb_proj), "ResnetBlock2D: ",
           time_emb_proj ? "needs a time embedding" : "was built without a time embedding but got one");
  Tensor h = conv1->forward(norm1->forward(x, /*fuse_silu=*/true));  // [N, Cout, H, W]
  if (time_emb_proj) {
    SD_CHECK(temb.dim() == 2 && temb.size(0) == x.size(0), "ResnetBlock2D: time embedding ", temb.str(),
             " is not [N, C] for input ", x.str());
    Tensor t = time_emb_proj->forward(silu(temb));          // [N, Cout]
    h = h + reshape(t, {t.size(0), t.size(1), 1, 1});
  }
  h = conv2->forward(norm2->forward(h, /*fuse_silu=*/true));
  Tensor skip = conv_shortcut ? conv_shortcut->forward(x) : x;
  Tensor out = skip + h;
  return output_scale_factor == 1.0 ? out : out * (1.0 / output_scale_factor);
}

Downsample2D::Downsample2D(int64_t channels, int64_t out_channels, int64_t pad) : padding(pad) {
  SD_CHECK(pad == 0 || pad == 1, "Downsample2D: padding must be 0 or 1, got ", pad);
  conv = register_module("conv", std::make_shared<Conv2d>(channels, out_channels > 0 ? out_channels : channels, 3,
                                                          2, padding));
}

Tensor Downsample2D::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("Downsample2D"));
  if (padding == 0) return conv->forward(pad2d(x, 0, 1, 0, 1));  // right and bottom only
  return conv->forward(x);
}

Upsample2D::Upsample2D(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", std::make_shared<Conv2d>(channels, out_channels > 0 ? out_channels : channels, 3,
                                                          1, 1));
}

Tensor Upsample2D::forward(const Tensor& x, std::array<int64_t, 2> size) const {
  SD_NVTX_RANGE(trace_name("Upsample2D"));
  Tensor h = upsample_nearest2d(x, 2);  // [N, C, 2H, 2W]
  if (size[0] > 0) {
    const int64_t H = x.size(2), W = x.size(3);
    SD_CHECK((size[0] == 2 * H || size[0] == 2 * H - 1) && (size[1] == 2 * W || size[1] == 2 * W - 1),
             "Upsample2D: cannot upsample ", x.str(), " to ", size[0], "x", size[1],
             " (only 2x, or 2x less one row/column as stride-2 convolutions with padding 1 leave)");
    if (size[0] != 2 * H) h = narrow(h, 2, 0, size[0]);
    if (size[1] != 2 * W) h = narrow(h, 3, 0, size[1]);
  }
  return conv->forward(h);
}

TimestepEmbedding::TimestepEmbedding(int64_t in_channels, int64_t time_embed_dim, int64_t cond_proj_dim) {
  // diffusers' order (linear_1, cond_proj, linear_2), so state dicts list the keys alike.
  linear_1 = register_module("linear_1", std::make_shared<Linear>(in_channels, time_embed_dim));
  if (cond_proj_dim > 0)
    cond_proj = register_module("cond_proj", std::make_shared<Linear>(cond_proj_dim, in_channels, /*bias=*/false));
  linear_2 = register_module("linear_2", std::make_shared<Linear>(time_embed_dim, time_embed_dim));
}

Tensor TimestepEmbedding::forward(const Tensor& sample, const Tensor& condition) const {
  SD_NVTX_RANGE(trace_name("TimestepEmbedding"));
  Tensor s = sample;
  if (condition.defined()) {
    SD_CHECK(cond_proj, "TimestepEmbedding: got a condition ", condition.str(),
             " but the model has no cond_proj (time_cond_proj_dim is not set)");
    s = s + cond_proj->forward(condition);
  }
  return linear_2->forward(silu(linear_1->forward(s)));
}

std::vector<AdapterTarget> adapter_targets(Module& root, const std::string& prefix) {
  std::vector<AdapterTarget> out;
  for (auto& [name, m] : root.named_modules(prefix)) {
    if (auto* l = dynamic_cast<Linear*>(m)) out.push_back({name, l, nullptr});
    else if (auto* c = dynamic_cast<Conv2d*>(m)) out.push_back({name, nullptr, c});
  }
  return out;
}

}  // namespace sd::nn
