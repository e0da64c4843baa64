"""Voting: turn many augmented predictions of one test output into ranked candidate grids.

Every prediction reaches this module already in the task's original frame (the caller decodes it
with the strict decoder and applies the augmentation's inverse). Identical grids are grouped and
the groups ranked:

1. by ``count``, the number of predictions that produced the grid, highest first;
2. then by ``mean_logprob``, the mean over the group's predictions of each one's log-probability
   per generated token (``logprob / n_tokens``), highest first. Predictions with no recorded
   log-probability (``n_tokens == 0``) are left out of that mean; a group with none scores -inf;
3. then by the position of the group's first prediction in the input list, so the ranking is
   deterministic.

A prediction that failed to parse (``grid is None``) counts as unanswered: it never forms a
candidate, and a list of only failed predictions gives no candidates at all.

``rescore`` optionally re-ranks distinct candidates by a teacher-forced score summed over several
augmentations (the "augmentation product" ranking): a grid the model finds likely from many
viewpoints beats one that only a few sampled decodings happened to agree on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

OK = "ok"
UNPARSED = "unparsed"


def _status_name(status: Any) -> str:
    # The decoder's status may arrive as a plain string or as an enum member; reports want text.
    if isinstance(status, str):
        return status
    name = getattr(status, "name", None)
    if isinstance(name, str):
        return name.lower()
    return str(status)


def check_grid(grid: Any, where: str, max_size: Optional[int] = None) -> np.ndarray:
    """``grid`` as a C-contiguous ``uint8`` [h, w] array of colours 0-9 (h, w <= ``max_size`` when
    given), or ValueError naming ``where`` and the offending place."""
    try:
        a = np.asarray(grid)
    except Exception as e:  # ragged nested lists
        raise ValueError(f"{where}: not a grid ({e})") from None
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{where}: grid must be 2-D and non-empty, got shape {a.shape}")
    if max_size is not None and max(a.shape) > max_size:
        raise ValueError(f"{where}: grid of shape {a.shape} exceeds the size limit {max_size}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{where}: grid must hold integers, got dtype {a.dtype}")
    bad = np.argwhere((a < 0) | (a > 9))
    if bad.size:
        r, c = (int(x) for x in bad[0])
        raise ValueError(f"{where}: colour {int(a[r, c])} at row {r}, column {c} is outside 0-9")
    return np.ascontiguousarray(a, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class Prediction:
    """One decoded model output for one test input, in the task's original frame.

    grid:         ``uint8`` [h, w] colours 0-9, or ``None`` when the output failed to parse.
    status:       the decoder's status (``"ok"`` for a grid; e.g. ``"ragged"``, ``"unterminated"``
                  otherwise). Defaults to ``"ok"`` / ``"unparsed"`` from ``grid``.
    logprob:      total natural-log probability of the generated tokens (<= 0).
    n_tokens:     number of generated tokens that ``logprob`` covers (end-of-grid included);
                  0 means no log-probability was recorded.
    augmentation: name or id of the augmentation the prompt was built under.
    adapter:      the adapter that produced it, when several take part.
    search:       how it was found: ``"greedy"``, ``"sample"`` or ``"dfs"`` (``""``: not said).
    """

    grid: Optional[np.ndarray]
    status: Any = None
    logprob: float = 0.0
    n_tokens: int = 0
    augmentation: str = ""
    adapter: str = ""
    search: str = ""

    def __post_init__(self):
        where = f"prediction (augmentation {self.augmentation!r})"
        status = _status_name(self.status) if self.status is not None else (OK if self.grid is not None else UNPARSED)
        if self.grid is not None:
            if status != OK:
                raise ValueError(f"{where}: has a grid but status {status!r}")
            object.__setattr__(self, "grid", check_grid(self.grid, where))
        elif status == OK:
            raise ValueError(f"{where}: status 'ok' but no grid")
        object.__setattr__(self, "status", status)
        if self.n_tokens < 0:
            raise ValueError(f"{where}: n_tokens must be >= 0, got {self.n_tokens}")
        if math.isnan(self.logprob):
            raise ValueError(f"{where}: logprob is NaN")

    @property
    def parsed(self) -> bool:
        return self.grid is not None

    @property
    def logprob_per_token(self) -> Optional[float]:
        """``logprob / n_tokens``, or ``None`` when no log-probability was recorded."""
        return self.logprob / self.n_tokens if self.n_tokens > 0 else None


@dataclass(frozen=True, eq=False)
class Candidate:
    """One distinct grid after voting.

    grid:         ``uint8`` [h, w], the grid its predictions agree on.
    count:        how many predictions produced it.
    mean_logprob: mean per-token log-probability over those predictions (see module docstring);
                  -inf when none recorded one.
    share:        ``count`` / all predictions voted on, failed parses included.
    members:      indices of its predictions in the list given to ``vote``.
    score:        the re-scoring sum when ``rescore`` ranked it, else ``None``.
    logprobs:     its teacher-forced log-probability under each scoring augmentation, in their
                  order, when it was scored (:mod:`arcfast.answers.select`), else ``None``.
    verdicts:     the verifier's P(right) under each augmentation it was verified with
                  (:mod:`arcfast.infer.verify`), else ``None``.
    """

    grid: np.ndarray
    count: int
    mean_logprob: float
    share: float
    members: tuple[int, ...] = field(default=())
    score: Optional[float] = None
    logprobs: Optional[tuple[float, ...]] = None
    verdicts: Optional[tuple[float, ...]] = None


def grid_key(grid: np.ndarray) -> tuple[int, int, bytes]:
    """Exact identity of a ``uint8`` grid: its shape and its cells (so equal bytes of different
    shapes, e.g. 2x3 and 3x2, never collide)."""
    h, w = grid.shape
    return h, w, np.ascontiguousarray(grid, dtype=np.uint8).tobytes()


def _check_top_k(top_k: Optional[int]) -> None:
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def vote(predictions: Sequence[Prediction], top_k: Optional[int] = 2) -> list[Candidate]:
    """Group identical grids and rank them (count, then mean per-token log-probability, then
    first appearance). Returns at most ``top_k`` candidates (all when ``top_k`` is None); an
    empty list when no prediction parsed."""
    _check_top_k(top_k)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(predictions):
        if not isinstance(p, Prediction):
            raise TypeError(f"vote: item {i} is a {type(p).__name__}, not a Prediction")
        if p.grid is not None:
            groups.setdefault(grid_key(p.grid), []).append(i)
    total = len(predictions)
    cands = []
    for members in groups.values():  # dicts keep insertion order: first appearance
        per_token = [lp for lp in (predictions[i].logprob_per_token for i in members) if lp is not None]
        mean_lp = math.fsum(per_token) / len(per_token) if per_token else -math.inf
        cands.append(Candidate(grid=predictions[members[0]].grid, count=len(members), mean_logprob=mean_lp,
                               share=len(members) / total, members=tuple(members)))
    # sorted() is stable, so equal (count, mean_logprob) keep first-appearance order.
    cands.sort(key=lambda c: (-c.count, -c.mean_logprob))
    return cands if top_k is None else cands[:top_k]


def rescore(candidates: Sequence[Candidate], score_fn: Callable[[np.ndarray, Any], float],
            augmentations: Iterable[Any], top_k: Optional[int] = None) -> list[Candidate]:
    """Re-rank candidates by ``sum(score_fn(c.grid, a) for a in augmentations)``, highest first.

    ``score_fn(grid, augmentation) -> float`` returns the teacher-forced log-probability of the
    original-frame ``grid`` as the answer to the prompt built under ``augmentation`` (the caller
    applies the augmentation to the task and the grid). Ties keep the order given (the voting
    order when the list comes straight from ``vote``). Each returned candidate carries its sum in ``score``. Pass every
    candidate of ``vote(..., top_k=None)`` to let a grid with few votes win.
    """
    _check_top_k(top_k)
    augs = list(augmentations)
    if not augs:
        raise ValueError("rescore: needs at least one augmentation")
    scored = []
    for ci, c in enumerate(candidates):
        terms = []
        for ai, a in enumerate(augs):
            s = float(score_fn(c.grid, a))
            if math.isnan(s):
                raise ValueError(f"rescore: score_fn gave NaN for candidate {ci} under augmentation {ai} ({a!r})")
            terms.append(s)
        scored.append(replace(c, score=math.fsum(terms)))
    scored.sort(key=lambda c: -c.score)  # stable: ties stay in the given (voting) order
    return scored if top_k is None else scored[:top_k]
