"""Scores of predictions against known solutions.

Every metric is computed per test input, averaged over a task's test inputs, then averaged over
tasks (so a task with two test inputs weighs as much as a task with one). For one test input with
``n`` predictions (failed parses included):

- ``accuracy``: predictions equal to the solution / n.
- ``correct_pixels``: the sum, over predictions of the solution's shape, of the fraction of cells
  equal to the solution's, / n. Wrong-shaped and unparsed predictions add 0.
- ``correct_size``: predictions of the solution's shape / n.
- ``pass_n``: 1 if any prediction equals the solution, else 0.
- ``vote_1`` / ``vote_2``: 1 if the solution is among the top 1 / top 2 candidates after voting.
- ``unanswered``: predictions that failed to parse / n.

A test input with no predictions at all (``n == 0``) was not answered: it scores 0 on every
metric and 1 on ``unanswered``.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..arc.task import Task
from .vote import Candidate, Prediction, check_grid, vote

METRICS = ("accuracy", "correct_pixels", "correct_size", "pass_n", "vote_1", "vote_2", "unanswered")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def score_test(predictions: Sequence[Prediction], solution: np.ndarray,
               candidates: Optional[Sequence[Candidate]] = None) -> dict[str, float]:
    """The metrics of one test input.

    predictions: every prediction made for it, in the original frame.
    solution:    the expected output, [h, w] integers 0-9.
    candidates:  the ranked candidates to judge ``vote_1`` / ``vote_2`` by (e.g. after
                 ``rescore``); by default ``vote(predictions, top_k=2)``.
    Returns ``{name: float in [0, 1]}`` for every name in ``METRICS``.
    """
    sol = check_grid(solution, "solution")
    n = len(predictions)
    if n == 0:
        return {m: (1.0 if m == "unanswered" else 0.0) for m in METRICS}
    exact = sized = failed = 0
    pixels = 0.0
    for p in predictions:
        if p.grid is None:
            failed += 1
        elif p.grid.shape == sol.shape:
            sized += 1
            equal = int(np.count_nonzero(p.grid == sol))
            pixels += equal / sol.size
            exact += equal == sol.size
    if candidates is None:
        candidates = vote(predictions, top_k=2)
    hits = [_same(c.grid, sol) for c in candidates[:2]]
    return {
        "accuracy": exact / n,
        "correct_pixels": pixels / n,
        "correct_size": sized / n,
        "pass_n": float(exact > 0),
        "vote_1": float(any(hits[:1])),
        "vote_2": float(any(hits)),
        "unanswered": failed / n,
    }


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The per-metric mean of several metric dicts (test inputs of a task, or tasks of a run)."""
    rows = list(rows)
    if not rows:
        raise ValueError("mean_metrics: nothing to average")
    return {m: sum(r[m] for r in rows) / len(rows) for m in METRICS}


def score_task(task: Task, predictions_per_test: Optional[Sequence[Sequence[Prediction]]],
               candidates_per_test: Optional[Sequence[Optional[Sequence[Candidate]]]] = None) -> dict[str, float]:
    """A task's metrics: ``score_test`` on each test input, averaged.

    predictions_per_test: one list of predictions per test input of ``task`` (in order), or
                          ``None`` when the task produced nothing (every test scores as unanswered).
    candidates_per_test:  optional ranked candidates per test input (``None`` entries: vote).
    """
    n_test = len(task.test)
    where = f"{task.source or '<tasks>'}: task {task.id}"
    if n_test == 0:
        raise ValueError(f"{where}: has no test inputs to score")
    if predictions_per_test is None:
        predictions_per_test = [[] for _ in range(n_test)]
    if len(predictions_per_test) != n_test:
        raise ValueError(f"{where}: {len(predictions_per_test)} prediction lists for {n_test} test inputs")
    if candidates_per_test is not None and len(candidates_per_test) != n_test:
        raise ValueError(f"{where}: {len(candidates_per_test)} candidate lists for {n_test} test inputs")
    rows = []
    for i, (pair, preds) in enumerate(zip(task.test, predictions_per_test)):
        if pair.output is None:
            raise ValueError(f"{where}: test {i} has no known output to score against")
        cands = candidates_per_test[i] if candidates_per_test is not None else None
        try:
            rows.append(score_test(preds, pair.output, cands))
        except ValueError as e:
            raise ValueError(f"{where}: test {i}: {e}") from None
    return mean_metrics(rows)


def score_tasks(tasks: Sequence[Task], predictions: Mapping[str, Sequence[Sequence[Prediction]]],
                candidates: Optional[Mapping[str, Sequence[Optional[Sequence[Candidate]]]]] = None
                ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-task and overall metrics of a run.

    predictions: ``{task_id: [predictions of test 0, predictions of test 1, ...]}``; a task of
                 ``tasks`` missing from it scores as unanswered (the run never reached it).
    candidates:  optional ``{task_id: [ranked candidates per test input]}``.
    Returns ``(per_task, overall)``: ``{task_id: metrics}`` in ``tasks`` order, and their mean.
    """
    known = {t.id for t in tasks}
    extra = sorted(set(predictions) - known)
    if extra:
        raise ValueError(f"score_tasks: predictions for unknown task(s) {extra[:5]}")
    per_task = {}
    for t in tasks:
        cands = candidates.get(t.id) if candidates is not None else None
        per_task[t.id] = score_task(t, predictions.get(t.id), cands)
    return per_task, mean_metrics(per_task.values())
