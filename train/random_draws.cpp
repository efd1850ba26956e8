#include "train/random_draws.h"

#include "runtime/rng.h"
#include "runtime/rng_core.h"

namespace sd::train {

namespace {
// splitmix64's finaliser: a bijection with good avalanche, enough to decorrelate keys.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t draw_key(uint64_t seed, DrawPurpose purpose, uint64_t a, uint64_t b) {
  uint64_t k = mix64(seed);
  k = mix64(k ^ uint64_t(purpose));
  k = mix64(k ^ a);
  return mix64(k ^ (b * 0xD6E8FEB86659FD93ull));
}

Tensor draw_normal(const Shape& shape, uint64_t key) {
  Tensor t = empty(shape, DType::F32);
  fill_normal_(t, key, 0);
  return t;
}

double draw_uniform(uint64_t key) {
  uint32_t w[4];
  rng::philox_block(key, 0, w);
  return rng::uniform53(w[0], w[1]);
}

}  // namespace sd::train
