// The schedule arrays of diffusers' schedulers, computed with the same arithmetic as the numpy
// and torch calls diffusers makes, so timesteps come out identical and sigmas identical or
// within an ulp:
//   * numpy (float64): linspace (i*step + start, last = stop), arange with a float step
//     (start + i*(x1 - x0), numpy's fill rule), round half to even, interp.
//   * torch float32 on the CPU: linspace (start + step*i, or end - step*(n-1-i) from the
//     middle on, each a fused multiply-add in torch's compiled kernel), cumprod accumulated in
//     double and rounded per element, elementwise ops rounded per op.
// One known difference: numpy's float32 log (used on the sigma table by _sigma_to_t) is a SIMD
// approximation that depends on the CPU; here it is the correctly rounded log. Timesteps that
// diffusers derives from it (Karras / exponential sigmas) agree after rounding to integers
// (DPM-Solver, UniPC) and to about 1e-6 relative where they stay fractional (Euler, Heun).
#pragma once
#include <cstdint>
#include <vector>

#include "infer/scheduler_config.h"

namespace sd::infer::sched {

// numpy.linspace(start, stop, num, endpoint) in float64.
std::vector<double> np_linspace(double start, double stop, int64_t num, bool endpoint = true);
// numpy.arange(start, stop, step) with a float step, in float64.
std::vector<double> np_arange(double start, double stop, double step);
// numpy.round / rint: halves to even.
double np_round(double v);
// numpy.interp(x, arange(len(fp)), fp) in float64.
std::vector<double> np_interp(const std::vector<double>& x, const std::vector<float>& fp);
// torch.linspace(start, end, steps, dtype=torch.float32) on the CPU.
std::vector<float> torch_linspace_f32(double start, double end, int64_t steps);

// betas as diffusers' __init__ builds them (float32), before any zero-SNR rescale.
std::vector<float> make_betas(const SchedulerConfig& c);
// diffusers' rescale_zero_terminal_snr(betas) in float32 torch arithmetic.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas);
// alphas_cumprod = cumprod(1 - betas) (float32, accumulated in double like torch's CPU cumprod).
std::vector<float> alphas_cumprod(const std::vector<float>& betas);
// ((1 - ac) / ac) ** 0.5 in float32.
std::vector<float> sigmas_of(const std::vector<float>& alphas_cumprod);
// Elementwise float32 log (correctly rounded; see the note above).
std::vector<float> log_f32(const std::vector<float>& v);
// diffusers' _sigma_to_t(sigma, log_sigmas): fractional timestep of sigma, interpolating log sigma.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
// _convert_to_karras (rho 7) and _convert_to_exponential, in float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);
std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int64_t n);

// Timesteps of the integer-timestep schedulers (DDPM, DDIM): `spacing` for n of T steps.
std::vector<int64_t> spaced_timesteps(const std::string& spacing, int64_t T, int64_t n, int64_t steps_offset);

}  // namespace sd::infer::sched
