#include "ops/upsample.h"

#include "autograd/node.h"
#include "ops/cpu/upsample.h"
#include "ops/cuda/upsample.h"
#include "ops/op_common.h"

namespace sd {

Tensor upsample_nearest2d(const Tensor& x, int64_t scale) {
  SD_NVTX_RANGE("upsample_nearest2d");
  const char* op = "upsample_nearest2d";
  detail::check_floating(op, x);
  detail::check_dim(op, x, 4, "input [N, C, H, W]");
  SD_CHECK(scale >= 1, "upsample_nearest2d: scale must be at least 1, got ", scale);
  Tensor out = SD_DISPATCH_DEVICE(x, cpu::upsample_nearest2d(x, scale), cuda::upsample_nearest2d(x, scale));
  if (auto node = autograd::make_node(op, {x})) {
    node->backward = [scale](Node&, const std::vector<Tensor>& go) {
      return std::vector<Tensor>{SD_DISPATCH_DEVICE(go[0], cpu::upsample_nearest2d_backward(go[0], scale),
                                                    cuda::upsample_nearest2d_backward(go[0], scale))};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

}  // namespace sd
