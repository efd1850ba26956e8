// LoRA files (kohya-ss / LyCORIS LoCon, diffusers / PEFT in all four spellings) attached to a UNet and
// its text encoders, on the fly or merged into the weights. FORMATS.md §4.1-§4.3 has the formats.
//
// Each adapted layer gets   y = W x + m * s * up(down(x))   (on the fly, Linear/Conv2d::loras), or
// W += m * s * (up @ down)   (merged; convolutions: up [out, r] times down [r, in*kh*kw] reshaped),
// with m the user's multiplier and s the file's scale:
//   kohya       s = alpha / r, alpha = the module's ".alpha" (missing or 0: alpha = r)
//   diffusers   s = alpha / r (alpha / sqrt(r) with rsLoRA), alpha from a "<module>.alpha" key, else
//               from the file's "lora_adapter_metadata" JSON (<component>.lora_alpha, .alpha_pattern,
//               .use_rslora; patterns match a dotted suffix of the module path, as PEFT does), else r.
// r is the rank of the module's tensors (down [r, in] / [r, in, kh, kw]).
//
// Names: kohya keys are matched the way kohya matches them, by spelling every layer of the model the
// kohya way and looking the file's names up (underscores are ambiguous, so they are never turned back
// into dots). UNet layers have two kohya spellings: the diffusers module path (SD1/SD2 trainers) and the
// original ldm/sgm path (SDXL trainers: input_blocks / middle_block / output_blocks, in_layers_2 ...,
// mapped with models/formats/checkpoint_keys.h for this UNet's layout); both are accepted for every UNet.
// Text-encoder layers are matched with and without transformers' "text_model." prefix.
//
// Nothing in a file is silently dropped: keys that address no layer of the given models are listed in
// the report (an error with strict), adapter types that are not plain LoRA (DoRA magnitudes, LoHa, LoKr,
// Tucker mid weights, full diffs, LoRA biases) are an error, and so is a tensor whose shape does not fit
// its layer -- which is what a LoRA of another model family (SDXL on SD1) runs into first. A file that
// adapts no layer at all (no tensors, or no key naming a layer of the given models) is an error that
// shows a few of its keys and the names the model expects. Files are untrusted input: down/up tensors
// stored as integers or booleans, and NaN or Inf in any down, up or alpha, are errors naming the file
// and key (one NaN would blacken every image). All checks run before any layer is touched.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/clip/clip_text.h"
#include "models/formats/tensor_source.h"
#include "models/unet/unet.h"

namespace sd::nn {

enum class LoraMode {
  OnTheFly,  // adapters appended to the layers' `loras` lists; weights untouched
  Merge,     // weights changed in place (in their dtype, computed in f32); no cost per forward
};

// The models a LoRA file may address (any may be null; keys for an absent model are reported unmatched).
// SD1/SD2: unet + text_encoder; SDXL: unet + text_encoder (CLIP-L) + text_encoder_2 (OpenCLIP bigG).
struct LoraTargets {
  UNet2DConditionModel* unet = nullptr;
  ClipTextModel* text_encoder = nullptr;
  ClipTextModel* text_encoder_2 = nullptr;
};

struct LoraOptions {
  double multiplier = 1.0;                        // UNet, and the text encoders unless set below
  std::optional<double> text_encoder_multiplier;  // ComfyUI's "strength_clip"
  LoraMode mode = LoraMode::OnTheFly;
  // Merge: keep a copy of every weight the LoRA changes, so that remove() puts back the exact bits
  // (when the weight still holds what this merge left; otherwise it subtracts). Costs one copy of the
  // adapted layers. Without it remove() subtracts the same delta again, which restores each weight to
  // within the rounding of its dtype (f32: a few ulp) but not always bit for bit.
  bool keep_original = false;
  // Keys that address no layer are an error instead of being reported (when none does, it is always
  // an error).
  bool strict = false;
};

enum class LoraFormat { Kohya, Diffusers };
const char* lora_format_name(LoraFormat f);  // "kohya", "diffusers"

struct LoraReport {
  std::string source;     // the file (or the source's description)
  LoraFormat format = LoraFormat::Diffusers;
  // Component ("unet", "text_encoder", "text_encoder_2") -> number of layers that got an adapter.
  std::map<std::string, int64_t> applied;
  std::vector<std::string> unmatched;  // keys of the file that address no layer of the given models (sorted)
  int64_t total_applied() const;
  std::string str() const;  // "kohya LoRA 'x.safetensors': unet 79, text_encoder 12 layers; 0 keys unmatched"
};

// What one load_lora call attached. The models must outlive it (it holds pointers to their layers).
// Destroying it leaves the LoRA in place; remove() takes it out. Move-only: two copies would unmerge
// the same delta twice.
class LoadedLora {
 public:
  LoadedLora() = default;
  LoadedLora(const LoadedLora&) = delete;
  LoadedLora& operator=(const LoadedLora&) = delete;
  LoadedLora(LoadedLora&& o) noexcept { *this = std::move(o); }
  LoadedLora& operator=(LoadedLora&& o) noexcept {
    report_ = std::move(o.report_);
    mode_ = o.mode_;
    active_ = std::exchange(o.active_, false);
    entries_ = std::move(o.entries_);
    return *this;
  }
  const LoraReport& report() const { return report_; }
  LoraMode mode() const { return mode_; }
  bool active() const { return active_; }

