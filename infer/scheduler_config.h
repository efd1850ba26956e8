// Sampling-scheduler configuration, read from a diffusers scheduler_config.json exactly as
// diffusers' `SchedulerClass.from_config(config, **overrides)` interprets it
// (configuration_utils.py `extract_init_dict`):
//
// * The target class is the file's `_class_name` unless another class is asked for (what
//   `--scheduler euler` does with a model's PNDM config). Every key the target class does not
//   take is ignored, as diffusers does (listed in `ignored_keys`), and every key it takes but
//   the file lacks gets the TARGET class's default: e.g. timestep_spacing is "linspace" for
//   EulerDiscreteScheduler but "leading" for DDIMScheduler (FORMATS.md §2.5).
// * Keys named in `_use_default_values` (diffusers writes it into in-memory configs) are
//   treated as absent.
// * Overrides (a JSON object) replace or add keys, like from_config's keyword arguments.
// * A key the class takes with a value this implementation does not support (e.g.
//   thresholding true, use_beta_sigmas true, timestep_type "continuous") is an sd::Error
//   naming the key; so is an unknown class name.
// * Python's json writes -inf as the bare token -Infinity (DPMSolverMultistepScheduler's
//   lambda_min_clipped default); such tokens are accepted.
// * sigma_min / sigma_max are read by every Karras/exponential-sigma class even where they
//   are not __init__ arguments: diffusers keeps unused keys of a converted config and tests
//   them with hasattr(config, "sigma_min").
#pragma once
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace sd::infer {

struct SchedulerConfig {
  std::string class_name;           // diffusers class, e.g. "EulerDiscreteScheduler"
  std::string source;               // where it came from (for messages)

  // ---- training schedule (all classes) ----
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";   // linear | scaled_linear | squaredcos_cap_v2
  std::vector<double> trained_betas;      // used when non-empty (JSON list)
  bool rescale_betas_zero_snr = false;
  std::string prediction_type = "epsilon";  // epsilon | v_prediction | sample

  // ---- timestep selection ----
  std::string timestep_spacing = "leading";  // leading | linspace | trailing
  int64_t steps_offset = 0;

  // ---- alpha-based samplers (DDPM, DDIM, PNDM, LCM) ----
  std::string variance_type = "fixed_small";  // DDPM: fixed_small | fixed_small_log | fixed_large
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = false;     // DDIM/PNDM/LCM: alpha-bar after the last step is 1 (else alpha-bar_0)
  bool skip_prk_steps = false;       // PNDM: false runs the Runge-Kutta warm-up steps first

  // ---- sigma-based samplers (Euler, Euler a, Heun, DPM-Solver, UniPC) ----
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_lu_lambdas = false;       // DPM-Solver only
  std::optional<double> sigma_min, sigma_max;  // Karras/exponential range (default: the schedule's)
  std::string final_sigmas_type = "zero";      // zero | sigma_min

  // ---- multistep solvers (DPM-Solver, UniPC) ----
  int64_t solver_order = 2;
  std::string algorithm_type = "dpmsolver++";  // DPM: dpmsolver++ | sde-dpmsolver++
  std::string solver_type = "midpoint";        // DPM: midpoint | heun; UniPC: bh1 | bh2
  bool lower_order_final = true;
  bool euler_at_final = false;
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();      // DPM: drop the noisiest steps whose lambda is below
  bool predict_x0 = true;                      // UniPC
  std::vector<int64_t> disable_corrector;      // UniPC: step indices without the corrector

  // ---- LCM ----
  int64_t original_inference_steps = 50;
  double timestep_scaling = 10.0;

  std::vector<std::string> ignored_keys;  // keys present in the file that the class does not take

  // The class's own defaults (diffusers' __init__ signature); unknown class -> sd::Error.
  static SchedulerConfig defaults(const std::string& class_name);
  // `Class.from_config(json, **overrides)`; target_class "" = the file's _class_name.
  static SchedulerConfig from_json_string(const std::string& text, const std::string& source = "<string>",
                                          const std::string& target_class = "",
                                          const std::string& overrides_json = "");
  static SchedulerConfig from_file(const std::string& path, const std::string& target_class = "",
                                   const std::string& overrides_json = "");
  // The same source file read for another class (with overrides), as diffusers'
  // `OtherScheduler.from_config(scheduler.config, **overrides)`.
  SchedulerConfig with_class(const std::string& target_class, const std::string& overrides_json = "") const;

  // The diffusers classes implemented here.
  static const std::vector<std::string>& supported_classes();

 private:
  std::string raw_json_;  // the source text, kept for with_class
};

}  // namespace sd::infer
