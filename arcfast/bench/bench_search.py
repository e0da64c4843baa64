"""Candidate search and selection: each fast path beside its baseline, same inputs, same run.

    arcfast bench -k search                          # every case
    arcfast bench -k search --set cases=prefix       # cases whose name contains "prefix"
    arcfast bench -k search --quick                  # smaller

Cases (``CASES``, one function each, below):

``prefix-shared vs whole-sequence scoring``: K candidate grids of one test input, each scored under
the same M augmentations (re-scoring's shape, :func:`arcfast.score.rescore_items`), through one
adapter: :func:`arcfast.score.score_sequences` with ``prefix_share=True`` (each augmentation's prompt
computed once, the K candidates after it as a tree) against ``prefix_share=False`` (all K x M
sequences packed whole). A synthetic task of 4 demonstrations of 10x11 -> 9x10 grids and a 10x11
test input gives prompts of ~1,020 compact tokens; candidates are 9-10 x 9-10 grids (~90-110
tokens). Defaults K = 8, M = 8 (``--quick``: K = 4, M = 2); ``--set K=N --set M=N --set pairs=N``
change them. Model: the tiny config on the CPU (fp32, one thread), the Qwen2.5-0.5B architecture
with random weights in bf16 on a GPU; a random rank-8 LoRA adapter on every linear layer; batches of
:func:`arcfast.score.default_batch_tokens`. Rows: tokens computed (forward positions, no padding)
and wall seconds, best of ``repeats`` (default 3, ``--quick`` 1) alternating the two paths after
one warm-up each; ``extra.max_abs_diff`` is the largest difference between the two paths' scores.
The issue's bar at K = 8, M = 8: >= 4x fewer tokens and >= 3x faster.
"""
from __future__ import annotations

import time

import numpy as np

from .runner import Context, Row, with_torch_threads

BENCH = "search"


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _opt(ctx: Context, key: str, default: int) -> int:
    return int(ctx.options.get(key, default))


def _model(ctx: Context, r: int = 8):
    """(model, lora): the tiny config on the CPU, the Qwen2.5-0.5B architecture on a GPU (random
    weights, ``--set model=NAME`` for another preset), one random rank-``r`` adapter."""
    import torch

    from arcfast.lora import LoRAConfig, MultiLoRA
    from arcfast.model import build_model, preset

    name = ctx.options.get("model", "qwen2.5-0.5b" if ctx.device == "cuda" else "tiny")
    model = build_model(preset(name), device=ctx.device, seed=0).eval()
    lora = MultiLoRA(model, LoRAConfig(r=r, alpha=2.0 * r), n_adapters=1)
    with torch.no_grad():
        lora.weight.normal_(0.0, 0.02, generator=torch.Generator(device=lora.weight.device).manual_seed(1))
    return model, lora


# ----------------------------------------------------------------------------------------------
# Case: prefix-shared vs whole-sequence scoring

def _search_task(pairs: int, seed: int = 0):
    """A synthetic task: ``pairs`` demonstrations of 10x11 -> 9x10 random grids, one 10x11 test input."""
    from arcfast.task import Pair, Task

    rng = np.random.default_rng(seed)
    g = lambda h, w: rng.integers(0, 10, size=(h, w)).astype(np.uint8)
    return Task("search", [Pair(g(10, 11), g(9, 10)) for _ in range(pairs)], [Pair(g(10, 11))], source="synthetic")


def _candidates(k: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    shapes = [(9, 10), (10, 9), (9, 9), (10, 10)]
    return [rng.integers(0, 10, size=shapes[i % len(shapes)]).astype(np.uint8) for i in range(k)]


def case_prefix_scoring(ctx: Context) -> list[Row]:
    from arcfast.augment import test_time_augmentations
    from arcfast.score import ScoreItem, ScoreStats, build_sequences, score_sequences

    K = _opt(ctx, "K", 4 if ctx.quick else 8)
    M = _opt(ctx, "M", 2 if ctx.quick else 8)
    repeats = _opt(ctx, "repeats", 1 if ctx.quick else 3)
    task = _search_task(_opt(ctx, "pairs", 4))
    augs = test_time_augmentations(task, M, seed=2)
    items = [ScoreItem(task, 0, g, a, 0) for g in _candidates(K) for a in augs]
    seqs = build_sequences(items)
    model, lora = _model(ctx)

    def timed(share: bool):
        st = ScoreStats()
        _sync(ctx.device)
        t0 = time.perf_counter()
        scores = score_sequences(model, lora, seqs, prefix_share=share, stats=st)
        _sync(ctx.device)
        return scores, st, time.perf_counter() - t0

    warm = {share: timed(share)[1].seconds for share in (True, False)}
    best = {}
    for _ in range(repeats):
        for share in (True, False):
            got = timed(share)
            if share not in best or got[2] < best[share][2]:
                best[share] = got
    (s_sh, st_sh, t_sh), (s_wh, st_wh, t_wh) = best[True], best[False]
    if np.isnan(s_sh).any() or np.isnan(s_wh).any():
        raise RuntimeError("a scoring path left sequences unscored")
    diff = float(np.max(np.abs(s_sh - s_wh)))
    P = [len(p) for p in seqs.prompts]
    G = [len(t) for t in seqs.targets]
    name = f"{ctx.options.get('model', 'qwen2.5-0.5b' if ctx.device == 'cuda' else 'tiny')}, " \
           f"K={K} candidates x M={M} augmentations, ~{int(np.mean(P))}-token prompts, ~{int(np.mean(G))}-token candidates"
    extra = dict(K=K, M=M, sequences=len(seqs), prompt_tokens=[min(P), max(P)], candidate_tokens=[min(G), max(G)],
                 batches=st_sh.batches, baseline_batches=st_wh.batches, max_abs_diff=diff,
                 warmup_s=warm[True], baseline_warmup_s=warm[False], repeats=repeats, dtype=str(model.dtype))
    return [
        Row(BENCH, f"prefix-shared scoring, tokens computed: {name}", value=float(st_sh.tokens),
            unit="tokens", baseline="whole-sequence scoring", baseline_value=float(st_wh.tokens),
            higher_is_better=False, bar=4.0, extra=dict(extra, whole_tokens=st_sh.whole_tokens)),
        Row(BENCH, f"prefix-shared scoring, wall time: {name}", value=t_sh, unit="s",
            baseline="whole-sequence scoring", baseline_value=t_wh, higher_is_better=False, bar=3.0,
            extra=dict(extra, tokens_per_s=st_sh.tokens / t_sh, baseline_tokens_per_s=st_wh.tokens / t_wh)),
    ]


# ----------------------------------------------------------------------------------------------
# The cases, in the order they run: (name, function(ctx) -> rows). Add new search cases here.

CASES = [
    ("prefix-shared vs whole-sequence scoring", case_prefix_scoring),
]


def run(ctx: Context) -> list[Row]:
    return with_torch_threads(ctx, _run)


def _run(ctx: Context) -> list[Row]:
    want = ctx.options.get("cases", "")
    picked = [(n, fn) for n, fn in CASES if not want or any(w and w in n for w in want.split(","))]
    if not picked:
        raise ValueError(f"--set cases={want!r} matches none of {[n for n, _ in CASES]}")
    rows = []
    for _, fn in picked:
        rows += fn(ctx)
    return rows
