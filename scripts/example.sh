#!/bin/bash
# example.sh: the README's first command. Installs, builds, then widens the classic small RGB model
# (conv1 3->10, conv2 10->5, fc 125->1) to 4 input channels and verifies the result.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh release >/dev/null

widen=build/release/widen
in=examples/classic_rgb.safetensors
mkdir -p build/example
out=build/example/classic_rgba.safetensors
manifest=build/example/classic_rgba.manifest.json

echo "== the input"
$widen inspect "$in"
echo
echo "== widen apply $in -o $out --to 4 --manifest $manifest --force"
$widen apply "$in" -o "$out" --to 4 --manifest "$manifest" --force
$widen inspect "$out" --hash
echo
echo "== widen verify"
$widen verify "$in" "$out" --manifest "$manifest"
echo
echo "== the model, run in NumPy: RGB input on the old weights vs RGB + any 4th channel on the new"
/usr/bin/python3 examples/check_classic.py "$in" "$out"
