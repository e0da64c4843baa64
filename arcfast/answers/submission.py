"""The Kaggle submission file, always complete and always parseable.

Form: ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}`` with one entry per test input,
in the task's test order, and grids as lists of rows of ints 0-9.

``SubmissionWriter`` writes a fallback answer for every task and test input the moment it is
created, then rewrites the whole file as each task finishes. Every write goes to a temporary file
in the same directory, is flushed to disk, and replaces the old file in one ``os.replace``, so a
run cut short at any point (budget, crash, kill) leaves the last complete version behind.

Fallback grids, for a test input where fewer than two answers parsed:

- ``"input"`` (default): the test input itself, a cheap guess of the right size for the many
  tasks whose output keeps the input's shape;
- ``"zero"``: ``[[0]]``.

``attempt_1`` is the best answer, ``attempt_2`` the second; with only one answer ``attempt_2`` is
the fallback (a distinct second guess is worth more than repeating the first), and with none both
are the fallback.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np


from ..files import atomic_write
from ..arc.task import Task
from ..arc.vocab import MAX_SIZE
from .vote import check_grid

FALLBACKS = ("input", "zero")
ATTEMPTS = ("attempt_1", "attempt_2")


class SubmissionError(ValueError):
    """A submission file that Kaggle would reject or score wrongly; ``problems`` lists each one."""

    def __init__(self, path: Union[str, Path], problems: list[str]):
        self.path = str(path)
        self.problems = problems
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{path}: invalid submission ({len(problems)} problem(s)):\n  " + "\n  ".join(shown) + more)


def fallback_grid(task: Task, test_index: int, fallback: str = "input") -> list[list[int]]:
    """The fallback answer for test input ``test_index`` of ``task`` (see module docstring)."""
    if fallback == "input":
        return task.test[test_index].input.tolist()
    if fallback == "zero":
        return [[0]]
    raise ValueError(f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")


def make_attempts(answers: Sequence[Any], fallback: list[list[int]], where: str = "answers") -> dict[str, list[list[int]]]:
    """``{"attempt_1": ..., "attempt_2": ...}`` from up to two ranked grids (best first).

    answers:  0-2 grids ([h, w] integer arrays or nested lists, colours 0-9), e.g.
              ``[c.grid for c in vote(predictions)]``.
    fallback: the grid (nested lists) used for each missing attempt.
    """
    if len(answers) > 2:
        raise ValueError(f"{where}: {len(answers)} answers, at most 2 are submitted")
    grids = [check_grid(a, f"{where}: {ATTEMPTS[i]}", MAX_SIZE).tolist() for i, a in enumerate(answers)]
    grids += [fallback] * (2 - len(grids))
    return dict(zip(ATTEMPTS, grids))


class SubmissionWriter:
    """Keeps ``path`` a complete, valid submission for ``tasks`` from creation to the end of a run.

    ``update`` may be called from several threads (e.g. one per worker finishing tasks); each call
    replaces one task's answers and rewrites the file atomically.
    """

    def __init__(self, path: Union[str, Path], tasks: Sequence[Task], fallback: str = "input",
                 unloadable: Optional[Mapping[str, Optional[Sequence]]] = None):
        """unloadable: tasks of the input that could not be loaded (``arcfast.arc.loading.skipped_tasks``):
        id -> their test inputs as far as known (a grid or None each; None: not even how many).
        They keep fallback answers for good: one entry per known test input (the input itself, or
        ``[[0]]`` where it is unreadable), a single ``[[0]]`` entry when the count is unknown."""
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")
        self.path = Path(path)
        self.fallback = fallback
        self._tasks = {}
        for t in tasks:
            if t.id in self._tasks:
                raise ValueError(f"{t.source or '<tasks>'}: task {t.id} appears twice")
            if not t.test:
                raise ValueError(f"{t.source or '<tasks>'}: task {t.id} has no test inputs")
            self._tasks[t.id] = t
        self._entries = {
            t.id: [make_attempts([], fallback_grid(t, i, fallback)) for i in range(len(t.test))]
            for t in tasks
        }
        for tid, inputs in (unloadable or {}).items():
            if tid in self._entries:
                raise ValueError(f"task {tid}: both loaded and unloadable")
            grids = [None] if not inputs else inputs
            self._entries[tid] = [make_attempts([], np.asarray(g).tolist() if g is not None and fallback == "input"
                                                else [[0]]) for g in grids]
        self._done: set[str] = set()
        self._lock = threading.Lock()
        with self._lock:
            self._write()

    @property
    def done(self) -> frozenset[str]:
        """Ids of the tasks whose answers have been written by ``update``."""
        with self._lock:
            return frozenset(self._done)

    def snapshot(self) -> dict:
        """A copy of what the file holds now."""
        with self._lock:
            return json.loads(json.dumps(self._entries))

    def update(self, task_id: str, attempts_per_test: Sequence[Sequence[Any]]) -> None:
        """Record one task's answers and rewrite the file.

        attempts_per_test: one sequence per test input (in the task's test order) of 0-2 ranked
        grids, best first; missing attempts take the fallback. If the write fails the error is
        raised, the file keeps its previous complete content, and the answers stay recorded for
        the next write.
        """
        task = self._tasks.get(task_id)
        if task is None:
            raise KeyError(f"{self.path}: task {task_id!r} is not one of the {len(self._tasks)} tasks of this submission")
        where = f"{self.path}: task {task_id}"
        if len(attempts_per_test) != len(task.test):
            raise ValueError(f"{where}: {len(attempts_per_test)} answer lists for {len(task.test)} test inputs")
        entry = [make_attempts(list(a), fallback_grid(task, i, self.fallback), f"{where}: test {i}")
                 for i, a in enumerate(attempts_per_test)]
        with self._lock:
            self._entries[task_id] = entry
            self._done.add(task_id)
            self._write()

    def _write(self) -> None:
        # Compact separators: 400 tasks of 30x30 grids stay a few MB and rewrite in milliseconds.
        atomic_write(self.path, json.dumps(self._entries, separators=(",", ":")))


def _grid_problems(g: Any, where: str) -> list[str]:
    if not isinstance(g, list):
        return [f"{where}: must be a list of rows, got {type(g).__name__}"]
    if not g:
        return [f"{where}: empty grid"]
    if len(g) > MAX_SIZE:
        return [f"{where}: {len(g)} rows, more than {MAX_SIZE}"]
    width = None
    for r, row in enumerate(g):
        if not isinstance(row, list) or not row:
            return [f"{where}: row {r} must be a non-empty list of ints"]
        if width is None:
            width = len(row)
            if width > MAX_SIZE:
                return [f"{where}: row 0 has {width} cells, more than {MAX_SIZE}"]
        elif len(row) != width:
            return [f"{where}: row {r} has {len(row)} cells, row 0 has {width}"]
        for c, v in enumerate(row):
            if type(v) is not int or not 0 <= v <= 9:
                return [f"{where}: row {r}, column {c}: {v!r} is not a colour 0-9"]
    return []


def validate_submission(path: Union[str, Path], tasks: Sequence[Task]) -> dict:
    """Check that ``path`` answers every test input of every task with two valid grids.

    Raises ``SubmissionError`` listing every problem (missing or unknown task, wrong number of
    test entries, missing or extra keys, malformed grids with row and column); returns the parsed
    submission when it is valid.
    """
    path = Path(path)
    try:
        sub = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubmissionError(path, ["file does not exist"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubmissionError(path, [f"not valid JSON: {e}"]) from None
    if not isinstance(sub, dict):
        raise SubmissionError(path, [f"top level must be an object of task ids, got {type(sub).__name__}"])
    problems = []
    ids = [t.id for t in tasks]
    for tid in sorted(set(sub) - set(ids)):
        problems.append(f"task {tid}: not one of the {len(ids)} expected tasks")
    for t in tasks:
        if t.id not in sub:
            problems.append(f"task {t.id}: missing")
            continue
        entries = sub[t.id]
        if not isinstance(entries, list):
            problems.append(f"task {t.id}: must be a list of test entries, got {type(entries).__name__}")
            continue
        if len(entries) != len(t.test):
            problems.append(f"task {t.id}: {len(entries)} test entries, the task has {len(t.test)} test inputs")
        for i, e in enumerate(entries[:len(t.test)]):
            where = f"task {t.id}: test {i}"
            if not isinstance(e, dict):
                problems.append(f"{where}: must be an object with {ATTEMPTS}, got {type(e).__name__}")
                continue
            for k in ATTEMPTS:
                if k not in e:
                    problems.append(f"{where}: missing {k}")
                else:
                    problems += _grid_problems(e[k], f"{where}: {k}")
            for k in sorted(set(e) - set(ATTEMPTS)):
                problems.append(f"{where}: unexpected key {k!r}")
    if problems:
        raise SubmissionError(path, problems)
    return sub
