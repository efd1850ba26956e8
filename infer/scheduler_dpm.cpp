// DPMSolverMultistepScheduler (diffusers scheduling_dpmsolver_multistep.py) with the
// data-prediction algorithms: "dpmsolver++" (DPM-Solver++ 1S/2M/3M; A1111's "DPM++ 2M") and
// "sde-dpmsolver++" ("DPM++ 2M SDE", noise drawn every step), solver_type midpoint or heun,
// plain, Karras, exponential or Lu (uniform log-sigma) schedules. The model output becomes an x0
// estimate; the solver keeps the last solver_order of them and lowers the order at the start
// and (lower_order_final / a zero final sigma) at the end.
#include <algorithm>
#include <cmath>
#include <deque>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

class DPMSolver final : public Scheduler {
 public:
  explicit DPMSolver(const SchedulerConfig& c) : Scheduler(c) {
    if (cfg_.rescale_betas_zero_snr) alphas_cumprod_.back() = std::ldexp(1.0f, -24);
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample, Generator& gen) override {
    require_timesteps("step");
    SD_CHECK(model_output.shape() == sample.shape(), class_name(), ".step: model output ", model_output.str(),
             " and sample ", sample.str(), " differ in shape");
    if (step_index_ < 0) init_step_index(t, /*absent_is_last=*/true);
    const int64_t L = int64_t(timesteps_.size()), i = step_index_;
    SD_CHECK(i < L, class_name(), ".step: past the last step of the schedule");
    const bool final_lower = i == L - 1 && (cfg_.euler_at_final || (cfg_.lower_order_final && L < 15) ||
                                            cfg_.final_sigmas_type == "zero");
    const bool second_lower = i == L - 2 && cfg_.lower_order_final && L < 15;

    const Tensor x = as_f32(sample), mo = as_f32(model_output);
    outputs_.push_back(to_x0(mo, x, sigmas_[size_t(i)]));
    while (int64_t(outputs_.size()) > cfg_.solver_order) outputs_.pop_front();
    const bool sde = cfg_.algorithm_type == "sde-dpmsolver++";
    const Tensor noise = sde ? as_f32(draw_noise(model_output.shape(), DType::F32, model_output.device(), gen)) : Tensor();

    Tensor prev;
    if (cfg_.solver_order == 1 || lower_order_nums_ < 1 || final_lower) prev = first_order(x, noise);
    else if (cfg_.solver_order == 2 || lower_order_nums_ < 2 || second_lower) prev = second_order(x, noise);
    else prev = third_order(x, noise);
    if (lower_order_nums_ < cfg_.solver_order) ++lower_order_nums_;
    ++step_index_;
    return as_dtype(prev, model_output.dtype());
  }

  Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) override {
    return add_noise_alpha_sigma(original, noise, timesteps);
  }

 protected:
  void compute_schedule(int64_t n, double) override {
    const int64_t T = cfg_.num_train_timesteps;
    // lambda_min_clipped drops the noisiest timesteps whose lambda lies below it (searchsorted
    // in the increasing flipped lambda table).
    int64_t clipped = 0;
    for (int64_t k = T - 1; k >= 0; --k) {
      const float ac = alphas_cumprod_[size_t(k)];
      const float lambda = float(std::log(double(std::sqrt(ac)))) - float(std::log(double(std::sqrt(1.0f - ac))));
      if (double(lambda) < cfg_.lambda_min_clipped) ++clipped;
      else break;
    }
    const int64_t last = T - clipped;
    std::vector<double> ts;
    if (cfg_.timestep_spacing == "linspace") {
      std::vector<double> v = sched::np_linspace(0.0, double(last - 1), n + 1);
      for (size_t k = v.size() - 1; k >= 1; --k) ts.push_back(double(int64_t(sched::np_round(v[k]))));
    } else if (cfg_.timestep_spacing == "leading") {
      const int64_t ratio = last / (n + 1);
      for (int64_t k = n; k >= 1; --k) ts.push_back(double(k * ratio + cfg_.steps_offset));
    } else {
      for (double v : sched::np_arange(double(last), 0.0, -(double(T) / double(n))))
        ts.push_back(double(int64_t(sched::np_round(v)) - 1));
    }

    const std::vector<float> full = sched::sigmas_of(alphas_cumprod_);
    const std::vector<float> log_sigmas = sched::log_f32(full);
    const bool round = cfg_.beta_schedule != "squaredcos_cap_v2";
    std::vector<double> s;
    auto timesteps_of = [&](bool rounded) {
      ts.clear();
      for (double v : s) {
        const double tv = sched::sigma_to_t(v, log_sigmas);
        ts.push_back(rounded ? sched::np_round(tv) : tv);
      }
    };
    const double lo = cfg_.sigma_min ? *cfg_.sigma_min : double(full.front());
    const double hi = cfg_.sigma_max ? *cfg_.sigma_max : double(full.back());
    if (cfg_.use_karras_sigmas) {
      s = sched::karras_sigmas(lo, hi, n);
      timesteps_of(round);
    } else if (cfg_.use_lu_lambdas) {
      const double lmin = log_sigmas.front(), lmax = log_sigmas.back();
      for (double r : sched::np_linspace(0.0, 1.0, n)) s.push_back(std::exp(lmax + r * (lmin - lmax)));
      timesteps_of(round);
    } else if (cfg_.use_exponential_sigmas) {
      s = sched::exponential_sigmas(lo, hi, n);
      timesteps_of(false);
    } else {
      s = sched::np_interp(ts, full);
    }
    sigmas_.clear();
    for (double v : s) sigmas_.push_back(float(v));
    sigmas_.push_back(cfg_.final_sigmas_type == "sigma_min"
                          ? std::sqrt((1.0f - alphas_cumprod_[0]) / alphas_cumprod_[0])
                          : 0.0f);
    timesteps_.clear();
    for (double v : ts) timesteps_.push_back(double(int64_t(v)));  // .to(int64) truncates
    num_inference_steps_ = int64_t(timesteps_.size());
    outputs_.clear();
    lower_order_nums_ = 0;
  }

 private:
  // convert_model_output for the ++ algorithms: the x0 estimate.
  Tensor to_x0(const Tensor& mo, const Tensor& x, float sigma) const {
    const AlphaSigma v = alpha_sigma(sigma);
    if (cfg_.prediction_type == "epsilon") return sdiv(x - smul(mo, v.sigma), v.alpha);
    if (cfg_.prediction_type == "v_prediction") return smul(x, v.alpha) - smul(mo, v.sigma);
    return mo;  // sample
  }

  bool sde() const { return cfg_.algorithm_type == "sde-dpmsolver++"; }
  AlphaSigma at(int64_t k) const { return alpha_sigma(sigmas_[size_t(k)]); }
  Tensor noise_term(const Tensor& noise, AlphaSigma t, float h) const {
    return smul(noise, t.sigma * std::sqrt(1.0f - exp_f(-2.0f * h)));
  }

  Tensor first_order(const Tensor& x, const Tensor& noise) const {
    const AlphaSigma t = at(step_index_ + 1), s = at(step_index_);
    const float h = lambda_of(t) - lambda_of(s);
    const Tensor& m = outputs_.back();
    if (!sde()) return smul(x, t.sigma / s.sigma) - smul(m, t.alpha * (exp_f(-h) - 1.0f));
    return smul(x, t.sigma / s.sigma * exp_f(-h)) + smul(m, t.alpha * (1.0f - exp_f(-2.0f * h))) +
           noise_term(noise, t, h);
  }

  Tensor second_order(const Tensor& x, const Tensor& noise) const {
    const AlphaSigma t = at(step_index_ + 1), s0 = at(step_index_), s1 = at(step_index_ - 1);
    const float lt = lambda_of(t), l0 = lambda_of(s0), l1 = lambda_of(s1);
    const Tensor& m0 = outputs_[outputs_.size() - 1];
    const Tensor& m1 = outputs_[outputs_.size() - 2];
    const float h = lt - l0, h0 = l0 - l1;
    const float r0 = h0 / h;
    const Tensor& d0 = m0;
    const Tensor d1 = smul(m0 - m1, 1.0f / r0);
    if (!sde()) {
      const float e = exp_f(-h) - 1.0f;
      Tensor out = smul(x, t.sigma / s0.sigma) - smul(d0, t.alpha * e);
      if (cfg_.solver_type == "midpoint") return out - smul(d1, 0.5f * (t.alpha * e));
      return out + smul(d1, t.alpha * (e / h + 1.0f));
    }
    const float e2 = 1.0f - exp_f(-2.0f * h);
    Tensor out = smul(x, t.sigma / s0.sigma * exp_f(-h)) + smul(d0, t.alpha * e2);
    if (cfg_.solver_type == "midpoint") out = out + smul(d1, 0.5f * (t.alpha * e2));
    else out = out + smul(d1, t.alpha * (e2 / (-2.0f * h) + 1.0f));
    return out + noise_term(noise, t, h);
  }

  Tensor third_order(const Tensor& x, const Tensor& noise) const {
    const AlphaSigma t = at(step_index_ + 1), s0 = at(step_index_), s1 = at(step_index_ - 1),
                     s2 = at(step_index_ - 2);
    const float lt = lambda_of(t), l0 = lambda_of(s0), l1 = lambda_of(s1), l2 = lambda_of(s2);
    const size_t n = outputs_.size();
    const Tensor &m0 = outputs_[n - 1], &m1 = outputs_[n - 2], &m2 = outputs_[n - 3];
    const float h = lt - l0, h0 = l0 - l1, h1 = l1 - l2;
    const float r0 = h0 / h, r1 = h1 / h;
    const Tensor& d0 = m0;
    const Tensor d1_0 = smul(m0 - m1, 1.0f / r0), d1_1 = smul(m1 - m2, 1.0f / r1);
    const Tensor d1 = d1_0 + smul(d1_0 - d1_1, r0 / (r0 + r1));
    const Tensor d2 = smul(d1_0 - d1_1, 1.0f / (r0 + r1));
    if (!sde()) {
      const float e = exp_f(-h) - 1.0f;
      return smul(x, t.sigma / s0.sigma) - smul(d0, t.alpha * e) + smul(d1, t.alpha * (e / h + 1.0f)) -
             smul(d2, t.alpha * ((e + h) / (h * h) - 0.5f));
    }
    const float e2 = 1.0f - exp_f(-2.0f * h);
    return smul(x, t.sigma / s0.sigma * exp_f(-h)) + smul(d0, t.alpha * e2) +
           smul(d1, t.alpha * (e2 / (-2.0f * h) + 1.0f)) +
           smul(d2, t.alpha * ((e2 - 2.0f * h) / ((2.0f * h) * (2.0f * h)) - 0.5f)) + noise_term(noise, t, h);
  }

  std::deque<Tensor> outputs_;  // the last solver_order x0 estimates, oldest first
  int64_t lower_order_nums_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpm_solver(const SchedulerConfig& c) { return std::make_unique<DPMSolver>(c); }

}  // namespace sd::infer::detail
