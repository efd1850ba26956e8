// Backward: walks the recorded nodes reachable from the roots in reverse tape order,
// summing gradients per tensor and accumulating into the .grad of leaves.
#pragma once
#include <vector>

#include "runtime/tensor.h"

namespace sd::autograd {

// d(root)/d(leaves) accumulated into each leaf's .grad. `grad` defaults to ones for a
// one-element root. Saved tensors are freed unless retain_graph (a second backward through
// the same graph then raises sd::Error). Grad-ready hooks of a leaf run once its gradient
// for this pass is complete.
void backward(const Tensor& root, const Tensor& grad = Tensor(), bool retain_graph = false);
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph = false);

// dst += src for gradient accumulation (same shape; any device; computed in dst's dtype).
void accumulate_(const Tensor& dst, const Tensor& src);

}  // namespace sd::autograd
