// config.json writers: shapes decide what they can, the family's hub config the rest.
#include "models/formats/diffusers_configs.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace sd::nn {

namespace {

using json = nlohmann::json;  // std::map-backed: keys come out sorted, as diffusers writes them

// The diffusers version whose configs these reproduce (the oracle the tests were made with).
constexpr const char* kDiffusersVersion = "0.42.1";

bool has_prefix(const KeyShapes& keys, const std::string& prefix) {
  auto it = keys.lower_bound(prefix);
  return it != keys.end() && it->first.rfind(prefix, 0) == 0;
}

const Shape* shape_of(const KeyShapes& keys, const std::string& key) {
  auto it = keys.find(key);
  return it == keys.end() ? nullptr : &it->second;
}

// Number of consecutive indices i (from 0) with a key starting "<prefix><i>.".
int count_indexed(const KeyShapes& keys, const std::string& prefix) {
  int n = 0;
  while (has_prefix(keys, prefix + std::to_string(n) + ".")) ++n;
  return n;
}

int64_t dim_of(const KeyShapes& keys, const std::string& key, size_t d, const char* what) {
  const Shape* s = shape_of(keys, key);
  SD_CHECK(s && s->size() > d, "config: cannot derive ", what, ": no tensor '", key, "' with ", d + 1, " dims");
  return (*s)[d];
}

bool is_sdxl_like(ModelFamily f) {
  return f == ModelFamily::SDXL || f == ModelFamily::SSD1B || f == ModelFamily::SDXLRefiner;
}

// Heads per level, as the hub configs give them (UNet "attention_head_dim" = number of heads).
json heads_for(ModelFamily f, const std::vector<int64_t>& channels) {
  struct Preset {
    std::vector<int64_t> channels;
    json heads;
  };
  std::vector<Preset> presets;
  switch (f) {
    case ModelFamily::Unknown:
    case ModelFamily::SD1: presets.push_back({{320, 640, 1280, 1280}, 8}); break;
    case ModelFamily::SD2: presets.push_back({{320, 640, 1280, 1280}, json::array({5, 10, 20, 20})}); break;
    case ModelFamily::SDXL:
    case ModelFamily::SSD1B: presets.push_back({{320, 640, 1280}, json::array({5, 10, 20})}); break;
    case ModelFamily::SDXLRefiner: presets.push_back({{384, 768, 1536, 1536}, json::array({6, 12, 24, 24})}); break;
  }
  for (const Preset& p : presets)
    if (p.channels == channels) return p.heads;
  // Another width: SD1 keeps 8 heads where they divide the channels; the others use 64-wide heads.
  const bool sd1 = f == ModelFamily::SD1 || f == ModelFamily::Unknown;
  json out = json::array();
  for (int64_t c : channels) {
    if (sd1 && c % 8 == 0) out.push_back(8);
    else if (c % 64 == 0) out.push_back(c / 64);
    else out.push_back(1);
  }
  return out;
}

// A list whose entries are all equal is written as that one value (how the hub configs spell it).
json compact(const std::vector<int64_t>& v) {
  if (!v.empty() && std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v[0]; })) return v[0];
  return v;
}

std::string dump(const json& j) { return j.dump(2) + "\n"; }

std::string scheduler_class(ModelFamily f, Prediction p) {
  if (is_sdxl_like(f)) return "EulerDiscreteScheduler";
  if (f == ModelFamily::SD2 && p == Prediction::VPrediction) return "DDIMScheduler";
  return "PNDMScheduler";
}

Prediction resolve_prediction(ModelFamily f, Prediction p) {
  if (p != Prediction::Unknown) return p;
  SD_CHECK(f != ModelFamily::SD2,
           "config: SD2 checkpoints do not say whether they predict v (768-v models) or epsilon (512-base models); "
           "pass the prediction type explicitly");
  return Prediction::Epsilon;  // every other SD release predicts epsilon
}

}  // namespace

