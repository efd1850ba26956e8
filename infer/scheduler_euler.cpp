// The k-diffusion-style discrete samplers of diffusers: EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler and HeunDiscreteScheduler. They walk a sigma schedule
// (sigma = sqrt((1 - ac) / ac) interpolated linearly in t at float32 timesteps, or Karras /
// exponential sigmas), feed the UNet x / sqrt(sigma^2 + 1) with the float timestep, and count
// steps with a step index (initialised from the first timestep or the img2img begin index).
#include <algorithm>
#include <cmath>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

class DiscreteSigma : public Scheduler {
 public:
  using Scheduler::Scheduler;

  Tensor scale_model_input(const Tensor& sample, double t) override {
    require_timesteps("scale_model_input");
    if (step_index_ < 0) init_step_index(t);
    const float sigma = sigmas_.at(size_t(step_index_));
    return sdiv(sample, std::sqrt(sigma * sigma + 1.0f));
  }

  // sigma-based forward process: x0 + sigma * noise at each timestep's schedule position.
  Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) override {
    require_timesteps("add_noise");
    SD_CHECK(original.shape() == noise.shape(), class_name(), ".add_noise: sample ", original.str(), " and noise ",
             noise.str(), " differ in shape");
    const std::vector<double> ts = timestep_values(timesteps);
    std::vector<float> s;
    for (double t : ts) s.push_back(sigmas_.at(size_t(noise_index(t))));
    return original + mul(noise, batch_coeff(s, noise));
  }

 protected:
  bool float_timesteps() const override { return true; }

  double init_noise_sigma_value() const override {
    const float m = sigmas_.empty() ? 1.0f : *std::max_element(sigmas_.begin(), sigmas_.end());
    if (cfg_.timestep_spacing == "linspace" || cfg_.timestep_spacing == "trailing") return m;
    return std::sqrt(m * m + 1.0f);
  }

  // Float32 timesteps of the spacing (reversed linspace / leading + offset / trailing - 1).
  std::vector<float> spaced(int64_t n) const {
    const int64_t T = cfg_.num_train_timesteps;
    std::vector<float> ts;
    if (cfg_.timestep_spacing == "linspace") {
      for (double v : sched::np_linspace(0.0, double(T - 1), n)) ts.push_back(float(v));
      std::reverse(ts.begin(), ts.end());
    } else if (cfg_.timestep_spacing == "leading") {
      for (int64_t i = n - 1; i >= 0; --i) ts.push_back(float(i * (T / n)) + float(cfg_.steps_offset));
    } else {
      for (double v : sched::np_arange(double(T), 0.0, -(double(T) / double(n))))
        ts.push_back(float(sched::np_round(v)) - 1.0f);
    }
    return ts;
  }

  // Sigmas at the timesteps (float64, before the final sigma), replacing them and the
  // timesteps with Karras / exponential ones when asked.
  std::vector<double> sigma_schedule(std::vector<double>& ts, int64_t n) const {
    const std::vector<float> full = sched::sigmas_of(alphas_cumprod_);
    std::vector<double> s = sched::np_interp(ts, full);
    if (cfg_.use_karras_sigmas || cfg_.use_exponential_sigmas) {
      const double lo = cfg_.sigma_min ? *cfg_.sigma_min : s.back();
      const double hi = cfg_.sigma_max ? *cfg_.sigma_max : s.front();
      s = cfg_.use_karras_sigmas ? sched::karras_sigmas(lo, hi, n) : sched::exponential_sigmas(lo, hi, n);
      const std::vector<float> log_sigmas = sched::log_f32(full);
      ts.clear();
      for (double v : s) ts.push_back(sched::sigma_to_t(v, log_sigmas));
    }
    return s;
  }

  // v-prediction / epsilon / sample model output -> x0 at sigma (float32, as diffusers).
  Tensor x0_of(const Tensor& mo, const Tensor& x, float sigma) const {
    if (cfg_.prediction_type == "epsilon") return x - smul(mo, sigma);
    if (cfg_.prediction_type == "v_prediction")
      return smul(mo, -sigma / std::sqrt(sigma * sigma + 1.0f)) + sdiv(x, sigma * sigma + 1.0f);
    return mo;  // sample
  }

  void check_step(const Tensor& mo, const Tensor& sample, double t) {
    require_timesteps("step");
    SD_CHECK(mo.shape() == sample.shape(), class_name(), ".step: model output ", mo.str(), " and sample ",
             sample.str(), " differ in shape");
    if (step_index_ < 0) init_step_index(t);
    SD_CHECK(step_index_ + 1 < int64_t(sigmas_.size()), class_name(), ".step: past the last step of the schedule");
  }
};

class Euler final : public DiscreteSigma {
 public:
  explicit Euler(const SchedulerConfig& c) : DiscreteSigma(c) {
    if (cfg_.rescale_betas_zero_snr) alphas_cumprod_.back() = std::ldexp(1.0f, -24);
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample_in, Generator&) override {
    check_step(model_output, sample_in, t);
    const Tensor x = as_f32(sample_in), mo = as_f32(model_output);
    const float sigma = sigmas_[size_t(step_index_)];
    const float sigma_hat = sigma * 1.0f;  // s_churn = 0: gamma = 0, so sigma_hat == sigma
    const Tensor x0 = x0_of(mo, x, sigma_hat);
    const Tensor derivative = sdiv(x - x0, sigma_hat);
    const float dt = sigmas_[size_t(step_index_ + 1)] - sigma_hat;
    Tensor prev = x + smul(derivative, dt);
    pred_original_ = x0;
    ++step_index_;
    return as_dtype(prev, model_output.dtype());
  }

