// Generation parameters in AUTOMATIC1111's "parameters" text (the PNG text chunk web UIs, civitai
// and image browsers read back):
//
//   <prompt>
//   Negative prompt: <negative prompt>                      (only when one was given)
//   Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768,
//   Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, ...
//
// The last line is "key: value" pairs joined by ", " in A1111's order; values holding ',', ':' or
// '"' are written as JSON strings, as A1111 quotes them.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sd::infer {

struct Infotext {
  std::string prompt;
  std::optional<std::string> negative_prompt;
  int64_t steps = 0;
  std::string sampler;        // "DPM++ 2M", "Euler a", ... (a1111_sampler_name)
  std::string schedule_type;  // "Karras" or "" (A1111 >= 1.9 writes it apart from the sampler)
  double cfg_scale = 0;
  uint64_t seed = 0;
  // A run started from a latents file: "name [sha256 10 hex]", written as "Latents" in place of the
  // seed (the seed did not make the noise, so it would not reproduce the image).
  std::string latents;
  int64_t width = 0, height = 0;
  std::string model_hash;     // 10 hex digits
  std::string model_name;
  int clip_skip = 0;          // A1111's count: written when > 1
  std::optional<double> denoising_strength;  // img2img
  int64_t batch_size = 1, batch_pos = 0;     // written when batch_size > 1
  // Further "key: value" pairs, written after the standard ones (e.g. RNG, Refiner, Version).
  std::vector<std::pair<std::string, std::string>> extra;
};

std::string format_a1111_parameters(const Infotext& info);

// A number as A1111 prints Python floats: 7 -> "7", 7.5 -> "7.5", 0.35 -> "0.35" (shortest form).
std::string format_number(double v);

// A value as A1111 writes it into the "key: value, ..." line: quoted as a JSON string when it holds
// ',', ':', '"' or a line break.
std::string quote_infotext_value(const std::string& v);

}  // namespace sd::infer
