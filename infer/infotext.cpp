#include "infer/infotext.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

namespace sd::infer {

std::string format_number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
    return buf;
  }
  // Shortest representation that reads back exactly (what Python's repr prints).
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string quote_infotext_value(const std::string& v) {
  if (v.find_first_of(",:\"\n") == std::string::npos) return v;
  return nlohmann::json(v).dump();
}

std::string format_a1111_parameters(const Infotext& i) {
  std::string s = i.prompt;
  if (i.negative_prompt && !i.negative_prompt->empty()) s += "\nNegative prompt: " + *i.negative_prompt;
  std::vector<std::pair<std::string, std::string>> kv;
  kv.reserve(16 + i.extra.size());
  auto add = [&kv](std::string k, std::string v) { kv.emplace_back(std::move(k), std::move(v)); };
  add("Steps", std::to_string(i.steps));
  add("Sampler", i.sampler);
  if (!i.schedule_type.empty()) add("Schedule type", i.schedule_type);
  add("CFG scale", format_number(i.cfg_scale));
  if (i.latents.empty()) add("Seed", std::to_string(i.seed));
  else add("Latents", i.latents);
  add("Size", std::to_string(i.width) + "x" + std::to_string(i.height));
  if (!i.model_hash.empty()) add("Model hash", i.model_hash);
  if (!i.model_name.empty()) add("Model", i.model_name);
  if (i.batch_size > 1) {
    add("Batch size", std::to_string(i.batch_size));
    add("Batch pos", std::to_string(i.batch_pos));
  }
  if (i.denoising_strength) add("Denoising strength", format_number(*i.denoising_strength));
  if (i.clip_skip > 1) add("Clip skip", std::to_string(i.clip_skip));
  for (const auto& e : i.extra) kv.push_back(e);
  std::string line;
  for (const auto& [k, v] : kv) line += (line.empty() ? "" : ", ") + k + ": " + quote_infotext_value(v);
  return s + "\n" + line;
}

}  // namespace sd::infer
