#!/usr/bin/env bash
# Ship a starter model trained by scripts/train_starter.sh: copy OUT/model into the package
# (arcfast/models/starter/, loaded by `--model starter`), then score it for its card with the
# learning benchmark: part 2 (ARC-AGI-1 training tasks seen in training, and the first 50
# evaluation tasks without and with TTFT, BUDGET seconds each) and part 3 (the compute curve of the
# snapshots the run kept, when it kept any).
#
#   scripts/ship_starter.sh [OUT] [BENCH_OUT] [BUDGET]   # defaults: runs/starter benchmarks/results 600
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/starter}
BENCH_OUT=${2:-benchmarks/results}
BUDGET=${3:-600}
DEST=arcfast/models/starter
mkdir -p "$DEST"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    install -m 644 "$OUT/model/$f" "$DEST/$f"
done
CURVE=()
[ -d "$OUT/snapshots" ] && CURVE=(--set "curve=$OUT")
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} .venv/bin/arcfast bench -k learning --out "$BENCH_OUT" \
    --set synthetic=0 --set predictions=4 --set "budget=$BUDGET" "${CURVE[@]}"
