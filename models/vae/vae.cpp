#include "models/vae/vae.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <functional>

#include "autograd/node.h"
#include "models/unet/unet.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/nvtx.h"

namespace sd::nn {
namespace {

constexpr double kVaeEps = 1e-6;  // every GroupNorm of diffusers' Encoder/Decoder

std::shared_ptr<ResnetBlock2D> vae_resnet(int64_t in, int64_t out, int64_t groups) {
  ResnetBlock2D::Options r;
  r.in_channels = in;
  r.out_channels = out;
  r.groups = groups;
  r.eps = kVaeEps;
  return std::make_shared<ResnetBlock2D>(r);  // temb_channels 0: no time_emb_proj
}

// diffusers' UNetMidBlock2D as the Encoder/Decoder build it: one layer, attention_head_dim = C
// (a single head), output_scale_factor 1, no time embedding.
std::shared_ptr<UNetMidBlock2D> vae_mid_block(const VaeConfig& c) {
  UNetBlockOptions o;
  o.in_channels = o.out_channels = c.block_out_channels.back();
  o.temb_channels = 0;
  o.num_layers = 1;
  o.resnet_groups = c.norm_num_groups;
  o.resnet_eps = kVaeEps;
  return std::make_shared<UNetMidBlock2D>(o, c.mid_block_add_attention, /*attention_head_dim=*/o.in_channels);
}

}  // namespace

// ---- blocks ---------------------------------------------------------------------------------

DownEncoderBlock2D::DownEncoderBlock2D(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                                       bool add_downsample) {
  for (int64_t j = 0; j < num_layers; ++j)
    resnets.push_back(register_module("resnets." + std::to_string(j),
                                      vae_resnet(j == 0 ? in_channels : out_channels, out_channels, groups)));
  if (add_downsample)
    downsampler = register_module("downsamplers.0", std::make_shared<Downsample2D>(out_channels, out_channels, 0));
}

Tensor DownEncoderBlock2D::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("DownEncoderBlock2D"));
  Tensor h = x;
  for (const auto& r : resnets) h = r->forward(h);
  return downsampler ? downsampler->forward(h) : h;
}

UpDecoderBlock2D::UpDecoderBlock2D(int64_t prev_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                                   bool add_upsample) {
  for (int64_t j = 0; j < num_layers; ++j)
    resnets.push_back(register_module("resnets." + std::to_string(j),
                                      vae_resnet(j == 0 ? prev_channels : out_channels, out_channels, groups)));
  if (add_upsample) upsampler = register_module("upsamplers.0", std::make_shared<Upsample2D>(out_channels, out_channels));
}

Tensor UpDecoderBlock2D::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("UpDecoderBlock2D"));
  Tensor h = x;
  for (const auto& r : resnets) h = r->forward(h);
  return upsampler ? upsampler->forward(h) : h;
}

VaeEncoder::VaeEncoder(const VaeConfig& c) {
  const auto& ch = c.block_out_channels;
  conv_in = register_module("conv_in", std::make_shared<Conv2d>(c.in_channels, ch[0], 3, 1, 1));
  for (size_t i = 0; i < ch.size(); ++i)
    down_blocks.push_back(register_module(
        "down_blocks." + std::to_string(i),
        std::make_shared<DownEncoderBlock2D>(ch[i == 0 ? 0 : i - 1], ch[i], c.layers_per_block, c.norm_num_groups,
                                             /*add_downsample=*/i + 1 < ch.size())));
  mid_block = register_module("mid_block", vae_mid_block(c));
  conv_norm_out = register_module("conv_norm_out", std::make_shared<GroupNorm>(c.norm_num_groups, ch.back(), kVaeEps));
  conv_out = register_module("conv_out", std::make_shared<Conv2d>(ch.back(), 2 * c.latent_channels, 3, 1, 1));
}

Tensor VaeEncoder::forward(const Tensor& x) const {
  SD_NVTX_RANGE(trace_name("VaeEncoder"));
  SD_CHECK(x.dim() == 4 && x.size(1) == conv_in->in_channels, "VaeEncoder: input ", x.str(), " is not [N, ",
           conv_in->in_channels, ", H, W]");
  Tensor h = conv_in->forward(channels_last ? to_channels_last(x) : x);
  for (const auto& b : down_blocks) h = b->forward(h);
  h = mid_block->forward(h, BlockContext{});
  Tensor out = conv_out->forward(conv_norm_out->forward(h, /*fuse_silu=*/true));
  return channels_last ? contiguous(out) : out;
}

