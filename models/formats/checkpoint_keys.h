// Parameter names of Stable Diffusion checkpoints in their two spellings: the diffusers /
// transformers names of a pipeline folder ("unet/…", "vae/…", "text_encoder/…") and the names of
// the original single-file checkpoints (ldm/sgm: "model.diffusion_model.…", "first_stage_model.…",
// "cond_stage_model.…", "conditioner.embedders.N.…"). FORMATS.md §3.2–§3.5 has the rules.
//
// This file only works on KEY NAMES (plus the few shapes that decide a family): which original
// tensor holds a diffusers parameter and how its values move (reshape, transpose, a row block of
// a fused q/k/v matrix). Moving the tensors themselves is models/formats/single_file.h.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runtime/shape.h"

namespace sd::nn {

// Component folder names of a diffusers pipeline.
inline constexpr const char* kUnet = "unet";
inline constexpr const char* kVae = "vae";
inline constexpr const char* kTextEncoder = "text_encoder";
inline constexpr const char* kTextEncoder2 = "text_encoder_2";

enum class ModelFamily {
  Unknown,      // e.g. a VAE-only file, or keys no rule recognises
  SD1,          // SD 1.x: CLIP ViT-L/14, context 768
  SD2,          // SD 2.x: OpenCLIP ViT-H/14 (23 of 24 layers used), context 1024
  SDXL,         // SDXL base (and Turbo): CLIP-L + OpenCLIP bigG, label_emb 2816
  SDXLRefiner,  // SDXL refiner: OpenCLIP bigG only, label_emb 2560, 384 base channels
  SSD1B,        // SDXL-shaped distillation without the mid-block attention
};
const char* family_name(ModelFamily f);  // "sd1", "sd2", "sdxl", "sdxl_refiner", "ssd1b", "unknown"
// Accepts the names above plus "sd15", "sd21", "sdxl_base", "refiner"; sd::Error otherwise.
ModelFamily parse_family(const std::string& name);

// What the UNet predicts. Not decidable from the weights (SD2 768-v and 512-base checkpoints have
// identical tensors), so detection says Unknown and the caller decides -- unless the file carries
// ComfyUI's marker key "v_pred" (an empty tensor some SDXL v-prediction finetunes hold).
enum class Prediction { Unknown, Epsilon, VPrediction };
const char* prediction_name(Prediction p);  // "unknown", "epsilon", "v_prediction"
Prediction parse_prediction(const std::string& name);  // "epsilon"/"eps", "v_prediction"/"v"

// How a tensor's values differ between the two spellings.
enum class KeyTransform {
  None,
  // VAE mid-block attention q/k/v/proj_out: original 1x1 conv [C, C, 1, 1], diffusers Linear [C, C].
  ConvToLinear,
  // OpenCLIP text_projection: original [D, P] used as x @ W, diffusers Linear weight [P, D].
  Transpose,
  // OpenCLIP attn.in_proj_weight [3D, D] / in_proj_bias [3D] = rows of q, k, v stacked; the
  // diffusers q_proj/k_proj/v_proj are row blocks part*D .. (part+1)*D of it.
  FusedQkv,
};

// What the UNet key arithmetic needs (FORMATS.md §3.2): the diffusers <-> ldm block numbering
// depends on layers_per_block (L), and the upsampler of an up block is output_blocks.{..}.1.conv
// when that block has no attention, .2.conv when it has.
struct UnetKeyLayout {
  int layers_per_block = 2;
  std::vector<bool> up_block_has_attention;  // diffusers up_blocks order (deepest level first)

  // From names alone (original names without the "model.diffusion_model." prefix, or diffusers
  // names); nullopt when the keys hold no UNet blocks to decide it from.
  static std::optional<UnetKeyLayout> from_original_keys(const std::vector<std::string>& keys);
  static std::optional<UnetKeyLayout> from_diffusers_keys(const std::vector<std::string>& keys);
};

enum class TextEncoderFormat {
  Transformers,  // OpenAI CLIP-L: original = prefix + the transformers name
  OpenClip,      // OpenCLIP: resblocks, fused in_proj, positional_embedding, text_projection [D, P]
};

struct TextEncoderKeyLayout {
  std::string component;        // kTextEncoder or kTextEncoder2
  std::string original_prefix;  // "cond_stage_model.transformer.", "conditioner.embedders.1.model.", ...
  TextEncoderFormat format = TextEncoderFormat::Transformers;
  // OpenCLIP: resblocks 0..num_layers-1 are kept, later ones are known leftovers (SD2 keeps 23
  // of 24: diffusers drops the last one, which SD2 never runs). -1 keeps all.
  int num_layers = -1;
  // OpenCLIP: text_projection is a parameter of the diffusers model (SDXL bigG) or a leftover (SD2).
  bool projection = false;
};

// Everything the name mapping of one whole checkpoint needs.
struct CheckpointLayout {
  ModelFamily family = ModelFamily::Unknown;
  std::string unet_prefix = "model.diffusion_model.";
  UnetKeyLayout unet;
  // "first_stage_model." in whole checkpoints; "" or "vae." in standalone VAE files.
  std::string vae_prefix = "first_stage_model.";
  int vae_levels = 4;  // len(block_out_channels): decoder.up.{levels-1-i} <-> decoder.up_blocks.{i}
  std::vector<TextEncoderKeyLayout> text_encoders;

