#!/usr/bin/env bash
# Opt-in proofs at full size (slow on these machines; run by hand, output committed to docs/):
#
#   scripts/proofs/fullsize.sh browser [SIZE]   full-size sd21-base (random weights, q8) in headless
#                                               Chromium with WebGPU's default limits: load, encode a
#                                               prompt, one guided UNet step and a VAE decode at
#                                               SIZE² (default 512), compared with the native CPU
#                                               backend on the same shards → docs/proof-browser-SIZE.md
#   scripts/proofs/fullsize.sh train-browser [SIZE] [K M S]
#                                               one full-size training step (loss and raw gradient
#                                               ∂L/∂V, default K=2 M=4 S=1) in headless Chromium with
#                                               WebGPU's default limits, compared with the native CPU
#                                               backend → docs/proof-train-browser-SIZE.md
#   scripts/proofs/fullsize.sh train-wgpu [SIZE] one full-size training gradient on native wgpu
#                                               (lavapipe here) vs the CPU backend, with the wgpu
#                                               step's peak pool memory → docs/proof-train-wgpu-SIZE.md
#
# The converted random-weights model is cached in $DREAMDIST_CACHE/proof (1.45 GB).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DREAMDIST_CACHE="${DREAMDIST_CACHE:-$HOME/.cache/dreamdist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DREAMDIST_CACHE/target}"
BIN="${DREAMDIST_BIN:-$CARGO_TARGET_DIR/release/dreamdist}"
what="${1:-browser}"
size="${2:-512}"
model_dir="$DREAMDIST_CACHE/proof/sd21-base-q8"
# Converted once and kept; converted again when this dreamdist no longer reads the kept copy (a
# model converted by an older version).
if ! "$BIN" convert --check "$model_dir" >/dev/null 2>&1; then
  echo "proof: converting full-size sd21-base with random weights (q8) into $model_dir" >&2
  rm -rf "$model_dir"
  "$BIN" convert --random-weights 0 --model sd21-base --quant q8 --out "$model_dir"
fi
mkdir -p target docs
# write_doc PATH < TEXT: writes a report's generated part to PATH, keeping the readings written
# under it by hand (everything from the first "## "), and shows it.
write_doc() {
  python3 -c '
import os, sys
path, text = sys.argv[1], sys.stdin.read()
old = open(path).read() if os.path.exists(path) else ""
open(path, "w").write(text + (old[old.index("\n## "):] if "\n## " in old else ""))
print(text, end="")' "$1"
}
machine="$(nproc) cores, $(awk '/model name/{$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB"
case "$what" in
  browser)
    ln -sfn "$DREAMDIST_CACHE/proof" target/proof
    echo "proof: native CPU reference at ${size}²" >&2
    t0=$SECONDS
    "$BIN" proof --model sd21-base --manifest "$model_dir" --size "$size" > "target/proof-native-$size.json"
    native_s=$((SECONDS - t0))
    echo "proof: browser run at ${size}² (headless Chromium, SwiftShader)" >&2
    node scripts/proofs/fullsize.mjs "target/proof/sd21-base-q8" "$size" "target/proof-native-$size.json" "target/proof-browser-$size.json"
    python3 - "$size" "$native_s" "$machine" <<'PY' | write_doc "docs/proof-browser-$size.md"
import json, sys
size, native_s, machine = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(f"target/proof-browser-{size}.json"))
b, n = r["browser"], r["native"]
def resident_line(res):
    mib = lambda x: f"{x/2**20:.1f} MiB" if x is not None else "n/a"
    return (f"Resident per component: text encoder {mib(res['text_encoder'])}, UNet {mib(res['unet'])}, VAE {mib(res['vae'])} on the GPU; "
      f"the token-embedding table {mib(res['host_token_table'])} in wasm memory (host).")
