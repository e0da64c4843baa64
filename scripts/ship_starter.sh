#!/usr/bin/env bash
# Ship a starter model trained by scripts/train_starter.sh and score it for its card:
#
#   scripts/ship_starter.sh [OUT] [SEEN] [HELD_OUT] [BUDGET]
#       OUT       the training run (default runs/starter): OUT/model is copied into the package
#       SEEN      tasks seen in training to score (default arc1:train)
#       HELD_OUT  held-out tasks, scored without and with TTFT (default arc1:eval[:50])
#       BUDGET    wall time of each scoring run (default 15m)
#
# Scores land in OUT/score-*/run.json (and report.md); MODEL_CARD.md quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/starter}
SEEN=${2:-arc1:train}
HELD=${3:-arc1:eval[:50]}
BUDGET=${4:-15m}
DEST=arcfast/models/starter
mkdir -p "$DEST"
cp "$OUT/model/config.json" "$OUT/model/model.safetensors" "$OUT/model/tokenizer.json" \
   "$OUT/model/tokenizer_config.json" "$DEST/"
chmod 644 "$DEST"/*.json "$DEST"/*.safetensors
A=.venv/bin/arcfast
$A eval --tasks "$SEEN" --model starter --predictions 8 --budget "$BUDGET" --out "$OUT/score-seen" -q
$A eval --tasks "$HELD" --model starter --predictions 8 --budget "$BUDGET" --out "$OUT/score-heldout" -q
$A eval --tasks "$HELD" --model starter --ttft --predictions 8 --budget "$BUDGET" --out "$OUT/score-heldout-ttft" -q
