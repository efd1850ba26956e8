// SHA-256 (FIPS 180-4), for the model hash A1111 writes into image parameters ("Model hash":
// the first 10 hex digits of the weights file's SHA-256).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sd::infer {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards
  std::string hex_digest();          // 64 lower-case hex digits

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view data);
// The files' bytes one after another (read in 4 MiB pieces); sd::Error naming an unreadable file.
std::string sha256_files_hex(const std::vector<std::string>& paths);

}  // namespace sd::infer
