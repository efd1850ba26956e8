// Schedulers: config reading and its errors, the factory, reference timesteps and sigmas
// (FORMATS.md appendix A), img2img strength subsets, add_noise / get_velocity / compute_snr
// against float64 formulas, state handling, generators and half precision. The step
// arithmetic itself is checked against diffusers in scheduler_golden_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "infer/schedule_math.h"
#include "infer/scheduler.h"
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

// The SD1.5 scheduler_config.json (FORMATS.md §2.5).
const std::string kSD15 = R"({
  "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
  "prediction_type": "epsilon", "set_alpha_to_one": false, "skip_prk_steps": true,
  "steps_offset": 1, "trained_betas": null, "clip_sample": false})";

SchedulerConfig sd15() { return SchedulerConfig::from_json_string(kSD15, "sd15"); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// float64 reference schedule: scaled_linear betas, alpha-bar, sigma.
std::vector<double> ac64() {
  std::vector<double> ac;
  double p = 1.0;
  const double a = std::sqrt(0.00085), b = std::sqrt(0.012);
  for (int t = 0; t < 1000; ++t) {
    const double s = a + (b - a) * t / 999.0;
    p *= 1.0 - s * s;
    ac.push_back(p);
  }
  return ac;
}

// ---- config ---------------------------------------------------------------------------------

TEST(SchedulerConfig, ReadsTheSD15ConfigWithEachClassDefaults) {
  const SchedulerConfig pndm = sd15();
  EXPECT_EQ(pndm.class_name, "PNDMScheduler");
  EXPECT_EQ(pndm.beta_schedule, "scaled_linear");
  EXPECT_DOUBLE_EQ(pndm.beta_start, 0.00085);
  EXPECT_TRUE(pndm.skip_prk_steps);
  EXPECT_EQ(pndm.steps_offset, 1);
  EXPECT_EQ(pndm.timestep_spacing, "leading");  // PNDM's default (the file has no timestep_spacing)
  EXPECT_TRUE(contains(pndm.ignored_keys, "clip_sample"));  // not a PNDM argument

  const SchedulerConfig euler = pndm.with_class("EulerDiscreteScheduler");
  EXPECT_EQ(euler.timestep_spacing, "linspace");  // Euler's default, not PNDM's
  EXPECT_EQ(euler.steps_offset, 1);
  EXPECT_DOUBLE_EQ(euler.beta_end, 0.012);
  EXPECT_TRUE(contains(euler.ignored_keys, "skip_prk_steps"));
  EXPECT_TRUE(contains(euler.ignored_keys, "set_alpha_to_one"));

  EXPECT_EQ(pndm.with_class("DDIMScheduler").timestep_spacing, "leading");
  EXPECT_FALSE(pndm.with_class("DDIMScheduler").clip_sample);        // from the file (DDIM default: true)
  EXPECT_TRUE(SchedulerConfig::defaults("DDIMScheduler").clip_sample);
  EXPECT_FALSE(pndm.with_class("LCMScheduler").set_alpha_to_one);    // from the file (LCM default: true)
  EXPECT_TRUE(SchedulerConfig::defaults("LCMScheduler").set_alpha_to_one);
  EXPECT_EQ(SchedulerConfig::defaults("HeunDiscreteScheduler").beta_schedule, "linear");
  EXPECT_DOUBLE_EQ(SchedulerConfig::defaults("HeunDiscreteScheduler").beta_start, 0.00085);
  EXPECT_EQ(SchedulerConfig::defaults("LCMScheduler").beta_schedule, "scaled_linear");
}

TEST(SchedulerConfig, UseDefaultValuesAndOverridesAsFromConfig) {
  const std::string text = R"({"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing",
                               "steps_offset": 1, "_use_default_values": ["timestep_spacing"]})";
  // Keys diffusers marked as defaulted are dropped: the target class's default applies.
  EXPECT_EQ(SchedulerConfig::from_json_string(text).timestep_spacing, "linspace");
  EXPECT_EQ(SchedulerConfig::from_json_string(text).steps_offset, 1);
  // Keyword overrides always win, also over a _use_default_values entry.
  const SchedulerConfig o = SchedulerConfig::from_json_string(text, "t", "", R"({"timestep_spacing": "trailing"})");
  EXPECT_EQ(o.timestep_spacing, "trailing");
  EXPECT_EQ(o.with_class("DDIMScheduler").timestep_spacing, "trailing");  // overrides travel with the config
  // An explicit class replaces _class_name.
  EXPECT_EQ(SchedulerConfig::from_json_string(text, "t", "DDPMScheduler").class_name, "DDPMScheduler");
}

