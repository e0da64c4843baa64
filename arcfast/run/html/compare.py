"""Runs side by side (``arcfast compare``): each run's metrics, the tasks one run solved and another
did not (every run's attempts drawn beside the right output), and each task's time in each run.
This is how a recipe change is judged: the same tasks, two runs, what changed.

:func:`compare_table` is the printed form; :func:`render_compare` the page (``compare.html``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from ...answers.metrics import METRICS
from ...files import atomic_write
from ..report import json_safe
from .page import _asset, _now, environment
from .view import PALETTE, RunView, _same, grid_code


def labels_of(views: Sequence[RunView]) -> list[str]:
    """A short, distinct label per run: its directory's name (its path where names repeat)."""
    names = [v.root.name or str(v.root) for v in views]
    if len(set(names)) < len(names):
        names = [str(v.root) for v in views]
    return names


def compare_rows(views: Sequence[RunView]) -> list[dict]:
    """One row per task of any run (the first run's order, then the others'): per run its
    status, seconds and vote_2; ``differs`` when some run solved it and another did not."""
    order: list = []
    seen: set = set()
    for v in views:
        for tid in v.order:
            if tid not in seen:
                seen.add(tid)
                order.append(tid)
    rows = []
    for i, tid in enumerate(order):
        status = [v.status(tid) if tid in v.order else "absent" for v in views]
        seconds, vote_2 = [], []
        for v in views:
            r = v.records.get(tid)
            seconds.append(round(r.train_seconds + r.inference_seconds, 3) if r else None)
            vote_2.append(r.metrics.get("vote_2") if r is not None and r.metrics else None)
        solved = [s == "solved" for s in status]
        rows.append({"i": i, "id": tid, "status": status, "seconds": seconds, "vote_2": vote_2,
                     "solved_by": [k for k, s in enumerate(solved) if s],
                     "differs": any(solved) and not all(solved)})
    return rows


def compare_detail(views: Sequence[RunView], task_id: str) -> dict:
    """A task in every run: per test input, its input, its right output and each run's attempts."""
    task = next((v.tasks[task_id] for v in views if task_id in v.tasks), None)
    tests = []
    n = max([len(task.test) if task else 0] + [len(v.records[task_id].attempts) for v in views
                                               if task_id in v.records])
    for ti in range(n):
        pair = task.test[ti] if task is not None and ti < len(task.test) else None
        right = pair.output if pair is not None else None
        runs = []
        for v in views:
            r = v.records.get(task_id)
            attempts = (r.attempts[ti] if r is not None and ti < len(r.attempts) else []) or []
            runs.append({"status": v.status(task_id) if task_id in v.order else "absent",
                         "attempts": [{"grid": grid_code(g), "right": _same(g, right) if right is not None else None}
                                      for g in attempts]})
        tests.append({"input": grid_code(pair.input) if pair is not None else None, "output": grid_code(right),
                      "runs": runs})
    return {"id": task_id, "tests": tests}


def _runs(views: Sequence[RunView]) -> list[dict]:
    out = []
    for label, v in zip(labels_of(views), views):
        rep = v.report()
        tot = rep.totals()
        rows = v.rows()
        out.append({"label": label, "path": str(v.root), "header": v.header(), "overall": rep.overall(),
                    "selection": rep.selection(), "totals": tot,
                    "solved": sum(r["status"] == "solved" for r in rows),
                    "seconds": sum(r["seconds"] or 0.0 for r in rows)})
    return out


def compare_table(views: Sequence[RunView]) -> str:
    """The comparison as plain text: metrics per run, tasks solved, seconds, and the tasks solved
    by one run and not another."""
    runs = _runs(views)
    labels = [r["label"] for r in runs]
    width = max(12, *(len(x) for x in labels))
    lines = ["".ljust(16) + "".join(x.rjust(width + 2) for x in labels)]

    def line(name, cells):
        lines.append(name.ljust(16) + "".join(c.rjust(width + 2) for c in cells))

    for m in METRICS:
        line(m, ["–" if r["overall"] is None else f"{100 * r['overall'][m]:.1f}%" for r in runs])
    line("tasks", [str(r["totals"]["tasks"]) for r in runs])
    line("solved", [str(r["solved"]) for r in runs])
    line("task seconds", [f"{r['seconds']:.1f}" for r in runs])
    rows = compare_rows(views)
    for k, label in enumerate(labels):
        only = [r["id"] for r in rows if r["differs"] and k in r["solved_by"]]
        lines.append(f"solved by {label} and not by every other run: {len(only)}"
                     + (f" ({', '.join(only[:12])}{', …' if len(only) > 12 else ''})" if only else ""))
    return "\n".join(lines)


def render_compare(views: Sequence[RunView]) -> str:
    """The text of the comparison page."""
    if len(views) < 2:
        raise ValueError(f"compare needs two runs or more, got {len(views)}")
    rows = compare_rows(views)
    runs = _runs(views)
    index = json_safe({"palette": PALETTE, "labels": [r["label"] for r in runs], "rows": rows})
    selectors = []
    for r in runs:
        for s in (r["selection"] or {}):
            if s not in selectors:
                selectors.append(s)
    return environment().get_template("compare.html").render(
        title="arcfast compare: " + " vs ".join(index["labels"]), runs=runs, written=_now(), metric_names=METRICS,
        selectors=selectors, rows=rows, differs=sum(r["differs"] for r in rows), index=index,
        details=[json_safe(compare_detail(views, r["id"])) for r in rows],
        css=_asset("style.css"), js=_asset("grids.js") + "\n" + _asset("compare.js"))


def write_compare_html(views: Sequence[RunView], path: Union[str, Path]) -> Path:
    """Write the comparison page at ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write(path, render_compare(views).encode("utf-8", "backslashreplace"))
    return path


__all__ = ["compare_detail", "compare_rows", "compare_table", "labels_of", "render_compare", "write_compare_html"]
