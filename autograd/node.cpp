#include "autograd/node.h"

#include <atomic>

namespace sd {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_next_seq{1};
std::atomic<int64_t> g_saved_bytes{0};
std::atomic<int64_t> g_saved_peak{0};

void count_saved(int64_t delta) {
  int64_t now = g_saved_bytes += delta;
  int64_t peak = g_saved_peak.load();
  while (now > peak && !g_saved_peak.compare_exchange_weak(peak, now)) {
  }
}

TensorMeta meta_of(const Tensor& t) { return {t.shape(), t.dtype(), t.device()}; }

std::shared_ptr<Node> build_node(const char* name, const std::vector<Tensor>& inputs) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->seq = g_next_seq++;
  node->next.resize(inputs.size());
  node->inputs.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    node->inputs.push_back(t.defined() ? meta_of(t) : TensorMeta{});
    if (!t.defined() || !t.requires_grad()) continue;
    if (t.grad_fn()) {
      node->next[i].node = t.grad_fn();
      node->next[i].output_nr = t.impl()->autograd.output_nr;
    } else {
      node->next[i].leaf = t.impl_ptr();
    }
  }
  return node;
}
}  // namespace

Node::~Node() { release_saved(); }

size_t Node::save(const Tensor& t) {
  saved.push_back(detach(t));
  if (t.defined()) {
    saved_bytes_ += int64_t(t.nbytes());
    count_saved(int64_t(t.nbytes()));
  }
  return saved.size() - 1;
}

void Node::release_saved() {
  saved.clear();
  if (saved_bytes_) count_saved(-saved_bytes_);
  saved_bytes_ = 0;
}

namespace autograd {

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

std::shared_ptr<Node> make_node(const char* name, const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return nullptr;
  bool any = false;
  for (const Tensor& t : inputs) any |= t.defined() && t.requires_grad();
  if (!any) return nullptr;
  return build_node(name, inputs);
}

std::shared_ptr<Node> make_node_always(const char* name, const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return nullptr;
  return build_node(name, inputs);
}

void set_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs) {
  node->outputs.clear();
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    SD_CHECK(t.defined(), node->name, ": output ", i, " is undefined");
    SD_CHECK(is_floating(t.dtype()), node->name, ": output ", i, " (", t.str(), ") cannot carry a gradient");
    node->outputs.push_back(meta_of(t));
    AutogradMeta& m = t.impl()->autograd;
    m.requires_grad = true;
    m.grad_fn = node;
    m.output_nr = uint32_t(i);
  }
}

int64_t saved_bytes() { return g_saved_bytes; }
int64_t saved_bytes_peak() { return g_saved_peak; }
void reset_saved_bytes_peak() { g_saved_peak = g_saved_bytes.load(); }

}  // namespace autograd
}  // namespace sd