lines = [f"# Full-size proof in the browser at {size}²", "",
  f"Produced by `scripts/proofs/fullsize.sh browser {size}` on {machine}: headless Chromium (WebGPU on SwiftShader, i.e. the CPU), the device clamped to WebGPU's default limits "
  f"(binding {b['adapter']['maxStorageBufferBindingSize']} B, buffer {b['adapter']['maxBufferSize']} B), full-size sd21-base with random weights converted to q8 "
  f"({b['model']['report'].get('shards')} shards), served from 127.0.0.1. The native reference is `dreamdist proof` on the CPU backend with the same shards ({native_s} s).", "",
  "| part | shape | finite | max difference of 64 sampled values / max sample | Σ\\|x\\| relative difference | browser time (s) |", "|---|---|---|---|---|---|"]
ms = dict((k, v) for k, v in b["proof"]["ms"])
names = {"text": "text encoder", "unet": f"guided UNet step (batch 2) at {size}²", "decode": f"VAE decode at {size}²"}
for part in ["text", "unet", "decode"]:
    c = r["comparison"][part]
    lines.append(f"| {names[part]} | {c['shape']} | {c['finite']} | {c['sample_max_rel']:.2e} | {c['sum_abs_rel']:.2e} | {ms.get(names[part], 0)/1000:.1f} |")
t = b["timings"]
lines += ["", f"Engine start {t['engine_ms']/1000:.1f} s; model load (1.45 GB from the local server into OPFS and the GPU) {t['load_ms']/1000:.1f} s; "
  f"proof {t['proof_ms']/1000:.1f} s; whole run {r['wall_s']:.0f} s. GPU memory resident after load: {b['model']['residentBytes']/2**30:.2f} GiB; "
  f"peak in use during the proof: {(b['proof'].get('peak_bytes') or 0)/2**30:.2f} GiB.", "",
  *([resident_line(b['model']['resident']), ""] if b['model'].get('resident') else []),
  "Peak wasm memory (the module's linear memory, which only grows, read after each phase): " + "; ".join(
    f"{k} {v/2**20:.0f} MiB" for k, v in b.get("wasm_memory_bytes", {}).items()) + ".", "",
  f"Shim: {json.dumps(b['shim'])}. Limits report: {json.dumps(b['limits'])}."]
print("\n".join(lines))
PY
    ;;
  train-wgpu)
    "$BIN" crosscheck --manifest "$model_dir" --size "$size" > "target/proof-train-wgpu-$size.json"
    python3 - "$size" "$machine" <<'PY' | write_doc "docs/proof-train-wgpu-$size.md"
import json, sys
size, machine = sys.argv[1], sys.argv[2]
r = json.load(open(f"target/proof-train-wgpu-{size}.json"))
g = r["gradient"]
text = f"""# Full-size training gradient: native wgpu vs the CPU backend at {size}²

Produced by `scripts/proofs/fullsize.sh train-wgpu {size}` on {machine}: full-size sd21-base with random
weights (q8 shards), one DreamDistribution step (K={r['k']}, M={r['m']}, S={r['samples']}, paper recipe), the raw
gradient ∂L/∂V compared (not an Adam update). wgpu is lavapipe (Vulkan on the CPU) here, planned for
WebGPU's default binding limit ({r['wgpu']['max_binding']} B).

| | loss | time (s) | peak pool memory (GiB) |
|---|---|---|---|
| CPU (burn flex) | {r['cpu']['loss']:.6f} | {r['cpu']['seconds']:.1f} | — |
| wgpu (lavapipe) | {r['wgpu']['loss']:.6f} | {r['wgpu']['seconds']:.1f} | {r['wgpu']['peak_pool_bytes']/2**30:.2f} |

Gradient: max |g| {g['max_abs']:.3e}; max |g_cpu − g_wgpu| {g['max_abs_difference']:.3e} ({g['relative']:.2e} of max |g|); same sign in {100*g['same_sign']:.2f}% of entries. Loss relative difference {r['loss_relative_difference']:.2e}.
"""
print(text, end="")
PY
    ;;
  train-browser)
    read -r k m s <<< "${3:-2} ${4:-4} ${5:-1}"
    ln -sfn "$DREAMDIST_CACHE/proof" target/proof
    echo "proof: native CPU training step at ${size}² (K=$k M=$m S=$s)" >&2
    t0=$SECONDS
    "$BIN" proof --train --model sd21-base --manifest "$model_dir" --size "$size" --k "$k" --m "$m" --samples "$s" > "target/proof-train-native-$size.json"
    native_s=$((SECONDS - t0))
    echo "proof: browser training step at ${size}² (headless Chromium, SwiftShader)" >&2
    PROOF_TRAIN="$k $m $s" node scripts/proofs/fullsize.mjs "target/proof/sd21-base-q8" "$size" "target/proof-train-native-$size.json" "target/proof-train-browser-$size.json"
    python3 - "$size" "$native_s" "$machine" <<'PY' | write_doc "docs/proof-train-browser-$size.md"
