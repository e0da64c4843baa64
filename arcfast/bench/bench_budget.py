"""Does ``--budget`` hold on this machine when other processes compute beside the run?

    arcfast bench -k budget                                     # 0, 2, 4, 8 busy processes, 3 runs each
    arcfast bench -k budget --set loads=2,8 --set repeats=5 --set budget=60

Each run is ``arcfast ttft --tasks <tasks> --model <model> --budget <budget>`` in a fresh process
(what a user types: interpreter start-up, imports, the model, every write and the exit counted),
started beside ``n`` busy processes that really compute (a Python loop for a core, and a loop
copying 32 MB arrays for a core and the memory bandwidth, in turns) and timed from spawn to exit.
One row per load: the slowest run's wall seconds against the budget (the ratio is budget / wall:
at least 1 means the promise held), with every run's wall time, what it trained and answered, and
what the budget cut (steps abandoned, tasks left untrained).

This is a promise measured, not a throughput: run it on the machine a budget is meant for.
``tests/test_contention.py`` holds the same promise in the test suite at 30 s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .runner import Context, Row

BENCH = "budget"

# A core's worth of Python, and a core plus the memory bandwidth (32 MB arrays copied), in turns.
LOOPS = ("while True: pass",
         "import numpy as np\na = np.ones(1 << 22); b = np.empty_like(a)\nwhile True: np.copyto(b, a); a += 1")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Load:
    """``n`` busy processes (:data:`LOOPS` in turns), started on entry or ``after`` seconds later
    (a timer), all killed on exit. ``running()``: how many are still computing."""

    def __init__(self, n: int, after: float = 0.0):
        self.n, self.procs, self.lock = int(n), [], threading.Lock()
        self.timer = threading.Timer(after, self._start) if after > 0 else None

    def _start(self) -> None:
        with self.lock:
            if self.procs is None:   # exited before the timer fired
                return
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            self.procs += [subprocess.Popen([sys.executable, "-c", LOOPS[i % 2]], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                           for i in range(self.n)]

    def __enter__(self) -> "Load":
        if self.timer is None:
            self._start()
            if self.n:
                time.sleep(0.5)   # computing before the run starts
        else:
            self.timer.start()
        return self

    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs or [])

    def __exit__(self, *exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            procs, self.procs = self.procs, None
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def run_ttft(out: Path, tasks: str, model: str, budget: float, *extra: str, timeout: float = None):
    """``arcfast ttft`` in a process of its own: (wall seconds from spawn to exit, the completed
    process). ``timeout`` defaults to four budgets."""
    cmd = [sys.executable, "-m", "arcfast", "ttft", "--tasks", tasks, "--model", model, "--budget", f"{budget:g}s",
           "--out", str(out), "-q", *extra]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or 4 * budget)
    return time.monotonic() - t0, p


def _settings(ctx: Context) -> dict:
    from ..models import shipped_model

    q = ctx.quick
    s = dict(loads="0,2" if q else "0,2,4,8", repeats=1 if q else 3, budget=20.0 if q else 60.0,
             tasks="arc1:eval[:2]" if q else "arc1:eval[:6]",
             model="tiny" if q or shipped_model("starter") is None else "starter")
    for key, value in ctx.options.items():
        if key not in s:
            raise ValueError(f"unknown option {key!r} of -k {BENCH}; known: {', '.join(s)}")
        s[key] = type(s[key])(value)
    s["loads"] = [int(x) for x in str(s["loads"]).split(",")]
    return s


def one_run(out: Path, s: dict, n: int) -> dict:
    """One run beside ``n`` busy processes: its wall time and what its summary and log say."""
    with Load(n) as load:
        wall, p = run_ttft(out, s["tasks"], s["model"], s["budget"])
        still = load.running()
    summary = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
    return {"wall_s": round(wall, 2), "exit": p.returncode, "busy_running": still,
            "summary_s": summary.get("seconds"), "steps": sum(e["event"] == "step" for e in log),
            "trained": summary.get("trained"), "answered": summary.get("answered"),
            "steps_abandoned": summary.get("steps_abandoned"), "untrained": len(summary.get("untrained") or []),
            "submission": (out / "submission.json").exists()}


def run(ctx: Context) -> list[Row]:
    s = _settings(ctx)
    work = Path(tempfile.mkdtemp(prefix="arcfast-budget-"))
    rows = []
    try:
        for n in s["loads"]:
            runs = [one_run(work / f"load{n}-{i}", s, n) for i in range(s["repeats"])]
            worst = max(r["wall_s"] for r in runs)
            rows.append(Row(BENCH, f"ttft {s['tasks']} {s['model']}, {n} busy processes ({cores()} cores)", worst,
                            "s wall (slowest run)", "budget", s["budget"], higher_is_better=False, bar=1.0,
                            extra={"runs": runs, "settings": {k: v for k, v in s.items()},
                                   "held": all(r["wall_s"] <= s["budget"] and r["exit"] == 0 and r["submission"]
                                               for r in runs)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows
