#include "ops/softmax.h"

#include "autograd/node.h"
#include "ops/cpu/softmax.h"
#include "ops/cuda/softmax.h"
#include "ops/op_common.h"

namespace sd {

namespace {

Tensor softmax_impl(const char* name, const Tensor& x, int64_t dim_in, bool log) {
  SD_NVTX_RANGE(name);
  detail::check_floating(name, x);
  SD_CHECK(x.dim() >= 1, name, ": input must have at least one dim, got ", x.str());
  const int64_t dim = wrap_dim(dim_in, x.dim(), name);
  Tensor y = SD_DISPATCH_DEVICE(x, cpu::softmax_forward(x, dim, log), cuda::softmax_forward(x, dim, log));
  if (auto node = autograd::make_node(name, {x})) {
    // Both backwards need only the output, not the input.
    node->save(y);
    node->backward = [dim, log](Node& n, const std::vector<Tensor>& go) {
      const Tensor& y = n.saved[0];
      return std::vector<Tensor>{SD_DISPATCH_DEVICE(y, cpu::softmax_backward(go[0], y, dim, log),
                                                    cuda::softmax_backward(go[0], y, dim, log))};
    };
    autograd::set_outputs(node, {y});
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl("log_softmax", x, dim, true); }

}  // namespace sd
