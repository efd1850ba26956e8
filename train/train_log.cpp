#include "train/train_log.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace sd::train {

namespace fs = std::filesystem;

JsonlLog::JsonlLog(const std::string& path, int64_t keep_bytes) : path_(path) {
  fs::create_directories(fs::path(path).parent_path());
  std::error_code ec;
  const bool exists = fs::exists(path, ec);
  if (exists && keep_bytes > 0) {
    const int64_t size = int64_t(fs::file_size(path, ec));
    SD_CHECK(!ec && size >= keep_bytes, "'", path, "' is shorter (", size, " bytes) than when the checkpoint was "
             "saved (", keep_bytes, " bytes): it was changed since");
    fs::resize_file(path, uintmax_t(keep_bytes), ec);
    SD_CHECK(!ec, "cannot cut '", path, "' back to the checkpoint: ", ec.message());
  }
  f_ = std::fopen(path.c_str(), keep_bytes > 0 ? "ab" : "wb");
  SD_CHECK(f_, "cannot open '", path, "': ", std::strerror(errno));
  bytes_ = keep_bytes > 0 ? keep_bytes : 0;
}

JsonlLog::~JsonlLog() {
  if (f_) std::fclose(f_);
}

void JsonlLog::write(const nlohmann::json& line) {
  const std::string s = line.dump() + "\n";
  const size_t n = std::fwrite(s.data(), 1, s.size(), f_);
  SD_CHECK(n == s.size() && std::fflush(f_) == 0, "cannot write '", path_, "' (disk full?): ", std::strerror(errno));
  bytes_ += int64_t(s.size());
}

nlohmann::json step_json(const StepRecord& r) {
  // NaN/inf are not JSON: they are written as null (a skipped fp16 step has no finite norm).
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  nlohmann::json j;
  j["step"] = r.step;
  j["epoch"] = r.epoch;
  j["loss"] = num(r.loss);
  j["lr"] = num(r.lr);
  j["grad_norm"] = num(r.grad_norm);
  j["loss_scale"] = num(r.loss_scale);
  j["skipped"] = r.skipped;
  j["examples"] = r.examples;
  return j;
}

ProgressBar::ProgressBar(int64_t total, int64_t start, bool enabled)
    : total_(total), start_(start), enabled_(enabled), tty_(isatty(fileno(stderr))),
      t0_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(const StepRecord& r, int64_t peak_bytes) {
  if (std::isfinite(r.loss)) {
    // A 0.9 moving average, as tqdm's smoothing shows it: the raw loss of one step is noise.
    smoothed_ = have_smoothed_ ? 0.9 * smoothed_ + 0.1 * r.loss : r.loss;
    have_smoothed_ = true;
  }
  if (!enabled_) return;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const int64_t done = r.step - start_;
  const double rate = secs > 0 ? double(done) / secs : 0.0;
  const double eta = rate > 0 ? double(total_ - r.step) / rate : 0.0;
  const int width = 24, fill = int(width * r.step / std::max<int64_t>(total_, 1));
  std::string bar(size_t(std::min(fill, width)), '=');
  if (fill < width) bar += '>' + std::string(size_t(width - fill - 1), ' ');
  char line[256];
  std::snprintf(line, sizeof line, "steps %lld/%lld [%s] loss %.4g  lr %.3g  %.2f it/s  ETA %d:%02d:%02d  peak %.0f MiB",
                static_cast<long long>(r.step), static_cast<long long>(total_), bar.c_str(), smoothed_, r.lr, rate,
                int(eta) / 3600, int(eta) / 60 % 60, int(eta) % 60, double(peak_bytes) / (1 << 20));
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K", line);
    drawn_ = true;
  } else if (r.step == total_ || r.step == start_ + 1 || (r.step * 20 / total_) != ((r.step - 1) * 20 / total_)) {
    std::fprintf(stderr, "%s\n", line);  // a log file: about every 5%
  }
  std::fflush(stderr);
}

void ProgressBar::message(const std::string& text) {
  if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", text.c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (enabled_ && tty_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

int64_t peak_memory_bytes(Device device) {
  if (device.is_cuda()) return allocator_for(device).stats().peak_bytes;
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;
}

}  // namespace sd::train
