// Host side of CUDA attention, and the plain kernels used where the flash kernel does not
// apply (f32/f64, head dims that are not a multiple of 8 or above 160, Dv != D, unaligned
// strides). The plain kernels keep one row of scores in shared memory per block.
#include <cmath>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_params.cuh"
#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/env_switch.h"
#include "runtime/cuda/current_stream.cuh"
#include "ops/cuda/flash_attention.h"

namespace sd::cuda {

namespace {

constexpr int kPlainThreads = 128;

template <class A>
__device__ A block_reduce(A v, A* scratch, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    A other = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? (other > v ? other : v) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = scratch[0];
  for (int w = 1; w < kPlainThreads / 32; ++w) r = is_max ? (scratch[w] > r ? scratch[w] : r) : r + scratch[w];
  return r;
}

template <class A>
__device__ A plain_mask(const AttnParams& p, A s, int b, int h, int q, int key) {
  if (p.causal && key > q) return A(-INFINITY);
  if (!p.mask_kind) return s;
  const int64_t off = b * p.mb + h * p.mh + q * p.mq + key * p.mk;
  if (p.mask_kind == 2) return static_cast<const uint8_t*>(p.mask)[off] ? s : A(-INFINITY);
  switch (p.mask_dtype) {
    case DType::F32: return s + A(static_cast<const float*>(p.mask)[off]);
    case DType::F16: return s + A(__half2float(static_cast<const __half*>(p.mask)[off]));
    case DType::BF16: return s + A(__bfloat162float(static_cast<const __nv_bfloat16*>(p.mask)[off]));
    case DType::F64: return s + A(static_cast<const double*>(p.mask)[off]);
    default: return s;
  }
}

// Scores of query row q against every key (scaled, masked) into srow.
template <class T>
__device__ void plain_scores(const AttnParams& p, acc_t<T>* srow, int b, int h, int q) {
  using A = acc_t<T>;
  const T* qr = static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h + int64_t(q) * p.qs.l;
  const T* kb = static_cast<const T*>(p.k) + b * p.ks.b + h * p.ks.h;
  for (int j = threadIdx.x; j < p.Lk; j += blockDim.x) {
    const T* kr = kb + int64_t(j) * p.ks.l;
    A s = 0;
    for (int d = 0; d < p.D; ++d) s += to_acc(qr[d]) * to_acc(kr[d]);
    srow[j] = plain_mask<A>(p, s * A(p.scale), b, h, q, j);
  }
  __syncthreads();
}

template <class T>
__global__ void plain_fwd_kernel(AttnParams p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* srow = reinterpret_cast<A*>(smem_raw);
  __shared__ A scratch[kPlainThreads / 32];
  const int q = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  plain_scores<T>(p, srow, b, h, q);
  A mx = A(-INFINITY);
  for (int j = threadIdx.x; j < p.Lk; j += blockDim.x) mx = srow[j] > mx ? srow[j] : mx;
  mx = block_reduce<A>(mx, scratch, true);
  const A mref = mx == A(-INFINITY) ? A(0) : mx;
  A sum = 0;
  for (int j = threadIdx.x; j < p.Lk; j += blockDim.x) {
    const A e = exp(srow[j] - mref);
    srow[j] = e;
    sum += e;
  }
  sum = block_reduce<A>(sum, scratch, false);
  const A inv = sum > A(0) ? A(1) / sum : A(0);
  const T* vb = static_cast<const T*>(p.v) + b * p.vs.b + h * p.vs.h;
  T* o = static_cast<T*>(p.out) + b * p.os.b + h * p.os.h + int64_t(q) * p.os.l;
  for (int d = threadIdx.x; d < p.Dv; d += blockDim.x) {
    A acc = 0;
    for (int j = 0; j < p.Lk; ++j) acc += srow[j] * to_acc(vb[int64_t(j) * p.vs.l + d]);
    o[d] = from_acc<T>(acc * inv);
  }
  if (threadIdx.x == 0)
    static_cast<A*>(p.lse)[int64_t(bh) * p.Lq + q] = sum > A(0) ? mref + log(sum) : A(INFINITY);
}

// One block per query row: dQ row directly; dK, dV through atomics into accumulators.
template <class T>
__global__ void plain_bwd_kernel(AttnParams p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* prow = reinterpret_cast<A*>(smem_raw);  // [Lk] probabilities, then dS
  A* dprow = prow + p.Lk;                     // [Lk]
  __shared__ A scratch[kPlainThreads / 32];
  const int q = blockIdx.x, bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  plain_scores<T>(p, prow, b, h, q);
  const A lse = static_cast<const A*>(p.lse)[int64_t(bh) * p.Lq + q];
  const T* dor = static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h + int64_t(q) * p.dos.l;
  const T* orow = static_cast<const T*>(p.o) + b * p.os.b + h * p.os.h + int64_t(q) * p.os.l;
  const T* vb = static_cast<const T*>(p.v) + b * p.vs.b + h * p.vs.h;
  for (int j = threadIdx.x; j < p.Lk; j += blockDim.x) {
    prow[j] = prow[j] == A(-INFINITY) ? A(0) : exp(prow[j] - lse);
    A dp = 0;
    for (int d = 0; d < p.Dv; ++d) dp += to_acc(dor[d]) * to_acc(vb[int64_t(j) * p.vs.l + d]);
    dprow[j] = dp;
  }
  A part = 0;
  for (int d = threadIdx.x; d < p.Dv; d += blockDim.x) part += to_acc(dor[d]) * to_acc(orow[d]);
  const A delta = block_reduce<A>(part, scratch, false);
  __syncthreads();
  A* dk = static_cast<A*>(p.dk) + int64_t(bh) * p.Lk * p.D;
  A* dv = static_cast<A*>(p.dv) + int64_t(bh) * p.Lk * p.Dv;
  const T* qr = static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h + int64_t(q) * p.qs.l;
  for (int j = threadIdx.x; j < p.Lk; j += blockDim.x) {
    const A pj = prow[j];
    const A ds = pj * (dprow[j] - delta) * A(p.scale);
    dprow[j] = ds;
    if (pj != A(0)) {
      for (int d = 0; d < p.Dv; ++d) atomicAdd(dv + int64_t(j) * p.Dv + d, pj * to_acc(dor[d]));
      for (int d = 0; d < p.D; ++d) atomicAdd(dk + int64_t(j) * p.D + d, ds * to_acc(qr[d]));
    }
  }
  __syncthreads();
  const T* kb = static_cast<const T*>(p.k) + b * p.ks.b + h * p.ks.h;
  A* dq = static_cast<A*>(p.dq) + (int64_t(bh) * p.Lq + q) * p.D;
  for (int d = threadIdx.x; d < p.D; d += blockDim.x) {
    A acc = 0;
    for (int j = 0; j < p.Lk; ++j) acc += dprow[j] * to_acc(kb[int64_t(j) * p.ks.l + d]);
    dq[d] = acc;
  }
}

AttnStrides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

AttnParams make_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                       bool causal) {
  AttnParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.qs = strides_of(q);
  p.ks = strides_of(k);
  p.vs = strides_of(v);
  p.B = int(q.size(0));
  p.H = int(q.size(1));
  p.Lq = int(q.size(2));
  p.Lk = int(k.size(2));
  p.D = int(q.size(3));
  p.Dv = int(v.size(3));
  p.scale = float(scale);
  p.causal = causal;
  if (mask.defined()) {
    p.mask = mask.data_ptr();
    p.mask_kind = mask.dtype() == DType::Bool ? 2 : 1;
    p.mask_dtype = mask.dtype();
    p.mb = mask.stride(0);
    p.mh = mask.stride(1);
    p.mq = mask.stride(2);
    p.mk = mask.stride(3);
  }
  return p;
}

bool aligned16(const Tensor& t) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  if (t.stride(3) != 1) return false;
  for (int d = 0; d < 3; ++d)
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return false;
  return true;
}

