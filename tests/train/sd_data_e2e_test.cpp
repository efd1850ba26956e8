// sd_data as a user runs it: the built binary (SD_BINARY_DIR/tools/sd_data) on folders made here, checked
// from the outside: exit codes and messages, the files each mode writes, and that inputs stay untouched
// unless --delete.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "infer/image_io.h"
#include "train/dataset.h"
#include "train/shapes_dataset.h"
#include "tests/test_util.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;
using test::read_jsonl;
using test::read_text;
using test::textured;
using test::write_text;

const std::string kData = SD_TEST_DATA_DIR;
const std::string kSdData = std::string(SD_BINARY_DIR) + "/tools/sd_data";

struct RunResult {
  int code = -1;
  std::string out, err;
};

// Every file under dir (relative path -> bytes): to show a folder is untouched.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[e.path().lexically_relative(dir).generic_string()] = read_text(e.path());
  return m;
}

// PNG colour type and bit depth from IHDR.
std::pair<int, int> png_type_depth(const fs::path& p) {
  const std::string b = read_text(p);
  if (b.size() < 26) return {-1, -1};
  return {int(uint8_t(b[25])), int(uint8_t(b[24]))};
}

class E2ESdData : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::is_regular_file(kSdData)) << kSdData << " is not built (ninja sd_data)";
    dir_ = fs::temp_directory_path() / ("sd_data_e2e_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult run(const std::vector<std::string>& args) {
    static int n = 0;
    const std::string tag = "run" + std::to_string(n++);
    const std::string so = (dir_ / (tag + ".out")).string(), se = (dir_ / (tag + ".err")).string();
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (std::freopen(so.c_str(), "w", stdout) == nullptr || std::freopen(se.c_str(), "w", stderr) == nullptr)
        _exit(127);
      ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(kSdData.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(kSdData.c_str(), argv.data());
      _exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    RunResult r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_text(so);
    r.err = read_text(se);
    fs::remove(so);
    fs::remove(se);
    return r;
  }

  // A folder with one of each kind of trouble clean must handle, with .txt captions.
  fs::path make_messy_folder(const std::string& name) {
    const fs::path in = dir_ / name;
    fs::create_directories(in / "sub");
    infer::save_png((in / "a_good.png").string(), textured(40, 48, 1));
    write_text(in / "a_good.txt", "a good image");
    fs::copy_file(in / "a_good.png", in / "b_dup.png");  // the same bytes as a_good.png
    write_text(in / "b_dup.txt", "a duplicate");
    infer::save_png((in / "c_tiny.png").string(), textured(3, 3, 2));
    write_text(in / "c_tiny.txt", "too small");
    write_text(in / "d_corrupt.png", "this is not an image at all");
    const std::string png = read_text(in / "a_good.png");
    write_text(in / "e_truncated.png", png.substr(0, png.size() / 2));
    infer::save_png((in / "f_rgba.png").string(), [] {
      Tensor t = empty({40, 40, 4}, DType::U8);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = uint8_t(i * 7);
      return t;
    }());
    write_text(in / "f_rgba.txt", "with alpha");
    // Grayscale and 16-bit PNGs and a CMYK JPEG from the fixtures (PIL wrote them), big enough here
    // with --min_side 4.
    fs::copy_file(kData + "/image_transforms/gray_23x19.png", in / "g_gray.png");
    fs::copy_file(kData + "/image_transforms/rgb16_4x5.png", in / "sub" / "h_rgb16.png");
    fs::copy_file(kData + "/image_transforms/gray16_5x9.png", in / "sub" / "i_gray16.png");
    fs::copy_file(kData + "/sd_data/cmyk_24x16.jpg", in / "j_cmyk.jpg");
    write_text(in / "j_cmyk.txt", "cmyk");
    infer::save_png((in / "sub" / "k_ok.png").string(), textured(32, 32, 3));
    write_text(in / "notes.md", "not an image: ignored");
    return in;
  }

  fs::path dir_;
};

const std::vector<std::string> kLimits = {"--min_side", "4", "--min_bytes", "0"};

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- command line --------------------------------------------------------------------------------

