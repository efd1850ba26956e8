// Multi-tensor optimizer kernels (ops/cuda/optim.h). The elements of every tensor of a list
// are cut into chunks of kChunk; the single launch has one thread block per chunk of the
// whole list, and a table of per-tensor records (pointers, dtypes, sizes, first chunk)
// tells each block where its chunk lives.
//
// The AdamW and EMA arithmetic is written with explicitly rounded operations (__fmul_rn,
// __fadd_rn, ...) in the order of the CPU kernel, which is compiled without contraction:
// nvcc cannot fuse them into FMAs, so GPU and CPU produce the same f32 bits.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <type_traits>

#include "ops/cuda/cuda_common.cuh"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/optim.h"

namespace sd::cuda {

namespace {

constexpr int kThreads = 256;
// 16K elements per block (64 per thread): a 1M-element tensor already gives 64 blocks, and
// the table of a UNet (~700 tensors) stays small.
constexpr int64_t kChunk = int64_t(1) << 14;

// One tensor of a multi-tensor launch; what ptr[k] / dtype[k] hold depends on the kernel.
struct Rec {
  void* ptr[5];
  int64_t numel;
  int64_t first_chunk;  // this tensor's chunks are blocks [first_chunk, first_chunk + ceil(numel / kChunk))
  DType dtype[5];
};

// The record table, on the device.
struct Table {
  Tensor buffer;  // owns the device copy of the records
  const Rec* recs = nullptr;
  int count = 0;
  int64_t chunks = 0;
};

// Numbers the chunks, drops empty tensors (they own no chunk) and copies the records to
// the device in one transfer. The caller has made the tensors' GPU current.
Table upload(const std::vector<Rec>& in, Device dev) {
  Table t;
  std::vector<Rec> recs;
  for (Rec r : in) {
    if (r.numel == 0) continue;
    r.first_chunk = t.chunks;
    t.chunks += (r.numel + kChunk - 1) / kChunk;
    recs.push_back(r);
  }
  if (recs.empty()) return t;
  SD_CHECK(t.chunks <= INT_MAX, "cuda optimizer kernels: ", t.chunks, " chunks exceed the grid limit");
  const size_t bytes = recs.size() * sizeof(Rec);
  // I64 elements: the records hold int64_t and pointers, so the buffer is 8-byte aligned.
  t.buffer = empty({int64_t((bytes + 7) / 8)}, DType::I64, dev);
  // From pageable memory the runtime stages the bytes before returning (the host vector may
  // die), without waiting for the device; the current stream orders it before the kernel.
  SD_CUDA_CHECK(cudaMemcpyAsync(t.buffer.data_ptr(), recs.data(), bytes, cudaMemcpyHostToDevice, stream()));
  t.recs = static_cast<const Rec*>(t.buffer.data_ptr());
  t.count = int(recs.size());
  return t;
}

// The chunk of this block: elements [begin, end) of tensor `rec`.
struct Span {
  const Rec* rec;
  int64_t begin, end;
};

__device__ Span span_of_block(const Rec* recs, int count) {
  const int64_t chunk = blockIdx.x;
  // Largest k with first_chunk <= chunk (records are in chunk order, recs[0] starts at 0).
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (recs[mid].first_chunk <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const Rec* r = recs + lo;
  const int64_t begin = (chunk - r->first_chunk) * kChunk;
  return {r, begin, min(r->numel, begin + kChunk)};
}

// f(T*) with a null pointer of the CUDA storage type of a floating dtype.
template <class F>
__device__ void with_float_type(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(static_cast<float*>(nullptr)); break;
    case DType::F64: f(static_cast<double*>(nullptr)); break;
    case DType::F16: f(static_cast<__half*>(nullptr)); break;
    case DType::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: break;  // the wrapper admits floating tensors only
  }
}

template <class P>
using pointee_t = std::remove_pointer_t<P>;

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
// Finite: not NaN (every comparison with NaN is false) and not +-inf.
__device__ __forceinline__ bool finite(float v) { return fabsf(v) <= FLT_MAX; }
__device__ __forceinline__ bool finite(double v) { return fabs(v) <= DBL_MAX; }

// Block-wide sum; deterministic (fixed shuffle tree). Valid in thread 0. All threads call it.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (warp == 0) {
    total = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) total += __shfl_down_sync(0xffffffffu, total, o);
  }
  return total;
}

// ---- AdamW: ptr = {master, exp_avg, exp_avg_sq, grad, model_copy or null}, dtype[3] the
// grad's, dtype[4] the copy's.

struct NoCopy {};

