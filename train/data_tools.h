// The library behind `sd_data` (tools/sd_data.cpp): make, check, caption and resize the image
// folders sd_train reads (train/dataset.h). Every mode reads a folder of images (PNG, JPEG, WebP, BMP,
// GIF, found recursively, in sorted order of their paths relative to the folder) whose captions are
// same-name .txt files (kohya) and/or a metadata.jsonl ({"file_name": ..., "text": ...} per line, the
// Hugging Face imagefolder layout), and writes the same layout.
//
// Nothing here changes an input folder unless asked to (clean --delete, caption writing
// metadata.jsonl); outputs go to a separate folder that must be empty (or --overwrite), and every file
// is written to a temporary name and renamed, so an interrupted run never leaves half a file.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "train/image_transforms.h"
#include "train/shapes_dataset.h"

namespace sd::train {

// A bad request rather than a failure while working (a missing input folder, an output folder that is
// the input, an unknown template field): sd_data exits with 2 for these, 1 for other errors.
struct DataUsageError : Error {
  using Error::Error;
};

// Called after each file with (files done, files in all).
using DataProgress = std::function<void(int64_t done, int64_t total)>;

// Whether the name ends in an extension the decoders read (.png .jpg .jpeg .webp .bmp .gif, any case).
bool is_image_file_name(const std::string& name);
// The images under `dir` (recursively), as sorted '/'-separated paths relative to it; `skip` (a folder
// inside dir, e.g. an output folder placed there) is not entered.
std::vector<std::string> list_image_files(const std::string& dir, const std::string& skip = "");

// ---- generate ------------------------------------------------------------------------------------
struct GenerateOptions {
  std::string output_dir;
  int64_t num_images = 0;
  uint64_t seed = 0;
  int64_t size = 64;       // images are size x size, 32..4096
  bool overwrite = false;  // write into a folder that already holds files
  // A colour the dataset has no word for (e.g. {"teal", {0, 128, 128}}): every shape is painted in it
  // and captioned with its name, a small set to teach a trained model a new colour word.
  std::optional<std::pair<std::string, std::array<uint8_t, 3>>> new_color;
};
// "teal=#008080" (or "teal=0,128,128") -> {"teal", {0, 128, 128}}; the name must be one word of
// letters that is not already a colour of the dataset.
std::pair<std::string, std::array<uint8_t, 3>> parse_new_color(const std::string& spec);
// Images 00000.png ... (at least 5 digits) of the synthetic shapes dataset (train/shapes_dataset.h)
// and metadata.jsonl, one line per image in order:
//   {"file_name": "00000.png", "text": <caption>, "shape": "circle", "color": "red",
//    "background": "blue", "position": "top left", "size": "small",
//    "center": [x, y], "radius": r}          (centre and radius: fractions of the side)
// The same (seed, size) always writes the same bytes. With new_color, "color" and the caption's
// colour word are the new name.
void generate_shapes_dataset(const GenerateOptions& opt, const DataProgress& progress = {});

// ---- inspecting image files ----------------------------------------------------------------------
struct ImageFileInfo {
  std::string format;  // "png" | "jpeg" | "webp" | "bmp" | "gif" | "" (not recognised)
  std::string mode;    // PIL's name for the pixel layout: "RGB", "RGBA", "L", "LA", "P", "1", "I;16",
                       // "CMYK"; 16-bit colour PNGs as "RGB;16", "RGBA;16", "LA;16"
  int64_t width = 0, height = 0;
  std::string problem;  // "" when the whole image decodes; else why not ("truncated: ...", "corrupt: ...")
};
// Reads the header (format, mode, size), walks a PNG's chunks (a missing IEND or a chunk past the end
// of the file is "truncated", a CRC mismatch "corrupt"), then decodes every pixel (decode_image).
ImageFileInfo inspect_image_bytes(const std::string& bytes, const std::string& name);

// ---- clean ---------------------------------------------------------------------------------------
struct CleanOptions {
  std::string input_dir;
  std::string output_dir;      // "" = report only (or clean in place with delete_files)
  int64_t min_side = 768;      // drop images whose shorter side is smaller
  int64_t min_bytes = 102400;  // drop files smaller than this
  bool dry_run = false;        // decide and report, change nothing, write no report file
  bool delete_files = false;   // in place: delete dropped files, replace converted ones
  bool overwrite = false;      // output_dir may already hold files
};

struct CleanEntry {
  std::string file;    // relative to input_dir
  std::string action;  // "keep" | "convert" | "drop"
  std::string reason;  // "" for keep
  std::string output;  // what was (or, dry run, would be) written, relative; "" for none
  std::string format, mode, sha256, duplicate_of;
  int64_t width = 0, height = 0, bytes = 0;
};

struct CleanReport {
  std::vector<CleanEntry> entries;  // one per image file, sorted by name
  std::vector<std::string> notes;   // captions that could not be carried, metadata lines without a file
  int64_t kept = 0, converted = 0, dropped = 0;
  std::string report_path;  // clean_report.jsonl ("" on a dry run)
};

// Decides for every image, in this order of reasons: unreadable file; empty; truncated or corrupt
// (inspect_image_bytes); shorter side < min_side; bytes < min_bytes; the same bytes (SHA-256) as an
// earlier file by sorted name ("duplicate of ..."); then a mode other than RGB is converted (PIL's
// convert("RGB"): alpha dropped, grayscale replicated, palette expanded, 16 bits to 8, CMYK JPEG
// through stb's conversion) and written as <stem>.png (<stem>_<ext>.png if that name is taken);
// anything else is kept as is.
// With output_dir: kept files are copied byte for byte and converted ones written there, each with
// its .txt caption, and a metadata.jsonl of the input is rewritten there (lines of dropped files left
// out, converted files renamed). With delete_files (no output_dir): the same in the input folder:
// dropped images and their .txt are deleted, converted ones replaced by their PNG, metadata.jsonl
// rewritten. With neither, nothing changes but the report. The report, one JSON line per image
// ({"file", "action", "reason", "output", "width", "height", "bytes", "format", "mode", "sha256",
// "duplicate_of"}), is written to clean_report.jsonl in the output folder (or the input folder).
CleanReport clean_dataset(const CleanOptions& opt, const DataProgress& progress = {});
std::string clean_entry_json(const CleanEntry& e);

// ---- caption -------------------------------------------------------------------------------------
struct CaptionOptions {
  std::string input_dir;
  std::string templ;       // "" = from .txt files; else a template (see expand_caption_template)
  bool overwrite = false;  // replace an existing metadata.jsonl
  std::string caption_column = "text";
};
struct CaptionResult {
  int64_t images = 0, from_txt = 0, from_template = 0;
  std::string metadata_path;
};
// Fields: {name} the file's stem with '_' and '-' as spaces (runs of spaces collapsed), {folder} the
// name of the folder holding the image (a kohya repeat prefix "10_" removed; the input folder's own
// name for files at its top), {caption} the text of its .txt file; "{{" and "}}" are literal braces.
// DataUsageError for any other field or an unmatched brace.
std::string expand_caption_template(const std::string& templ, const std::string& rel_path, const std::string& root_name,
                                    const std::string* txt_caption);
void check_caption_template(const std::string& templ);
// Writes input_dir/metadata.jsonl: one {"file_name", <caption_column>} line per image. Without a
// template every image needs its .txt (the missing ones are listed in the error). An existing
// metadata.jsonl is an error unless overwrite.
CaptionResult write_captions(const CaptionOptions& opt);

// ---- resize --------------------------------------------------------------------------------------
struct ResizeOptions {
  std::string input_dir, output_dir;
  int64_t resolution = 512;
  bool center_crop = false;
  Interpolation interp = Interpolation::Lanczos;
  bool overwrite = false;
};
struct ResizeResult {
  int64_t written = 0;
  std::vector<std::pair<std::string, std::string>> failed;  // (file, why): unreadable images
  std::vector<std::string> notes;
};
// Each image decoded (as PIL's convert("RGB")), its shorter side resized to `resolution` (PIL's
// resampling, as sd_train's Resize; up or down), optionally centre-cropped to resolution x resolution,
// and written as PNG under the same relative path with the extension .png (<stem>_<ext>.png when two
// inputs would share a name); .txt captions and metadata.jsonl are carried along as in clean.
ResizeResult resize_dataset(const ResizeOptions& opt, const DataProgress& progress = {});

// ---- score ---------------------------------------------------------------------------------------
struct ScoreEntry {
  std::string file;
  bool has_truth = false;
  ShapeAttributes truth;
  ShapeEstimate estimate;
  std::string truth_source;  // "metadata" | "caption" | "txt" | "png parameters" | ""
  std::string error;         // the image could not be decoded (not scored)
};
struct ScoreResult {
  std::vector<ScoreEntry> entries;
  ShapeAccuracy accuracy;  // over the decoded entries with a truth
};
// Classifies every image (classify_shape_image) and compares it with what it should show: the
// metadata.jsonl line's attribute keys, else its caption parsed (parse_shape_caption), else the .txt
// caption, else the prompt in a PNG's "parameters" text chunk (what sd_infer writes).
ScoreResult score_shapes(const std::string& input_dir, const DataProgress& progress = {});
std::string score_entry_json(const ScoreEntry& e);

}  // namespace sd::train