 protected:
  void compute_schedule(int64_t n, double) override {
    std::vector<float> tf = spaced(n);
    std::vector<double> ts(tf.begin(), tf.end());
    std::vector<double> s = sigma_schedule(ts, n);
    const float last = cfg_.final_sigmas_type == "sigma_min"
                           ? std::sqrt((1.0f - alphas_cumprod_[0]) / alphas_cumprod_[0])
                           : 0.0f;
    sigmas_.clear();
    for (double v : s) sigmas_.push_back(float(v));
    sigmas_.push_back(last);
    timesteps_.clear();
    for (double v : ts) timesteps_.push_back(double(float(v)));
    num_inference_steps_ = n;
  }
};

class EulerAncestral final : public DiscreteSigma {
 public:
  explicit EulerAncestral(const SchedulerConfig& c) : DiscreteSigma(c) {
    if (cfg_.rescale_betas_zero_snr) alphas_cumprod_.back() = std::ldexp(1.0f, -24);
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample_in, Generator& gen) override {
    check_step(model_output, sample_in, t);
    const Tensor x = as_f32(sample_in), mo = as_f32(model_output);
    const float sigma = sigmas_[size_t(step_index_)];
    const Tensor x0 = x0_of(mo, x, sigma);
    const float from = sigma, to = sigmas_[size_t(step_index_ + 1)];
    const float up = std::sqrt(to * to * (from * from - to * to) / (from * from));
    const float down = std::sqrt(to * to - up * up);
    const Tensor derivative = sdiv(x - x0, sigma);
    Tensor prev = x + smul(derivative, down - sigma);
    // Drawn on every step, the last (sigma_up = 0) included, as diffusers does.
    Tensor z = as_f32(draw_noise(model_output.shape(), model_output.dtype(), model_output.device(), gen));
    prev = prev + smul(z, up);
    pred_original_ = x0;
    ++step_index_;
    return as_dtype(prev, model_output.dtype());
  }

 protected:
  void compute_schedule(int64_t n, double) override {
    std::vector<float> tf = spaced(n);
    std::vector<double> ts(tf.begin(), tf.end());
    const std::vector<double> s = sched::np_interp(ts, sched::sigmas_of(alphas_cumprod_));
    sigmas_.clear();
    for (double v : s) sigmas_.push_back(float(v));
    sigmas_.push_back(0.0f);
    timesteps_.assign(ts.begin(), ts.end());
    num_inference_steps_ = n;
  }
};

// Heun (Karras et al. Algorithm 2): every step but the last evaluates the model twice; the
// schedule lists the inner timesteps twice (2n - 1 entries) and the sigmas likewise.
class Heun final : public DiscreteSigma {
 public:
  using DiscreteSigma::DiscreteSigma;
  int order() const override { return 2; }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample_in, Generator&) override {
    check_step(model_output, sample_in, t);
    const Tensor mo = as_dtype(model_output, sample_in.dtype());
    const bool first = !prev_derivative_.defined();
    const float sigma = first ? sigmas_[size_t(step_index_)] : sigmas_[size_t(step_index_ - 1)];
    const float sigma_next = first ? sigmas_[size_t(step_index_ + 1)] : sigmas_[size_t(step_index_)];
    const float sigma_hat = sigma * 1.0f;  // gamma = 0
    const float sigma_input = first ? sigma_hat : sigma_next;
    Tensor x0 = x0_of(mo, sample_in, sigma_input);
    if (cfg_.clip_sample) x0 = clamp(x0, -cfg_.clip_sample_range, cfg_.clip_sample_range);
    Tensor prev;
    if (first) {
      const Tensor derivative = sdiv(sample_in - x0, sigma_hat);
      dt_ = sigma_next - sigma_hat;
      prev_derivative_ = derivative;
      sample_ = sample_in;
      prev = sample_in + smul(derivative, dt_);
    } else {
      Tensor derivative = sdiv(sample_in - x0, sigma_next);
      derivative = div(prev_derivative_ + derivative, full({}, 2.0, derivative.dtype(), derivative.device()));
      prev = sample_ + smul(derivative, dt_);
      prev_derivative_ = Tensor();
      sample_ = Tensor();
    }
    pred_original_ = x0;
    ++step_index_;
    return prev;
  }

 protected:
  void compute_schedule(int64_t n, double) override {
    std::vector<float> tf = spaced(n);
    std::vector<double> ts(tf.begin(), tf.end());
    std::vector<double> s = sigma_schedule(ts, n);
    s.push_back(0.0);
    sigmas_.clear();
    timesteps_.clear();
    for (size_t i = 0; i < s.size(); ++i) {
      sigmas_.push_back(float(s[i]));
      if (i > 0 && i + 1 < s.size()) sigmas_.push_back(float(s[i]));
    }
    for (size_t i = 0; i < ts.size(); ++i) {
      timesteps_.push_back(double(float(ts[i])));
      if (i > 0) timesteps_.push_back(double(float(ts[i])));
    }
    num_inference_steps_ = n;
    prev_derivative_ = Tensor();
    sample_ = Tensor();
  }

 private:
  Tensor prev_derivative_, sample_;
  float dt_ = 0.0f;
};

}  // namespace

std::unique_ptr<Scheduler> make_euler(const SchedulerConfig& c) { return std::make_unique<Euler>(c); }
std::unique_ptr<Scheduler> make_euler_ancestral(const SchedulerConfig& c) { return std::make_unique<EulerAncestral>(c); }
std::unique_ptr<Scheduler> make_heun(const SchedulerConfig& c) { return std::make_unique<Heun>(c); }

}  // namespace sd::infer::detail
