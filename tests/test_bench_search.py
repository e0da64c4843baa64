"""The search benchmark's prefix-scoring case runs end to end on the CPU at a tiny size and reports
what its layout says."""
from __future__ import annotations

import pytest

from arcfast.bench import bench_search
from arcfast.bench.runner import Context


def test_prefix_scoring_case_tiny_cpu():
    from arcfast.arc.augment import test_time_augmentations
    from arcfast.infer.logprobs import ScoreItem, build_sequences

    K, M = 3, 2
    rows = bench_search.run(Context(quick=True, device="cpu", threads=1,
                                    options={"K": str(K), "M": str(M), "pairs": "1", "cases": "prefix"}))
    tokens, wall = rows
    assert (tokens.unit, tokens.bar, wall.unit, wall.bar) == ("tokens", 4.0, "s", 3.0)
    assert "K=3 candidates x M=2 augmentations" in tokens.case and not tokens.higher_is_better
    # The same items by hand: each augmentation's prompt once, then its K candidates.
    task = bench_search._search_task(1)
    augs = test_time_augmentations(task, M, seed=2)
    seqs = build_sequences([ScoreItem(task, 0, g, a, 0) for g in bench_search._candidates(K) for a in augs])
    P = [len(seqs.prompts[a]) for a in range(M)]
    G = [[len(seqs.targets[k * M + a]) for k in range(K)] for a in range(M)]
    assert tokens.value == sum(P[a] + sum(G[a]) for a in range(M))
    assert tokens.baseline_value == seqs.n_tokens == tokens.extra["whole_tokens"]
    assert tokens.ratio == pytest.approx(seqs.n_tokens / tokens.value) and tokens.ratio > 1.5
    assert wall.value > 0 and wall.baseline_value > 0
    assert tokens.extra["max_abs_diff"] < 1e-3 and tokens.extra["sequences"] == K * M


def test_an_unknown_case_is_named():
    with pytest.raises(ValueError, match="matches none of"):
        bench_search.run(Context(quick=True, device="cpu", options={"cases": "nothing"}))


def test_dfs_case_tiny_cpu():
    rows = bench_search.run(Context(quick=True, device="cpu", threads=1,
                                    options={"cases": "dfs", "dfs_tasks": "arc1:train[:2]", "dfs_predictions": "1"}))
    greedy_row, sample_row = rows
    assert greedy_row.unit == sample_row.unit == "candidates/s"
    assert greedy_row.baseline == "greedy" and sample_row.baseline == "sample t=1"
    e = greedy_row.extra
    # the search ran real trees through the starter model, and its rows say what it found
    assert e["node_steps"] > 0 and e["seconds"] > 0 and e["baseline"]["seconds"] > 0
    assert e["distinct"] <= e["completions"]
    assert greedy_row.value == pytest.approx(e["distinct"] / e["seconds"], rel=1e-2, abs=1e-3)
    assert sample_row.extra["baseline"]["seconds"] > 0
