// Activation recomputation. The forward of `fn` runs without recording; one node stands for
// it on the tape and saves only its inputs. Its backward replays `fn` under a fresh tape
// (with the random-number state it saw the first time, so dropout masks repeat) and
// back-propagates through the replay. Parameters used inside get their gradients then.
#pragma once
#include <functional>
#include <vector>

#include "runtime/tensor.h"

namespace sd::autograd {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs);
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input);

}  // namespace sd::autograd
