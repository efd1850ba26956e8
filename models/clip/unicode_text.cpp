#include "models/clip/unicode_text.h"

#include <utf8proc.h>

#include <cstdio>
#include <vector>

#include "runtime/error.h"

namespace sd::text {
namespace {

utf8proc_category_t category(char32_t c) { return utf8proc_category(utf8proc_int32_t(c)); }

[[noreturn]] void bad_utf8(const char* what, std::string_view s, size_t offset) {
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", unsigned(static_cast<unsigned char>(s[offset])));
  SD_FAIL(what, ": invalid UTF-8 byte ", hex, " at offset ", offset);
}

// Case_Ignorable (Unicode DerivedCoreProperties): these categories plus the Word_Break classes
// MidLetter, MidNumLet and Single_Quote. Checked against Python's str.lower() on every code
// point of Unicode 14: exact.
bool case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4:
    case 0x2018: case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52:
    case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

// Cased = Lu/Ll/Lt plus Other_Lowercase/Other_Uppercase. Only characters that are not case
// ignorable matter for Final_Sigma; those outside Lu/Ll/Lt are the ordinal indicators, Roman
// numerals and (negative) circled/squared Latin letters.
bool cased(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
      return true;
    default:
      break;
  }
  return c == 0xAA || c == 0xBA || (c >= 0x2160 && c <= 0x217F) || (c >= 0x24B6 && c <= 0x24E9) ||
         (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
         (c >= 0x1F170 && c <= 0x1F189);
}

// CPython's rule for U+03A3 at position i (Objects/unicodeobject.c, handle_capital_sigma).
bool final_sigma(std::u32string_view s, size_t i) {
  size_t j = i;
  while (j > 0 && case_ignorable(s[j - 1])) --j;
  if (j == 0 || !cased(s[j - 1])) return false;
  size_t k = i + 1;
  while (k < s.size() && case_ignorable(s[k])) ++k;
  return k == s.size() || !cased(s[k]);
}

}  // namespace

std::u32string decode_utf8(std::string_view s, const char* what) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int n;
    char32_t cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 1, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 2, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 3, cp = b0 & 0x07, min = 0x10000;
    } else {
      bad_utf8(what, s, i);  // continuation byte as lead, C0/C1 (always overlong), F5..FF
    }
    for (int k = 1; k <= n; ++k) {
      if (i + size_t(k) >= s.size()) bad_utf8(what, s, i);  // truncated: name the lead byte
      const unsigned char b = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((b & 0xC0) != 0x80) bad_utf8(what, s, i);  // like Python: the offset of the sequence
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) bad_utf8(what, s, i);
    out.push_back(cp);
    i += size_t(n) + 1;
  }
  return out;
}

std::string decode_utf8_lenient(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(char(b0));
      ++i;
      continue;
    }
    // Allowed range of the second byte narrows for E0/ED/F0/F4 (no overlongs, surrogates or
    // > U+10FFFF), which is what makes a prefix "maximal" in the Unicode/Python sense.
    int n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) n = 1;
    else if (b0 >= 0xE0 && b0 <= 0xEF) n = 2, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    else if (b0 >= 0xF0 && b0 <= 0xF4) n = 3, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    int k = 1;
    for (; k <= n && i + size_t(k) < s.size(); ++k) {
      const unsigned char b = static_cast<unsigned char>(s[i + size_t(k)]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) break;
    }
    if (n > 0 && k == n + 1) {
      out.append(s.substr(i, size_t(n) + 1));
      i += size_t(n) + 1;
    } else {
      append_utf8(out, 0xFFFD);
      i += size_t(k);  // the lead byte plus the valid continuation bytes seen
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

bool is_letter(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
bool is_number(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}
bool is_other(char32_t c) {
  const auto k = category(c);
  return k == UTF8PROC_CATEGORY_CN || k >= UTF8PROC_CATEGORY_CC;
}
bool is_space_sep(char32_t c) { return category(c) == UTF8PROC_CATEGORY_ZS; }

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
bool is_python_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::u32string nfc(std::u32string_view s) {
  // Below U+0300 every character is its own NFC and nothing composes with it: skip utf8proc.
  bool simple = true;
  for (char32_t c : s) simple = simple && c < 0x300;
  if (simple) return std::u32string(s);
  const std::string utf8 = encode_utf8(s);
  const auto opts = utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  const auto* src = reinterpret_cast<const utf8proc_uint8_t*>(utf8.data());
  const auto len = utf8proc_ssize_t(utf8.size());
  utf8proc_ssize_t n = utf8proc_decompose(src, len, nullptr, 0, opts);
  SD_CHECK(n >= 0, "nfc: ", utf8proc_errmsg(n));
  std::vector<utf8proc_int32_t> buf(size_t(n) + 1);
  n = utf8proc_decompose(src, len, buf.data(), n, opts);
  SD_CHECK(n >= 0, "nfc: ", utf8proc_errmsg(n));
  n = utf8proc_normalize_utf32(buf.data(), n, opts);
  SD_CHECK(n >= 0, "nfc: ", utf8proc_errmsg(n));
  return std::u32string(buf.begin(), buf.begin() + n);
}

void append_lower(std::u32string& out, char32_t c) {
  if (c == 0x130) {  // the one unconditional multi-character lower-case mapping (SpecialCasing.txt)
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  }
  out.push_back(char32_t(utf8proc_tolower(utf8proc_int32_t(c))));
}

std::u32string python_lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x3A3)
      out.push_back(final_sigma(s, i) ? 0x3C2 : 0x3C3);
    else
      append_lower(out, s[i]);
  }
  return out;
}

std::string python_strip(std::string_view s) {
  const std::u32string u = decode_utf8(s, "python_strip");
  size_t b = 0, e = u.size();
  while (b < e && is_python_space(u[b])) ++b;
  while (e > b && is_python_space(u[e - 1])) --e;
  return encode_utf8(std::u32string_view(u).substr(b, e - b));
}

}  // namespace sd::text
