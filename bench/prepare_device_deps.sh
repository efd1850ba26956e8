#!/usr/bin/env bash
# Copies the header-only and source dependencies that the lent GPU machine lacks (it has
# CUDA, CMake and a compiler, but no Debian -dev packages) into .deps/, which is ignored by
# git and carried to the device with the working tree. Run here, before bench/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .deps && mkdir -p .deps/include
cp -r /usr/include/nlohmann .deps/include/
cp -r /usr/include/stb .deps/include/
cp -r /usr/include/CLI /usr/include/toml++ .deps/include/  # CLI11 and toml++ (header-only): the tools' flags
cp -r /usr/src/googletest/googletest .deps/googletest
# The tokenizer's libraries (shared objects: the build tree's RPATH finds them there).
mkdir -p .deps/lib
cp /usr/include/utf8proc.h /usr/include/zlib.h /usr/include/zconf.h .deps/include/
cp -P /usr/lib/x86_64-linux-gnu/libutf8proc.so* .deps/lib/
# The trainer's dataset readers: Snappy/Zstandard Parquet pages, WebP images.
cp /usr/include/snappy.h /usr/include/snappy-stubs-public.h /usr/include/zstd.h /usr/include/zstd_errors.h .deps/include/
cp -r /usr/include/webp .deps/include/
cp -P /usr/lib/x86_64-linux-gnu/libsnappy.so* /usr/lib/x86_64-linux-gnu/libzstd.so* /usr/lib/x86_64-linux-gnu/libwebp.so* .deps/lib/
# Image decoders (infer/image_decode.cpp): libpng, libjpeg-turbo, giflib.
cp /usr/include/libpng16/png.h /usr/include/libpng16/pngconf.h /usr/include/libpng16/pnglibconf.h .deps/include/
cp /usr/include/jpeglib.h /usr/include/jmorecfg.h /usr/include/jerror.h /usr/include/x86_64-linux-gnu/jconfig.h \
   /usr/include/gif_lib.h .deps/include/
cp -P /usr/lib/x86_64-linux-gnu/libpng16.so* /usr/lib/x86_64-linux-gnu/libpng.so /usr/lib/x86_64-linux-gnu/libjpeg.so* \
   /usr/lib/x86_64-linux-gnu/libgif.so* .deps/lib/
# OpenSSL's libcrypto (SHA-256): headers here, the library that machine's Python also uses.
cp -r /usr/include/openssl .deps/include/
cp -r /usr/include/x86_64-linux-gnu/openssl/* .deps/include/openssl/
cp -P /usr/lib/x86_64-linux-gnu/libcrypto.so* .deps/lib/
# zlib: that machine has the runtime library; a link lets the build find it without the -dev package.
ln -s /usr/lib/x86_64-linux-gnu/libz.so.1 .deps/lib/libz.so
du -sh .deps