VaeDecoder::VaeDecoder(const VaeConfig& c) {
  const auto& ch = c.block_out_channels;
  const size_t n = ch.size();
  conv_in = register_module("conv_in", std::make_shared<Conv2d>(c.latent_channels, ch.back(), 3, 1, 1));
  // Up block i works on reversed widths: block_out_channels[n-1-i], coming from the block before.
  for (size_t i = 0; i < n; ++i)
    up_blocks.push_back(register_module(
        "up_blocks." + std::to_string(i),
        std::make_shared<UpDecoderBlock2D>(ch[i == 0 ? n - 1 : n - i], ch[n - 1 - i], c.layers_per_block + 1,
                                           c.norm_num_groups, /*add_upsample=*/i + 1 < n)));
  // diffusers assigns the (then empty) up_blocks list before mid_block: state dicts list it first.
  mid_block = register_module("mid_block", vae_mid_block(c));
  conv_norm_out = register_module("conv_norm_out", std::make_shared<GroupNorm>(c.norm_num_groups, ch[0], kVaeEps));
  conv_out = register_module("conv_out", std::make_shared<Conv2d>(ch[0], c.out_channels, 3, 1, 1));
}

Tensor VaeDecoder::forward(const Tensor& z) const {
  SD_NVTX_RANGE(trace_name("VaeDecoder"));
  SD_CHECK(z.dim() == 4 && z.size(1) == conv_in->in_channels, "VaeDecoder: latent ", z.str(), " is not [N, ",
           conv_in->in_channels, ", h, w]");
  Tensor h = conv_in->forward(channels_last ? to_channels_last(z) : z);
  h = mid_block->forward(h, BlockContext{});
  for (const auto& b : up_blocks) h = b->forward(h);
  Tensor out = conv_out->forward(conv_norm_out->forward(h, /*fuse_silu=*/true));
  return channels_last ? contiguous(out) : out;
}

// ---- posterior ------------------------------------------------------------------------------

Tensor DiagonalGaussian::std() const { return exp(logvar * 0.5); }

Tensor DiagonalGaussian::sample(Generator& gen) const { return AutoencoderKL::sample(mean, logvar, gen); }

Tensor AutoencoderKL::sample(const Tensor& mean, const Tensor& logvar, Generator& gen) {
  SD_CHECK(mean.defined() && logvar.defined() && mean.shape() == logvar.shape(), "AutoencoderKL::sample: mean ",
           mean.defined() ? mean.str() : std::string("none"), " and logvar ",
           logvar.defined() ? logvar.str() : std::string("none"), " must have the same shape");
  Tensor noise = randn(mean.shape(), mean.dtype(), mean.device(), gen);
  return mean + exp(logvar * 0.5) * noise;
}

// ---- the model ------------------------------------------------------------------------------

AutoencoderKL::AutoencoderKL(const VaeConfig& cfg) : config_(cfg), upcast_(cfg.force_upcast) {
  cfg.validate();
  const int64_t L = cfg.latent_channels;
  encoder = register_module("encoder", std::make_shared<VaeEncoder>(cfg));
  decoder = register_module("decoder", std::make_shared<VaeDecoder>(cfg));
  if (cfg.use_quant_conv) quant_conv = register_module("quant_conv", std::make_shared<Conv2d>(2 * L, 2 * L, 1));
  if (cfg.use_post_quant_conv)
    post_quant_conv = register_module("post_quant_conv", std::make_shared<Conv2d>(L, L, 1));
  name_for_tracing("vae");
}

DType AutoencoderKL::compute_dtype() const {
  return checked(encoder->conv_in->weight, "AutoencoderKL encoder.conv_in.weight").dtype();
}

DType AutoencoderKL::dtype() const { return io_dtype_ ? *io_dtype_ : compute_dtype(); }

void AutoencoderKL::place(DType dtype, Device device) {
  io_dtype_ = dtype;
  Module::to(param_dtype_for(dtype), device);
}

void AutoencoderKL::set_upcast(bool on) {
  upcast_ = on;
  if (io_dtype_ && encoder->conv_in->weight.defined()) {
    Module::to(param_dtype_for(*io_dtype_), encoder->conv_in->weight.device());
    if (channels_last()) set_conv_weights_channels_last(true);
  }
}

void AutoencoderKL::set_channels_last(bool on) {
  encoder->channels_last = on;
  decoder->channels_last = on;
  set_conv_weights_channels_last(on);
}

Tensor AutoencoderKL::moments(const Tensor& x) const {
  Tensor h = encoder->forward(sd::to(x, compute_dtype()));
  return quant_conv ? quant_conv->forward(h) : h;
}

