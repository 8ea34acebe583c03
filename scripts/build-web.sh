#!/usr/bin/env bash
# Builds the browser app: dreamdist (lib) for wasm32, then wasm-bindgen (--target web) into pkg/.
# Output: pkg/dreamdist.js, pkg/dreamdist_bg.wasm (+ .gz for the server). Cached target dir outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/wasm-env.sh
source scripts/wasm-env.sh
profile=release
CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo build -q --lib --release "${WASM_CARGO_FLAGS[@]}"
wasm="$WASM_TARGET_DIR/wasm32-unknown-unknown/$profile/dreamdist.wasm"
mkdir -p pkg
wasm-bindgen --target web --out-dir pkg --remove-name-section --remove-producers-section "$wasm"
gzip -6 -k -f pkg/dreamdist_bg.wasm
echo "built pkg/: $(stat -c %s pkg/dreamdist_bg.wasm) bytes wasm, $(stat -c %s pkg/dreamdist_bg.wasm.gz) bytes gzipped" >&2
