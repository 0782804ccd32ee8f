#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (parallel slots, continuous batching) once, from the llama.cpp
# source that the pinned llama-cpp-python sdist vendors, so `bench generate` and `bench serve` can
# race the real server on the same GGUF. Cached beside the llama-cpp-python wheel; prints the path.
# AMX code is left out as for the wheel (ggml's AMX matmul segfaults on these machines).
set -euo pipefail
VERSION=0.3.36
PIP=${PIP:-.venv/bin/pip}
CACHE=${WHEELHOUSE:-$HOME/.cache/personalm/wheels-noamx}
OUT=$CACHE/llama-server-$VERSION
BIN=$OUT/llama-server
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "building llama-server from llama-cpp-python==$VERSION's vendored llama.cpp (about 10 minutes on 2 cores)" >&2
"$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
NO_AMX=""
if grep -qm1 amx_tile /proc/cpuinfo 2>/dev/null; then NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >&2
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT"
cp "$WORK/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "$BIN"
