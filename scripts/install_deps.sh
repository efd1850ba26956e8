#!/usr/bin/env bash
# Installs every build and test dependency of sd from Debian packages (bookworm or newer).
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config   # C++20 compiler and build tools
  libgtest-dev googletest libbenchmark-dev              # tests and CPU benchmarks
  nlohmann-json3-dev                                    # JSON: safetensors headers, configs
  libstb-dev                                            # image decode/encode (PNG/JPEG)
  libopenblas-dev libopenblas0-openmp                   # CPU GEMM (the OpenMP build: it shares sd's threads)
  libdnnl-dev                                           # oneDNN: faster f32 GEMM, bf16 matmul on AVX512-BF16/AMX
  libomp-dev                                            # OpenMP runtime headers
  libopenmpi-dev openmpi-bin                            # multi-process training
  libutf8proc-dev                                       # Unicode categories for the CLIP tokenizer
  zlib1g-dev                                            # gzip'd CLIP merges (bpe_simple_vocab_16e6.txt.gz)
  libsnappy-dev libzstd-dev                             # Snappy/Zstandard Parquet pages (HF datasets)
  libpng-dev libjpeg-dev libwebp-dev libgif-dev         # image decoding (fuzzed upstream; stb only for BMP)
  libcli11-dev libtomlplusplus-dev                      # the tools' command line (CLI11) and --config files (toml++)
  pkgconf                                               # scripts/package_check.sh builds an example with sd.pc
  libssl-dev                                            # SHA-256 (model hashes, cache keys): OpenSSL's libcrypto
  clang                                                 # sanitizer + libFuzzer build of the file readers (make fuzz)
)
# Packaged apart on some releases only (Debian bookworm splits clang's sanitizer and libFuzzer
# runtimes out of libclang-common-*-dev): installed where the release has it.
OPTIONAL=(libclang-rt-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
optional_missing=()
for p in "${OPTIONAL[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || optional_missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#optional_missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  for p in "${optional_missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then missing+=("$p"); fi
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all packages present"
fi
