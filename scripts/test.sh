#!/bin/bash
# test.sh: the README's second command (and CI's). Installs, builds, and runs the whole test suite:
# once on the release build, once on the AddressSanitizer + UndefinedBehaviorSanitizer build, and its
# end-to-end tests once more on the arm64 CLI under qemu-aarch64 (the whole project is cross-built,
# build/aarch64; its NEON kernels are also checked under qemu by the release run); the
# libFuzzer targets (build/fuzz, clang) replay their regressions and fuzz for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh release
for preset in asan aarch64 fuzz; do
    cmake --preset $preset >/dev/null
    cmake --build --preset $preset
done

# Three runs, each into its own log with its own temporary folder, two at a time (on two cores or more
# they overlap): the release build's, then the end-to-end tests driving the arm64 CLI under qemu-aarch64
# (WIDEN=build/aarch64/widen-qemu; the tests marked host_only, which need this machine's own library or
# tools, are skipped there, and the files made are smaller: tests/reference.py); beside both, the ASan +
# UBSan build's. The logs are shown once all are done, each with its slowest tests; the script fails if
# any run does.
suite() {  # suite NAME [VAR=VALUE...]: the whole suite into build/test-NAME.log
    local name=$1
    shift
    env "$@" /usr/bin/python3 -m pytest -q -p no:cacheprovider --durations=15 --basetemp=/tmp/widen-tests-$name \
        tests >build/test-$name.log 2>&1
}
echo "== test suite: release build then aarch64 CLI under qemu, beside ASan + UBSan build"
asan=$(gcc -print-file-name=libasan.so)
(
    status=0
    suite release WIDEN_BUILD=build/release || status=1
    suite aarch64 WIDEN="$PWD/build/aarch64/widen-qemu" WIDEN_BUILD=build/release || status=1
    exit $status
) &
native=$!
suite asan WIDEN_BUILD=build/asan WIDEN_SANITIZE=1 LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0 &
sanitized=$!
status=0
wait $native || status=1
wait $sanitized || status=1
echo "== test suite (release build)"
cat build/test-release.log
echo "== test suite (aarch64 CLI under qemu-aarch64: end to end)"
cat build/test-aarch64.log
echo "== test suite (ASan + UBSan build)"
cat build/test-asan.log
exit $status
