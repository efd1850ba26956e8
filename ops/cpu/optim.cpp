// Compiled with -ffp-contract=off (CMakeLists.txt): no a*b+c is fused, so the AdamW and EMA
// statements round exactly as the explicitly rounded CUDA kernels (ops/cuda/optim.cu) do.
#include "ops/cpu/optim.h"

#include <cmath>
#include <type_traits>

#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

// A piece of one tensor of the list: elements [begin, end) of tensor `t`.
struct Chunk {
  size_t t;
  int64_t begin, end;
};

// 64K elements: large enough to amortise the scheduling, small enough to balance threads.
constexpr int64_t kChunkElems = int64_t(1) << 16;

std::vector<Chunk> make_chunks(const std::vector<int64_t>& numels) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < numels.size(); ++t)
    for (int64_t b = 0; b < numels[t]; b += kChunkElems) chunks.push_back({t, b, std::min(numels[t], b + kChunkElems)});
  return chunks;
}

// Calls f(chunk_index, chunk) for every chunk, spread over the threads.
template <class F>
void for_chunks(const std::vector<Chunk>& chunks, F&& f) {
  if (chunks.empty()) return;
  int64_t total = 0;
  for (const Chunk& c : chunks) total += c.end - c.begin;
  const int64_t per_chunk = std::max<int64_t>(1, total / int64_t(chunks.size()));
  parallel_for(int64_t(chunks.size()), per_chunk, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) f(size_t(c), chunks[size_t(c)]);
  });
}

std::vector<int64_t> numels_of(const std::vector<Tensor>& ts) {
  std::vector<int64_t> n;
  for (const Tensor& t : ts) n.push_back(t.numel());
  return n;
}

// Calls f(T*) with a null pointer of the storage type of a 16/32-bit float dtype.
template <class F>
void dispatch_f32_f16_bf16(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(static_cast<float*>(nullptr)); return;
    case DType::F16: f(static_cast<Half*>(nullptr)); return;
    case DType::BF16: f(static_cast<BFloat16*>(nullptr)); return;
    default: SD_FAIL(op, ": expected f32, f16 or bf16, got ", dtype_name(dt));
  }
}

template <class G, class C>
void adamw_range(float* p, float* m, float* v, const G* g, C* copy, int64_t n, const AdamWStep& s) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = float(g[i]) * s.grad_scale;
    float pi = p[i] * s.decay_factor;  // decoupled weight decay, before the Adam step
    const float mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    const float vi = s.beta2 * v[i] + s.one_minus_beta2 * gi * gi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    pi -= s.step_size * (mi / denom);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (copy) copy[i] = C(pi);
  }
}

}  // namespace

void fused_adamw(const std::vector<AdamWSlot>& slots, const AdamWStep& s) {
  std::vector<int64_t> numels;
  for (const AdamWSlot& sl : slots) numels.push_back(sl.master.numel());
  for_chunks(make_chunks(numels), [&](size_t, const Chunk& c) {
    const AdamWSlot& sl = slots[c.t];
    const int64_t n = c.end - c.begin;
    float* p = sl.master.data<float>() + c.begin;
    float* m = sl.exp_avg.data<float>() + c.begin;
    float* v = sl.exp_avg_sq.data<float>() + c.begin;
    dispatch_f32_f16_bf16(sl.grad.dtype(), "fused_adamw_", [&](auto* gtag) {
      using G = std::remove_pointer_t<decltype(gtag)>;
      const G* g = static_cast<const G*>(sl.grad.data_ptr()) + c.begin;
      if (!sl.model_copy.defined()) {
        adamw_range<G, Half>(p, m, v, g, nullptr, n, s);
      } else if (sl.model_copy.dtype() == DType::F16) {
        adamw_range(p, m, v, g, static_cast<Half*>(sl.model_copy.data_ptr()) + c.begin, n, s);
      } else {
        adamw_range(p, m, v, g, static_cast<BFloat16*>(sl.model_copy.data_ptr()) + c.begin, n, s);
      }
    });
  });
}

void ema_update(const std::vector<Tensor>& ema, const std::vector<Tensor>& params, double decay) {
  for_chunks(make_chunks(numels_of(ema)), [&](size_t, const Chunk& c) {
    const Tensor& e = ema[c.t];
    const Tensor& p = params[c.t];
    SD_DISPATCH_FLOAT(e.dtype(), "ema_update_", [&] {
      using E = scalar_t;
      using A = acc_t<E>;
      E* eo = static_cast<E*>(e.data_ptr()) + c.begin;
      SD_DISPATCH_FLOAT(p.dtype(), "ema_update_", [&] {
        const scalar_t* pi = static_cast<const scalar_t*>(p.data_ptr()) + c.begin;
        // diffusers' EMAModel form, ema -= (1 - d) (ema - param): an average equal to its parameter stays put
        // (d * e + (1 - d) * p with d and 1 - d rounded apart pulls every average towards 0 at d = 0.9999).
        const A one_minus_d = A(1.0 - decay);
        for (int64_t i = 0; i < c.end - c.begin; ++i) {
          const A e = A(eo[i]);
          eo[i] = E(e - one_minus_d * (e - A(pi[i])));
        }
      });
    });
  });
}

double sum_of_squares(const std::vector<Tensor>& ts) {
  const std::vector<Chunk> chunks = make_chunks(numels_of(ts));
  // One partial per chunk, added up in chunk order: the same result for any thread count.
  std::vector<double> partial(chunks.size(), 0.0);
  for_chunks(chunks, [&](size_t ci, const Chunk& c) {
    SD_DISPATCH_FLOAT(ts[c.t].dtype(), "global_grad_norm", [&] {
      const scalar_t* x = static_cast<const scalar_t*>(ts[c.t].data_ptr()) + c.begin;
      double acc = 0.0;
      for (int64_t i = 0; i < c.end - c.begin; ++i) {
        const double v = double(x[i]);
        acc += v * v;
      }
      partial[ci] = acc;
    });
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

void scale(const std::vector<Tensor>& ts, double s) { scale_and_check(ts, s, true); }

bool scale_and_check(const std::vector<Tensor>& ts, double s, bool scale_first) {
  const std::vector<Chunk> chunks = make_chunks(numels_of(ts));
  std::vector<char> bad(chunks.size(), 0);  // per chunk: no shared flag written by many threads
  const bool write = scale_first && s != 1.0;
  for_chunks(chunks, [&](size_t ci, const Chunk& c) {
    SD_DISPATCH_FLOAT(ts[c.t].dtype(), "unscale_and_check_", [&] {
      using T = scalar_t;
      using A = acc_t<T>;
      T* x = static_cast<T*>(ts[c.t].data_ptr()) + c.begin;
      const A as = A(s);
      bool any = false;
      for (int64_t i = 0; i < c.end - c.begin; ++i) {
        A v = A(x[i]);
        if (write) {
          v *= as;
          x[i] = T(v);
          v = A(x[i]);  // what is stored decides (a value may overflow when rounded to 16 bits)
        }
        any |= !std::isfinite(v);
      }
      bad[ci] = any;
    });
  });
  for (char b : bad)
    if (b) return true;
  return false;
}

}  // namespace sd::cpu