  // New multipliers (text_encoder: nullopt = the same as unet). On the fly: the adapters' scales are
  // set; merged: the weights get the difference added (within rounding).
  void set_multiplier(double unet, std::optional<double> text_encoder = std::nullopt);
  // Takes the adapters out of the layers' lists, or unmerges (see LoraOptions::keep_original). Calling it
  // again does nothing.
  void remove();

  // What the file gave each adapted layer (for converting a LoRA between layouts).
  struct LayerView {
    std::string component, layer;  // "unet", "down_blocks.0.attentions.0.proj_in"
    Tensor down, up;               // as attached (on the fly: the layer's dtype; merged: f32)
    double alpha = 0;              // the file's alpha for it (its rank when the file has none)
    bool rslora = false;           // scale = alpha / sqrt(rank) (PEFT use_rslora)
    DType file_dtype = DType::F32; // the dtype the file stores the tensors in
    bool conv = false;
  };
  std::vector<LayerView> layers() const;

 private:
  friend LoadedLora load_lora(const TensorSource& src, const LoraTargets& targets, const LoraOptions& opt,
                              const std::map<std::string, std::string>* metadata);
  struct Entry {
    std::string component, layer;  // "unet", "down_blocks.0.attentions.0.proj_in"
    Linear* linear = nullptr;      // exactly one of linear / conv
    Conv2d* conv = nullptr;
    Tensor down, up;       // on the fly: the tensors in the layer's list (weight dtype); merged: f32
    double file_scale = 1.0;  // s (alpha / r)
    double alpha = 0;         // the file's alpha (r when none)
    bool rslora = false;
    DType file_dtype = DType::F32;
    double scale = 1.0;       // s * m as applied now
    Tensor original;          // keep_original: the weight before merging
    uint64_t merged_hash = 0; // keep_original: the weight's bytes right after merging (FNV-1a)
  };
  Tensor& weight(const Entry& e) const;
  Tensor delta(const Entry& e) const;  // up @ down in f32, shaped like the weight

  LoraReport report_;
  LoraMode mode_ = LoraMode::OnTheFly;
  bool active_ = false;
  std::vector<Entry> entries_;
};

// A LoRA file: .safetensors (metadata read for lora_adapter_metadata), or a torch pickle
// (.bin / .pt / .ckpt, e.g. older diffusers pytorch_lora_weights.bin).
LoadedLora load_lora(const std::string& path, const LoraTargets& targets, const LoraOptions& opt = {});
// Any tensor source; `metadata` stands for the safetensors header metadata (when null and `src` is a
// SafetensorsSource, its own metadata is used).
LoadedLora load_lora(const TensorSource& src, const LoraTargets& targets, const LoraOptions& opt = {},
                     const std::map<std::string, std::string>* metadata = nullptr);

// The kohya spellings of a UNet layer (diffusers module path): {"lora_unet_" + path with '_',
// "lora_unet_" + original ldm/sgm path with '_'} (the second is absent for layers without an original
// name). Exposed for tests and tools.
std::vector<std::string> kohya_unet_names(UNet2DConditionModel& unet, const std::string& layer);

}  // namespace sd::nn