import json, sys
size, native_s, machine = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(f"target/proof-train-browser-{size}.json"))
b, n, c = r["browser"], r["native"], r["comparison"]
tr = b["train"]
ms = dict((k, v) for k, v in tr["ms"])
nms = dict((k, v) for k, v in n["ms"])
lines = [f"# Full-size training step in the browser at {size}²", "",
  f"Produced by `scripts/proofs/fullsize.sh train-browser {size} {tr['k']} {tr['m']} {tr['samples']}` on {machine}: headless Chromium (WebGPU on SwiftShader, i.e. the CPU), "
  f"the device clamped to WebGPU's default limits (binding {b['adapter']['maxStorageBufferBindingSize']} B, buffer {b['adapter']['maxBufferSize']} B), "
  f"full-size sd21-base with random weights converted to q8 ({b['model']['report'].get('shards')} shards), served from 127.0.0.1. "
  f"One DreamDistribution step (paper recipe, K={tr['k']}, M={tr['m']}, S={tr['samples']}) on a seeded random {size}² reference image: "
  f"the loss and the raw gradient ∂L/∂V (block-wise backward, `train::proof_step`), compared with `dreamdist proof --train` on the native CPU backend with the same shards ({native_s} s).", "",
  "| | browser | native CPU | relative difference |", "|---|---|---|---|"]
for name, l in zip(["loss", "denoising part", "orthogonality part"], c["loss"]):
    lines.append(f"| {name} | {l['browser']:.6f} | {l['native']:.6f} | {l['rel']:.2e} |")
for part in ["v0", "gradient"]:
    x = c[part]
    label = {"v0": "initial prompts V", "gradient": "∂L/∂V"}[part]
    lines.append(f"| {label} {x['shape']}, finite {x['finite']}: max difference of 64 sampled values / max sample; Σ\|x\| | | | {x['sample_max_rel']:.2e}; {x['sum_abs_rel']:.2e} |")
t = b["timings"]
peak = tr.get("peak_bytes")
lines += ["", f"Times: browser setup (reference latent, prompts) {ms.get('setup', 0)/1000:.1f} s, gradient {ms.get('gradient', 0)/1000:.1f} s; "
  f"native CPU setup {nms.get('setup', 0)/1000:.1f} s, gradient {nms.get('gradient', 0)/1000:.1f} s. "
  f"Engine start {t['engine_ms']/1000:.1f} s; model load {t['load_ms']/1000:.1f} s; whole browser run {r['wall_s']:.0f} s.",
  "", f"GPU memory resident after load: {b['model']['residentBytes']/2**30:.2f} GiB; peak in use at the step's piece boundaries: "
  + (f"{peak/2**30:.2f} GiB." if peak else "not reported."),
  "", "Peak wasm memory (linear memory, read after each phase): " + "; ".join(f"{k} {v/2**20:.0f} MiB" for k, v in b.get("wasm_memory_bytes", {}).items()) + ".",
  "", f"Shim: {json.dumps(b['shim'])}."]
print("\n".join(lines))
PY
    ;;
  *) echo "usage: $0 browser|train-browser|train-wgpu [SIZE]" >&2; exit 2 ;;
esac