TEST(SchedulerConfig, AcceptsPythonsInfinityTokens) {
  const SchedulerConfig c = SchedulerConfig::from_json_string(
      R"({"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
          "_name_or_path": "a -Infinity NaN \" Infinity"})");
  EXPECT_TRUE(std::isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
  const SchedulerConfig d = SchedulerConfig::from_json_string(
      R"({"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1})");
  EXPECT_DOUBLE_EQ(d.lambda_min_clipped, -5.1);
}

TEST(SchedulerConfig, UnknownClassIsAnErrorNamingIt) {
  const std::string e = error_of([] { SchedulerConfig::from_json_string(R"({"_class_name": "LMSDiscreteScheduler"})"); });
  EXPECT_NE(e.find("LMSDiscreteScheduler"), std::string::npos) << e;
  EXPECT_NE(e.find("EulerDiscreteScheduler"), std::string::npos) << e;  // lists the supported ones
  EXPECT_NE(error_of([] { SchedulerConfig::from_json_string(R"({"beta_start": 1})"); }).find("_class_name"),
            std::string::npos);
  EXPECT_NE(error_of([] { SchedulerConfig::from_json_string("{nope"); }).find("not valid JSON"), std::string::npos);
}

TEST(SchedulerConfig, UnsupportedValuesAreErrorsNamingTheKey) {
  struct Bad {
    const char* cls;
    const char* json;
    const char* key;
  };
  const std::vector<Bad> bad = {
      {"DDIMScheduler", R"({"thresholding": true})", "thresholding"},
      {"DDPMScheduler", R"({"variance_type": "learned_range"})", "variance_type"},
      {"DDPMScheduler", R"({"beta_schedule": "sigmoid"})", "beta_schedule"},
      {"DDIMScheduler", R"({"timestep_spacing": "uniform"})", "timestep_spacing"},
      {"DDIMScheduler", R"({"beta_start": "small"})", "beta_start"},
      {"DDIMScheduler", R"({"num_train_timesteps": 1})", "num_train_timesteps"},
      {"DDIMScheduler", R"({"trained_betas": [0.1, 0.2]})", "trained_betas"},
      {"PNDMScheduler", R"({"prediction_type": "sample"})", "prediction_type"},
      {"EulerDiscreteScheduler", R"({"use_beta_sigmas": true})", "use_beta_sigmas"},
      {"EulerDiscreteScheduler", R"({"timestep_type": "continuous"})", "timestep_type"},
      {"EulerDiscreteScheduler", R"({"interpolation_type": "log_linear"})", "interpolation_type"},
      {"EulerDiscreteScheduler", R"({"use_karras_sigmas": true, "use_exponential_sigmas": true})",
       "use_exponential_sigmas"},
      {"EulerDiscreteScheduler", R"({"final_sigmas_type": "one"})", "final_sigmas_type"},
      {"EulerAncestralDiscreteScheduler", R"({"prediction_type": "sample"})", "prediction_type"},
      {"HeunDiscreteScheduler", R"({"use_beta_sigmas": true})", "use_beta_sigmas"},
      {"DPMSolverMultistepScheduler", R"({"algorithm_type": "dpmsolver"})", "algorithm_type"},
      {"DPMSolverMultistepScheduler", R"({"solver_order": 4})", "solver_order"},
      {"DPMSolverMultistepScheduler", R"({"variance_type": "learned_range"})", "variance_type"},
      {"DPMSolverMultistepScheduler", R"({"use_flow_sigmas": true})", "use_flow_sigmas"},
      {"DPMSolverMultistepScheduler", R"({"use_dynamic_shifting": true})", "use_dynamic_shifting"},
      {"DPMSolverMultistepScheduler", R"({"thresholding": true})", "thresholding"},
      {"UniPCMultistepScheduler", R"({"solver_p": {"x": 1}})", "solver_p"},
      {"UniPCMultistepScheduler", R"({"shift_terminal": 0.1})", "shift_terminal"},
      {"UniPCMultistepScheduler", R"({"predict_x0": false})", "final_sigmas_type"},
      {"UniPCMultistepScheduler", R"({"solver_type": "bh3"})", "solver_type"},
      {"LCMScheduler", R"({"original_inference_steps": 2000})", "original_inference_steps"},
  };
  for (const Bad& b : bad) {
    const std::string e = error_of([&] { SchedulerConfig::from_json_string(b.json, "cfg", b.cls); });
    EXPECT_NE(e.find(std::string("key \"") + b.key + "\""), std::string::npos) << b.cls << " " << b.json << ": " << e;
    EXPECT_NE(e.find(b.cls), std::string::npos) << e;
  }
  // The same keys with their supported values are fine, and keys a class does not take are
  // ignored even with values it could not use.
  EXPECT_NO_THROW(SchedulerConfig::from_json_string(R"({"thresholding": false, "variance_type": null})", "cfg",
                                                    "DPMSolverMultistepScheduler"));
  EXPECT_NO_THROW(SchedulerConfig::from_json_string(R"({"thresholding": true, "use_beta_sigmas": true})", "cfg",
                                                    "PNDMScheduler"));
}

