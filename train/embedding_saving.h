// Textual-inversion outputs: the new tokens' rows (from the f32 masters) in the files people load:
//   learned_embeds.safetensors    diffusers' textual_inversion.py: {"<tok>": [n, D]}, metadata format pt
//                                 (SDXL: the first encoder's rows; learned_embeds_2.safetensors the second's,
//                                 as textual_inversion_sdxl.py writes them)
//   <name>.safetensors            A1111 / ComfyUI / kohya: {"emb_params": [n, D]} (SD1/SD2) or
//                                 {"clip_l": [n, 768], "clip_g": [n, 1280]} (SDXL); the trigger is the file name
#pragma once
#include <string>
#include <vector>

#include "runtime/tensor.h"
#include "train/training_model.h"

namespace sd::train {

// The rows of each encoder's new tokens, f32 on the CPU ([n, D] per encoder, text_encoder first).
std::vector<Tensor> learned_embeddings(const TrainingModel& model);

// diffusers' files into dir/<stem>.safetensors (and <stem>_2 for SDXL). Returns the paths written.
std::vector<std::string> save_learned_embeds(const TrainingModel& model, const std::string& dir, const std::string& stem,
                                             DType dtype);
// The A1111/ComfyUI file dir/<name>.safetensors. Returns its path.
std::string save_a1111_embedding(const TrainingModel& model, const std::string& dir, const std::string& name, DType dtype);

// A file name from a placeholder token: "<cat-toy>" -> "cat-toy" (what A1111 users type as the trigger).
std::string embedding_file_name(const std::string& placeholder);

}  // namespace sd::train
