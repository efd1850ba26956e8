// Compiled with -ffp-contract=off (CMakeLists.txt): every operation rounds like the numpy /
// torch element op it mirrors; the one fused multiply-add torch does use is written out.
#include "infer/schedule_math.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace sd::infer::sched {

std::vector<double> np_linspace(double start, double stop, int64_t num, bool endpoint) {
  SD_CHECK(num >= 0, "linspace: negative count ", num);
  std::vector<double> y(static_cast<size_t>(num));
  const int64_t div = endpoint ? num - 1 : num;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / double(div);
    // numpy: y = arange * step (or /div * delta when the step underflows to 0), then += start.
    for (int64_t i = 0; i < num; ++i) y[size_t(i)] = (step == 0.0 ? double(i) / double(div) * delta : double(i) * step) + start;
  } else {
    for (int64_t i = 0; i < num; ++i) y[size_t(i)] = double(i) * delta + start;
  }
  if (endpoint && num > 1) y.back() = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  SD_CHECK(step != 0.0, "arange: zero step");
  const double len_f = std::ceil((stop - start) / step);
  if (!(len_f > 0)) return {};
  const int64_t len = int64_t(len_f);
  std::vector<double> y(static_cast<size_t>(len));
  y[0] = start;
  if (len > 1) y[1] = start + step;
  // numpy fills the rest from the first two elements: start + i * (x1 - x0).
  const double delta = len > 1 ? y[1] - y[0] : 0.0;
  for (int64_t i = 2; i < len; ++i) y[size_t(i)] = start + double(i) * delta;
  return y;
}

double np_round(double v) { return std::nearbyint(v); }  // default rounding mode: half to even

std::vector<double> np_interp(const std::vector<double>& x, const std::vector<float>& fp) {
  const int64_t n = int64_t(fp.size());
  SD_CHECK(n >= 1, "interp: empty table");
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    if (std::isnan(v)) {
      out[i] = v;
    } else if (v < 0.0) {
      out[i] = fp[0];
    } else if (v >= double(n - 1)) {
      out[i] = fp[size_t(n - 1)];  // the last point, and numpy's `right` beyond it
    } else {
      const int64_t j = int64_t(std::floor(v));
      if (double(j) == v) {
        out[i] = fp[size_t(j)];
      } else {
        // numpy: slope = (y[j+1] - y[j]) / (x[j+1] - x[j]); slope * (x - x[j]) + y[j]
        const double slope = (double(fp[size_t(j + 1)]) - double(fp[size_t(j)])) / (double(j + 1) - double(j));
        out[i] = slope * (v - double(j)) + double(fp[size_t(j)]);
      }
    }
  }
  return out;
}

std::vector<float> torch_linspace_f32(double start_d, double end_d, int64_t steps) {
  SD_CHECK(steps >= 1, "linspace: steps must be >= 1");
  std::vector<float> out(static_cast<size_t>(steps));
  const float start = float(start_d), end = float(end_d);
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  // torch's CPU kernel (float step, halfway split); its `start + step * idx` compiles to an FMA.
  const float step = (end - start) / float(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    out[size_t(i)] = i < halfway ? std::fma(step, float(i), start) : std::fma(-step, float(steps - i - 1), end);
  return out;
}

std::vector<float> make_betas(const SchedulerConfig& c) {
  const int64_t T = c.num_train_timesteps;
  std::vector<float> b;
  if (!c.trained_betas.empty()) {
    for (double v : c.trained_betas) b.push_back(float(v));
    return b;
  }
  if (c.beta_schedule == "linear") return torch_linspace_f32(c.beta_start, c.beta_end, T);
  if (c.beta_schedule == "scaled_linear") {
    b = torch_linspace_f32(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), T);
    for (float& v : b) v = v * v;
    return b;
  }
  if (c.beta_schedule == "squaredcos_cap_v2") {
    // betas_for_alpha_bar (cosine), in Python floats, then torch.tensor(float32).
    auto alpha_bar = [](double t) {
      const double v = std::cos((t + 0.008) / 1.008 * M_PI / 2);
      return v * v;
    };
    for (int64_t i = 0; i < T; ++i) {
      const double t1 = double(i) / double(T), t2 = double(i + 1) / double(T);
      b.push_back(float(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999)));
    }
    return b;
  }
  SD_FAIL("scheduler: beta_schedule \"", c.beta_schedule, "\" is not supported");
}

