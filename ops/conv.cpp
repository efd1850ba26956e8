#include "ops/conv.h"

#include "autograd/node.h"
#include "ops/cpu/conv.h"
#include "ops/cuda/conv.h"
#include "runtime/image_layout.h"
#include "ops/op_common.h"
#include "ops/reduce.h"
#include "ops/view.h"

namespace sd {

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, std::array<int64_t, 2> stride,
              std::array<int64_t, 2> padding) {
  SD_NVTX_RANGE("conv2d");
  const char* op = "conv2d";
  detail::check_same(op, bias.defined() ? std::vector<Tensor>{x, weight, bias} : std::vector<Tensor>{x, weight});
  detail::check_floating(op, x);
  detail::check_dim(op, x, 4, "input [N, C, H, W]");
  detail::check_dim(op, weight, 4, "weight [O, C, kh, kw]");
  SD_CHECK(weight.size(1) == x.size(1), "conv2d: input ", x.str(), " has ", x.size(1), " channels, weight ",
           weight.str(), " expects ", weight.size(1));
  SD_CHECK(weight.size(2) > 0 && weight.size(3) > 0 && weight.size(1) > 0, "conv2d: empty kernel ", weight.str());
  if (bias.defined())
    SD_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "conv2d: bias ", bias.str(),
             " does not match weight ", weight.str());
  SD_CHECK(stride[0] > 0 && stride[1] > 0, "conv2d: stride must be positive, got (", stride[0], ", ", stride[1], ")");
  SD_CHECK(padding[0] >= 0 && padding[1] >= 0, "conv2d: padding must be non-negative, got (", padding[0], ", ",
           padding[1], ")");
  SD_CHECK(x.size(2) + 2 * padding[0] >= weight.size(2) && x.size(3) + 2 * padding[1] >= weight.size(3),
           "conv2d: kernel ", weight.str(), " is larger than the padded input ", x.str(), " (padding ", padding[0],
           ", ", padding[1], ")");

  const cpu::Conv2dGeom g{stride[0], stride[1], padding[0], padding[1]};
  Tensor out = SD_DISPATCH_DEVICE(x, cpu::conv2d(x, weight, bias, g), cuda::conv2d(x, weight, bias, g));
  if (auto node = autograd::make_node(op, {x, weight, bias})) {
    const bool need_x = node->needs_input_grad(0), need_w = node->needs_input_grad(1),
               need_b = node->needs_input_grad(2);
    // grad_x needs the weight, grad_w needs the input: keep only what is used.
    node->save(need_w ? x : Tensor());
    node->save(need_x ? weight : Tensor());
    const Shape x_shape = x.shape(), w_shape = weight.shape();
    // On the GPU, grad_x takes x's layout (channels-last or NCHW), like the forward output.
    [[maybe_unused]] const bool x_channels_last = prefers_channels_last(x);
    // and grad_weight the weight's layout (a channels-last model keeps its 3x3 weights so).
    [[maybe_unused]] const bool w_channels_last = prefers_channels_last(weight);
    node->backward = [=](Node& n, const std::vector<Tensor>& go) {
      const Tensor& gy = go[0];
      Tensor gx, gw, gb;
      if (need_x)
        gx = SD_DISPATCH_DEVICE(gy, cpu::conv2d_grad_input(gy, n.saved[1], x_shape, g),
                                cuda::conv2d_grad_input(gy, n.saved[1], x_shape, g, x_channels_last));
      if (need_w)
        gw = SD_DISPATCH_DEVICE(gy, cpu::conv2d_grad_weight(gy, n.saved[0], w_shape, g),
                                cuda::conv2d_grad_weight(gy, n.saved[0], w_shape, g, w_channels_last));
      if (need_b) gb = sum(gy, {0, 2, 3});
      return std::vector<Tensor>{gx, gw, gb};
    };
    autograd::set_outputs(node, {out});
  }
  return out;
}

Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom, double value) {
  SD_NVTX_RANGE("pad2d");
  SD_CHECK(x.defined() && x.dim() >= 2, "pad2d: input needs at least 2 dims, got ",
           x.defined() ? x.str() : std::string("an undefined tensor"));
  SD_CHECK(left >= 0 && right >= 0 && top >= 0 && bottom >= 0, "pad2d: padding must be non-negative, got (left ",
           left, ", right ", right, ", top ", top, ", bottom ", bottom, ") for ", x.str());
  const int64_t H = x.size(-2), W = x.size(-1);
  Shape shape = x.shape();
  shape[shape.size() - 2] = top + H + bottom;
  shape[shape.size() - 1] = left + W + right;
  // The border from a fill, the interior a strided copy: both run on any device. On the GPU
  // a channels-last image stays channels-last (the VAE pads before its strided convs).
  Tensor out;
  if (x.is_cuda() && prefers_channels_last(x)) {
    out = empty_image(shape, x.dtype(), x.device(), true);
    fill_(out, value);
  } else {
    out = full(shape, value, x.dtype(), x.device());
  }
  const Shape& st = out.strides();
  copy_(as_strided(out, x.shape(), st, top * st[st.size() - 2] + left * st.back()), x);
  if (is_floating(x.dtype())) {
    if (auto node = autograd::make_node("pad2d", {x})) {
      node->backward = [=](Node&, const std::vector<Tensor>& go) {
        // The gradient of the interior; the constant border has none.
        return std::vector<Tensor>{slice(slice(go[0], -2, top, top + H), -1, left, left + W)};
      };
      autograd::set_outputs(node, {out});
    }
  }
  return out;
}

}  // namespace sd
