#include "models/unet/unet.h"

#include <filesystem>

#include "autograd/node.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/timestep.h"
#include "ops/view.h"
#include "runtime/nvtx.h"

namespace sd::nn {

UNet2DConditionModel::UNet2DConditionModel(const UNetConfig& cfg) : config_(cfg) {
  cfg.validate();
  const size_t n = cfg.block_out_channels.size();
  const int64_t c0 = cfg.block_out_channels[0];
  const int64_t temb = cfg.time_embed_dim();

  conv_in = register_module("conv_in", std::make_shared<Conv2d>(cfg.in_channels, c0, cfg.conv_in_kernel, 1,
                                                                (cfg.conv_in_kernel - 1) / 2));
  time_embedding =
      register_module("time_embedding", std::make_shared<TimestepEmbedding>(c0, temb, cfg.time_cond_proj_dim));
  if (cfg.addition_embed_type == "text_time")
    add_embedding = register_module(
        "add_embedding", std::make_shared<TimestepEmbedding>(cfg.projection_class_embeddings_input_dim, temb));

  UNetBlockOptions base;
  base.temb_channels = temb;
  base.resnet_groups = cfg.norm_num_groups;
  base.resnet_eps = cfg.norm_eps;
  base.downsample_padding = cfg.downsample_padding;
  base.use_linear_projection = cfg.use_linear_projection;
  base.upcast_attention = cfg.upcast_attention;

  // Down: block i maps block_out_channels[i-1] (C0 for i = 0) to block_out_channels[i].
  int64_t out_ch = c0;
  for (size_t i = 0; i < n; ++i) {
    UNetBlockOptions o = base;
    o.in_channels = out_ch;
    o.out_channels = out_ch = cfg.block_out_channels[i];
    o.num_layers = cfg.layers_per_block[i];
    o.transformer_layers = cfg.transformer_layers_per_block[i];
    o.heads = cfg.attention_heads[i];
    o.cross_attention_dim = cfg.cross_attention_dim[i];
    o.add_sample = i + 1 < n;
    std::shared_ptr<UNetDownBlock> b;
    if (cfg.down_block_types[i] == "CrossAttnDownBlock2D") b = std::make_shared<CrossAttnDownBlock2D>(o);
    else b = std::make_shared<DownBlock2D>(o);
    down_blocks.push_back(register_module("down_blocks." + std::to_string(i), b));
  }

  // Mid (built here, registered after the up blocks as diffusers does).
  std::shared_ptr<UNetMidBlock> mid;
  if (!cfg.mid_block_type.empty()) {
    UNetBlockOptions o = base;
    o.in_channels = o.out_channels = cfg.block_out_channels.back();
    o.output_scale_factor = cfg.mid_block_scale_factor;
    o.num_layers = 1;
    o.transformer_layers = {cfg.transformer_layers_per_block.back().empty() ? 1
                                                                            : cfg.transformer_layers_per_block.back()[0]};
    o.heads = cfg.attention_heads.back();
    o.cross_attention_dim = cfg.cross_attention_dim.back();
    if (cfg.mid_block_type == "UNetMidBlock2DCrossAttn") mid = std::make_shared<UNetMidBlock2DCrossAttn>(o);
    else {
      o.num_layers = 0;  // diffusers' get_mid_block builds "UNetMidBlock2D" with num_layers 0: one resnet
      mid = std::make_shared<UNetMidBlock2D>(o, /*add_attention=*/false);
    }
  }

  // Up: block i works at the resolution of down block n-1-i; its last resnet's skip comes from
  // the level below (block_out_channels[n-2-i], or the same level for the last block).
  out_ch = cfg.block_out_channels.back();
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;
    UNetBlockOptions o = base;
    o.prev_output_channels = out_ch;
    o.out_channels = out_ch = cfg.block_out_channels[r];
    o.in_channels = cfg.block_out_channels[r == 0 ? 0 : r - 1];
    o.num_layers = cfg.num_up_layers(i);
    o.transformer_layers = cfg.reverse_transformer_layers_per_block[i];
    o.heads = cfg.attention_heads[r];
    o.cross_attention_dim = cfg.cross_attention_dim[r];
    o.add_sample = i + 1 < n;
    std::shared_ptr<UNetUpBlock> b;
    if (cfg.up_block_types[i] == "CrossAttnUpBlock2D") b = std::make_shared<CrossAttnUpBlock2D>(o);
    else b = std::make_shared<UpBlock2D>(o);
    up_blocks.push_back(register_module("up_blocks." + std::to_string(i), b));
  }
  if (mid) mid_block = register_module("mid_block", mid);

