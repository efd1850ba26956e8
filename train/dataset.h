// Training examples (an image and its caption) from the places diffusers and kohya users keep them:
//   --train_data_dir DIR   an image folder: metadata.jsonl lines {"file_name": ..., "<caption column>": ...}
//                          (Hugging Face "imagefolder", what train_text_to_image.py reads), or, without
//                          metadata.jsonl, images with a same-name .txt caption next to them (kohya)
//   --dataset_name DIR     a Hugging Face dataset repository saved locally: data/<split>-*.parquet shards
//                          (or *.parquet anywhere below DIR) whose image column holds {bytes, path}
//                          structs or raw bytes, and whose caption column holds strings
// Listing reads captions and checks every image's header; images whose header is unreadable are
// left out and named (TrainDataset::skipped). Full decoding happens when an example is used; an image
// that fails then is skipped by the loop and named in the log, never a crash.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace sd::train {

struct DatasetItem {
  std::string name;     // the file, or "<shard>.parquet row N"
  std::string caption;
  int64_t width = 0, height = 0;  // from the image header (listing)
  std::string path;                          // image file (folders; parquet rows that hold a path)
  std::shared_ptr<const std::string> bytes;  // encoded image in memory (parquet rows)
};

struct SkippedItem {
  std::string name;
  std::string reason;
};

class TrainDataset {
 public:
  static TrainDataset from_folder(const std::string& dir, const std::string& caption_column = "text");
  static TrainDataset from_hf_dataset(const std::string& dir, const std::string& image_column = "image",
                                      const std::string& caption_column = "text");
  // Every image of a folder (not its subfolders), sorted, all with `caption`: DreamBooth instance and class
  // folders (the instance prompt), textual inversion (captions come from templates later).
  static TrainDataset from_image_folder(const std::string& dir, const std::string& caption,
                                        const std::string& what = "--instance_data_dir");
  // Examples given directly (tests).
  static TrainDataset from_items(std::vector<DatasetItem> items, std::string source);

  int64_t size() const { return int64_t(items_.size()); }
  const DatasetItem& item(int64_t i) const { return items_.at(size_t(i)); }
  const std::vector<SkippedItem>& skipped() const { return skipped_; }
  const std::string& source() const { return source_; }
  void truncate(int64_t n);  // --max_train_samples

  // [H, W, 3] u8; sd::Error naming the item when the image cannot be decoded.
  Tensor decode(int64_t i) const;
  // SHA-256 (hex) of the encoded image bytes: the latent cache's key, so a changed file is re-encoded.
  std::string content_hash(int64_t i) const;

 private:
  std::vector<DatasetItem> items_;
  std::vector<SkippedItem> skipped_;
  std::string source_;
};

// Which examples train in which step, for every process. Indices are "virtual examples" the trainer maps to
// dataset items (textual inversion repeats each image, DreamBooth pairs instance and class images).
class BatchSampler {
 public:
  virtual ~BatchSampler() = default;
  virtual int64_t batches_per_epoch() const = 0;
  // The examples of batch b of `epoch` that process `rank` trains (possibly none in a short last batch).
  virtual std::vector<int64_t> batch(int64_t epoch, int64_t b, int64_t rank) const = 0;
};

// The order examples are used in. Each epoch is a permutation of the dataset drawn from the seed
// (Fisher-Yates on Philox draws); global batch b of an epoch is the permutation's slice
// [b*B*W, (b+1)*B*W) for per-process batch B and W processes, and process r takes
// [r*B, (r+1)*B) of it: the same examples train in the same optimizer step whatever W is, as long
// as B*W is the same. The last global batch of an epoch may be short (drop_last=False, as
// diffusers' DataLoader).
class EpochSampler : public BatchSampler {
 public:
  EpochSampler(int64_t num_examples, int64_t batch_per_process, int64_t world_size, uint64_t seed);
  int64_t batches_per_epoch() const override;
  std::vector<int64_t> permutation(int64_t epoch) const;
  std::vector<int64_t> batch(int64_t epoch, int64_t b, int64_t rank) const override;
  // Examples in global batch b (all processes): for log lines and exact-resume checks.
  int64_t global_batch_size(int64_t b) const;

 private:
  int64_t n_, batch_, world_;
  uint64_t seed_;
};

// Batches from one aspect-ratio bucket each (--enable_bucket): every epoch, each bucket's examples are
// shuffled and cut into global batches of B*W, and the list of all batches is shuffled; process r takes
// [r*B, (r+1)*B) of each. bucket_of[i] is the bucket id of virtual example i.
class BucketSampler : public BatchSampler {
 public:
  BucketSampler(std::vector<int64_t> bucket_of, int64_t batch_per_process, int64_t world_size, uint64_t seed);
  int64_t batches_per_epoch() const override { return batches_; }
  std::vector<int64_t> batch(int64_t epoch, int64_t b, int64_t rank) const override;
  // Every global batch of an epoch, in order.
  const std::vector<std::vector<int64_t>>& epoch_batches(int64_t epoch) const;

 private:
  std::vector<int64_t> bucket_of_;
  int64_t batch_, world_, batches_ = 0;
  uint64_t seed_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<std::vector<int64_t>> cached_;
};

}  // namespace sd::train
