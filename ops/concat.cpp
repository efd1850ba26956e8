#include "ops/concat.h"

#include <algorithm>

#include "autograd/node.h"
#include "ops/op_common.h"
#include "ops/view.h"
#include "runtime/image_layout.h"

namespace sd {

Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  SD_NVTX_RANGE("cat");
  SD_CHECK(!ts.empty(), "cat: no tensors given");
  detail::check_same("cat", ts);
  const Tensor& first = ts[0];
  SD_CHECK(first.dim() > 0, "cat: cannot concatenate 0-d tensors (", detail::describe(ts), ")");
  const int64_t d = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[d] = 0;
  for (const Tensor& t : ts) {
    bool match = t.dim() == first.dim();
    for (int64_t k = 0; match && k < t.dim(); ++k) match = k == d || t.size(k) == first.size(k);
    SD_CHECK(match, "cat: shapes must match except along dim ", dim, " (", detail::describe(ts), ")");
    shape[d] += t.size(d);
  }

  // Channels-last images concatenate into a channels-last image (the UNet's skip connections),
  // so a model run in that layout keeps it.
  bool channels_last = shape.size() == 4;
  bool any_cl = false;
  for (const Tensor& t : ts) {
    channels_last = channels_last && is_channels_last_dense(t);
    any_cl = any_cl || prefers_channels_last(t);
  }
  // Each input is copied into its slab of the output: a strided view, so this runs on any
  // device through copy_.
  Tensor out = empty_image(shape, first.dtype(), first.device(), channels_last && any_cl);
  std::vector<int64_t> sizes;
  int64_t at = 0;
  for (const Tensor& t : ts) {
    copy_(as_strided(out, t.shape(), out.strides(), at * out.stride(d)), t);
    sizes.push_back(t.size(d));
    at += t.size(d);
  }
  if (is_floating(first.dtype())) {
    if (auto node = autograd::make_node("cat", ts)) {
      node->backward = [sizes, d](Node& n, const std::vector<Tensor>& go) {
        // Input i's gradient is its slab of the output gradient.
        std::vector<Tensor> grads(sizes.size());
        int64_t start = 0;
        for (size_t i = 0; i < sizes.size(); ++i) {
          if (n.needs_input_grad(i)) grads[i] = slice(go[0], d, start, start + sizes[i]);
          start += sizes[i];
        }
        return grads;
      };
      autograd::set_outputs(node, {out});
    }
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  SD_CHECK(x.defined() && x.dim() > 0, "split: needs a tensor with at least 1 dim");
  const int64_t d = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    SD_CHECK(s >= 0, "split: negative size ", s, " for ", x.str());
    total += s;
  }
  SD_CHECK(total == x.size(d), "split: sizes add up to ", total, " but dim ", dim, " of ", x.str(), " has ",
           x.size(d));
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(x, d, start, s));
    start += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  SD_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  SD_CHECK(x.defined() && x.dim() > 0, "chunk: needs a tensor with at least 1 dim");
  const int64_t n = x.size(wrap_dim(dim, x.dim(), "chunk"));
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < n; start += step) sizes.push_back(std::min(step, n - start));
  // An empty dim gives `chunks` empty pieces (as PyTorch does), not none.
  if (n == 0) sizes.assign(size_t(chunks), 0);
  return split(x, sizes, dim);
}

}  // namespace sd
