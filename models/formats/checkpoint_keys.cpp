// diffusers <-> original single-file names (FORMATS.md §3.2-§3.5). Each component has a pair of
// small rule functions working on the dotted parts of a name; the block arithmetic of the UNet
// is the only place where a layout (layers_per_block, which up blocks have attention) matters.
#include "models/formats/checkpoint_keys.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "runtime/error.h"

namespace sd::nn {

namespace {

using Parts = std::vector<std::string>;

Parts split(const std::string& s) {
  Parts out;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    out.push_back(s.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return out;
}

std::string join(const Parts& p, size_t from, size_t to = std::string::npos) {
  std::string out;
  to = std::min(to, p.size());
  for (size_t i = from; i < to; ++i) {
    if (i > from) out += '.';
    out += p[i];
  }
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A block index: decimal digits only (no sign, no leading zeros), small enough for an int.
bool parse_index(const std::string& s, int& out) {
  if (s.empty() || s.size() > 6) return false;
  if (s.size() > 1 && s[0] == '0') return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

// The parameter name at the end ("weight", "bias", ...): one part, no further structure.
bool is_leaf(const Parts& p, size_t at) { return p.size() == at + 1 && !p[at].empty(); }

// ---------------------------------------------------------------- UNet

// Resnet parameter names: diffusers ResnetBlock2D <-> ldm ResBlock (two parts on the ldm side).
const std::pair<const char*, const char*> kUnetResnet[] = {
    {"norm1", "in_layers.0"},         {"conv1", "in_layers.2"}, {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"},        {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"},
};

// Top-level modules: diffusers <-> ldm.
const std::pair<const char*, const char*> kUnetFixed[] = {
    {"conv_in", "input_blocks.0.0"},          {"time_embedding.linear_1", "time_embed.0"},
    {"time_embedding.linear_2", "time_embed.2"}, {"add_embedding.linear_1", "label_emb.0.0"},
    {"add_embedding.linear_2", "label_emb.0.2"}, {"conv_norm_out", "out.0"},
    {"conv_out", "out.2"},
};

// "norm1.weight" -> "in_layers.0.weight"
std::optional<std::string> unet_resnet_to_ldm(const Parts& p, size_t at) {
  if (!is_leaf(p, at + 1)) return std::nullopt;
  for (auto& [d, o] : kUnetResnet)
    if (p[at] == d) return std::string(o) + "." + p[at + 1];
  return std::nullopt;
}

std::optional<std::string> unet_resnet_from_ldm(const Parts& p, size_t at) {
  for (auto& [d, o] : kUnetResnet) {
    const Parts op = split(o);
    if (p.size() != at + op.size() + 1) continue;
    if (std::equal(op.begin(), op.end(), p.begin() + at)) return std::string(d) + "." + p.back();
  }
  return std::nullopt;
}

// Attention (Transformer2DModel) names are identical on both sides; anything non-empty passes.
std::optional<std::string> rest(const Parts& p, size_t at) {
  if (p.size() <= at) return std::nullopt;
  for (size_t i = at; i < p.size(); ++i)
    if (p[i].empty()) return std::nullopt;
  return join(p, at);
}

std::optional<std::string> unet_to_original(const UnetKeyLayout& u, const std::string& key) {
  const int L = u.layers_per_block;
  for (auto& [d, o] : kUnetFixed) {
    const std::string prefix = std::string(d) + ".";
    if (starts_with(key, prefix) && key.find('.', prefix.size()) == std::string::npos && key.size() > prefix.size())
      return std::string(o) + "." + key.substr(prefix.size());
  }
  const Parts p = split(key);
  int i = 0, j = 0;
  if (p.size() >= 5 && p[0] == "down_blocks" && parse_index(p[1], i) && parse_index(p[3], j)) {
    const int n = 1 + i * (L + 1) + j;
    if (p[2] == "resnets" && j < L) {
      auto r = unet_resnet_to_ldm(p, 4);
      if (r) return "input_blocks." + std::to_string(n) + ".0." + *r;
    } else if (p[2] == "attentions" && j < L) {
      auto r = rest(p, 4);
      if (r) return "input_blocks." + std::to_string(n) + ".1." + *r;
    } else if (p[2] == "downsamplers" && j == 0 && p[4] == "conv" && is_leaf(p, 5)) {
      return "input_blocks." + std::to_string((i + 1) * (L + 1)) + ".0.op." + p[5];
    }
    return std::nullopt;
  }
  if (p.size() >= 4 && p[0] == "mid_block" && parse_index(p[2], j)) {
    if (p[1] == "resnets") {
      auto r = unet_resnet_to_ldm(p, 3);
      if (r) return "middle_block." + std::to_string(2 * j) + "." + *r;
    } else if (p[1] == "attentions") {
      auto r = rest(p, 3);
      if (r) return "middle_block." + std::to_string(2 * j + 1) + "." + *r;
    }
    return std::nullopt;
  }
  if (p.size() >= 5 && p[0] == "up_blocks" && parse_index(p[1], i) && parse_index(p[3], j)) {
    const int n = i * (L + 1) + j;
    if (p[2] == "resnets" && j <= L) {
      auto r = unet_resnet_to_ldm(p, 4);
      if (r) return "output_blocks." + std::to_string(n) + ".0." + *r;
    } else if (p[2] == "attentions" && j <= L) {
      auto r = rest(p, 4);
      if (r) return "output_blocks." + std::to_string(n) + ".1." + *r;
    } else if (p[2] == "upsamplers" && j == 0 && p[4] == "conv" && is_leaf(p, 5) &&
               i < int(u.up_block_has_attention.size())) {
      // The upsampler follows the last resnet (and its attention, when the block has one).
      const int sub = u.up_block_has_attention[size_t(i)] ? 2 : 1;
      return "output_blocks." + std::to_string(i * (L + 1) + L) + "." + std::to_string(sub) + ".conv." + p[5];
    }
    return std::nullopt;
  }
  return std::nullopt;
}

std::optional<std::string> unet_from_original(const UnetKeyLayout& u, const std::string& key) {
  const int L = u.layers_per_block;
  for (auto& [d, o] : kUnetFixed) {
    const std::string prefix = std::string(o) + ".";
    if (starts_with(key, prefix) && key.find('.', prefix.size()) == std::string::npos && key.size() > prefix.size())
      return std::string(d) + "." + key.substr(prefix.size());
  }
  const Parts p = split(key);
  int n = 0, m = 0;
  if (p.size() >= 4 && p[0] == "input_blocks" && parse_index(p[1], n) && parse_index(p[2], m) && n >= 1) {
    const int b = (n - 1) / (L + 1), l = (n - 1) % (L + 1);
    const std::string blk = "down_blocks." + std::to_string(b) + ".";
    if (l < L && m == 0) {
      auto r = unet_resnet_from_ldm(p, 3);
      if (r) return blk + "resnets." + std::to_string(l) + "." + *r;
    } else if (l < L && m == 1) {
      auto r = rest(p, 3);
      if (r) return blk + "attentions." + std::to_string(l) + "." + *r;
    } else if (l == L && m == 0 && p[3] == "op" && is_leaf(p, 4)) {
      return blk + "downsamplers.0.conv." + p[4];
    }
    return std::nullopt;
  }
  if (p.size() >= 3 && p[0] == "middle_block" && parse_index(p[1], n)) {
    if (n % 2 == 0) {
      auto r = unet_resnet_from_ldm(p, 2);
      if (r) return "mid_block.resnets." + std::to_string(n / 2) + "." + *r;
    } else {
      auto r = rest(p, 2);
      if (r) return "mid_block.attentions." + std::to_string(n / 2) + "." + *r;
    }
    return std::nullopt;
  }
  if (p.size() >= 4 && p[0] == "output_blocks" && parse_index(p[1], n) && parse_index(p[2], m)) {
    const int b = n / (L + 1), l = n % (L + 1);
    const std::string blk = "up_blocks." + std::to_string(b) + ".";
    // "conv" right after the sub-index is an upsampler; an attention starts with norm/proj_in/...
    const bool upsampler = p[3] == "conv" && is_leaf(p, 4);
    if (m == 0) {
      auto r = unet_resnet_from_ldm(p, 3);
      if (r) return blk + "resnets." + std::to_string(l) + "." + *r;
    } else if (upsampler && (m == 1 || m == 2) && l == L) {
      return blk + "upsamplers.0.conv." + p[4];
    } else if (m == 1 && !upsampler) {
      auto r = rest(p, 3);
      if (r) return blk + "attentions." + std::to_string(l) + "." + *r;
    }
    return std::nullopt;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- VAE

const std::pair<const char*, const char*> kVaeResnet[] = {
    {"norm1", "norm1"}, {"conv1", "conv1"}, {"norm2", "norm2"}, {"conv2", "conv2"}, {"conv_shortcut", "nin_shortcut"},
};

// Mid-block attention: diffusers (current and legacy spelling) <-> ldm AttnBlock.
struct VaeAttnName {
  const char* current;
  const char* legacy;
  const char* ldm;
  bool conv;  // ldm stores the weight as a 1x1 conv
};
const VaeAttnName kVaeAttn[] = {
    {"group_norm", "group_norm", "norm", false}, {"to_q", "query", "q", true},
    {"to_k", "key", "k", true},                  {"to_v", "value", "v", true},
    {"to_out.0", "proj_attn", "proj_out", true},
};

std::optional<std::string> vae_resnet(const Parts& p, size_t at, bool to_ldm) {
  if (!is_leaf(p, at + 1)) return std::nullopt;
  for (auto& [d, o] : kVaeResnet)
    if (p[at] == (to_ldm ? d : o)) return std::string(to_ldm ? o : d) + "." + p[at + 1];
  return std::nullopt;
}

struct Renamed {
  std::string key;
  KeyTransform transform = KeyTransform::None;
};

std::optional<Renamed> vae_attn_to_ldm(const Parts& p, size_t at) {
  const std::string r = join(p, at);
  for (const VaeAttnName& a : kVaeAttn) {
    for (const char* name : {a.current, a.legacy}) {
      const std::string prefix = std::string(name) + ".";
      if (starts_with(r, prefix) && r.find('.', prefix.size()) == std::string::npos && r.size() > prefix.size()) {
        const std::string leaf = r.substr(prefix.size());
        return Renamed{std::string(a.ldm) + "." + leaf,
                       a.conv && leaf == "weight" ? KeyTransform::ConvToLinear : KeyTransform::None};
      }
    }
  }
  return std::nullopt;
}

std::optional<Renamed> vae_attn_from_ldm(const Parts& p, size_t at) {
  if (!is_leaf(p, at + 1)) return std::nullopt;
  for (const VaeAttnName& a : kVaeAttn)
    if (p[at] == a.ldm)
      return Renamed{std::string(a.current) + "." + p[at + 1],
                     a.conv && p[at + 1] == "weight" ? KeyTransform::ConvToLinear : KeyTransform::None};
  return std::nullopt;
}

std::optional<Renamed> vae_to_original(int levels, const std::string& key) {
  const Parts p = split(key);
  if (p.size() == 2 && (p[0] == "quant_conv" || p[0] == "post_quant_conv")) return Renamed{key};
  if (p.size() < 3 || (p[0] != "encoder" && p[0] != "decoder")) return std::nullopt;
  const std::string side = p[0] + ".";
  if (p.size() == 3 && (p[1] == "conv_in" || p[1] == "conv_out")) return Renamed{key};
  if (p.size() == 3 && p[1] == "conv_norm_out") return Renamed{side + "norm_out." + p[2]};
  int i = 0, j = 0;
  if (p[1] == "mid_block" && p.size() >= 5 && parse_index(p[3], j)) {
    if (p[2] == "resnets" && j < 2) {
      auto r = vae_resnet(p, 4, true);
      if (r) return Renamed{side + "mid.block_" + std::to_string(j + 1) + "." + *r};
    } else if (p[2] == "attentions" && j == 0) {
      auto r = vae_attn_to_ldm(p, 4);
      if (r) return Renamed{side + "mid.attn_1." + r->key, r->transform};
    }
    return std::nullopt;
  }
  const bool enc = p[0] == "encoder";
  const char* blocks = enc ? "down_blocks" : "up_blocks";
  if (p[1] == blocks && p.size() >= 6 && parse_index(p[2], i) && parse_index(p[4], j)) {
    if (!enc && i >= levels) return std::nullopt;
    // The decoder numbers its levels from the lowest resolution in diffusers, from the highest in ldm.
    const int level = enc ? i : levels - 1 - i;
    const std::string blk = side + (enc ? "down." : "up.") + std::to_string(level) + ".";
    if (p[3] == "resnets") {
      auto r = vae_resnet(p, 5, true);
      if (r) return Renamed{blk + "block." + std::to_string(j) + "." + *r};
    } else if (p[3] == (enc ? "downsamplers" : "upsamplers") && j == 0 && p[5] == "conv" && is_leaf(p, 6)) {
      return Renamed{blk + (enc ? "downsample.conv." : "upsample.conv.") + p[6]};
    }
  }
  return std::nullopt;
}

std::optional<Renamed> vae_from_original(int levels, const std::string& key) {
  const Parts p = split(key);
  if (p.size() == 2 && (p[0] == "quant_conv" || p[0] == "post_quant_conv")) return Renamed{key};
  if (p.size() < 3 || (p[0] != "encoder" && p[0] != "decoder")) return std::nullopt;
  const std::string side = p[0] + ".";
  if (p.size() == 3 && (p[1] == "conv_in" || p[1] == "conv_out")) return Renamed{key};
  if (p.size() == 3 && p[1] == "norm_out") return Renamed{side + "conv_norm_out." + p[2]};
  if (p[1] == "mid" && p.size() >= 4) {
    if (p[2] == "block_1" || p[2] == "block_2") {
      auto r = vae_resnet(p, 3, false);
      if (r) return Renamed{side + "mid_block.resnets." + (p[2] == "block_1" ? "0." : "1.") + *r};
    } else if (p[2] == "attn_1") {
      auto r = vae_attn_from_ldm(p, 3);
      if (r) return Renamed{side + "mid_block.attentions.0." + r->key, r->transform};
    }
    return std::nullopt;
  }
  const bool enc = p[0] == "encoder";
  int i = 0, j = 0;
  if (p[1] == (enc ? "down" : "up") && p.size() >= 5 && parse_index(p[2], i)) {
    if (!enc && i >= levels) return std::nullopt;
    const int block = enc ? i : levels - 1 - i;
    const std::string blk = side + (enc ? "down_blocks." : "up_blocks.") + std::to_string(block) + ".";
    if (p[3] == "block" && p.size() >= 6 && parse_index(p[4], j)) {
      auto r = vae_resnet(p, 5, false);
      if (r) return Renamed{blk + "resnets." + std::to_string(j) + "." + *r};
    } else if (p[3] == (enc ? "downsample" : "upsample") && p[4] == "conv" && is_leaf(p, 5)) {
      return Renamed{blk + (enc ? "downsamplers.0.conv." : "upsamplers.0.conv.") + p[5]};
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- text encoders

// transformers >= 5.6 saves CLIPTextModel without the "text_model." level; write it back.
std::string canonical_clip_key(const std::string& key) {
  if (starts_with(key, "embeddings.") || starts_with(key, "encoder.") || starts_with(key, "final_layer_norm."))
    return "text_model." + key;
  return key;
}

bool is_clip_buffer(const std::string& key) { return ends_with(key, "position_ids"); }

std::optional<OriginalKey> clip_to_original(const TextEncoderKeyLayout& te, const std::string& key) {
  const std::string k = canonical_clip_key(key);
  if (is_clip_buffer(k)) return std::nullopt;
  if (!starts_with(k, "text_model.") && k != "text_projection.weight") return std::nullopt;
  if (!rest(split(k), 0)) return std::nullopt;
  return OriginalKey{te.original_prefix + k};
}

OriginalKeyInfo clip_from_original(const TextEncoderKeyLayout& te, const std::string& stripped) {
  OriginalKeyInfo info;
  if (is_clip_buffer(stripped)) {
    info.kind = KeyKind::Ignored;
    return info;
  }
  // Some old SD1 files lack the "text_model." level (kohya re-inserts it the same way).
  const std::string k = canonical_clip_key(stripped);
  if ((starts_with(k, "text_model.") || k == "text_projection.weight") && rest(split(k), 0)) {
    info.kind = KeyKind::Mapped;
    info.target = DiffusersKey{te.component, {k}, KeyTransform::None};
  }
  return info;
}

// OpenCLIP per-layer names: transformers <-> open_clip, below "encoder.layers.{l}." / "transformer.resblocks.{l}.".
const std::pair<const char*, const char*> kOpenClipLayer[] = {
    {"self_attn.out_proj", "attn.out_proj"}, {"layer_norm1", "ln_1"}, {"layer_norm2", "ln_2"},
    {"mlp.fc1", "mlp.c_fc"},                 {"mlp.fc2", "mlp.c_proj"},
};
const char* const kQkv[] = {"q_proj", "k_proj", "v_proj"};

std::optional<OriginalKey> openclip_to_original(const TextEncoderKeyLayout& te, const std::string& key) {
  const std::string k = canonical_clip_key(key);
  const std::string& pre = te.original_prefix;
  if (k == "text_model.embeddings.token_embedding.weight") return OriginalKey{pre + "token_embedding.weight"};
  if (k == "text_model.embeddings.position_embedding.weight") return OriginalKey{pre + "positional_embedding"};
  if (k == "text_model.final_layer_norm.weight") return OriginalKey{pre + "ln_final.weight"};
  if (k == "text_model.final_layer_norm.bias") return OriginalKey{pre + "ln_final.bias"};
  if (k == "text_projection.weight") return OriginalKey{pre + "text_projection", KeyTransform::Transpose};
  const Parts p = split(k);
  int l = 0;
  if (p.size() < 6 || p[0] != "text_model" || p[1] != "encoder" || p[2] != "layers" || !parse_index(p[3], l))
    return std::nullopt;
  const std::string block = pre + "transformer.resblocks." + std::to_string(l) + ".";
  if (p.size() == 7 && p[4] == "self_attn" && (p[6] == "weight" || p[6] == "bias")) {
    for (int part = 0; part < 3; ++part)
      if (p[5] == kQkv[part])
        return OriginalKey{block + "attn.in_proj_" + p[6], KeyTransform::FusedQkv, part};
  }
  const std::string r = join(p, 4);
  for (auto& [d, o] : kOpenClipLayer) {
    const std::string prefix = std::string(d) + ".";
    if (starts_with(r, prefix) && r.find('.', prefix.size()) == std::string::npos && r.size() > prefix.size())
      return OriginalKey{block + o + "." + r.substr(prefix.size())};
  }
  return std::nullopt;
}

OriginalKeyInfo openclip_from_original(const TextEncoderKeyLayout& te, const std::string& k) {
  OriginalKeyInfo info;
  auto mapped = [&](std::vector<std::string> keys, KeyTransform t = KeyTransform::None) {
    info.kind = KeyKind::Mapped;
    info.target = DiffusersKey{te.component, std::move(keys), t};
    return info;
  };
  if (k == "token_embedding.weight") return mapped({"text_model.embeddings.token_embedding.weight"});
  if (k == "positional_embedding") return mapped({"text_model.embeddings.position_embedding.weight"});
  if (k == "ln_final.weight") return mapped({"text_model.final_layer_norm.weight"});
  if (k == "ln_final.bias") return mapped({"text_model.final_layer_norm.bias"});
  if (k == "text_projection") {
    if (te.projection) return mapped({"text_projection.weight"}, KeyTransform::Transpose);
    info.kind = KeyKind::Ignored;  // SD2: CLIPTextModel has no projection
    return info;
  }
  if (k == "logit_scale" || is_clip_buffer(k) || k == "attn_mask") {
    info.kind = KeyKind::Ignored;
    return info;
  }
  const Parts p = split(k);
  int l = 0;
  if (p.size() < 5 || p[0] != "transformer" || p[1] != "resblocks" || !parse_index(p[2], l)) return info;
  const std::string layer = "text_model.encoder.layers." + std::to_string(l) + ".";
  const std::string r = join(p, 3);
  std::optional<OriginalKeyInfo> result;
  if (r == "attn.in_proj_weight" || r == "attn.in_proj_bias") {
    const std::string leaf = r == "attn.in_proj_weight" ? "weight" : "bias";
    std::vector<std::string> keys;
    for (const char* q : kQkv) keys.push_back(layer + "self_attn." + q + "." + leaf);
    result = mapped(keys, KeyTransform::FusedQkv);
  } else {
    for (auto& [d, o] : kOpenClipLayer) {
      const std::string prefix = std::string(o) + ".";
      if (starts_with(r, prefix) && r.find('.', prefix.size()) == std::string::npos && r.size() > prefix.size())
        result = mapped({layer + d + "." + r.substr(prefix.size())});
    }
  }
  if (!result) return info;
  // Layers past what the diffusers model keeps (SD2's 24th) are known leftovers.
  if (te.num_layers >= 0 && l >= te.num_layers) {
    info = OriginalKeyInfo{};
    info.kind = KeyKind::Ignored;
    return info;
  }
  return *result;
}

// ---------------------------------------------------------------- ignored leftovers

// ldm's noise-schedule buffers (LatentDiffusion.register_schedule) and sgm's denoiser sigmas.
const char* const kScheduleBuffers[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "denoiser.sigmas", "denoiser.log_sigmas",
    // ComfyUI's markers of v-prediction / zero-terminal-SNR models (read by detect_checkpoint).
    "v_pred", "ztsnr",
};

bool is_known_leftover(const std::string& key) {
  for (const char* b : kScheduleBuffers)
    if (key == b) return true;
  // EMA copies (chosen or skipped by the loader, never mapped by name), and the autoencoder's
  // training loss (discriminator, LPIPS) that some VAE files still carry.
  return starts_with(key, "model_ema.") || starts_with(key, "loss.") || starts_with(key, "first_stage_model.loss.");
}

bool any_with_prefix(const KeyShapes& keys, const std::string& prefix) {
  auto it = keys.lower_bound(prefix);
  return it != keys.end() && starts_with(it->first, prefix);
}

}  // namespace

// ---------------------------------------------------------------- names of things

const char* family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::Unknown: return "unknown";
    case ModelFamily::SD1: return "sd1";
    case ModelFamily::SD2: return "sd2";
    case ModelFamily::SDXL: return "sdxl";
    case ModelFamily::SDXLRefiner: return "sdxl_refiner";
    case ModelFamily::SSD1B: return "ssd1b";
  }
  return "unknown";
}

ModelFamily parse_family(const std::string& name) {
  if (name == "sd1" || name == "sd15" || name == "sd1.5") return ModelFamily::SD1;
  if (name == "sd2" || name == "sd21" || name == "sd2.1") return ModelFamily::SD2;
  if (name == "sdxl" || name == "sdxl_base") return ModelFamily::SDXL;
  if (name == "sdxl_refiner" || name == "refiner") return ModelFamily::SDXLRefiner;
  if (name == "ssd1b" || name == "ssd-1b") return ModelFamily::SSD1B;
  if (name == "unknown") return ModelFamily::Unknown;
  SD_FAIL("unknown model family '", name, "' (expected sd1, sd2, sdxl, sdxl_refiner or ssd1b)");
}

const char* prediction_name(Prediction p) {
  switch (p) {
    case Prediction::Unknown: return "unknown";
    case Prediction::Epsilon: return "epsilon";
    case Prediction::VPrediction: return "v_prediction";
  }
  return "unknown";
}

Prediction parse_prediction(const std::string& name) {
  if (name == "epsilon" || name == "eps") return Prediction::Epsilon;
  if (name == "v_prediction" || name == "v") return Prediction::VPrediction;
  if (name == "unknown") return Prediction::Unknown;
  SD_FAIL("unknown prediction type '", name, "' (expected epsilon or v_prediction)");
}

// ---------------------------------------------------------------- layouts

std::optional<UnetKeyLayout> UnetKeyLayout::from_original_keys(const std::vector<std::string>& keys) {
  // The first downsampler sits at input_blocks.{L+1}.0.op.
  int first_op = -1, max_out = -1;
  for (const std::string& k : keys) {
    const Parts p = split(k);
    int n = 0;
    if (p.size() >= 4 && p[0] == "input_blocks" && p[2] == "0" && p[3] == "op" && parse_index(p[1], n))
      first_op = first_op < 0 ? n : std::min(first_op, n);
    if (p.size() >= 3 && p[0] == "output_blocks" && parse_index(p[1], n)) max_out = std::max(max_out, n);
  }
  if (first_op < 2 || max_out < 0) return std::nullopt;
  UnetKeyLayout u;
  u.layers_per_block = first_op - 1;
  const int per = first_op;
  const int levels = (max_out + 1 + per - 1) / per;
  u.up_block_has_attention.assign(size_t(levels), false);
  for (const std::string& k : keys) {
    const Parts p = split(k);
    int n = 0;
    if (p.size() >= 4 && p[0] == "output_blocks" && parse_index(p[1], n) && p[2] == "1" && p[3] != "conv")
      u.up_block_has_attention[size_t(n / per)] = true;
  }
  return u;
}

std::optional<UnetKeyLayout> UnetKeyLayout::from_diffusers_keys(const std::vector<std::string>& keys) {
  int max_res = -1, max_up = -1;
  for (const std::string& k : keys) {
    const Parts p = split(k);
    int i = 0, j = 0;
    if (p.size() >= 4 && p[0] == "down_blocks" && p[2] == "resnets" && parse_index(p[1], i) && parse_index(p[3], j))
      max_res = std::max(max_res, j);
    if (p.size() >= 2 && p[0] == "up_blocks" && parse_index(p[1], i)) max_up = std::max(max_up, i);
  }
  if (max_res < 0 || max_up < 0) return std::nullopt;
  UnetKeyLayout u;
  u.layers_per_block = max_res + 1;
  u.up_block_has_attention.assign(size_t(max_up + 1), false);
  for (const std::string& k : keys) {
    const Parts p = split(k);
    int i = 0;
    if (p.size() >= 3 && p[0] == "up_blocks" && parse_index(p[1], i) && p[2] == "attentions")
      u.up_block_has_attention[size_t(i)] = true;
  }
  return u;
}

CheckpointLayout CheckpointLayout::preset(ModelFamily family) {
  CheckpointLayout c;
  c.family = family;
  switch (family) {
    case ModelFamily::Unknown:
    case ModelFamily::SD1:
      c.unet.up_block_has_attention = {false, true, true, true};
      if (family == ModelFamily::SD1)
        c.text_encoders.push_back({kTextEncoder, "cond_stage_model.transformer.", TextEncoderFormat::Transformers});
      break;
    case ModelFamily::SD2:
      c.unet.up_block_has_attention = {false, true, true, true};
      c.text_encoders.push_back({kTextEncoder, "cond_stage_model.model.", TextEncoderFormat::OpenClip, 23, false});
      break;
    case ModelFamily::SDXL:
    case ModelFamily::SSD1B:
      c.unet.up_block_has_attention = {true, true, false};
      c.text_encoders.push_back(
          {kTextEncoder, "conditioner.embedders.0.transformer.", TextEncoderFormat::Transformers});
      c.text_encoders.push_back({kTextEncoder2, "conditioner.embedders.1.model.", TextEncoderFormat::OpenClip, -1, true});
      break;
    case ModelFamily::SDXLRefiner:
      c.unet.up_block_has_attention = {false, true, true, false};
      c.text_encoders.push_back({kTextEncoder2, "conditioner.embedders.0.model.", TextEncoderFormat::OpenClip, -1, true});
      break;
  }
  return c;
}

const TextEncoderKeyLayout* CheckpointLayout::text_encoder(const std::string& component) const {
  for (const TextEncoderKeyLayout& te : text_encoders)
    if (te.component == component) return &te;
  return nullptr;
}

// ---------------------------------------------------------------- single keys

std::optional<OriginalKey> to_original_key(const CheckpointLayout& layout, const std::string& component,
                                           const std::string& key) {
  if (component == kUnet) {
    auto r = unet_to_original(layout.unet, key);
    if (r) return OriginalKey{layout.unet_prefix + *r};
    return std::nullopt;
  }
  if (component == kVae) {
    auto r = vae_to_original(layout.vae_levels, key);
    if (r) return OriginalKey{layout.vae_prefix + r->key, r->transform};
    return std::nullopt;
  }
  const TextEncoderKeyLayout* te = layout.text_encoder(component);
  if (!te) return std::nullopt;
  return te->format == TextEncoderFormat::OpenClip ? openclip_to_original(*te, key) : clip_to_original(*te, key);
}

OriginalKeyInfo from_original_key(const CheckpointLayout& layout, const std::string& key) {
  OriginalKeyInfo info;
  if (starts_with(key, layout.unet_prefix)) {
    auto r = unet_from_original(layout.unet, key.substr(layout.unet_prefix.size()));
    if (r) {
      info.kind = KeyKind::Mapped;
      info.target = DiffusersKey{kUnet, {*r}, KeyTransform::None};
    }
    return info;
  }
  if (is_known_leftover(key)) {
    info.kind = KeyKind::Ignored;
    return info;
  }
  for (const TextEncoderKeyLayout& te : layout.text_encoders) {
    if (!starts_with(key, te.original_prefix)) continue;
    const std::string stripped = key.substr(te.original_prefix.size());
    return te.format == TextEncoderFormat::OpenClip ? openclip_from_original(te, stripped)
                                                    : clip_from_original(te, stripped);
  }
  if (starts_with(key, layout.vae_prefix)) {
    auto r = vae_from_original(layout.vae_levels, key.substr(layout.vae_prefix.size()));
    if (r) {
      info.kind = KeyKind::Mapped;
      info.target = DiffusersKey{kVae, {r->key}, r->transform};
    }
  }
  return info;
}

std::string canonical_diffusers_key(const std::string& component, const std::string& key) {
  if (component == kVae) {
    // Only the mid-block attention has two diffusers spellings (query/key/value/proj_attn before
    // the attention refactor): "encoder.mid_block.attentions.0.query.weight".
    const Parts p = split(key);
    if (p.size() == 6 && p[1] == "mid_block" && p[2] == "attentions")
      for (const VaeAttnName& a : kVaeAttn)
        if (p[4] == a.legacy) return join(p, 0, 4) + "." + a.current + "." + p[5];
    return key;
  }
  if (component == kTextEncoder || component == kTextEncoder2) return canonical_clip_key(key);
  return key;
}

std::string ema_key(const std::string& original_unet_key) {
  // "model.diffusion_model.input_blocks.0.0.weight" -> "model_ema.diffusion_modelinput_blocks00weight"
  const size_t first_dot = original_unet_key.find('.');
  std::string tail = first_dot == std::string::npos ? original_unet_key : original_unet_key.substr(first_dot + 1);
  tail.erase(std::remove(tail.begin(), tail.end(), '.'), tail.end());
  return "model_ema." + tail;
}

// ---------------------------------------------------------------- detection

std::string DetectedCheckpoint::describe() const {
  std::ostringstream os;
  os << family_name(family);
  if (inpainting) os << " (inpainting)";
  if (has_unet) os << ", UNet with " << unet_in_channels << " input channels";
  if (has_vae) os << ", VAE under '" << vae_prefix << "'";
  if (has_ema) os << ", EMA weights present";
  os << ", prediction " << prediction_name(prediction);
  return os.str();
}

DetectedCheckpoint detect_checkpoint(const KeyShapes& keys) {
  DetectedCheckpoint d;
  const std::string unet = "model.diffusion_model.";
  d.has_unet = any_with_prefix(keys, unet);
  auto shape_of = [&](const std::string& k) -> const Shape* {
    auto it = keys.find(k);
    return it == keys.end() ? nullptr : &it->second;
  };
  if (const Shape* s = shape_of(unet + "input_blocks.0.0.weight"); s && s->size() == 4) d.unet_in_channels = (*s)[1];
  d.inpainting = d.unet_in_channels == 9;
  d.has_ema = keys.count(ema_key(unet + "input_blocks.0.0.weight")) > 0;
  if (keys.count("v_pred")) d.prediction = Prediction::VPrediction;
  d.zero_terminal_snr = keys.count("ztsnr") > 0;

  // Text encoders first: their prefixes name the family outright.
  if (any_with_prefix(keys, "conditioner.embedders.1.model.")) d.family = ModelFamily::SDXL;
  else if (any_with_prefix(keys, "conditioner.embedders.0.model.")) d.family = ModelFamily::SDXLRefiner;
  else if (any_with_prefix(keys, "cond_stage_model.model.")) d.family = ModelFamily::SD2;
  else if (any_with_prefix(keys, "cond_stage_model.transformer.")) d.family = ModelFamily::SD1;
  else if (d.has_unet) {
    // UNet only: SDXL-type UNets have label_emb (the pooled-text + time-id embedding), the refiner
    // four levels of them; SD2 uses Linear proj_in (2-D) where SD1 has a 1x1 conv (4-D).
    std::vector<std::string> names;
    for (auto& [k, _] : keys)
      if (starts_with(k, unet)) names.push_back(k.substr(unet.size()));
    auto layout = UnetKeyLayout::from_original_keys(names);
    if (shape_of(unet + "label_emb.0.0.weight")) {
      d.family = layout && layout->up_block_has_attention.size() == 4 ? ModelFamily::SDXLRefiner : ModelFamily::SDXL;
    } else if (const Shape* s = shape_of(unet + "input_blocks.1.1.proj_in.weight")) {
      d.family = s->size() == 2 ? ModelFamily::SD2 : ModelFamily::SD1;
    } else if (const Shape* k = shape_of(unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")) {
      d.family = k->back() == 1024 ? ModelFamily::SD2 : ModelFamily::SD1;
    }
  }
  if (d.family == ModelFamily::SDXL && d.has_unet && !any_with_prefix(keys, unet + "middle_block.1."))
    d.family = ModelFamily::SSD1B;  // SDXL layout without the mid-block transformer

  for (const char* prefix : {"first_stage_model.", "vae."}) {
    if (any_with_prefix(keys, std::string(prefix) + "encoder.") || any_with_prefix(keys, std::string(prefix) + "decoder.")) {
      d.vae_prefix = prefix;
      d.has_vae = true;
      break;
    }
  }
  if (!d.has_vae && !d.has_unet && (any_with_prefix(keys, "encoder.conv_in.") || any_with_prefix(keys, "decoder.conv_in."))) {
    d.vae_prefix = "";  // a standalone VAE file
    d.has_vae = true;
  }
  if (!d.has_vae) d.vae_prefix = "first_stage_model.";
  return d;
}

ModelFamily detect_diffusers_family(const ComponentKeyShapes& components) {
  auto comp = [&](const char* name) -> const KeyShapes* {
    auto it = components.find(name);
    return it == components.end() || it->second.empty() ? nullptr : &it->second;
  };
  const KeyShapes* unet = comp(kUnet);
  const KeyShapes* te = comp(kTextEncoder);
  const KeyShapes* te2 = comp(kTextEncoder2);
  ModelFamily f = ModelFamily::Unknown;
  std::optional<UnetKeyLayout> layout;
  if (unet) {
    std::vector<std::string> names;
    for (auto& [k, _] : *unet) names.push_back(k);
    layout = UnetKeyLayout::from_diffusers_keys(names);
  }
  if (te && te2) f = ModelFamily::SDXL;
  else if (te2) f = ModelFamily::SDXLRefiner;
  else if (unet && unet->count("add_embedding.linear_1.weight"))
    f = layout && layout->up_block_has_attention.size() == 4 ? ModelFamily::SDXLRefiner : ModelFamily::SDXL;
  else if (te) {
    // OpenCLIP-H (SD2) is 1024 wide with 23 layers; CLIP-L 768 wide. Fall back on the UNet's
    // proj_in rank for narrower (test) encoders.
    auto emb = te->find(canonical_clip_key("embeddings.token_embedding.weight"));
    if (emb == te->end()) emb = te->find("embeddings.token_embedding.weight");
    if (emb != te->end() && emb->second.size() == 2 && (emb->second[1] == 1024 || emb->second[1] == 768))
      f = emb->second[1] == 1024 ? ModelFamily::SD2 : ModelFamily::SD1;
  }
  if (f == ModelFamily::Unknown && unet) {
    auto p = unet->find("down_blocks.0.attentions.0.proj_in.weight");
    if (p != unet->end()) f = p->second.size() == 2 ? ModelFamily::SD2 : ModelFamily::SD1;
  }
  if (f == ModelFamily::SDXL && unet && !any_with_prefix(*unet, "mid_block.attentions.")) f = ModelFamily::SSD1B;
  return f;
}

CheckpointLayout layout_for_original_keys(ModelFamily family, const KeyShapes& keys, const std::string& vae_prefix) {
  CheckpointLayout c = CheckpointLayout::preset(family);
  c.vae_prefix = vae_prefix;
  std::vector<std::string> unet;
  int max_down = -1;
  for (auto& [k, _] : keys) {
    if (starts_with(k, c.unet_prefix)) unet.push_back(k.substr(c.unet_prefix.size()));
    if (starts_with(k, vae_prefix + "encoder.down.")) {
      const Parts p = split(k.substr(vae_prefix.size()));
      int i = 0;
      if (p.size() > 2 && parse_index(p[2], i)) max_down = std::max(max_down, i);
    }
  }
  if (auto u = UnetKeyLayout::from_original_keys(unet)) c.unet = *u;
  if (max_down >= 0) c.vae_levels = max_down + 1;
  return c;
}

CheckpointLayout layout_for_diffusers_keys(ModelFamily family, const ComponentKeyShapes& components) {
  CheckpointLayout c = CheckpointLayout::preset(family);
  if (auto it = components.find(kUnet); it != components.end()) {
    std::vector<std::string> names;
    for (auto& [k, _] : it->second) names.push_back(k);
    if (auto u = UnetKeyLayout::from_diffusers_keys(names)) c.unet = *u;
  }
  if (auto it = components.find(kVae); it != components.end()) {
    int max_down = -1;
    for (auto& [k, _] : it->second) {
      const Parts p = split(k);
      int i = 0;
      if (p.size() > 2 && p[0] == "encoder" && p[1] == "down_blocks" && parse_index(p[2], i))
        max_down = std::max(max_down, i);
    }
    if (max_down >= 0) c.vae_levels = max_down + 1;
  }
  return c;
}

}  // namespace sd::nn
