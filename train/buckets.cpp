#include "train/buckets.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "runtime/error.h"

namespace sd::train {

BucketManager::BucketManager(int64_t resolution, int64_t min_side, int64_t max_side, int64_t step, bool no_upscale)
    : area_(resolution * resolution), step_(step), no_upscale_(no_upscale) {
  SD_CHECK(resolution > 0 && step > 0 && min_side > 0 && min_side <= max_side, "buckets: resolution ", resolution,
           ", sides ", min_side, "..", max_side, ", step ", step);
  SD_CHECK(resolution % 8 == 0 && step % 8 == 0, "buckets: --resolution and --bucket_reso_steps must be multiples of 8");
  std::set<Bucket> set;
  const int64_t square = int64_t(std::sqrt(double(area_)) / double(step)) * step;
  set.insert({square, square});
  for (int64_t w = min_side; w <= max_side; w += step) {
    const int64_t h = std::min(max_side, (area_ / w) / step * step);
    if (h >= min_side) {
      set.insert({w, h});
      set.insert({h, w});
    }
  }
  buckets_.assign(set.begin(), set.end());
}

int64_t BucketManager::round_to_steps(double x) const {
  const int64_t v = int64_t(x + 0.5);
  return v - v % step_;
}

Bucket BucketManager::select(int64_t w, int64_t h) const {
  SD_CHECK(w > 0 && h > 0, "buckets: image of ", w, "x", h);
  const double aspect = double(w) / double(h);
  if (no_upscale_ && w * h <= area_) {
    // Never enlarged: the image's own size rounded down to the step (at least one step).
    return {std::max(step_, w - w % step_), std::max(step_, h - h % step_)};
  }
  if (no_upscale_) {
    // Larger than the area: scaled down to it keeping the aspect, then rounded to steps along the side
    // that keeps the aspect closer.
    const double rw = std::sqrt(double(area_) * aspect), rh = double(area_) / rw;
    const int64_t bw = round_to_steps(rw), bh_w = round_to_steps(double(bw) / aspect);
    const int64_t bh = round_to_steps(rh), bw_h = round_to_steps(double(bh) * aspect);
    const double err_w = bh_w > 0 ? std::abs(double(bw) / double(bh_w) - aspect) : 1e9;
    const double err_h = bh > 0 ? std::abs(double(bw_h) / double(bh) - aspect) : 1e9;
    int64_t sw, sh;
    if (err_w < err_h) {
      sw = bw;
      sh = int64_t(double(bw) / aspect + 0.5);
    } else {
      sw = int64_t(double(bh) * aspect + 0.5);
      sh = bh;
    }
    return {std::max(step_, sw - sw % step_), std::max(step_, sh - sh % step_)};
  }
  // The predefined bucket of the nearest aspect ratio (the first on ties, in sorted order).
  size_t best = 0;
  double best_err = 1e300;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    const double err = std::abs(double(buckets_[i].width) / double(buckets_[i].height) - aspect);
    if (err < best_err) best_err = err, best = i;
  }
  return buckets_[best];
}

}  // namespace sd::train
