#include "infer/scheduler.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "infer/schedule_math.h"
#include "infer/scheduler_ops.h"
#include "infer/schedulers.h"
#include "ops/elementwise.h"
#include "runtime/error.h"

namespace sd::infer {

using detail::smul;

Scheduler::Scheduler(SchedulerConfig config) : cfg_(std::move(config)) {
  betas_ = sched::make_betas(cfg_);
  if (cfg_.rescale_betas_zero_snr) betas_ = sched::rescale_zero_terminal_snr(betas_);
  alphas_cumprod_ = sched::alphas_cumprod(betas_);
}

void Scheduler::set_timesteps(int64_t num_inference_steps, double strength) {
  SD_CHECK(num_inference_steps >= 1, class_name(), ".set_timesteps: num_inference_steps must be >= 1, got ",
           num_inference_steps);
  SD_CHECK(strength >= 0.0 && strength <= 1.0, class_name(), ".set_timesteps: strength must be in [0, 1], got ",
           strength);
  compute_schedule(num_inference_steps, strength_in_schedule() ? strength : 1.0);
  step_index_ = -1;
  begin_index_ = -1;
  pred_original_ = Tensor();
  run_timesteps_ = timesteps_;
  if (!strength_in_schedule() && strength < 1.0) {
    // diffusers' img2img get_timesteps, with the n given here.
    const int64_t n = num_inference_steps;
    const int64_t init = std::min(int64_t(double(n) * strength), n);
    const int64_t t_start = std::max<int64_t>(n - init, 0);
    const size_t first = std::min(size_t(t_start * order()), timesteps_.size());
    run_timesteps_.assign(timesteps_.begin() + int64_t(first), timesteps_.end());
    if (has_begin_index()) begin_index_ = int64_t(first);
  }
}

void Scheduler::start_at(int64_t first) {
  require_timesteps("start_at");
  SD_CHECK(first >= 0 && first <= int64_t(timesteps_.size()), class_name(), ".start_at: index ", first,
           " is outside the schedule of ", timesteps_.size(), " timesteps");
  run_timesteps_.assign(timesteps_.begin() + first, timesteps_.end());
  step_index_ = -1;
  if (has_begin_index()) begin_index_ = first;
}

double Scheduler::init_noise_sigma() const { return init_noise_sigma_value(); }

Tensor Scheduler::scale_model_input(const Tensor& sample, double) { return sample; }

void Scheduler::require_timesteps(const char* op) const {
  SD_CHECK(!timesteps_.empty(), class_name(), ".", op, ": call set_timesteps first");
}

int64_t Scheduler::index_for_timestep(double t) const {
  std::vector<int64_t> hits;
  for (size_t i = 0; i < timesteps_.size() && hits.size() < 2; ++i)
    if (timesteps_[i] == t) hits.push_back(int64_t(i));
  if (hits.empty()) return -1;
  return hits.size() > 1 ? hits[1] : hits[0];
}

void Scheduler::init_step_index(double t, bool absent_is_last) {
  if (begin_index_ >= 0) {
    step_index_ = begin_index_;
    return;
  }
  step_index_ = index_for_timestep(t);
  if (step_index_ < 0 && absent_is_last) step_index_ = int64_t(timesteps_.size()) - 1;
  SD_CHECK(step_index_ >= 0, class_name(), ": timestep ", t, " is not in the schedule");
}

int64_t Scheduler::noise_index(double t, bool absent_is_last) const {
  if (begin_index_ >= 0) return step_index_ >= 0 ? step_index_ : begin_index_;
  int64_t i = index_for_timestep(t);
  if (i < 0 && absent_is_last) i = int64_t(timesteps_.size()) - 1;
  SD_CHECK(i >= 0, class_name(), ".add_noise: timestep ", t, " is not in the schedule");
  return i;
}

Tensor Scheduler::draw_noise(const Shape& shape, DType dtype, Device device, Generator& gen) {
  if (noise_) {
    Tensor n = noise_(shape, dtype, device, gen);
    SD_CHECK(n.defined() && n.shape() == shape, class_name(), ": the noise source returned ",
             n.defined() ? n.str() : std::string("nothing"), " for shape ", shape_str(shape));
    return detail::as_dtype(n, dtype);
  }
  return randn(shape, dtype, device, gen);
}

Tensor Scheduler::batch_coeff(const std::vector<float>& values, const Tensor& like) {
  Shape s(size_t(std::max<int64_t>(like.dim(), 1)), 1);
  s[0] = int64_t(values.size());
  return from_floats(values, s, like.dtype(), like.device());
}

std::vector<double> Scheduler::timestep_values(const Tensor& timesteps) {
  SD_CHECK(timesteps.defined() && timesteps.dim() <= 1, "scheduler: timesteps must be a scalar or a [B] tensor, got ",
           timesteps.defined() ? timesteps.str() : std::string("undefined"));
  return timesteps.to_vector();
}

namespace {
int64_t train_index(double t, int64_t T, const std::string& cls, const char* op) {
  SD_CHECK(t == std::floor(t) && t >= 0 && t < double(T), cls, ".", op, ": timestep ", t,
           " is not an integer in [0, ", T, ")");
  return int64_t(t);
}
}  // namespace

Tensor Scheduler::add_noise(const Tensor& original, const Tensor& noise, const Tensor& timesteps) {
  SD_CHECK(original.shape() == noise.shape(), class_name(), ".add_noise: sample ", original.str(), " and noise ",
           noise.str(), " differ in shape");
  const std::vector<double> ts = timestep_values(timesteps);
  SD_CHECK(ts.size() == 1 || (original.dim() >= 1 && int64_t(ts.size()) == original.size(0)), class_name(),
           ".add_noise: ", ts.size(), " timesteps for a batch of ", original.str());
  std::vector<float> a, b;
  for (double t : ts) {
    const float ac = alphas_cumprod_[size_t(train_index(t, cfg_.num_train_timesteps, class_name(), "add_noise"))];
    a.push_back(std::sqrt(ac));
    b.push_back(std::sqrt(1.0f - ac));
  }
  return mul(original, batch_coeff(a, original)) + mul(noise, batch_coeff(b, noise));
}

Tensor Scheduler::add_noise(const Tensor& original, const Tensor& noise, double t) {
  return add_noise(original, noise, from_vector({t}, {1}, DType::F64));
}

Tensor Scheduler::get_velocity(const Tensor& sample, const Tensor& noise, const Tensor& timesteps) const {
  SD_CHECK(sample.shape() == noise.shape(), class_name(), ".get_velocity: sample ", sample.str(), " and noise ",
           noise.str(), " differ in shape");
  const std::vector<double> ts = timestep_values(timesteps);
  SD_CHECK(ts.size() == 1 || (sample.dim() >= 1 && int64_t(ts.size()) == sample.size(0)), class_name(),
           ".get_velocity: ", ts.size(), " timesteps for a batch of ", sample.str());
  std::vector<float> a, b;
  for (double t : ts) {
    const float ac = alphas_cumprod_[size_t(train_index(t, cfg_.num_train_timesteps, class_name(), "get_velocity"))];
    a.push_back(std::sqrt(ac));
    b.push_back(std::sqrt(1.0f - ac));
  }
  return mul(noise, batch_coeff(a, noise)) - mul(sample, batch_coeff(b, sample));
}

Tensor Scheduler::compute_snr(const Tensor& timesteps) const {
  SD_CHECK(timesteps.defined(), class_name(), ".compute_snr: undefined timesteps");
  const std::vector<double> ts = timesteps.to_vector();
  std::vector<float> snr;
  for (double t : ts) {
    const float ac = alphas_cumprod_[size_t(train_index(t, cfg_.num_train_timesteps, class_name(), "compute_snr"))];
    const float r = std::sqrt(ac) / std::sqrt(1.0f - ac);
    snr.push_back(r * r);
  }
  return from_floats(snr, timesteps.shape(), DType::F32, timesteps.device());
}

// ---- factory ----------------------------------------------------------------------------------

std::unique_ptr<Scheduler> make_scheduler(const SchedulerConfig& c) {
  const std::string& n = c.class_name;
  if (n == "DDPMScheduler") return detail::make_ddpm(c);
  if (n == "DDIMScheduler") return detail::make_ddim(c);
  if (n == "PNDMScheduler") return detail::make_pndm(c);
  if (n == "EulerDiscreteScheduler") return detail::make_euler(c);
  if (n == "EulerAncestralDiscreteScheduler") return detail::make_euler_ancestral(c);
  if (n == "HeunDiscreteScheduler") return detail::make_heun(c);
  if (n == "DPMSolverMultistepScheduler") return detail::make_dpm_solver(c);
  if (n == "UniPCMultistepScheduler") return detail::make_unipc(c);
  if (n == "LCMScheduler") return detail::make_lcm(c);
  SchedulerConfig::defaults(n);  // throws, naming the class and the supported ones
  SD_FAIL("scheduler class \"", n, "\" is not supported");
}

namespace {
struct ShortName {
  const char* cls;
  const char* overrides;
};
const std::map<std::string, ShortName>& short_names() {
  static const std::map<std::string, ShortName> m = {
      {"ddim", {"DDIMScheduler", ""}},
      {"ddpm", {"DDPMScheduler", ""}},
      {"pndm", {"PNDMScheduler", R"({"skip_prk_steps": true})"}},
      {"euler", {"EulerDiscreteScheduler", ""}},
      {"euler_a", {"EulerAncestralDiscreteScheduler", ""}},
      {"heun", {"HeunDiscreteScheduler", ""}},
      {"dpm++2m",
       {"DPMSolverMultistepScheduler", R"({"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": false})"}},
      {"dpm++2m_karras",
       {"DPMSolverMultistepScheduler", R"({"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": true})"}},
      {"dpm++2m_sde",
       {"DPMSolverMultistepScheduler",
        R"({"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": false})"}},
      {"unipc", {"UniPCMultistepScheduler", ""}},
      {"lcm", {"LCMScheduler", ""}},
  };
  return m;
}
}  // namespace

const std::vector<std::string>& scheduler_short_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& [k, s] : short_names()) v.push_back(k);
    return v;
  }();
  return names;
}

