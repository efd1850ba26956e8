// Schedulers against diffusers 0.42 (tests/golden/make_scheduler_goldens.py): for every case
// (a released config, or a --scheduler switch with overrides, n steps, optional img2img strength
// and DDIM eta) the timesteps must be identical, and the sigmas, init_noise_sigma, UNet-input
// scales and every step of a trajectory (model replaced by eps[i % 3] + 0.05 * input, noise from
// the same table diffusers was fed) must agree to 1e-5 relative.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/scheduler.h"
#include "ops/elementwise.h"
#include "ops/view.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

using json = nlohmann::json;

const std::string kDir = std::string(SD_TEST_DATA_DIR) + "/schedulers";

struct Goldens {
  json meta;
  SafetensorsFile file;
  Tensor t(const std::string& name) const { return file.get(name); }
  bool has(const std::string& name) const { return file.contains(name); }
};

const Goldens& goldens() {
  static const Goldens g = [] {
    std::ifstream in(kDir + "/cases.json");
    EXPECT_TRUE(in.good()) << "missing " << kDir << "/cases.json";
    json j = json::parse(in);
    return Goldens{j, SafetensorsFile::open(kDir + "/goldens.safetensors")};
  }();
  return g;
}

std::string describe(const json& c) {
  std::ostringstream os;
  os << c["preset"].get<std::string>() << " --scheduler " << (c["short"].get<std::string>().empty() ? "(own)" : c["short"].get<std::string>())
     << " " << c["overrides"].dump();
  if (c.contains("n")) os << " n=" << c["n"];
  if (c.contains("strength") && c["strength"].get<double>() < 1) os << " strength=" << c["strength"];
  if (c.contains("eta") && c["eta"].get<double>() > 0) os << " eta=" << c["eta"];
  return os.str();
}

// The case's config built the way the script did: preset, --scheduler switch, then overrides.
SchedulerConfig config_of(const json& c) {
  const std::string preset = c["preset"];
  SchedulerConfig cfg =
      SchedulerConfig::from_json_string(goldens().meta["presets"][preset].get<std::string>(), preset);
  const std::string sh = c["short"];
  if (!sh.empty()) cfg = scheduler_config_for(sh, cfg);
  if (!c["overrides"].empty()) cfg = cfg.with_class(cfg.class_name, c["overrides"].dump());
  return cfg;
}

// Largest |a - e| relative to the largest |e| (a per-state relative error that tiny elements
// cannot blow up).
double max_rel(const std::vector<double>& a, const std::vector<double>& e) {
  if (a.size() != e.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(e[i])) return INFINITY;
    num = std::max(num, std::fabs(a[i] - e[i]));
    den = std::max(den, std::fabs(e[i]));
  }
  return den > 0 ? num / den : num;
}

struct Worst {
  double value = 0;
  std::string where;
  void update(double v, const std::string& w) {
    if (v > value || std::isnan(v)) {
      value = v;
      where = w;
    }
  }
};

// diffusers derives the fractional timesteps of Karras / exponential sigma schedules (Euler,
// Heun) through numpy's float32 log, a SIMD approximation that depends on the CPU
// (infer/schedule_math.h): those agree to ~1e-6 relative, not bit for bit. Integer timesteps
// (DPM-Solver, UniPC round them) are exact.
bool approximate_timesteps(const Scheduler& s) {
  return s.timestep_dtype() == DType::F32 && (s.config().use_karras_sigmas || s.config().use_exponential_sigmas);
}

