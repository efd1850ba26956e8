#include "autograd/checkpoint.h"

#include "autograd/engine.h"
#include "autograd/node.h"
#include "runtime/rng.h"

namespace sd::autograd {

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return fn(inputs);

  const uint64_t rng_offset_before = default_generator().offset;
  std::vector<Tensor> outputs;
  {
    NoGrad no_grad;
    outputs = fn(inputs);
  }
  const uint64_t rng_offset_after = default_generator().offset;

  auto node = make_node_always("checkpoint", inputs);
  for (const Tensor& t : inputs) node->save(t);  // only the inputs are kept
  std::vector<bool> input_requires_grad;
  for (const Tensor& t : inputs) input_requires_grad.push_back(t.defined() && t.requires_grad());

  node->backward = [fn, input_requires_grad, rng_offset_before, rng_offset_after](
                       Node& self, const std::vector<Tensor>& grad_outputs) {
    // Replay with fresh leaves standing in for the inputs, under a fresh tape.
    std::vector<Tensor> replay_inputs;
    for (size_t i = 0; i < self.saved.size(); ++i) {
      Tensor x = detach(self.saved[i]);
      if (input_requires_grad[i]) x.set_requires_grad(true);
      replay_inputs.push_back(x);
    }
    std::vector<Tensor> replay_outputs;
    Generator& gen = default_generator();
    const uint64_t resume_offset = gen.offset;
    gen.offset = rng_offset_before;  // same random numbers as the first forward
    {
      EnableGrad enable;
      replay_outputs = fn(replay_inputs);
    }
    SD_CHECK(gen.offset == rng_offset_after, "checkpoint: the replayed forward drew different random numbers");
    gen.offset = resume_offset;
    SD_CHECK(replay_outputs.size() == grad_outputs.size(), "checkpoint: replay returned ", replay_outputs.size(),
             " outputs, first run ", grad_outputs.size());

    std::vector<Tensor> roots, grads;
    for (size_t k = 0; k < replay_outputs.size(); ++k) {
      if (replay_outputs[k].requires_grad()) {
        roots.push_back(replay_outputs[k]);
        grads.push_back(grad_outputs[k]);
      }
    }
    if (!roots.empty()) backward(roots, grads);
    std::vector<Tensor> input_grads;
    for (Tensor& x : replay_inputs) input_grads.push_back(x.requires_grad() ? x.grad() : Tensor());
    return input_grads;
  };
  // Outputs are fresh aliases so that the node's outputs carry its history.
  std::vector<Tensor> results;
  for (const Tensor& t : outputs) results.push_back(detach(t));
  set_outputs(node, results);
  return results;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input) {
  return checkpoint([fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in[0])}; },
                    std::vector<Tensor>{input})[0];
}

}  // namespace sd::autograd
