// Embedding gather and its deterministic grouped backward.
#include <algorithm>
#include <numeric>
#include <vector>

#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/embedding.h"

namespace sd::cuda {

namespace {

// out[i, d] = w[ids[i], d]: a plain copy of elements, no arithmetic.
template <class T, class I>
__global__ void gather_kernel(const T* w, int64_t ws0, int64_t ws1, const I* ids, T* out, int64_t n, int64_t D) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / D, d = i - r * D;
    out[i] = w[int64_t(ids[r]) * ws0 + d * ws1];
  }
}

// Hit row r (of R) is table row rows[r]; its positions are order[start[r] .. start[r+1]),
// increasing. out[rows[r], d] = sum of g[pos, d] over them.
template <class T>
__global__ void grouped_sum_kernel(const T* g, const int64_t* rows, const int64_t* start, const int64_t* order,
                                   T* out, int64_t R, int64_t D) {
  using A = acc_t<T>;
  const int64_t total = R * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / D, d = i - r * D;
    A acc = A(0);
    for (int64_t k = start[r]; k < start[r + 1]; ++k) acc += to_acc(g[order[k] * D + d]);
    out[rows[r] * D + d] = from_acc<T>(acc);
  }
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids_in) {
  set_device_of(weight);
  const int64_t D = weight.size(1);
  Shape shape = ids_in.shape();
  shape.push_back(D);
  Tensor out = empty(shape, weight.dtype(), weight.device());
  const int64_t n = ids_in.numel();
  if (out.numel() == 0) return out;
  Tensor ids = contiguous_raw(ids_in);
  dispatch_float(weight.dtype(), "embedding", [&]<class T>() {
    const T* w = static_cast<const T*>(weight.data_ptr());
    T* o = static_cast<T*>(out.data_ptr());
    if (ids.dtype() == DType::I32) {
      gather_kernel<T, int32_t><<<grid_1d(n * D), 256, 0, stream()>>>(w, weight.stride(0), weight.stride(1),
                                                         static_cast<const int32_t*>(ids.data_ptr()), o, n, D);
    } else {
      gather_kernel<T, int64_t><<<grid_1d(n * D), 256, 0, stream()>>>(w, weight.stride(0), weight.stride(1),
                                                         static_cast<const int64_t*>(ids.data_ptr()), o, n, D);
    }
    SD_CUDA_CHECK_LAUNCH("embedding gather_kernel");
  });
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t V) {
  set_device_of(grad);
  const int64_t D = grad.size(-1), n = ids.numel();
  Tensor out = zeros({V, D}, grad.dtype(), grad.device());
  if (n == 0 || D == 0) return out;

  // Group positions by id on the host: a stable sort keeps each group's positions increasing.
  Tensor host = copy_to(ids, DType::I64, Device::cpu());
  const int64_t* id = host.data<int64_t>();
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [id](int64_t a, int64_t b) { return id[a] < id[b]; });
  std::vector<int64_t> rows, start;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t v = id[order[size_t(k)]];
    if (rows.empty() || rows.back() != v) {
      rows.push_back(v);
      start.push_back(k);
    }
  }
  start.push_back(n);
  const int64_t R = int64_t(rows.size());

  // One upload: [rows (R), start (R + 1), order (n)].
  Tensor packed = empty({2 * R + 1 + n}, DType::I64, Device::cpu());
  int64_t* pk = packed.data<int64_t>();
  std::copy(rows.begin(), rows.end(), pk);
  std::copy(start.begin(), start.end(), pk + R);
  std::copy(order.begin(), order.end(), pk + 2 * R + 1);
  Tensor dev = copy_to(packed, DType::I64, grad.device());
  const int64_t* dp = static_cast<const int64_t*>(dev.data_ptr());

  Tensor g = contiguous_raw(grad);
  dispatch_float(grad.dtype(), "embedding backward", [&]<class T>() {
    grouped_sum_kernel<T><<<grid_1d(R * D), 256, 0, stream()>>>(static_cast<const T*>(g.data_ptr()), dp, dp + R, dp + 2 * R + 1,
                                                  static_cast<T*>(out.data_ptr()), R, D);
    SD_CUDA_CHECK_LAUNCH("embedding grouped_sum_kernel");
  });
  return out;
}

}  // namespace sd::cuda
