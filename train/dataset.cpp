#include "train/dataset.h"


#include <algorithm>
#include <map>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "infer/image_decode.h"

#include "infer/sha256.h"
#include "runtime/error.h"
#include "runtime/rng_core.h"
#include "train/image_transforms.h"
#include "train/parquet.h"
#include "train/random_draws.h"

namespace sd::train {

namespace fs = std::filesystem;

namespace {

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  static const std::set<std::string> kExt = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"};
  return kExt.count(ext) > 0;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SD_CHECK(f, "cannot open '", path, "'");
  std::ostringstream os;
  os << f.rdbuf();
  SD_CHECK(!f.bad(), "cannot read '", path, "'");
  return os.str();
}

// Whether the first bytes describe an image the decoders know, with a sane size: the cheap check
// listing runs on every example so that a dataset of broken files fails before a model is loaded.
// Returns "" when fine, else the reason.
std::string probe_image(const std::string& bytes, int64_t* width = nullptr, int64_t* height = nullptr) {
  infer::ImageHeader h;
  const std::string problem = infer::probe_image(bytes.data(), bytes.size(), &h);
  if (!problem.empty()) return problem;
  if (width) *width = h.width;
  if (height) *height = h.height;
  return "";
}

std::string probe_file(const std::string& path, int64_t* width, int64_t* height) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "cannot open the file";
  // Headers of every format here fit in the first 64 KiB (JPEG's SOF may follow large EXIF blocks:
  // read more for those).
  std::string head(1 << 16, '\0');
  f.read(head.data(), std::streamsize(head.size()));
  head.resize(size_t(f.gcount()));
  std::string why = probe_image(head, width, height);
  if (!why.empty() && head.size() == (1u << 16)) why = probe_image(read_file(path), width, height);
  return why;
}

// Captions: strip surrounding whitespace (kohya and datasets both keep inner text as is).
std::string trim(std::string s) {
  const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

}  // namespace

TrainDataset TrainDataset::from_items(std::vector<DatasetItem> items, std::string source) {
  TrainDataset d;
  d.source_ = std::move(source);
  for (DatasetItem& it : items) {
    const std::string why = it.bytes ? probe_image(*it.bytes, &it.width, &it.height)
                                     : probe_file(it.path, &it.width, &it.height);
    if (why.empty()) d.items_.push_back(std::move(it));
    else d.skipped_.push_back({it.name, why});
  }
  return d;
}

TrainDataset TrainDataset::from_folder(const std::string& dir, const std::string& caption_column) {
  SD_CHECK(fs::is_directory(dir), "--train_data_dir '", dir, "' is not a folder");
  std::vector<DatasetItem> items;
  const fs::path meta = fs::path(dir) / "metadata.jsonl";
  if (fs::exists(meta)) {
    std::ifstream f(meta);
    SD_CHECK(f, "cannot open '", meta.string(), "'");
    std::string line;
    int64_t line_no = 0;
    while (std::getline(f, line)) {
      ++line_no;
      if (trim(line).empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        SD_FAIL("'", meta.string(), "' line ", line_no, ": not JSON (", e.what(), ")");
      }
      SD_CHECK(j.is_object() && j.contains("file_name") && j["file_name"].is_string(), "'", meta.string(),
               "' line ", line_no, ": needs a \"file_name\" string");
      SD_CHECK(j.contains(caption_column) && j[caption_column].is_string(), "'", meta.string(), "' line ", line_no,
               ": no caption column \"", caption_column, "\" (set --caption_column)");
      DatasetItem it;
      it.path = (fs::path(dir) / j["file_name"].get<std::string>()).string();
      it.name = it.path;
      it.caption = trim(j[caption_column].get<std::string>());
      items.push_back(std::move(it));
    }
  } else {
    std::vector<fs::path> images;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file() && is_image_name(e.path())) images.push_back(e.path());
    std::sort(images.begin(), images.end());
    std::vector<std::string> missing;
    for (const fs::path& img : images) {
      fs::path txt = img;
      txt.replace_extension(".txt");
      if (!fs::exists(txt)) {
        missing.push_back(img.string());
        continue;
      }
      DatasetItem it;
      it.path = img.string();
      it.name = it.path;
      it.caption = trim(read_file(txt.string()));
      items.push_back(std::move(it));
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size() && i < 5; ++i) list += "\n  " + missing[i];
      if (missing.size() > 5) list += "\n  ... (" + std::to_string(missing.size() - 5) + " more)";
      SD_FAIL("--train_data_dir '", dir, "': ", missing.size(), " image(s) have no caption file (the same name "
              "with .txt) and there is no metadata.jsonl:", list);
    }
  }
  TrainDataset d = from_items(std::move(items), dir);
  SD_CHECK(d.size() > 0, "--train_data_dir '", dir, "' holds no usable images",
           d.skipped().empty() ? std::string(" (PNG, JPEG, WebP, BMP, GIF with metadata.jsonl or .txt captions)")
                               : ": " + std::to_string(d.skipped().size()) + " unreadable, the first '" +
                                     d.skipped()[0].name + "': " + d.skipped()[0].reason);
  return d;
}

