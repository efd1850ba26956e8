#include "tests/cuda/cuda_check.h"

#include <sstream>

#include "autograd/engine.h"
#include "ops/view.h"
#include "runtime/allocator.h"

namespace sd::test {

namespace {

struct PoisonScope {
  PoisonScope() { set_cuda_alloc_poison(true); }
  ~PoisonScope() { set_cuda_alloc_poison(false); }
};

std::vector<Tensor> prepare(const std::vector<Tensor>& inputs, DType dtype, Device dev, const std::vector<bool>& grad) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined()) {
      out.push_back(t);
      continue;
    }
    Tensor c = copy_to(t, is_floating(t.dtype()) ? dtype : t.dtype(), dev);
    if (grad[i]) c.set_requires_grad(true);
    out.push_back(c);
  }
  return out;
}

}  // namespace

::testing::AssertionResult matches_cpu(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
                                       DType dtype, CudaCheckOptions opt) {
  const double tol = opt.tol > 0 ? opt.tol : default_tol(dtype);
  std::vector<bool> grad = opt.grad;
  if (grad.empty())
    for (const Tensor& t : inputs) grad.push_back(opt.backward && t.defined() && is_floating(t.dtype()));

  std::vector<Tensor> cpu_in = prepare(inputs, dtype, Device::cpu(), grad);
  Tensor cpu_out = f(cpu_in);
  Tensor upstream = random_tensor(cpu_out.shape(), cpu_out.dtype(), 4242, -1.0, 1.0);
  if (opt.backward) autograd::backward(cpu_out, upstream);

  std::ostringstream fail;
  {
    PoisonScope poison;
    std::vector<Tensor> gpu_in = prepare(inputs, dtype, Device::cuda(), grad);
    Tensor gpu_out = f(gpu_in);
    if (!gpu_out.is_cuda()) return ::testing::AssertionFailure() << what << ": output is not on the GPU";
    if (gpu_out.shape() != cpu_out.shape())
      return ::testing::AssertionFailure() << what << ": GPU shape " << shape_str(gpu_out.shape()) << " vs CPU "
                                           << shape_str(cpu_out.shape());
    double e = relative_error(gpu_out, cpu_out);
    if (!(e <= tol)) fail << "\n  forward rel err " << e;
    if (opt.backward) {
      autograd::backward(gpu_out, copy_to(upstream, upstream.dtype(), Device::cuda()));
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (!grad[i]) continue;
        Tensor gc = cpu_in[i].grad(), gg = gpu_in[i].grad();
        if (gc.defined() != gg.defined()) {
          fail << "\n  input " << i << ": gradient defined on one device only";
          continue;
        }
        if (!gc.defined()) continue;
        double eg = relative_error(gg, gc);
        if (!(eg <= tol)) fail << "\n  input " << i << " grad rel err " << eg;
      }
    }
  }
  if (!fail.str().empty())
    return ::testing::AssertionFailure() << what << " (" << dtype_name(dtype) << ", tol " << tol << "):" << fail.str();
  return ::testing::AssertionSuccess();
}

}  // namespace sd::test
