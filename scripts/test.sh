#!/bin/bash
# test.sh: the README's second command (and CI's). Installs, builds, and runs the whole test suite:
# once on the release build, once on the AddressSanitizer + UndefinedBehaviorSanitizer build; the
# NEON kernels are cross-built (build/aarch64) and checked under qemu-aarch64 by both runs; the
# libFuzzer targets (build/fuzz, clang) replay their regressions and fuzz for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh release
for preset in asan aarch64 fuzz; do
    cmake --preset $preset >/dev/null
    cmake --build --preset $preset
done

echo "== test suite (release build)"
WIDEN_BUILD=build/release /usr/bin/python3 -m pytest -q tests

echo "== test suite (ASan + UBSan build)"
asan=$(gcc -print-file-name=libasan.so)
WIDEN_BUILD=build/asan WIDEN_SANITIZE=1 LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 \
    /usr/bin/python3 -m pytest -q tests
