// UniPCMultistepScheduler (diffusers scheduling_unipc_multistep.py): UniP predictor + UniC
// corrector with B(h) = h (bh1) or expm1(h) (bh2), data (predict_x0) or noise prediction,
// orders 1-3. Each step first corrects the sample the previous predictor produced (using the new
// model output), then predicts the next one. Weights beyond the first order come from small
// linear systems (torch.linalg.solve in diffusers), solved here by Gaussian elimination with
// partial pivoting in float32.
#include <algorithm>
#include <cmath>
#include <deque>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

// Solves the k x k system a x = b (row-major): Gaussian elimination with partial pivoting in
// float64, rounded to float32 (diffusers calls torch.linalg.solve on float32 tensors, i.e.
// LAPACK sgesv; the double solve is within an ulp of it).
std::vector<float> solve(const std::vector<float>& af, const std::vector<float>& bf) {
  const size_t k = bf.size();
  std::vector<double> a(af.begin(), af.end()), b(bf.begin(), bf.end());
  for (size_t c = 0; c < k; ++c) {
    size_t p = c;
    for (size_t r = c + 1; r < k; ++r)
      if (std::fabs(a[r * k + c]) > std::fabs(a[p * k + c])) p = r;
    if (p != c) {
      for (size_t j = 0; j < k; ++j) std::swap(a[c * k + j], a[p * k + j]);
      std::swap(b[c], b[p]);
    }
    for (size_t r = c + 1; r < k; ++r) {
      const double f = a[r * k + c] / a[c * k + c];
      for (size_t j = c; j < k; ++j) a[r * k + j] -= f * a[c * k + j];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> x(k);
  for (size_t c = k; c-- > 0;) {
    double v = b[c];
    for (size_t j = c + 1; j < k; ++j) v -= a[c * k + j] * x[j];
    x[c] = v / a[c * k + c];
  }
  return std::vector<float>(x.begin(), x.end());
}

class UniPC final : public Scheduler {
 public:
  explicit UniPC(const SchedulerConfig& c) : Scheduler(c) {
    if (cfg_.rescale_betas_zero_snr) alphas_cumprod_.back() = std::ldexp(1.0f, -24);
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample_in, Generator&) override {
    require_timesteps("step");
    SD_CHECK(model_output.shape() == sample_in.shape(), class_name(), ".step: model output ", model_output.str(),
             " and sample ", sample_in.str(), " differ in shape");
    if (step_index_ < 0) init_step_index(t, /*absent_is_last=*/true);
    const int64_t L = int64_t(timesteps_.size()), i = step_index_;
    SD_CHECK(i < L, class_name(), ".step: past the last step of the schedule");
    const Tensor mo = as_dtype(model_output, sample_in.dtype());
    Tensor sample = sample_in;
    const bool disabled = std::find(cfg_.disable_corrector.begin(), cfg_.disable_corrector.end(), i - 1) !=
                          cfg_.disable_corrector.end();
    const bool use_corrector = i > 0 && !disabled && last_sample_.defined();
    const Tensor converted = convert(mo, sample);
    if (use_corrector) sample = corrector(converted, this_order_);
    outputs_.push_back(converted);
    while (int64_t(outputs_.size()) > cfg_.solver_order) outputs_.pop_front();
    int64_t order = cfg_.lower_order_final ? std::min(cfg_.solver_order, L - i) : cfg_.solver_order;
    this_order_ = std::min(order, lower_order_nums_ + 1);
    last_sample_ = sample;
    Tensor prev = predictor(sample, this_order_);
    if (lower_order_nums_ < cfg_.solver_order) ++lower_order_nums_;
    ++step_index_;
    return prev;
  }

  Tensor add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) override {
    return add_noise_alpha_sigma(original, noise, timesteps);
  }

 protected:
  void compute_schedule(int64_t n, double) override {
    const int64_t T = cfg_.num_train_timesteps;
    std::vector<double> ts;
    if (cfg_.timestep_spacing == "linspace") {
      std::vector<double> v = sched::np_linspace(0.0, double(T - 1), n + 1);
      for (size_t k = v.size() - 1; k >= 1; --k) ts.push_back(double(int64_t(sched::np_round(v[k]))));
    } else if (cfg_.timestep_spacing == "leading") {
      const int64_t ratio = T / (n + 1);
      for (int64_t k = n; k >= 1; --k) ts.push_back(double(k * ratio + cfg_.steps_offset));
    } else {
      for (double v : sched::np_arange(double(T), 0.0, -(double(T) / double(n))))
        ts.push_back(double(int64_t(sched::np_round(v)) - 1));
    }
    const std::vector<float> full = sched::sigmas_of(alphas_cumprod_);
    std::vector<double> s;
    float last;
    if (cfg_.use_karras_sigmas || cfg_.use_exponential_sigmas) {
      const std::vector<float> log_sigmas = sched::log_f32(full);
      const double lo = cfg_.sigma_min ? *cfg_.sigma_min : double(full.front());
      const double hi = cfg_.sigma_max ? *cfg_.sigma_max : double(full.back());
      s = cfg_.use_karras_sigmas ? sched::karras_sigmas(lo, hi, n) : sched::exponential_sigmas(lo, hi, n);
      ts.clear();
      for (double v : s) {
        const double tv = sched::sigma_to_t(v, log_sigmas);
        ts.push_back(cfg_.use_karras_sigmas ? sched::np_round(tv) : tv);  // exponential: truncated below
      }
      last = cfg_.final_sigmas_type == "sigma_min" ? float(s.back()) : 0.0f;
    } else {
      s = sched::np_interp(ts, full);
      last = cfg_.final_sigmas_type == "sigma_min" ? std::sqrt((1.0f - alphas_cumprod_[0]) / alphas_cumprod_[0])
                                                   : 0.0f;
    }
    sigmas_.clear();
    for (double v : s) sigmas_.push_back(float(v));
    sigmas_.push_back(last);
    timesteps_.clear();
    for (double v : ts) timesteps_.push_back(double(int64_t(v)));
    num_inference_steps_ = int64_t(timesteps_.size());
    outputs_.clear();
    lower_order_nums_ = 0;
    this_order_ = 0;
    last_sample_ = Tensor();
  }

 private:
  AlphaSigma at(int64_t k) const { return alpha_sigma(sigmas_[size_t(k)]); }

  // convert_model_output: x0 (predict_x0) or epsilon.
  Tensor convert(const Tensor& mo, const Tensor& x) const {
    const AlphaSigma v = at(step_index_);
    const std::string& p = cfg_.prediction_type;
    if (cfg_.predict_x0) {
      if (p == "epsilon") return sdiv(x - smul(mo, v.sigma), v.alpha);
      if (p == "v_prediction") return smul(x, v.alpha) - smul(mo, v.sigma);
      return mo;
    }
    if (p == "epsilon") return mo;
    if (p == "v_prediction") return smul(mo, v.alpha) + smul(x, v.sigma);
    return sdiv(x - smul(mo, v.alpha), v.sigma);  // sample
  }

  // The shared coefficients of both updates for step size h (lambda_t - lambda_s0): the
  // r_k of the earlier outputs, h_phi_1, B(h) and the right-hand sides b.
  struct Coeffs {
    float hh, h_phi_1, b_h;
    std::vector<float> rks, b;
  };
  Coeffs coeffs(float h, const std::vector<float>& rks_in, int64_t order) const {
    Coeffs c;
    c.hh = cfg_.predict_x0 ? -h : h;
    c.h_phi_1 = expm1_f(c.hh);
    float h_phi_k = c.h_phi_1 / c.hh - 1.0f;
    float factorial = 1.0f;
    c.b_h = cfg_.solver_type == "bh1" ? c.hh : expm1_f(c.hh);
    c.rks = rks_in;
    c.rks.push_back(1.0f);
    for (int64_t k = 1; k <= order; ++k) {
      c.b.push_back(h_phi_k * factorial / c.b_h);
      factorial *= float(k + 1);
      h_phi_k = h_phi_k / c.hh - float(1.0 / double(factorial));
    }
    return c;
  }
  // R[k][j] = rks[j]^k for a k x k system.
  static std::vector<float> vandermonde(const std::vector<float>& rks, size_t k) {
    std::vector<float> r(k * k);
    for (size_t row = 0; row < k; ++row)
      for (size_t j = 0; j < k; ++j) r[row * k + j] = row == 0 ? 1.0f : std::pow(rks[j], float(row));
    return r;
  }
  // The base update x_t_ from the sample at s0 and the newest output m0.
  Tensor base(const Tensor& x, const Tensor& m0, AlphaSigma t, AlphaSigma s0, float h_phi_1) const {
    if (cfg_.predict_x0) return smul(x, t.sigma / s0.sigma) - smul(m0, t.alpha * h_phi_1);
    return smul(x, t.alpha / s0.alpha) - smul(m0, t.sigma * h_phi_1);
  }

  // multistep_uni_p_bh_update: from sample at step_index to step_index + 1.
  Tensor predictor(const Tensor& x, int64_t order) const {
    const AlphaSigma t = at(step_index_ + 1), s0 = at(step_index_);
    const float l0 = lambda_of(s0);
    const float h = lambda_of(t) - l0;
    const Tensor& m0 = outputs_.back();
    std::vector<float> rks;
    std::vector<Tensor> d1s;
    for (int64_t k = 1; k < order; ++k) {
      const float rk = (lambda_of(at(step_index_ - k)) - l0) / h;
      rks.push_back(rk);
      d1s.push_back(sdiv(outputs_[outputs_.size() - 1 - size_t(k)] - m0, rk));
    }
    const Coeffs c = coeffs(h, rks, order);
    Tensor out = base(x, m0, t, s0, c.h_phi_1);
    // First order: no correction term. (diffusers subtracts alpha_t * B(h) * 0, which is NaN on
    // the step to sigma 0 with bh1, where B(h) = -h = -inf; sd returns the finite update.)
    if (d1s.empty()) return out;
    std::vector<float> rhos;
    if (order == 2) rhos = {0.5f};
    else rhos = solve(vandermonde(c.rks, size_t(order - 1)), std::vector<float>(c.b.begin(), c.b.end() - 1));
    Tensor res = smul(d1s[0], rhos[0]);
    for (size_t k = 1; k < d1s.size(); ++k) res = res + smul(d1s[k], rhos[k]);
    return out - smul(res, (cfg_.predict_x0 ? t.alpha : t.sigma) * c.b_h);
  }

  // multistep_uni_c_bh_update: corrects the sample at step_index (predicted by the previous
  // step from last_sample_) with this step's converted output.
  Tensor corrector(const Tensor& model_t, int64_t order) const {
    const AlphaSigma t = at(step_index_), s0 = at(step_index_ - 1);
    const float l0 = lambda_of(s0);
    const float h = lambda_of(t) - l0;
    const Tensor& m0 = outputs_.back();
    std::vector<float> rks;
    std::vector<Tensor> d1s;
    for (int64_t k = 1; k < order; ++k) {
      const float rk = (lambda_of(at(step_index_ - (k + 1))) - l0) / h;
      rks.push_back(rk);
      d1s.push_back(sdiv(outputs_[outputs_.size() - 1 - size_t(k)] - m0, rk));
    }
    const Coeffs c = coeffs(h, rks, order);
    const std::vector<float> rhos =
        order == 1 ? std::vector<float>{0.5f} : solve(vandermonde(c.rks, size_t(order)), c.b);
    Tensor out = base(last_sample_, m0, t, s0, c.h_phi_1);
    const Tensor d1_t = model_t - m0;
    Tensor corr = smul(d1_t, rhos.back());
    if (!d1s.empty()) {
      Tensor res = smul(d1s[0], rhos[0]);
      for (size_t k = 1; k < d1s.size(); ++k) res = res + smul(d1s[k], rhos[k]);
      corr = res + corr;
    }
    return out - smul(corr, (cfg_.predict_x0 ? t.alpha : t.sigma) * c.b_h);
  }

  std::deque<Tensor> outputs_;  // the last solver_order converted outputs, oldest first
  int64_t lower_order_nums_ = 0, this_order_ = 0;
  Tensor last_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_unipc(const SchedulerConfig& c) { return std::make_unique<UniPC>(c); }

}  // namespace sd::infer::detail