Tensor AutoencoderKL::decode_raw(const Tensor& z) const {
  Tensor h = sd::to(z, compute_dtype());
  if (post_quant_conv) h = post_quant_conv->forward(h);
  return decoder->forward(h);
}

DiagonalGaussian AutoencoderKL::posterior(const Tensor& m) const {
  const int64_t L = config_.latent_channels;
  DiagonalGaussian g;
  g.mean = sd::to(narrow(m, 1, 0, L), dtype());
  g.logvar = sd::to(clamp(narrow(m, 1, L, L), -30.0, 20.0), dtype());
  return g;
}

DiagonalGaussian AutoencoderKL::encode(const Tensor& x) const {
  SD_NVTX_RANGE("AutoencoderKL.encode");
  SD_CHECK(x.defined() && x.dim() == 4 && x.size(1) == config_.in_channels, "AutoencoderKL::encode: image ",
           x.defined() ? x.str() : std::string("none"), " is not [N, ", config_.in_channels, ", H, W]");
  return posterior(moments(x));
}

Tensor AutoencoderKL::decode(const Tensor& z) const {
  SD_NVTX_RANGE("AutoencoderKL.decode");
  SD_CHECK(z.defined() && z.dim() == 4 && z.size(1) == config_.latent_channels, "AutoencoderKL::decode: latent ",
           z.defined() ? z.str() : std::string("none"), " is not [N, ", config_.latent_channels, ", h, w]");
  return sd::to(decode_raw(z), dtype());
}

// ---- tiling ---------------------------------------------------------------------------------

