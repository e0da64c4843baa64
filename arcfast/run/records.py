"""The record of one task's run, ``tasks/<name>.json``: one format, one writer, one reader.

:class:`TaskRun` is what `arcfast ttft` and `arcfast eval` write for every finished task (its
training, its answers and every candidate grid, its metrics); ``--resume`` reads them back, rank 0
of several workers merges them, and ``arcfast train --wrong-from RUN`` learns from their wrong
candidates. Records written by earlier versions load too.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..files import write_json

log = logging.getLogger("arcfast.run.records")


@dataclass
class TaskRun:
    """What happened to one task (written to ``tasks/<id>.json`` as soon as it is known)."""

    task_id: str
    steps: int = 0
    train_seconds: float = 0.0
    inference_seconds: float = 0.0
    train_tokens: int = 0
    generated_tokens: int = 0
    final_loss: Optional[float] = None
    # {objective: its loss at the task's last step that had its tokens}, for the objectives trained
    objective_losses: Optional[dict] = None
    # per train pair: how many training samples took it as their target (leave-one-out: all alike)
    targets: Optional[list] = None
    attempts: list = field(default_factory=list)   # per test input: up to 2 grids (lists)
    votes: list = field(default_factory=list)      # per test input: count of the winning grid
    predictions: list = field(default_factory=list)  # per test input: number of predictions
    # per test input: every distinct grid in voting order (see _candidate_record)
    candidates: list = field(default_factory=list)
    metrics: Optional[dict] = None
    # with known outputs: {selector: {"vote_1": x, "vote_2": y}} of every selector on the same candidates
    selection: Optional[dict] = None
    error: Optional[str] = None
    fingerprint: Optional[str] = None   # Task.fingerprint() of the task these answers are for
    # True: its adapter is under adapters/; False: writing it failed (see error); None: not asked
    adapter_saved: Optional[bool] = None


_FIELDS = frozenset(TaskRun.__dataclass_fields__)


def read_task_record(path: Union[str, Path]) -> TaskRun:
    """The record at ``path``. Records of other versions load too: fields added since take their
    defaults, and fields this version does not know (an earlier version's ``rescore``, the
    re-scored candidates' order) are dropped. Raises OSError or ValueError for a file that is not
    a record."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or not isinstance(record.get("task_id"), str):
        raise ValueError(f"{path}: not a task record (no task_id)")
    return TaskRun(**{k: v for k, v in record.items() if k in _FIELDS})


def read_task_records(folder: Union[str, Path]) -> list:
    """``[(path, TaskRun or the exception that made it unreadable)]`` of every ``*.json`` in
    ``folder``, in name order; each unreadable one is logged."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out.append((path, read_task_record(path)))
        except Exception as e:
            log.warning("%s: unreadable (%s); skipped", path, e)
            out.append((path, e))
    return out


def write_task_record(path: Union[str, Path], run: TaskRun) -> None:
    """Write ``run`` at ``path`` atomically (its directory made when missing)."""
    write_json(path, asdict(run))


def score_record(task, run: TaskRun) -> tuple:
    """``(metrics, selection)`` of the answers recorded in ``run``, scored against ``task``'s
    known test outputs: what the run itself would have written had it known them (``arcfast report
    --solutions`` scores a run made without). Every metric follows from what a record keeps: each
    distinct grid with its count (the predictions that did not parse are the rest of
    ``predictions``), the submitted attempts in order, and each candidate's place under each
    selector. A task with no answers scores as unanswered; raises ValueError when ``task`` lacks a
    test output."""
    from ..answers.metrics import score_task
    from ..answers.vote import Candidate, Prediction, check_grid

    n = len(task.test)
    if not run.predictions:
        return score_task(task, None), None
    per_test, chosen, ranked_by = [], [], []
    for ti in range(n):
        cands = run.candidates[ti] if ti < len(run.candidates or []) else []
        if not cands and ti < len(run.attempts or []):   # a record from before candidates were kept
            cands = [{"grid": g, "count": 1} for g in run.attempts[ti]]
        grids = [check_grid(c["grid"], f"task {run.task_id}: test {ti}") for c in cands]
        preds = [Prediction(grid=g) for g, c in zip(grids, cands) for _ in range(int(c.get("count") or 0))]
        total = run.predictions[ti] if ti < len(run.predictions) else len(preds)
        preds += [Prediction(grid=None)] * max(0, total - len(preds))
        per_test.append(preds)
        attempts = [check_grid(g, f"task {run.task_id}: test {ti}: attempt") for g in
                    (run.attempts[ti] if ti < len(run.attempts or []) else [])]
        chosen.append([Candidate(grid=g, count=1, mean_logprob=0.0, share=0.0) for g in attempts])
        ranked_by.append((grids, [c.get("rank") or {} for c in cands]))
    metrics = score_task(task, per_test, chosen)
    names = sorted({s for _, ranks in ranked_by for r in ranks for s in r})
    if not names:
        return metrics, None
    selection = {}
    for s in names:
        hits = []
        for (grids, ranks), pair in zip(ranked_by, task.test):
            order = sorted((r.get(s, math.inf), k) for k, r in enumerate(ranks))
            top = [grids[k] for _, k in order[:2]]
            hits.append([g.shape == pair.output.shape and bool(np.array_equal(g, pair.output)) for g in top])
        selection[s] = {"vote_1": sum(any(h[:1]) for h in hits) / n, "vote_2": sum(any(h) for h in hits) / n}
    return metrics, selection


__all__ = ["TaskRun", "read_task_record", "read_task_records", "write_task_record", "read_wrong_predictions",
           "score_record"]


def read_wrong_predictions(runs: Sequence[Union[str, Path]], tasks: Sequence, mode: str = "pretrain",
                           stats: Optional[dict] = None) -> dict:
    """The model's own wrong predictions of ``tasks``, read from earlier runs' ``tasks/*.json``
    records (``runs``: run directories, or their ``tasks`` directories).

    Every distinct candidate grid of a test input (the ``candidates`` of a record, or the submitted
    ``attempts`` of records written before candidates were kept) that differs from the test input's
    known output is a wrong prediction, kept once however many runs found it. Records of tasks not in ``tasks``, of a task whose content
    changed since (its fingerprint), and unreadable ones are skipped and counted; a test input
    without a known output gives none. Returns ``{task_id: {pool_index: [uint8 grids]}}`` with
    the sampler's pool indices: in ``"pretrain"`` mode test input ``i`` is pool pair
    ``len(task.train) + i`` (in ``"ttft"`` mode the pool holds no test output to judge by, so
    nothing is returned). ``stats`` (a dict), when given, gets the counts: ``records``, ``grids``,
    ``skipped_unknown_task``, ``skipped_changed``, ``skipped_unreadable``.
    """
    from .outdir import task_id_from_filename
    from .records import read_task_records
    from ..answers.vote import check_grid, grid_key

    if mode not in ("pretrain", "ttft"):
        raise ValueError(f"mode must be 'pretrain' or 'ttft', not {mode!r}")
    counts = {"records": 0, "grids": 0, "skipped_unknown_task": 0, "skipped_changed": 0, "skipped_unreadable": 0}
    by_id = {t.id: t for t in tasks}
    out: dict = {}
    seen_of: dict = {}   # (task id, pool index) -> grid keys met: the right output and every kept grid
    for run in runs:
        root = Path(run)
        folder = root / "tasks" if (root / "tasks").is_dir() else root
        if not folder.is_dir():
            raise FileNotFoundError(f"{run}: neither a run directory with tasks/ nor a tasks directory")
        for path, rec in read_task_records(folder):
            if isinstance(rec, Exception):
                counts["skipped_unreadable"] += 1
                continue
            task_id = rec.task_id
            task = by_id.get(task_id)
            if task is None or task_id_from_filename(path.stem) not in (None, task_id):
                counts["skipped_unknown_task"] += 1
                continue
            if rec.fingerprint != task.fingerprint():
                counts["skipped_changed"] += 1
                continue
            counts["records"] += 1
            if mode != "pretrain":
                continue
            per_test = rec.candidates or [[{"grid": g} for g in a] for a in rec.attempts or []]
            for ti, cands in enumerate(per_test[:len(task.test)]):
                right = task.test[ti].output
                if right is None:
                    continue
                pool = len(task.train) + ti
                seen = seen_of.setdefault((task_id, pool), {grid_key(np.ascontiguousarray(right, np.uint8))})
                for k, c in enumerate(cands):
                    try:
                        g = check_grid(c["grid"], f"{path}: test input {ti}, candidate {k}")
                    except (ValueError, TypeError, KeyError) as e:
                        log.warning("%s; skipped", e)
                        continue
                    if grid_key(g) in seen:
                        continue
                    seen.add(grid_key(g))
                    out.setdefault(task_id, {}).setdefault(pool, []).append(g)
                    counts["grids"] += 1
    if stats is not None:
        stats.update(counts)
    return out
