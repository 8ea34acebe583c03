#!/usr/bin/env bash
# The whole test suite, stopping at the first failure:
#   setup (toolchain) → cargo fmt --check → clippy (-D warnings) → cargo test (build) →
#   setup (tools) joined → cargo test (run) → doctests → the release CLI → web build (pkg/)
#   joined and finished → browser e2e tests (node --test, two files at a time).
# Beside the native stages run, from the start: the tools part of the setup (Debian packages,
# wasm-bindgen-cli, npm packages: downloads and one small compile, needed only by the test runs
# and the web build's last step) and the wasm compile (its own target dir). The README's Tests
# section has the cold and warm times of a 2-core machine.
# Build caches live outside the clone: CARGO_TARGET_DIR (default ~/.cache/dreamdist/target) and
# the wasm target dir of scripts/wasm-env.sh. A timing summary per stage is printed at the end:
# the "joined" stages show how long the native stages still had to wait for a background job,
# and each background job's own duration is listed after them.
set -euo pipefail
cd "$(dirname "$0")/.."
export DREAMDIST_CACHE="${DREAMDIST_CACHE:-$HOME/.cache/dreamdist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DREAMDIST_CACHE/target}"
export DREAMDIST_BIN="${DREAMDIST_BIN:-$CARGO_TARGET_DIR/release/dreamdist}"

if [ -n "${DREAMDIST_SKIP_WGPU:-}" ]; then
  echo "test: DREAMDIST_SKIP_WGPU is no longer honoured: the GPU-path tests always run (lavapipe: scripts/setup.sh installs it)" >&2
  exit 2
fi

names=()
secs=()
current=""
started=$(date +%s%N)

summary() {
  local rc=${1:-$?}
  local i
  echo >&2
  echo "test: ---- summary ----" >&2
  for i in "${!names[@]}"; do
    printf 'test: %-40s %8s s  ok\n' "${names[$i]}" "${secs[$i]}" >&2
  done
  if [ -n "$current" ]; then
    printf 'test: %-40s %8s s  FAILED (exit %d)\n' "$current" "$(elapsed "$stage_start")" "$rc" >&2
  fi
  for i in "${!bg_names[@]}"; do
    printf 'test: %-40s %8s s  (in the background)\n' "${bg_names[$i]}" "${bg_secs[$i]}" >&2
  done
  printf 'test: %-40s %8s s  %s\n' "total" "$(elapsed "$started")" "$([ "$rc" = 0 ] && echo PASSED || echo FAILED)" >&2
}

elapsed() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

stage() {
  [ "${#bg_pids[@]}" = 0 ] || reap_bg
  current="$1"
  shift
  echo "test: ==> $current" >&2
  stage_start=$(date +%s%N)
  "$@"
  names+=("$current")
  secs+=("$(elapsed "$stage_start")")
  current=""
}

# --- background jobs: started now, joined by the stage that needs them --------------------------
bg_pids=()
bg_names=()
bg_secs=()
bg_logs=()
bg_done=()
export -f elapsed
# Runs "$@" in the background, in a process group of its own (so that a failed run can stop all
# of it: apt, cargo, rustc), with its output in a log; $bg_last is its index.
background() {
  local name="$1"
  shift
  local logf
  logf="$(mktemp)"
  # The job records its own duration (its output is shown when it is joined).
  setsid -w bash -c 't=$(date +%s%N); rc=0; "$@" || rc=$?; elapsed "$t" > "$0.secs"; exit "$rc"' "$logf" "$@" >"$logf" 2>&1 &
  bg_pids+=($!)
  bg_names+=("$name")
  bg_secs+=("")
  bg_logs+=("$logf")
  bg_done+=(false)
  bg_last=$((${#bg_pids[@]} - 1))
}
# Waits for background job $1 (once), shows its output, fails with its status.
join_bg() {
  local i=$1 rc=0
  [ "${bg_done[$i]}" = true ] && return 0
  wait "${bg_pids[$i]}" || rc=$?
  bg_done[i]=true
  echo "test: --- output of the background job: ${bg_names[$i]} (exit $rc)" >&2
  cat "${bg_logs[$i]}" >&2
  bg_secs[i]=$(cat "${bg_logs[$i]}.secs" 2>/dev/null || echo "?")
  return "$rc"
}
# Joins the background jobs that have already ended, so that a failed one stops the run at the
# next stage instead of at its join.
reap_bg() {
  local i
  for i in "${!bg_pids[@]}"; do
    if [ "${bg_done[$i]}" = false ] && ! kill -0 "${bg_pids[$i]}" 2>/dev/null; then
      join_bg "$i" || { local rc=$?; current="${bg_names[$i]} (background)"; stage_start=$started; exit "$rc"; }
    fi
  done
}
# Under `set -e` a failing command inside the EXIT trap ends the script with its status, so the
# kill of an already finished job (the normal case) must not fail: a green run exited 1 that way.
trap 'rc=$?; for p in "${bg_pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; summary "$rc" || true; exit "$rc"' EXIT

stage "setup (toolchain)"                        scripts/setup.sh toolchain
background "setup (tools: apt, wasm-bindgen, npm)" scripts/setup.sh tools
tools=$bg_last
# The wasm compile needs nothing from the native stages (its own target dir): on a brand-new
# machine the native and wasm dependency trees took ~33 min together against ~63 min one after
# the other.
background "web build: cargo (wasm32)"             scripts/build-web.sh --compile-only
web=$bg_last

stage "cargo fmt --check"                        cargo fmt --check
stage "cargo clippy (-D warnings)"               cargo clippy --release --all-targets -- -D warnings
# The library's unit tests and the integration tests (tests/suite/ and tests/blockwise.rs, which
# build the CLI they run); the examples are compiled and linted by clippy --all-targets above (a
# release link each is all `cargo test` would add), the doctests run in their own stage.
stage "cargo test --release (build)"             cargo test --release --lib --tests --no-run
stage "setup (tools) joined"                     join_bg "$tools"
stage "cargo test --release (run)"               cargo test --release --lib --tests
stage "cargo test --release --doc"               cargo test --release --doc
stage "cargo build --release (CLI)"              cargo build --release
stage "web build: cargo joined"                  join_bg "$web"
stage "web build (scripts/build-web.sh)"         scripts/build-web.sh
# Two test files at a time, the full-size proof (the longest: ~13 min of SwiftShader) first so
# that the others run beside it. Every *.test.mjs runs.
e2e_files() {
  (cd tests/e2e && ls fullsize.test.mjs && ls ./*.test.mjs | sed 's|^\./||' | grep -vx fullsize.test.mjs)
}
stage "e2e (node --test, Chromium)"              bash -c "cd tests/e2e && node --test --test-concurrency=2 $(e2e_files | tr '\n' ' ')"
