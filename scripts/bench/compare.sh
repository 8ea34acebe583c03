#!/usr/bin/env bash
# dreamdist vs PyTorch/diffusers on this machine's CPU: runs `dreamdist bench` and
# scripts/bench/torch_compare.py with the same settings, one after the other (never at the same
# time), then prints both tables and the per-row ratio dreamdist / torch. See README.md here.
#
#   scripts/bench/compare.sh [--sizes 256,512] [--what unet,train] [--iters 1] [--threads N]
#                            [--model sd21] [--unet-batch 1] [--out-dir DIR] [-- extra torch args]
#
# Environment: DREAMDIST_BIN (default ~/.cache/dreamdist/target/release/dreamdist),
#              PYTHON (default ~/.cache/dreamdist/venv/bin/python).
set -euo pipefail

SIZES=256,512 WHAT=unet,train ITERS=1 THREADS=$(nproc) MODEL=sd21 UNET_BATCH=1
OUT_DIR=${TMPDIR:-/tmp}/dreamdist-bench-$(date +%Y%m%d-%H%M%S)
EXTRA=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) SIZES=$2; shift 2 ;;
        --what) WHAT=$2; shift 2 ;;
        --iters) ITERS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --unet-batch) UNET_BATCH=$2; shift 2 ;;
        --out-dir) OUT_DIR=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${DREAMDIST_BIN:-$HOME/.cache/dreamdist/target/release/dreamdist}
PY=${PYTHON:-$HOME/.cache/dreamdist/venv/bin/python}
[[ -x $BIN ]] || { echo "compare.sh: no dreamdist binary at $BIN (cargo build --release, or set DREAMDIST_BIN)" >&2; exit 1; }
[[ -x $PY ]] || { echo "compare.sh: no Python at $PY (see scripts/fixtures/README.md, or set PYTHON)" >&2; exit 1; }
mkdir -p "$OUT_DIR"

# Timings are only comparable on an otherwise idle machine.
load() { cut -d' ' -f1 /proc/loadavg; }
warn_load() {
    if awk -v l="$(load)" 'BEGIN { exit !(l > 0.5) }'; then
        echo "compare.sh: WARNING: load average $(load) before the $1 run: other jobs are running, timings will be off" >&2
    fi
}

echo "== dreamdist ($BIN), $THREADS threads; load average $(load)" >&2
warn_load dreamdist
# dreamdist's CPU backend runs on rayon's global pool, which RAYON_NUM_THREADS sizes (its table
# header always prints the machine's available parallelism).
RAYON_NUM_THREADS=$THREADS "$BIN" bench --model "$MODEL" --random-weights 0 --sizes "$SIZES" --what "$WHAT" \
    --iters "$ITERS" --unet-batch "$UNET_BATCH" --out "$OUT_DIR/dreamdist.md" 2> >(tee "$OUT_DIR/dreamdist.log" >&2) >/dev/null
wait  # let tee finish

echo "== torch ($PY), $THREADS threads; load average $(load)" >&2
warn_load torch
"$PY" "$ROOT/scripts/bench/torch_compare.py" --model "$MODEL" --sizes "$SIZES" --what "$WHAT" --iters "$ITERS" \
    --threads "$THREADS" --unet-batch "$UNET_BATCH" --out "$OUT_DIR/torch.md" ${EXTRA[@]+"${EXTRA[@]}"} \
    2> >(tee "$OUT_DIR/torch.log" >&2) >/dev/null
wait

echo
cat "$OUT_DIR/dreamdist.md"
echo
cat "$OUT_DIR/torch.md"
echo
"$PY" - "$OUT_DIR/dreamdist.md" "$OUT_DIR/torch.md" <<'EOF' | tee "$OUT_DIR/ratio.md"
# Pairs the rows of the two tables by (kind, image) and prints dreamdist / torch.
import sys

def kind(what):
    if what.startswith("UNet forward"):
        return "UNet forward (batch 1)"
    if what.startswith("UNet fwd + "):
        return "UNet fwd + bwd w.r.t. the conditioning"
    if what.startswith("train step"):
        return what.split(" recipe")[0]  # "train step K=32 M=4 S=4 Paper"
    return what

def rows(path):
    # Columns by header name: dreamdist's table has more of them than torch's.
    out, cols = {}, None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "what":
            cols = {c.split(" (")[0]: i for i, c in enumerate(cells)}
            best = next(i for c, i in cols.items() if c.startswith("best"))
        elif cols and len(cells) >= 5 and cells[1].endswith("²"):
            num = lambda s: float(s) if s not in ("n/a", "") else None
            out[(kind(cells[0]), cells[1])] = (num(cells[cols["first"]]), num(cells[best]), num(cells[cols["peak RSS"]]))
    return out

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"

d, t = rows(sys.argv[1]), rows(sys.argv[2])
print("dreamdist / torch (< 1: dreamdist faster or smaller)\n")
print("| what | image | first | best | peak RSS |\n|---|---|---|---|---|")
for key in d:
    if key in t:
        print(f"| {key[0]} | {key[1]} | " + " | ".join(ratio(x, y) for x, y in zip(d[key], t[key])) + " |")
missing = [k for k in d if k not in t] + [k for k in t if k not in d]
if missing:
    print("\nrows in only one table:", ", ".join(f"{w} @ {s}" for w, s in missing))
EOF
echo >&2
echo "compare.sh: tables, logs and ratios in $OUT_DIR" >&2