TEST(SchedulerConfig, RemapsValuesLikeDiffusers) {
  EXPECT_EQ(SchedulerConfig::from_json_string(R"({"solver_type": "bh2"})", "c", "DPMSolverMultistepScheduler").solver_type,
            "midpoint");
  EXPECT_EQ(SchedulerConfig::from_json_string(R"({"algorithm_type": "deis"})", "c", "DPMSolverMultistepScheduler")
                .algorithm_type,
            "dpmsolver++");
  EXPECT_EQ(SchedulerConfig::from_json_string(R"({"solver_type": "midpoint"})", "c", "UniPCMultistepScheduler").solver_type,
            "bh2");
  EXPECT_EQ(SchedulerConfig::from_json_string(R"({"prediction_type": "original_sample"})", "c", "EulerDiscreteScheduler")
                .prediction_type,
            "sample");
  // hasattr(config, "sigma_min"): read by DPM-Solver although it is not one of its arguments.
  const SchedulerConfig d = SchedulerConfig::from_json_string(R"({"sigma_min": 0.5})", "c", "DPMSolverMultistepScheduler");
  EXPECT_EQ(*d.sigma_min, 0.5);
  EXPECT_FALSE(contains(d.ignored_keys, "sigma_min"));
  EXPECT_TRUE(contains(SchedulerConfig::from_json_string(R"({"sigma_min": 0.5})", "c", "DDIMScheduler").ignored_keys,
                       "sigma_min"));
}

// ---- factory --------------------------------------------------------------------------------

TEST(SchedulerFactory, ShortNamesPickTheClassAndSettings) {
  const std::vector<std::pair<std::string, std::string>> want = {
      {"ddim", "DDIMScheduler"}, {"ddpm", "DDPMScheduler"}, {"pndm", "PNDMScheduler"},
      {"euler", "EulerDiscreteScheduler"}, {"euler_a", "EulerAncestralDiscreteScheduler"},
      {"heun", "HeunDiscreteScheduler"}, {"dpm++2m", "DPMSolverMultistepScheduler"},
      {"dpm++2m_karras", "DPMSolverMultistepScheduler"}, {"dpm++2m_sde", "DPMSolverMultistepScheduler"},
      {"unipc", "UniPCMultistepScheduler"}, {"lcm", "LCMScheduler"}};
  EXPECT_EQ(scheduler_short_names().size(), want.size());
  for (const auto& [name, cls] : want) {
    auto s = make_scheduler(name, sd15());
    EXPECT_EQ(s->class_name(), cls) << name;
    EXPECT_EQ(s->order(), name == "heun" ? 2 : 1) << name;
  }
  const SchedulerConfig k = scheduler_config_for("dpm++2m_karras", sd15());
  EXPECT_TRUE(k.use_karras_sigmas);
  EXPECT_EQ(k.algorithm_type, "dpmsolver++");
  EXPECT_EQ(k.solver_order, 2);
  EXPECT_FALSE(scheduler_config_for("dpm++2m", k).use_karras_sigmas);
  EXPECT_EQ(scheduler_config_for("dpm++2m_sde", sd15()).algorithm_type, "sde-dpmsolver++");
  const SchedulerConfig pndm = scheduler_config_for(
      "pndm", SchedulerConfig::from_json_string(R"({"_class_name": "EulerDiscreteScheduler"})"));
  EXPECT_TRUE(pndm.skip_prk_steps);
  const std::string e = error_of([] { make_scheduler("k_lms", sd15()); });
  EXPECT_NE(e.find("k_lms"), std::string::npos) << e;
  EXPECT_NE(e.find("dpm++2m_karras"), std::string::npos) << e;
  SchedulerConfig bogus = SchedulerConfig::defaults("DDIMScheduler");
  bogus.class_name = "KDPM2DiscreteScheduler";
  EXPECT_NE(error_of([&] { make_scheduler(bogus); }).find("KDPM2DiscreteScheduler"), std::string::npos);
}

// ---- schedules --------------------------------------------------------------------------------

std::vector<double> timesteps_of(const std::string& name, int64_t n, const std::string& over = "") {
  SchedulerConfig c = scheduler_config_for(name, sd15());
  if (!over.empty()) c = c.with_class(c.class_name, over);
  auto s = make_scheduler(c);
  s->set_timesteps(n);
  return s->timesteps();
}

