// LCMScheduler (diffusers scheduling_lcm.py): multistep consistency sampling. The timesteps are
// taken from the distillation schedule of original_inference_steps (every T / 50 = 20th step),
// each step maps the model output to a denoised sample with the consistency boundary scalings
// c_skip / c_out at 10 t (sigma_data 0.5) and, except after the last step, re-noises it to the
// next timestep. strength (img2img) truncates the distillation schedule first.
#include <cmath>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "runtime/error.h"

namespace sd::infer::detail {
namespace {

class LCM final : public Scheduler {
 public:
  explicit LCM(const SchedulerConfig& c) : Scheduler(c) {
    final_alpha_ = cfg_.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  Tensor step(const Tensor& model_output, double t, const Tensor& sample, Generator& gen) override {
    require_timesteps("step");
    SD_CHECK(model_output.shape() == sample.shape(), class_name(), ".step: model output ", model_output.str(),
             " and sample ", sample.str(), " differ in shape");
    SD_CHECK(t == std::floor(t) && t >= 0 && t < double(cfg_.num_train_timesteps), class_name(), ".step: timestep ",
             t, " is not an integer in [0, ", cfg_.num_train_timesteps, ")");
    if (step_index_ < 0) init_step_index(t);
    const Tensor mo = as_dtype(model_output, sample.dtype());
    const int64_t ti = int64_t(t);
    const int64_t next = step_index_ + 1;
    const int64_t prev = next < int64_t(timesteps_.size()) ? int64_t(timesteps_[size_t(next)]) : ti;
    const float at = alphas_cumprod_[size_t(ti)];
    const float ap = prev >= 0 ? alphas_cumprod_[size_t(prev)] : final_alpha_;
    const float bt = 1.0f - at, bp = 1.0f - ap;

    // Boundary-condition scalings; the timestep is an int64 tensor element in diffusers, so
    // t * timestep_scaling is float32.
    const float scaled = float(ti) * float(cfg_.timestep_scaling);
    const float c_skip = 1.0f / (scaled * scaled + 0.25f) * 0.25f;  // 0.25 / x is x.reciprocal() * 0.25
    const float c_out = scaled / std::sqrt(scaled * scaled + 0.25f);

    Tensor x0;
    if (cfg_.prediction_type == "epsilon") x0 = sdiv(sample - smul(mo, std::sqrt(bt)), std::sqrt(at));
    else if (cfg_.prediction_type == "v_prediction") x0 = smul(sample, std::sqrt(at)) - smul(mo, std::sqrt(bt));
    else x0 = mo;
    if (cfg_.clip_sample) x0 = clamp(x0, -cfg_.clip_sample_range, cfg_.clip_sample_range);
    const Tensor denoised = smul(x0, c_out) + smul(sample, c_skip);
    pred_original_ = denoised;
    Tensor prev_sample = denoised;
    if (step_index_ != num_inference_steps_ - 1) {
      const Tensor z = draw_noise(mo.shape(), denoised.dtype(), mo.device(), gen);
      prev_sample = smul(denoised, std::sqrt(ap)) + smul(z, std::sqrt(bp));
    }
    ++step_index_;
    return prev_sample;
  }

 protected:
  bool strength_in_schedule() const override { return true; }

  void compute_schedule(int64_t n, double strength) override {
    const int64_t T = cfg_.num_train_timesteps, orig = cfg_.original_inference_steps;
    SD_CHECK(n <= T, class_name(), ".set_timesteps: num_inference_steps ", n, " is larger than num_train_timesteps ", T);
    const int64_t k = T / orig;
    const int64_t count = int64_t(double(orig) * strength);
    std::vector<int64_t> origin;  // the distillation schedule, descending
    for (int64_t i = count; i >= 1; --i) origin.push_back(i * k - 1);
    SD_CHECK(int64_t(origin.size()) / n >= 1, class_name(), ".set_timesteps: original_inference_steps x strength (",
             orig, " x ", strength, ") is smaller than num_inference_steps ", n);
    SD_CHECK(n <= orig, class_name(), ".set_timesteps: num_inference_steps ", n,
             " is larger than original_inference_steps ", orig);
    timesteps_.clear();
    for (double v : sched::np_linspace(0.0, double(origin.size()), n, /*endpoint=*/false))
      timesteps_.push_back(double(origin[size_t(std::floor(v))]));
    num_inference_steps_ = n;
  }

 private:
  float final_alpha_ = 1.0f;
};

}  // namespace

std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& c) { return std::make_unique<LCM>(c); }

}  // namespace sd::infer::detail
