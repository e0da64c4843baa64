"""The report benchmark's generated run is a run the readers accept: every record scores as its
metrics say, and the page built from it holds every task."""
from __future__ import annotations

import json
import re

from arcfast.bench.bench_report import PREDICTIONS, make_run, run
from arcfast.bench.runner import Context
from arcfast.run.html import RunView, render_report
from arcfast.run.records import read_task_records


def test_generated_run_reads_back(tmp_path):
    tasks = make_run(tmp_path, 6)
    records = [r for _, r in read_task_records(tmp_path / "tasks")]
    assert len(records) == 6 and all(sum(r.predictions) == PREDICTIONS * len(r.predictions) for r in records)
    assert all(r.metrics["pass_n"] == 1.0 for r in records)   # the right output is always a candidate
    view = RunView.read(tmp_path, tasks=tasks)
    assert [g["tasks"] for g in view.timeline()["groups"]] == [[t.id for t in tasks]]
    html = render_report(view)
    blocks = re.findall(r'<script type="application/json" id="task-\d+">(.*?)</script>', html, re.S)
    details = [json.loads(b) for b in blocks]
    assert [d["id"] for d in details] == [t.id for t in tasks]
    for d, r in zip(details, records):
        for t, cands in zip(d["tests"], r.candidates):
            assert len(t["candidates"]) == min(8, len(cands))
            assert t["more_grids"] == max(0, len(cands) - 8)
            assert t["more_votes"] == sum(c["count"] for c in cands[8:])


def test_quick_rows(tmp_path):
    rows = run(Context(quick=True, out=tmp_path))
    size = rows[0]
    assert size.unit == "MB" and 0 < size.value < 15 and size.meets_bar
    assert rows[1].value > 0 and rows[1].baseline_value > 0
