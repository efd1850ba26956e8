// sd_data: datasets for sd_train. A synthetic captioned dataset of shapes (and a classifier that scores
// images of it), and the chores of real image folders: dropping broken, small and duplicate files,
// converting odd pixel formats, writing metadata.jsonl, resizing. See --help; the library part is
// train/data_tools.h and train/shapes_dataset.h.
//
// Exit status: 0 done, 1 an error while working (unreadable files, a refused overwrite, images that
// failed), 2 a usage error (unknown mode or flag, a bad number, a missing folder).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "runtime/error.h"
#include "train/data_tools.h"
#include "train/flags.h"

namespace {

using namespace sd;
using namespace sd::train;

constexpr const char* kUsage = R"(usage: sd_data <mode> [options]        (sd_data <mode> --help: the mode's options)

Makes and tidies image folders for sd_train: images with same-name .txt captions (kohya) or a
metadata.jsonl of {"file_name": ..., "text": ...} lines (Hugging Face imagefolder), what
`sd_train --train_data_dir` reads.

modes:
  generate   a captioned synthetic dataset: one shape in a colour on a background of another colour,
             at a position and size the caption states ("a small red circle on a blue background,
             top left"), deterministic from --seed
  score      read shape, colours, position and size back from images of that dataset (e.g. what a
             trained model generated) and score them against their captions
  clean      report and drop unreadable, truncated, too small and duplicate images; convert
             grayscale, RGBA, 16-bit, palette and CMYK images to RGB PNG
  caption    write metadata.jsonl from .txt captions or from a template over the file names
  resize     resized (and centre-cropped) PNG copies, with their captions

exit status: 0 done, 1 an error while working, 2 a usage error.

examples:
  sd_data generate --output_dir shapes/ --num_images 2000 --seed 0
  sd_data clean --input_dir photos/ --output_dir photos_clean/ --min_side 512
  sd_data caption --input_dir photos_clean/ --template "a photo of {name}"
  sd_data resize --input_dir photos_clean/ --output_dir photos_512/ --resolution 512 --center_crop
)";

// A bad command line (exit 2), as opposed to an error while working (exit 1).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "\rsd_data clean: 120/5000" on a terminal's stderr, at most ten times a second; nothing elsewhere.
class ProgressLine {
 public:
  ProgressLine(std::string what, bool quiet) : what_(std::move(what)), on_(!quiet && isatty(fileno(stderr))) {}
  ~ProgressLine() { finish(); }
  DataProgress callback() {
    return [this](int64_t done, int64_t total) { update(done, total); };
  }
  void update(int64_t done, int64_t total) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    std::fprintf(stderr, "\r%s: %lld/%lld", what_.c_str(), (long long)done, (long long)total);
    std::fflush(stderr);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fputc('\n', stderr);
    shown_ = false;
  }

 private:
  std::string what_;
  bool on_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point last_{};
};

int64_t at_least(const std::string& v, int64_t lo) {
  const int64_t x = parse_int(v);
  SD_CHECK(x >= lo, "must be at least ", lo);
  return x;
}

// An error's sentence for the user: without the " [file.cpp:123]" source locations sd::Error appends.
std::string sentence(const std::exception& e) {
  std::string m = e.what();
  for (size_t b; (b = m.find(" [")) != std::string::npos;) {
    const size_t end = m.find(']', b);
    const size_t colon = m.find(":", b);
    if (end == std::string::npos || colon == std::string::npos || colon > end ||
        m.find_first_not_of("0123456789", colon + 1) != end)
      break;
    m.erase(b, end + 1 - b);
  }
  return m;
}

// FlagParser's errors (unknown flag, missing or bad value) are usage errors.
bool parse_flags(FlagParser& p, const std::string& mode, int argc, const char* const* argv) {
  try {
    return p.parse(argc, argv);
  } catch (const Error& e) {
    throw UsageError("sd_data " + mode + ": " + sentence(e));
  }
}

void require(const FlagParser& p, const std::string& mode, std::initializer_list<const char*> flags) {
  for (const char* f : flags)
    if (!p.was_given(f))
      throw UsageError("sd_data " + mode + ": --" + f + " is required (see sd_data " + mode + " --help)");
}