template <class G, class C>
__device__ void adamw_span(const Rec& r, int64_t begin, int64_t end, const cpu::AdamWStep& s) {
  // Locals: the compiler cannot know the stores below leave the record table alone.
  float* p = static_cast<float*>(r.ptr[0]);
  float* m = static_cast<float*>(r.ptr[1]);
  float* v = static_cast<float*>(r.ptr[2]);
  const G* g = static_cast<const G*>(r.ptr[3]);
  C* copy = static_cast<C*>(r.ptr[4]);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    // The CPU kernel's statements, one rounding per operation.
    const float gi = __fmul_rn(to_acc(g[i]), s.grad_scale);
    float pi = __fmul_rn(p[i], s.decay_factor);
    const float mi = __fadd_rn(__fmul_rn(s.beta1, m[i]), __fmul_rn(s.one_minus_beta1, gi));
    const float vi = __fadd_rn(__fmul_rn(s.beta2, v[i]), __fmul_rn(__fmul_rn(s.one_minus_beta2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    pi = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if constexpr (!std::is_same_v<C, NoCopy>) copy[i] = from_acc<C>(pi);
  }
}

__global__ void __launch_bounds__(kThreads) adamw_kernel(const Rec* recs, int count, cpu::AdamWStep s) {
  const Span sp = span_of_block(recs, count);
  const Rec& r = *sp.rec;
  const bool has_copy = r.ptr[4] != nullptr;
  const DType copy_dtype = r.dtype[4];
  with_float_type(r.dtype[3], [&](auto* gtag) {
    using G = pointee_t<decltype(gtag)>;
    if constexpr (!std::is_same_v<G, double>) {  // grads are f32/f16/bf16 (checked)
      if (!has_copy) {
        adamw_span<G, NoCopy>(r, sp.begin, sp.end, s);
      } else if (copy_dtype == DType::F16) {
        adamw_span<G, __half>(r, sp.begin, sp.end, s);
      } else {
        adamw_span<G, __nv_bfloat16>(r, sp.begin, sp.end, s);
      }
    }
  });
}

// ---- EMA: ptr = {ema, param}, both any floating dtype; computed in the ema's acc type.

__global__ void __launch_bounds__(kThreads) ema_kernel(const Rec* recs, int count, double decay,
                                                       double one_minus_decay) {
  const Span sp = span_of_block(recs, count);
  const Rec& r = *sp.rec;
  void* ema_ptr = r.ptr[0];
  const void* param_ptr = r.ptr[1];
  const DType param_dtype = r.dtype[1];
  with_float_type(r.dtype[0], [&](auto* etag) {
    using E = pointee_t<decltype(etag)>;
    using A = acc_t<E>;
    E* e = static_cast<E*>(ema_ptr);
    const A omd = A(one_minus_decay);
    with_float_type(param_dtype, [&](auto* ptag) {
      using P = pointee_t<decltype(ptag)>;
      const P* p = static_cast<const P*>(param_ptr);
      // ema -= (1 - d) (ema - param), rounded step by step as the CPU kernel.
      for (int64_t i = sp.begin + threadIdx.x; i < sp.end; i += blockDim.x) {
        const A ei = A(to_acc(e[i]));
        e[i] = from_acc<E>(sub_rn(ei, mul_rn(omd, sub_rn(ei, A(to_acc(p[i]))))));
      }
    });
  });
}

// ---- sum of squares: ptr = {x}; one double partial per chunk, then one block adds them.

__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const Rec* recs, int count, double* partial) {
  const Span sp = span_of_block(recs, count);
  const void* ptr = sp.rec->ptr[0];
  double acc = 0.0;
  with_float_type(sp.rec->dtype[0], [&](auto* tag) {
    using T = pointee_t<decltype(tag)>;
    const T* x = static_cast<const T*>(ptr);
    for (int64_t i = sp.begin + threadIdx.x; i < sp.end; i += blockDim.x) {
      const double v = double(to_acc(x[i]));
      acc += v * v;
    }
  });
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const double* partial, int64_t n, double* out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = total;
}

// ---- scale and/or non-finite check: ptr = {x}. `flag` (may be null) is set to 1 by any
// thread that sees a non-finite value: every writer stores the same value, so the result
// does not depend on the order.

__global__ void __launch_bounds__(kThreads) scale_check_kernel(const Rec* recs, int count, double s, bool write,
                                                               int* flag) {
  const Span sp = span_of_block(recs, count);
  void* ptr = sp.rec->ptr[0];
  bool any = false;
  with_float_type(sp.rec->dtype[0], [&](auto* tag) {
    using T = pointee_t<decltype(tag)>;
    using A = acc_t<T>;
    T* x = static_cast<T*>(ptr);
    const A as = A(s);
    for (int64_t i = sp.begin + threadIdx.x; i < sp.end; i += blockDim.x) {
      A v = to_acc(x[i]);
      if (write) {
        const T stored = from_acc<T>(mul_rn(v, as));
        x[i] = stored;
        v = to_acc(stored);  // what is stored decides (a value may overflow when rounded to 16 bits)
      }
      any |= !finite(v);
    }
  });
  if (any && flag != nullptr) *flag = 1;
}

std::vector<Rec> single_tensor_recs(const std::vector<Tensor>& ts) {
  std::vector<Rec> recs;
  for (const Tensor& t : ts) {
    Rec r{};
    r.ptr[0] = t.data_ptr();
    r.dtype[0] = t.dtype();
    r.numel = t.numel();
    recs.push_back(r);
  }
  return recs;
}

// Scales (when write) and returns whether any element is non-finite (when check).
bool scale_check(const std::vector<Tensor>& ts, double s, bool write, bool check) {
  if (ts.empty() || (!write && !check)) return false;
  set_device_of(ts[0]);
  const Device dev = ts[0].device();
  Table tab = upload(single_tensor_recs(ts), dev);
  if (tab.count == 0) return false;
  Tensor flag;
  int* flag_ptr = nullptr;
  if (check) {
    flag = empty({1}, DType::I32, dev);
    flag_ptr = static_cast<int*>(flag.data_ptr());
    SD_CUDA_CHECK(cudaMemsetAsync(flag_ptr, 0, sizeof(int), stream()));
  }
  scale_check_kernel<<<unsigned(tab.chunks), kThreads, 0, stream()>>>(tab.recs, tab.count, s, write, flag_ptr);
  SD_CUDA_CHECK_LAUNCH("optim_scale_check");
  if (!check) return false;
  int bad = 0;
  cudart::memcpy_d2h(&bad, flag_ptr, sizeof(int));  // the one host synchronisation
  return bad != 0;
}

}  // namespace

