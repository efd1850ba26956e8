// TensorBoard event files for the trainer (`sd_train --report_to tensorboard --logging_dir DIR`):
// a writer of scalar summaries (loss, lr, grad norm, loss scale...) that `tensorboard --logdir DIR`
// shows as curves, and a reader for tests and tools. No protobuf or TensorFlow dependency: the
// few fields needed are written in the protobuf wire format by hand.
//
// File layout (TFRecord): a sequence of records, each
//   uint64 LE  length of data
//   uint32 LE  masked CRC32C of the 8 length bytes
//   byte[len]  data: one serialized tensorflow.Event
//   uint32 LE  masked CRC32C of data
// with masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8.
// The messages used (tensorboard/compat/proto/event.proto, summary.proto):
//   Event         { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary       { repeated Value value = 1; }
//   Summary.Value { string tag = 1; float simple_value = 2; (others skipped when read) }
// The first record of a file is Event{wall_time, file_version: "brain.Event:2"}; each scalar is
// one Event{wall_time, step, summary{value{tag, simple_value}}}. Fields holding zero are left
// out, as proto3 serializers do, so the bytes equal those of TensorBoard's/PyTorch's writers
// (tests/train/tensorboard_test.cpp checks this against tests/data/tensorboard).
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sd::train {

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-8. `crc` continues an
// earlier value: crc32c(b, crc32c(a)) == crc32c(a + b). crc32c("123456789") == 0xE3069283.
uint32_t crc32c(std::string_view bytes, uint32_t crc = 0);
// The TFRecord mask of crc32c(bytes).
uint32_t masked_crc32c(std::string_view bytes);

// Writes one event file. Single-threaded (the trainer logs from rank 0 only). Events are
// buffered by stdio: they reach the disk on flush() and when the writer is destroyed, so call
// flush() after each logging step for TensorBoard to follow the run live. A resumed run makes a
// new writer and so a new file in the same DIR; TensorBoard merges the files of one directory.
class TensorBoardWriter {
 public:
  // Creates DIR (and parents) and the file events.out.tfevents.<unix seconds, 10 digits>.
  // <hostname>.<pid>.<counter> inside it (the name TensorBoard's own writer uses; an existing
  // file is never overwritten), writes the file_version event and flushes. Throws sd::Error
  // naming the directory or file when it cannot.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();  // flushes; a write error there is reported on stderr
  TensorBoardWriter(TensorBoardWriter&&) = default;
  TensorBoardWriter& operator=(TensorBoardWriter&&) = default;

  // One scalar event. `value` is stored as a float (simple_value), as TensorBoard does;
  // wall_time in seconds since the Unix epoch, a negative value meaning now. Throws sd::Error
  // naming the file on a write error.
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time = -1);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(std::string_view data);

  struct Closer {
    void operator()(std::FILE* f) const;
  };
  std::string path_;
  std::unique_ptr<std::FILE, Closer> file_;
};

// One Summary.Value with a simple_value, with the wall_time and step of its Event.
struct ScalarEvent {
  std::string tag;
  int64_t step = 0;
  float value = 0;
  double wall_time = 0;
};

// Reads every record of an event file, checks both masked CRC32Cs of each and decodes the
// events: returns every simple_value in file order (an Event whose Summary holds several values
// gives several entries). Other events (file_version, text, images, histograms, new-style
// tensor scalars) are skipped. Throws sd::Error naming the file and the record index (0-based)
// on a CRC mismatch, a truncated record or a malformed message; an empty file has no events.
std::vector<ScalarEvent> read_scalar_events(const std::string& path);

}  // namespace sd::train
