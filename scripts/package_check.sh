#!/usr/bin/env bash
# The installed package, as another project uses it: `cmake --install` of the build into a temporary
# prefix, then tests/package/text_embedding.cpp built against it with CMake (find_package(sd): targets
# sd::sd and sd::sd_cpu) and with pkg-config (sd, sd-cpu), and run: each must print the CLIP ids of the
# prompt and the same text-encoder output, and the sd_cpu builds must need no CUDA library. CI runs it
# after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$BUILD" --prefix "$work/prefix" >/dev/null
cmake -S tests/package -B "$work/with-cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/with-cmake" >/dev/null
pc_dir=$(dirname "$(find "$work/prefix" -name sd.pc | head -1)")
for pc in sd sd-cpu; do
  # shellcheck disable=SC2046
  c++ -O1 tests/package/text_embedding.cpp $(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs $pc) -o "$work/pkg-config-$pc"
done
# The installed data: the CLIP vocabulary and the built-in model under share/sd.
export SD_DATA_DIR="$work/prefix/share/sd"
a=$("$work/with-cmake/text_embedding" "a red circle")
echo "$a"
# CLIP's ids of "a red circle" (transformers' CLIPTokenizer): start, a, red, circle, end.
expected_ids="ids: 49406 320 736 7117 49407"
if [ "$(echo "$a" | head -1)" != "$expected_ids" ]; then
  echo "package_check: expected '$expected_ids'" >&2
  exit 1
fi
for other in with-cmake/text_embedding_cpu pkg-config-sd pkg-config-sd-cpu; do
  b=$("$work/$other" "a red circle")
  if [ "$a" != "$b" ]; then
    echo "package_check: $other printed something else:" >&2
    echo "$b" >&2
    exit 1
  fi
done
# The CPU builds load no CUDA library (a CUDA build's sd::sd does, when it has the backend).
for cpu in with-cmake/text_embedding_cpu pkg-config-sd-cpu; do
  if readelf -d "$work/$cpu" | grep -E 'NEEDED.*(cudart|cublas|cudnn|nccl|libcuda)'; then
    echo "package_check: $cpu needs a CUDA library" >&2
    exit 1
  fi
done
echo "package_check: OK (sd::sd, sd::sd_cpu and pkg-config sd, sd-cpu builds agree; the CPU ones need no CUDA library)"