void fused_adamw(const std::vector<AdamWSlot>& slots, const cpu::AdamWStep& s) {
  if (slots.empty()) return;
  set_device_of(slots[0].master);
  std::vector<Rec> recs;
  for (const AdamWSlot& sl : slots) {
    Rec r{};
    r.ptr[0] = sl.master.data_ptr();
    r.ptr[1] = sl.exp_avg.data_ptr();
    r.ptr[2] = sl.exp_avg_sq.data_ptr();
    r.ptr[3] = sl.grad.data_ptr();
    r.dtype[3] = sl.grad.dtype();
    if (sl.model_copy.defined()) {
      r.ptr[4] = sl.model_copy.data_ptr();
      r.dtype[4] = sl.model_copy.dtype();
    }
    r.numel = sl.master.numel();
    recs.push_back(r);
  }
  Table tab = upload(recs, slots[0].master.device());
  if (tab.count == 0) return;
  adamw_kernel<<<unsigned(tab.chunks), kThreads, 0, stream()>>>(tab.recs, tab.count, s);
  SD_CUDA_CHECK_LAUNCH("fused_adamw");
}

void ema_update(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay) {
  if (ema.empty()) return;
  set_device_of(ema[0]);
  std::vector<Rec> recs;
  for (size_t k = 0; k < ema.size(); ++k) {
    Rec r{};
    r.ptr[0] = ema[k].data_ptr();
    r.dtype[0] = ema[k].dtype();
    r.ptr[1] = params[k].data_ptr();
    r.dtype[1] = params[k].dtype();
    r.numel = ema[k].numel();
    recs.push_back(r);
  }
  Table tab = upload(recs, ema[0].device());
  if (tab.count == 0) return;
  // 1 - decay in double on the host, as the CPU kernel rounds it.
  ema_kernel<<<unsigned(tab.chunks), kThreads, 0, stream()>>>(tab.recs, tab.count, decay, 1.0 - decay);
  SD_CUDA_CHECK_LAUNCH("ema_update");
}

double sum_of_squares(const std::vector<Tensor>& ts) {
  if (ts.empty()) return 0.0;
  set_device_of(ts[0]);
  const Device dev = ts[0].device();
  Table tab = upload(single_tensor_recs(ts), dev);
  if (tab.count == 0) return 0.0;
  Tensor partial = empty({tab.chunks}, DType::F64, dev);
  Tensor total = empty({1}, DType::F64, dev);
  sum_squares_kernel<<<unsigned(tab.chunks), kThreads, 0, stream()>>>(tab.recs, tab.count, static_cast<double*>(partial.data_ptr()));
  SD_CUDA_CHECK_LAUNCH("optim_sum_of_squares");
  sum_partials_kernel<<<1, kThreads, 0, stream()>>>(static_cast<const double*>(partial.data_ptr()), tab.chunks,
                                       static_cast<double*>(total.data_ptr()));
  SD_CUDA_CHECK_LAUNCH("optim_sum_partials");
  double result = 0.0;
  cudart::memcpy_d2h(&result, total.data_ptr(), sizeof(double));  // the one host synchronisation
  return result;
}

void scale(const std::vector<Tensor>& ts, double s) { scale_check(ts, s, s != 1.0, false); }

bool scale_and_check(const std::vector<Tensor>& ts, double s, bool scale_first) {
  return scale_check(ts, s, scale_first && s != 1.0, true);
}

}  // namespace sd::cuda
