// Training data: image folders with metadata.jsonl or .txt captions, Hugging Face parquet datasets, the
// checks done while listing (unreadable images left out and named), and the sampler's order: a
// permutation per epoch from the seed, the same global batches whatever the process count.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "runtime/error.h"
#include "train/dataset.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
const std::string kData = SD_TEST_DATA_DIR;

TEST(TrainDataset, ImageFolderWithMetadataJsonl) {
  const TrainDataset d = TrainDataset::from_folder(kData + "/train_tiny");
  ASSERT_EQ(d.size(), 8);
  EXPECT_TRUE(d.skipped().empty());
  EXPECT_EQ(d.item(0).caption, "a red circle on a white background");
  EXPECT_EQ(fs::path(d.item(7).path).filename(), "07_purple_square.png");
  const Tensor img = d.decode(1);
  EXPECT_EQ(img.shape(), (Shape{64, 64, 3}));
  EXPECT_EQ(d.content_hash(1).size(), 64u);
  EXPECT_NE(d.content_hash(1), d.content_hash(2));
}

TEST(TrainDataset, CaptionFilesNextToTheImages) {
  const TrainDataset d = TrainDataset::from_folder(kData + "/train_tiny_txt");
  ASSERT_EQ(d.size(), 4);
  std::set<std::string> exts;
  for (int64_t i = 0; i < d.size(); ++i) exts.insert(fs::path(d.item(i).path).extension().string());
  EXPECT_EQ(exts, (std::set<std::string>{".png", ".jpg", ".webp"}));
  EXPECT_EQ(d.item(3).caption, "a yellow circle on a purple background");  // trailing newline stripped
  EXPECT_EQ(d.decode(3).shape(), (Shape{48, 80, 3}));
}

TEST(TrainDataset, HuggingFaceParquetWithAnImageColumn) {
  const TrainDataset d = TrainDataset::from_hf_dataset(kData + "/train_tiny_parquet");
  ASSERT_EQ(d.size(), 8);
  const TrainDataset f = TrainDataset::from_folder(kData + "/train_tiny");
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(d.item(i).caption, f.item(i).caption);
    // datasets stores the PNG bytes as they are on disk.
    EXPECT_EQ(d.content_hash(i), f.content_hash(i)) << i;
    EXPECT_EQ(d.decode(i).to_vector(), f.decode(i).to_vector());
  }
  try {
    TrainDataset::from_hf_dataset(kData + "/train_tiny_parquet", "image", "caption");
    FAIL() << "a missing caption column was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no caption column 'caption'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("text"), std::string::npos) << "the message should list the columns";
  }
}

TEST(TrainDataset, UnreadableImagesAreLeftOutAndNamed) {
  const fs::path dir = fs::temp_directory_path() / ("sd_dataset_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(kData + "/train_tiny", dir);
  { std::ofstream(dir / "03_yellow_circle.png", std::ios::binary | std::ios::trunc) << "garbage"; }
  { std::ofstream(dir / "04_orange_square.png", std::ios::binary | std::ios::trunc); }
  // metadata pointing at a file that is not there
  { std::ofstream(dir / "metadata.jsonl", std::ios::app) << R"({"file_name": "missing.png", "text": "x"})" << "\n"; }
  const TrainDataset d = TrainDataset::from_folder(dir.string());
  EXPECT_EQ(d.size(), 6);
  ASSERT_EQ(d.skipped().size(), 3u);
  std::set<std::string> names;
  for (const SkippedItem& s : d.skipped()) names.insert(fs::path(s.name).filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"03_yellow_circle.png", "04_orange_square.png", "missing.png"}));
  // A bad metadata line is an error naming the file and the line.
  { std::ofstream(dir / "metadata.jsonl", std::ios::app) << "{not json\n"; }
  try {
    TrainDataset::from_folder(dir.string());
    FAIL() << "a broken metadata.jsonl was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metadata.jsonl' line 10"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(TrainDataset, FolderWithoutCaptionsOrImagesIsAnError) {
  const fs::path dir = fs::temp_directory_path() / ("sd_dataset_empty_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_THROW(TrainDataset::from_folder(dir.string()), Error);
  EXPECT_THROW(TrainDataset::from_folder((dir / "nope").string()), Error);
  EXPECT_THROW(TrainDataset::from_hf_dataset(dir.string()), Error);
  fs::remove_all(dir);
}

TEST(EpochSampler, EachEpochIsAPermutationFromTheSeed) {
  const EpochSampler s(13, 4, 1, 5);
  EXPECT_EQ(s.batches_per_epoch(), 4);
  const auto p0 = s.permutation(0), p1 = s.permutation(1);
  std::vector<int64_t> sorted = p0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 13; ++i) EXPECT_EQ(sorted[size_t(i)], i);
  EXPECT_NE(p0, p1);
  EXPECT_EQ(p0, EpochSampler(13, 4, 1, 5).permutation(0));
  EXPECT_NE(p0, EpochSampler(13, 4, 1, 6).permutation(0));
  // Batches cover the epoch once, the last one short (drop_last=False).
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < 4; ++b) {
    const auto batch = s.batch(0, b, 0);
    EXPECT_EQ(int64_t(batch.size()), b < 3 ? 4 : 1);
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  EXPECT_EQ(seen, p0);
}

TEST(EpochSampler, GlobalBatchesDoNotDependOnTheProcessCount) {
  // Batch 4 on one process, or 2 per process on two: the same examples train in each step.
  const EpochSampler one(20, 4, 1, 9), two(20, 2, 2, 9);
  ASSERT_EQ(one.batches_per_epoch(), two.batches_per_epoch());
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t b = 0; b < one.batches_per_epoch(); ++b) {
      std::vector<int64_t> joined = two.batch(e, b, 0);
      const auto r1 = two.batch(e, b, 1);
      joined.insert(joined.end(), r1.begin(), r1.end());
      EXPECT_EQ(joined, one.batch(e, b, 0)) << "epoch " << e << " batch " << b;
    }
}

}  // namespace
}  // namespace sd::train
