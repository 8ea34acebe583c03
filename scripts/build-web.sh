#!/usr/bin/env bash
# Builds the browser app: dreamdist (lib) for wasm32, then wasm-bindgen (--target web) into pkg/,
# optionally wasm-opt, then gzip (the server sends the .gz). Cached target dir outside the clone.
#
#   DREAMDIST_WASM_PROFILE   cargo profile: `web` (release + fat LTO, one codegen unit; Cargo.toml:
#                            the module users get, e.g. from `trunk build`) or `release` (builds
#                            faster, larger module). Default: `web`, except under CI (CI=true),
#                            where `release` keeps the cold build within CI's time budget.
#   DREAMDIST_WASM_OPT       1: run wasm-opt (npm `binaryen`, from tests/e2e/node_modules or PATH;
#                            Debian's binaryen 108 breaks the module) with DREAMDIST_WASM_OPT_FLAGS
#                            (default -O2); 0 (default): skip it (it takes minutes here and
#                            gains little once LTO ran: see pkg/build-info.json and the README)
#
# `scripts/build-web.sh --compile-only` stops after the cargo build (no wasm-bindgen needed yet):
# scripts/test.sh starts it early and finishes the build later (the cargo step is then a no-op).
#
# Output: pkg/dreamdist.js, pkg/dreamdist_bg.wasm (+ .gz), pkg/build-info.json (sizes, times).
# When the native CLI is built and the demo model is not bundled, the tiny fixture model is
# converted into pkg/models/tiny/ (the page's fallback model; www/config.js).
set -euo pipefail
cd "$(dirname "$0")/.."
compile_only=false
case "${1:-}" in
  "") ;;
  --compile-only) compile_only=true ;;
  *) echo "usage: scripts/build-web.sh [--compile-only]" >&2; exit 2 ;;
esac
# shellcheck source=scripts/wasm-env.sh
source scripts/wasm-env.sh
default_profile=web
[ "${CI:-}" = true ] && default_profile=release
profile="${DREAMDIST_WASM_PROFILE:-$default_profile}"
t0=$SECONDS
CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo build -q --lib --profile "$profile" "${WASM_CARGO_FLAGS[@]}"
cargo_s=$((SECONDS - t0))
# The cargo time of an earlier --compile-only run counts as this build's (build-info.json).
early="$WASM_TARGET_DIR/compile-only-seconds-$profile"
if [ "$compile_only" = true ]; then
  echo "$cargo_s" > "$early"
  echo "build-web: compiled the wasm module ($profile profile, cargo ${cargo_s} s); wasm-bindgen not run (--compile-only)" >&2
  exit 0
fi
if [ -f "$early" ]; then
  cargo_s=$((cargo_s + $(cat "$early")))
  rm -f "$early"
fi
wasm="$WASM_TARGET_DIR/wasm32-unknown-unknown/$profile/dreamdist.wasm"
mkdir -p pkg
wasm-bindgen --target web --out-dir pkg --remove-name-section --remove-producers-section "$wasm"
bindgen_bytes=$(stat -c %s pkg/dreamdist_bg.wasm)

opt_s=0
opt_used=false
if [ "${DREAMDIST_WASM_OPT:-0}" = 1 ]; then
  wasm_opt=""
  for c in tests/e2e/node_modules/.bin/wasm-opt "$(command -v wasm-opt || true)"; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" --version 2>/dev/null | grep -qv "version 10[0-9]"; then wasm_opt="$c"; break; fi
  done
  if [ -z "$wasm_opt" ]; then
    echo "build-web: DREAMDIST_WASM_OPT=1 but no usable wasm-opt (npm install binaryen in tests/e2e)" >&2
    exit 1
  fi
  t1=$SECONDS
  # wasm-bindgen's output uses these features; wasm-opt must be told to keep them.
  "$wasm_opt" ${DREAMDIST_WASM_OPT_FLAGS:--O2} --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    pkg/dreamdist_bg.wasm -o pkg/dreamdist_bg.opt.wasm
  mv pkg/dreamdist_bg.opt.wasm pkg/dreamdist_bg.wasm
  opt_s=$((SECONDS - t1))
  opt_used=true
fi
gzip -9 -k -f pkg/dreamdist_bg.wasm
raw=$(stat -c %s pkg/dreamdist_bg.wasm)
gz=$(stat -c %s pkg/dreamdist_bg.wasm.gz)
cat > pkg/build-info.json <<JSON
{"profile": "$profile", "cargoSeconds": $cargo_s, "wasmBindgenBytes": $bindgen_bytes, "wasmOpt": $opt_used, "wasmOptSeconds": $opt_s, "wasmBytes": $raw, "gzipBytes": $gz}
JSON
echo "built pkg/ ($profile profile, cargo ${cargo_s} s, wasm-opt: $opt_used ${opt_s} s): $raw bytes wasm, $gz bytes gzipped" >&2

# The page's fallback model while assets/demo/ is not bundled (seconds; needs the native CLI).
bin="${DREAMDIST_BIN:-${CARGO_TARGET_DIR:-$DREAMDIST_CACHE/target}/release/dreamdist}"
if [ ! -f assets/demo/manifest.json ] && [ ! -f pkg/models/tiny/manifest.json ] && [ -x "$bin" ]; then
  "$bin" convert --from tests/fixtures/tiny --model tiny --quant q8 --out pkg/models/tiny >/dev/null 2>&1
  echo "build-web: converted the tiny fixture model into pkg/models/tiny/ (no demo model bundled)" >&2
fi