TrainDataset TrainDataset::from_hf_dataset(const std::string& dir, const std::string& image_column,
                                           const std::string& caption_column) {
  SD_CHECK(fs::exists(dir), "--dataset_name '", dir, "' does not exist (a local copy of a Hugging Face dataset "
           "repository: data/train-*.parquet)");
  std::vector<fs::path> shards;
  if (fs::is_regular_file(dir)) {
    shards.push_back(dir);
  } else {
    std::vector<fs::path> all, train;
    bool arrow = false;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      if (!e.is_regular_file()) continue;
      if (e.path().extension() == ".parquet") all.push_back(e.path());
      if (e.path().extension() == ".arrow") arrow = true;
    }
    // The train split when the repository has several ("data/train-00000-of-00002.parquet").
    for (const fs::path& p : all)
      if (p.filename().string().rfind("train", 0) == 0 || p.parent_path().filename() == "train") train.push_back(p);
    shards = train.empty() ? all : train;
    SD_CHECK(!shards.empty(), "--dataset_name '", dir, "' holds no .parquet files",
             arrow ? " (it holds .arrow files: a dataset written by save_to_disk; write it with "
                     "dataset.to_parquet(\"data/train-00000-of-00001.parquet\") instead)"
                   : "");
    std::sort(shards.begin(), shards.end());
  }
  std::vector<DatasetItem> items;
  for (const fs::path& shard : shards) {
    const ParquetFile f = ParquetFile::open(shard.string());
    const std::vector<std::string> cols = f.column_paths();
    auto has = [&](const std::string& c) { return std::find(cols.begin(), cols.end(), c) != cols.end(); };
    auto list_columns = [&] {
      std::string s;
      for (const std::string& c : cols) s += (s.empty() ? "" : ", ") + c;
      return s;
    };
    SD_CHECK(has(caption_column), "'", shard.string(), "' has no caption column '", caption_column,
             "' (set --caption_column; columns: ", list_columns(), ")");
    std::vector<ParquetBytes> bytes, paths;
    if (has(image_column + ".bytes")) {
      bytes = f.read_bytes_column(image_column + ".bytes");
      if (has(image_column + ".path")) paths = f.read_bytes_column(image_column + ".path");
    } else if (has(image_column)) {
      bytes = f.read_bytes_column(image_column);
    } else {
      SD_FAIL("'", shard.string(), "' has no image column '", image_column, "' (set --image_column; columns: ",
              list_columns(), ")");
    }
    const std::vector<ParquetBytes> captions = f.read_bytes_column(caption_column);
    for (size_t r = 0; r < captions.size(); ++r) {
      DatasetItem it;
      it.name = shard.filename().string() + " row " + std::to_string(r);
      it.caption = captions[r] ? trim(*captions[r]) : std::string();
      if (r < bytes.size() && bytes[r]) {
        it.bytes = std::make_shared<const std::string>(std::move(*bytes[r]));
      } else if (r < paths.size() && paths[r] && !paths[r]->empty()) {
        // An Image feature stored by path: relative to the dataset folder.
        const fs::path p = fs::path(*paths[r]);
        it.path = (p.is_absolute() ? p : fs::path(dir) / p).string();
      } else {
        it.bytes = std::make_shared<const std::string>();  // no image: probe names it
      }
      items.push_back(std::move(it));
    }
  }
  TrainDataset d = from_items(std::move(items), dir);
  SD_CHECK(d.size() > 0, "--dataset_name '", dir, "' holds no usable images",
           d.skipped().empty() ? std::string()
                               : ": " + std::to_string(d.skipped().size()) + " unreadable, the first (" +
                                     d.skipped()[0].name + "): " + d.skipped()[0].reason);
  return d;
}

