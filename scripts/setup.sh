#!/usr/bin/env bash
# One-time (idempotent, quiet when done) setup of a Debian machine for building and testing dreamdist.
#
#   scripts/setup.sh [toolchain|tools]     (no argument: both, in that order)
#
# toolchain — what the compiles need: the wasm32 target (rustup), or, only when rustup cannot
#             install it, Debian's rustc-web toolchain (see scripts/wasm-env.sh). Seconds.
# tools     — what only the later steps need: Debian packages Chromium (e2e tests drive it
#             headless with WebGPU on SwiftShader) and mesa-vulkan-drivers (lavapipe: native
#             wgpu on the CPU, for the GPU-path tests); wasm-bindgen-cli at exactly the version
#             in Cargo.lock (after the wasm compile); npm packages for the e2e tests
#             (playwright-core, driving the system Chromium). Minutes on a new machine, mostly
#             downloads and one small compile: scripts/test.sh runs this part beside the builds.
set -euo pipefail
part="${1:-all}"
case "$part" in
  all | toolchain | tools) ;;
  *) echo "usage: scripts/setup.sh [toolchain|tools]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
DREAMDIST_CACHE="${DREAMDIST_CACHE:-$HOME/.cache/dreamdist}"
mkdir -p "$DREAMDIST_CACHE"
log() { echo "setup: $*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2; exit 1; }

setup_toolchain() {
# The compiles download crates (HTTPS) from the start.
apt_install ca-certificates

# --- wasm32 toolchain: the normal path first, then Debian's rustc-web -----------------------
mode_file="$DREAMDIST_CACHE/wasm-toolchain"
mode=$(cat "$mode_file" 2>/dev/null || true)
if [ -z "$mode" ]; then
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    mode=rustup
  elif command -v rustup >/dev/null && timeout 120 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    mode=rustup
  else
    log "rustup cannot install wasm32-unknown-unknown here; using Debian's rustc-web with -Zbuild-std"
    mode=debian-rustc-web
  fi
fi
if [ "$mode" = debian-rustc-web ]; then
  apt_install rustc-web rust-web-src libstd-rust-web-dev rust-web-llvm libllvm22
  /usr/bin/rustc --print target-list | grep -qx wasm32-unknown-unknown \
    || { echo "setup: /usr/bin/rustc does not know wasm32-unknown-unknown" >&2; exit 1; }
fi
echo "$mode" > "$mode_file"
}

setup_tools() {
apt_install chromium mesa-vulkan-drivers

# --- wasm-bindgen-cli, exactly the lockfile's version -----------------------------------------
wb_version=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
  log "installing wasm-bindgen-cli $wb_version (a few minutes)"
  # Not --locked: the crate's pinned lockfile names a webpki-roots version missing from the registry.
  # Its own target dir: cargo install honours CARGO_TARGET_DIR, and sharing the project's would
  # hold the project's builds (scripts/test.sh runs this beside them) on its lock.
  cargo install -q wasm-bindgen-cli --version "$wb_version" --force --target-dir "$DREAMDIST_CACHE/target-tools"
fi

# --- npm packages for the e2e tests ------------------------------------------------------------
if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  log "installing npm packages for the e2e tests"
  (cd tests/e2e && npm ci --silent --no-audit --no-fund)
fi
}

case "$part" in
  toolchain) setup_toolchain ;;
  tools) setup_tools ;;
  all) setup_toolchain; setup_tools ;;
esac
