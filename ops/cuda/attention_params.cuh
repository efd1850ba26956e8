// Launch parameters shared by the attention kernels. Strides are in elements; the flash
// kernels additionally need unit stride on the last dim.
#pragma once
#include <cstdint>

#include "runtime/dtype.h"

namespace sd::cuda {

struct AttnStrides {
  int64_t b, h, l;  // batch, head, row
};

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  const void* o;      // forward output (backward reads it)
  void* out;          // forward: output; backward: unused
  AttnStrides qs, ks, vs, os;
  int B, H, Lq, Lk, D, Dv;
  void* lse;          // [B, H, Lq] contiguous, f32 (f64 for f64 inputs)
  // Mask: kind 0 none, 1 additive (dtype mask_dtype), 2 boolean keep-mask; strides over
  // [B, H, Lq, Lk] (0 on broadcast dims).
  const void* mask;
  int mask_kind;
  DType mask_dtype;
  int64_t mb, mh, mq, mk;
  float scale;
  bool causal;
  // Backward only.
  const void* dout = nullptr;
  AttnStrides dos;
  void* dq;           // accumulators: f32 (f64 for f64) [B, H, Lq, D] contiguous
  void* dk;           // [B, H, Lk, D] (flash: element type, plain: accumulator type)
  void* dv;           // [B, H, Lk, Dv]
  const float* delta; // [B, H, Lq]: rowsum(dO * O), flash backward only
  int q_splits = 1;   // flash backward: blocks sharing one key tile's query range
  float* dk_acc = nullptr;  // flash backward with q_splits > 1: f32 [B, H, Lk, D] (zeroed)
  float* dv_acc = nullptr;
  // Flash backward, deterministic mode: the key-block kernel leaves dQ alone and a query-block
  // kernel writes it whole (no atomics), so dq need not be zeroed.
  bool skip_dq = false;
  // Flash backward with q_splits > 1, deterministic mode: each split stores its dK/dV partial in
  // its own slice of dk_acc/dv_acc ([q_splits][B, H, Lk, D], not zeroed), summed in split order
  // afterwards, instead of adding into one accumulator with atomics.
  bool split_partials = false;
};

}  // namespace sd::cuda
