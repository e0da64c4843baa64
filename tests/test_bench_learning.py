"""The learning benchmark: its generated tasks, and one quick run end to end."""
import numpy as np
import pytest

from arcfast.bench import bench_learning as L
from arcfast.bench.runner import Context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", L.FAMILIES)
def test_generated_tasks_are_well_formed_and_fixed_by_the_seed(family):
    a = [L.family_task(np.random.default_rng(5), f"t{i}", family) for i in range(3)]
    b = [L.family_task(np.random.default_rng(5), f"t{i}", family) for i in range(3)]
    assert a[0] == b[0]
    for t in a:
        assert len(t.train) == 4 and len(t.test) == 1
        for p in (*t.train, *t.test):
            assert 3 <= p.input.shape[0] <= 5 and 3 <= p.input.shape[1] <= 5 and p.input.dtype == np.uint8
            assert p.output.shape == p.input.shape and not np.array_equal(p.output, p.input)
            # The rule: zero stays zero; a colour maps to one colour throughout the task.
            assert ((p.input == 0) == (p.output == 0)).all()
        image: dict = {}
        for p in (*t.train, *t.test):
            for x, y in zip(p.input.flat, p.output.flat):
                image.setdefault(int(x), set()).add(int(y))
        assert all(len(ys) == 1 for ys in image.values()), image
    with pytest.raises(ValueError, match="family"):
        L.family_task(np.random.default_rng(0), "x", "nope")


@pytest.mark.slow
def test_quick_learning_run_scores_every_phase(tmp_path):
    rows = L.run(Context(quick=True, out=tmp_path, options={"steps": "10", "tasks": "40"}))
    cases = [r.case for r in rows]
    assert cases == ["perm3 pretraining loss (10 steps)", "perm3 seen", "perm3 held-out", "perm3 held-out + TTFT"]
    assert rows[0].value < rows[0].baseline_value   # the loss went down
    for r in rows[1:]:
        assert r.extra["tasks"] == 4 and 0.0 <= r.extra["parse_rate"] <= 1.0 and "correct_size" in r.extra
    assert rows[3].extra["trained"] == 4 and rows[2].extra["trained"] == 0
    assert (tmp_path / "learning-loss.png").stat().st_size > 1000
