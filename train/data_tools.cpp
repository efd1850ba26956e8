#include "train/data_tools.h"

#include <unistd.h>
#include <webp/decode.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "infer/image_decode.h"
#include "infer/image_io.h"
#include "infer/sha256.h"
#include "runtime/file_io.h"
#include "runtime/parallel.h"

namespace sd::train {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// sd::Error messages end in " [file.cpp:123]" (where it was raised): reports show the sentence only.
std::string message_of(const std::exception& e) {
  std::string m = e.what();
  const size_t b = m.rfind(" [");
  if (b != std::string::npos && !m.empty() && m.back() == ']' && m.find(".cpp:", b) != std::string::npos) m.resize(b);
  return m;
}

void save_png_to(const fs::path& p, const Tensor& hwc) {
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  infer::save_png(p.string(), hwc);
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void require_input_dir(const std::string& dir, const char* flag) {
  if (dir.empty()) throw DataUsageError(std::string(flag) + " is required");
  if (!fs::exists(dir)) throw DataUsageError(std::string(flag) + " '" + dir + "' does not exist");
  if (!fs::is_directory(dir)) throw DataUsageError(std::string(flag) + " '" + dir + "' is not a folder");
}

bool same_place(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::exists(a) && fs::exists(b)) return fs::equivalent(a, b, ec);
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

// The output folder: not the input, not a file, empty unless `overwrite`. Created.
void prepare_output_dir(const std::string& input_dir, const std::string& output_dir, bool overwrite) {
  if (same_place(input_dir, output_dir))
    throw DataUsageError("--output_dir '" + output_dir + "' is the input folder: give another folder");
  if (fs::exists(output_dir)) {
    if (!fs::is_directory(output_dir))
      throw DataUsageError("--output_dir '" + output_dir + "' is a file, not a folder");
    SD_CHECK(overwrite || fs::is_empty(output_dir), "--output_dir '", output_dir,
             "' already holds files; empty it, choose another folder, or pass --overwrite to write into it");
  }
  fs::create_directories(output_dir);
}

// The folder's path relative to `dir`, '/'-separated, when `sub` lies inside `dir`; "" otherwise.
std::string relative_inside(const std::string& dir, const std::string& sub) {
  if (sub.empty()) return "";
  std::error_code ec;
  const fs::path d = fs::weakly_canonical(dir, ec), s = fs::weakly_canonical(sub, ec);
  const fs::path rel = s.lexically_relative(d);
  if (rel.empty() || rel.native().rfind("..", 0) == 0 || rel == ".") return "";
  return rel.generic_string();
}

std::string stem_path(const std::string& rel) {  // "sub/a.png" -> "sub/a"
  const fs::path p(rel);
  return (p.parent_path() / p.stem()).generic_string();
}

std::string caption_path(const std::string& rel) { return stem_path(rel) + ".txt"; }

// "<stem>.png", or "<stem>_<ext>.png" when another input (or an earlier output) has that name.
std::string png_name(const std::string& rel, const std::set<std::string>& inputs, std::set<std::string>& taken) {
  std::string out = stem_path(rel) + ".png";
  if (out != rel && (inputs.count(out) || taken.count(out))) {
    std::string ext = fs::path(rel).extension().string();
    if (!ext.empty()) ext = ext.substr(1);
    out = stem_path(rel) + "_" + lower(ext) + ".png";
    for (int i = 2; inputs.count(out) || taken.count(out); ++i)
      out = stem_path(rel) + "_" + lower(ext) + "_" + std::to_string(i) + ".png";
  }
  taken.insert(out);
  return out;
}

// metadata.jsonl of `dir`: its lines in order (parsed, or nullopt-like null json for lines that are
// not JSON objects, kept as text).
struct MetaLine {
  std::string raw;
  ojson j;           // null unless an object with a string "file_name"
  std::string file;  // normalised file_name
};

std::vector<MetaLine> read_metadata(const fs::path& path) {
  std::vector<MetaLine> out;
  if (!fs::exists(path)) return out;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    if (trim(line).empty()) continue;
    MetaLine m;
    m.raw = line;
    try {
      ojson j = ojson::parse(line);
      if (j.is_object() && j.contains("file_name") && j["file_name"].is_string()) {
        m.file = fs::path(j["file_name"].get<std::string>()).lexically_normal().generic_string();
        m.j = std::move(j);
      }
    } catch (const std::exception&) {
    }
    out.push_back(std::move(m));
  }
  return out;
}

// Carries captions along to `out_dir`: the .txt beside each image and the input's metadata.jsonl with
// file names mapped (`mapping`: input relative path -> output relative path; images not in it were
// dropped, so are their metadata lines).
void carry_captions(const fs::path& in_dir, const fs::path& out_dir, const std::map<std::string, std::string>& mapping,
                    std::vector<std::string>& notes) {
  for (const auto& [from, to] : mapping) {
    const fs::path txt = in_dir / caption_path(from);
    if (fs::is_regular_file(txt)) write_file_atomic(out_dir / caption_path(to), read_file(txt));
  }
  const fs::path meta = in_dir / "metadata.jsonl";
  if (!fs::exists(meta)) return;
  std::string text;
  int64_t line_no = 0;
  for (const MetaLine& m : read_metadata(meta)) {
    ++line_no;
    if (m.j.is_null()) {
      notes.push_back("metadata.jsonl line " + std::to_string(line_no) +
                      " is not a JSON object with \"file_name\": copied as is");
      text += m.raw + "\n";
      continue;
    }
    const auto it = mapping.find(m.file);
    if (it == mapping.end()) {
      if (!fs::exists(in_dir / m.file))
        notes.push_back("metadata.jsonl line " + std::to_string(line_no) + ": '" + m.file +
                        "' does not exist: left out");
      continue;
    }
    ojson j = m.j;
    j["file_name"] = it->second;
    text += j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
  }
  write_file_atomic(out_dir / "metadata.jsonl", text);
}

// Runs f(i) for i in [0, n) on the OpenMP threads, reporting progress in order of completion.
template <class F>
void for_each_parallel(int64_t n, const DataProgress& progress, F&& f) {
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      f(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
    const int64_t d = ++done;
    if (progress) {
      std::lock_guard<std::mutex> lock(mu);
      progress(d, n);
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace

bool is_image_file_name(const std::string& name) {
  static const std::set<std::string> kExt = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"};
  return kExt.count(lower(fs::path(name).extension().string())) > 0;
}

std::vector<std::string> list_image_files(const std::string& dir, const std::string& skip) {
  const std::string skip_rel = relative_inside(dir, skip);
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied);
       it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = it->path().lexically_relative(dir).generic_string();
    if (it->is_directory() && !skip_rel.empty() && rel == skip_rel) {
      it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() && is_image_file_name(rel)) out.push_back(rel);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---- generate ------------------------------------------------------------------------------------

void generate_shapes_dataset(const GenerateOptions& opt, const DataProgress& progress) {
  if (opt.output_dir.empty()) throw DataUsageError("--output_dir is required");
  if (opt.num_images < 1) throw DataUsageError("--num_images must be at least 1");
  if (opt.size < 32 || opt.size > 4096) throw DataUsageError("--size must be between 32 and 4096");
  if (fs::exists(opt.output_dir)) {
    if (!fs::is_directory(opt.output_dir))
      throw DataUsageError("--output_dir '" + opt.output_dir + "' is a file, not a folder");
    SD_CHECK(opt.overwrite || fs::is_empty(opt.output_dir), "--output_dir '", opt.output_dir,
             "' already holds files; empty it, choose another folder, or pass --overwrite to write into it");
  }
  fs::create_directories(opt.output_dir);
  const int digits = std::max<int>(5, int(std::to_string(opt.num_images - 1).size()));
  std::vector<std::string> lines(size_t(opt.num_images));
  for_each_parallel(opt.num_images, progress, [&](int64_t i) {
    const ShapeScene s = shape_scene(opt.seed, uint64_t(i));
    char name[32];
    std::snprintf(name, sizeof(name), "%0*lld.png", digits, (long long)i);
    std::string caption = shape_caption(s.attr), color = shape_color_name(s.attr.color);
    if (opt.new_color) {
      // The caption names the colour once, right before the shape: "a small red circle on ...".
      const std::string old = " " + color + " " + shape_kind_name(s.attr.shape);
      caption.replace(caption.find(old), old.size(), " " + opt.new_color->first + " " + shape_kind_name(s.attr.shape));
      color = opt.new_color->first;
    }
    save_png_to(fs::path(opt.output_dir) / name,
                render_shape_scene(s, opt.size, opt.new_color ? std::optional(opt.new_color->second) : std::nullopt));
    ojson j;
    j["file_name"] = name;
    j["text"] = caption;
    j["shape"] = shape_kind_name(s.attr.shape);
    j["color"] = color;
    j["background"] = shape_color_name(s.attr.background);
    j["position"] = shape_position_name(s.attr.position);
    j["size"] = shape_size_name(s.attr.size);
    j["center"] = {s.center_x_milli / 1000.0, s.center_y_milli / 1000.0};
    j["radius"] = s.radius_milli / 1000.0;
    lines[size_t(i)] = j.dump() + "\n";
  });
  std::string text;
  for (const std::string& l : lines) text += l;
  write_file_atomic(fs::path(opt.output_dir) / "metadata.jsonl", text);
}

std::pair<std::string, std::array<uint8_t, 3>> parse_new_color(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0)
    throw DataUsageError("--new_color '" + spec + "': expected NAME=#RRGGBB or NAME=R,G,B (e.g. teal=#008080)");
  const std::string name = spec.substr(0, eq), value = spec.substr(eq + 1);
  for (char c : name)
    if (!std::isalpha(static_cast<unsigned char>(c)))
      throw DataUsageError("--new_color: the name '" + name + "' must be one word of letters");
  if (parse_shape_color(name)) throw DataUsageError("--new_color: '" + name + "' is already a colour of the dataset");
  std::array<uint8_t, 3> rgb{};
  int parsed = 0;
  if (value.size() == 7 && value[0] == '#' &&
      value.find_first_not_of("0123456789abcdefABCDEF", 1) == std::string::npos) {
    for (int c = 0; c < 3; ++c) rgb[size_t(c)] = uint8_t(std::stoi(value.substr(size_t(1 + 2 * c), 2), nullptr, 16));
    parsed = 3;
  } else {
    std::stringstream ss(value);
    std::string part;
    while (std::getline(ss, part, ',') && parsed < 4) {
      if (part.empty() || part.size() > 3 || part.find_first_not_of("0123456789") != std::string::npos) break;
      const int v = std::stoi(part);
      if (v > 255) break;
      if (parsed < 3) rgb[size_t(parsed)] = uint8_t(v);
      ++parsed;
    }
    if (parsed != 3 || std::count(value.begin(), value.end(), ',') != 2) parsed = 0;
  }
  if (parsed != 3) throw DataUsageError("--new_color '" + spec + "': the colour must be #RRGGBB or R,G,B (0-255)");
  return {name, rgb};
}

// ---- inspecting image files ----------------------------------------------------------------------

ImageFileInfo inspect_image_bytes(const std::string& bytes, const std::string& name) {
  ImageFileInfo info;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  auto starts = [&](const char* sig, size_t len) { return n >= len && std::memcmp(p, sig, len) == 0; };
  if (n == 0) {
    info.problem = "corrupt: empty file";
    return info;
  }
  if (starts("\x89PNG\r\n\x1a\n", 8)) {
    info.format = "png";
    if (n < 33 || std::memcmp(p + 12, "IHDR", 4) != 0) {
      info.problem = n < 33 ? "truncated: the file ends inside the PNG header" : "corrupt: no IHDR chunk";
      return info;
    }
    info.width = be32(p + 16), info.height = be32(p + 20);
    const int depth = p[24], type = p[25];
    switch (type) {
      case 0: info.mode = depth == 1 ? "1" : depth == 16 ? "I;16" : "L"; break;
      case 2: info.mode = depth == 16 ? "RGB;16" : "RGB"; break;
      case 3: info.mode = "P"; break;
      case 4: info.mode = depth == 16 ? "LA;16" : "LA"; break;
      case 6: info.mode = depth == 16 ? "RGBA;16" : "RGBA"; break;
      default: info.problem = "corrupt: PNG colour type " + std::to_string(type); return info;
    }
    // Every chunk whole, with its CRC, up to IEND.
    size_t pos = 8;
    bool iend = false;
    while (pos + 8 <= n) {
      const uint32_t len = be32(p + pos);
      const std::string type4(bytes, pos + 4, 4);
      if (pos + 12 + size_t(len) > n) {
        info.problem = "truncated: the file ends inside PNG chunk " + type4 + " (" + std::to_string(n) + " bytes)";
        return info;
      }
      const uint32_t crc = uint32_t(crc32(0L, p + pos + 4, uInt(len + 4)));
      if (crc != be32(p + pos + 8 + len)) {
        info.problem = "corrupt: CRC mismatch in PNG chunk " + type4;
        return info;
      }
      pos += 12 + size_t(len);
      if (type4 == "IEND") {
        iend = true;
        break;
      }
    }
    if (!iend) {
      info.problem = "truncated: no IEND chunk (the file ends after " + std::to_string(n) + " bytes)";
      return info;
    }
  } else if (starts("\xFF\xD8", 2)) {
    info.format = "jpeg";
    // The frame header (SOFn) gives the size and the number of components.
    size_t pos = 2;
    while (pos + 4 <= n) {
      if (p[pos] != 0xFF) break;
      const unsigned char m = p[pos + 1];
      if (m == 0xFF) {
        ++pos;
        continue;
      }
      if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) {
        pos += 2;
        continue;
      }
      const size_t len = (size_t(p[pos + 2]) << 8) | p[pos + 3];
      if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC && pos + 10 <= n) {
        info.height = (int64_t(p[pos + 5]) << 8) | p[pos + 6];
        info.width = (int64_t(p[pos + 7]) << 8) | p[pos + 8];
        const int comps = p[pos + 9];
        info.mode = comps == 1 ? "L" : comps == 3 ? "RGB" : comps == 4 ? "CMYK" : std::to_string(comps) + " components";
        break;
      }
      if (m == 0xDA) break;
      pos += 2 + len;
    }
  } else if (starts("RIFF", 4) && n >= 12 && std::memcmp(p + 8, "WEBP", 4) == 0) {
    info.format = "webp";
    WebPBitstreamFeatures f;
    if (WebPGetFeatures(p, n, &f) == VP8_STATUS_OK) {
      info.width = f.width, info.height = f.height;
      info.mode = f.has_alpha ? "RGBA" : "RGB";
    }
  } else if (starts("GIF8", 4) || starts("BM", 2)) {
    infer::ImageHeader h;
    info.format = starts("BM", 2) ? "bmp" : "gif";
    if (infer::probe_image(p, n, &h).empty()) {
      info.width = h.width, info.height = h.height;
      info.mode = h.mode;
    }
  }
  if (info.format.empty()) {
    info.problem = "corrupt: not an image format sd_train reads (PNG, JPEG, WebP, BMP, GIF)";
    return info;
  }
  try {
    const Tensor img = decode_image(bytes.data(), bytes.size(), name);
    info.height = img.size(0), info.width = img.size(1);
  } catch (const std::exception& e) {
    const std::string m = message_of(e);
    info.problem = (m.find("truncated") != std::string::npos ? "truncated: " : "corrupt: ") + m;
  }
  return info;
}

// ---- clean ---------------------------------------------------------------------------------------

std::string clean_entry_json(const CleanEntry& e) {
  ojson j;
  j["file"] = e.file;
  j["action"] = e.action;
  j["reason"] = e.reason;
  j["output"] = e.output.empty() ? ojson(nullptr) : ojson(e.output);
  j["width"] = e.width;
  j["height"] = e.height;
  j["bytes"] = e.bytes;
  j["format"] = e.format;
  j["mode"] = e.mode;
  j["sha256"] = e.sha256;
  j["duplicate_of"] = e.duplicate_of.empty() ? ojson(nullptr) : ojson(e.duplicate_of);
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

CleanReport clean_dataset(const CleanOptions& opt, const DataProgress& progress) {
  require_input_dir(opt.input_dir, "--input_dir");
  if (opt.min_side < 0) throw DataUsageError("--min_side must not be negative");
  if (opt.min_bytes < 0) throw DataUsageError("--min_bytes must not be negative");
  const bool to_output = !opt.output_dir.empty();
  if (to_output && opt.delete_files)
    throw DataUsageError("--delete cleans the input folder in place: it does not go with --output_dir");
  if (to_output) {
    if (same_place(opt.input_dir, opt.output_dir))
      throw DataUsageError("--output_dir '" + opt.output_dir +
                           "' is the input folder: give another folder, or use --delete to clean in place");
    if (!opt.dry_run) prepare_output_dir(opt.input_dir, opt.output_dir, opt.overwrite);
  }
  const fs::path in_dir(opt.input_dir);
  const std::vector<std::string> files = list_image_files(opt.input_dir, opt.output_dir);
  const std::set<std::string> inputs(files.begin(), files.end());

  CleanReport report;
  report.entries.resize(files.size());
  // 1. Each file on its own (in parallel): read, hash, inspect, size rules.
  for_each_parallel(int64_t(files.size()), progress, [&](int64_t i) {
    CleanEntry& e = report.entries[size_t(i)];
    e.file = files[size_t(i)];
    std::string bytes;
    try {
      bytes = read_file(in_dir / e.file);
    } catch (const std::exception& ex) {
      e.action = "drop", e.reason = "unreadable: " + message_of(ex);
      return;
    }
    e.bytes = int64_t(bytes.size());
    e.sha256 = infer::sha256_hex(bytes);
    const ImageFileInfo info = inspect_image_bytes(bytes, e.file);
    e.format = info.format, e.mode = info.mode, e.width = info.width, e.height = info.height;
    if (!info.problem.empty()) {
      e.action = "drop", e.reason = info.problem;
    } else if (std::min(e.width, e.height) < opt.min_side) {
      e.action = "drop";
      e.reason = "too small: " + std::to_string(e.width) + "x" + std::to_string(e.height) + ", shorter side under " +
                 std::to_string(opt.min_side);
    } else if (e.bytes < opt.min_bytes) {
      e.action = "drop",
      e.reason = "too small: " + std::to_string(e.bytes) + " bytes, under " + std::to_string(opt.min_bytes);
    }
  });
  // 2. Duplicates (the first by sorted name stays), conversions, output names.
  std::map<std::string, std::string> first_with_hash;
  std::set<std::string> taken;
  for (CleanEntry& e : report.entries) {
    if (!e.action.empty()) continue;
    const auto [it, fresh] = first_with_hash.emplace(e.sha256, e.file);
    if (!fresh) {
      e.action = "drop", e.reason = "duplicate of " + it->second, e.duplicate_of = it->second;
    } else if (e.mode != "RGB") {
      e.action = "convert", e.reason = e.mode + " -> RGB";
    } else {
      e.action = "keep";
      taken.insert(e.file);
    }
  }
  for (CleanEntry& e : report.entries) {
    if (e.action == "convert")
      e.output = png_name(e.file, inputs, taken);
    else if (e.action == "keep" && (to_output || opt.delete_files))
      e.output = e.file;
    if (e.action == "drop")
      ++report.dropped;
    else if (e.action == "convert")
      ++report.converted;
    else
      ++report.kept;
  }
  if (!to_output && !opt.delete_files)
    for (CleanEntry& e : report.entries) e.output.clear();  // report only: nothing is written

  if (!opt.dry_run) {
    std::map<std::string, std::string> mapping;  // kept or converted: input -> output
    for (const CleanEntry& e : report.entries)
      if (e.action != "drop") mapping[e.file] = e.output.empty() ? e.file : e.output;
    if (to_output) {
      const fs::path out_dir(opt.output_dir);
      for (const CleanEntry& e : report.entries) {
        if (e.action == "keep")
          write_file_atomic(out_dir / e.output, read_file(in_dir / e.file));
        else if (e.action == "convert")
          save_png_to(out_dir / e.output, decode_image_file((in_dir / e.file).string()));
      }
      carry_captions(in_dir, out_dir, mapping, report.notes);
    } else if (opt.delete_files) {
      // Captions first (a converted image may take a new stem), then images, then metadata.jsonl.
      std::set<std::string> kept_stems;
      for (const auto& [from, to] : mapping) kept_stems.insert(stem_path(from)), kept_stems.insert(stem_path(to));
      for (const CleanEntry& e : report.entries) {
        if (e.action != "convert" || stem_path(e.output) == stem_path(e.file)) continue;
        const fs::path txt = in_dir / caption_path(e.file);
        if (fs::is_regular_file(txt)) write_file_atomic(in_dir / caption_path(e.output), read_file(txt));
      }
      for (const CleanEntry& e : report.entries) {
        if (e.action == "convert") {
          save_png_to(in_dir / e.output, decode_image_file((in_dir / e.file).string()));
          if (e.output != e.file) fs::remove(in_dir / e.file);
        } else if (e.action == "drop") {
          fs::remove(in_dir / e.file);
          const fs::path txt = in_dir / caption_path(e.file);
          if (!kept_stems.count(stem_path(e.file)) && fs::is_regular_file(txt)) fs::remove(txt);
        }
      }
      if (fs::exists(in_dir / "metadata.jsonl")) {
        // Rewritten in place: lines of deleted images go, converted ones get their new names.
        std::string text;
        int64_t line_no = 0;
        std::set<std::string> dropped;
        for (const CleanEntry& e : report.entries)
          if (e.action == "drop") dropped.insert(e.file);
        for (const MetaLine& m : read_metadata(in_dir / "metadata.jsonl")) {
          ++line_no;
          if (m.j.is_null()) {
            text += m.raw + "\n";
            continue;
          }
          if (dropped.count(m.file)) continue;
          const auto it = mapping.find(m.file);
          if (it == mapping.end() || it->second == m.file) {
            text += m.raw + "\n";
            continue;
          }
          ojson j = m.j;
          j["file_name"] = it->second;
          text += j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
        }
        write_file_atomic(in_dir / "metadata.jsonl", text);
      }
    }
    std::string lines;
    for (const CleanEntry& e : report.entries) lines += clean_entry_json(e) + "\n";
    const fs::path report_path = fs::path(to_output ? opt.output_dir : opt.input_dir) / "clean_report.jsonl";
    write_file_atomic(report_path, lines);
    report.report_path = report_path.string();
  }
  return report;
}

// ---- caption -------------------------------------------------------------------------------------

namespace {

// Splits a template into literal text and {field} names; DataUsageError on unknown fields.
template <class F>
std::string expand_fields(const std::string& templ, F&& field) {
  static const std::set<std::string> kFields = {"name", "folder", "caption"};
  std::string out;
  for (size_t i = 0; i < templ.size(); ++i) {
    const char c = templ[i];
    if (c == '{' && i + 1 < templ.size() && templ[i + 1] == '{') {
      out.push_back('{');
      ++i;
    } else if (c == '}' && i + 1 < templ.size() && templ[i + 1] == '}') {
      out.push_back('}');
      ++i;
    } else if (c == '{') {
      const size_t close = templ.find('}', i);
      if (close == std::string::npos)
        throw DataUsageError("--template '" + templ + "': '{' without a closing '}' (write {{ for a brace)");
      const std::string name = templ.substr(i + 1, close - i - 1);
      if (!kFields.count(name))
        throw DataUsageError("--template '" + templ + "': unknown field {" + name +
                             "} (the fields are {name}, {folder}, {caption})");
      out += field(name);
      i = close;
    } else if (c == '}') {
      throw DataUsageError("--template '" + templ + "': '}' without an opening '{' (write }} for a brace)");
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string words_of(const std::string& s) {  // '_' and '-' as spaces, runs collapsed, trimmed
  std::string out;
  for (char c : s) {
    const char d = (c == '_' || c == '-') ? ' ' : c;
    if (d == ' ' && (out.empty() || out.back() == ' ')) continue;
    out.push_back(d);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

void check_caption_template(const std::string& templ) {
  expand_fields(templ, [](const std::string&) { return std::string(); });
}

std::string expand_caption_template(const std::string& templ, const std::string& rel_path, const std::string& root_name,
                                    const std::string* txt_caption) {
  const fs::path p(rel_path);
  return expand_fields(templ, [&](const std::string& name) -> std::string {
    if (name == "name") return words_of(p.stem().string());
    if (name == "folder") {
      std::string folder = p.parent_path().empty() ? root_name : p.parent_path().filename().string();
      // kohya's "<repeats>_<words>" folders: the repeat count is not part of the caption.
      size_t d = 0;
      while (d < folder.size() && std::isdigit(static_cast<unsigned char>(folder[d]))) ++d;
      if (d > 0 && d < folder.size() && folder[d] == '_') folder = folder.substr(d + 1);
      return folder;
    }
    SD_CHECK(txt_caption != nullptr, "'", rel_path, "' has no ", caption_path(rel_path), " for {caption}");
    return *txt_caption;
  });
}

CaptionResult write_captions(const CaptionOptions& opt) {
  require_input_dir(opt.input_dir, "--input_dir");
  if (!opt.templ.empty()) check_caption_template(opt.templ);
  if (opt.caption_column.empty() || opt.caption_column == "file_name")
    throw DataUsageError("--caption_column must be a name other than file_name");
  const fs::path in_dir(opt.input_dir);
  const fs::path meta = in_dir / "metadata.jsonl";
  SD_CHECK(opt.overwrite || !fs::exists(meta), "'", meta.string(), "' already exists; pass --overwrite to replace it");
  const std::vector<std::string> files = list_image_files(opt.input_dir);
  SD_CHECK(!files.empty(), "--input_dir '", opt.input_dir, "' holds no images (PNG, JPEG, WebP, BMP, GIF)");
  const std::string root_name = fs::weakly_canonical(in_dir).filename().string();
  CaptionResult r;
  std::string text;
  std::vector<std::string> missing;
  for (const std::string& f : files) {
    const fs::path txt = in_dir / caption_path(f);
    std::string caption;
    const bool has_txt = fs::is_regular_file(txt);
    if (has_txt) caption = trim(read_file(txt));
    if (!opt.templ.empty()) {
      if (!has_txt && opt.templ.find("{caption}") != std::string::npos) {
        missing.push_back(f);
        continue;
      }
      caption = expand_caption_template(opt.templ, f, root_name, has_txt ? &caption : nullptr);
      ++r.from_template;
    } else if (has_txt) {
      ++r.from_txt;
    } else {
      missing.push_back(f);
      continue;
    }
    ojson j;
    j["file_name"] = f;
    j[opt.caption_column] = caption;
    text += j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
    ++r.images;
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += "\n  " + missing[i];
    if (missing.size() > 5) list += "\n  ... (" + std::to_string(missing.size() - 5) + " more)";
    SD_FAIL(missing.size(), " of ", files.size(), " images have no caption file (the same name with .txt)",
            opt.templ.empty() ? "; give --template to caption them from their names" : "", ":", list);
  }
  write_file_atomic(meta, text);
  r.metadata_path = meta.string();
  return r;
}

// ---- resize --------------------------------------------------------------------------------------

ResizeResult resize_dataset(const ResizeOptions& opt, const DataProgress& progress) {
  require_input_dir(opt.input_dir, "--input_dir");
  if (opt.output_dir.empty()) throw DataUsageError("--output_dir is required");
  if (opt.resolution < 8 || opt.resolution > 16384) throw DataUsageError("--resolution must be between 8 and 16384");
  prepare_output_dir(opt.input_dir, opt.output_dir, opt.overwrite);
  const fs::path in_dir(opt.input_dir), out_dir(opt.output_dir);
  const std::vector<std::string> files = list_image_files(opt.input_dir, opt.output_dir);
  const std::set<std::string> inputs(files.begin(), files.end());
  std::set<std::string> taken;
  std::vector<std::string> outputs;
  for (const std::string& f : files) outputs.push_back(png_name(f, inputs, taken));
  std::vector<std::string> errors(files.size());
  for_each_parallel(int64_t(files.size()), progress, [&](int64_t i) {
    try {
      Tensor img = decode_image_file((in_dir / files[size_t(i)]).string());
      img = resize_shorter_side(img, opt.resolution, opt.interp);
      if (opt.center_crop) {
        const auto off = center_crop_offsets(img.size(0), img.size(1), opt.resolution, opt.resolution);
        img = crop(img, off[0], off[1], opt.resolution, opt.resolution);
      }
      save_png_to(out_dir / outputs[size_t(i)], img.is_contiguous() ? img : contiguous_raw(img));
    } catch (const std::exception& e) {
      errors[size_t(i)] = message_of(e);
    }
  });
  ResizeResult r;
  std::map<std::string, std::string> mapping;
  for (size_t i = 0; i < files.size(); ++i) {
    if (errors[i].empty()) {
      mapping[files[i]] = outputs[i];
      ++r.written;
    } else {
      r.failed.push_back({files[i], errors[i]});
    }
  }
  carry_captions(in_dir, out_dir, mapping, r.notes);
  return r;
}

// ---- score ---------------------------------------------------------------------------------------

namespace {

std::optional<ShapeAttributes> attributes_from_keys(const ojson& j) {
  auto str = [&](const char* k) -> std::optional<std::string> {
    if (j.contains(k) && j[k].is_string()) return j[k].get<std::string>();
    return std::nullopt;
  };
  const auto shape = str("shape"), color = str("color"), background = str("background"), position = str("position"),
             size = str("size");
  if (!shape || !color || !background || !position || !size) return std::nullopt;
  const auto k = parse_shape_kind(*shape);
  const auto c = parse_shape_color(*color), b = parse_shape_color(*background);
  const auto p = parse_shape_position(*position);
  const auto s = parse_shape_size(*size);
  if (!k || !c || !b || !p || !s) return std::nullopt;
  return ShapeAttributes{*k, *c, *b, *p, *s};
}

// The prompt of an A1111 "parameters" text: what comes before "Negative prompt:" or the settings line.
std::string prompt_of_parameters(const std::string& params) {
  size_t end = params.find("\nNegative prompt:");
  if (end == std::string::npos) end = params.rfind("\nSteps: ");
  return end == std::string::npos ? params : params.substr(0, end);
}

}  // namespace

std::string score_entry_json(const ScoreEntry& e) {
  ojson j;
  j["file"] = e.file;
  if (!e.error.empty()) {
    j["error"] = e.error;
    return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
  }
  const ShapeAttributes& a = e.estimate.attr;
  j["found"] = e.estimate.found;
  j["estimate"] = {{"shape", shape_kind_name(a.shape)},
                   {"color", shape_color_name(a.color)},
                   {"background", shape_color_name(a.background)},
                   {"position", shape_position_name(a.position)},
                   {"size", shape_size_name(a.size)}};
  if (!e.estimate.found) j["estimate"] = {{"background", shape_color_name(a.background)}};
  j["caption"] = e.estimate.found ? ojson(shape_caption(a)) : ojson(nullptr);
  if (e.has_truth) {
    const ShapeAttributes& t = e.truth;
    j["truth"] = shape_caption(t);
    j["truth_source"] = e.truth_source;
    j["correct"] = {{"shape", e.estimate.found && a.shape == t.shape},
                    {"color", e.estimate.found && a.color == t.color},
                    {"background", a.background == t.background},
                    {"position", e.estimate.found && a.position == t.position},
                    {"size", e.estimate.found && a.size == t.size}};
  } else {
    j["truth"] = nullptr;
  }
  j["center"] = {e.estimate.center_x, e.estimate.center_y};
  j["radius"] = e.estimate.radius;
  j["fit_rms"] = e.estimate.fit_rms;
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

ScoreResult score_shapes(const std::string& input_dir, const DataProgress& progress) {
  require_input_dir(input_dir, "--input_dir");
  const fs::path in_dir(input_dir);
  std::map<std::string, std::pair<ShapeAttributes, std::string>> truth;  // file -> (attributes, source)
  for (const MetaLine& m : read_metadata(in_dir / "metadata.jsonl")) {
    if (m.j.is_null()) continue;
    if (const auto a = attributes_from_keys(m.j)) {
      truth[m.file] = {*a, "metadata"};
    } else if (m.j.contains("text") && m.j["text"].is_string()) {
      if (const auto c = parse_shape_caption(m.j["text"].get<std::string>())) truth[m.file] = {*c, "caption"};
    }
  }
  const std::vector<std::string> files = list_image_files(input_dir);
  SD_CHECK(!files.empty(), "--input_dir '", input_dir, "' holds no images (PNG, JPEG, WebP, BMP, GIF)");
  ScoreResult r;
  r.entries.resize(files.size());
  for_each_parallel(int64_t(files.size()), progress, [&](int64_t i) {
    ScoreEntry& e = r.entries[size_t(i)];
    e.file = files[size_t(i)];
    if (const auto it = truth.find(e.file); it != truth.end()) {
      e.truth = it->second.first, e.truth_source = it->second.second, e.has_truth = true;
    } else if (const fs::path txt = in_dir / caption_path(e.file); fs::is_regular_file(txt)) {
      if (const auto c = parse_shape_caption(read_file(txt))) e.truth = *c, e.truth_source = "txt", e.has_truth = true;
    } else if (lower(fs::path(e.file).extension().string()) == ".png") {
      try {
        const auto text = infer::read_png_text((in_dir / e.file).string());
        if (const auto p = text.find("parameters"); p != text.end())
          if (const auto c = parse_shape_caption(prompt_of_parameters(p->second)))
            e.truth = *c, e.truth_source = "png parameters", e.has_truth = true;
      } catch (const std::exception&) {
      }
    }
    try {
      e.estimate = classify_shape_image(decode_image_file((in_dir / e.file).string()));
    } catch (const std::exception& ex) {
      e.error = message_of(ex);
    }
  });
  for (const ScoreEntry& e : r.entries)
    if (e.has_truth && e.error.empty()) r.accuracy.add(e.truth, e.estimate);
  return r;
}

}  // namespace sd::train
