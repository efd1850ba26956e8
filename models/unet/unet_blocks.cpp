#include "models/unet/unet_blocks.h"

#include "autograd/checkpoint.h"
#include "ops/concat.h"
#include "runtime/nvtx.h"

namespace sd::nn {
namespace {

std::shared_ptr<ResnetBlock2D> make_resnet(const UNetBlockOptions& o, int64_t in, int64_t out) {
  ResnetBlock2D::Options r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = o.temb_channels;
  r.groups = o.resnet_groups;
  r.eps = o.resnet_eps;
  r.output_scale_factor = o.output_scale_factor;
  return std::make_shared<ResnetBlock2D>(r);
}

std::shared_ptr<Transformer2DModel> make_transformer(const UNetBlockOptions& o, int64_t channels, int64_t layers) {
  SD_CHECK(o.heads > 0, "UNet block: attention heads must be > 0, got ", o.heads);
  Transformer2DModel::Options t;
  t.heads = o.heads;
  t.dim_head = channels / o.heads;  // diffusers: out_channels // num_attention_heads
  t.in_channels = channels;
  t.num_layers = layers;
  t.cross_attention_dim = o.cross_attention_dim;
  t.norm_num_groups = o.resnet_groups;
  t.use_linear_projection = o.use_linear_projection;
  t.upcast_attention = o.upcast_attention;
  return std::make_shared<Transformer2DModel>(t);
}

int64_t layers_at(const UNetBlockOptions& o, int64_t i, const char* block) {
  SD_CHECK(int64_t(o.transformer_layers.size()) > i, block, ": transformer_layers has ", o.transformer_layers.size(),
           " entries, the block has ", o.num_layers, " attentions");
  return o.transformer_layers[size_t(i)];
}

// Pops the newest skip and joins it after x along channels: [N, Cx + Cskip, H, W].
Tensor pop_skip_cat(const Tensor& x, std::vector<Tensor>& skips, const char* block) {
  SD_CHECK(!skips.empty(), block, ": no skip connection left to pop");
  Tensor skip = skips.back();
  skips.pop_back();
  return cat({x, skip}, 1);
}

}  // namespace

Tensor run_resnet(const ResnetBlock2D& resnet, const Tensor& x, const BlockContext& ctx) {
  if (!ctx.checkpoint) return resnet.forward(x, ctx.temb);
  const ResnetBlock2D* r = &resnet;
  if (!ctx.temb.defined()) return autograd::checkpoint([r](const Tensor& in) { return r->forward(in); }, x);
  return autograd::checkpoint(
      [r](const std::vector<Tensor>& in) { return std::vector<Tensor>{r->forward(in[0], in[1])}; },
      std::vector<Tensor>{x, ctx.temb})[0];
}

DownBlock2D::DownBlock2D(const UNetBlockOptions& o) {
  for (int64_t i = 0; i < o.num_layers; ++i)
    resnets.push_back(register_module("resnets." + std::to_string(i),
                                      make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels)));
  if (o.add_sample)
    downsampler = register_module("downsamplers.0",
                                  std::make_shared<Downsample2D>(o.out_channels, o.out_channels, o.downsample_padding));
}

Tensor DownBlock2D::forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips) const {
  SD_NVTX_RANGE(trace_name("DownBlock2D"));
  Tensor h = x;
  for (const auto& r : resnets) {
    h = run_resnet(*r, h, ctx);
    skips.push_back(h);
  }
  if (downsampler) {
    h = downsampler->forward(h);
    skips.push_back(h);
  }
  return h;
}

CrossAttnDownBlock2D::CrossAttnDownBlock2D(const UNetBlockOptions& o) {
  // diffusers registers the attentions list before the resnets: keep its key order.
  std::vector<std::shared_ptr<ResnetBlock2D>> rs;
  for (int64_t i = 0; i < o.num_layers; ++i) {
    rs.push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    attentions.push_back(register_module("attentions." + std::to_string(i),
                                         make_transformer(o, o.out_channels, layers_at(o, i, "CrossAttnDownBlock2D"))));
  }
  for (size_t i = 0; i < rs.size(); ++i) resnets.push_back(register_module("resnets." + std::to_string(i), rs[i]));
  if (o.add_sample)
    downsampler = register_module("downsamplers.0",
                                  std::make_shared<Downsample2D>(o.out_channels, o.out_channels, o.downsample_padding));
}

Tensor CrossAttnDownBlock2D::forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips) const {
  SD_NVTX_RANGE(trace_name("CrossAttnDownBlock2D"));
  Tensor h = x;
  for (size_t i = 0; i < resnets.size(); ++i) {
    h = run_resnet(*resnets[i], h, ctx);
    h = attentions[i]->forward(h, ctx.context, ctx.checkpoint);
    skips.push_back(h);
  }
  if (downsampler) {
    h = downsampler->forward(h);
    skips.push_back(h);
  }
  return h;
}

UNetMidBlock2DCrossAttn::UNetMidBlock2DCrossAttn(const UNetBlockOptions& o) {
  const int64_t c = o.in_channels;
  std::vector<std::shared_ptr<ResnetBlock2D>> rs{make_resnet(o, c, c)};
  for (int64_t i = 0; i < o.num_layers; ++i) {
    attentions.push_back(register_module("attentions." + std::to_string(i),
                                         make_transformer(o, c, layers_at(o, i, "UNetMidBlock2DCrossAttn"))));
    rs.push_back(make_resnet(o, c, c));
  }
  for (size_t i = 0; i < rs.size(); ++i) resnets.push_back(register_module("resnets." + std::to_string(i), rs[i]));
}