TEST_F(E2ESdData, HelpAndUsageErrors) {
  RunResult r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* mode : {"generate", "score", "clean", "caption", "resize"}) {
    EXPECT_NE(r.out.find(mode), std::string::npos) << mode;
    const RunResult h = run({mode, "--help"});
    EXPECT_EQ(h.code, 0) << mode;
    EXPECT_NE(h.out.find("usage: sd_data " + std::string(mode)), std::string::npos) << h.out;
    EXPECT_NE(h.out.find("--"), std::string::npos);
  }
  EXPECT_NE(
      run({"generate", "--help"}).out.find("a {size} {color} {shape} on a|an {background} background, {position}"),
      std::string::npos);
  EXPECT_NE(run({"clean", "--help"}).out.find("--min_side PX"), std::string::npos);
  EXPECT_NE(run({"caption", "--help"}).out.find("{folder}"), std::string::npos);

  r = run({});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("usage: sd_data <mode>"), std::string::npos);
  r = run({"shrink"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown mode 'shrink'"), std::string::npos);
  r = run({"generate", "--output_dir", (dir_ / "g").string(), "--num_images", "ten"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--num_images ten: expected an integer"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(".cpp:"), std::string::npos) << r.err;  // a sentence, not a source location
  r = run({"generate", "--output_dir", (dir_ / "g").string(), "--num_images", "0"});
  EXPECT_EQ(r.code, 2);
  r = run({"generate", "--output_dir", (dir_ / "g").string(), "--num_images", "3", "--size", "8"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("between 32 and 4096"), std::string::npos);
  r = run({"generate", "--num_images", "3"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--output_dir is required"), std::string::npos);
  r = run({"clean", "--input_dir", (dir_ / "missing").string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos);
  r = run({"clean", "--input_dir", dir_.string(), "--min_side", "-3"});
  EXPECT_EQ(r.code, 2);
  r = run({"resize", "--input_dir", dir_.string(), "--output_dir", (dir_ / "o").string(), "--resolution", "64",
           "--interpolation", "cubic"});
  EXPECT_EQ(r.code, 2);
  r = run({"clean", "--input_dir", dir_.string(), "--min_sid", "3"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("did you mean --min_side"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "g"));
}

// ---- generate and score --------------------------------------------------------------------------

// --new_color: the same scenes with every shape in the new colour, captioned with its name.
TEST_F(E2ESdData, GenerateNewColorPaintsAndNamesEveryShape) {
  const fs::path a = dir_ / "a", plain = dir_ / "plain";
  ASSERT_EQ(run({"generate", "--output_dir", a.string(), "--num_images", "12", "--seed", "3", "--new_color", "teal=#008080"})
                .code, 0);
  ASSERT_EQ(run({"generate", "--output_dir", plain.string(), "--num_images", "12", "--seed", "3"}).code, 0);
  const auto lines = read_jsonl(a / "metadata.jsonl"), base = read_jsonl(plain / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 12u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string text = lines[i]["text"], was = base[i]["text"];
    EXPECT_EQ(lines[i]["color"], "teal");
    // The caption is the plain one with the colour word swapped.
    std::string expect = was;
    const std::string old = " " + base[i]["color"].get<std::string>() + " " + base[i]["shape"].get<std::string>();
    expect.replace(expect.find(old), old.size(), " teal " + base[i]["shape"].get<std::string>());
    EXPECT_EQ(text, expect);
    // The shape's centre pixel is teal; the background (a corner) is the plain image's.
    const std::string name = lines[i]["file_name"];
    const Tensor img = infer::load_image_u8((a / name).string()), ref = infer::load_image_u8((plain / name).string());
    const int64_t cx = int64_t(lines[i]["center"][0].get<double>() * 64), cy = int64_t(lines[i]["center"][1].get<double>() * 64);
    const uint8_t* p = img.data<uint8_t>() + 3 * (cy * 64 + cx);
    EXPECT_EQ((std::vector<int>{p[0], p[1], p[2]}), (std::vector<int>{0, 128, 128})) << name;
    for (int c = 0; c < 3; ++c) EXPECT_EQ(img.data<uint8_t>()[c], ref.data<uint8_t>()[c]) << name;
  }
  for (const char* bad : {"teal", "red=#ff0000", "te al=#008080", "teal=#0080", "teal=0,128", "teal=0,128,300"}) {
    const RunResult r = run({"generate", "--output_dir", (dir_ / "bad").string(), "--num_images", "2", "--new_color", bad});
    EXPECT_EQ(r.code, 2) << bad;
    EXPECT_NE(r.err.find("--new_color"), std::string::npos) << bad << ": " << r.err;
  }
}

TEST_F(E2ESdData, GenerateIsDeterministicAndCaptionsMatchTheParameters) {
  const fs::path a = dir_ / "a", b = dir_ / "b", c = dir_ / "c";
  RunResult r = run({"generate", "--output_dir", a.string(), "--num_images", "40", "--seed", "7"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote 40 images (64x64)"), std::string::npos);
  ASSERT_EQ(run({"generate", "--output_dir", b.string(), "--num_images", "40", "--seed", "7", "--quiet"}).code, 0);
  ASSERT_EQ(run({"generate", "--output_dir", c.string(), "--num_images", "40", "--seed", "8", "--size", "48"}).code, 0);
  const auto sa = snapshot(a), sb = snapshot(b), sc = snapshot(c);
  EXPECT_EQ(sa.size(), 41u);  // 40 PNGs + metadata.jsonl
  EXPECT_EQ(sa, sb);          // same seed: the same bytes
  EXPECT_NE(sa.at("metadata.jsonl"), sc.at("metadata.jsonl"));

  const auto lines = read_jsonl(a / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 40u);
  std::set<std::string> shapes;
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json& j = lines[i];
    char name[16];
    std::snprintf(name, sizeof(name), "%05zu.png", i);
    EXPECT_EQ(j["file_name"], name);
    const auto parsed = parse_shape_caption(j["text"].get<std::string>());
    ASSERT_TRUE(parsed) << j.dump();
    EXPECT_EQ(shape_kind_name(parsed->shape), j["shape"].get<std::string>());
    EXPECT_EQ(shape_color_name(parsed->color), j["color"].get<std::string>());
    EXPECT_EQ(shape_color_name(parsed->background), j["background"].get<std::string>());
    EXPECT_EQ(shape_position_name(parsed->position), j["position"].get<std::string>());
    EXPECT_EQ(shape_size_name(parsed->size), j["size"].get<std::string>());
    EXPECT_EQ(j["center"].size(), 2u);
    EXPECT_GT(j["radius"].get<double>(), 0.0);
    shapes.insert(j["shape"].get<std::string>());
    EXPECT_EQ(infer::load_image_u8((a / name).string()).shape(), (Shape{64, 64, 3}));
  }
  EXPECT_EQ(shapes.size(), 6u);
  EXPECT_EQ(infer::load_image_u8((c / "00000.png").string()).shape(), (Shape{48, 48, 3}));
  // What sd_train reads.
  EXPECT_EQ(TrainDataset::from_folder(a.string()).size(), 40);

  // A second run into the same folder is refused (runtime error), unless --overwrite.
  r = run({"generate", "--output_dir", a.string(), "--num_images", "3"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos);
  EXPECT_EQ(snapshot(a), sb);

  // score reads the generator's images back.
  r = run({"score", "--input_dir", a.string(), "--output", (dir_ / "score.jsonl").string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("all 100.0%  (40 images)"), std::string::npos) << r.out;
  const auto scores = read_jsonl(dir_ / "score.jsonl");
  ASSERT_EQ(scores.size(), 40u);
  EXPECT_EQ(scores[0]["truth_source"], "metadata");
  EXPECT_EQ(scores[0]["caption"], lines[0]["text"]);
}

TEST_F(E2ESdData, ScoreTakesTruthFromSdInferParameters) {
  // An image as sd_infer writes it: the prompt in the PNG's "parameters", no captions beside it.
  const fs::path in = dir_ / "gen";
  fs::create_directories(in);
  const ShapeScene s = shape_scene(3, 4);
  infer::save_png(
      (in / "img-00000.png").string(), render_shape_scene(s, 64),
      {{"parameters", shape_caption(s.attr) + "\nSteps: 8, Sampler: PNDM, CFG scale: 7.5, Seed: 1, Size: 64x64"}});
  ShapeAttributes wrong = s.attr;
  wrong.shape = s.attr.shape == ShapeKind::Circle ? ShapeKind::Square : ShapeKind::Circle;
  infer::save_png((in / "img-00001.png").string(), render_shape_scene(s, 64),
                  {{"parameters", shape_caption(wrong) + "\nSteps: 8, Seed: 2"}});
  const RunResult r = run({"score", "--input_dir", in.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrong  img-00001.png"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shape 50.0%  color 100.0%"), std::string::npos) << r.out;
}

// ---- clean ---------------------------------------------------------------------------------------

TEST_F(E2ESdData, CleanReportsAndDryRunChangesNothing) {
  const fs::path in = make_messy_folder("in");
  const auto before = snapshot(in);
  // --dry_run: the same decisions, nothing written anywhere.
  RunResult r =
      run(plus({"clean", "--input_dir", in.string(), "--output_dir", (dir_ / "out").string(), "--dry_run"}, kLimits));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(snapshot(in), before);
  EXPECT_FALSE(fs::exists(dir_ / "out"));
  EXPECT_NE(r.out.find("dry run: nothing changed"), std::string::npos);
  EXPECT_NE(r.out.find("drop    b_dup.png  (duplicate of a_good.png)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("convert j_cmyk.jpg  (CMYK -> RGB)  -> j_cmyk.png"), std::string::npos) << r.out;
  r = run(plus({"clean", "--input_dir", in.string(), "--delete", "--dry_run"}, kLimits));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(snapshot(in), before);

  // Report only: the input's files untouched, clean_report.jsonl beside them.
  r = run({"clean", "--input_dir", in.string(), "--min_side", "16", "--min_bytes", "0"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto after = snapshot(in);
  ASSERT_EQ(after.count("clean_report.jsonl"), 1u);
  after.erase("clean_report.jsonl");
  EXPECT_EQ(after, before);
  std::map<std::string, nlohmann::json> report;
  for (const auto& j : read_jsonl(in / "clean_report.jsonl")) report[j["file"].get<std::string>()] = j;
  ASSERT_EQ(report.size(), 11u);  // every image, not notes.md
  auto action = [&](const std::string& f) { return report.at(f)["action"].get<std::string>(); };
  auto reason = [&](const std::string& f) { return report.at(f)["reason"].get<std::string>(); };
  EXPECT_EQ(action("a_good.png"), "keep");
  EXPECT_EQ(action("b_dup.png"), "drop");
  EXPECT_EQ(report.at("b_dup.png")["duplicate_of"], "a_good.png");
  EXPECT_EQ(reason("c_tiny.png"), "too small: 3x3, shorter side under 16");
  EXPECT_EQ(reason("d_corrupt.png").rfind("corrupt: ", 0), 0u) << reason("d_corrupt.png");
  EXPECT_EQ(reason("e_truncated.png").rfind("truncated: ", 0), 0u) << reason("e_truncated.png");
  EXPECT_EQ(reason("f_rgba.png"), "RGBA -> RGB");
  EXPECT_EQ(reason("g_gray.png"), "L -> RGB");
  EXPECT_EQ(action("sub/h_rgb16.png"), "drop");  // 5x4: under --min_side 16
  EXPECT_EQ(action("j_cmyk.jpg"), "convert");
  EXPECT_EQ(report.at("j_cmyk.jpg")["output"], nullptr);  // report only: nothing written
  EXPECT_EQ(report.at("a_good.png")["width"], 48);
  EXPECT_EQ(report.at("a_good.png")["sha256"].get<std::string>().size(), 64u);
}

TEST_F(E2ESdData, CleanToAnOutputFolder) {
  const fs::path in = make_messy_folder("in"), out = dir_ / "out";
  const auto before = snapshot(in);
  RunResult r = run(plus({"clean", "--input_dir", in.string(), "--output_dir", out.string()}, kLimits));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("11 images: 2 kept, 5 converted, 4 dropped"), std::string::npos) << r.out;
  EXPECT_EQ(snapshot(in), before);  // the originals untouched
  const auto o = snapshot(out);
  std::set<std::string> names;
  for (const auto& [k, v] : o) names.insert(k);
  const std::set<std::string> expect = {"a_good.png", "a_good.txt",      "f_rgba.png",        "f_rgba.txt",
                                        "g_gray.png", "sub/h_rgb16.png", "sub/i_gray16.png",  "j_cmyk.png",
                                        "j_cmyk.txt", "sub/k_ok.png",    "clean_report.jsonl"};
  EXPECT_EQ(names, expect);
  EXPECT_EQ(o.at("a_good.png"), before.at("a_good.png"));  // kept: copied byte for byte
  EXPECT_EQ(o.at("j_cmyk.txt"), "cmyk");
  for (const char* f : {"f_rgba.png", "g_gray.png", "sub/h_rgb16.png", "sub/i_gray16.png", "j_cmyk.png"})
    EXPECT_EQ(png_type_depth(out / f), std::make_pair(2, 8)) << f;  // 8-bit RGB
  // The conversions are PIL's convert("RGB").
  const Tensor gray_src = infer::load_image_u8((in / "g_gray.png").string(), 1);
  const Tensor gray = infer::load_image_u8((out / "g_gray.png").string());
  for (int64_t i = 0; i < gray_src.numel(); ++i)
    ASSERT_EQ(gray.data<uint8_t>()[3 * i + 1], gray_src.data<uint8_t>()[i]);
  const Tensor cmyk = infer::load_image_u8((out / "j_cmyk.png").string());
  const Tensor pil = infer::load_image_u8(kData + "/sd_data/cmyk_24x16_pil_rgb.png");
  ASSERT_EQ(cmyk.shape(), pil.shape());
  int max_diff = 0;
  for (int64_t i = 0; i < cmyk.numel(); ++i)
    max_diff = std::max(max_diff, std::abs(int(cmyk.data<uint8_t>()[i]) - int(pil.data<uint8_t>()[i])));
  EXPECT_LE(max_diff, 2);  // stb's CMYK conversion vs Pillow's: 1 level apart at most on this file
  // Not into the input, not twice into the same folder, not with --delete.
  EXPECT_EQ(run(plus({"clean", "--input_dir", in.string(), "--output_dir", in.string()}, kLimits)).code, 2);
  EXPECT_EQ(run(plus({"clean", "--input_dir", in.string(), "--output_dir", out.string()}, kLimits)).code, 1);
  EXPECT_EQ(
      run(plus({"clean", "--input_dir", in.string(), "--output_dir", (dir_ / "x").string(), "--delete"}, kLimits)).code,
      2);
  EXPECT_EQ(snapshot(in), before);
}

TEST_F(E2ESdData, CleanCarriesMetadataJsonl) {
  const fs::path in = make_messy_folder("in"), out = dir_ / "out";
  write_text(in / "metadata.jsonl",
             "{\"file_name\": \"a_good.png\", \"text\": \"good\", \"extra\": 1}\n"
             "{\"file_name\": \"b_dup.png\", \"text\": \"dup\"}\n"
             "{\"file_name\": \"j_cmyk.jpg\", \"text\": \"cmyk\"}\n"
             "{\"file_name\": \"sub/k_ok.png\", \"text\": \"ok\"}\n");
  ASSERT_EQ(run(plus({"clean", "--input_dir", in.string(), "--output_dir", out.string()}, kLimits)).code, 0);
  const auto lines = read_jsonl(out / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["file_name"], "a_good.png");
  EXPECT_EQ(lines[0]["extra"], 1);
  EXPECT_EQ(lines[1]["file_name"], "j_cmyk.png");
  EXPECT_EQ(lines[1]["text"], "cmyk");
  EXPECT_EQ(lines[2]["file_name"], "sub/k_ok.png");
  EXPECT_EQ(TrainDataset::from_folder(out.string()).size(), 3);
}

TEST_F(E2ESdData, CleanInPlaceWithDelete) {
  const fs::path in = make_messy_folder("in");
  write_text(in / "metadata.jsonl",
             "{\"file_name\": \"a_good.png\", \"text\": \"good\"}\n"
             "{\"file_name\": \"c_tiny.png\", \"text\": \"tiny\"}\n"
             "{\"file_name\": \"j_cmyk.jpg\", \"text\": \"cmyk\"}\n");
  const auto before = snapshot(in);
  const RunResult r = run({"clean", "--input_dir", in.string(), "--min_side", "16", "--min_bytes", "0", "--delete"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto after = snapshot(in);
  std::set<std::string> names;
  for (const auto& [k, v] : after) names.insert(k);
  const std::set<std::string> expect = {"a_good.png", "a_good.txt",     "f_rgba.png",        "f_rgba.txt",
                                        "g_gray.png", "j_cmyk.png",     "j_cmyk.txt",        "sub/k_ok.png",
                                        "notes.md",   "metadata.jsonl", "clean_report.jsonl"};
  EXPECT_EQ(names, expect);  // duplicate, tiny, corrupt, truncated, 5x4 and 9x5 images deleted, with their .txt
  EXPECT_EQ(after.at("a_good.png"), before.at("a_good.png"));
  EXPECT_NE(after.at("f_rgba.png"), before.at("f_rgba.png"));
  EXPECT_EQ(png_type_depth(in / "f_rgba.png"), std::make_pair(2, 8));
  const auto lines = read_jsonl(in / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["file_name"], "j_cmyk.png");
}

// ---- caption -------------------------------------------------------------------------------------

TEST_F(E2ESdData, CaptionFromTxtAndFromTemplates) {
  const fs::path in = dir_ / "kohya";
  fs::create_directories(in);
  infer::save_png((in / "red_fox-01.png").string(), textured(8, 8, 1));
  write_text(in / "red_fox-01.txt", "  a red fox \n");
  fs::create_directories(in / "10_sks dog");
  infer::save_png((in / "10_sks dog" / "img_2.png").string(), textured(8, 8, 2));
  write_text(in / "10_sks dog" / "img_2.txt", "a dog");

  RunResult r = run({"caption", "--input_dir", in.string()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("2 captions (2 from .txt files, 0 from the template)"), std::string::npos) << r.out;
  auto lines = read_jsonl(in / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["file_name"], "10_sks dog/img_2.png");
  EXPECT_EQ(lines[0]["text"], "a dog");
  EXPECT_EQ(lines[1]["text"], "a red fox");
  EXPECT_EQ(TrainDataset::from_folder(in.string()).size(), 2);

  // An existing metadata.jsonl is kept unless --overwrite.
  const std::string first = read_text(in / "metadata.jsonl");
  r = run({"caption", "--input_dir", in.string(), "--template", "a photo of {name}"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos);
  EXPECT_EQ(read_text(in / "metadata.jsonl"), first);

  r = run({"caption", "--input_dir", in.string(), "--template", "a photo of {name}, {folder}", "--overwrite"});
  ASSERT_EQ(r.code, 0) << r.err;
  lines = read_jsonl(in / "metadata.jsonl");
  EXPECT_EQ(lines[0]["text"], "a photo of img 2, sks dog");
  EXPECT_EQ(lines[1]["text"], "a photo of red fox 01, kohya");

  r = run({"caption", "--input_dir", in.string(), "--template", "{caption}, photo", "--overwrite", "--caption_column",
           "prompt"});
  ASSERT_EQ(r.code, 0) << r.err;
  lines = read_jsonl(in / "metadata.jsonl");
  EXPECT_EQ(lines[1]["prompt"], "a red fox, photo");

  // Unknown template fields are usage errors; images without .txt are named.
  r = run({"caption", "--input_dir", in.string(), "--template", "a {nmae}", "--overwrite"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown field {nmae}"), std::string::npos) << r.err;
  infer::save_png((in / "uncaptioned.png").string(), textured(8, 8, 3));
  r = run({"caption", "--input_dir", in.string(), "--overwrite"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("uncaptioned.png"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--template"), std::string::npos) << r.err;
}

// ---- resize --------------------------------------------------------------------------------------

TEST_F(E2ESdData, ResizeWritesTheSizesAndCarriesCaptions) {
  const fs::path in = dir_ / "in", out = dir_ / "out", crop = dir_ / "crop";
  fs::create_directories(in);
  infer::save_png((in / "wide.png").string(), textured(30, 60, 1));
  fs::copy_file(kData + "/image_transforms/rgb_37x53_444.jpg", in / "photo.jpg");
  write_text(in / "photo.txt", "a photo");
  write_text(in / "metadata.jsonl",
             "{\"file_name\": \"photo.jpg\", \"text\": \"a photo\"}\n"
             "{\"file_name\": \"wide.png\", \"text\": \"wide\"}\n");
  const auto before = snapshot(in);
  RunResult r = run({"resize", "--input_dir", in.string(), "--output_dir", out.string(), "--resolution", "24"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(infer::load_image_u8((out / "wide.png").string()).shape(), (Shape{24, 48, 3}));
  EXPECT_EQ(infer::load_image_u8((out / "photo.png").string()).shape(),
            (Shape{24, 34, 3}));  // 53x37: int(24 * 53 / 37)
  EXPECT_EQ(read_text(out / "photo.txt"), "a photo");
  const auto lines = read_jsonl(out / "metadata.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["file_name"], "photo.png");
  r = run({"resize", "--input_dir", in.string(), "--output_dir", crop.string(), "--resolution", "20", "--center_crop",
           "--interpolation", "bicubic"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(infer::load_image_u8((crop / "wide.png").string()).shape(), (Shape{20, 20, 3}));
  EXPECT_EQ(infer::load_image_u8((crop / "photo.png").string()).shape(), (Shape{20, 20, 3}));
  EXPECT_EQ(snapshot(in), before);
  // A broken image: named, the rest written, exit 1.
  write_text(in / "broken.png", "nope");
  r = run({"resize", "--input_dir", in.string(), "--output_dir", (dir_ / "third").string(), "--resolution", "16"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("skipped 'broken.png'"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "third" / "wide.png"));
  r = run({"resize", "--input_dir", in.string(), "--output_dir", (dir_ / "fourth").string()});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--resolution is required"), std::string::npos);
}

}  // namespace
}  // namespace sd::train