TEST(Scheduler, TimestepsOfFormatsAppendixA) {
  // leading + steps_offset 1
  std::vector<double> t = timesteps_of("ddim", 50);
  ASSERT_EQ(t.size(), 50u);
  for (size_t i = 0; i < 50; ++i) EXPECT_EQ(t[i], 981.0 - 20.0 * double(i));
  t = timesteps_of("ddim", 30);
  EXPECT_EQ(std::vector<double>(t.begin(), t.begin() + 6), (std::vector<double>{958, 925, 892, 859, 826, 793}));
  EXPECT_EQ(t.back(), 1);
  EXPECT_EQ(timesteps_of("ddim", 4), (std::vector<double>{751, 501, 251, 1}));
  EXPECT_EQ(timesteps_of("ddim", 1), (std::vector<double>{1}));
  // trailing
  EXPECT_EQ(timesteps_of("ddim", 4, R"({"timestep_spacing": "trailing"})"), (std::vector<double>{999, 749, 499, 249}));
  EXPECT_EQ(timesteps_of("ddim", 2, R"({"timestep_spacing": "trailing"})"), (std::vector<double>{999, 499}));
  t = timesteps_of("ddim", 30, R"({"timestep_spacing": "trailing"})");
  EXPECT_EQ(std::vector<double>(t.begin(), t.begin() + 6), (std::vector<double>{999, 966, 932, 899, 866, 832}));
  EXPECT_EQ(std::vector<double>(t.end() - 2, t.end()), (std::vector<double>{66, 32}));
  t = timesteps_of("ddim", 25, R"({"timestep_spacing": "trailing"})");
  EXPECT_EQ(t.front(), 999);
  EXPECT_EQ(t[1], 959);
  EXPECT_EQ(t.back(), 39);
  // DPM-Solver's own linspace: N + 1 points, the last dropped.
  t = timesteps_of("dpm++2m", 20);
  ASSERT_EQ(t.size(), 20u);
  EXPECT_EQ(std::vector<double>(t.begin(), t.begin() + 5), (std::vector<double>{999, 949, 899, 849, 799}));
  EXPECT_EQ(std::vector<double>(t.end() - 3, t.end()), (std::vector<double>{150, 100, 50}));
  t = timesteps_of("dpm++2m", 25);
  EXPECT_EQ(std::vector<double>(t.begin(), t.begin() + 3), (std::vector<double>{999, 959, 919}));
  EXPECT_EQ(std::vector<double>(t.end() - 3, t.end()), (std::vector<double>{120, 80, 40}));
  // LCM
  EXPECT_EQ(timesteps_of("lcm", 1), (std::vector<double>{999}));
  EXPECT_EQ(timesteps_of("lcm", 2), (std::vector<double>{999, 499}));
  EXPECT_EQ(timesteps_of("lcm", 4), (std::vector<double>{999, 759, 499, 259}));
  EXPECT_EQ(timesteps_of("lcm", 8), (std::vector<double>{999, 879, 759, 639, 499, 379, 259, 139}));
  // Euler linspace keeps fractional float32 timesteps.
  t = timesteps_of("euler", 20);
  EXPECT_EQ(t.front(), 999.0);
  EXPECT_EQ(t[1], double(float(999.0 - 999.0 / 19.0)));
  EXPECT_EQ(t.back(), 0.0);
  EXPECT_EQ(make_scheduler("euler", sd15())->timestep_dtype(), DType::F32);
  EXPECT_EQ(make_scheduler("ddim", sd15())->timestep_dtype(), DType::I64);
  // PLMS repeats the second timestep: n + 1 entries.
  EXPECT_EQ(timesteps_of("pndm", 4), (std::vector<double>{751, 501, 501, 251, 1}));
  // Heun lists the inner timesteps twice.
  EXPECT_EQ(timesteps_of("heun", 3, R"({"timestep_spacing": "leading"})"), (std::vector<double>{667, 334, 334, 1, 1}));
}

