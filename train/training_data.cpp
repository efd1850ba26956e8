#include "train/training_data.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "autograd/node.h"
#include "infer/generate.h"
#include "infer/image_io.h"
#include "infer/noise.h"
#include "infer/pipeline.h"
#include "infer/sha256.h"
#include "ops/view.h"
#include "runtime/error.h"
#include "train/random_draws.h"

namespace sd::train {

namespace fs = std::filesystem;

const std::vector<std::string>& textual_inversion_templates(const std::string& learnable_property) {
  static const std::vector<std::string> object = {
      "a photo of a {}",          "a rendering of a {}",       "a cropped photo of the {}", "the photo of a {}",
      "a photo of a clean {}",    "a photo of a dirty {}",     "a dark photo of the {}",    "a photo of my {}",
      "a photo of the cool {}",   "a close-up photo of a {}",  "a bright photo of the {}",  "a cropped photo of a {}",
      "a photo of the {}",        "a good photo of the {}",    "a photo of one {}",         "a close-up photo of the {}",
      "a rendition of the {}",    "a photo of the clean {}",   "a rendition of a {}",       "a photo of a nice {}",
      "a good photo of a {}",     "a photo of the nice {}",    "a photo of the small {}",   "a photo of the weird {}",
      "a photo of the large {}",  "a photo of a cool {}",      "a photo of a small {}"};
  static const std::vector<std::string> style = {
      "a painting in the style of {}",          "a rendering in the style of {}",
      "a cropped painting in the style of {}",  "the painting in the style of {}",
      "a clean painting in the style of {}",    "a dirty painting in the style of {}",
      "a dark painting in the style of {}",     "a picture in the style of {}",
      "a cool painting in the style of {}",     "a close-up painting in the style of {}",
      "a bright painting in the style of {}",   "a cropped painting in the style of {}",
      "a good painting in the style of {}",     "a close-up painting in the style of {}",
      "a rendition in the style of {}",         "a nice painting in the style of {}",
      "a small painting in the style of {}",    "a weird painting in the style of {}",
      "a large painting in the style of {}"};
  return learnable_property == "style" ? style : object;
}

namespace {

std::string format_template(const std::string& t, const std::string& value) {
  std::string out = t;
  const size_t p = out.find("{}");
  if (p != std::string::npos) out.replace(p, 2, value);
  return out;
}

int64_t count_images(const fs::path& dir) {
  int64_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp"))
      ++n;
  }
  return n;
}

}  // namespace

TrainingData::TrainingData(const TrainArgs& args, Say say) : a_(args), say_(std::move(say)) {
  if (a_.dreambooth) {
    main_ = TrainDataset::from_image_folder(a_.instance_data_dir, a_.instance_prompt, "--instance_data_dir");
  } else if (a_.method == TrainMethod::TextualInversion || (a_.method == TrainMethod::Vae && !a_.train_data_dir.empty())) {
    main_ = TrainDataset::from_image_folder(a_.train_data_dir, "", "--train_data_dir");
  } else {
    main_ = a_.train_data_dir.empty() ? TrainDataset::from_hf_dataset(a_.dataset_name, a_.image_column, a_.caption_column)
                                      : TrainDataset::from_folder(a_.train_data_dir, a_.caption_column);
  }
  if (a_.max_train_samples) main_->truncate(*a_.max_train_samples);
  for (const SkippedItem& s : main_->skipped()) say_("  skipped (unreadable): " + s.name + ": " + s.reason);
  SD_CHECK(!(a_.enable_bucket && a_.method == TrainMethod::TextualInversion),
           "--enable_bucket: textual inversion trains on squares (textual_inversion.py's transform)");
}

