"""The budget benchmark: one quick run beside busy processes, its row and what the row records."""
import pytest

from arcfast.bench import bench_budget as B
from arcfast.bench.runner import Context


def test_load_starts_and_stops_its_processes():
    with B.Load(2) as load:
        assert load.running() == 2
        procs = list(load.procs)
    assert all(p.poll() is not None for p in procs)
    with B.Load(3, after=60.0) as late:       # the timer never fires: nothing to stop
        assert late.running() == 0


@pytest.mark.slow
def test_a_quick_budget_row(tmp_path):
    ctx = Context(quick=True, out=tmp_path, options={"loads": "1", "budget": "15", "tasks": "arc1:eval[:1]"})
    (row,) = B.run(ctx)
    run = row.extra["runs"][0]
    assert row.baseline_value == 15.0 and row.value == run["wall_s"] and not row.higher_is_better
    assert run["busy_running"] == 1 and run["exit"] == 0 and run["submission"]
    assert row.extra["held"] == (run["wall_s"] <= 15.0)
    assert row.ratio == pytest.approx(15.0 / run["wall_s"])
    with pytest.raises(ValueError, match="unknown option"):
        B._settings(Context(options={"nope": "1"}))
