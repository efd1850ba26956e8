// PNDMScheduler (diffusers scheduling_pndm.py): pseudo linear multistep (PLMS) with the
// Adams-Bashforth combinations of up to four past model outputs, after either the
// Runge-Kutta warm-up (PRK, 12 model calls; skip_prk_steps false) or, as every SD config sets,
// skip_prk_steps true: then the schedule repeats its second timestep and the first two calls
// form a second-order (Heun-like) step.
#include <cmath>
#include <deque>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

class PNDM final : public Scheduler {
 public:
  explicit PNDM(const SchedulerConfig& c) : Scheduler(c) {
    final_alpha_ = cfg_.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample, Generator&) override {
    require_timesteps("step");
    SD_CHECK(model_output.shape() == sample.shape(), class_name(), ".step: model output ", model_output.str(),
             " and sample ", sample.str(), " differ in shape");
    SD_CHECK(t == std::floor(t), class_name(), ".step: timestep ", t, " is not an integer");
    const Tensor mo = as_dtype(model_output, sample.dtype());
    if (counter_ < int64_t(prk_.size()) && !cfg_.skip_prk_steps) return step_prk(mo, int64_t(t), sample);
    return step_plms(mo, int64_t(t), sample);
  }

 protected:
  bool has_begin_index() const override { return false; }

  void compute_schedule(int64_t n, double) override {
    const int64_t T = cfg_.num_train_timesteps;
    // _timesteps, ascending.
    std::vector<int64_t> ts;
    if (cfg_.timestep_spacing == "linspace") {
      for (double v : sched::np_linspace(0.0, double(T - 1), n)) ts.push_back(int64_t(sched::np_round(v)));
    } else if (cfg_.timestep_spacing == "leading") {
      for (int64_t i = 0; i < n; ++i) ts.push_back(i * (T / n) + cfg_.steps_offset);
    } else {
      const std::vector<double> a = sched::np_arange(double(T), 0.0, -(double(T) / double(n)));
      for (auto it = a.rbegin(); it != a.rend(); ++it) ts.push_back(int64_t(sched::np_round(*it)) - 1);
    }
    prk_.clear();
    std::vector<int64_t> plms;
    if (cfg_.skip_prk_steps) {
      // concat(_t[:-1], _t[-2:-1], _t[-1:]) reversed: the second-to-last entry twice.
      std::vector<int64_t> c(ts.begin(), ts.end() - 1);
      if (ts.size() >= 2) c.push_back(ts[ts.size() - 2]);
      c.push_back(ts.back());
      plms.assign(c.rbegin(), c.rend());
    } else {
      // numpy would fail to broadcast the tile below for fewer than pndm_order steps.
      SD_CHECK(ts.size() >= 4, class_name(), ": the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 "
               "inference steps, got ", n);
      const int64_t half = T / n / 2;
      std::vector<int64_t> p;  // _t[-4:].repeat(2) + tile([0, half], 4)
      for (size_t i = ts.size() - 4; i < ts.size(); ++i) {
        p.push_back(ts[i]);
        p.push_back(ts[i] + half);
      }
      p.pop_back();  // [:-1]
      std::vector<int64_t> r;  // .repeat(2)[1:-1][::-1]
      for (int64_t v : p) r.insert(r.end(), {v, v});
      r = std::vector<int64_t>(r.begin() + 1, r.end() - 1);
      prk_.assign(r.rbegin(), r.rend());
      for (auto it = ts.rbegin() + 3; it != ts.rend(); ++it) plms.push_back(*it);  // _t[:-3][::-1]
    }
    timesteps_.clear();
    for (int64_t v : prk_) timesteps_.push_back(double(v));
    for (int64_t v : plms) timesteps_.push_back(double(v));
    num_inference_steps_ = n;
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = Tensor();
    cur_sample_ = Tensor();
  }

 private:
  float alpha(int64_t t) const {
    SD_CHECK(t < cfg_.num_train_timesteps, class_name(), ": timestep ", t, " is outside the training schedule");
    return t >= 0 ? alphas_cumprod_[size_t(t)] : final_alpha_;
  }

