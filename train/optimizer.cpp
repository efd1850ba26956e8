#include "train/optimizer.h"

#include <map>

#include "runtime/error.h"

namespace sd::train {

namespace {

// Elements [begin, end) of a contiguous tensor as a 1-D view of its storage.
Tensor flat_range(const Tensor& t, int64_t begin, int64_t end) {
  return as_strided(t, {end - begin}, {1}, t.offset() + begin);
}

}  // namespace

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
    split_.push_back(p.master.defined() ? 1 : 0);
    grad_acc_.push_back(Tensor());
  }
  // The moments are allocated at the first step or load (ensure_moments), so a sharded (ZeRO-1)
  // optimizer never holds complete ones, not even briefly.
  exp_avg_.resize(params_.size());
  exp_avg_sq_.resize(params_.size());
}

void AdamWOptimizer::ensure_moments() {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (exp_avg_[i].defined()) continue;
    const Tensor& p = params_[i].param;
    const Shape s = sharded_ ? Shape{owned_[i].size()} : p.shape();
    exp_avg_[i] = zeros(s, DType::F32, p.device());
    exp_avg_sq_[i] = zeros(s, DType::F32, p.device());
  }
}

Tensor AdamWOptimizer::master(size_t i) const {
  const OptimizerParam& p = params_.at(i);
  if (!has_master(i)) return p.param;
  if (!sharded_) return p.master;
  SD_CHECK(full_masters_valid_, "optimizer: the f32 master of '", p.name,
           "' was read while the gradients travel through its buffer (ZeRO-1); read it between steps");
  return full_masters_[i];
}

Tensor AdamWOptimizer::grad(size_t i) const { return has_master(i) ? grad_acc_.at(i) : params_.at(i).param.grad(); }

Tensor AdamWOptimizer::ensure_grad(size_t i) {
  Tensor g = grad(i);
  if (g.defined()) return g;
  Tensor p = params_[i].param;
  g = zeros(p.shape(), DType::F32, p.device());
  if (has_master(i)) grad_acc_[i] = g;
  else p.set_grad(g);
  return grad(i);
}

void AdamWOptimizer::collect_grad(size_t i) {
  OptimizerParam& p = params_[i];
  if (!has_master(i)) return;  // f32: autograd accumulates into .grad itself
  const Tensor g = p.param.grad();
  if (!g.defined()) return;
  if (!grad_acc_[i].defined()) {
    grad_acc_[i] = copy_to(g, DType::F32, g.device());
  } else {
    axpy_(grad_acc_[i], g, 1.0);
  }
  p.param.zero_grad();
}

void AdamWOptimizer::collect_grads() {
  for (size_t i = 0; i < params_.size(); ++i) collect_grad(i);
}

std::vector<Tensor> AdamWOptimizer::grads() const {
  if (sharded_ && !shard_grad_.empty()) return shard_grad_;
  std::vector<Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) out.push_back(grad(i));
  return out;
}

void AdamWOptimizer::zero_grad() {
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].param.zero_grad();
    grad_acc_[i] = Tensor();
  }
  shard_grad_.clear();
}

void AdamWOptimizer::step(const std::vector<double>& group_lr, double grad_scale) {
  ++step_;
  SD_CHECK(!sharded_ || !shard_grad_.empty(), "optimizer: a sharded (ZeRO-1) step needs the reduced gradient shard");
  ensure_moments();
  const std::vector<Tensor> g = grads();
  // One fused call per learning-rate group (the kernel takes one lr).
  std::map<int, std::vector<AdamWSlot>> by_group;
  for (size_t i = 0; i < params_.size(); ++i) {
    const OptimizerParam& p = params_[i];
    AdamWSlot s;
    s.grad = g[i];
    s.exp_avg = exp_avg_[i];
    s.exp_avg_sq = exp_avg_sq_[i];
    if (sharded_) {
      // The owned range only; the all-gather after the step writes the model's copies.
      if (owned_[i].size() == 0) continue;
      s.master = owned_state(i, 0);
    } else {
      s.master = master(i);
      if (has_master(i) && p.param.dtype() != DType::F32) s.model_copy = p.param;
    }
    by_group[p.group].push_back(s);
  }
  for (auto& [group, slots] : by_group) {
    SD_CHECK(group >= 0 && size_t(group) < group_lr.size(), "optimizer: no learning rate for group ", group);
    AdamWConfig c = cfg_;
    c.lr = group_lr[size_t(group)];
    fused_adamw_(slots, c, step_, grad_scale);
  }
}

void AdamWOptimizer::sync_model_copies() {
  for (size_t i = 0; i < params_.size(); ++i)
    if (has_master(i)) copy_(params_[i].param, master(i));
}

int64_t AdamWOptimizer::state_bytes() const {
  int64_t n = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (exp_avg_[i].defined()) n += int64_t(exp_avg_[i].nbytes() + exp_avg_sq_[i].nbytes());
    if (!has_master(i)) continue;
    n += int64_t(sharded_ ? (master_shard_[i].defined() ? master_shard_[i].nbytes() : 0) : params_[i].master.nbytes());
  }
  return n;
}