TEST(Scheduler, SigmasAndNoiseScalesOfFormatsAppendixA) {
  const std::vector<double> ref = ac64();
  auto ddim = make_scheduler("ddim", sd15());
  const std::vector<float>& ac = ddim->alphas_cumprod();
  ASSERT_EQ(ac.size(), 1000u);
  EXPECT_NEAR(ac[0], 0.99915, 1e-7);
  EXPECT_NEAR(ac[999], 0.004660098513, 0.004660098513 * 1e-5);
  double worst = 0;
  for (size_t i = 0; i < 1000; ++i) worst = std::max(worst, std::fabs(ac[i] - ref[i]) / ref[i]);
  EXPECT_LT(worst, 2e-5);  // float32 betas and accumulation against the float64 formula
  EXPECT_NEAR(ddim->betas()[0], 0.00085, 1e-9);
  EXPECT_NEAR(ddim->betas()[999], 0.012, 1e-8);

  // SDXL-Turbo: Euler ancestral, trailing, 1 step at t = 999: latents = z * 14.6146,
  // UNet input = latents / 14.6488.
  auto turbo = make_scheduler("euler_a", sd15().with_class("EulerAncestralDiscreteScheduler",
                                                           R"({"timestep_spacing": "trailing"})"));
  turbo->set_timesteps(1);
  EXPECT_EQ(turbo->timesteps(), (std::vector<double>{999}));
  EXPECT_NEAR(turbo->init_noise_sigma(), 14.6146412293, 14.6146412293 * 2e-6);
  ASSERT_EQ(turbo->sigmas().size(), 2u);
  EXPECT_EQ(turbo->sigmas()[1], 0.0f);
  EXPECT_NEAR(turbo->scale_model_input(ones({1}), 999).item(), 1.0 / 14.6488135445, 2e-6 / 14.6488135445);

  // Leading spacing scales the initial noise by sqrt(sigma_max^2 + 1), sigma_max at t = 951 (20 steps).
  auto euler = make_scheduler("euler", sd15().with_class("EulerDiscreteScheduler", R"({"timestep_spacing": "leading"})"));
  euler->set_timesteps(20);
  EXPECT_EQ(euler->timesteps().front(), 951);
  const double s951 = std::sqrt((1 - ref[951]) / ref[951]);
  EXPECT_NEAR(euler->sigmas()[0], s951, s951 * 1e-5);
  EXPECT_NEAR(euler->init_noise_sigma(), std::sqrt(s951 * s951 + 1), s951 * 1e-5);
  // Linspace: sigma interpolated linearly in t at fractional timesteps.
  auto lin = make_scheduler("euler", sd15());
  lin->set_timesteps(20);
  const double t1 = double(float(999.0 - 999.0 / 19.0));
  const int64_t j = int64_t(std::floor(t1));
  const double sj = std::sqrt((1 - ref[j]) / ref[j]), sj1 = std::sqrt((1 - ref[j + 1]) / ref[j + 1]);
  EXPECT_NEAR(lin->sigmas()[1], sj + (sj1 - sj) * (t1 - double(j)), sj * 2e-5);
  EXPECT_NEAR(lin->init_noise_sigma(), 14.6146412293, 14.6146412293 * 2e-6);
  // DDIM-type samplers: no scaling.
  ddim->set_timesteps(10);
  EXPECT_EQ(ddim->init_noise_sigma(), 1.0);
  EXPECT_TRUE(ddim->sigmas().empty());
  // Karras (rho 7) between sigma(0) and sigma(999) for DPM-Solver.
  auto k = make_scheduler("dpm++2m_karras", sd15());
  k->set_timesteps(10);
  const double lo = std::sqrt((1 - ref[0]) / ref[0]), hi = std::sqrt((1 - ref[999]) / ref[999]);
  ASSERT_EQ(k->sigmas().size(), 11u);
  for (int i = 0; i < 10; ++i) {
    const double r = i / 9.0;
    const double want = std::pow(std::pow(hi, 1 / 7.0) + r * (std::pow(lo, 1 / 7.0) - std::pow(hi, 1 / 7.0)), 7.0);
    EXPECT_NEAR(k->sigmas()[size_t(i)], want, want * 2e-5) << i;
  }
  EXPECT_EQ(k->timesteps().front(), 999);
  EXPECT_EQ(k->timesteps().back(), 0);
}

TEST(Scheduler, StrengthKeepsTheImg2ImgTail) {
  auto ddim = make_scheduler("ddim", sd15());
  ddim->set_timesteps(25, 0.6);
  ASSERT_EQ(ddim->all_timesteps().size(), 25u);
  ASSERT_EQ(ddim->timesteps().size(), 15u);  // int(25 * 0.6) = 15
  EXPECT_TRUE(std::equal(ddim->timesteps().begin(), ddim->timesteps().end(), ddim->all_timesteps().begin() + 10));
  EXPECT_EQ(ddim->begin_index(), -1);  // DDIM has no set_begin_index
  auto euler = make_scheduler("euler", sd15());
  euler->set_timesteps(25, 0.6);
  EXPECT_EQ(euler->timesteps().size(), 15u);
  EXPECT_EQ(euler->begin_index(), 10);
  euler->set_timesteps(25);  // a new schedule forgets the subset
  EXPECT_EQ(euler->timesteps().size(), 25u);
  EXPECT_EQ(euler->begin_index(), -1);
  auto heun = make_scheduler("heun", sd15());  // order 2: the subset starts at 2 * t_start
  heun->set_timesteps(10, 0.5);
  EXPECT_EQ(heun->all_timesteps().size(), 19u);
  EXPECT_EQ(heun->timesteps().size(), 9u);
  EXPECT_EQ(heun->begin_index(), 10);
  auto dpm = make_scheduler("dpm++2m", sd15());
  dpm->set_timesteps(4, 0.3);  // int(1.2) = 1 step
  EXPECT_EQ(dpm->timesteps(), std::vector<double>{dpm->all_timesteps().back()});
  dpm->set_timesteps(4, 0.0);
  EXPECT_TRUE(dpm->timesteps().empty());
  dpm->set_timesteps(4, 1.0);
  EXPECT_EQ(dpm->timesteps().size(), 4u);
  // LCM: strength shortens the distillation schedule instead (50 * 0.5 = 25 candidates).
  auto lcm = make_scheduler("lcm", sd15());
  lcm->set_timesteps(4, 0.5);
  EXPECT_EQ(lcm->timesteps(), (std::vector<double>{499, 379, 259, 139}));
  EXPECT_EQ(lcm->all_timesteps(), lcm->timesteps());
  EXPECT_NE(error_of([&] { lcm->set_timesteps(4, 1.5); }).find("strength"), std::string::npos);
  EXPECT_NE(error_of([&] { lcm->set_timesteps(30, 0.5); }).find("original_inference_steps"), std::string::npos);
}

