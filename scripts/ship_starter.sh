#!/usr/bin/env bash
# Ship a starter model trained by scripts/train_starter.sh: copy OUT/model into the package
# (arcfast/models/starter/, loaded by `--model starter`), then score it for its card with the
# learning benchmark (its part 2: ARC-AGI-1 training tasks seen in training, and the first 50
# evaluation tasks without and with TTFT).
#
#   scripts/ship_starter.sh [OUT] [BENCH_OUT]        # defaults: runs/starter benchmarks/results
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/starter}
BENCH_OUT=${2:-benchmarks/results}
DEST=arcfast/models/starter
mkdir -p "$DEST"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
    install -m 644 "$OUT/model/$f" "$DEST/$f"
done
.venv/bin/arcfast bench -k learning --out "$BENCH_OUT"
