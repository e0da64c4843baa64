"""The TTFT-ablations benchmark: its generated rules, its intervals, and one quick run of every row."""
import json

import numpy as np
import pytest

from arcfast.bench import bench_ttft_ablations as A
from arcfast.bench.runner import Context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("rule", A.RULES)
def test_rule_tasks_follow_their_rule_cell_by_cell(rule):
    rng = np.random.default_rng(3)
    tasks = [A.rule_task(rng, f"{rule}-{i}", rule) for i in range(30)]
    ks = set()
    for t in tasks:
        assert len(t.train) == 4 and len(t.test) == 1
        outs = [p.output for p in (*t.train, *t.test)]
        # one colour k per task, read off the cells the rule paints with it
        painted = np.concatenate([np.where(p.input > 0, p.output, p.output)[(p.input > 0) if rule == "paint" else (p.input == 0)]
                                  for p in (*t.train, *t.test)])
        assert len(set(painted.tolist())) == 1 and painted[0] != 0
        k = int(painted[0])
        ks.add(k)
        for p in (*t.train, *t.test):
            g, fg = p.input, p.input > 0
            assert g.shape == A.SIZE and p.output.dtype == np.uint8 and (~fg).any() and len(np.unique(g[fg])) >= 2
            want = {"paint": np.where(fg, k, 0), "invert": np.where(fg, 0, k), "fill": np.where(fg, g, k),
                    "flood": np.full_like(g, k)}[rule]
            assert np.array_equal(p.output, want) and not np.array_equal(p.output, g)
        assert len(outs) == 5
    assert len(ks) >= 5      # k is drawn per task
    a = A.held_out_tasks(np.random.default_rng(1), 6)
    assert [t.id for t in a] == ["invert-0", "fill-1", "invert-2", "fill-3", "invert-4", "fill-5"]
    assert a == A.held_out_tasks(np.random.default_rng(1), 6)
    with pytest.raises(ValueError, match="rule"):
        A.rule_task(rng, "x", "rotate")


def test_wilson_interval():
    lo, hi = A.wilson(0, 120)
    assert lo == 0.0 and abs(hi - 0.0310) < 1e-3            # 3/n rule of thumb: 0.025
    lo, hi = A.wilson(120, 120)
    assert abs(lo - 0.9690) < 1e-3 and hi == 1.0
    lo, hi = A.wilson(60, 120)
    assert abs(lo - 0.4113) < 1e-3 and abs(hi - 0.5887) < 1e-3   # textbook values for 50% of 120
    assert A.wilson(0, 0) == (0.0, 1.0)


def test_unknown_options_rows_and_rules_are_refused():
    for opt in ({"nope": "1"}, {"rows": "base,magic"}, {"rules": "invert,rotate"}):
        with pytest.raises(ValueError, match="unknown"):
            A._settings(Context(quick=True, options=opt))


@pytest.mark.slow
def test_quick_run_measures_every_row_and_writes_table_chart_and_json(tmp_path):
    from arcfast.bench.runner import main

    assert main(["-k", "ttft-ablations", "--quick", "--out", str(tmp_path)]) == 0
    results = list(tmp_path.glob("*-cpu-quick.json"))
    assert len(results) == 1
    rows = json.loads(results[0].read_text())["rows"]
    cases = [r["case"].split(":")[0] for r in rows]
    assert cases == ["pretraining loss (paint, last 5% of steps)", "paint held-out (the pretrained rule), no TTFT",
                     *A.ROWS]
    by = {r["case"].split(":")[0]: r for r in rows}
    for name in A.ROWS:
        e = by[name]["extra"]
        assert e["tasks"] == 4 and e["seeds"] == 1 and e["seconds"] > 0
        for key in ("vote_2", "pass_n", "accuracy"):
            lo, hi = e[f"{key}_ci95"]
            assert 0 <= lo <= e[key] <= hi <= 100
        assert set(e["by_rule"]) == {"invert", "fill"} and e["failed"] == []
    assert by["base"]["baseline"] is None and by["loo"]["baseline"] == "no TTFT"
    assert by["poe"]["extra"]["select"] == "poe" and "vote_2_vote" in by["poe"]["extra"]
    assert by["verify"]["extra"]["select"] == "vote+verify"
    table = (tmp_path / "ttft-ablations.md").read_text()
    assert table.count("\n| ") == len(A.ROWS) + 2 and "[95% CI]" in table   # header, control, rows
    assert (tmp_path / "ttft-ablations.png").stat().st_size > 5000