  // Full-size presets: SD1.x, SD2.x, SDXL base (and Turbo), SDXL refiner, SSD-1B. Unknown gives
  // the SD1 UNet/VAE numbering and no text encoders.
  static CheckpointLayout preset(ModelFamily family);
  const TextEncoderKeyLayout* text_encoder(const std::string& component) const;
};

// ---- one key at a time ----------------------------------------------------------------------

struct OriginalKey {
  std::string key;  // full original name, prefix included
  KeyTransform transform = KeyTransform::None;
  int part = -1;  // FusedQkv: 0 = q, 1 = k, 2 = v
};

// diffusers (component, name) -> original name. nullopt for a name no rule knows, and for buffers
// that have no original counterpart (position_ids). Legacy VAE attention names
// (query/key/value/proj_attn) and flat transformers >= 5.6 CLIP names (without "text_model.") are
// accepted.
std::optional<OriginalKey> to_original_key(const CheckpointLayout& layout, const std::string& component,
                                           const std::string& key);

struct DiffusersKey {
  std::string component;
  // One name, or q, k, v (in that order) for a FusedQkv original.
  std::vector<std::string> keys;
  KeyTransform transform = KeyTransform::None;
};

enum class KeyKind {
  Mapped,   // a parameter of a diffusers component
  Ignored,  // a known non-parameter or a tensor diffusers drops (FORMATS.md §3.5): schedule
            // buffers, position_ids, logit_scale, model_ema.*, SD2 resblock 23, SD2 text_projection ...
  Unknown,  // no rule knows it
};

struct OriginalKeyInfo {
  KeyKind kind = KeyKind::Unknown;
  DiffusersKey target;  // when Mapped
};

// Original name -> diffusers (component, name(s)). Names are always produced in the current
// spelling (to_q, "text_model." CLIP names).
OriginalKeyInfo from_original_key(const CheckpointLayout& layout, const std::string& key);

// The diffusers names are canonicalised on the way in (legacy VAE names -> to_q..., flat CLIP names
// -> "text_model."), so a diffusers -> original -> diffusers trip returns this canonical name.
std::string canonical_diffusers_key(const std::string& component, const std::string& key);

// model_ema.* name of a UNet key (ldm's EMA keeps "model.diffusion_model.X" as
// "model_ema.diffusion_model" + X with every dot removed).
std::string ema_key(const std::string& original_unet_key);

// ---- whole checkpoints --------------------------------------------------------------------------

struct DetectedCheckpoint {
  ModelFamily family = ModelFamily::Unknown;
  Prediction prediction = Prediction::Unknown;  // VPrediction only from a "v_pred" marker key
  bool zero_terminal_snr = false;               // ComfyUI's "ztsnr" marker key
  bool has_unet = false;
  bool inpainting = false;           // conv_in takes 9 channels (latents + mask + masked image)
  int64_t unet_in_channels = 0;      // 4 normally, 9 inpainting, 8 instruct-pix2pix; 0 without a UNet
  bool has_ema = false;              // model_ema.* UNet copies present
  std::string vae_prefix;            // where the VAE keys live ("first_stage_model.", "vae.", "")
  bool has_vae = false;
  std::string describe() const;      // "sdxl (inpainting), 9 input channels, EMA weights present"
};

// Keys (and shapes) of one original single file, or of each component of a diffusers pipeline.
using KeyShapes = std::map<std::string, Shape>;
using ComponentKeyShapes = std::map<std::string, KeyShapes>;  // component -> its keys

// Family of an original single file (FORMATS.md §3.5): by the text encoders' prefixes when the
// file has them, else by the UNet's structure (label_emb / number of levels / proj_in rank), so
// tiny test models with the real names are recognised too.
DetectedCheckpoint detect_checkpoint(const KeyShapes& keys);

// Family of a diffusers pipeline from its components' keys and shapes.
ModelFamily detect_diffusers_family(const ComponentKeyShapes& components);

// The layout a file's keys imply: the family preset, with the UNet block numbering and the VAE
// level count re-derived from the keys when they are present (so non-standard UNets map too).
CheckpointLayout layout_for_original_keys(ModelFamily family, const KeyShapes& keys, const std::string& vae_prefix);
CheckpointLayout layout_for_diffusers_keys(ModelFamily family, const ComponentKeyShapes& components);

}  // namespace sd::nn
