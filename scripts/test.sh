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

# The two runs go side by side (on two cores or more they overlap; each has its own temporary
# folder), each into its own log, shown once both are done; the script fails if either does.
echo "== test suite: release build, and ASan + UBSan build, side by side"
asan=$(gcc -print-file-name=libasan.so)
WIDEN_BUILD=build/release /usr/bin/python3 -m pytest -q -p no:cacheprovider --basetemp=/tmp/widen-tests-release tests >build/test-release.log 2>&1 &
release=$!
WIDEN_BUILD=build/asan WIDEN_SANITIZE=1 LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider --basetemp=/tmp/widen-tests-asan tests >build/test-asan.log 2>&1 &
sanitized=$!
status=0
wait $release || status=1
wait $sanitized || status=1
echo "== test suite (release build)"
cat build/test-release.log
echo "== test suite (ASan + UBSan build)"
cat build/test-asan.log
exit $status
