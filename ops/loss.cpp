// mse_loss as a composition of differentiable ops (sub, square, mean/sum, mul): the
// gradients come from those ops, and the memory cost is one saved difference tensor.
#include "ops/loss.h"

#include <vector>

#include "ops/elementwise.h"
#include "ops/op_common.h"
#include "ops/reduce.h"
#include "ops/view.h"

namespace sd {

Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction reduction, const Tensor& sample_weights) {
  SD_NVTX_RANGE("mse_loss");
  detail::check_same("mse_loss", {pred, target});
  detail::check_floating("mse_loss", pred);
  SD_CHECK(pred.shape() == target.shape(), "mse_loss: pred ", pred.str(), " and target ", target.str(),
           " must have the same shape");
  Tensor sq = square(sub(pred, target));

  if (!sample_weights.defined()) {
    switch (reduction) {
      case Reduction::None: return sq;
      case Reduction::Mean: return mean_all(sq);
      case Reduction::Sum: return sum_all(sq);
    }
    SD_FAIL("mse_loss: bad reduction");
  }

  detail::check_floating("mse_loss", sample_weights);
  SD_CHECK(pred.dim() >= 1 && sample_weights.dim() == 1 && sample_weights.size(0) == pred.size(0),
           "mse_loss: sample_weights must be [N] for pred [N, ...], got ", sample_weights.str(), " for ",
           pred.str());
  SD_CHECK(sample_weights.device() == pred.device(), "mse_loss: sample_weights ", sample_weights.str(),
           " is on another device than pred ", pred.str());
  // Weights are constants of the loss: no history, and pred's dtype so mul needs no promotion.
  Tensor w = detach(sample_weights);
  if (w.dtype() != pred.dtype()) w = copy_to(w, pred.dtype(), w.device());

  if (reduction == Reduction::None) {
    Shape wshape(pred.dim(), 1);  // [N, 1, 1, ...] broadcasts over each sample's elements
    wshape[0] = pred.size(0);
    return mul(sq, reshape(w, wshape));
  }
  // Per-sample reduction over every dim but the batch: [N, ...] -> [N].
  std::vector<int64_t> sample_dims;
  for (int64_t d = 1; d < pred.dim(); ++d) sample_dims.push_back(d);
  Tensor per_sample = sample_dims.empty()
                          ? sq
                          : (reduction == Reduction::Mean ? mean(sq, sample_dims) : sum(sq, sample_dims));
  Tensor weighted = mul(per_sample, w);
  return reduction == Reduction::Mean ? mean_all(weighted) : sum_all(weighted);
}

}  // namespace sd