Tensor UNetMidBlock2DCrossAttn::forward(const Tensor& x, const BlockContext& ctx) const {
  SD_NVTX_RANGE(trace_name("UNetMidBlock2DCrossAttn"));
  Tensor h = run_resnet(*resnets[0], x, ctx);
  for (size_t i = 0; i < attentions.size(); ++i) {
    h = attentions[i]->forward(h, ctx.context, ctx.checkpoint);
    h = run_resnet(*resnets[i + 1], h, ctx);
  }
  return h;
}

UNetMidBlock2D::UNetMidBlock2D(const UNetBlockOptions& o, bool add_attention, int64_t attention_head_dim) {
  const int64_t c = o.in_channels;
  const int64_t head_dim = attention_head_dim > 0 ? attention_head_dim : c;
  // diffusers adds one resnet per layer whether or not that layer has an attention.
  std::vector<std::shared_ptr<ResnetBlock2D>> rs{make_resnet(o, c, c)};
  for (int64_t i = 0; i < o.num_layers; ++i) {
    if (add_attention) {
      AttentionOptions a;
      a.query_dim = c;
      a.heads = c / head_dim;
      a.dim_head = head_dim;
      a.bias = true;
      a.upcast_softmax = true;
      a.norm_num_groups = o.resnet_groups;
      a.eps = o.resnet_eps;
      a.residual_connection = true;
      a.rescale_output_factor = o.output_scale_factor;
      attentions.push_back(register_module("attentions." + std::to_string(i), std::make_shared<Attention>(a)));
    }
    rs.push_back(make_resnet(o, c, c));
  }
  for (size_t i = 0; i < rs.size(); ++i) resnets.push_back(register_module("resnets." + std::to_string(i), rs[i]));
}

Tensor UNetMidBlock2D::forward(const Tensor& x, const BlockContext& ctx) const {
  SD_NVTX_RANGE(trace_name("UNetMidBlock2D"));
  Tensor h = run_resnet(*resnets[0], x, ctx);
  for (size_t i = 1; i < resnets.size(); ++i) {
    if (!attentions.empty()) h = attentions[i - 1]->forward(h);
    h = run_resnet(*resnets[i], h, ctx);
  }
  return h;
}

namespace {
// Up-block resnet j sees the previous hidden state (prev_output_channels for j = 0, else
// out_channels) plus a skip: in_channels (the level below's width) for the last resnet, whose
// skip is that level's first output; out_channels for the others.
int64_t up_resnet_in(const UNetBlockOptions& o, int64_t j) {
  const int64_t skip = j == o.num_layers - 1 ? o.in_channels : o.out_channels;
  return (j == 0 ? o.prev_output_channels : o.out_channels) + skip;
}
}  // namespace

UpBlock2D::UpBlock2D(const UNetBlockOptions& o) {
  for (int64_t j = 0; j < o.num_layers; ++j)
    resnets.push_back(register_module("resnets." + std::to_string(j), make_resnet(o, up_resnet_in(o, j), o.out_channels)));
  if (o.add_sample) upsampler = register_module("upsamplers.0", std::make_shared<Upsample2D>(o.out_channels));
}

Tensor UpBlock2D::forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips,
                          std::array<int64_t, 2> upsample_size) const {
  SD_NVTX_RANGE(trace_name("UpBlock2D"));
  Tensor h = x;
  for (const auto& r : resnets) h = run_resnet(*r, pop_skip_cat(h, skips, "UpBlock2D"), ctx);
  if (upsampler) h = upsampler->forward(h, upsample_size);
  return h;
}

CrossAttnUpBlock2D::CrossAttnUpBlock2D(const UNetBlockOptions& o) {
  std::vector<std::shared_ptr<ResnetBlock2D>> rs;
  for (int64_t j = 0; j < o.num_layers; ++j) {
    rs.push_back(make_resnet(o, up_resnet_in(o, j), o.out_channels));
    attentions.push_back(register_module("attentions." + std::to_string(j),
                                         make_transformer(o, o.out_channels, layers_at(o, j, "CrossAttnUpBlock2D"))));
  }
  for (size_t i = 0; i < rs.size(); ++i) resnets.push_back(register_module("resnets." + std::to_string(i), rs[i]));
  if (o.add_sample) upsampler = register_module("upsamplers.0", std::make_shared<Upsample2D>(o.out_channels));
}

Tensor CrossAttnUpBlock2D::forward(const Tensor& x, const BlockContext& ctx, std::vector<Tensor>& skips,
                                   std::array<int64_t, 2> upsample_size) const {
  SD_NVTX_RANGE(trace_name("CrossAttnUpBlock2D"));
  Tensor h = x;
  for (size_t j = 0; j < resnets.size(); ++j) {
    h = run_resnet(*resnets[j], pop_skip_cat(h, skips, "CrossAttnUpBlock2D"), ctx);
    h = attentions[j]->forward(h, ctx.context, ctx.checkpoint);
  }
  if (upsampler) h = upsampler->forward(h, upsample_size);
  return h;
}

}  // namespace sd::nn
