"""Selection: which of a test input's candidate grids are submitted, and in what order.

The candidates are every distinct grid of a test input after voting (:func:`arcfast.answers.vote.vote`
with ``top_k=None``), in voting order. Some of them may have been scored: ``Candidate.logprobs``
holds the grid's teacher-forced log-probability (summed over its tokens) under each of M scoring
augmentations (:mod:`arcfast.infer.rescore`), the same M augmentations for every candidate of the test
input. Three selectors rank them:

- ``vote``:  the voting order: how many predictions produced the grid, then their mean per-token
  log-probability, then first appearance.
- ``poe``:   product of experts: the sum of the M log-probabilities (the log of the product of
  the grid's probabilities under the M augmentations), highest first. A grid must look likely
  from every viewpoint; one unlikely view sinks it.
- ``nvarc``: times found plus the mean of the M log-probabilities (``count + sum / M``), highest
  first: the count decides between grids the model finds about equally likely.
- ``verify``: the verifier's mean P(right) over the augmentations the candidate was verified under
  (``Candidate.verdicts``, :mod:`arcfast.infer.verify`), highest first.
- ``vote+verify``: times found weighted by that mean (``count * mean P(right)``: the votes the
  verifier believes), highest first.

Under the scored selectors (all but ``vote``) the candidates with scores come first, then the
others (beyond the re-scoring cap, dropped from verification, or left unscored by a deadline) in
voting order; ties keep voting order, so a test input with no scored candidate keeps its voting
order under every selector.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from .vote import Candidate

SELECTORS = ("vote", "poe", "nvarc", "verify", "vote+verify")
SCORED = ("poe", "nvarc")          # the selectors that need candidates scored under M augmentations
VERIFIED = ("verify", "vote+verify")   # the selectors that need verified candidates


def check_selector(name: str) -> str:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose one of {', '.join(SELECTORS)}")
    return name


def _check_scores(candidates: Sequence[Candidate]) -> None:
    m = {len(c.logprobs) for c in candidates if c.logprobs is not None}
    if len(m) > 1:
        raise ValueError(f"candidates scored under different numbers of augmentations {sorted(m)}: "
                         f"selection compares them under the same ones")
    if 0 in m:
        raise ValueError("a candidate was scored under no augmentation")
    for i, c in enumerate(candidates):
        if c.logprobs is not None and any(math.isnan(x) for x in c.logprobs):
            raise ValueError(f"candidate {i}: a NaN log-probability")
        if c.verdicts is not None and (not c.verdicts or any(not 0.0 <= x <= 1.0 for x in c.verdicts)):
            raise ValueError(f"candidate {i}: verdicts must be probabilities in [0, 1], got {c.verdicts}")


def selection_score(selector: str, candidate: Candidate) -> Optional[float]:
    """``candidate``'s score under ``selector`` (``None`` for ``vote``, which ranks by order, and
    for an unscored candidate)."""
    check_selector(selector)
    if selector in VERIFIED:
        if candidate.verdicts is None:
            return None
        mean = math.fsum(candidate.verdicts) / len(candidate.verdicts)
        return mean if selector == "verify" else candidate.count * mean
    if selector == "vote" or candidate.logprobs is None:
        return None
    total = math.fsum(candidate.logprobs)
    if selector == "poe":
        return total
    return candidate.count + total / len(candidate.logprobs)


def select(candidates: Sequence[Candidate], selector: str = "vote",
           top_k: Optional[int] = None) -> list[Candidate]:
    """``candidates`` (in voting order) ranked by ``selector``, best first, each carrying its
    selection score in ``score`` (``None`` where unscored, and under ``vote``); at most ``top_k``."""
    check_selector(selector)
    _check_scores(candidates)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if selector == "vote":
        ranked = list(candidates)
    else:
        scored = [replace(c, score=selection_score(selector, c)) for c in candidates]
        # sorted() is stable: equal scores, and all unscored candidates, keep the voting order.
        ranked = sorted(scored, key=lambda c: (c.score is None, -(c.score or 0.0)))
    return ranked if top_k is None else ranked[:top_k]


def ranks(candidates: Sequence[Candidate], selectors: Sequence[str] = SELECTORS) -> list[dict]:
    """Per candidate of ``candidates`` (voting order), its place (0 = first) under each selector."""
    out: list[dict] = [{} for _ in candidates]
    index = {id(c): i for i, c in enumerate(candidates)}
    for s in selectors:
        check_selector(s)
        if s == "vote":
            order = range(len(candidates))
        else:
            # select() replaces each candidate; find them again by their members (disjoint groups).
            by_members = {c.members: index[id(c)] for c in candidates}
            if len(by_members) != len(candidates):
                raise ValueError("ranks: candidates must have distinct members (as vote() gives them)")
            order = [by_members[c.members] for c in select(candidates, s)]
        for place, i in enumerate(order):
            out[i][s] = place
    return out


def judge(solutions: Sequence, candidates_per_test: Sequence[Sequence[Candidate]],
          selectors: Sequence[str] = SELECTORS) -> dict:
    """How each selector does on the same candidates: ``{selector: {"vote_1": x, "vote_2": y}}``,
    the share of test inputs whose solution (``solutions[i]``, [h, w] colours) is the selector's
    first candidate, or among its first two (``arcfast.answers.metrics``' ``vote_1`` / ``vote_2``)."""
    if len(solutions) != len(candidates_per_test) or not solutions:
        raise ValueError(f"judge: {len(solutions)} solutions for {len(candidates_per_test)} test inputs")
    out = {}
    for s in selectors:
        hits = [[c.grid.shape == np.shape(sol) and bool(np.array_equal(c.grid, sol)) for c in select(cands, s, top_k=2)]
                for sol, cands in zip(solutions, candidates_per_test)]
        out[s] = {"vote_1": sum(any(h[:1]) for h in hits) / len(hits), "vote_2": sum(any(h) for h in hits) / len(hits)}
    return out


def mean_selection(rows: Sequence[Optional[dict]]) -> Optional[dict]:
    """The per-selector mean of tasks' :func:`judge` results (``rows``; a task without one, or
    without a selector the others have, counts 0 for it), or ``None`` when no row has any."""
    names = [s for s in SELECTORS if any(r and s in r for r in rows)]
    if not names:
        return None
    return {s: {k: sum((r or {}).get(s, {}).get(k, 0.0) for r in rows) / len(rows)
                for k in ("vote_1", "vote_2")} for s in names}


__all__ = ["SELECTORS", "SCORED", "VERIFIED", "check_selector", "mean_selection", "selection_score", "select", "ranks", "judge"]
