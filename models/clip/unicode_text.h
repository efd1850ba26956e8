// Unicode helpers for the CLIP tokenizer: strict UTF-8 decoding, character classes as the
// reference tokenizers see them, NFC and lower-casing with Python's str.lower() semantics.
// Character data comes from utf8proc (Unicode 15). The reference (Python 3.11's unicodedata,
// Unicode 14) agrees with it on every character assigned in Unicode 14; characters assigned
// later are unassigned (category Cn) for Python, so results for them may differ.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace sd::text {

// Decodes UTF-8; invalid input (bad lead/continuation byte, overlong form, surrogate, > U+10FFFF,
// truncated sequence) throws sd::Error "<what>: invalid UTF-8 byte 0xNN at offset K".
std::u32string decode_utf8(std::string_view s, const char* what);
// Python's bytes.decode("utf-8", errors="replace"): each maximal invalid subpart becomes U+FFFD.
std::string decode_utf8_lenient(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(std::u32string_view s);

bool is_letter(char32_t c);       // general category L*  (regex \p{L})
bool is_number(char32_t c);       // general category N*  (regex \p{N})
bool is_other(char32_t c);        // general category C*  (Cc Cf Cs Co Cn)
bool is_space_sep(char32_t c);    // general category Zs
bool is_white_space(char32_t c);  // Unicode White_Space: what \s means in `regex` and Oniguruma
bool is_python_space(char32_t c); // Python str.isspace(): White_Space plus U+001C..U+001F
// BERT BasicTokenizer's CJK ideograph ranges (Han only: not kana, not hangul).
bool is_cjk_ideograph(char32_t c);

// Canonical composition (NFC).
std::u32string nfc(std::u32string_view s);
// Full lower-case mapping of one character, appended to out (U+0130 becomes "i\u0307"),
// without context: what Rust's char::to_lowercase (and so HF tokenizers' Lowercase) does.
void append_lower(std::u32string& out, char32_t c);
// Python's str.lower(): full mapping plus the Final_Sigma rule (capital sigma after a cased
// letter and not before one, skipping case-ignorable characters, becomes final sigma U+03C2).
std::u32string python_lower(std::u32string_view s);
// Python's str.strip(): removes is_python_space characters at both ends (input valid UTF-8).
std::string python_strip(std::string_view s);

}  // namespace sd::text