// ---- add_noise, get_velocity, compute_snr -----------------------------------------------------

TEST(Scheduler, AddNoiseMatchesTheFloat64Formula) {
  const Tensor x = test::random_tensor({3, 2, 3, 5}, DType::F32, 1);
  const Tensor z = test::random_tensor({3, 2, 3, 5}, DType::F32, 2);
  const std::vector<double> xv = x.to_vector(), zv = z.to_vector();
  const int64_t per = 2 * 3 * 5;
  auto expect = [&](const Tensor& got, const std::vector<double>& a, const std::vector<double>& b, const char* what) {
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = a[i / per] * xv[i] + b[i / per] * zv[i];
    EXPECT_TRUE(test::all_close(got, want, 1e-6, 1e-7)) << what;
  };
  // Alpha-based (DDPM, DDIM, PNDM, LCM): sqrt(ac) x + sqrt(1 - ac) z, one timestep per batch element.
  for (const char* name : {"ddpm", "ddim", "pndm", "lcm"}) {
    auto s = make_scheduler(name, sd15());
    const Tensor t = from_vector({3, 500, 999}, {3}, DType::I64);
    std::vector<double> a, b;
    for (int64_t ti : {3, 500, 999}) {
      const double ac = s->alphas_cumprod()[size_t(ti)];
      a.push_back(std::sqrt(ac));
      b.push_back(std::sqrt(1 - ac));
    }
    expect(s->add_noise(x, z, t), a, b, name);
    expect(s->add_noise(test::non_contiguous(x), test::non_contiguous(z), t), a, b, name);
    // One timestep for the whole batch.
    const Tensor one = s->add_noise(x, z, 500.0);
    expect(one, {a[1], a[1], a[1]}, {b[1], b[1], b[1]}, name);
    EXPECT_NE(error_of([&] { s->add_noise(x, z, 2.5); }).find("not an integer"), std::string::npos);
    EXPECT_NE(error_of([&] { s->add_noise(x, z, from_vector({1, 2}, {2}, DType::I64)); }).find("timesteps"),
              std::string::npos);
  }
  // Euler family: x + sigma z at the timestep's position in the schedule.
  auto euler = make_scheduler("euler", sd15());
  euler->set_timesteps(10);
  const std::vector<double>& et = euler->timesteps();
  const Tensor t3 = from_vector({et[0], et[3], et[9]}, {3}, DType::F32);
  const std::vector<float>& sg = euler->sigmas();
  expect(euler->add_noise(x, z, t3), {1, 1, 1}, {sg[0], sg[3], sg[9]}, "euler");
  EXPECT_NE(error_of([&] { euler->add_noise(x, z, 500.5); }).find("not in the schedule"), std::string::npos);
  // img2img: once a begin index is set, it decides (diffusers' rule).
  euler->set_timesteps(10, 0.6);
  expect(euler->add_noise(x, z, euler->timesteps()[0]), {1, 1, 1}, {sg[4], sg[4], sg[4]}, "euler img2img");
  // DPM-Solver / UniPC: alpha_t x + sigma_t z with alpha_t = 1 / sqrt(sigma^2 + 1).
  for (const char* name : {"dpm++2m", "unipc"}) {
    auto s = make_scheduler(name, sd15());
    s->set_timesteps(10);
    std::vector<double> a, b;
    for (int i : {0, 3, 9}) {
      const double sig = s->sigmas()[size_t(i)];
      a.push_back(1 / std::sqrt(sig * sig + 1));
      b.push_back(sig / std::sqrt(sig * sig + 1));
    }
    const std::vector<double>& st = s->timesteps();
    expect(s->add_noise(x, z, from_vector({st[0], st[3], st[9]}, {3}, DType::I64)), a, b, name);
  }
}

