// SHA-256, for the model hash A1111 writes into image parameters ("Model hash": the first 10 hex
// digits of the weights file's SHA-256), image de-duplication and cache keys. OpenSSL's libcrypto
// computes it (SHA-NI / AVX2 code paths: a multi-GB checkpoint hashes at disk speed).
#pragma once
#include <array>
#include <memory>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace sd::infer {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards
  std::string hex_digest();          // 64 lower-case hex digits

 private:
  std::unique_ptr<evp_md_ctx_st, void (*)(evp_md_ctx_st*)> ctx_;
};

std::string sha256_hex(std::string_view data);
// The files' bytes one after another (read in 4 MiB pieces); sd::Error naming an unreadable file.
std::string sha256_files_hex(const std::vector<std::string>& paths);

}  // namespace sd::infer
