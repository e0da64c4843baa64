"""The record of one task's run, ``tasks/<name>.json``: one format, one writer, one reader.

:class:`TaskRun` is what `arcfast ttft` and `arcfast eval` write for every finished task (its
training, its answers and every candidate grid, its metrics); ``--resume`` reads them back, rank 0
of several workers merges them, and ``arcfast train --wrong-from RUN`` learns from their wrong
candidates. Records written by earlier versions load too.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

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


__all__ = ["TaskRun", "read_task_record", "read_task_records", "write_task_record"]
