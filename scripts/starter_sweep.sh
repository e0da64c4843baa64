#!/usr/bin/env bash
# What learns fastest per CPU-second: the same training as the starter's recipe
# (scripts/train_starter.sh: arc1:train, loss on every demonstration output, rows of 8,192 tokens)
# for a fixed wall time per configuration, from random weights, then the validation loss on
# arc1:eval[:20] (the starter's validation set). Width, depth and learning rate vary; one thread each.
#
#   scripts/starter_sweep.sh [OUT] [BUDGET]        # defaults: runs/sweep 5m
#
# Prints one line per configuration (also OUT/summary.tsv): the validation loss at the end, the
# steps and tokens trained, the parameters.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/sweep}
BUDGET=${2:-5m}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
# name hidden layers intermediate lr
CONFIGS="h96-l4 96 4 384 2e-3
h128-l3 128 3 512 2e-3
h128-l6 128 6 512 2e-3
h192-l6 192 6 768 2e-3
h128-l6-lr1e-3 128 6 512 1e-3
h128-l6-lr4e-3 128 6 512 4e-3"
printf 'config\tparams\tsteps\ttokens\tval_loss\n' > "$OUT/summary.tsv"
while read -r name hidden layers inter lr; do
    [ -n "$name" ] || continue
    .venv/bin/python - "$OUT/$name-init" "$hidden" "$layers" "$inter" <<'PY'
import sys
from arcfast.model.checkpoint import save_model
from arcfast.model.config import ModelConfig
from arcfast.model.decoder import build_model
d, h, n, i = sys.argv[1], *map(int, sys.argv[2:])
cfg = ModelConfig(family="qwen2", hidden_size=h, n_layers=n, n_heads=4, n_kv_heads=2, intermediate_size=i,
                  qkv_bias=True, tie_embeddings=True, name=f"sweep-{h}x{n}")
save_model(build_model(cfg, seed=0), d)
PY
    rm -rf "${OUT:?}/$name"
    .venv/bin/arcfast train --full --model "$OUT/$name-init" --data arc1:train=1 --val 'arc1:eval[:20]' \
        --steps 2000 --lr "$lr" --warmup-ratio 0.02 --schedule cosine --weight-decay 0.01 \
        --row-len 8192 --rows 1 --max-len 8192 --loss-on outputs --seed 0 --threads 1 \
        --save-every 0 --val-every 20 --val-batches 4 --log-every 10 --budget "$BUDGET" --out "$OUT/$name" -q \
        > "$OUT/$name.log" 2>&1 || { echo "$name failed (see $OUT/$name.log)"; continue; }
    .venv/bin/python - "$OUT/$name" "$name" <<'PY' | tee -a "$OUT/summary.tsv"
import sys
from arcfast.bench.bench_learning import train_log_curve
from arcfast.model.checkpoint import load_model
run, name = sys.argv[1], sys.argv[2]
cum, val, _ = train_log_curve(run)
steps = max(cum, default=0)
loss = f"{val[max(val)]:.4f}" if val else "nan"
n = sum(p.numel() for p in load_model(f"{run}-init").parameters())
print(f"{name}\t{n}\t{steps}\t{cum.get(steps, 0)}\t{loss}")
PY
done <<< "$CONFIGS"