std::vector<double> floats_as_doubles(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(GoldenScheduler, TrajectoriesMatchDiffusers) {
  const Goldens& g = goldens();
  const double tol = 1e-5;
  Shape shape;
  for (const json& d : g.meta["shape"]) shape.push_back(d.get<int64_t>());
  std::vector<Tensor> eps, noise;
  for (int i = 0; i < 3; ++i) eps.push_back(g.t("eps." + std::to_string(i)));
  for (int i = 0; i < 7; ++i) noise.push_back(g.t("noise." + std::to_string(i)));
  const Tensor sample = g.t("sample"), image = g.t("image"), image_noise = g.t("image_noise");

  Worst traj_err, sigma_err, scale_err;
  int cases = 0, steps = 0, nan_steps = 0;
  std::vector<std::pair<double, std::string>> per_case;  // worst step of each case
  for (const json& c : g.meta["cases"]) {
    const std::string key = c["key"], what = describe(c);
    SCOPED_TRACE(what);
    auto s = make_scheduler(config_of(c));
    const double eta = c["eta"], strength = c["strength"];
    const int64_t n = c["n"];
    if (eta > 0) s->set_eta(eta);
    int64_t draws = 0;
    s->set_noise_source([&](const Shape& sh, DType dt, Device, Generator&) {
      EXPECT_EQ(sh, shape);
      EXPECT_EQ(dt, DType::F32);
      return noise[size_t(draws++ % 7)];
    });
    s->set_timesteps(n, strength);

    // Timesteps: identical (the golden holds them as float32, exact for both kinds), except the
    // fractional ones derived from Karras / exponential sigmas (see approximate_timesteps).
    const std::vector<double> want_t = g.t(key + ".timesteps").to_vector();
    std::vector<double> got_t;
    for (double v : s->all_timesteps()) got_t.push_back(double(float(v)));
    if (approximate_timesteps(*s)) {
      ASSERT_EQ(got_t.size(), want_t.size()) << what;
      for (size_t i = 0; i < got_t.size(); ++i) EXPECT_NEAR(got_t[i], want_t[i], 1e-5 * std::max(want_t[i], 1.0)) << what;
    } else {
      ASSERT_EQ(got_t, want_t) << what;
    }
    const size_t offset = c["run_offset"];
    ASSERT_EQ(s->timesteps().size(), want_t.size() - offset) << what;
    ASSERT_TRUE(std::equal(s->timesteps().begin(), s->timesteps().end(), s->all_timesteps().begin() + int64_t(offset)));

    if (g.has(key + ".sigmas")) {
      const double e = max_rel(floats_as_doubles(s->sigmas()), g.t(key + ".sigmas").to_vector());
      sigma_err.update(e, what);
      EXPECT_LE(e, tol) << "sigmas of " << what;
    } else {
      EXPECT_TRUE(s->sigmas().empty()) << what;
    }
    const double ins = c["init_noise_sigma"];
    EXPECT_NEAR(s->init_noise_sigma(), ins, 1e-6 * ins) << what;

    const Tensor traj = g.t(key + ".traj");
    auto row = [&](int64_t i) { return sd::select(traj, 0, i); };
    Tensor x = strength < 1 ? s->add_noise(image, image_noise, s->timesteps()[0]) : sample * s->init_noise_sigma();
    double e0 = max_rel(x.to_vector(), row(0).to_vector());
    traj_err.update(e0, what + " start");
    EXPECT_LE(e0, tol) << "start of " << what;
    double case_worst = e0;
    for (size_t i = 0; i < s->timesteps().size(); ++i) {
      const double t = s->timesteps()[i];
      const Tensor in = s->scale_model_input(x, t);
      const double scale = s->scale_model_input(ones({1}), t).item();
      const double want_scale = c.contains("scales") ? c["scales"][i].get<double>() : 1.0;
      scale_err.update(std::fabs(scale - want_scale) / want_scale, what);
      EXPECT_NEAR(scale, want_scale, 1e-6 * want_scale) << what << " step " << i;
      const Tensor mo = eps[i % 3] + mul_scalar(in, 0.05);
      x = s->step(mo, t, x);
      const std::vector<double> want = row(int64_t(i) + 1).to_vector();
      if (std::any_of(want.begin(), want.end(), [](double v) { return std::isnan(v); })) {
        // The one known NaN of diffusers here: UniPC bh1's last step to sigma 0 computes
        // alpha_t * B(h) * 0 with B(h) = -inf. sd returns the finite first-order update.
        EXPECT_EQ(s->config().solver_type, "bh1") << what;
        EXPECT_EQ(i + 1, s->timesteps().size()) << what;
        for (double v : x.to_vector()) ASSERT_TRUE(std::isfinite(v)) << what;
        ++nan_steps;
        continue;
      }
      const double e = max_rel(x.to_vector(), want);
      traj_err.update(e, what + " step " + std::to_string(i));
      case_worst = std::max(case_worst, e);
      EXPECT_LE(e, tol) << what << " step " << i;
      ++steps;
    }
    per_case.emplace_back(case_worst, what);
    EXPECT_EQ(draws, c["draws"].get<int64_t>()) << "noise draws of " << what;
    if (g.has(key + ".x0")) {
      ASSERT_TRUE(s->pred_original_sample().defined()) << what;
      const double e = max_rel(s->pred_original_sample().to_vector(), g.t(key + ".x0").to_vector());
      traj_err.update(e, what + " x0");
      EXPECT_LE(e, tol) << "pred_original_sample of " << what;
    }
    ++cases;
  }
  std::cout << "[ scheduler goldens ] " << cases << " cases, " << steps << " steps; worst relative error: "
            << "trajectory " << traj_err.value << " (" << traj_err.where << "), sigmas " << sigma_err.value << " ("
            << sigma_err.where << "), input scale " << scale_err.value << "; " << nan_steps
            << " steps where diffusers returns NaN\n";
  std::sort(per_case.rbegin(), per_case.rend());
  int exact = 0;
  for (const auto& p : per_case) exact += p.first == 0;
  std::cout << "[ scheduler goldens ] " << exact << " of " << per_case.size() << " cases bit-identical; worst:\n";
  for (size_t i = 0; i < std::min<size_t>(6, per_case.size()); ++i)
    std::cout << "    " << per_case[i].first << "  " << per_case[i].second << "\n";
}

TEST(GoldenScheduler, TimestepAndSigmaSweepsMatchDiffusers) {
  const Goldens& g = goldens();
  Worst sigma_err, float_t_err;
  for (const json& sw : g.meta["sweeps"]) {
    const std::string key = sw["key"], what = describe(sw);
    SCOPED_TRACE(what);
    const std::vector<double> ts = g.t(key + ".timesteps").to_vector();
    const std::vector<double> ss = g.has(key + ".sigmas") ? g.t(key + ".sigmas").to_vector() : std::vector<double>();
    size_t at = 0, sat = 0;
    auto s = make_scheduler(config_of(sw));
    const bool approx_t = approximate_timesteps(*s);
    for (size_t k = 0; k < sw["ns"].size(); ++k) {
      const int64_t n = sw["ns"][k];
      s->set_timesteps(n);
      const size_t len = sw["lengths"][k];
      ASSERT_EQ(s->all_timesteps().size(), len) << what << " n=" << n;
      for (size_t i = 0; i < len; ++i) {
        const double got = double(float(s->all_timesteps()[i])), want = ts[at + i];
        if (approx_t) {
          float_t_err.update(std::fabs(got - want) / std::max(want, 1.0), what);
          EXPECT_NEAR(got, want, 1e-5 * std::max(want, 1.0)) << what << " n=" << n << " i=" << i;
        } else {
          ASSERT_EQ(got, want) << what << " n=" << n << " i=" << i;
        }
      }
      at += len;
      if (!ss.empty()) {
        const size_t slen = sw["sigma_lengths"][k];
        const std::vector<double> want(ss.begin() + int64_t(sat), ss.begin() + int64_t(sat + slen));
        const double e = max_rel(floats_as_doubles(s->sigmas()), want);
        sigma_err.update(e, what + " n=" + std::to_string(n));
        EXPECT_LE(e, 1e-5) << what << " n=" << n;
        sat += slen;
      }
    }
    EXPECT_EQ(at, ts.size());
  }
  std::cout << "[ scheduler sweeps ] worst sigma error " << sigma_err.value << " (" << sigma_err.where
            << "), worst Karras float timestep error " << float_t_err.value << " (" << float_t_err.where << ")\n";
}

// alphas_cumprod are bit-identical, except after the zero-SNR rescale: it takes the square root
// of the table, and torch's float32 CPU sqrt (MKL's vectorised one) is not correctly rounded
// (about 0.5% of inputs come out 1 ulp off), while sd uses IEEE sqrt.
TEST(GoldenScheduler, AlphasCumprodMatchDiffusers) {
  const Goldens& g = goldens();
  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> acs = {
      {"sd", "sd15", "ddim", "{}"},
      {"linear", "ddpm_defaults", "", "{}"},
      {"cos", "sd15", "ddim", R"({"beta_schedule": "squaredcos_cap_v2"})"},
      {"zsnr_ddim", "sd15", "ddim", R"({"rescale_betas_zero_snr": true})"},
      {"zsnr_euler", "sd15", "euler", R"({"rescale_betas_zero_snr": true})"},
      {"tiny", "tiny", "", "{}"},
  };
  for (const auto& [name, preset, sh, over] : acs) {
    json c = {{"preset", preset}, {"short", sh}, {"overrides", json::parse(over)}};
    auto s = make_scheduler(config_of(c));
    const std::vector<double> want = g.t("ac." + name).to_vector();
    ASSERT_EQ(s->alphas_cumprod().size(), want.size()) << name;
    int differ = 0;
    double rel = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double got = s->alphas_cumprod()[i];
      differ += got != want[i];
      if (want[i] != 0) rel = std::max(rel, std::fabs(got - want[i]) / want[i]);
      else EXPECT_EQ(got, 0.0) << name << " " << i;
    }
    if (name.rfind("zsnr", 0) == 0) EXPECT_LE(rel, 2e-6) << "alphas_cumprod " << name;
    else EXPECT_EQ(differ, 0) << "alphas_cumprod " << name;
  }
}

TEST(GoldenScheduler, TrainingHelpersMatchDiffusers) {
  const Goldens& g = goldens();
  json c = {{"preset", "sd15"}, {"short", "ddpm"}, {"overrides", json::object()}};
  auto s = make_scheduler(config_of(c));
  const Tensor t = g.t("train.timesteps"), x0 = g.t("train.x0"), nz = g.t("train.noise");
  EXPECT_LE(max_rel(s->add_noise(x0, nz, t).to_vector(), g.t("train.noisy").to_vector()), 1e-6);
  EXPECT_LE(max_rel(s->get_velocity(x0, nz, t).to_vector(), g.t("train.velocity").to_vector()), 1e-6);
  const Tensor snr = s->compute_snr(g.t("train.snr_timesteps"));
  EXPECT_EQ(snr.dtype(), DType::F32);
  const std::vector<double> got = snr.to_vector(), want = g.t("train.snr").to_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6 * want[i]) << i;
}

}  // namespace
}  // namespace sd::infer
