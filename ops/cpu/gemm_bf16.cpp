#include "ops/cpu/gemm_bf16.h"

#include <cstdlib>
#include <string>

#include "runtime/error.h"

#ifdef SD_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace sd::cpu {

bool bf16_gemm_available() {
#ifdef SD_WITH_DNNL
  static const bool available = [] {
    const char* env = std::getenv("SD_CPU_BF16");
    if (env && std::string(env) == "0") return false;
#if defined(__x86_64__)
    // AMX CPUs (Sapphire Rapids on) have AVX512-BF16 too; clang 14 knows no "amx-bf16" here.
    return __builtin_cpu_supports("avx512bf16") != 0;
#else
    return false;
#endif
  }();
  return available;
#else
  return false;
#endif
}

#ifdef SD_WITH_DNNL
void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const BFloat16* A, int64_t lda, const BFloat16* B,
               int64_t ldb, bool accumulate, float* C, int64_t ldc) {
  using dnnl::memory;
  if (M == 0 || N == 0) return;
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  // A stream per thread: the Winograd and attention tiles call this from inside OpenMP loops.
  thread_local dnnl::stream stream(engine);
  const memory::desc a_md({M, K}, memory::data_type::bf16, ta ? memory::dims{1, lda} : memory::dims{lda, 1});
  const memory::desc b_md({K, N}, memory::data_type::bf16, tb ? memory::dims{1, ldb} : memory::dims{ldb, 1});
  const memory::desc c_md({M, N}, memory::data_type::f32, memory::dims{ldc, 1});
  dnnl::primitive_attr attr;
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  // Creating the primitive per call is a lookup in oneDNN's primitive cache after the first.
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine);
  memory a(a_md, engine, const_cast<BFloat16*>(A)), b(b_md, engine, const_cast<BFloat16*>(B)), c(c_md, engine, C);
  dnnl::matmul(pd).execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  stream.wait();
}
#else
void gemm_bf16(bool, bool, int64_t, int64_t, int64_t, const BFloat16*, int64_t, const BFloat16*, int64_t, bool, float*,
               int64_t) {
  SD_FAIL("gemm_bf16: this build has no oneDNN (check bf16_gemm_available() first)");
}
#endif

}  // namespace sd::cpu