FlagSpec flag(std::string name, std::string metavar, std::string def, std::string help,
              std::function<void(const std::string&)> set, std::string group = "options") {
  return FlagSpec{std::move(name), std::move(metavar), std::move(def),
                  std::move(help), std::move(group),   std::move(set)};
}

// ---- generate ------------------------------------------------------------------------------------
int run_generate(int argc, const char* const* argv) {
  GenerateOptions o;
  bool quiet = false;
  FlagParser p("sd_data generate",
               "Writes a captioned synthetic dataset into --output_dir: N PNG images (00000.png, ...) and\n"
               "metadata.jsonl (imagefolder: what sd_train --train_data_dir reads). Each image is one filled\n"
               "shape on a plain background, anti-aliased (4x4 supersampling), captioned in one grammar:\n"
               "\n"
               "  a {size} {color} {shape} on a|an {background} background, {position}\n"
               "  e.g. \"a small red circle on a blue background, top left\"\n"
               "\n"
               "  shape       circle, square, triangle, star, cross, diamond\n"
               "  color       red, green, blue, yellow, white, black, purple, orange\n"
               "  background  a colour other than the shape's\n"
               "  position    top left, top right, bottom left, bottom right, center\n"
               "  size        small (radius 0.09-0.11 of the side), large (0.17-0.21)\n"
               "\n"
               "Each metadata line also holds the parameters: \"shape\", \"color\", \"background\", \"position\",\n"
               "\"size\", \"center\" [x, y] and \"radius\" (fractions of the side). The same --seed and --size\n"
               "always give the same bytes, on any machine.");
  p.add(flag("output_dir", "DIR", "", "where to write (created; must be empty unless --overwrite)",
             [&](const std::string& v) { o.output_dir = v; }));
  p.add(flag("num_images", "N", "", "how many images (required)",
             [&](const std::string& v) { o.num_images = at_least(v, 1); }));
  p.add(flag("seed", "S", "0", "the dataset's seed (image i depends only on seed and i)",
             [&](const std::string& v) { o.seed = uint64_t(at_least(v, 0)); }));
  p.add(flag("size", "PX", "64", "image side in pixels, 32 to 4096", [&](const std::string& v) {
    o.size = parse_int(v);
    SD_CHECK(o.size >= 32 && o.size <= 4096, "must be between 32 and 4096");
  }));
  p.add(flag("new_color", "NAME=#RRGGBB", "",
             "paint every shape in a colour the dataset has no word for and caption it NAME (e.g. "
             "teal=#008080): a small set that teaches a trained model a new colour word",
             [&](const std::string& v) { o.new_color = parse_new_color(v); }));
  p.add(flag("overwrite", "", "", "write into a folder that already holds files",
             [&](const std::string&) { o.overwrite = true; }));
  p.add(flag("quiet", "", "", "no progress line", [&](const std::string&) { quiet = true; }));
  if (!parse_flags(p, "generate", argc, argv)) return 0;
  require(p, "generate", {"output_dir", "num_images"});
  {
    ProgressLine progress("sd_data generate", quiet);
    generate_shapes_dataset(o, progress.callback());
  }
  std::printf("wrote %lld images (%lldx%lld) and metadata.jsonl to %s\n", (long long)o.num_images, (long long)o.size,
              (long long)o.size, o.output_dir.c_str());
  return 0;
}