void AdamWOptimizer::shard(std::vector<Range> owned, std::vector<Tensor> full_masters) {
  SD_CHECK(!sharded_, "optimizer: already sharded");
  SD_CHECK(owned.size() == params_.size() && full_masters.size() == params_.size(), "optimizer: shard() got ",
           owned.size(), " ranges and ", full_masters.size(), " master buffers for ", params_.size(), " parameters");
  SD_CHECK(step_ == 0, "optimizer: shard() before the first step");
  master_shard_.assign(params_.size(), Tensor());
  for (size_t i = 0; i < params_.size(); ++i) {
    OptimizerParam& p = params_[i];
    const Range r = owned[i];
    SD_CHECK(r.begin >= 0 && r.begin <= r.end && r.end <= p.param.numel(), "optimizer: range [", r.begin, ", ", r.end,
             ") outside '", p.name, "' (", p.param.numel(), " elements)");
    SD_CHECK(p.param.is_contiguous(), "optimizer: '", p.name, "' must be contiguous to be sharded");
    if (has_master(i)) {
      SD_CHECK(full_masters[i].defined() && full_masters[i].shape() == p.param.shape() &&
                   full_masters[i].dtype() == DType::F32 && full_masters[i].is_contiguous(),
               "optimizer: no full-master buffer for '", p.name, "'");
      master_shard_[i] = copy_to(flat_range(p.master, r.begin, r.end), DType::F32, p.param.device());
      p.master = Tensor();  // the full master lives in full_masters[i] now (the sync's buffer)
    }
    SD_CHECK(!exp_avg_[i].defined(), "optimizer: shard() after the moments were made");
  }
  owned_ = std::move(owned);
  full_masters_ = std::move(full_masters);
  sharded_ = true;
}

Tensor AdamWOptimizer::owned_state(size_t i, int which) const {
  SD_CHECK(sharded_, "optimizer: owned_state() of an unsharded optimizer");
  if (which == 0) return has_master(i) ? master_shard_[i] : flat_range(params_[i].param, owned_[i].begin, owned_[i].end);
  const Tensor& t = which == 1 ? exp_avg_.at(i) : exp_avg_sq_.at(i);
  return t.defined() ? t : zeros({owned_[i].size()}, DType::F32, params_[i].param.device());
  SD_FAIL("optimizer: owned_state(", which, ")");
}

void AdamWOptimizer::set_shard_grads(std::vector<Tensor> g) {
  SD_CHECK(sharded_ && g.size() == params_.size(), "optimizer: set_shard_grads() needs a sharded optimizer and one "
           "gradient per parameter");
  for (size_t i = 0; i < params_.size(); ++i) {
    SD_CHECK(!g[i].defined() || g[i].numel() == owned_[i].size(), "optimizer: shard gradient of '", params_[i].name,
             "' has ", g[i].numel(), " elements, the owned range ", owned_[i].size());
    params_[i].param.zero_grad();
    grad_acc_[i] = Tensor();
  }
  shard_grad_ = std::move(g);
}

std::vector<std::pair<std::string, Tensor>> AdamWOptimizer::state_tensors() const {
  SD_CHECK(!sharded_, "optimizer: the state of a sharded (ZeRO-1) optimizer is spread over the processes; "
           "GradientSync::gather_state assembles it");
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].param;
    out.emplace_back(params_[i].name, master(i));
    out.emplace_back("exp_avg." + params_[i].name, exp_avg_[i].defined() ? exp_avg_[i] : zeros(p.shape(), DType::F32, p.device()));
    out.emplace_back("exp_avg_sq." + params_[i].name,
                     exp_avg_sq_[i].defined() ? exp_avg_sq_[i] : zeros(p.shape(), DType::F32, p.device()));
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
  ensure_moments();
  for (size_t i = 0; i < params_.size(); ++i) {
    const OptimizerParam& p = params_[i];
    const Tensor m = get(p.name, p.param.shape()), ea = get("exp_avg." + p.name, p.param.shape()),
                 eas = get("exp_avg_sq." + p.name, p.param.shape());
    if (!sharded_) {
      copy_(master(i), m);
      copy_(exp_avg_[i], ea);
      copy_(exp_avg_sq_[i], eas);
      continue;
    }
    // ZeRO-1: every process reads the whole checkpoint and keeps its own range, whatever the world
    // size that wrote it (the file holds complete tensors): re-sharding is this slice.
    const Range r = owned_[i];
    const Tensor mc = contiguous_raw(m), eac = contiguous_raw(ea), easc = contiguous_raw(eas);
    copy_(exp_avg_[i], flat_range(eac, r.begin, r.end));
    copy_(exp_avg_sq_[i], flat_range(easc, r.begin, r.end));
    if (has_master(i)) {
      copy_(master_shard_[i], flat_range(mc, r.begin, r.end));
      copy_(full_masters_[i], mc);
    } else {
      copy_(p.param, mc);
    }
  }
  if (sharded_) full_masters_valid_ = true;
  sync_model_copies();
  step_ = step;
}

std::vector<std::pair<std::string, Tensor>> GradientSync::gather_state(AdamWOptimizer& opt) {
  return opt.state_tensors();
}

}  // namespace sd::train
