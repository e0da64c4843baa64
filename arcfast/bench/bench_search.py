"""Candidate search and selection: each fast path beside its baseline, same inputs, same run.

    arcfast bench -k search                          # every case
    arcfast bench -k search --set cases=prefix       # cases whose name contains "prefix"
    arcfast bench -k search --quick                  # smaller

Cases (``CASES``, one function each, below):

``prefix-shared vs whole-sequence scoring``: K candidate grids of one test input, each scored under
the same M augmentations (re-scoring's shape, :func:`arcfast.infer.rescore.rescore_items`), through one
adapter: :func:`arcfast.infer.logprobs.score_sequences` with ``prefix_share=True`` (each augmentation's prompt
computed once, the K candidates after it as a tree) against ``prefix_share=False`` (all K x M
sequences packed whole). A synthetic task of 4 demonstrations of 10x11 -> 9x10 grids and a 10x11
test input gives prompts of ~1,020 compact tokens; candidates are 9-10 x 9-10 grids (~90-110
tokens). Defaults K = 8, M = 8 (``--quick``: K = 4, M = 2); ``--set K=N --set M=N --set pairs=N``
change them. Model: the tiny config on the CPU (fp32, one thread), the Qwen2.5-0.5B architecture
with random weights in bf16 on a GPU; a random rank-8 LoRA adapter on every linear layer; batches of
:func:`arcfast.infer.logprobs.default_batch_tokens`. Rows: tokens computed (forward positions, no padding)
and wall seconds, best of ``repeats`` (default 3, ``--quick`` 1) alternating the two paths after
one warm-up each; ``extra.max_abs_diff`` is the largest difference between the two paths' scores.
The issue's bar at K = 8, M = 8: >= 4x fewer tokens and >= 3x faster.

``dfs vs greedy and sampling``: depth-first search (:func:`arcfast.infer.search.dfs`, cutoff ``min_prob``,
default 0.1) under N augmentations (``dfs_predictions``, default 8; ``--quick`` 2) of every test input
of ``dfs_tasks`` (default ``arc1:train[:12]``; ``--quick`` ``arc1:train[:2]``), against greedy
decoding of the same prompts, and against sampling at temperature 1 with as many augmented samples
as fit in the time the search took (N x search time / greedy time); ``dfs_model`` (default the
shipped starter model, the same on a GPU). Rows: distinct parsed candidates found per second of
inference; ``extra`` holds each side's seconds, distinct candidates, pass_n, vote_2 and their rates
per second, and the search's completions, branches and decoded node-steps.
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

    from ..lora.multi import LoRAConfig, MultiLoRA
    from ..model.decoder import build_model
    from ..model.config import preset

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
    from ..arc.task import Pair, Task

    rng = np.random.default_rng(seed)
    g = lambda h, w: rng.integers(0, 10, size=(h, w)).astype(np.uint8)
    return Task("search", [Pair(g(10, 11), g(9, 10)) for _ in range(pairs)], [Pair(g(10, 11))], source="synthetic")


def _candidates(k: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    shapes = [(9, 10), (10, 9), (9, 9), (10, 10)]
    return [rng.integers(0, 10, size=shapes[i % len(shapes)]).astype(np.uint8) for i in range(k)]


def case_prefix_scoring(ctx: Context) -> list[Row]:
    from ..arc.augment import test_time_augmentations
    from ..infer.logprobs import ScoreItem, ScoreStats, build_sequences, score_sequences

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


# -- depth-first search against greedy decoding and sampling -----------------------------------------

def _candidate_metrics(tasks, preds) -> dict:
    """Distinct parsed candidates per test input, pass_n and vote_2 (score_task) over ``tasks``."""
    from ..answers.metrics import mean_metrics, score_task
    from ..answers.vote import vote

    rows, distinct = [], 0
    for t, per_task in zip(tasks, preds):
        voted = [vote(p, top_k=None) for p in per_task]
        distinct += sum(len(v) for v in voted)
        if t.has_solutions:
            rows.append(score_task(t, per_task, [v[:2] for v in voted]))
    m = mean_metrics(rows) if rows else {}
    return dict(distinct=distinct, pass_n=m.get("pass_n", 0.0), vote_2=m.get("vote_2", 0.0),
                unanswered=m.get("unanswered", 0.0))


def case_dfs(ctx: Context) -> list[Row]:
    """Depth-first search (``min_prob``) against greedy decoding under the same augmentations, and
    against sampling (temperature 1) given the time the search took: distinct candidates found per
    second of inference, and pass_n / vote_2 of the candidates (the starter model on ARC-AGI-1
    training tasks by default: ``--set dfs_model=... --set dfs_tasks=... --set dfs_predictions=N
    --set min_prob=P``)."""
    import torch

    from ..arc.loading import load_tasks
    from ..infer.decoding import GenerationConfig
    from ..infer.generate import Generator
    from ..model.checkpoint import load_model
    from ..infer.predict import max_output_tokens, predict_tasks
    from ..infer.search import SearchConfig, SearchStats

    o = ctx.options
    source = str(o.get("dfs_tasks", "arc1:train[:2]" if ctx.quick else "arc1:train[:12]"))
    n_pred = int(o.get("dfs_predictions", 2 if ctx.quick else 8))
    min_prob = float(o.get("min_prob", 0.1))
    device = "cuda" if ctx.device == "cuda" else "cpu"
    model = load_model(str(o.get("dfs_model", "starter")), device=device).eval()
    tasks = load_tasks(source)
    cfg = GenerationConfig(max_new_tokens=max(max_output_tokens(t) for t in tasks))

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    gen = Generator(model)
    predict_tasks(model, tasks[:1], n_predictions=1, config=cfg, generator=gen)        # warm-up
    greedy, t_g = timed(lambda: predict_tasks(model, tasks, n_predictions=n_pred, config=cfg, generator=gen))
    st = SearchStats()
    searched, t_d = timed(lambda: predict_tasks(model, tasks, n_predictions=n_pred, config=cfg,
                                                search=SearchConfig(min_prob=min_prob), search_stats=st))
    n_samp = max(n_pred, int(round(n_pred * t_d / max(t_g, 1e-9))))
    scfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, seed=1)
    sampled, t_s = timed(lambda: predict_tasks(model, tasks, n_predictions=n_samp, config=scfg, generator=gen))
    g, d, s = (_candidate_metrics(tasks, p) for p in (greedy, searched, sampled))

    def extra(m, secs, **kw):
        return dict(seconds=round(secs, 3), distinct=m["distinct"], pass_n=round(m["pass_n"], 4),
                    vote_2=round(m["vote_2"], 4), unanswered=round(m["unanswered"], 4),
                    pass_n_per_s=round(m["pass_n"] / secs, 5), vote_2_per_s=round(m["vote_2"] / secs, 5), **kw)

    common = dict(tasks=source, predictions=n_pred, min_prob=min_prob, model=str(o.get("dfs_model", "starter")))
    dfs_extra = extra(d, t_d, completions=st.completions, forks=st.forks, node_steps=st.node_steps,
                      cut_by_deadline=st.cut_by_deadline, **common)
    return [
        Row(BENCH, f"dfs p={min_prob} vs greedy, {n_pred} augmentations", d["distinct"] / t_d, "candidates/s",
            "greedy", g["distinct"] / t_g, extra={**dfs_extra, "baseline": extra(g, t_g)}),
        Row(BENCH, f"dfs p={min_prob} vs sampling at equal time ({n_samp} samples)", d["distinct"] / t_d,
            "candidates/s", "sample t=1", s["distinct"] / t_s, extra={**dfs_extra, "baseline": extra(s, t_s)}),
    ]


# ----------------------------------------------------------------------------------------------
# The cases, in the order they run: (name, function(ctx) -> rows). Add new search cases here.

CASES = [
    ("prefix-shared vs whole-sequence scoring", case_prefix_scoring),
    ("dfs vs greedy and sampling", case_dfs),
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