SchedulerConfig scheduler_config_for(const std::string& short_name, const SchedulerConfig& model_config) {
  auto it = short_names().find(short_name);
  if (it == short_names().end()) {
    std::string list;
    for (const std::string& n : scheduler_short_names()) list += (list.empty() ? "" : ", ") + n;
    SD_FAIL("unknown scheduler \"", short_name, "\" (known: ", list, ")");
  }
  return model_config.with_class(it->second.cls, it->second.overrides);
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& short_name, const SchedulerConfig& model_config) {
  return make_scheduler(scheduler_config_for(short_name, model_config));
}

Tensor Scheduler::add_noise_alpha_sigma(const Tensor& original, const Tensor& noise, const Tensor& timesteps) const {
  require_timesteps("add_noise");
  SD_CHECK(original.shape() == noise.shape(), class_name(), ".add_noise: sample ", original.str(), " and noise ",
           noise.str(), " differ in shape");
  std::vector<float> a, s;
  for (double t : timestep_values(timesteps)) {
    const detail::AlphaSigma v = detail::alpha_sigma(sigmas_.at(size_t(noise_index(t, /*absent_is_last=*/true))));
    a.push_back(v.alpha);
    s.push_back(v.sigma);
  }
  return mul(original, batch_coeff(a, original)) + mul(noise, batch_coeff(s, noise));
}

}  // namespace sd::infer