std::string unet_config_json(ModelFamily family, Prediction prediction, const KeyShapes& keys) {
  prediction = resolve_prediction(family, prediction);
  const int levels = count_indexed(keys, "down_blocks.");
  SD_CHECK(levels > 0, "config: the UNet has no down_blocks");
  const int L = count_indexed(keys, "down_blocks.0.resnets.");
  json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["_diffusers_version"] = kDiffusersVersion;
  j["act_fn"] = "silu";
  j["center_input_sample"] = false;
  j["class_embed_type"] = nullptr;
  j["conv_in_kernel"] = 3;
  j["conv_out_kernel"] = 3;
  j["downsample_padding"] = 1;
  j["dual_cross_attention"] = false;
  j["flip_sin_to_cos"] = true;
  j["freq_shift"] = 0;
  j["mid_block_scale_factor"] = 1;
  j["norm_eps"] = 1e-5;
  j["norm_num_groups"] = 32;
  j["num_class_embeds"] = nullptr;
  j["only_cross_attention"] = false;
  j["resnet_time_scale_shift"] = "default";
  j["time_embedding_type"] = "positional";
  j["in_channels"] = dim_of(keys, "conv_in.weight", 1, "in_channels");
  j["out_channels"] = dim_of(keys, "conv_out.weight", 0, "out_channels");
  j["layers_per_block"] = L;

  std::vector<int64_t> channels, depth;
  json down_types = json::array(), up_types = json::array();
  int64_t cross = 0;
  bool linear_proj = false;
  for (int i = 0; i < levels; ++i) {
    const std::string blk = "down_blocks." + std::to_string(i) + ".";
    channels.push_back(dim_of(keys, blk + "resnets.0.conv1.weight", 0, "block_out_channels"));
    const bool attn = has_prefix(keys, blk + "attentions.");
    down_types.push_back(attn ? "CrossAttnDownBlock2D" : "DownBlock2D");
    depth.push_back(attn ? count_indexed(keys, blk + "attentions.0.transformer_blocks.") : 1);
    if (attn && cross == 0) {
      cross = dim_of(keys, blk + "attentions.0.transformer_blocks.0.attn2.to_k.weight", 1, "cross_attention_dim");
      linear_proj = shape_of(keys, blk + "attentions.0.proj_in.weight")->size() == 2;
    }
  }
  // Up blocks: each attention may have its own depth (SSD-1B); diffusers' default is the mirrored
  // down level's depth everywhere, written out only when the weights differ from it.
  json reverse = json::array();
  bool reverse_needed = false;
  const int up_levels = count_indexed(keys, "up_blocks.");
  for (int i = 0; i < up_levels; ++i) {
    const std::string blk = "up_blocks." + std::to_string(i) + ".";
    const bool attn = has_prefix(keys, blk + "attentions.");
    up_types.push_back(attn ? "CrossAttnUpBlock2D" : "UpBlock2D");
    std::vector<int64_t> per;
    for (int a = 0; attn && a <= L; ++a)
      per.push_back(count_indexed(keys, blk + "attentions." + std::to_string(a) + ".transformer_blocks."));
    const int64_t mirrored = depth[size_t(std::max(0, levels - 1 - i))];
    if (attn && std::any_of(per.begin(), per.end(), [&](int64_t d) { return d != mirrored; })) reverse_needed = true;
    if (attn) reverse.push_back(compact(per));
    else reverse.push_back(1);
  }
  j["block_out_channels"] = channels;
  j["down_block_types"] = down_types;
  j["up_block_types"] = up_types;
  j["cross_attention_dim"] = cross;
  j["use_linear_projection"] = linear_proj;
  j["attention_head_dim"] = heads_for(family, channels);
  // One depth shared by every level with attention is written as that number (the refiner's 4);
  // levels without attention ignore it.
  std::vector<int64_t> attn_depth;
  for (int i = 0; i < levels; ++i)
    if (down_types[size_t(i)] == "CrossAttnDownBlock2D") attn_depth.push_back(depth[size_t(i)]);
  const json compact_attn = compact(attn_depth);
  j["transformer_layers_per_block"] = !attn_depth.empty() && compact_attn.is_number() ? compact_attn : json(depth);
  if (reverse_needed) j["reverse_transformer_layers_per_block"] = reverse;
  if (has_prefix(keys, "mid_block.attentions.")) {
    j["mid_block_type"] = "UNetMidBlock2DCrossAttn";
  } else {
    j["mid_block_type"] = "UNetMidBlock2D";
  }
  if (const Shape* a = shape_of(keys, "add_embedding.linear_1.weight")) {
    j["addition_embed_type"] = "text_time";
    j["addition_embed_type_num_heads"] = 64;
    j["addition_time_embed_dim"] = 256;
    j["projection_class_embeddings_input_dim"] = (*a)[1];
  } else {
    j["addition_embed_type"] = nullptr;
  }
  const bool v768 = family == ModelFamily::SD2 && prediction == Prediction::VPrediction;
  j["sample_size"] = is_sdxl_like(family) ? 128 : v768 ? 96 : 64;
  j["upcast_attention"] = v768;
  return dump(j);
}

