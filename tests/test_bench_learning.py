"""The learning benchmark: its generated tasks, and one quick run end to end."""
import numpy as np
import pytest

from arcfast.augment import Augmentation
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
    """The dihedral transforms (numbered as arcfast.augment does) that map every input to its output."""
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
    assert (tmp_path / "learning-loss.png").stat().st_size > 1000
