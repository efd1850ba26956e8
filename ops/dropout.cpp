#include "ops/dropout.h"

#include "autograd/node.h"
#include "ops/cpu/dropout.h"
#include "ops/cuda/dropout.h"
#include "ops/op_common.h"

namespace sd {

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  SD_NVTX_RANGE("dropout");
  SD_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p, " for ", x.str());
  detail::check_floating("dropout", x);
  if (!training || p == 0.0) return x;
  const uint64_t seed = gen.seed;
  const uint64_t offset = gen.advance(uniform_blocks(x.numel()));
  Tensor out = SD_DISPATCH_DEVICE(x, cpu::dropout_masked(x, p, seed, offset), cuda::dropout_masked(x, p, seed, offset));
  if (auto node = autograd::make_node("dropout", {x})) {
    // d out_i / d x_i is mask_i / (1-p): the same masked scaling applied to the gradient,
    // with the mask regenerated from (seed, offset) rather than saved.
    node->backward = [p, seed, offset](Node&, const std::vector<Tensor>& go) {
      const Tensor& g = go[0];
      return std::vector<Tensor>{
          SD_DISPATCH_DEVICE(g, cpu::dropout_masked(g, p, seed, offset), cuda::dropout_masked(g, p, seed, offset))};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

}  // namespace sd