  // _get_prev_sample: formula (9) of the PNDM paper, from t to prev.
  Tensor prev_sample(const Tensor& sample, int64_t t, int64_t prev, Tensor mo) const {
    const float at = alpha(t), ap = alpha(prev);
    const float bt = 1.0f - at, bp = 1.0f - ap;
    if (cfg_.prediction_type == "v_prediction") mo = smul(mo, std::sqrt(at)) + smul(sample, std::sqrt(bt));
    const float sample_coeff = std::sqrt(ap / at);
    const float denom = at * std::sqrt(bp) + std::sqrt(at * bt * ap);
    return smul(sample, sample_coeff) - sdiv(smul(mo, ap - at), denom);
  }

  Tensor step_prk(const Tensor& mo_in, int64_t t, const Tensor& sample) {
    const int64_t T = cfg_.num_train_timesteps;
    const int64_t diff = counter_ % 2 ? 0 : T / num_inference_steps_ / 2;
    const int64_t prev = t - diff;
    const int64_t tt = prk_[size_t(counter_ / 4 * 4)];
    Tensor mo = mo_in;
    auto accumulate = [&](double w) {
      Tensor term = mul_scalar(mo_in, w);
      cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + term : term;
    };
    if (counter_ % 4 == 0) {
      accumulate(1.0 / 6);
      ets_.push_back(mo_in);
      cur_sample_ = sample;
    } else if ((counter_ - 1) % 4 == 0 || (counter_ - 2) % 4 == 0) {
      accumulate(1.0 / 3);
    } else {
      mo = cur_model_output_ + mul_scalar(mo_in, 1.0 / 6);
      cur_model_output_ = Tensor();
    }
    const Tensor& from = cur_sample_.defined() ? cur_sample_ : sample;
    Tensor out = prev_sample(from, tt, prev, mo);
    ++counter_;
    return out;
  }

  Tensor step_plms(const Tensor& mo_in, int64_t t, const Tensor& sample_in) {
    const int64_t T = cfg_.num_train_timesteps;
    SD_CHECK(cfg_.skip_prk_steps || ets_.size() >= 3, class_name(), ": PLMS steps need the 12 Runge-Kutta steps first");
    int64_t prev = t - T / num_inference_steps_;
    if (counter_ != 1) {
      while (ets_.size() > 3) ets_.pop_front();
      ets_.push_back(mo_in);
    } else {
      prev = t;
      t = t + T / num_inference_steps_;
    }
    Tensor mo = mo_in;
    Tensor sample = sample_in;
    const size_t n = ets_.size();
    const Tensor two = full({}, 2.0, mo_in.dtype(), mo_in.device());
    if (n == 1 && counter_ == 0) {
      cur_sample_ = sample_in;
    } else if (n == 1 && counter_ == 1) {
      mo = div(mo_in + ets_.back(), two);
      sample = cur_sample_;
      cur_sample_ = Tensor();
    } else if (n == 2) {
      mo = div(mul_scalar(ets_[1], 3) - ets_[0], two);
    } else if (n == 3) {
      mo = sdiv(mul_scalar(ets_[2], 23) - mul_scalar(ets_[1], 16) + mul_scalar(ets_[0], 5), 12.0f);
    } else {
      mo = mul_scalar(mul_scalar(ets_[3], 55) - mul_scalar(ets_[2], 59) + mul_scalar(ets_[1], 37) -
                          mul_scalar(ets_[0], 9),
                      1.0 / 24);
    }
    Tensor out = prev_sample(sample, t, prev, mo);
    ++counter_;
    return out;
  }

  float final_alpha_ = 1.0f;
  std::vector<int64_t> prk_;
  std::deque<Tensor> ets_;
  int64_t counter_ = 0;
  Tensor cur_model_output_, cur_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& c) { return std::make_unique<PNDM>(c); }

}  // namespace sd::infer::detail
