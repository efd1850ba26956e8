#include "ops/cpu/attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/attention_common.h"
#include "ops/cpu/reference_util.h"
#include "runtime/parallel.h"

namespace sd::cpu {

namespace {

constexpr int64_t kRowsPerItem = 32;  // forward work item: this many query rows of one head

// Scores of query row i of one head: s_j = scale q_i.k_j (+ mask), -inf where masked.
// kt is the head's keys transposed [D, Lk]; the row is built as D axpys over the keys.
// Forward and backward both call this, so the backward's recomputed P matches the forward.
template <class T, class A>
void score_row(const A* qi, const A* kt, int64_t D, int64_t Lk, A scale, const MaskView<T>& mask, int64_t mask_off,
               bool causal, int64_t i, A* s) {
  std::fill(s, s + Lk, A(0));
  for (int64_t d = 0; d < D; ++d) {
    const A qd = qi[d];
    const A* kr = kt + d * Lk;
    for (int64_t j = 0; j < Lk; ++j) s[j] += qd * kr[j];
  }
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  const int64_t sj = mask.st[3];
  for (int64_t j = 0; j < Lk; ++j) {
    s[j] *= scale;
    if (mask.additive) s[j] += A(mask.additive[mask_off + j * sj]);
    if (mask.keep && !mask.keep[mask_off + j * sj]) s[j] = kNegInf;
    if (causal && j > i) s[j] = kNegInf;
  }
}

}  // namespace

AttentionForward attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double scale,
                                   bool causal) {
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  AttentionForward r{empty({B, H, Lq, Dv}, q.dtype()), empty({B, H, Lq}, stats_dtype(q.dtype()))};
  if (q.dtype() != DType::F64) {  // the fast path; the row loop below stays as the f64 reference
    attention_forward_tiled(q, k, v, mask, scale, causal, r.out, r.lse);
    return r;
  }
  const int64_t blocks = (Lq + kRowsPerItem - 1) / kRowsPerItem;
  SD_DISPATCH_FLOAT(q.dtype(), "scaled_dot_product_attention", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const MaskView<T> mv(mask);
    const A sc = A(scale);
    T* op = r.out.data<T>();
    A* lp = r.lse.data<A>();
    parallel_for(B * H * blocks, kRowsPerItem * Lk * (D + Dv) * 2, [&](int64_t i0, int64_t i1) {
      std::vector<A> kt, vv, qi(static_cast<size_t>(D)), s(static_cast<size_t>(Lk)), o(static_cast<size_t>(Dv));
      int64_t loaded = -1;  // head whose k and v are in kt / vv
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t bh = item / blocks, b = bh / H, h = bh % H, blk = item % blocks;
        if (bh != loaded) {
          gather_head<T, A>(k, b, h, true, kt);   // [D, Lk]
          gather_head<T, A>(v, b, h, false, vv);  // [Lk, Dv]
          loaded = bh;
        }
        const T* qh = q.data<T>() + b * q.stride(0) + h * q.stride(1);
        for (int64_t i = blk * kRowsPerItem; i < std::min(Lq, (blk + 1) * kRowsPerItem); ++i) {
          for (int64_t d = 0; d < D; ++d) qi[size_t(d)] = A(qh[i * q.stride(2) + d * q.stride(3)]);
          score_row<T, A>(qi.data(), kt.data(), D, Lk, sc, mv, mv.row_offset(b, h, i), causal, i, s.data());
          T* orow = op + (bh * Lq + i) * Dv;
          A m = -std::numeric_limits<A>::infinity();
          for (int64_t j = 0; j < Lk; ++j) m = std::max(m, s[size_t(j)]);
          if (m == -std::numeric_limits<A>::infinity()) {
            // Every key masked: define the output as 0 rather than 0/0.
            std::fill(orow, orow + Dv, T(0));
            lp[bh * Lq + i] = m;
            continue;
          }
          BlockedSum<A> l;
          std::fill(o.begin(), o.end(), A(0));
          for (int64_t j = 0; j < Lk; ++j) {
            const A p = std::exp(s[size_t(j)] - m);  // unnormalized probability, <= 1
            l.add(p);
            if (p == A(0)) continue;
            const A* vj = vv.data() + j * Dv;
            for (int64_t c = 0; c < Dv; ++c) o[size_t(c)] += p * vj[c];
          }
          const A inv = A(1) / l.result();
          for (int64_t c = 0; c < Dv; ++c) orow[c] = T(o[size_t(c)] * inv);
          lp[bh * Lq + i] = m + std::log(l.result());
        }
      }
    });
  });
  return r;
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& mask, const Tensor& out, const Tensor& lse, double scale, bool causal,
                                  bool need_dq, bool need_dk, bool need_dv) {
  // Per head, with P_ij = exp(s_ij - lse_i) recomputed row by row:
  //   D_i = sum_c dO_ic O_ic,  dP_ij = dO_i.v_j,  dS_ij = P_ij (dP_ij - D_i),
  //   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i.
  // dk and dv sum over every query row of the head, so a head is one work item.
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  AttentionGrads r;
  if (need_dq) r.dq = empty(q.shape(), q.dtype());
  if (need_dk) r.dk = empty(k.shape(), q.dtype());
  if (need_dv) r.dv = empty(v.shape(), q.dtype());
  if (!need_dq && !need_dk && !need_dv) return r;
  const Tensor go = dense_like(dout, q), oc = contiguous_raw(out);  // both [B, H, Lq, Dv]
  SD_DISPATCH_FLOAT(q.dtype(), "scaled_dot_product_attention_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    constexpr A kNegInf = -std::numeric_limits<A>::infinity();
    const MaskView<T> mv(mask);
    const A sc = A(scale);
    const T* gp = go.data<T>();
    const T* outp = oc.data<T>();
    const A* lp = lse.data<A>();
    parallel_for(B * H, Lq * Lk * (D + Dv) * 4, [&](int64_t h0, int64_t h1) {
      std::vector<A> qq, kk, kt, vt, dk, dv;
      std::vector<A> s(static_cast<size_t>(Lk)), dp(static_cast<size_t>(Lk)), dq(static_cast<size_t>(D));
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        gather_head<T, A>(q, b, h, false, qq);  // [Lq, D]
        gather_head<T, A>(k, b, h, false, kk);  // [Lk, D]
        gather_head<T, A>(k, b, h, true, kt);   // [D, Lk]
        gather_head<T, A>(v, b, h, true, vt);   // [Dv, Lk]
        dk.assign(need_dk ? size_t(Lk * D) : 0, A(0));
        dv.assign(need_dv ? size_t(Lk * Dv) : 0, A(0));
        for (int64_t i = 0; i < Lq; ++i) {
          const int64_t row = bh * Lq + i;
          const A li = lp[row];
          T* dqr = need_dq ? r.dq.data<T>() + row * D : nullptr;
          if (li == kNegInf) {  // fully masked row: constant 0 output, no gradient
            if (dqr) std::fill(dqr, dqr + D, T(0));
            continue;
          }
          const A* qi = qq.data() + i * D;
          score_row<T, A>(qi, kt.data(), D, Lk, sc, mv, mv.row_offset(b, h, i), causal, i, s.data());
          const T* gi = gp + row * Dv;
          const T* oi = outp + row * Dv;
          A di = A(0);
          for (int64_t c = 0; c < Dv; ++c) di += A(gi[c]) * A(oi[c]);
          std::fill(dp.begin(), dp.end(), A(0));
          for (int64_t c = 0; c < Dv; ++c) {
            const A g = A(gi[c]);
            const A* vr = vt.data() + c * Lk;
            for (int64_t j = 0; j < Lk; ++j) dp[size_t(j)] += g * vr[j];
          }
          std::fill(dq.begin(), dq.end(), A(0));
          for (int64_t j = 0; j < Lk; ++j) {
            const A p = std::exp(s[size_t(j)] - li);  // 0 where masked (s = -inf)
            if (p == A(0)) continue;
            if (need_dv) {
              A* dvj = dv.data() + j * Dv;
              for (int64_t c = 0; c < Dv; ++c) dvj[c] += p * A(gi[c]);
            }
            const A ds = p * (dp[size_t(j)] - di);
            if (need_dq) {
              const A* kj = kk.data() + j * D;
              for (int64_t d = 0; d < D; ++d) dq[size_t(d)] += ds * kj[d];
            }
            if (need_dk) {
              A* dkj = dk.data() + j * D;
              const A f = sc * ds;
              for (int64_t d = 0; d < D; ++d) dkj[d] += f * qi[d];
            }
          }
          if (dqr)
            for (int64_t d = 0; d < D; ++d) dqr[d] = T(sc * dq[size_t(d)]);
        }
        if (need_dk) {
          T* dkh = r.dk.data<T>() + bh * Lk * D;
          for (int64_t e = 0; e < Lk * D; ++e) dkh[e] = T(dk[size_t(e)]);
        }
        if (need_dv) {
          T* dvh = r.dv.data<T>() + bh * Lk * Dv;
          for (int64_t e = 0; e < Lk * Dv; ++e) dvh[e] = T(dv[size_t(e)]);
        }
      }
    });
  });
  return r;
}

}  // namespace sd::cpu