TrainDataset TrainDataset::from_image_folder(const std::string& dir, const std::string& caption,
                                             const std::string& what) {
  SD_CHECK(fs::is_directory(dir), what, " '", dir, "' is not a folder");
  std::vector<fs::path> images;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_image_name(e.path())) images.push_back(e.path());
  std::sort(images.begin(), images.end());
  std::vector<DatasetItem> items;
  for (const fs::path& p : images) {
    DatasetItem it;
    it.path = it.name = p.string();
    it.caption = caption;
    items.push_back(std::move(it));
  }
  TrainDataset d = from_items(std::move(items), dir);
  SD_CHECK(d.size() > 0, what, " '", dir, "' holds no usable images",
           d.skipped().empty() ? std::string(" (PNG, JPEG, WebP, BMP, GIF)")
                               : ": " + std::to_string(d.skipped().size()) + " unreadable, the first '" +
                                     d.skipped()[0].name + "': " + d.skipped()[0].reason);
  return d;
}

void TrainDataset::truncate(int64_t n) {
  if (n < size()) items_.resize(size_t(n));
}

Tensor TrainDataset::decode(int64_t i) const {
  const DatasetItem& it = item(i);
  if (it.bytes) return decode_image(it.bytes->data(), it.bytes->size(), it.name);
  return decode_image_file(it.path);
}

std::string TrainDataset::content_hash(int64_t i) const {
  const DatasetItem& it = item(i);
  if (it.bytes) return infer::sha256_hex(*it.bytes);
  return infer::sha256_files_hex({it.path});
}

// ---- sampler -------------------------------------------------------------------------------------

EpochSampler::EpochSampler(int64_t n, int64_t batch, int64_t world, uint64_t seed)
    : n_(n), batch_(batch), world_(world), seed_(seed) {
  SD_CHECK(n > 0 && batch > 0 && world > 0, "EpochSampler: ", n, " examples, batch ", batch, ", world ", world);
}

int64_t EpochSampler::batches_per_epoch() const {
  const int64_t global = batch_ * world_;
  return (n_ + global - 1) / global;
}

std::vector<int64_t> EpochSampler::permutation(int64_t epoch) const {
  std::vector<int64_t> p(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) p[size_t(i)] = i;
  // Fisher-Yates from the back; draw i uses Philox block i of this epoch's stream.
  const uint64_t key = draw_key(seed_, DrawPurpose::Shuffle, uint64_t(epoch));
  for (int64_t i = n_ - 1; i > 0; --i) {
    uint32_t w[4];
    rng::philox_block(key, uint64_t(i), w);
    const int64_t j = int64_t(rng::uniform53(w[0], w[1]) * double(i + 1));
    std::swap(p[size_t(i)], p[size_t(std::min(j, i))]);
  }
  return p;
}