// ---- score ---------------------------------------------------------------------------------------
int run_score(int argc, const char* const* argv) {
  std::string input_dir, output;
  bool quiet = false, all = false;
  FlagParser p("sd_data score",
               "Reads the shape, its colour, the background, the position and the size back from every image\n"
               "in --input_dir (e.g. images a model trained on `sd_data generate` output made) and compares them\n"
               "with what each should show: the attribute keys of its metadata.jsonl line, else its caption there,\n"
               "else its .txt caption, else the prompt sd_infer wrote into the PNG (\"parameters\"). Prints the\n"
               "images read wrongly and the accuracy per attribute.\n"
               "\n"
               "The classifier: background = the named colour of most border pixels; shape colour = the nearest\n"
               "named colour of the pixels farthest from it; then each shape is rendered (centre and radius from the\n"
               "moments of the shape's coverage, blurred at several levels) and the one closest to the image wins;\n"
               "position = the nearest of the five anchors, size = radius under or over 0.14 of the side. It\n"
               "tolerates blur, noise and colour shifts (see tests/train/data_tools_test.cpp for measured accuracy).");
  p.add(flag("input_dir", "DIR", "", "the images (required)", [&](const std::string& v) { input_dir = v; }));
  p.add(flag("output", "FILE", "", "also write one JSON line per image (estimate, truth, what is right)",
             [&](const std::string& v) { output = v; }));
  p.add(flag("all", "", "", "print every image, not only those read wrongly", [&](const std::string&) { all = true; }));
  p.add(flag("quiet", "", "", "no progress line", [&](const std::string&) { quiet = true; }));
  if (!parse_flags(p, "score", argc, argv)) return 0;
  require(p, "score", {"input_dir"});
  ScoreResult r;
  {
    ProgressLine progress("sd_data score", quiet);
    r = score_shapes(input_dir, progress.callback());
  }
  int64_t failed = 0, without_truth = 0;
  std::string lines;
  for (const ScoreEntry& e : r.entries) {
    lines += score_entry_json(e) + "\n";
    if (!e.error.empty()) {
      ++failed;
      std::fprintf(stderr, "sd_data score: skipped '%s': %s\n", e.file.c_str(), e.error.c_str());
      continue;
    }
    const std::string got = e.estimate.found ? shape_caption(e.estimate.attr) : "(no shape found)";
    if (!e.has_truth) {
      ++without_truth;
      if (all) std::printf("?      %s  read: %s\n", e.file.c_str(), got.c_str());
      continue;
    }
    const bool right = e.estimate.found && e.estimate.attr == e.truth;
    if (all || !right)
      std::printf("%s %s  read: %s  expected: %s\n", right ? "right " : "wrong ", e.file.c_str(), got.c_str(),
                  shape_caption(e.truth).c_str());
  }
  if (!output.empty()) {
    std::ofstream f(output, std::ios::binary | std::ios::trunc);
    SD_CHECK(f.good(), "cannot write '", output, "'");
    f << lines;
    SD_CHECK(f.good(), "writing '", output, "' failed");
  }
  if (r.accuracy.images > 0) std::printf("%s\n", r.accuracy.summary().c_str());
  if (without_truth > 0)
    std::printf("%lld images have no caption in the shapes grammar: read, not scored\n", (long long)without_truth);
  if (failed > 0) {
    std::fprintf(stderr, "sd_data score: %lld images could not be read\n", (long long)failed);
    return 1;
  }
  return 0;
}