std::string vae_config_json(ModelFamily family, const KeyShapes& keys) {
  const int levels = count_indexed(keys, "encoder.down_blocks.");
  SD_CHECK(levels > 0, "config: the VAE has no encoder.down_blocks");
  json j;
  j["_class_name"] = "AutoencoderKL";
  j["_diffusers_version"] = kDiffusersVersion;
  j["act_fn"] = "silu";
  j["norm_num_groups"] = 32;
  std::vector<int64_t> channels;
  json down = json::array(), up = json::array();
  for (int i = 0; i < levels; ++i) {
    channels.push_back(dim_of(keys, "encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight", 0,
                              "block_out_channels"));
    down.push_back("DownEncoderBlock2D");
    up.push_back("UpDecoderBlock2D");
  }
  j["block_out_channels"] = channels;
  j["down_block_types"] = down;
  j["up_block_types"] = up;
  j["layers_per_block"] = count_indexed(keys, "encoder.down_blocks.0.resnets.");
  j["in_channels"] = dim_of(keys, "encoder.conv_in.weight", 1, "in_channels");
  j["out_channels"] = dim_of(keys, "decoder.conv_out.weight", 0, "out_channels");
  j["latent_channels"] = dim_of(keys, "decoder.conv_in.weight", 1, "latent_channels");
  j["mid_block_add_attention"] = has_prefix(keys, "encoder.mid_block.attentions.");
  j["use_quant_conv"] = shape_of(keys, "quant_conv.weight") != nullptr;
  j["use_post_quant_conv"] = shape_of(keys, "post_quant_conv.weight") != nullptr;
  if (is_sdxl_like(family)) {
    j["sample_size"] = 1024;
    j["scaling_factor"] = 0.13025;
    j["force_upcast"] = true;  // the SDXL VAE overflows in fp16
  } else {
    j["sample_size"] = family == ModelFamily::SD2 ? 768 : 512;
    j["scaling_factor"] = 0.18215;
  }
  return dump(j);
}