  conv_norm_out = register_module("conv_norm_out", std::make_shared<GroupNorm>(cfg.norm_num_groups, c0, cfg.norm_eps));
  conv_out = register_module("conv_out", std::make_shared<Conv2d>(c0, cfg.out_channels, cfg.conv_out_kernel, 1,
                                                                  (cfg.conv_out_kernel - 1) / 2));
  name_for_tracing("unet");
}

namespace {

// Sinusoidal embedding of a 1-d tensor of numbers (computed on the CPU like the reference's
// f32 formula) in `dtype` on `device`.
Tensor sinusoid(const Tensor& values, int64_t dim, const UNetConfig& cfg, DType dtype, Device device) {
  Tensor v = values.is_cpu() ? values : copy_to(values, values.dtype(), Device::cpu());
  Tensor e = timestep_embedding(detach(v), dim, cfg.flip_sin_to_cos, cfg.freq_shift);  // [n, dim] f32
  return copy_to(e, dtype, device);
}

}  // namespace

Tensor UNet2DConditionModel::time_embed(const Tensor& timestep, int64_t batch, const UNetAddedCond& added,
                                        const Tensor& timestep_cond, DType dtype, Device device) const {
  SD_NVTX_RANGE("UNet time embedding");
  // timestep: 0-d, [1] or [N]; broadcast to the batch like diffusers' timesteps.expand(N).
  SD_CHECK(timestep.defined() && (timestep.dim() == 0 || (timestep.dim() == 1 && (timestep.size(0) == 1 ||
                                                                                   timestep.size(0) == batch))),
           "UNet2DConditionModel: timestep ", timestep.defined() ? timestep.str() : std::string("none"),
           " must be a scalar, [1] or [", batch, "]");
  Tensor t = reshape(contiguous(timestep), {-1});
  if (t.size(0) != batch) t = contiguous(expand(t, {batch}));
  Tensor emb = time_embedding->forward(sinusoid(t, config_.block_out_channels[0], config_, dtype, device),
                                       timestep_cond.defined() ? sd::to(timestep_cond, dtype) : Tensor());

  if (add_embedding) {
    SD_CHECK(added.text_embeds.defined() && added.time_ids.defined(),
             "UNet2DConditionModel: addition_embed_type \"text_time\" needs text_embeds and time_ids");
    SD_CHECK(added.text_embeds.dim() == 2 && added.text_embeds.size(0) == batch && added.time_ids.dim() == 2 &&
                 added.time_ids.size(0) == batch,
             "UNet2DConditionModel: text_embeds ", added.text_embeds.str(), " and time_ids ", added.time_ids.str(),
             " must be [", batch, ", k]");
    // Each time id gets its own sinusoid; flattened per sample: [N, k * addition_time_embed_dim].
    Tensor ids = reshape(contiguous(added.time_ids), {-1});
    Tensor time_embeds =
        reshape(sinusoid(ids, config_.addition_time_embed_dim, config_, dtype, device), {batch, -1});
    Tensor add = cat({sd::to(added.text_embeds, dtype), time_embeds}, 1);
    SD_CHECK(add.size(1) == config_.projection_class_embeddings_input_dim, "UNet2DConditionModel: text_embeds ",
             added.text_embeds.str(), " + ", added.time_ids.size(1), " time ids x ", config_.addition_time_embed_dim,
             " give ", add.size(1), " features, add_embedding takes projection_class_embeddings_input_dim = ",
             config_.projection_class_embeddings_input_dim);
    emb = emb + add_embedding->forward(add);
  } else {
    SD_CHECK(!added.text_embeds.defined() && !added.time_ids.defined(),
             "UNet2DConditionModel: text_embeds/time_ids given but the config has no addition_embed_type");
  }
  return emb;
}