std::vector<int64_t> EpochSampler::batch(int64_t epoch, int64_t b, int64_t rank) const {
  SD_CHECK(b >= 0 && b < batches_per_epoch() && rank >= 0 && rank < world_, "EpochSampler: batch ", b, " of ",
           batches_per_epoch(), ", rank ", rank, " of ", world_);
  thread_local std::vector<int64_t> perm;
  thread_local std::pair<const EpochSampler*, int64_t> cached{nullptr, -1};
  thread_local uint64_t cached_seed = 0;
  thread_local int64_t cached_n = -1;
  if (cached.first != this || cached.second != epoch || cached_seed != seed_ || cached_n != n_) {
    perm = permutation(epoch);
    cached = {this, epoch};
    cached_seed = seed_;
    cached_n = n_;
  }
  const int64_t begin = b * batch_ * world_ + rank * batch_;
  std::vector<int64_t> out;
  for (int64_t i = begin; i < std::min(begin + batch_, n_); ++i) out.push_back(perm[size_t(i)]);
  return out;
}

int64_t EpochSampler::global_batch_size(int64_t b) const {
  return std::min(batch_ * world_, n_ - b * batch_ * world_);
}

// ---- bucket sampler ------------------------------------------------------------------------------

BucketSampler::BucketSampler(std::vector<int64_t> bucket_of, int64_t batch, int64_t world, uint64_t seed)
    : bucket_of_(std::move(bucket_of)), batch_(batch), world_(world), seed_(seed) {
  SD_CHECK(!bucket_of_.empty() && batch > 0 && world > 0, "BucketSampler: ", bucket_of_.size(), " examples, batch ",
           batch, ", world ", world);
  batches_ = int64_t(epoch_batches(0).size());
}

const std::vector<std::vector<int64_t>>& BucketSampler::epoch_batches(int64_t epoch) const {
  if (epoch == cached_epoch_) return cached_;
  std::map<int64_t, std::vector<int64_t>> members;
  for (size_t i = 0; i < bucket_of_.size(); ++i) members[bucket_of_[i]].push_back(int64_t(i));
  auto shuffle = [](std::vector<int64_t>& v, uint64_t key) {
    for (int64_t i = int64_t(v.size()) - 1; i > 0; --i) {
      uint32_t w[4];
      rng::philox_block(key, uint64_t(i), w);
      const int64_t j = std::min(i, int64_t(rng::uniform53(w[0], w[1]) * double(i + 1)));
      std::swap(v[size_t(i)], v[size_t(j)]);
    }
  };
  const int64_t global = batch_ * world_;
  std::vector<std::vector<int64_t>> batches;
  for (auto& [bucket, m] : members) {
    shuffle(m, draw_key(seed_, DrawPurpose::Shuffle, uint64_t(epoch), uint64_t(bucket) + 1));
    for (size_t b = 0; b < m.size(); b += size_t(global))
      batches.emplace_back(m.begin() + std::ptrdiff_t(b), m.begin() + std::ptrdiff_t(std::min(m.size(), b + size_t(global))));
  }
  // The order of the batches (by index, then applied).
  std::vector<int64_t> order(batches.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int64_t(i);
  shuffle(order, draw_key(seed_, DrawPurpose::Shuffle, uint64_t(epoch), 0));
  std::vector<std::vector<int64_t>> out;
  for (int64_t o : order) out.push_back(batches[size_t(o)]);
  cached_epoch_ = epoch;
  cached_ = std::move(out);
  return cached_;
}

std::vector<int64_t> BucketSampler::batch(int64_t epoch, int64_t b, int64_t rank) const {
  const std::vector<std::vector<int64_t>>& all = epoch_batches(epoch);
  SD_CHECK(b >= 0 && b < int64_t(all.size()) && rank >= 0 && rank < world_, "BucketSampler: batch ", b, " of ",
           all.size(), ", rank ", rank);
  const std::vector<int64_t>& g = all[size_t(b)];
  const size_t begin = size_t(rank * batch_), end = std::min(g.size(), size_t((rank + 1) * batch_));
  return begin < end ? std::vector<int64_t>(g.begin() + std::ptrdiff_t(begin), g.begin() + std::ptrdiff_t(end))
                     : std::vector<int64_t>();
}

}  // namespace sd::train
