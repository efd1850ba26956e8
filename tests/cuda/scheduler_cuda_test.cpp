// The schedulers on CUDA tensors against the same loop on the CPU: every class (text2img and
// img2img, the stochastic ones fed the same noise table), add_noise / get_velocity /
// compute_snr with timesteps on the GPU. Skipped without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "infer/scheduler.h"
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace sd::infer {
namespace {

const std::string kSD15 = R"({"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
  "steps_offset": 1, "clip_sample": false})";

Tensor on(const Tensor& t, Device d) { return copy_to(t, t.dtype(), d); }

// A text2img (strength 1) or img2img loop on `dev`; the model is a fixed function of the input.
Tensor run(const std::string& name, Device dev, double strength, double eta) {
  auto s = make_scheduler(name, SchedulerConfig::from_json_string(kSD15));
  std::vector<Tensor> table;
  for (uint64_t k = 0; k < 5; ++k) table.push_back(test::random_tensor({2, 4, 8, 8}, DType::F32, 100 + k));
  int64_t draws = 0;
  s->set_noise_source([&](const Shape&, DType dt, Device d, Generator&) {
    return copy_to(table[size_t(draws++ % 5)], dt, d);
  });
  if (eta > 0) s->set_eta(eta);
  s->set_timesteps(12, strength);
  const Tensor noise = on(test::random_tensor({2, 4, 8, 8}, DType::F32, 1), dev);
  const Tensor e = on(test::random_tensor({2, 4, 8, 8}, DType::F32, 2), dev);
  Tensor x = strength < 1 ? s->add_noise(on(test::random_tensor({2, 4, 8, 8}, DType::F32, 3), dev), noise,
                                         s->timesteps()[0])
                          : noise * s->init_noise_sigma();
  for (double t : s->timesteps()) {
    const Tensor in = s->scale_model_input(x, t);
    x = s->step(e + mul_scalar(in, 0.05), t, x);
  }
  EXPECT_TRUE(x.device() == dev) << name;
  return x;
}

TEST(CudaScheduler, LoopsMatchTheCpu) {
  SD_REQUIRE_CUDA();
  for (const std::string& name : scheduler_short_names()) {
    for (double strength : {1.0, 0.6}) {
      const Tensor cpu = run(name, Device::cpu(), strength, 0.0);
      const Tensor gpu = run(name, Device::cuda(), strength, 0.0);
      EXPECT_LT(test::relative_error(gpu, cpu), 1e-6) << name << " strength " << strength;
    }
  }
  EXPECT_LT(test::relative_error(run("ddim", Device::cuda(), 1.0, 1.0), run("ddim", Device::cpu(), 1.0, 1.0)), 1e-6);
}

TEST(CudaScheduler, TrainingHelpersMatchTheCpu) {
  SD_REQUIRE_CUDA();
  auto s = make_scheduler("ddpm", SchedulerConfig::from_json_string(kSD15));
  const Tensor x = test::random_tensor({3, 4, 5, 5}, DType::F32, 4), z = test::random_tensor({3, 4, 5, 5}, DType::F32, 5);
  const Tensor t = from_vector({0, 321, 999}, {3}, DType::I64);
  const Device g = Device::cuda();
  EXPECT_LT(test::relative_error(s->add_noise(on(x, g), on(z, g), on(t, g)), s->add_noise(x, z, t)), 1e-6);
  EXPECT_LT(test::relative_error(s->get_velocity(on(x, g), on(z, g), on(t, g)), s->get_velocity(x, z, t)), 1e-6);
  const Tensor snr = s->compute_snr(on(t, g));
  EXPECT_TRUE(snr.is_cuda());
  EXPECT_EQ(snr.to_vector(), s->compute_snr(t).to_vector());
}

}  // namespace
}  // namespace sd::infer
