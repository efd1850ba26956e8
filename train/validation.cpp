#include "train/validation.h"

#include <cstdio>
#include <filesystem>

#include "autograd/node.h"
#include "infer/generate.h"
#include "infer/image_io.h"
#include "infer/infotext.h"
#include "infer/noise.h"
#include "ops/view.h"
#include "runtime/error.h"

namespace sd::train {

namespace fs = std::filesystem;

ValidationResult run_validation(const infer::Pipeline& pipe, const ValidationConfig& cfg, int64_t step,
                                const std::string& output_dir, const std::string& model_name) {
  autograd::NoGrad no_grad;
  char dirname[32];
  std::snprintf(dirname, sizeof dirname, "step-%06lld", static_cast<long long>(step));
  const fs::path dir = fs::path(output_dir) / "validation" / dirname;
  fs::create_directories(dir);
  ValidationResult out;
  std::vector<Tensor> rows;
  for (size_t p = 0; p < cfg.prompts.size(); ++p) {
    std::vector<Tensor> row;
    for (int64_t j = 0; j < cfg.num_images; ++j) {
      infer::GenerateRequest req;
      req.prompt = cfg.prompts[p];
      req.steps = cfg.steps;
      req.guidance_scale = cfg.guidance_scale;
      req.width = req.height = cfg.resolution;
      const uint64_t seed = cfg.seed + uint64_t(j);
      infer::PhiloxNoise noise(seed);
      const infer::GenerateResult res = infer::generate(pipe, req, noise);
      const Tensor img = select(res.images, 0, 0);
      infer::Infotext info;
      info.prompt = req.prompt;
      info.steps = res.steps;
      const auto [sampler, schedule] = infer::a1111_sampler_name(res.scheduler);
      info.sampler = sampler;
      info.schedule_type = schedule;
      info.cfg_scale = res.guidance_scale;
      info.seed = seed;
      info.width = res.width;
      info.height = res.height;
      info.model_name = model_name;
      info.extra.emplace_back("RNG", "philox");
      info.extra.emplace_back("Training step", std::to_string(step));
      info.extra.emplace_back("Version", "sd_train");
      char name[64];
      std::snprintf(name, sizeof name, "prompt%zu-%02lld.png", p, static_cast<long long>(j));
      const std::string path = (dir / name).string();
      infer::save_png(path, img, {{"parameters", infer::format_a1111_parameters(info)}});
      out.images.push_back(path);
      row.push_back(copy_to(img, DType::F32, Device::cpu()));
    }
    // A row: the images side by side (same size: one resolution per run).
    const int64_t h = row[0].size(1), w = row[0].size(2);
    Tensor r = zeros({3, h, w * int64_t(row.size())});
    for (size_t j = 0; j < row.size(); ++j) copy_(slice(r, 2, int64_t(j) * w, int64_t(j + 1) * w), row[j]);
    rows.push_back(r);
  }
  if (!rows.empty()) {
    const int64_t h = rows[0].size(1), w = rows[0].size(2);
    Tensor grid = zeros({3, h * int64_t(rows.size()), w});
    for (size_t i = 0; i < rows.size(); ++i) copy_(slice(grid, 1, int64_t(i) * h, int64_t(i + 1) * h), rows[i]);
    out.grid = (dir / "grid.png").string();
    std::string prompts;
    for (size_t p = 0; p < cfg.prompts.size(); ++p) prompts += (p ? "\n" : "") + cfg.prompts[p];
    infer::save_png(out.grid, grid, {{"prompts", prompts}, {"Training step", std::to_string(step)}});
  }
  return out;
}

}  // namespace sd::train