void TrainingData::prepare_class_images(const std::string& model_path, DType dtype, Device device, bool write,
                                        const std::function<void()>& barrier) {
  if (!a_.dreambooth || !a_.with_prior_preservation) return;
  const fs::path dir(a_.class_data_dir);
  if (write) {
    fs::create_directories(dir);
    const int64_t have = count_images(dir);
    if (have < a_.num_class_images) {
      const int64_t missing = a_.num_class_images - have;
      say_("generating " + std::to_string(missing) + " class image(s) for \"" + a_.class_prompt + "\" into " +
           dir.string() + " (" + std::to_string(have) + " there already)");
      infer::PipelineOptions po;
      po.dtype = dtype;
      po.device = device;
      po.variant = a_.variant;
      po.model_config = a_.model_config;
      auto pipe = infer::Pipeline::load(model_path, po);
      autograd::NoGrad no_grad;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t done = 0; done < missing;) {
        const int64_t k = std::min(a_.sample_batch_size, missing - done);
        const int64_t first = have + done;
        infer::GenerateRequest req;
        req.prompt = a_.class_prompt;
        req.num_images = k;
        // One stream per batch, keyed by its first index: a resumed generation continues with new images.
        infer::PhiloxNoise noise(draw_key(a_.seed, DrawPurpose::ClassImages, uint64_t(first)));
        const infer::GenerateResult res = infer::generate(*pipe, req, noise);
        for (int64_t i = 0; i < k; ++i) {
          const Tensor img = select(res.images, 0, i);
          const Tensor host = copy_to(img, DType::F32, Device::cpu());
          const std::string hash =
              infer::sha256_hex(std::string_view(static_cast<const char*>(host.data_ptr()), host.nbytes())).substr(0, 16);
          char name[64];
          std::snprintf(name, sizeof name, "%lld-%s.png", static_cast<long long>(first + i), hash.c_str());
          infer::save_png((dir / name).string(), img, {{"parameters", a_.class_prompt}});
        }
        done += k;
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "class images %lld/%lld  %.2f s/image\n", static_cast<long long>(done),
                     static_cast<long long>(missing), secs / double(done));
      }
    }
  }
  if (barrier) barrier();
  class_ = TrainDataset::from_image_folder(a_.class_data_dir, a_.class_prompt, "--class_data_dir");
  for (const SkippedItem& s : class_->skipped()) say_("  skipped (unreadable class image): " + s.name + ": " + s.reason);
}

void TrainingData::configure(int64_t resolution, const std::string& placeholder_text) {
  tf_.resolution = resolution;
  tf_.interp = parse_interpolation(a_.image_interpolation_mode);
  tf_.center_crop = a_.center_crop;
  tf_.random_flip = a_.random_flip;
  placeholder_text_ = placeholder_text;
  if (a_.enable_bucket)
    buckets_.emplace(resolution, a_.min_bucket_reso, a_.max_bucket_reso, a_.bucket_reso_steps, a_.bucket_no_upscale);
}

int64_t TrainingData::size() const {
  const int64_t n = main().size();
  if (a_.method == TrainMethod::TextualInversion) return n * a_.repeats;
  if (class_) return std::max(n, class_->size());  // DreamBoothDataset's length with prior preservation
  return n;
}

Bucket TrainingData::bucket_of_virtual(int64_t v) const {
  const DatasetItem& it = main().item(v % main().size());
  return buckets_->select(it.width, it.height);
}

std::unique_ptr<BatchSampler> TrainingData::make_sampler(int64_t batch, int64_t world, uint64_t seed) const {
  if (!buckets_) return std::make_unique<EpochSampler>(size(), batch, world, seed);
  std::vector<Bucket> all = buckets_->buckets();
  std::vector<int64_t> bucket_of;
  for (int64_t v = 0; v < size(); ++v) {
    const Bucket b = bucket_of_virtual(v);
    auto it = std::find(all.begin(), all.end(), b);
    if (it == all.end()) {  // --bucket_no_upscale makes buckets of images' own sizes
      all.push_back(b);
      it = all.end() - 1;
    }
    bucket_of.push_back(int64_t(it - all.begin()));
  }
  return std::make_unique<BucketSampler>(std::move(bucket_of), batch, world, seed);
}

