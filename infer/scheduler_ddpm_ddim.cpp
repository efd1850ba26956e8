// DDPMScheduler (ancestral sampling of the trained chain, variance_type fixed_small/_log/large)
// and DDIMScheduler (eta-controlled; eta 0 is deterministic), as diffusers'
// scheduling_ddpm.py / scheduling_ddim.py `step`. Both index alphas_cumprod by the integer
// timestep; neither has a step counter.
#include <cmath>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

// x0 (and epsilon) from the model output at alpha-bar `at` (FORMATS.md §6.1).
struct Prediction {
  Tensor x0, eps;
};
Prediction predict(const std::string& type, const Tensor& mo, const Tensor& x, float at, bool need_eps) {
  const float bt = 1.0f - at;
  Prediction p;
  if (type == "epsilon") {
    p.x0 = sdiv(x - smul(mo, std::sqrt(bt)), std::sqrt(at));
    p.eps = mo;
  } else if (type == "sample") {
    p.x0 = mo;
    if (need_eps) p.eps = sdiv(x - smul(p.x0, std::sqrt(at)), std::sqrt(bt));
  } else {  // v_prediction
    p.x0 = smul(x, std::sqrt(at)) - smul(mo, std::sqrt(bt));
    if (need_eps) p.eps = smul(mo, std::sqrt(at)) + smul(x, std::sqrt(bt));
  }
  return p;
}

class Integer : public Scheduler {
 public:
  using Scheduler::Scheduler;

 protected:
  bool has_begin_index() const override { return false; }
  int64_t t_index(double t, const char* op) const {
    SD_CHECK(t == std::floor(t) && t >= 0 && t < double(cfg_.num_train_timesteps), class_name(), ".", op,
             ": timestep ", t, " is not an integer in [0, ", cfg_.num_train_timesteps, ")");
    return int64_t(t);
  }
  void check_step(const Tensor& mo, const Tensor& sample) const {
    require_timesteps("step");
    SD_CHECK(mo.shape() == sample.shape(), class_name(), ".step: model output ", mo.str(), " and sample ",
             sample.str(), " differ in shape");
  }
  void compute_schedule(int64_t n, double) override {
    SD_CHECK(n <= cfg_.num_train_timesteps, class_name(), ".set_timesteps: num_inference_steps ", n,
             " is larger than num_train_timesteps ", cfg_.num_train_timesteps);
    num_inference_steps_ = n;
    timesteps_.clear();
    for (int64_t t : sched::spaced_timesteps(cfg_.timestep_spacing, cfg_.num_train_timesteps, n, cfg_.steps_offset))
      timesteps_.push_back(double(t));
  }
};

class DDPM final : public Integer {
 public:
  using Integer::Integer;

  Tensor step(const Tensor& model_output, double t, const Tensor& sample, Generator& gen) override {
    check_step(model_output, sample);
    const Tensor mo = as_dtype(model_output, sample.dtype());
    const int64_t ti = t_index(t, "step");
    // previous_timestep: the next entry of the schedule (first match of t), -1 after the last.
    int64_t prev = -1;
    size_t i = 0;
    while (i < timesteps_.size() && timesteps_[i] != t) ++i;
    SD_CHECK(i < timesteps_.size(), class_name(), ".step: timestep ", t, " is not in the schedule");
    if (i + 1 < timesteps_.size()) prev = int64_t(timesteps_[i + 1]);

    const float at = alphas_cumprod_[size_t(ti)];
    const float ap = prev >= 0 ? alphas_cumprod_[size_t(prev)] : 1.0f;
    const float bt = 1.0f - at, bp = 1.0f - ap;
    const float cur_alpha = at / ap, cur_beta = 1.0f - cur_alpha;
    Tensor x0 = predict(cfg_.prediction_type, mo, sample, at, false).x0;
    if (cfg_.clip_sample) x0 = clamp(x0, -cfg_.clip_sample_range, cfg_.clip_sample_range);
    const float cx0 = std::sqrt(ap) * cur_beta / bt;
    const float cxt = std::sqrt(cur_alpha) * bp / bt;
    Tensor prev_sample = smul(x0, cx0) + smul(sample, cxt);
    if (ti > 0) {
      Tensor z = draw_noise(mo.shape(), mo.dtype(), mo.device(), gen);
      float var = std::max(bp / bt * cur_beta, 1e-20f);
      float scale;
      if (cfg_.variance_type == "fixed_small_log") scale = exp_f(0.5f * log_f(var));
      else if (cfg_.variance_type == "fixed_large") scale = std::sqrt(cur_beta);
      else scale = std::sqrt(var);
      prev_sample = prev_sample + smul(z, scale);
    }
    pred_original_ = x0;
    return prev_sample;
  }
};

class DDIM final : public Integer {
 public:
  explicit DDIM(const SchedulerConfig& c) : Integer(c) {
    final_alpha_ = cfg_.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample, Generator& gen) override {
    check_step(model_output, sample);
    const Tensor mo = as_dtype(model_output, sample.dtype());
    const int64_t ti = t_index(t, "step");
    // DDIM always steps back by T // n, whatever the spacing.
    const int64_t prev = ti - cfg_.num_train_timesteps / num_inference_steps_;
    const float at = alphas_cumprod_[size_t(ti)];
    const float ap = prev >= 0 ? alphas_cumprod_[size_t(prev)] : final_alpha_;
    const float bt = 1.0f - at, bp = 1.0f - ap;
    Prediction p = predict(cfg_.prediction_type, mo, sample, at, true);
    if (cfg_.clip_sample) p.x0 = clamp(p.x0, -cfg_.clip_sample_range, cfg_.clip_sample_range);
    const float variance = bp / bt * (1.0f - at / ap);
    const float std_dev = float(eta_) * std::sqrt(variance);
    Tensor prev_sample = smul(p.x0, std::sqrt(ap)) + smul(p.eps, std::sqrt(1.0f - ap - std_dev * std_dev));
    if (eta_ > 0) prev_sample = prev_sample + smul(draw_noise(mo.shape(), mo.dtype(), mo.device(), gen), std_dev);
    pred_original_ = p.x0;
    return prev_sample;
  }

 private:
  float final_alpha_ = 1.0f;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& c) { return std::make_unique<DDPM>(c); }
std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& c) { return std::make_unique<DDIM>(c); }

}  // namespace sd::infer::detail