TEST(Scheduler, VelocityAndSnrMatchTheFloat64Formula) {
  auto s = make_scheduler("ddpm", sd15());
  const Tensor x = test::random_tensor({2, 4, 3, 3}, DType::F32, 3);
  const Tensor z = test::random_tensor({2, 4, 3, 3}, DType::F32, 4);
  const Tensor t = from_vector({17, 900}, {2}, DType::I64);
  const std::vector<double> xv = x.to_vector(), zv = z.to_vector();
  std::vector<double> want(xv.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double ac = s->alphas_cumprod()[i < 36 ? 17 : 900];
    want[i] = std::sqrt(ac) * zv[i] - std::sqrt(1 - ac) * xv[i];
  }
  EXPECT_TRUE(test::all_close(s->get_velocity(x, z, t), want, 1e-6, 1e-7));
  const Tensor ts = from_vector({0, 250, 999}, {3}, DType::I64);
  const Tensor snr = s->compute_snr(ts);
  EXPECT_EQ(snr.dtype(), DType::F32);
  EXPECT_EQ(snr.shape(), (Shape{3}));
  std::vector<double> ws;
  for (int ti : {0, 250, 999}) {
    const double ac = s->alphas_cumprod()[size_t(ti)];
    ws.push_back(ac / (1 - ac));
  }
  EXPECT_TRUE(test::all_close(snr, ws, 2e-6, 0));
  EXPECT_NEAR(ws[0], 0.99915 / 0.00085, 1.0);  // SNR(0) ~ 1175
}

// ---- stepping ------------------------------------------------------------------------------

// Runs a whole text2img loop with a fixed fake model; returns the final latents.
Tensor run_loop(Scheduler& s, int64_t n, const Tensor& noise, Generator& gen) {
  s.set_timesteps(n);
  Tensor x = noise * s.init_noise_sigma();
  const Tensor e = mul_scalar(noise, -0.5);
  for (double t : s.timesteps()) {
    const Tensor in = s.scale_model_input(x, t);
    x = s.step(e + mul_scalar(in, 0.1), t, x, gen);
  }
  return x;
}