namespace {

// One axis of a tiled pass, in diffusers' arithmetic: tiles start every `stride` input
// elements and span `tile` (cut at the edge); tile k's output has out_len[k] elements, of which
// the first min(limit, out_len[k]) are kept, at output offset `offset[k]`.
struct TileAxis {
  std::vector<int64_t> start, in_len, out_len, keep, offset;
  int64_t total = 0;
};

TileAxis tile_axis(int64_t size, int64_t tile, int64_t stride, int64_t limit,
                   const std::function<int64_t(int64_t)>& out_len) {
  TileAxis a;
  for (int64_t s = 0; s < size; s += stride) {
    a.start.push_back(s);
    a.in_len.push_back(std::min(tile, size - s));
    a.out_len.push_back(out_len(a.in_len.back()));
    a.keep.push_back(std::min(limit, a.out_len.back()));
    a.offset.push_back(a.total);
    a.total += a.keep.back();
  }
  return a;
}

// Weights (1 - i/e) for `a` and i/e for `b`, i = 0..e-1, shaped to broadcast along `dim`
// (2: rows, 3: columns). Same values as diffusers' Python-float factors.
std::pair<Tensor, Tensor> blend_weights(int64_t e, int64_t dim, DType dtype, Device device) {
  std::vector<double> wa(static_cast<size_t>(e)), wb(static_cast<size_t>(e));
  for (int64_t i = 0; i < e; ++i) {
    wb[size_t(i)] = double(i) / double(e);
    wa[size_t(i)] = 1.0 - double(i) / double(e);
  }
  const Shape shape = dim == 2 ? Shape{1, 1, e, 1} : Shape{1, 1, 1, e};
  return {from_vector(wa, shape, dtype, device), from_vector(wb, shape, dtype, device)};
}

// diffusers' blend_v (dim 2) / blend_h (dim 3), in place on `b`: the first e = min(a_len, b's
// length, extent) rows (columns) of b become a's last e rows * (1 - i/e) + b's * i/e. `a_tail`
// holds the last min(a_len, extent) rows (columns) of the neighbouring tile, after its blends.
void blend(const Tensor& a_tail, const Tensor& b, int64_t extent, int64_t dim) {
  const int64_t e = std::min({a_tail.size(dim), b.size(dim), extent});
  if (e <= 0) return;
  auto [wa, wb] = blend_weights(e, dim, b.dtype(), b.device());
  Tensor head = narrow(b, dim, 0, e);
  Tensor mixed = narrow(a_tail, dim, a_tail.size(dim) - e, e) * wa + head * wb;
  copy_(head, mixed);
}

// The last min(len, extent) rows (columns) of t as their own tensor, so the tile can be freed.
Tensor tail(const Tensor& t, int64_t extent, int64_t dim) {
  const int64_t e = std::min(t.size(dim), extent);
  return clone(narrow(t, dim, t.size(dim) - e, e));
}

// Cuts x [N, C, H, W] into overlapping tiles, runs `fn` on each (output [N, Cout, h, w] in the
// compute dtype), blends each tile with the one above and the one to the left, and writes the
// kept part into the output (in `out_dtype`). Only one tile's `fn` runs at a time; between tiles
// the output, the previous tile row's bottom strips and the left tile's right strip are held.
Tensor tiled_apply(const Tensor& x, int64_t tile, int64_t stride, int64_t extent, int64_t limit,
                   const std::function<int64_t(int64_t)>& out_len, int64_t out_channels, DType out_dtype,
                   const std::function<Tensor(const Tensor&)>& fn) {
  const TileAxis rows = tile_axis(x.size(2), tile, stride, limit, out_len);
  const TileAxis cols = tile_axis(x.size(3), tile, stride, limit, out_len);
  Tensor out = empty({x.size(0), out_channels, rows.total, cols.total}, out_dtype, x.device());
  std::vector<Tensor> above(cols.start.size()), below(cols.start.size());
  for (size_t i = 0; i < rows.start.size(); ++i) {
    Tensor left;
    for (size_t j = 0; j < cols.start.size(); ++j) {
      SD_NVTX_RANGE("VAE tile");
      Tensor in = narrow(narrow(x, 2, rows.start[i], rows.in_len[i]), 3, cols.start[j], cols.in_len[j]);
      Tensor t = contiguous_raw(fn(in));
      SD_CHECK(t.size(2) == rows.out_len[i] && t.size(3) == cols.out_len[j], "VAE tiling: tile output ", t.str(),
               " is not ", rows.out_len[i], "x", cols.out_len[j]);
      if (i > 0) blend(above[j], t, extent, 2);
      if (j > 0) blend(left, t, extent, 3);
      below[j] = tail(t, extent, 2);
      left = tail(t, extent, 3);
      copy_(narrow(narrow(out, 2, rows.offset[i], rows.keep[i]), 3, cols.offset[j], cols.keep[j]),
            narrow(narrow(t, 2, 0, rows.keep[i]), 3, 0, cols.keep[j]));
    }
    std::swap(above, below);
  }
  return out;
}

struct TileGeometry {
  int64_t tile_sample, tile_latent;
  double overlap;
};

TileGeometry tile_geometry(const VaeTiling& t, const VaeConfig& c, const char* op) {
  TileGeometry g;
  g.tile_sample = t.tile_sample > 0 ? t.tile_sample : c.sample_size;
  // diffusers: tile_latent_min_size = int(sample_size / 2^(levels - 1)).
  g.tile_latent = t.tile_latent > 0 ? t.tile_latent : g.tile_sample / c.downscale();
  g.overlap = t.overlap_factor;
  SD_CHECK(g.tile_latent >= 1 && g.tile_sample == g.tile_latent * c.downscale(), op, ": tile_sample ", g.tile_sample,
           " must be tile_latent ", g.tile_latent, " times the VAE's downscale ", c.downscale());
  SD_CHECK(g.overlap >= 0.0 && g.overlap < 1.0, op, ": overlap_factor must be in [0, 1), got ", g.overlap);
  const double blend_latent = double(g.tile_latent) * g.overlap;
  SD_CHECK(std::fabs(blend_latent - std::round(blend_latent)) < 1e-9, op, ": tile_latent ", g.tile_latent,
           " * overlap_factor ", g.overlap, " must be a whole number of latent pixels (otherwise the tiles do not ",
           "add up to the image size)");
  return g;
}

}  // namespace

Tensor AutoencoderKL::decode_tiled(const Tensor& z, const VaeTiling& tiling) const {
  SD_NVTX_RANGE("AutoencoderKL.decode_tiled");
  SD_CHECK(z.defined() && z.dim() == 4 && z.size(1) == config_.latent_channels, "AutoencoderKL::decode_tiled: latent ",
           z.defined() ? z.str() : std::string("none"), " is not [N, ", config_.latent_channels, ", h, w]");
  const TileGeometry g = tile_geometry(tiling, config_, "AutoencoderKL::decode_tiled");
  autograd::NoGrad no_grad;
  if (z.size(2) <= g.tile_latent && z.size(3) <= g.tile_latent) return decode(z);
  // diffusers' tiled_decode: Python's int() truncates.
  const int64_t stride = int64_t(double(g.tile_latent) * (1.0 - g.overlap));
  const int64_t extent = int64_t(double(g.tile_sample) * g.overlap);
  const int64_t limit = g.tile_sample - extent;
  const int64_t s = downscale();
  return tiled_apply(z, g.tile_latent, stride, extent, limit, [s](int64_t n) { return n * s; }, config_.out_channels,
                     dtype(), [this](const Tensor& tile) { return decode_raw(tile); });
}

