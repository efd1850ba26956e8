// Configuration of the CLIP text transformer, with the meaning of transformers' CLIPTextConfig
// (config.json of a diffusers text_encoder/ or text_encoder_2/ folder), and presets for the
// three text encoders of Stable Diffusion (FORMATS.md §2.4).
#pragma once
#include <cstdint>
#include <string>

namespace sd::nn {

enum class ClipActivation {
  QuickGelu,  // x * sigmoid(1.702 x): OpenAI CLIP (ViT-L/14, SD1.x and SDXL's first encoder)
  Gelu,       // exact erf GELU: OpenCLIP (ViT-H/14 for SD2.x, ViT-bigG/14 for SDXL)
};

struct ClipTextConfig {
  // Defaults are those of transformers' CLIPTextConfig, so a config.json that leaves a key
  // out means what it means to transformers.
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  ClipActivation hidden_act = ClipActivation::QuickGelu;
  double layer_norm_eps = 1e-5;
  int64_t projection_dim = 512;
  // Decides where the pooled output is taken (see ClipTextModel): eos_token_id == 2 is the
  // legacy value every SD checkpoint's config still holds, meaning "the position of the
  // largest id", which is the EOS 49407 of an ordinary prompt.
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;
  int64_t pad_token_id = 1;
  // CLIPTextModelWithProjection (architectures in config.json): adds text_projection.weight
  // [projection_dim, hidden_size], no bias.
  bool with_projection = false;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // Checks the values (positive sizes, heads divide hidden_size); throws sd::Error naming the key.
  void validate(const std::string& where = "ClipTextConfig") const;

  // The config.json text of a transformers CLIPTextModel / CLIPTextModelWithProjection (or a
  // CLIPConfig's "text_config" object). A key with a value sd does not implement (hidden_act
  // "relu", attention_dropout 0.1, ...) or of the wrong type raises sd::Error naming the key
  // and `where`.
  static ClipTextConfig from_json(const std::string& json_text, const std::string& where = "config.json");
  static ClipTextConfig from_file(const std::string& path);

  // Full-size presets with the values the SD checkpoints' config.json files hold.
  static ClipTextConfig clip_vit_l14();       // SD1.x text_encoder, SDXL text_encoder
  static ClipTextConfig openclip_vit_h14();   // SD2.x text_encoder (23 of OpenCLIP's 24 layers)
  static ClipTextConfig openclip_vit_bigg14();  // SDXL text_encoder_2, with projection
};

}  // namespace sd::nn