TEST(Scheduler, SetTimestepsResetsTheMultistepState) {
  const Tensor noise = test::random_tensor({1, 4, 4, 4}, DType::F32, 5);
  for (const std::string& name : scheduler_short_names()) {
    auto s = make_scheduler(name, sd15());
    Generator g1(7), g2(7);
    const Tensor a = run_loop(*s, 6, noise, g1);
    const Tensor b = run_loop(*s, 6, noise, g2);  // same scheduler object, fresh schedule
    EXPECT_EQ(a.to_vector(), b.to_vector()) << name;
    for (double v : a.to_vector()) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

TEST(Scheduler, StochasticSamplersDrawFromTheGenerator) {
  const Tensor noise = test::random_tensor({1, 4, 4, 4}, DType::F32, 6);
  for (const char* name : {"euler_a", "dpm++2m_sde", "ddpm", "lcm"}) {
    auto s = make_scheduler(name, sd15());
    Generator g1(11), g2(11), g3(12);
    const Tensor a = run_loop(*s, 4, noise, g1), b = run_loop(*s, 4, noise, g2), c = run_loop(*s, 4, noise, g3);
    EXPECT_EQ(a.to_vector(), b.to_vector()) << name;
    EXPECT_NE(a.to_vector(), c.to_vector()) << name;
    EXPECT_GT(g1.offset, 0u) << name;
  }
  for (const char* name : {"euler", "dpm++2m", "ddim", "unipc", "pndm", "heun"}) {
    auto s = make_scheduler(name, sd15());
    Generator g(3);
    run_loop(*s, 4, noise, g);
    EXPECT_EQ(g.offset, 0u) << name << " must not draw noise";
  }
  // DDIM draws only with eta > 0.
  auto ddim = make_scheduler("ddim", sd15());
  ddim->set_eta(1.0);
  Generator g(3);
  run_loop(*ddim, 4, noise, g);
  EXPECT_GT(g.offset, 0u);
  // The noise source replaces randn.
  int calls = 0;
  auto ea = make_scheduler("euler_a", sd15());
  ea->set_noise_source([&](const Shape& shape, DType dt, Device dev, Generator&) {
    ++calls;
    return zeros(shape, dt, dev);
  });
  Generator gz(1);
  run_loop(*ea, 3, noise, gz);
  EXPECT_EQ(calls, 3);  // one per step, the last included
  EXPECT_EQ(gz.offset, 0u);
  ea->set_noise_source([](const Shape&, DType dt, Device dev, Generator&) { return zeros({2}, dt, dev); });
  EXPECT_NE(error_of([&] { run_loop(*ea, 3, noise, gz); }).find("noise source"), std::string::npos);
}

TEST(Scheduler, StepErrors) {
  const Tensor x = test::random_tensor({1, 4, 2, 2}, DType::F32, 8);
  auto ddim = make_scheduler("ddim", sd15());
  EXPECT_NE(error_of([&] { ddim->step(x, 1, x); }).find("set_timesteps"), std::string::npos);
  ddim->set_timesteps(4);
  EXPECT_NE(error_of([&] { ddim->step(zeros({1, 4, 2, 3}), 751, x); }).find("differ in shape"), std::string::npos);
  EXPECT_NE(error_of([&] { ddim->step(x, 750.5, x); }).find("not an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { ddim->set_timesteps(0); }).find("num_inference_steps"), std::string::npos);
  EXPECT_NE(error_of([&] { ddim->set_timesteps(1001); }).find("num_train_timesteps"), std::string::npos);
  auto euler = make_scheduler("euler", sd15());
  euler->set_timesteps(4);
  EXPECT_NE(error_of([&] { euler->step(x, 123.0, x); }).find("not in the schedule"), std::string::npos);
  const auto prk = sd15().with_class("PNDMScheduler", R"({"skip_prk_steps": false})");
  EXPECT_NE(error_of([&] { make_scheduler(prk)->set_timesteps(3); }).find("at least 4"), std::string::npos);
  auto lcm = make_scheduler("lcm", sd15());
  EXPECT_NE(error_of([&] { lcm->set_timesteps(51); }).find("original_inference_steps"), std::string::npos);
  // Past the end of the schedule.
  euler->set_timesteps(1);
  const double t = euler->timesteps()[0];
  euler->step(x, t, x);
  EXPECT_NE(error_of([&] { euler->step(x, t, x); }).find("past the last step"), std::string::npos);
}

TEST(Scheduler, HalfPrecisionSamplesStayCloseToFloat32) {
  const Tensor noise = test::random_tensor({1, 4, 4, 4}, DType::F32, 9);
  for (const char* name : {"ddim", "euler", "dpm++2m", "unipc", "pndm", "heun"}) {
    for (DType dt : {DType::F16, DType::BF16}) {
      auto s = make_scheduler(name, sd15());
      Generator g1(1), g2(1);
      const Tensor ref = run_loop(*s, 5, noise, g1);
      const Tensor half = run_loop(*s, 5, copy_to(noise, dt, Device::cpu()), g2);
      EXPECT_EQ(half.dtype(), dt) << name;
      EXPECT_LT(test::relative_error(half, ref), dt == DType::F16 ? 5e-3 : 4e-2) << name << " " << dtype_name(dt);
    }
  }
}

// ---- numpy / torch emulation -----------------------------------------------------------------

TEST(Scheduler, ScheduleMathFollowsNumpyAndTorch) {
  EXPECT_EQ(sched::np_round(0.5), 0.0);  // halves to even
  EXPECT_EQ(sched::np_round(1.5), 2.0);
  EXPECT_EQ(sched::np_round(2.5), 2.0);
  EXPECT_EQ(sched::np_round(-0.5), -0.0);
  const std::vector<double> a = sched::np_arange(1000, 0, -1000.0 / 3);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0], 1000.0);
  EXPECT_EQ(a[1], 1000.0 - 1000.0 / 3);
  EXPECT_EQ(a[2], 1000.0 + 2 * ((1000.0 - 1000.0 / 3) - 1000.0));  // numpy's fill rule
  EXPECT_EQ(sched::np_arange(0, 5, 2).size(), 3u);
  const std::vector<double> l = sched::np_linspace(0, 50, 4, false);
  EXPECT_EQ(l, (std::vector<double>{0, 12.5, 25, 37.5}));
  EXPECT_EQ(sched::np_linspace(0, 999, 1), std::vector<double>{0});
  EXPECT_EQ(sched::np_linspace(0, 999, 20).back(), 999.0);
  const std::vector<float> fp = {1.0f, 3.0f, 7.0f};
  EXPECT_EQ(sched::np_interp({0, 0.25, 1, 1.5, 2, 5, -1}, fp), (std::vector<double>{1, 1.5, 3, 5, 7, 7, 1}));
  const std::vector<float> tl = sched::torch_linspace_f32(0.1, 0.7, 7);
  EXPECT_EQ(tl.front(), 0.1f);
  EXPECT_EQ(tl.back(), 0.7f);
  for (size_t i = 0; i < tl.size(); ++i) EXPECT_NEAR(tl[i], 0.1 + 0.1 * double(i), 1e-7);
  // sigma_to_t inverts the interpolation of log sigma at table points and clamps outside.
  const std::vector<float> ls = sched::log_f32({0.1f, 1.0f, 10.0f});
  EXPECT_DOUBLE_EQ(sched::sigma_to_t(1.0, ls), 1.0);
  EXPECT_NEAR(sched::sigma_to_t(std::sqrt(10.0), ls), 1.5, 1e-6);
  EXPECT_EQ(sched::sigma_to_t(100.0, ls), 2.0);
  EXPECT_EQ(sched::sigma_to_t(0.01, ls), 0.0);
}

}  // namespace
}  // namespace sd::infer
