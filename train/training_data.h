// What each training method reads, and how an example becomes pixels and a caption, as the script it
// replaces does it:
//   text-to-image (full, lora)   images with their captions (train_text_to_image*.py): resize the shorter
//                                side, center or random crop, optional flip, caption dropout
//   DreamBooth                   the subject's photos with --instance_prompt, and with prior preservation
//                                the class images with --class_prompt (train_dreambooth*.py): an epoch has
//                                max(instances, class images) examples, example i pairs instance i % n_inst
//                                with class image i % n_class; a batch is [instances..., class images...];
//                                missing class images are generated first with the project's pipeline
//   textual inversion            the images, each --repeats times per epoch, captioned from the script's
//                                templates ("a photo of a {}", or the style ones) with the new token
//                                (textual_inversion.py); its own resize (square) and a flip half the time
// With --enable_bucket, images go to aspect-ratio buckets and a batch comes from one bucket.
//
// Examples are addressed by a "virtual index" in [0, size()): the sampler shuffles those.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "train/buckets.h"
#include "train/dataset.h"
#include "train/image_transforms.h"
#include "train/train_args.h"

namespace sd::train {

struct LoadedExample {
  const TrainDataset* dataset = nullptr;
  int64_t index = 0;   // in `dataset`
  int64_t slot = 0;    // position in the global batch (keys its random draws)
  TrainImage image;
  std::string caption;
  bool class_image = false;
};

class TrainingData {
 public:
  using Say = std::function<void(const std::string&)>;

  // Lists the method's data (before any model is loaded, so bad data fails first). Class images of
  // DreamBooth prior preservation are listed by prepare_class_images().
  TrainingData(const TrainArgs& args, Say say);

  // DreamBooth with prior preservation: generates the missing class images into --class_data_dir with
  // the pipeline at `model_path` (progress bar; images already there are kept, so an interrupted run
  // resumes where it stopped), then lists them. Generates on the writing process only (`write`); every
  // process calls `barrier` between generating and listing, so all see the same images.
  void prepare_class_images(const std::string& model_path, DType dtype, Device device, bool write,
                            const std::function<void()>& barrier = {});

  // After the model is known: the training resolution, and the textual-inversion placeholder text.
  void configure(int64_t resolution, const std::string& placeholder_text);

  int64_t size() const;  // virtual examples per epoch
  std::unique_ptr<BatchSampler> make_sampler(int64_t batch_per_process, int64_t world_size, uint64_t seed) const;

  // The examples of one micro-batch: instance (or captioned) examples first, then class images.
  // Unreadable images are left out and reported through on_bad (once per file).
  struct Batch {
    std::vector<LoadedExample> examples;
    int64_t class_images = 0;
  };
  Batch load(const std::vector<int64_t>& virtual_indices, int64_t epoch, uint64_t micro_step, int64_t first_slot,
             int64_t class_slot_base, const std::function<void(const std::string&, const std::string&)>& on_bad) const;

  std::string describe() const;      // "8 examples from DIR" / "5 instance + 100 class images"
  // "aspect-ratio buckets: 64x64 x3, 80x48 x1" (width x height, examples), or "" without buckets.
  std::string bucket_summary() const;
  std::string fingerprint() const;   // what must match on resume
  // The transform of an example, for the latent cache key ("512 lanczos center noflip").
  std::string transform_key(const LoadedExample& e) const;

 private:
  const TrainDataset& main() const { return *main_; }
  Bucket bucket_of_virtual(int64_t v) const;

  TrainArgs a_;
  Say say_;
  std::optional<TrainDataset> main_;    // captioned data, DreamBooth instances, or textual-inversion images
  std::optional<TrainDataset> class_;   // DreamBooth class images
  TransformParams tf_;
  std::string placeholder_text_;
  std::optional<BucketManager> buckets_;
};

// textual_inversion.py's prompt templates (imagenet_templates_small, imagenet_style_templates_small).
const std::vector<std::string>& textual_inversion_templates(const std::string& learnable_property);

}  // namespace sd::train