// ---- clean ---------------------------------------------------------------------------------------
int run_clean(int argc, const char* const* argv) {
  CleanOptions o;
  bool quiet = false;
  FlagParser p(
      "sd_data clean",
      "Checks every image under --input_dir (recursively; PNG, JPEG, WebP, BMP, GIF) and decides, in this\n"
      "order: drop it when the file is unreadable, truncated or corrupt (every pixel is decoded; a PNG's\n"
      "chunks and CRCs are checked), when its shorter side is under --min_side, when it is smaller than\n"
      "--min_bytes, or when it has the same bytes (SHA-256) as a file earlier in sorted order (that one\n"
      "stays); convert it when its mode is not 8-bit RGB (grayscale, RGBA, 16-bit, palette, CMYK JPEG):\n"
      "to an RGB PNG <stem>.png as PIL's convert(\"RGB\") makes it; keep it otherwise.\n"
      "\n"
      "  no --output_dir, no --delete   report only: nothing is changed\n"
      "  --output_dir OUT               kept images copied unchanged, converted ones written as PNG, with\n"
      "                                 their .txt captions and metadata.jsonl (dropped files left out,\n"
      "                                 converted ones renamed); the input stays as it is\n"
      "  --delete                       the same in place: dropped images and their .txt deleted,\n"
      "                                 converted ones replaced by their PNG, metadata.jsonl rewritten\n"
      "\n"
      "Prints one line per image (action, file, reason) and writes them as JSON lines ({\"file\",\n"
      "\"action\", \"reason\", \"output\", \"width\", \"height\", \"bytes\", \"format\", \"mode\", \"sha256\",\n"
      "\"duplicate_of\"}) to clean_report.jsonl in --output_dir (else --input_dir). --dry_run changes\n"
      "nothing and writes no report file.");
  p.add(flag("input_dir", "DIR", "", "the images (required)", [&](const std::string& v) { o.input_dir = v; }));
  p.add(flag("output_dir", "DIR", "", "write the cleaned dataset here (must be empty unless --overwrite)",
             [&](const std::string& v) { o.output_dir = v; }));
  p.add(flag("min_side", "PX", "768", "drop images whose shorter side is smaller (0: no limit)",
             [&](const std::string& v) { o.min_side = at_least(v, 0); }));
  p.add(flag("min_bytes", "N", "102400", "drop files smaller than N bytes (0: no limit)",
             [&](const std::string& v) { o.min_bytes = at_least(v, 0); }));
  p.add(flag("dry_run", "", "", "report what would happen; change nothing",
             [&](const std::string&) { o.dry_run = true; }));
  p.add(flag("delete", "", "", "clean --input_dir in place (deletes files!)",
             [&](const std::string&) { o.delete_files = true; }));
  p.add(flag("overwrite", "", "", "write into an --output_dir that already holds files",
             [&](const std::string&) { o.overwrite = true; }));
  p.add(flag("quiet", "", "", "no progress line", [&](const std::string&) { quiet = true; }));
  if (!parse_flags(p, "clean", argc, argv)) return 0;
  require(p, "clean", {"input_dir"});
  CleanReport r;
  {
    ProgressLine progress("sd_data clean", quiet);
    r = clean_dataset(o, progress.callback());
  }
  for (const CleanEntry& e : r.entries) {
    std::string line = e.action + std::string(e.action.size() < 8 ? 8 - e.action.size() : 1, ' ') + e.file;
    if (!e.reason.empty()) line += "  (" + e.reason + ")";
    if (!e.output.empty() && e.output != e.file) line += "  -> " + e.output;
    std::printf("%s\n", line.c_str());
  }
  for (const std::string& n : r.notes) std::fprintf(stderr, "sd_data clean: note: %s\n", n.c_str());
  std::printf("%zu images: %lld kept, %lld converted, %lld dropped", r.entries.size(), (long long)r.kept,
              (long long)r.converted, (long long)r.dropped);
  if (o.dry_run)
    std::printf(" (dry run: nothing changed)\n");
  else if (o.output_dir.empty() && !o.delete_files)
    std::printf(" (report only: nothing changed; report in %s)\n", r.report_path.c_str());
  else
    std::printf("; report in %s\n", r.report_path.c_str());
  return 0;
}

// ---- caption -------------------------------------------------------------------------------------
int run_caption(int argc, const char* const* argv) {
  CaptionOptions o;
  FlagParser p("sd_data caption",
               "Writes --input_dir/metadata.jsonl (imagefolder layout) with one {\"file_name\", \"text\"} line per\n"
               "image (recursively, sorted): the text of its same-name .txt file (kohya layout), or --template\n"
               "filled in for it. An existing metadata.jsonl is kept unless --overwrite.\n"
               "\n"
               "template fields:\n"
               "  {name}     the file's stem with _ and - as spaces (red_fox-01.jpg -> \"red fox 01\")\n"
               "  {folder}   the name of the folder holding the image, without a kohya repeat prefix\n"
               "             (10_sks dog/ -> \"sks dog\"); the input folder's name for top-level images\n"
               "  {caption}  the image's .txt caption (e.g. --template \"{caption}, photo\")\n"
               "  {{ }}      literal braces");
  p.add(flag("input_dir", "DIR", "", "the images (required)", [&](const std::string& v) { o.input_dir = v; }));
  p.add(flag("template", "TEXT", "", "caption every image from this template instead of its .txt",
             [&](const std::string& v) {
               SD_CHECK(!v.empty(), "must not be empty");
               o.templ = v;
             }));
  p.add(flag("caption_column", "NAME", "text", "the caption's key in metadata.jsonl (sd_train --caption_column)",
             [&](const std::string& v) { o.caption_column = v; }));
  p.add(
      flag("overwrite", "", "", "replace an existing metadata.jsonl", [&](const std::string&) { o.overwrite = true; }));
  if (!parse_flags(p, "caption", argc, argv)) return 0;
  require(p, "caption", {"input_dir"});
  const CaptionResult r = write_captions(o);
  std::printf("wrote %s: %lld captions (%lld from .txt files, %lld from the template)\n", r.metadata_path.c_str(),
              (long long)r.images, (long long)r.from_txt, (long long)r.from_template);
  return 0;
}

