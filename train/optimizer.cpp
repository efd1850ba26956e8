#include "train/optimizer.h"

#include <map>

#include "runtime/error.h"

namespace sd::train {

AdamWOptimizer::AdamWOptimizer(std::vector<OptimizerParam> params, AdamWConfig cfg)
    : params_(std::move(params)), cfg_(cfg) {
  for (OptimizerParam& p : params_) {
    SD_CHECK(p.param.defined() && p.param.requires_grad(), "optimizer: parameter '", p.name,
             "' is not a trainable tensor");
    if (!p.master.defined()) {
      SD_CHECK(p.param.dtype() == DType::F32, "optimizer: parameter '", p.name, "' is ", dtype_name(p.param.dtype()),
               " and needs an f32 master");
    } else {
      SD_CHECK(p.master.dtype() == DType::F32 && p.master.shape() == p.param.shape() &&
                   p.master.device() == p.param.device() && p.master.is_contiguous(),
               "optimizer: master of '", p.name, "' must be a contiguous f32 ", shape_str(p.param.shape()),
               " on the parameter's device, got ", p.master.str());
    }
    exp_avg_.push_back(zeros(p.param.shape(), DType::F32, p.param.device()));
    exp_avg_sq_.push_back(zeros(p.param.shape(), DType::F32, p.param.device()));
    grad_acc_.push_back(Tensor());
  }
}

Tensor AdamWOptimizer::master(size_t i) const {
  const OptimizerParam& p = params_.at(i);
  return p.master.defined() ? p.master : p.param;
}

void AdamWOptimizer::collect_grads() {
  for (size_t i = 0; i < params_.size(); ++i) {
    OptimizerParam& p = params_[i];
    if (!p.master.defined()) continue;  // f32: autograd accumulates into .grad itself
    const Tensor g = p.param.grad();
    if (!g.defined()) continue;
    if (!grad_acc_[i].defined()) {
      grad_acc_[i] = copy_to(g, DType::F32, g.device());
    } else {
      axpy_(grad_acc_[i], g, 1.0);
    }
    p.param.zero_grad();
  }
}

std::vector<Tensor> AdamWOptimizer::grads() const {
  std::vector<Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i)
    out.push_back(params_[i].master.defined() ? grad_acc_[i] : params_[i].param.grad());
  return out;
}

void AdamWOptimizer::zero_grad() {
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].param.zero_grad();
    grad_acc_[i] = Tensor();
  }
}

void AdamWOptimizer::step(const std::vector<double>& group_lr, double grad_scale) {
  ++step_;
  const std::vector<Tensor> g = grads();
  // One fused call per learning-rate group (the kernel takes one lr).
  std::map<int, std::vector<AdamWSlot>> by_group;
  for (size_t i = 0; i < params_.size(); ++i) {
    const OptimizerParam& p = params_[i];
    AdamWSlot s;
    s.master = master(i);
    s.grad = g[i];
    s.exp_avg = exp_avg_[i];
    s.exp_avg_sq = exp_avg_sq_[i];
    if (p.master.defined() && p.param.dtype() != DType::F32) s.model_copy = p.param;
    by_group[p.group].push_back(s);
  }
  for (auto& [group, slots] : by_group) {
    SD_CHECK(group >= 0 && size_t(group) < group_lr.size(), "optimizer: no learning rate for group ", group);
    AdamWConfig c = cfg_;
    c.lr = group_lr[size_t(group)];
    fused_adamw_(slots, c, step_, grad_scale);
  }
  // f32 params with separate masters (an f32 model with f32 masters never happens) are covered by
  // model_copy above; nothing else to copy.
}

void AdamWOptimizer::sync_model_copies() {
  for (const OptimizerParam& p : params_)
    if (p.master.defined()) copy_(p.param, p.master);
}

std::vector<std::pair<std::string, Tensor>> AdamWOptimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i].name, master(i));
    out.emplace_back("exp_avg." + params_[i].name, exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].name, exp_avg_sq_[i]);
  }
  return out;
}

void AdamWOptimizer::load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step) {
  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  auto get = [&](const std::string& key, const Shape& shape) {
    auto it = by_name.find(key);
    SD_CHECK(it != by_name.end(), "checkpoint: no optimizer tensor '", key, "'");
    SD_CHECK(it->second.shape() == shape, "checkpoint: optimizer tensor '", key, "' is ", shape_str(it->second.shape()),
             ", the model's is ", shape_str(shape));
    return it->second;
  };
  // Check everything before changing anything.
  for (const OptimizerParam& p : params_) {
    get(p.name, p.param.shape());
    get("exp_avg." + p.name, p.param.shape());
    get("exp_avg_sq." + p.name, p.param.shape());
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const OptimizerParam& p = params_[i];
    copy_(master(i), get(p.name, p.param.shape()));
    copy_(exp_avg_[i], get("exp_avg." + p.name, p.param.shape()));
    copy_(exp_avg_sq_[i], get("exp_avg_sq." + p.name, p.param.shape()));
  }
  sync_model_copies();
  step_ = step;
}

}  // namespace sd::train