template <class F>
void dispatch_plain(DType dt, F&& f) {
  dispatch_float(dt, "attention", std::forward<F>(f));
}

}  // namespace

namespace {
EnvSwitch& deterministic_switch() {
  static EnvSwitch s("SD_ATTN_DETERMINISTIC");
  return s;
}
}  // namespace

void set_attention_deterministic(bool on) { deterministic_switch().set(on); }
bool attention_deterministic() { return deterministic_switch().on(); }

bool flash_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v) {
  const DType dt = q.dtype();
  if (dt != DType::F16 && dt != DType::BF16) return false;
  const int64_t d = q.size(3);
  if (v.size(3) != d || d % 8 != 0 || !flash_head_dim_compiled(int(d))) return false;
  return aligned16(q) && aligned16(k) && aligned16(v);
}

std::array<Tensor, 2> attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                        double scale, bool causal) {
  set_device_of(q);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Dv = v.size(3);
  Tensor out = empty({B, H, Lq, Dv}, q.dtype(), q.device());
  const DType lse_dtype = q.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor lse = empty({B, H, Lq}, lse_dtype, q.device());
  if (out.numel() == 0) return {out, lse};
  if (k.size(2) == 0) {  // no keys: every row is fully masked
    fill_(out, 0.0);
    fill_(lse, INFINITY);
    return {out, lse};
  }
  AttnParams p = make_params(q, k, v, mask, scale, causal);
  p.out = out.data_ptr();
  p.os = strides_of(out);
  p.lse = lse.data_ptr();
  if (flash_attention_supported(q, k, v)) {
    flash_forward(p, q.dtype());
    return {out, lse};
  }
  dispatch_plain(q.dtype(), [&]<class T>() {
    const size_t smem = size_t(p.Lk) * sizeof(acc_t<T>);
    SD_CUDA_CHECK(cudaFuncSetAttribute(plain_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    plain_fwd_kernel<T><<<dim3(unsigned(Lq), unsigned(B * H)), kPlainThreads, smem, stream()>>>(p);
    SD_CUDA_CHECK_LAUNCH("plain_fwd_kernel");
  });
  return {out, lse};
}

std::array<Tensor, 3> attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& out, const Tensor& lse, const Tensor& mask, double scale,
                                         bool causal) {
  set_device_of(q);
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3), Dv = v.size(3);
  const bool flash = flash_attention_supported(q, k, v) && aligned16(grad_out) && aligned16(out);
  AttnParams p = make_params(q, k, v, mask, scale, causal);
  p.o = out.data_ptr();
  p.os = strides_of(out);
  p.dout = grad_out.data_ptr();
  p.dos = strides_of(grad_out);
  p.lse = const_cast<void*>(lse.data_ptr());
  const DType acc_dtype = q.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor dq_acc = zeros({B, H, Lq, D}, flash ? DType::F32 : acc_dtype, q.device());
  p.dq = dq_acc.data_ptr();
  if (flash) {
    Tensor dk = empty({B, H, Lk, D}, q.dtype(), q.device());
    Tensor dv = empty({B, H, Lk, Dv}, q.dtype(), q.device());
    Tensor delta = empty({B, H, Lq}, DType::F32, q.device());
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    p.delta = static_cast<const float*>(delta.data_ptr());
    // Few key tiles (cross-attention) would leave most SMs idle: split the queries too.
    const int64_t key_blocks = (Lk + 63) / 64, q_tiles = (Lq + 63) / 64;
    int sms = 0;
    SD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index));
    const int64_t want = (2 * int64_t(sms) + key_blocks * B * H - 1) / (key_blocks * B * H);
    p.q_splits = int(std::clamp<int64_t>(want, 1, std::min<int64_t>(q_tiles, 64)));
    // Deterministic mode: no float atomics. dQ by query blocks; split dK/dV partials in slices of
    // their own, summed in split order.
    const bool det = attention_deterministic();
    p.skip_dq = det;
    p.split_partials = det && p.q_splits > 1;
    Tensor dk_acc, dv_acc;
    if (p.q_splits > 1) {
      const int64_t slices = p.split_partials ? p.q_splits : 1;
      dk_acc = p.split_partials ? empty({slices, B, H, Lk, D}, DType::F32, q.device())
                                : zeros({B, H, Lk, D}, DType::F32, q.device());
      dv_acc = p.split_partials ? empty({slices, B, H, Lk, Dv}, DType::F32, q.device())
                                : zeros({B, H, Lk, Dv}, DType::F32, q.device());
      p.dk_acc = static_cast<float*>(dk_acc.data_ptr());
      p.dv_acc = static_cast<float*>(dv_acc.data_ptr());
    }
    flash_backward(p, q.dtype());
    Tensor dq = empty({B, H, Lq, D}, q.dtype(), q.device());
    sum_splits(static_cast<const float*>(dq_acc.data_ptr()), 1, dq.data_ptr(), dq.numel(), q.dtype());
    if (p.q_splits > 1) {
      const int slices = p.split_partials ? p.q_splits : 1;
      sum_splits(static_cast<const float*>(dk_acc.data_ptr()), slices, dk.data_ptr(), dk.numel(), q.dtype());
      sum_splits(static_cast<const float*>(dv_acc.data_ptr()), slices, dv.data_ptr(), dv.numel(), q.dtype());
    }
    return {dq, dk, dv};
  }
  Tensor dk_acc = zeros({B, H, Lk, D}, acc_dtype, q.device());
  Tensor dv_acc = zeros({B, H, Lk, Dv}, acc_dtype, q.device());
  p.dk = dk_acc.data_ptr();
  p.dv = dv_acc.data_ptr();
  dispatch_plain(q.dtype(), [&]<class T>() {
    const size_t smem = 2 * size_t(Lk) * sizeof(acc_t<T>);
    SD_CUDA_CHECK(cudaFuncSetAttribute(plain_bwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    plain_bwd_kernel<T><<<dim3(unsigned(Lq), unsigned(B * H)), kPlainThreads, smem, stream()>>>(p);
    SD_CUDA_CHECK_LAUNCH("plain_bwd_kernel");
  });
  return {copy_to(dq_acc, q.dtype(), q.device()), copy_to(dk_acc, q.dtype(), q.device()),
          copy_to(dv_acc, q.dtype(), q.device())};
}

}  // namespace sd::cuda