DiagonalGaussian AutoencoderKL::encode_tiled(const Tensor& x, const VaeTiling& tiling) const {
  SD_NVTX_RANGE("AutoencoderKL.encode_tiled");
  SD_CHECK(x.defined() && x.dim() == 4 && x.size(1) == config_.in_channels, "AutoencoderKL::encode_tiled: image ",
           x.defined() ? x.str() : std::string("none"), " is not [N, ", config_.in_channels, ", H, W]");
  const TileGeometry g = tile_geometry(tiling, config_, "AutoencoderKL::encode_tiled");
  autograd::NoGrad no_grad;
  if (x.size(2) <= g.tile_sample && x.size(3) <= g.tile_sample) return encode(x);
  // diffusers' _tiled_encode.
  const int64_t stride = int64_t(double(g.tile_sample) * (1.0 - g.overlap));
  const int64_t extent = int64_t(double(g.tile_latent) * g.overlap);
  const int64_t limit = g.tile_latent - extent;
  const int64_t levels = int64_t(config_.levels());
  // Each Downsample2D (pad right/bottom by one, 3x3 stride 2) maps n to floor(n / 2).
  auto out_len = [levels](int64_t n) {
    for (int64_t i = 1; i < levels; ++i) n /= 2;
    return n;
  };
  Tensor m = tiled_apply(x, g.tile_sample, stride, extent, limit, out_len, 2 * config_.latent_channels,
                         compute_dtype(), [this](const Tensor& tile) { return moments(tile); });
  return posterior(m);
}

// ---- loading --------------------------------------------------------------------------------

std::shared_ptr<AutoencoderKL> AutoencoderKL::from_pretrained(const std::string& dir, DType dtype, Device device,
                                                              const std::string& variant,
                                                              std::optional<bool> upcast) {
  const VaeConfig cfg = VaeConfig::from_file((std::filesystem::path(dir) / "config.json").string());
  auto model = std::make_shared<AutoencoderKL>(cfg);
  model->upcast_ = upcast.value_or(cfg.force_upcast);
  LoadOptions opt;
  opt.dtype = model->param_dtype_for(dtype);
  opt.device = device;
  const LegacyAttentionNames src(SafetensorsSource::open(find_diffusers_weights(dir, variant)));
  const LoadReport report = model->load(src, opt);
  SD_CHECK(report.unexpected.empty(), "VAE weights ", src.describe(), " do not match ", dir,
           "/config.json: ", report.str());
  model->io_dtype_ = dtype;
  return model;
}

// ---- legacy attention names -----------------------------------------------------------------

namespace {

// "<prefix>mid_block.attentions.<i>.<old>.<weight|bias>" -> the current name, or "".
std::string current_name(const std::string& key) {
  static const std::pair<const char*, const char*> renames[] = {
      {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
  const std::string marker = "mid_block.attentions.";
  const size_t at = key.find(marker);
  if (at == std::string::npos) return "";
  size_t p = at + marker.size();
  const size_t dot = key.find('.', p);
  if (dot == std::string::npos || dot == p) return "";
  for (size_t i = p; i < dot; ++i)
    if (!std::isdigit(static_cast<unsigned char>(key[i]))) return "";
  const std::string rest = key.substr(dot + 1);  // "query.weight"
  for (const auto& [old_name, new_name] : renames)
    for (const char* leaf : {".weight", ".bias"})
      if (rest == std::string(old_name) + leaf) return key.substr(0, dot + 1) + new_name + leaf;
  return "";
}

}  // namespace

LegacyAttentionNames::LegacyAttentionNames(std::shared_ptr<const TensorSource> inner) : inner_(std::move(inner)) {
  for (const std::string& k : inner_->keys()) {
    const std::string now = current_name(k);
    if (!now.empty() && !inner_->contains(now)) to_legacy_[now] = k;
  }
}

const std::string& LegacyAttentionNames::inner_key(const std::string& key) const {
  auto it = to_legacy_.find(key);
  return it == to_legacy_.end() ? key : it->second;
}

bool LegacyAttentionNames::contains(const std::string& key) const { return inner_->contains(inner_key(key)); }

Shape LegacyAttentionNames::shape(const std::string& key) const { return inner_->shape(inner_key(key)); }

Tensor LegacyAttentionNames::get(const std::string& key, DType dtype, Device device) const {
  return inner_->get(inner_key(key), dtype, device);
}

std::vector<std::string> LegacyAttentionNames::keys() const {
  std::vector<std::string> out;
  std::map<std::string, std::string> back;
  for (const auto& [now, old] : to_legacy_) back[old] = now;
  for (const std::string& k : inner_->keys()) {
    auto it = back.find(k);
    out.push_back(it == back.end() ? k : it->second);
  }
  return out;
}

}  // namespace sd::nn
