// Single-file checkpoints (the original ldm/sgm layout of A1111, ComfyUI, kohya: one .safetensors
// or .ckpt holding UNet, VAE and text encoder(s)) and diffusers pipeline folders, converted both
// ways. Names follow models/formats/checkpoint_keys.h; this file moves the tensors.
//
// Loading is lazy: load_single_file() reads only the file's index (the safetensors header, or the
// pickle of a .ckpt whose storages stay in the memory-mapped file) and returns one TensorSource
// per component that speaks diffusers names and maps each tensor when it is asked for. Module::load
// can read straight from it.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/formats/checkpoint_keys.h"
#include "models/formats/tensor_source.h"
#include "runtime/tensor.h"

namespace sd::nn {

// Tensors of one component by diffusers name, and a whole pipeline by component.
using TensorMap = std::map<std::string, Tensor>;
using ComponentTensors = std::map<std::string, TensorMap>;

class OriginalTensorFile;  // the file behind a source (single_file.cpp)

// One component of a single file, in diffusers names.
class SingleFileComponentSource final : public TensorSource {
 public:
  struct Entry {
    std::string original;  // the original key (the model_ema.* one when EMA weights were chosen)
    KeyTransform transform = KeyTransform::None;
    int part = -1;         // FusedQkv row block
  };
  SingleFileComponentSource(std::shared_ptr<const OriginalTensorFile> file, std::string component,
                            std::map<std::string, Entry> entries);

  bool contains(const std::string& key) const override { return entries_.count(key) > 0; }
  Shape shape(const std::string& key) const override;
  // A converted, contiguous copy (dtype, device) of the mapped tensor.
  Tensor get(const std::string& key, DType dtype, Device device) const override;
  std::vector<std::string> keys() const override;
  std::string describe() const override;

  // The tensor in the file's own dtype, mapped by a view when the transform allows (reshape,
  // transpose, row block): no copy, the memory-mapped file stays behind it.
  Tensor get_stored(const std::string& key) const;
  DType stored_dtype(const std::string& key) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }

 private:
  const Entry& entry(const std::string& key) const;
  std::shared_ptr<const OriginalTensorFile> file_;
  std::string component_;
  std::map<std::string, Entry> entries_;
};

struct SingleFileLoadOptions {
  // Take the UNet from the model_ema.* copies (full training checkpoints carry both); sd::Error
  // when the file has none.
  bool use_ema = false;
  // Overrides detection (e.g. a file detection cannot place). Unknown = detect.
  ModelFamily family = ModelFamily::Unknown;
  // Keys no rule knows raise sd::Error instead of being listed in `unknown`.
  bool strict = false;
};

struct SingleFileCheckpoint {
  std::string path;
  DetectedCheckpoint detected;  // what the keys say (prediction is always Unknown)
  ModelFamily family = ModelFamily::Unknown;  // detected, or the one asked for
  CheckpointLayout layout;
  bool used_ema = false;
  // "unet", "vae", "text_encoder", "text_encoder_2": those the file holds.
  std::map<std::string, std::shared_ptr<const SingleFileComponentSource>> components;
  std::vector<std::string> ignored;  // known leftovers skipped on purpose (schedule buffers, EMA, ...)
  std::vector<std::string> unknown;  // original keys no rule maps (left out)
  std::map<std::string, std::string> metadata;  // safetensors __metadata__
  std::optional<int64_t> global_step;           // .ckpt training step, when recorded

  // Every component's tensors in the file's dtype, as views where possible.
  ComponentTensors stored_tensors() const;
  ComponentKeyShapes key_shapes() const;
};

// A .safetensors file, or a PyTorch zip checkpoint (.ckpt / .pt / .bin; read safely, see
// models/formats/torch_checkpoint.h). The format is told by the file's first bytes, not its name.
SingleFileCheckpoint load_single_file(const std::string& path, const SingleFileLoadOptions& options = {});

struct SingleFileSaveOptions {
  // Convert floating tensors to this dtype (e.g. F16 for --half); integer tensors are kept.
  std::optional<DType> dtype;
  // Written in addition to {"format": "pt"}.
  std::map<std::string, std::string> metadata;
  // VPrediction adds ComfyUI's "v_pred" marker (an empty tensor), which detect_checkpoint reads back.
  Prediction prediction = Prediction::Unknown;
};

// diffusers names -> original names (q/k/v joined into in_proj, linear -> 1x1 conv, projection
// transposed). Buffers without an original counterpart (position_ids) are dropped; any other name
// no rule knows raises sd::Error listing them, so nothing is silently lost.
std::vector<std::pair<std::string, Tensor>> to_original_tensors(const ComponentTensors& components,
                                                                const CheckpointLayout& layout);

// Writes one .safetensors with original names (atomically, like save_safetensors). The layout
// comes from `family` with the UNet numbering taken from the UNet's own keys.
void save_single_file(const std::string& path, const ComponentTensors& components, ModelFamily family,
                      const SingleFileSaveOptions& options = {});

// ---- diffusers folders ---------------------------------------------------------------------------

struct DiffusersFolder {
  ComponentTensors components;  // unet, vae, text_encoder, text_encoder_2 as far as present
  ModelFamily family = ModelFamily::Unknown;
  // scheduler/scheduler_config.json's prediction_type, when the folder has one.
  Prediction prediction = Prediction::Unknown;
};

// Reads the weights of each component folder (diffusion_pytorch_model / model, .safetensors,
// sharded *.safetensors.index.json, or legacy .bin through the safe pickle reader; `variant` picks
// e.g. "fp16" files). Tensors are views of the mapped files.
DiffusersFolder read_diffusers_folder(const std::string& dir, const std::string& variant = "");

struct FolderToFileOptions {
  ModelFamily family = ModelFamily::Unknown;  // Unknown = detect from the components
  std::string variant;
  // save.prediction Unknown = the folder's scheduler config decides (v_prediction -> "v_pred" marker).
  SingleFileSaveOptions save;
};
void diffusers_folder_to_single_file(const std::string& dir, const std::string& out_file,
                                     const FolderToFileOptions& options = {});

struct FileToFolderOptions {
  SingleFileLoadOptions load;
  // Needed for SD2 (v or epsilon cannot be told from the weights) unless the file has a "v_pred"
  // marker; SD1/SDXL default to epsilon.
  Prediction prediction = Prediction::Unknown;
  std::optional<DType> dtype;  // convert floating tensors (e.g. F16)
  // A folder holding vocab.json and merges.txt (e.g. another pipeline's tokenizer/): copied into
  // tokenizer/ (and tokenizer_2/ for SDXL) with the matching tokenizer configs. Empty: no
  // tokenizer folders, and model_index.json lists them as [null, null].
  std::string tokenizer_from;
};
// Writes model_index.json, scheduler/scheduler_config.json and per component config.json +
// diffusion_pytorch_model.safetensors / model.safetensors (models/formats/diffusers_configs.h).
void single_file_to_diffusers_folder(const std::string& file, const std::string& out_dir,
                                     const FileToFolderOptions& options = {});

}  // namespace sd::nn