std::string text_encoder_config_json(ModelFamily family, const std::string& component, const KeyShapes& keys) {
  const CheckpointLayout layout = CheckpointLayout::preset(family);
  const TextEncoderKeyLayout* te = layout.text_encoder(component);
  SD_CHECK(te, "config: family ", family_name(family), " has no ", component);
  const Shape* tok = shape_of(keys, "text_model.embeddings.token_embedding.weight");
  const Shape* pos = shape_of(keys, "text_model.embeddings.position_embedding.weight");
  SD_CHECK(tok && pos && tok->size() == 2 && pos->size() == 2, "config: ", component,
           " has no text_model.embeddings token/position embeddings");
  const int64_t hidden = (*tok)[1];
  const bool projection = shape_of(keys, "text_projection.weight") != nullptr;
  json j;
  j["architectures"] = json::array({projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"});
  j["model_type"] = "clip_text_model";
  j["vocab_size"] = (*tok)[0];
  j["hidden_size"] = hidden;
  j["max_position_embeddings"] = (*pos)[0];
  j["intermediate_size"] = dim_of(keys, "text_model.encoder.layers.0.mlp.fc1.weight", 0, "intermediate_size");
  j["num_hidden_layers"] = count_indexed(keys, "text_model.encoder.layers.");
  // OpenAI CLIP-L: 12 heads of 64, quick_gelu; OpenCLIP ViT-H / bigG: 64-wide heads, exact gelu.
  j["num_attention_heads"] = hidden % 64 == 0 ? hidden / 64 : 1;
  j["hidden_act"] = te->format == TextEncoderFormat::OpenClip ? "gelu" : "quick_gelu";
  j["projection_dim"] = projection ? dim_of(keys, "text_projection.weight", 0, "projection_dim")
                                   : (te->format == TextEncoderFormat::OpenClip ? 512 : 768);
  j["layer_norm_eps"] = 1e-5;
  j["attention_dropout"] = 0.0;
  j["dropout"] = 0.0;
  j["initializer_factor"] = 1.0;
  j["initializer_range"] = 0.02;
  // The legacy token ids every SD text-encoder config holds (see ClipTextConfig::eos_token_id).
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 2;
  j["pad_token_id"] = 1;
  return dump(j);
}

std::string scheduler_config_json(ModelFamily family, Prediction prediction) {
  prediction = resolve_prediction(family, prediction);
  json j;
  const std::string cls = scheduler_class(family, prediction);
  j["_class_name"] = cls;
  j["_diffusers_version"] = kDiffusersVersion;
  j["beta_start"] = 0.00085;
  j["beta_end"] = 0.012;
  j["beta_schedule"] = "scaled_linear";
  j["num_train_timesteps"] = 1000;
  j["prediction_type"] = prediction_name(prediction);
  j["set_alpha_to_one"] = false;
  j["steps_offset"] = 1;
  j["trained_betas"] = nullptr;
  j["clip_sample"] = false;
  if (cls == "PNDMScheduler") {
    j["skip_prk_steps"] = true;
  } else if (cls == "EulerDiscreteScheduler") {
    j["interpolation_type"] = "linear";
    j["sample_max_value"] = 1.0;
    j["skip_prk_steps"] = true;
    j["timestep_spacing"] = "leading";
    j["use_karras_sigmas"] = false;
  }
  return dump(j);
}

std::string model_index_json(ModelFamily family, Prediction prediction, bool inpainting,
                             const std::vector<std::string>& components) {
  prediction = resolve_prediction(family, prediction);
  auto has = [&](const char* c) { return std::find(components.begin(), components.end(), c) != components.end(); };
  auto slot = [&](const char* c, const char* lib, const char* cls) {
    return has(c) ? json::array({lib, cls}) : json::array({nullptr, nullptr});
  };
  json j;
  j["_diffusers_version"] = kDiffusersVersion;
  j["scheduler"] = slot("scheduler", "diffusers", scheduler_class(family, prediction).c_str());
  j["unet"] = slot(kUnet, "diffusers", "UNet2DConditionModel");
  j["vae"] = slot(kVae, "diffusers", "AutoencoderKL");
  j["text_encoder"] = slot(kTextEncoder, "transformers", "CLIPTextModel");
  j["tokenizer"] = slot("tokenizer", "transformers", "CLIPTokenizer");
  if (is_sdxl_like(family)) {
    j["_class_name"] = family == ModelFamily::SDXLRefiner ? "StableDiffusionXLImg2ImgPipeline"
                       : inpainting                       ? "StableDiffusionXLInpaintPipeline"
                                                          : "StableDiffusionXLPipeline";
    j["text_encoder_2"] = slot(kTextEncoder2, "transformers", "CLIPTextModelWithProjection");
    j["tokenizer_2"] = slot("tokenizer_2", "transformers", "CLIPTokenizer");
    j["force_zeros_for_empty_prompt"] = family != ModelFamily::SDXLRefiner;
    if (family == ModelFamily::SDXLRefiner) j["requires_aesthetics_score"] = true;
  } else {
    j["_class_name"] = inpainting ? "StableDiffusionInpaintPipeline" : "StableDiffusionPipeline";
    j["safety_checker"] = json::array({nullptr, nullptr});
    j["feature_extractor"] = json::array({nullptr, nullptr});
    j["requires_safety_checker"] = false;
  }
  return dump(j);
}

}  // namespace sd::nn
