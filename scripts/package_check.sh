#!/usr/bin/env bash
# The installed package, as another project uses it: `cmake --install` of the build into a temporary
# prefix, then tests/package/text_embedding.cpp built against it twice -- with CMake
# (find_package(sd), target sd::sd) and with pkg-config (sd.pc) -- and run: both must print the CLIP
# ids of the prompt and the same text-encoder output. CI runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$BUILD" --prefix "$work/prefix" >/dev/null
cmake -S tests/package -B "$work/with-cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/with-cmake" >/dev/null
pc_dir=$(dirname "$(find "$work/prefix" -name sd.pc | head -1)")
# shellcheck disable=SC2046
c++ -O1 tests/package/text_embedding.cpp $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs sd) -o "$work/with-pkg-config"
# The installed data: the CLIP vocabulary and the built-in model under share/sd.
export SD_DATA_DIR="$work/prefix/share/sd"
a=$("$work/with-cmake/text_embedding" "a red circle")
b=$("$work/with-pkg-config" "a red circle")
echo "$a"
# CLIP's ids of "a red circle" (transformers' CLIPTokenizer): start, a, red, circle, end.
expected_ids="ids: 49406 320 736 7117 49407"
if [ "$(echo "$a" | head -1)" != "$expected_ids" ]; then
  echo "package_check: expected '$expected_ids'" >&2
  exit 1
fi
if [ "$a" != "$b" ]; then
  echo "package_check: the pkg-config build printed something else:" >&2
  echo "$b" >&2
  exit 1
fi
echo "package_check: OK (find_package(sd) and pkg-config builds agree)"
