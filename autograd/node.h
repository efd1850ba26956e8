// A recorded op on the tape: its backward function, the tensors it saved, and an edge per
// input telling where that input's gradient goes (the producing node, or a leaf's .grad).
//
// Convention: backward returns one gradient per input (undefined where none is needed);
// parameter gradients accumulate (+=) into .grad, activation gradients are fresh tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace sd {

struct Edge {
  std::shared_ptr<Node> node;        // the input was produced by this node ...
  uint32_t output_nr = 0;            // ... as this output
  std::shared_ptr<TensorImpl> leaf;  // or the input is a leaf that requires grad
  bool valid() const { return node || leaf; }
};

struct TensorMeta {
  Shape shape;
  DType dtype;
  Device device;
};

struct Node {
  using BackwardFn = std::function<std::vector<Tensor>(Node& self, const std::vector<Tensor>& grad_outputs)>;

  std::string name;
  uint64_t seq = 0;                 // position on the tape: backward runs in decreasing seq
  std::vector<Edge> next;           // one per input
  std::vector<TensorMeta> inputs;   // shape/dtype/device of each input (for checks)
  std::vector<TensorMeta> outputs;  // of each output (for zero gradients and checks)
  std::vector<Tensor> saved;        // data the backward needs, without history
  BackwardFn backward;
  bool released = false;            // saved tensors freed after a backward without retain_graph

  ~Node();
  bool needs_input_grad(size_t i) const { return i < next.size() && next[i].valid(); }
  // Saves a detached alias of t (no history, so no reference cycle) and counts its bytes.
  // Returns its index in `saved`.
  size_t save(const Tensor& t);
  void release_saved();

 private:
  int64_t saved_bytes_ = 0;
};

namespace autograd {

bool grad_enabled();
void set_grad_enabled(bool on);

// While alive, ops record nothing (inference, optimizer steps, backward itself).
class NoGrad {
 public:
  NoGrad() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGrad() { set_grad_enabled(prev_); }
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool prev_;
};

class EnableGrad {
 public:
  EnableGrad() : prev_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGrad() { set_grad_enabled(prev_); }
  EnableGrad(const EnableGrad&) = delete;
  EnableGrad& operator=(const EnableGrad&) = delete;

 private:
  bool prev_;
};

// A node for an op over `inputs`, or null when nothing needs a gradient (grad disabled or
// no input requires grad): ops then skip saving anything.
std::shared_ptr<Node> make_node(const char* name, const std::vector<Tensor>& inputs);
// The same, but always created while grad is enabled (checkpoint: parameters used inside
// need gradients even when the block's inputs do not).
std::shared_ptr<Node> make_node_always(const char* name, const std::vector<Tensor>& inputs);
// Marks `outputs` as produced by `node` (sets grad_fn, output_nr, requires_grad).
void set_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs);

// Bytes held by saved tensors of live nodes, and the high-water mark since the last reset.
int64_t saved_bytes();
int64_t saved_bytes_peak();
void reset_saved_bytes_peak();

}  // namespace autograd
}  // namespace sd
