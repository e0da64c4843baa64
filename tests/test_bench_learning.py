"""The learning benchmark: its generated tasks, and one quick run end to end."""
import json

import numpy as np
import pytest

from arcfast.arc.augment import Augmentation
from arcfast.bench import bench_learning as L
from arcfast.bench.runner import Context

pytestmark = pytest.mark.usefixtures("one_thread")


def _recolours(t) -> bool:
    """Zero stays zero and each colour maps to one colour throughout the task."""
    image: dict = {}
    for p in (*t.train, *t.test):
        if p.output.shape != p.input.shape or not ((p.input == 0) == (p.output == 0)).all():
            return False
        for x, y in zip(p.input.flat, p.output.flat):
            image.setdefault(int(x), set()).add(int(y))
    return all(len(ys) == 1 for ys in image.values())


def _dihedral_of(t) -> set:
    """The dihedral transforms (numbered as arcfast.arc.augment does) that map every input to its output."""
    return {k for k in range(1, 8)
            if all(np.array_equal(Augmentation(transform=k).apply_grid(p.input), p.output) for p in (*t.train, *t.test))}


@pytest.mark.parametrize("family", L.FAMILIES)
def test_generated_tasks_are_well_formed_and_fixed_by_the_seed(family):
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = [L.family_task(rng_a, f"t{i}", family) for i in range(40)]
    b = [L.family_task(rng_b, f"t{i}", family) for i in range(40)]
    assert a == b
    kinds = []
    for t in a:
        assert len(t.train) == 4 and len(t.test) == 1
        for p in (*t.train, *t.test):
            assert 3 <= p.input.shape[0] <= 5 and 3 <= p.input.shape[1] <= 5 and p.input.dtype == np.uint8
            assert not np.array_equal(p.output, p.input)
        kinds.append("recolour" if _recolours(t) else "dihedral" if _dihedral_of(t) else "neither")
    if family == "mix":    # both halves, each task following one rule
        assert "neither" not in kinds and 10 <= kinds.count("dihedral") <= 30, kinds
    else:
        assert set(kinds) == {"recolour"}, kinds
    with pytest.raises(ValueError, match="family"):
        L.family_task(np.random.default_rng(0), "x", "nope")


@pytest.mark.slow
def test_quick_learning_run_scores_every_phase(tmp_path):
    rows = L.run(Context(quick=True, out=tmp_path, options={"steps": "10", "tasks": "40"}))
    cases = [r.case for r in rows]
    assert cases == ["mix pretraining loss (10 steps)", "mix seen", "mix held-out", "mix held-out + TTFT"]
    assert rows[0].value < rows[0].baseline_value   # the loss went down
    for r in rows[1:]:
        assert r.extra["tasks"] == 4 and 0.0 <= r.extra["parse_rate"] <= 1.0 and "correct_size" in r.extra
    assert rows[3].extra["trained"] == 4 and rows[2].extra["trained"] == 0
    assert rows[3].extra["steps_per_task"] >= 1 and rows[2].extra["steps_per_task"] == 0
    assert (tmp_path / "learning-loss.png").stat().st_size > 1000


def test_train_log_curve_counts_a_resumed_step_once(tmp_path):
    lines = [
        {"event": "train", "step": 10, "tokens": 100, "tokens_per_s": 50.0},
        {"event": "val", "step": 10, "loss": 2.0},
        {"event": "train", "step": 20, "tokens": 100, "tokens_per_s": 50.0},
        # stopped after step 20, resumed from the checkpoint at 10: step 20 is logged again
        {"event": "resume", "step": 10},
        {"event": "train", "step": 20, "tokens": 120, "tokens_per_s": 60.0},
        {"event": "val", "step": 20, "loss": 1.5},
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n{\"cut")
    cum, val, speed = L.train_log_curve(tmp_path)
    assert cum == {10: 100, 20: 220} and val == {10: 2.0, 20: 1.5} and speed == 50.0
    assert L._tokens_at(cum, 15) == 160 and L._tokens_at(cum, 0) == 0


def test_log_linear_fit_finds_where_a_rising_trend_meets_the_bar():
    tokens = [1e6, 1e7, 1e8]
    assert L.fit_log_linear(tokens, [0.1, 0.2, 0.3], 0.5) == pytest.approx(1e10)
    assert L.fit_log_linear(tokens, [0.3, 0.2, 0.1], 0.5) is None      # falling: no estimate
    assert L.fit_log_linear([1e6], [0.1], 0.5) is None
    assert L._pick(list(range(10)), 4) == [0, 3, 6, 9] and L._pick([1, 2], 6) == [1, 2]


@pytest.mark.slow
def test_curve_scores_the_snapshots_of_a_training_run(tmp_path):
    from arcfast.run.train import FinetuneConfig, run_train

    run = tmp_path / "run"
    run_train(FinetuneConfig(data=["arc1:train[:4]"], model="tiny", out=str(run), full=True, steps=4,
                             save_every=2, keep_snapshots=True, log_every=1, lr=1e-3, row_len=2048,
                             max_len=2048, progress=False, threads=1))
    rows = L.run(Context(quick=True, out=tmp_path / "out", options={
        "synthetic": "0", "curve": str(run), "curve_tasks": "arc1:train[:2]", "curve_budget": "60"}))
    steps = [r.extra["step"] for r in rows if r.case.startswith("curve step")]
    assert steps == [2, 4]
    tokens = [r.extra["tokens"] for r in rows if r.case.startswith("curve step")]
    assert 0 < tokens[0] < tokens[1]
    fits = [r for r in rows if r.case.startswith("curve: tokens to")]
    assert [r.case.split()[3] for r in fits] == ["parse_rate", "correct_size", "vote_2"]
    assert (tmp_path / "out" / "learning-curve.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="keep-snapshots"):
        L.run(Context(quick=True, out=tmp_path / "o2", options={"synthetic": "0", "curve": str(tmp_path)}))
