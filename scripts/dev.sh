#!/usr/bin/env bash
# The one command to try dreamdist: sets up the machine (scripts/setup.sh), builds the browser
# app into pkg/ (scripts/build-web.sh) and serves the repository on http://127.0.0.1:PORT/
# (foreground; Ctrl-C stops it). Open the printed address in Chrome or Edge.
#
#   scripts/dev.sh [PORT]      (or PORT=… scripts/dev.sh; default 8080; 0 picks a free port)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-${PORT:-8080}}"

echo "dev: setting up (first run: system packages, wasm toolchain, wasm-bindgen)…" >&2
scripts/setup.sh
echo "dev: building the web app (the first build takes a while; later ones are incremental)…" >&2
t0=$SECONDS
scripts/build-web.sh
echo "dev: web app built in $((SECONDS - t0)) s" >&2
echo "dev: open the address below in Chrome or Edge (WebGPU); Ctrl-C stops the server" >&2
exec node www/serve.mjs "$port"
