"""One run as report.html shows it, read from its directory: the tasks and their records, the
run's time line and each task's loss curve from ``log.jsonl``, its metrics, and each task's
candidates with everything recorded about them.

:class:`RunView` reads a run directory written by this version or an earlier one (a record or a
log line of an earlier version lacks fields; what it lacks is shown as unknown, never guessed).
The task grids (train pairs, test inputs, right outputs) are not part of a run directory: they
are loaded again from the run's task source (or one given), or handed over by the run itself.

Everything here is plain data (dicts, lists, strings, numbers) for :mod:`arcfast.run.html.page`
to put into the page; grids are stored as compact strings (:func:`grid_code`).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..records import TaskRun, read_task_records, score_record
from ...answers.metrics import score_task
from ...budget.clock import default_margin
from ..report import RunReport, TaskResult, task_result
from ..outdir import task_id_from_filename

log = logging.getLogger("arcfast.run.html")

# The standard ARC palette, colours 0-9 (as the ARC Prize task viewer draws them).
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
# Candidates drawn per test input; the rest are counted (their number and their votes).
TOP_CANDIDATES = 8
# A task's status, as the task table filters it.
STATUSES = ("solved", "unsolved", "answered", "unanswered", "error", "skipped")
PHASES = ("train", "predict", "rescore", "verify", "write")


def grid_code(grid) -> Optional[str]:
    """A grid as ``"HxW:cells"``, one digit per cell, row by row (``None`` stays ``None``)."""
    if grid is None:
        return None
    g = np.asarray(grid, dtype=np.uint8)
    if g.ndim != 2 or g.size == 0 or int(g.max()) > 9:
        raise ValueError(f"not an ARC grid: shape {g.shape}")
    return f"{g.shape[0]}x{g.shape[1]}:" + "".join(map(str, g.ravel().tolist()))


def _finite(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _same(a, b) -> bool:
    return a is not None and b is not None and np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))


# ----------------------------------------------------------------------------------------------
# the log: groups, the time line and the loss curves

def read_events(root: Path) -> list[dict]:
    """Every JSON line of the run's logs (``log.jsonl``, and ``log.rank<k>.jsonl`` of several
    workers), each with ``rank`` set; unreadable lines are skipped."""
    out = []
    paths = sorted(root.glob("log.rank*.jsonl")) or [root / "log.jsonl"]
    for path in paths:
        rank = int(path.stem[len("log.rank"):]) if path.stem.startswith("log.rank") else 0
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue   # a line cut short by a kill
            if isinstance(e, dict):
                e.setdefault("rank", rank)
                e["_file"] = rank
                out.append(e)
    return out


def _sessions(events: list[dict]) -> list[list[dict]]:
    """The events of each start of the run (a resumed run appends to its log), per log file."""
    out: list[list[dict]] = []
    current = None
    for e in events:
        if e.get("event") == "start" or current is None or e["_file"] != current[0]["_file"]:
            current = [e]
            out.append(current)
        else:
            current.append(e)
    return out


@dataclass
class Group:
    """One group of tasks trained and answered together, as the log tells it."""

    label: str
    rank: int
    tasks: list
    start: Optional[float] = None       # seconds since the process started (the budget's clock)
    end: Optional[float] = None
    phases: list = field(default_factory=list)    # [[name, from_s, to_s]]
    failed: bool = False
    losses: dict = field(default_factory=dict)   # task id -> [[step, loss]]
    loss_kind: str = "task"                       # "task", or "group" (an older log: the group's mean)


def _groups_of_session(events: list[dict]) -> tuple[list[Group], bool]:
    """The groups of one session of the log, and whether they were reconstructed from an older
    log (no ``group`` events: phases from the events' own times, losses the group's mean)."""
    first = events[0]
    t0 = first["time"] - first.get("elapsed", 0.0) if isinstance(first.get("time"), (int, float)) else 0.0
    rank = first.get("rank", 0)
    if any(e.get("event") == "group" for e in events):
        groups: dict = {}
        for e in events:
            kind = e.get("event")
            if kind == "group_start":
                groups[e["group"]] = Group(f"group {e['group']}", rank, list(e.get("tasks", [])),
                                           start=e.get("elapsed"))
            elif kind == "step" and e.get("group") in groups and isinstance(e.get("losses"), list):
                g = groups[e["group"]]
                for tid, x in zip(g.tasks, e["losses"]):
                    if x is not None:
                        g.losses.setdefault(tid, []).append([e.get("step"), x])
            elif kind == "group" and e.get("group") in groups:
                g = groups[e["group"]]
                g.end, g.failed = e.get("end"), bool(e.get("failed"))
                t = e.get("start", g.start) or 0.0
                if e.get("train") is not None:
                    g.phases.append(["train", t, t + e["train"]])
                    t += e["train"]
                for name in ("predict", "rescore", "verify"):
                    if e.get(name) is not None:
                        g.phases.append([name, t, t + e[name]])
                        t += e[name]
                if e.get("write") is not None and g.end is not None:
                    g.phases.append(["write", g.end - e["write"], g.end])
        return list(groups.values()), False
    # An older log: a group is told by the first event naming its tasks (predict, or no_training);
    # the steps logged since the previous group are its steps.
    groups_list: list[Group] = []
    pending_steps: list = []
    last_end = None
    start_time = first.get("time", t0)
    for e in events:
        kind, t = e.get("event"), e.get("time")
        if kind == "step":
            pending_steps.append(e)
            continue
        if kind in ("predict", "no_training") and isinstance(e.get("tasks"), list):
            tasks = list(e["tasks"])
            if not groups_list or groups_list[-1].tasks != tasks:
                g = Group(f"group {len(groups_list) + 1}", rank, tasks,
                          start=(last_end if last_end is not None else start_time) - t0, loss_kind="group")
                groups_list.append(g)
                if pending_steps:
                    g.phases.append(["train", g.start, pending_steps[-1]["time"] - t0])
                    curve = [[s.get("step"), s.get("loss")] for s in pending_steps if s.get("loss") is not None]
                    g.losses = {tid: curve for tid in tasks}
                pending_steps = []
        elif kind not in ("rescore", "verify") or not groups_list:
            continue
        if kind in ("predict", "rescore", "verify") and isinstance(t, (int, float)) \
                and isinstance(e.get("seconds"), (int, float)):
            groups_list[-1].phases.append([kind, t - e["seconds"] - t0, t - t0])
        if isinstance(t, (int, float)):
            groups_list[-1].end = t - t0
            last_end = t
    return groups_list, True


def read_groups(events: list[dict]) -> tuple[list[Group], bool]:
    """The groups of the run's latest session in each log file (earlier sessions of a resumed run
    are superseded), and whether any was reconstructed from an older log."""
    latest: dict = {}
    for s in _sessions(events):
        latest[s[0]["_file"]] = s
    groups, old = [], False
    for f in sorted(latest):
        gs, o = _groups_of_session(latest[f])
        if len(latest) > 1:
            for g in gs:
                g.label = f"rank {f} {g.label}"
        groups += gs
        old = old or o
    return groups, old


def _loss_curves(events: list[dict]) -> dict:
    """task id -> (its loss curve [[step, loss]], "task" or "group"), over every session (a task's
    latest curve wins)."""
    out: dict = {}
    for s in _sessions(events):
        for g in _groups_of_session(s)[0]:
            for tid, curve in g.losses.items():
                if curve:
                    out[tid] = (curve, g.loss_kind)
    return out


# ----------------------------------------------------------------------------------------------
# the run

@dataclass
class RunView:
    """A run directory, read (see the module docstring)."""

    root: Path
    summary: dict                      # run.json ({} when the run was interrupted before it)
    meta: dict                         # report.json's meta: the run's config
    title: str
    records: dict                      # task id -> TaskRun
    tasks: dict                        # task id -> Task, where the task source could be loaded
    order: list                        # every task id of the run, in run order
    events: list
    problems: list = field(default_factory=list)    # notes on what could not be read
    failed: dict = field(default_factory=dict)      # task id -> why, for failed tasks (no record kept)
    unreadable: list = field(default_factory=list)  # [(file name, why)]

    @classmethod
    def read(cls, root: Union[str, Path], tasks: Optional[Sequence] = None, task_source: Optional[str] = None,
             solutions: Optional[str] = None) -> "RunView":
        """Read the run directory ``root``. ``tasks``: the run's tasks, when the caller has them;
        otherwise they are loaded from ``task_source`` (default: the source in the run's config)
        with ``solutions`` (default: the run's). With ``solutions`` given, every record is scored
        anew against them (:func:`arcfast.run.records.score_record`)."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a run directory")
        if not (root / "tasks").is_dir() and not (root / "run.json").is_file() and not (root / "report.json").is_file():
            raise ValueError(f"{root}: not a run directory (no tasks/, run.json or report.json)")
        problems: list = []

        def read_json(name):
            try:
                return json.loads((root / name).read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as e:
                problems.append(f"{name}: unreadable ({e})")
                return None

        # Several workers: rank 0's summary speaks for the whole run.
        summary = read_json("run.json") or read_json("run.rank0.json") or {}
        report = read_json("report.json") or {}
        events = read_events(root)
        meta = dict(report.get("meta") or {})
        if not isinstance(meta.get("config"), dict):
            # A run stopped before its report: the config its log started with.
            start = next((e for e in reversed(events) if e.get("event") == "start"
                          and isinstance(e.get("config"), dict)), None)
            meta["config"] = start["config"] if start else {}
        config = meta["config"]
        # Solutions given to an earlier `arcfast report --solutions` stay with the run's report.
        solutions = solutions or meta.get("scored_with")
        records, unreadable = {}, []
        if (root / "tasks").is_dir():
            for path, rec in read_task_records(root / "tasks"):
                if isinstance(rec, Exception):
                    unreadable.append((path.name, str(rec)))
                elif task_id_from_filename(path.stem) not in (None, rec.task_id):
                    unreadable.append((path.name, f"holds task {rec.task_id!r}, not the one its name says"))
                else:
                    records[rec.task_id] = rec
        if tasks is None:
            source = task_source or config.get("tasks")
            if source:
                from ...arc.loading import load_tasks

                found: list = []
                try:
                    tasks = load_tasks(source, solutions=solutions or config.get("solutions"), on_error="skip",
                                       problems=found)
                    if solutions:
                        meta["scored_with"] = str(solutions)
                except Exception as e:   # moved or gone: the answers are still shown
                    problems.append(f"the tasks ({source}) could not be loaded: {e}; their grids are not shown")
                    tasks = []
                known = set(map(str, summary.get("problems") or []))   # the run's own: listed below
                new = [p for p in found if str(p) not in known]
                if new:
                    problems.append(f"{len(new)} problems loading {source} now; first: {new[0]}")
            else:
                problems.append("the run names no task source; task grids are not shown")
                tasks = []
        problems += [f"input problem: {p}" for p in summary.get("problems") or []]
        by_id = {t.id: t for t in tasks}
        if solutions:
            for tid, rec in records.items():
                if tid in by_id and by_id[tid].has_solutions:
                    rec.metrics, rec.selection = score_record(by_id[tid], rec)
        order = [t.id for t in tasks]
        try:
            sub = json.loads((root / "submission.json").read_text())
            order += [tid for tid in sub if tid not in by_id]
        except (OSError, ValueError):
            pass
        known = set(order)
        order += [tid for tid in records if tid not in known]
        # A task whose group failed keeps no record (a --resume run tries it again): its log says why.
        failed = {}
        for e in events:
            if e.get("event") == "group_failed" and isinstance(e.get("tasks"), list):
                failed.update({tid: f"failed, fallback answers: {e.get('error', '')}" for tid in e["tasks"]})
            elif e.get("event") == "task" and e.get("error") and isinstance(e.get("task"), str):
                failed[e["task"]] = e["error"]
        return cls(root=root, summary=summary, meta=meta, failed=failed, title=report.get("title") or f"arcfast run: {root.name}",
                   records=records, tasks=by_id, order=order, events=events, problems=problems,
                   unreadable=unreadable)

    # -- what the run says of itself ----------------------------------------------------------
    @property
    def config(self) -> dict:
        c = self.meta.get("config")
        return c if isinstance(c, dict) else {}

    def report(self) -> RunReport:
        """The run's :class:`RunReport` (report.json/md/png), built from its records."""
        rep = RunReport(title=self.title, meta=self.meta)
        for tid in self.order:
            r, task = self.records.get(tid), self.tasks.get(tid)
            if r is not None and (r.metrics is not None or task is None or not task.has_solutions):
                rep.add(task_result(r))
            elif task is not None and task.has_solutions:
                # As run.json counts it: a task with known outputs and no answer scores as unanswered.
                rep.add(TaskResult(tid, metrics=score_task(task, None), error=self.failed.get(tid) or (r and r.error)))
        return rep

    def status(self, task_id: str) -> str:
        """One of :data:`STATUSES`: ``skipped`` (no record: not reached, or not loadable),
        ``error`` (the task failed, or part of it did), ``unanswered`` (no grid parsed),
        ``solved`` / ``unsolved`` (``vote_2`` is 1, or less, where solutions are known), or
        ``answered`` (solutions unknown)."""
        r = self.records.get(task_id)
        if r is None:
            return "error" if task_id in self.failed else "skipped"
        if r.error:
            return "error"
        if not any(r.votes):
            return "unanswered"
        if r.metrics is None:
            return "answered"
        return "solved" if r.metrics.get("vote_2", 0.0) >= 1.0 else "unsolved"

    def header(self) -> dict:
        """The page's first lines: command line, model, backend, device, budget, wall time."""
        c, s = self.config, self.summary
        start = next((e for e in reversed(self.events) if e.get("event") == "start"), {})
        budget = s.get("budget", c.get("budget"))
        margin = start.get("margin", c.get("margin"))
        return {
            "command": s.get("command") or "",
            "model": c.get("model", ""),
            "backend": s.get("backend", c.get("backend", "")),
            "backend_reason": s.get("backend_reason", ""),
            "device": s.get("device") or start.get("device") or c.get("device") or "",
            "budget": budget,
            "margin": margin,
            "seconds": s.get("seconds"),
            "tasks": len(self.order),
            "tasks_source": c.get("tasks", ""),
            "select": c.get("select") or s.get("select") or "vote",
            "interrupted": not s,
        }

    def timeline(self) -> dict:
        """Per group, its phases against the budget and the deadline (seconds of the run)."""
        groups, old = read_groups(self.events)
        h = self.header()
        budget = h["budget"]
        margin = h["margin"]
        if budget is not None and margin is None:
            margin = default_margin(budget)
        return {
            "budget": budget,
            "deadline": budget - margin if budget is not None and margin is not None else None,
            "seconds": h["seconds"],
            "reconstructed": old,
            # A resumed run appends to its log: the time line is its latest start's.
            "starts": sum(1 for e in self.events if e.get("event") == "start" and e.get("_file") == 0),
            "groups": [{"label": g.label, "tasks": g.tasks, "start": g.start, "end": g.end, "failed": g.failed,
                        "phases": [[n, round(a, 3), round(b, 3)] for n, a, b in g.phases if b >= a]}
                       for g in groups],
        }

    # -- the task table and each task -----------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row per task of the run, in run order."""
        out = []
        for i, tid in enumerate(self.order):
            r = self.records.get(tid)
            m = r.metrics if r is not None else None
            out.append({
                "i": i, "id": tid, "status": self.status(tid),
                "steps": r.steps if r else None,
                "seconds": round(r.train_seconds + r.inference_seconds, 3) if r else None,
                "loss": _finite(r.final_loss) if r else None,
                "votes": " ".join(f"{v}/{n}" for v, n in zip(r.votes, r.predictions)) if r else "",
                "share": (sum(r.votes) / sum(r.predictions)) if r and sum(r.predictions) else None,
                "pass_n": m.get("pass_n") if m else None,
                "vote_2": m.get("vote_2") if m else None,
                "error": (r.error or "") if r else self.failed.get(tid, ""),
            })
        return out

    def detail(self, task_id: str, curves: Optional[dict] = None, top: int = TOP_CANDIDATES) -> dict:
        """Everything the page draws when the task is opened (grids as :func:`grid_code`)."""
        task = self.tasks.get(task_id)
        r: Optional[TaskRun] = self.records.get(task_id)
        curves = _loss_curves(self.events) if curves is None else curves
        out = {"id": task_id, "status": self.status(task_id),
               "error": r.error if r else self.failed.get(task_id),
               "grids_known": task is not None,
               "train": [[grid_code(p.input), grid_code(p.output)] for p in task.train] if task else [],
               "metrics": r.metrics if r else None, "selection": r.selection if r else None,
               "objective_losses": r.objective_losses if r else None, "tests": []}
        if task_id in curves:
            out["loss"], out["loss_kind"] = curves[task_id]
        n_tests = max(len(task.test) if task else 0, len(r.candidates or r.attempts) if r else 0)
        for ti in range(n_tests):
            pair = task.test[ti] if task and ti < len(task.test) else None
            right = pair.output if pair is not None else None
            attempts = (r.attempts[ti] if r and ti < len(r.attempts) else []) or []
            cands = (r.candidates[ti] if r and ti < len(r.candidates) else []) or []
            shown, more_grids, more_votes = [], 0, 0
            for k, c in enumerate(cands):
                if k >= top:
                    more_grids += 1
                    more_votes += int(c.get("count") or 0)
                    continue
                verdicts = c.get("verdicts")
                shown.append({
                    "grid": grid_code(c.get("grid")),
                    "count": c.get("count"),
                    "mean_logprob": _finite(c.get("mean_logprob")),
                    "logprobs": [_finite(x) for x in c.get("logprobs")] if c.get("logprobs") else None,
                    "p_right": (sum(verdicts) / len(verdicts)) if verdicts else None,
                    "verdicts": verdicts,
                    "found_by": c.get("found_by") or {},
                    "rank": c.get("rank") or {},
                    "submitted": next((a + 1 for a, g in enumerate(attempts) if _same(g, c.get("grid"))), 0),
                    "right": _same(c.get("grid"), right) if right is not None else None,
                })
            out["tests"].append({
                "input": grid_code(pair.input) if pair is not None else None,
                "output": grid_code(right),
                "attempts": [{"grid": grid_code(g), "right": _same(g, right) if right is not None else None}
                             for g in attempts],
                "candidates": shown, "more_grids": more_grids, "more_votes": more_votes,
                "predictions": r.predictions[ti] if r and ti < len(r.predictions) else 0,
            })
        return out

    def details(self) -> list[dict]:
        curves = _loss_curves(self.events)
        return [self.detail(tid, curves) for tid in self.order]


__all__ = ["PALETTE", "PHASES", "STATUSES", "TOP_CANDIDATES", "Group", "RunView", "grid_code", "read_events",
           "read_groups"]
