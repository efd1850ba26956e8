// EMA of weights (see ema.h): diffusers' EMAModel schedule over ops/optim.h's ema_update_.
#include "train/ema.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "ops/optim.h"
#include "runtime/error.h"

namespace sd::train {
namespace {

// Parameters brought to the host per ema_update_ call when the averages are offloaded.
constexpr size_t kOffloadBatchBytes = size_t(256) << 20;

}  // namespace

void validate(const EmaConfig& cfg) {
  SD_CHECK(cfg.decay >= 0 && cfg.decay <= 1, "EMA: decay must be in [0, 1], got ", cfg.decay);
  SD_CHECK(cfg.min_decay >= 0 && cfg.min_decay <= 1, "EMA: min_decay must be in [0, 1], got ", cfg.min_decay);
  SD_CHECK(cfg.update_after_step >= 0, "EMA: update_after_step must be >= 0, got ", cfg.update_after_step);
  SD_CHECK(std::isfinite(cfg.inv_gamma) && cfg.inv_gamma > 0, "EMA: inv_gamma must be > 0, got ", cfg.inv_gamma);
  SD_CHECK(std::isfinite(cfg.power), "EMA: power must be finite, got ", cfg.power);
}

double ema_decay(const EmaConfig& cfg, int64_t optimization_step) {
  validate(cfg);
  const int64_t step = std::max<int64_t>(0, optimization_step - cfg.update_after_step - 1);
  if (step <= 0) return 0.0;
  double d;
  if (cfg.use_ema_warmup) {
    d = 1 - std::pow(1 + double(step) / cfg.inv_gamma, -cfg.power);
  } else {
    d = double(1 + step) / double(10 + step);
  }
  d = std::min(d, cfg.decay);
  return std::max(d, cfg.min_decay);
}

EmaModel::EmaModel(const std::vector<Tensor>& params, const EmaConfig& cfg, std::vector<std::string> names)
    : cfg_(cfg), names_(std::move(names)), cur_decay_(std::numeric_limits<double>::quiet_NaN()) {
  validate(cfg_);
  SD_CHECK(names_.empty() || names_.size() == params.size(), "EMA: ", names_.size(), " names for ", params.size(),
           " parameters");
  const bool fill_names = names_.empty();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    SD_CHECK(p.defined(), "EMA: parameter ", i, " is undefined");
    SD_CHECK(is_floating(p.dtype()), "EMA: parameter ", i, " (", p.name(), ") is ", p.str(), ", not floating");
    SD_CHECK(p.device() == params[0].device(), "EMA: parameter ", i, " is on ", p.device().str(), ", parameter 0 on ",
             params[0].device().str());
    shadow_.push_back(sd::copy_to(p, DType::F32, cfg_.offload ? Device::cpu() : p.device()));
    if (fill_names) names_.push_back(p.name().empty() ? std::to_string(i) : p.name());
  }
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < names_.size(); ++i) {
    const auto [it, fresh] = seen.emplace(names_[i], i);
    SD_CHECK(fresh, "EMA: parameters ", it->second, " and ", i, " have the same name \"", names_[i], "\"");
  }
}

void EmaModel::check_params(const std::vector<Tensor>& params, const char* op) const {
  SD_CHECK(params.size() == shadow_.size(), "EMA ", op, ": ", params.size(), " parameters, the EMA holds ",
           shadow_.size());
  for (size_t i = 0; i < params.size(); ++i) {
    SD_CHECK(params[i].defined(), "EMA ", op, ": parameter ", i, " (", names_[i], ") is undefined");
    SD_CHECK(params[i].shape() == shadow_[i].shape(), "EMA ", op, ": parameter ", i, " (", names_[i], ") is ",
             params[i].str(), ", its average ", shadow_[i].str());
  }
}

void EmaModel::step(const std::vector<Tensor>& params) {
  check_params(params, "step");
  for (size_t i = 0; i < params.size(); ++i)
    SD_CHECK(is_floating(params[i].dtype()), "EMA step: parameter ", i, " (", names_[i], ") is ", params[i].str());
  optimization_step_ += 1;
  const double decay = get_decay(optimization_step_);
  cur_decay_ = decay;
  if (shadow_.empty()) return;

  const Device dev = shadow_[0].device();
  std::vector<Tensor> ema, src;
  size_t staged = 0;
  auto flush = [&] {
    if (!ema.empty()) ema_update_(ema, src, decay);
    ema.clear();
    src.clear();
    staged = 0;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    if (p.device() == dev) {
      ema.push_back(shadow_[i]);
      src.push_back(p);
      continue;
    }
    // A parameter elsewhere (offloaded averages, GPU parameters): bring it over, in batches.
    if (staged > 0 && staged + p.nbytes() > kOffloadBatchBytes) flush();
    ema.push_back(shadow_[i]);
    src.push_back(sd::copy_to(p, p.dtype(), dev));
    staged += p.nbytes();
  }
  flush();
}

void EmaModel::copy_to(const std::vector<Tensor>& params) const {
  check_params(params, "copy_to");
  for (size_t i = 0; i < params.size(); ++i) copy_(params[i], shadow_[i]);
}

void EmaModel::store(const std::vector<Tensor>& params) {
  check_params(params, "store");
  std::vector<Tensor> kept;
  kept.reserve(params.size());
  for (const Tensor& p : params) kept.push_back(sd::copy_to(p, p.dtype(), Device::cpu()));
  stored_ = std::move(kept);
  has_stored_ = true;
}

void EmaModel::restore(const std::vector<Tensor>& params) {
  SD_CHECK(has_stored_, "EMA restore: nothing stored (call store() before copy_to())");
  check_params(params, "restore");
  for (size_t i = 0; i < params.size(); ++i) copy_(params[i], stored_[i]);
  stored_.clear();
  has_stored_ = false;
}

std::vector<std::pair<std::string, Tensor>> EmaModel::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(shadow_.size());
  for (size_t i = 0; i < shadow_.size(); ++i) out.emplace_back(names_[i], shadow_[i]);
  return out;
}

void EmaModel::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t optimization_step) {
  SD_CHECK(optimization_step >= 0, "EMA load_state: optimization_step must be >= 0, got ", optimization_step);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < names_.size(); ++i) index.emplace(names_[i], i);
  std::vector<const Tensor*> source(shadow_.size(), nullptr);
  for (const auto& [name, t] : tensors) {
    const auto it = index.find(name);
    SD_CHECK(it != index.end(), "EMA load_state: unknown tensor \"", name, "\" (the EMA holds ", names_.size(),
             " tensors)");
    const size_t i = it->second;
    SD_CHECK(source[i] == nullptr, "EMA load_state: tensor \"", name, "\" given twice");
    SD_CHECK(t.defined() && is_floating(t.dtype()), "EMA load_state: tensor \"", name, "\" is ",
             t.defined() ? t.str() : std::string("undefined"), ", not floating");
    SD_CHECK(t.shape() == shadow_[i].shape(), "EMA load_state: tensor \"", name, "\" is ", t.str(),
             ", the average is ", shadow_[i].str());
    source[i] = &t;
  }
  for (size_t i = 0; i < source.size(); ++i)
    SD_CHECK(source[i] != nullptr, "EMA load_state: tensor \"", names_[i], "\" is missing");
  for (size_t i = 0; i < source.size(); ++i) copy_(shadow_[i], *source[i]);
  optimization_step_ = optimization_step;
  cur_decay_ = std::numeric_limits<double>::quiet_NaN();
  stored_.clear();
  has_stored_ = false;
}

}  // namespace sd::train