std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> s = alphas_cumprod(betas);
  for (float& v : s) v = std::sqrt(v);
  const float s0 = s.front(), sT = s.back();
  const float scale = s0 / (s0 - sT);
  for (float& v : s) v = (v - sT) * scale;
  std::vector<float> ab(s.size()), out(s.size());
  for (size_t i = 0; i < s.size(); ++i) ab[i] = s[i] * s[i];
  out[0] = 1.0f - ab[0];
  for (size_t i = 1; i < s.size(); ++i) out[i] = 1.0f - ab[i] / ab[i - 1];
  return out;
}

std::vector<float> alphas_cumprod(const std::vector<float>& betas) {
  std::vector<float> ac(betas.size());
  double acc = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    acc *= double(1.0f - betas[i]);
    ac[i] = float(acc);
  }
  return ac;
}

std::vector<float> sigmas_of(const std::vector<float>& ac) {
  std::vector<float> s(ac.size());
  for (size_t i = 0; i < ac.size(); ++i) s[i] = std::sqrt((1.0f - ac[i]) / ac[i]);
  return s;
}

std::vector<float> log_f32(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float(std::log(double(v[i])));
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const int64_t n = int64_t(log_sigmas.size());
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // low_idx = argmax(cumsum(log_sigma - log_sigmas >= 0)): the last index at or below log_sigma
  // (0 when there is none), clipped to n - 2.
  int64_t low = 0, count = 0, best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - double(log_sigmas[size_t(i)]) >= 0) ++count;
    if (count > best) {
      best = count;
      low = i;
    }
  }
  low = std::min(low, n - 2);
  const int64_t high = low + 1;
  const float lo = log_sigmas[size_t(low)], hi = log_sigmas[size_t(high)];
  // (low - log_sigma) is float64, (low - high) stays float32 (both operands are float32 arrays).
  double w = (double(lo) - log_sigma) / double(lo - hi);
  w = std::clamp(w, 0.0, 1.0);
  return (1.0 - w) * double(low) + w * double(high);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  const std::vector<double> ramp = np_linspace(0.0, 1.0, n);
  const double min_inv = std::pow(sigma_min, 1.0 / rho), max_inv = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> s(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i) s[i] = std::pow(max_inv + ramp[i] * (min_inv - max_inv), rho);
  return s;
}

std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int64_t n) {
  std::vector<double> s = np_linspace(std::log(sigma_max), std::log(sigma_min), n);
  for (double& v : s) v = std::exp(v);
  return s;
}

std::vector<int64_t> spaced_timesteps(const std::string& spacing, int64_t T, int64_t n, int64_t steps_offset) {
  SD_CHECK(n >= 1, "scheduler: num_inference_steps must be >= 1, got ", n);
  std::vector<int64_t> t;
  if (spacing == "linspace") {
    for (double v : np_linspace(0.0, double(T - 1), n)) t.push_back(int64_t(np_round(v)));
    std::reverse(t.begin(), t.end());
  } else if (spacing == "leading") {
    const int64_t ratio = T / n;
    for (int64_t i = n - 1; i >= 0; --i) t.push_back(i * ratio + steps_offset);
  } else if (spacing == "trailing") {
    for (double v : np_arange(double(T), 0.0, -(double(T) / double(n)))) t.push_back(int64_t(np_round(v)) - 1);
  } else {
    SD_FAIL("scheduler: timestep_spacing \"", spacing, "\" is not supported");
  }
  return t;
}

}  // namespace sd::infer::sched