Tensor UNet2DConditionModel::forward(const Tensor& sample, const Tensor& timestep,
                                     const Tensor& encoder_hidden_states, const UNetAddedCond& added,
                                     const Tensor& timestep_cond) const {
  SD_NVTX_RANGE(trace_name("UNet2DConditionModel"));
  const Tensor& w = checked(conv_in->weight, "UNet2DConditionModel conv_in.weight");
  const DType dtype = w.dtype();
  const Device device = w.device();
  SD_CHECK(sample.defined() && sample.dim() == 4 && sample.size(1) == config_.in_channels,
           "UNet2DConditionModel: sample ", sample.defined() ? sample.str() : std::string("none"), " is not [N, ",
           config_.in_channels, ", H, W]");
  const int64_t batch = sample.size(0);
  SD_CHECK(encoder_hidden_states.defined() && encoder_hidden_states.dim() == 3 &&
               encoder_hidden_states.size(0) == batch,
           "UNet2DConditionModel: encoder_hidden_states ",
           encoder_hidden_states.defined() ? encoder_hidden_states.str() : std::string("none"), " is not [", batch,
           ", L, C]");

  BlockContext ctx;
  ctx.temb = time_embed(timestep, batch, added, timestep_cond, dtype, device);
  ctx.context = sd::to(encoder_hidden_states, dtype);
  ctx.checkpoint = gradient_checkpointing && autograd::grad_enabled();

  Tensor h = sd::to(sample, dtype);
  if (channels_last_) h = to_channels_last(h);
  if (config_.center_input_sample) h = h * 2.0 - 1.0;
  h = conv_in->forward(h);

  std::vector<Tensor> skips{h};
  for (const auto& b : down_blocks) h = b->forward(h, ctx, skips);
  if (mid_block) h = mid_block->forward(h, ctx);
  for (const auto& b : up_blocks) {
    // Upsample to the size of the skip that the next block pops first (exactly 2x unless the
    // input size was not a multiple of the total downsampling).
    const size_t popped = b->resnets.size();
    SD_CHECK(skips.size() >= popped, "UNet2DConditionModel: skip connections do not match the up blocks");
    std::array<int64_t, 2> size{0, 0};
    if (b->upsampler) {
      SD_CHECK(skips.size() > popped, "UNet2DConditionModel: no skip left below an upsampling block");
      const Tensor& next = skips[skips.size() - popped - 1];
      size = {next.size(2), next.size(3)};
    }
    h = b->forward(h, ctx, skips, size);
  }
  SD_CHECK(skips.empty(), "UNet2DConditionModel: ", skips.size(), " skip connections left unused");
  Tensor out = conv_out->forward(conv_norm_out->forward(h, /*fuse_silu=*/true));
  return channels_last_ ? contiguous(out) : out;
}

void UNet2DConditionModel::set_channels_last(bool on) {
  channels_last_ = on;
  set_conv_weights_channels_last(on);
}

Tensor UNet2DConditionModel::forward(const Tensor& sample, double timestep, const Tensor& encoder_hidden_states,
                                     const UNetAddedCond& added, const Tensor& timestep_cond) const {
  return forward(sample, scalar_tensor(timestep, DType::F64), encoder_hidden_states, added, timestep_cond);
}

std::string find_diffusers_weights(const std::string& dir, const std::string& variant, const std::string& base) {
  namespace fs = std::filesystem;
  const std::string v = variant.empty() ? "" : "." + variant;
  const fs::path single = fs::path(dir) / (base + v + ".safetensors");
  const fs::path index = fs::path(dir) / (base + ".safetensors.index" + v + ".json");
  if (fs::exists(single)) return single.string();
  if (fs::exists(index)) return index.string();
  SD_FAIL("no weights in '", dir, "': looked for ", single.filename().string(), " and ", index.filename().string(),
          variant.empty() ? "" : " (variant '" + variant + "')");
}

std::shared_ptr<UNet2DConditionModel> UNet2DConditionModel::from_pretrained(const std::string& dir, DType dtype,
                                                                            Device device,
                                                                            const std::string& variant) {
  const UNetConfig cfg = UNetConfig::from_file((std::filesystem::path(dir) / "config.json").string());
  auto model = std::make_shared<UNet2DConditionModel>(cfg);
  LoadOptions opt;
  opt.dtype = dtype;
  opt.device = device;
  const auto src = SafetensorsSource::open(find_diffusers_weights(dir, variant));
  const LoadReport report = model->load(*src, opt);
  // The config determines every parameter: a tensor nothing uses means file and config disagree.
  SD_CHECK(report.unexpected.empty(), "UNet weights ", src->describe(), " do not match ", dir,
           "/config.json: ", report.str());
  return model;
}

}  // namespace sd::nn
