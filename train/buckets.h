// Aspect-ratio buckets (kohya-ss sd-scripts' BucketManager, `--enable_bucket`): instead of cropping every
// image to a square, each image goes to the bucket (a width x height of about the training area, sides
// multiples of --bucket_reso_steps) whose aspect ratio is nearest its own, is scaled to cover it and
// cropped to it; a batch holds images of one bucket only.
//
//   buckets: (s, s) with s = floor(sqrt(area) / step) * step, and for every width w from min to max in
//            steps, height min(max, floor(area / w / step) * step) when that height >= min: (w, h) and (h, w)
//   an image of aspect a = w / h goes to the bucket whose w / h is nearest a; with --bucket_no_upscale an
//   image smaller than the area gets a bucket of its own size rounded down to steps instead
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace sd::train {

struct Bucket {
  int64_t width = 0, height = 0;
  bool operator==(const Bucket& o) const { return width == o.width && height == o.height; }
  bool operator<(const Bucket& o) const { return width != o.width ? width < o.width : height < o.height; }
};

class BucketManager {
 public:
  // resolution: the training side (area resolution^2); min/max side and step as the kohya flags.
  BucketManager(int64_t resolution, int64_t min_side, int64_t max_side, int64_t step, bool no_upscale);
  const std::vector<Bucket>& buckets() const { return buckets_; }
  Bucket select(int64_t image_width, int64_t image_height) const;

 private:
  int64_t round_to_steps(double x) const;
  std::vector<Bucket> buckets_;
  int64_t area_, step_;
  bool no_upscale_;
};

}  // namespace sd::train
