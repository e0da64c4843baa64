"""report.html at the size of a full evaluation run: the 400 tasks of ARC-AGI-1's evaluation set,
96 predictions per test input, spread over up to 32 distinct grids each (the right output and
copies of it with cells changed), every candidate re-scored under 8 augmentations and verified,
ranked by four selectors, and a log of 13 groups of 32 tasks with 60 training steps each.

Measured against what the page promises: its size (at most 15 MB), the seconds to build it
beside the seconds of report.json/md/png from the same records (the budget keeps time for it),
and, where Chromium and Playwright are installed, the seconds from opening the file to a page
that answers a click (at most 3 s) and to a task drawn. ``ctx.quick``: 40 tasks.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..arc.loading import load_tasks
from ..files import write_json
from ..run.html import RunView, write_report_html
from ..run.records import TaskRun, score_record, write_task_record
from ..run.outdir import OutDir
from .runner import Context, Row

MAX_MB = 15.0
MAX_OPEN_S = 3.0
PREDICTIONS = 96
DISTINCT = 32
GROUP = 32
STEPS = 60
SELECTORS = ("vote", "poe", "nvarc", "verify")


def _candidates(rng, right: np.ndarray) -> list[dict]:
    """Up to DISTINCT grids whose counts sum to PREDICTIONS (less a few that did not parse)."""
    n = int(rng.integers(1, DISTINCT + 1))
    counts = np.sort(rng.multinomial(PREDICTIONS - int(rng.integers(0, 5)), np.ones(n) / n))[::-1]
    out = []
    for k, c in enumerate(counts):
        if c == 0:
            continue
        g = right.copy()
        if k > 0:
            cells = rng.integers(0, g.size, int(rng.integers(1, max(2, g.size // 10))))
            g.flat[cells] = rng.integers(0, 10, len(cells))
        out.append({"grid": g.tolist(), "count": int(c), "mean_logprob": float(-rng.random()),
                    "logprobs": [float(-3 * rng.random()) for _ in range(8)],
                    "verdicts": [float(rng.random()) for _ in range(8)],
                    "found_by": {"sample": int(c)}, "rank": {}})
    for s in SELECTORS:
        for r, k in enumerate(rng.permutation(len(out))):
            out[int(k)]["rank"][s] = r
    return out


def make_run(root: Path, n_tasks: int, seed: int = 0) -> list:
    """A run directory as `arcfast ttft` writes it, of ``n_tasks`` evaluation tasks; returns them."""
    rng = np.random.default_rng(seed)
    tasks = load_tasks(f"arc1:eval[:{n_tasks}]")
    paths = OutDir(root)
    t0 = 1.8e9
    log = [{"event": "start", "budget": 11 * 3600.0, "margin": 300.0, "elapsed": 20.0, "time": t0,
            "config": {"tasks": f"arc1:eval[:{n_tasks}]", "model": "Qwen2.5-0.5B", "budget": 11 * 3600.0}}]
    clock = 20.0
    for g, start in enumerate(range(0, len(tasks), GROUP), 1):
        group = tasks[start:start + GROUP]
        log.append({"event": "group_start", "group": g, "tasks": [t.id for t in group], "elapsed": clock})
        loss = np.full(len(group), 1.2)
        for step in range(STEPS):
            loss *= rng.uniform(0.9, 1.0, len(group))
            log.append({"event": "step", "group": g, "step": step, "loss": float(loss.mean()),
                        "losses": [round(float(x), 5) for x in loss], "lr": 1e-4, "tokens_per_s": 9e4})
        phases = {"train": 1500.0, "predict": 600.0, "rescore": 120.0, "verify": 90.0, "write": 3.0}
        end = clock + sum(phases.values())
        log.append({"event": "group", "group": g, "tasks": [t.id for t in group], "failed": False, "start": clock,
                    "end": end, **phases})
        clock = end
        for i, t in enumerate(group):
            r = TaskRun(t.id, steps=STEPS, train_seconds=1500.0 / len(group), inference_seconds=813.0 / len(group),
                        final_loss=float(loss[i]), fingerprint=t.fingerprint())
            for q in t.test:
                cands = _candidates(rng, q.output)
                top = sorted(cands, key=lambda c: c["rank"]["poe"])[:2]
                r.candidates.append(cands)
                r.attempts.append([c["grid"] for c in top])
                r.votes.append(top[0]["count"])
                r.predictions.append(PREDICTIONS)
            r.metrics, r.selection = score_record(t, r)
            write_task_record(paths.task_file(t.id), r)
    (root / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    write_json(root / "run.json", {"tasks": len(tasks), "seconds": clock + 10, "budget": 11 * 3600.0,
                                   "margin": 300.0, "backend": "native", "device": "cuda:0 (NVIDIA L4)",
                                   "command": f"arcfast ttft --tasks arc1:eval[:{n_tasks}] --budget 11h",
                                   "model": "Qwen2.5-0.5B", "problems": []})
    return tasks


def _open_in_chromium(path: Path) -> dict:
    """Seconds from navigation to a page that answers (its script ran: body[data-ready]), and from
    a click on a task row to that task drawn; empty where no browser can be driven."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed"}
    if chromium is None:
        return {"skipped": "no Chromium found"}
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        page = browser.new_page()
        page.goto("about:blank")
        best_open, best_click = float("inf"), float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            best_open = min(best_open, time.perf_counter() - t0)
            t0 = time.perf_counter()
            page.locator("#task-table tr.task").nth(0).click()
            page.wait_for_selector(".detail-cell .grid", timeout=30_000)
            best_click = min(best_click, time.perf_counter() - t0)
        browser.close()
    return {"open_s": best_open, "click_s": best_click}


def run(ctx: Context) -> list[Row]:
    n = 40 if ctx.quick else 400
    root = Path(tempfile.mkdtemp(prefix="arcfast-bench-report-"))
    try:
        tasks = make_run(root, n)
        t0 = time.perf_counter()
        view = RunView.read(root, tasks=tasks)
        path = write_report_html(view)
        html_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        view.report().write(root, plot=True)
        others_s = time.perf_counter() - t0
        mb = path.stat().st_size / 1e6
        cases = f"{n} tasks x {PREDICTIONS} predictions"
        rows = [
            Row("report", f"report.html size, {cases}", mb, "MB", baseline="the promised limit",
                baseline_value=MAX_MB, higher_is_better=False, bar=1.0),
            Row("report", f"report.html build seconds, {cases}", html_s, "s",
                baseline="report.json + md + png, same records", baseline_value=others_s, higher_is_better=False,
                extra={"seconds_per_task": html_s / n}),
        ]
        browser = _open_in_chromium(path)
        if "open_s" in browser:
            rows.append(Row("report", f"Chromium: open to interactive, {cases}", browser["open_s"], "s",
                            baseline="the promised limit", baseline_value=MAX_OPEN_S, higher_is_better=False, bar=1.0,
                            extra={"click_to_task_drawn_s": browser["click_s"]}))
        else:
            rows.append(Row("report", f"Chromium: not measured ({browser['skipped']})", 0.0, "s"))
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