TrainingData::Batch TrainingData::load(const std::vector<int64_t>& vidx, int64_t epoch, uint64_t micro_step,
                                       int64_t first_slot, int64_t class_slot_base,
                                       const std::function<void(const std::string&, const std::string&)>& on_bad) const {
  Batch out;
  const uint64_t tkey = draw_key(a_.seed, DrawPurpose::Transform, uint64_t(epoch));
  auto load_one = [&](const TrainDataset& ds, int64_t index, int64_t v, int64_t slot, bool is_class,
                      const Bucket* bucket) -> std::optional<LoadedExample> {
    LoadedExample e;
    e.dataset = &ds;
    e.index = index;
    e.slot = slot;
    e.class_image = is_class;
    e.caption = ds.item(index).caption;
    try {
      const Tensor img = ds.decode(index);
      // Draws keyed by the virtual index (class images on a stream of their own).
      const uint64_t draw_index = uint64_t(v) * 2 + (is_class ? 1 : 0);
      if (a_.method == TrainMethod::TextualInversion)
        e.image = transform_for_textual_inversion(img, tf_.resolution, tf_.center_crop, tf_.interp, tkey, draw_index);
      else if (bucket)
        e.image = transform_to_bucket(img, bucket->height, bucket->width, tf_, tkey, draw_index);
      else
        e.image = transform_for_training(img, tf_, tkey, draw_index);
    } catch (const Error& err) {
      on_bad(ds.item(index).name, err.what());
      return std::nullopt;
    }
    if (a_.method == TrainMethod::TextualInversion) {
      const auto& templates = textual_inversion_templates(a_.learnable_property);
      const double u = draw_uniform(draw_key(a_.seed, DrawPurpose::TemplateChoice, uint64_t(epoch), uint64_t(v)));
      const size_t t = std::min(templates.size() - 1, size_t(u * double(templates.size())));
      e.caption = format_template(templates[t], placeholder_text_);
    } else if (!is_class && a_.caption_dropout > 0) {
      const double u = draw_uniform(draw_key(a_.seed, DrawPurpose::CaptionDropout, micro_step, uint64_t(slot)));
      if (u < a_.caption_dropout) e.caption.clear();
    }
    return e;
  };
  std::vector<LoadedExample> classes;
  for (size_t j = 0; j < vidx.size(); ++j) {
    const int64_t v = vidx[j];
    Bucket b;
    if (buckets_) b = bucket_of_virtual(v);
    const Bucket* bucket = buckets_ ? &b : nullptr;
    const int64_t index = v % main().size();
    if (auto e = load_one(main(), index, v, first_slot + int64_t(j), false, bucket)) out.examples.push_back(std::move(*e));
    if (class_) {
      if (auto c = load_one(*class_, v % class_->size(), v, class_slot_base + int64_t(j), true, bucket))
        classes.push_back(std::move(*c));
    }
  }
  out.class_images = int64_t(classes.size());
  for (LoadedExample& c : classes) out.examples.push_back(std::move(c));
  return out;
}

std::string TrainingData::describe() const {
  std::string s = std::to_string(main().size()) + (a_.dreambooth ? " instance image(s)" : " example(s)") + " from " +
                  main().source();
  if (class_) s += " and " + std::to_string(class_->size()) + " class image(s) from " + class_->source();
  if (a_.method == TrainMethod::TextualInversion) s += ", each " + std::to_string(a_.repeats) + " times per epoch";
  if (buckets_) s += ", aspect-ratio buckets";
  return s;
}

std::string TrainingData::fingerprint() const { return describe(); }

std::string TrainingData::bucket_summary() const {
  if (!buckets_) return "";
  std::map<Bucket, int64_t> count;
  for (int64_t v = 0; v < main().size(); ++v) ++count[bucket_of_virtual(v)];
  std::string s = "aspect-ratio buckets:";
  for (const auto& [b, n] : count) {
    s += ' ';
    s += std::to_string(b.width);
    s += 'x';
    s += std::to_string(b.height);
    s += " x";
    s += std::to_string(n);
  }
  return s;
}

std::string TrainingData::transform_key(const LoadedExample& e) const {
  return std::to_string(e.image.pixels.size(1)) + "x" + std::to_string(e.image.pixels.size(2)) + " " +
         interpolation_name(tf_.interp) + " crop " + std::to_string(e.image.crop_offset[0]) + "," +
         std::to_string(e.image.crop_offset[1]) + (e.image.flipped ? " flip" : " noflip") +
         (a_.method == TrainMethod::TextualInversion ? " ti" : "");
}

}  // namespace sd::train
