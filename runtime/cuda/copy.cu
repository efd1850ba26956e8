// Strided copy with dtype conversion and fills on the GPU (runtime/cuda_kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/current_stream.cuh"
#include "runtime/cuda_api.h"
#include "runtime/cuda_kernels.h"

namespace sd::cuda_kernels {

using cuda::stream;

namespace {

constexpr int kMaxDims = 10;

struct Geometry {
  int ndim;
  int64_t sizes[kMaxDims];
  int64_t dst_strides[kMaxDims];
  int64_t src_strides[kMaxDims];
};

// Element loads and stores by runtime dtype, through double: exact for every source value
// of f32/f16/bf16/i32/u8/bool, and direct-rounded to the destination type.
__device__ double load_as_double(const char* p, DType t) {
  switch (t) {
    case DType::F32: return *reinterpret_cast<const float*>(p);
    case DType::F16: return __half2float(*reinterpret_cast<const __half*>(p));
    case DType::BF16: return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
    case DType::F64: return *reinterpret_cast<const double*>(p);
    case DType::I32: return *reinterpret_cast<const int32_t*>(p);
    case DType::I64: return double(*reinterpret_cast<const int64_t*>(p));
    case DType::U8: return *reinterpret_cast<const uint8_t*>(p);
    case DType::Bool: return *reinterpret_cast<const bool*>(p) ? 1.0 : 0.0;
  }
  return 0.0;
}

__device__ void store_from_double(char* p, DType t, double v) {
  switch (t) {
    // Through float first for f16/bf16, as the CPU does, so both give the same bits.
    case DType::F32: *reinterpret_cast<float*>(p) = float(v); break;
    case DType::F16: *reinterpret_cast<__half*>(p) = __float2half_rn(float(v)); break;
    case DType::BF16: *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(float(v)); break;
    case DType::F64: *reinterpret_cast<double*>(p) = v; break;
    case DType::I32: *reinterpret_cast<int32_t*>(p) = int32_t(v); break;
    case DType::I64: *reinterpret_cast<int64_t*>(p) = int64_t(v); break;
    case DType::U8: *reinterpret_cast<uint8_t*>(p) = uint8_t(v); break;
    case DType::Bool: *reinterpret_cast<bool*>(p) = v != 0.0; break;
  }
}

__global__ void copy_kernel(char* dst, DType dt, int dsize, const char* src, DType st, int ssize,
                            Geometry g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i, doff = 0, soff = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {
      int64_t idx = r % g.sizes[d];
      r /= g.sizes[d];
      doff += idx * g.dst_strides[d];
      soff += idx * g.src_strides[d];
    }
    const char* s = src + soff * ssize;
    char* o = dst + doff * dsize;
    if (dt == st) {
      switch (dsize) {
        case 1: *o = *s; break;
        case 2: *reinterpret_cast<uint16_t*>(o) = *reinterpret_cast<const uint16_t*>(s); break;
        case 4: *reinterpret_cast<uint32_t*>(o) = *reinterpret_cast<const uint32_t*>(s); break;
        default: *reinterpret_cast<uint64_t*>(o) = *reinterpret_cast<const uint64_t*>(s); break;
      }
    } else if (dt == DType::I64 && st == DType::I32) {
      *reinterpret_cast<int64_t*>(o) = *reinterpret_cast<const int32_t*>(s);
    } else {
      store_from_double(o, dt, load_as_double(s, st));
    }
  }
}

__global__ void fill_kernel(char* dst, DType dt, int dsize, Geometry g, int64_t n, double value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i, off = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {
      off += (r % g.sizes[d]) * g.dst_strides[d];
      r /= g.sizes[d];
    }
    store_from_double(dst + off * dsize, dt, value);
  }
}

Geometry make_geometry(const Tensor& dst, const Tensor* src) {
  SD_CHECK(dst.dim() <= kMaxDims, "cuda copy: at most ", kMaxDims, " dims, got ", dst.str());
  Geometry g{};
  g.ndim = int(dst.dim());
  for (int d = 0; d < g.ndim; ++d) {
    g.sizes[d] = dst.shape()[d];
    g.dst_strides[d] = dst.strides()[d];
    g.src_strides[d] = src ? src->strides()[d] : 0;
  }
  return g;
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 65535)); }

__global__ void axpy_kernel(char* dst, DType dt, int dsize, const char* src, DType st, int ssize, Geometry g,
                            int64_t n, double alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i, doff = 0, soff = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {
      int64_t idx = r % g.sizes[d];
      r /= g.sizes[d];
      doff += idx * g.dst_strides[d];
      soff += idx * g.src_strides[d];
    }
    char* o = dst + doff * dsize;
    const double v = load_as_double(src + soff * ssize, st);
    if (dt == DType::F64) {
      store_from_double(o, dt, load_as_double(o, dt) + alpha * v);
    } else {  // f32 arithmetic like the CPU
      store_from_double(o, dt, double(float(load_as_double(o, dt)) + float(alpha) * float(v)));
    }
  }
}

}  // namespace

void axpy(const Tensor& dst, const Tensor& src, double alpha) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudart::set_device(dst.device().index);
  Geometry g = make_geometry(dst, &src);
  axpy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<char*>(dst.data_ptr()), dst.dtype(), int(dst.element_size()),
                                    static_cast<const char*>(src.data_ptr()), src.dtype(), int(src.element_size()),
                                    g, n, alpha);
  SD_CUDA_CHECK_LAUNCH("axpy_kernel");
}

void copy_strided(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  SD_CHECK(src.shape() == dst.shape(), "cuda copy: shapes differ: ", src.str(), " -> ", dst.str());
  cudart::set_device(dst.device().index);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    SD_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
  Geometry g = make_geometry(dst, &src);
  copy_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<char*>(dst.data_ptr()), dst.dtype(), int(dst.element_size()),
                                    static_cast<const char*>(src.data_ptr()), src.dtype(),
                                    int(src.element_size()), g, n);
  SD_CUDA_CHECK_LAUNCH("copy_kernel");
}

void fill(const Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  cudart::set_device(dst.device().index);
  Geometry g = make_geometry(dst, nullptr);
  fill_kernel<<<grid_for(n), 256, 0, stream()>>>(static_cast<char*>(dst.data_ptr()), dst.dtype(), int(dst.element_size()), g,
                                    n, value);
  SD_CUDA_CHECK_LAUNCH("fill_kernel");
}

}  // namespace sd::cuda_kernels
