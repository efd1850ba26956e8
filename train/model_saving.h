// The trained model as people load it:
//   full fine-tune  a diffusers pipeline folder (what pipeline.save_pretrained(output_dir) writes):
//                   model_index.json, scheduler/, tokenizer(s), vae/, text_encoder(s)/, unet/; the
//                   trained components get new weights (config.json kept), the others are copied
//                   from the starting model byte for byte (a single-file start is converted first);
//                   optionally one single-file checkpoint with the original key names
//   LoRA            see train/lora_training.h (diffusers/PEFT and kohya layouts)
// Every file is written to a temporary name and renamed.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/formats/checkpoint_keys.h"
#include "runtime/tensor.h"

namespace sd::train {

using ComponentWeights = std::map<std::string, std::vector<std::pair<std::string, Tensor>>>;

struct PipelineSaveRequest {
  std::string source;      // the pretrained folder or single file the run started from
  std::string variant;     // the source's weight variant ("" or e.g. "fp16")
  std::string output_dir;
  DType dtype = DType::F32;  // --save_precision of the written weights
  // Trained components ("unet", "text_encoder", "text_encoder_2") -> tensors by their names inside the
  // component (f32 masters or EMA averages).
  ComponentWeights trained;
  nn::ModelFamily family = nn::ModelFamily::Unknown;
  nn::Prediction prediction = nn::Prediction::Epsilon;
  std::string tokenizer_dir;  // single-file starts: the CLIP vocabulary folder
  std::string model_config;   // single-file starts: the diffusers folder whose configs gave the architecture
};

// Writes the pipeline folder into output_dir (alongside checkpoints and logs, as diffusers does).
void save_diffusers_pipeline(const PipelineSaveRequest& req);

// One .safetensors single file (ldm/sgm names) with the trained components replaced.
void save_pipeline_single_file(const PipelineSaveRequest& req, const std::string& path,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace sd::train
