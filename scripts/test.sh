#!/bin/bash
# test.sh: the README's second command (and CI's). Installs, builds, and runs the whole test suite:
# once on the release build, once on the AddressSanitizer + UndefinedBehaviorSanitizer build.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh release
cmake --preset asan >/dev/null
cmake --build --preset asan

echo "== test suite (release build)"
WIDEN_BUILD=build/release /usr/bin/python3 -m pytest -q tests

echo "== test suite (ASan + UBSan build)"
asan=$(gcc -print-file-name=libasan.so)
WIDEN_BUILD=build/asan WIDEN_SANITIZE=1 LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 \
    /usr/bin/python3 -m pytest -q tests
