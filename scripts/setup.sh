#!/bin/bash
# setup.sh: installs what widen needs to build, test and benchmark on Debian 12 (as root), including
# the aarch64 cross compiler and qemu for the NEON kernels, then builds the given preset (default:
# release). Packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(gcc g++ make cmake ninja-build pkg-config
          libxxhash-dev xxhash libjansson-dev libdeflate-dev zlib1g-dev libsleef-dev libbenchmark-dev libxnnpack-dev libpthreadpool-dev
          python3 python3-numpy python3-xxhash python3-pytest python3-torch python3-torchvision time help2man man-db
          python3-venv python3-pip python3-setuptools python3-wheel xfsprogs strace
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
          clang-14 libfuzzer-14-dev libclang-rt-14-dev)
# arm64 libraries for the cross-built library and CLI (multiarch; they bring libc6:arm64, which qemu runs them on)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
packages+=(libsleef-dev:arm64 libjansson-dev:arm64 libdeflate-dev:arm64 zlib1g-dev:arm64 libxxhash-dev:arm64)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

preset=${1:-release}
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
