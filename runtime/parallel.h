// CPU parallelism through OpenMP, with a grain size below which work stays on one thread
// (spawning threads for a few thousand flops costs more than it saves).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace sd {

inline int num_threads() { return omp_get_max_threads(); }

// Calls f(begin, end) over [0, n) split into contiguous chunks, in parallel when the
// total work (n * cost_per_item) is large enough.
template <class F>
void parallel_for(int64_t n, int64_t cost_per_item, F&& f) {
  if (n <= 0) return;
  const int64_t work = n * std::max<int64_t>(cost_per_item, 1);
  const int threads = num_threads();
  if (work < 32768 || threads == 1 || omp_in_parallel()) {
    f(int64_t(0), n);
    return;
  }
  const int64_t chunks = std::min<int64_t>(n, int64_t(threads) * 4);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) f(b, e);
  }
}

}  // namespace sd