// ---- resize --------------------------------------------------------------------------------------
int run_resize(int argc, const char* const* argv) {
  ResizeOptions o;
  bool quiet = false;
  FlagParser p("sd_data resize",
               "Writes a resized PNG copy of every image under --input_dir (recursively) into --output_dir, at the\n"
               "same relative path with the extension .png (<stem>_<ext>.png when two inputs share a stem): the\n"
               "shorter side becomes --resolution (up or down, PIL's resampling, as sd_train resizes), then with\n"
               "--center_crop the centre --resolution x --resolution square is kept. .txt captions and\n"
               "metadata.jsonl (file names updated) come along. Images that cannot be read are named and left out\n"
               "(exit status 1).");
  p.add(flag("input_dir", "DIR", "", "the images (required)", [&](const std::string& v) { o.input_dir = v; }));
  p.add(flag("output_dir", "DIR", "", "where to write (required; must be empty unless --overwrite)",
             [&](const std::string& v) { o.output_dir = v; }));
  p.add(flag("resolution", "PX", "", "the shorter side after resizing (required)", [&](const std::string& v) {
    o.resolution = parse_int(v);
    SD_CHECK(o.resolution >= 8 && o.resolution <= 16384, "must be between 8 and 16384");
  }));
  p.add(flag("center_crop", "", "", "crop the centre square", [&](const std::string&) { o.center_crop = true; }));
  p.add(flag("interpolation", "NAME", "lanczos", "nearest, bilinear, bicubic or lanczos",
             [&](const std::string& v) { o.interp = parse_interpolation(v); }));
  p.add(flag("overwrite", "", "", "write into an --output_dir that already holds files",
             [&](const std::string&) { o.overwrite = true; }));
  p.add(flag("quiet", "", "", "no progress line", [&](const std::string&) { quiet = true; }));
  if (!parse_flags(p, "resize", argc, argv)) return 0;
  require(p, "resize", {"input_dir", "output_dir", "resolution"});
  ResizeResult r;
  {
    ProgressLine progress("sd_data resize", quiet);
    r = resize_dataset(o, progress.callback());
  }
  for (const std::string& n : r.notes) std::fprintf(stderr, "sd_data resize: note: %s\n", n.c_str());
  for (const auto& [file, why] : r.failed)
    std::fprintf(stderr, "sd_data resize: skipped '%s': %s\n", file.c_str(), why.c_str());
  std::printf("wrote %lld images to %s (shorter side %lld%s, %s)\n", (long long)r.written, o.output_dir.c_str(),
              (long long)o.resolution,
              o.center_crop
                  ? (", centre-cropped to " + std::to_string(o.resolution) + "x" + std::to_string(o.resolution)).c_str()
                  : "",
              interpolation_name(o.interp));
  if (!r.failed.empty()) {
    std::fprintf(stderr, "sd_data resize: %zu images could not be read\n", r.failed.size());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "--help" || mode == "-h" || mode == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  int (*run)(int, const char* const*) = nullptr;
  if (mode == "generate")
    run = run_generate;
  else if (mode == "score")
    run = run_score;
  else if (mode == "clean")
    run = run_clean;
  else if (mode == "caption")
    run = run_caption;
  else if (mode == "resize")
    run = run_resize;
  if (!run) {
    std::fprintf(
        stderr,
        "sd_data: unknown mode '%s': the modes are generate, score, clean, caption, resize (see sd_data --help)\n",
        mode.c_str());
    return 2;
  }
  // The mode's flags parse as a command line of their own (argv[1], the mode, stands for the program).
  try {
    return run(argc - 1, argv + 1);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const DataUsageError& e) {
    std::fprintf(stderr, "sd_data %s: %s\n", mode.c_str(), sentence(e).c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sd_data %s: error: %s\n", mode.c_str(), sentence(e).c_str());
    return 1;
  }
}
