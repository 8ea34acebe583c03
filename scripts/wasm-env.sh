# shellcheck shell=bash
# Sourced by the build scripts: exports what cargo needs to build dreamdist for wasm32.
#
# Normal path: a rustup toolchain with the wasm32-unknown-unknown target installed.
# Fallback (machines where rustup cannot download the target): Debian's `rustc-web`
# (1.96, knows wasm32) + `rust-web-src`, building std with -Zbuild-std, linked by rustup's rust-lld.
# `scripts/setup.sh` records which one works in $DREAMDIST_CACHE/wasm-toolchain.

export DREAMDIST_CACHE="${DREAMDIST_CACHE:-$HOME/.cache/dreamdist}"
export WASM_TARGET_DIR="${WASM_TARGET_DIR:-$DREAMDIST_CACHE/target-wasm}"
WASM_CARGO_FLAGS=(--target wasm32-unknown-unknown)

mode=$(cat "$DREAMDIST_CACHE/wasm-toolchain" 2>/dev/null || echo unknown)
if [ "$mode" = "debian-rustc-web" ]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  sysroot=$(rustc --print sysroot)
  export RUSTC=/usr/bin/rustc
  export RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$sysroot/lib/rustlib/$host/bin/rust-lld"
  WASM_CARGO_FLAGS+=(-Zbuild-std=std,panic_abort)
elif [ "$mode" != "rustup" ]; then
  echo "wasm toolchain not set up: run scripts/setup.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
# WebAssembly SIMD (every Chrome/Edge since 91): burn's CPU backend (the page's CPU compute
# choice) uses it through gemm's and macerator's simd128 kernels.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS:--C target-feature=+simd128}"
export WASM_CARGO_FLAGS
