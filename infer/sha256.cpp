#include "infer/sha256.h"

#include <openssl/evp.h>

#include <cstdio>

#include "runtime/error.h"

namespace sd::infer {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
  SD_CHECK(ctx_ && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1, "sha256: OpenSSL could not start a digest");
}

void Sha256::update(const void* data, size_t n) {
  SD_CHECK(EVP_DigestUpdate(ctx_.get(), data, n) == 1, "sha256: OpenSSL digest update failed");
}

std::array<uint8_t, 32> Sha256::digest() {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  SD_CHECK(EVP_DigestFinal_ex(ctx_.get(), out.data(), &len) == 1 && len == out.size(), "sha256: OpenSSL digest failed");
  return out;
}

std::string Sha256::hex_digest() {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : digest()) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.hex_digest();
}

std::string sha256_files_hex(const std::vector<std::string>& paths) {
  Sha256 h;
  std::vector<char> buf(size_t(4) << 20);
  for (const std::string& path : paths) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    SD_CHECK(f != nullptr, "sha256: cannot open '", path, "'");
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) h.update(buf.data(), n);
    SD_CHECK(!std::ferror(f.get()), "sha256: error reading '", path, "'");
  }
  return h.hex_digest();
}

}  // namespace sd::infer
