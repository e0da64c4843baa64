"""Leave-one-out training samples of ARC tasks (C++ core: csrc/sampler.h; reference:
arcfast/reference/pipeline.py, whose docstring specifies every draw).

A sample of a task takes one pair of its *pool* as the target and other pairs as demonstrations:

- ``mode="ttft"``: the pool is the task's train pairs only (test-time fine-tuning never sees a test
  output);
- ``mode="pretrain"``: known test pairs join the pool after the train pairs.

Pool index ``i < len(task.train)`` is ``task.train[i]``; larger indices are the test pairs with known
outputs, in order. Slot ``index`` of a task is a pure function of ``(seed, task.id, index)``:
slots ``e*n .. e*n+n-1`` (n = pool size) give every pair exactly one turn as the target, in an
order shuffled per ``e``, and the target is never also a demonstration.

Prompts longer than ``max_len`` either drop demonstrations from the end of their order until they
fit (``on_too_long="drop_demos"``, keeping at least one) or are rejected (``"skip"``); a rejected
draw is redrawn (a fresh target and augmentation) up to ``max_attempts`` times, after which the slot
stays empty. All of it is counted in :class:`SampleStats`.

**Objectives** (docs/FORMAT.md, "Objectives"). Each slot draws one of ``OBJECTIVES`` from its own
seeded stream, by the weights of ``SampleConfig.objectives`` (default: ``output`` only, the samples
above):

- ``output`` (id 0): ``BOS (INPUT g OUTPUT g)* INPUT target_in OUTPUT target_out``, loss on the target
  output;
- ``input`` (id 1): ``BOS (INPUT g)* INPUT target_in`` over the inputs of *every* pair, test inputs
  included (pool index ``i < len(task.train)`` is ``task.train[i].input``, then ``task.test[k].input``
  at ``len(task.train) + k``, in both modes), loss on the target grid;
- ``verify`` (id 2): ``BOS (INPUT g OUTPUT g)* INPUT target_in CANDIDATE c VERDICT YES|NO`` over the
  ``output`` pool, loss on the label alone. The candidate is the right output with probability
  ``verify_right``, else a listed wrong prediction (``wrong=``) or a seeded corruption of the right
  output (``CANDIDATE_KINDS``); it is augmented exactly as an output grid is.

Output and verify samples share the target permutations (every run of ``n`` slots has each pair as
the target once, whichever of the two objectives each slot drew); input samples have their own over
their pool. Packed batches from the core stream carry ``objective_ids``, the objective of each
sample (indexed by ``sample_ids``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from .. import _core
from ..arc.augment import AugmentConfig, Augmentation, Composition
from ..arc.task import Task, id_bytes

MODES = ("ttft", "pretrain")
ON_TOO_LONG = ("drop_demos", "skip")
LOSS_ON = ("target", "outputs")
OBJECTIVES = ("output", "input", "verify")  # objective ids 0, 1, 2
# What a verify sample's candidate is (ids 0-9): the right output, a listed wrong prediction, or a
# synthetic corruption of the right output (ids 2-9; docs/FORMAT.md, "Objectives").
CANDIDATE_KINDS = ("right", "prediction", "cells", "swap_colors", "add_row", "drop_row", "add_col", "drop_col",
                   "transform", "input")
CORRUPTIONS = CANDIDATE_KINDS[2:]

# Listed wrong predictions: {task id: {pair index: [grid, ...]}}, grids 2-D arrays of colours 0-9.
WrongPredictions = Mapping[str, Mapping[int, Sequence[np.ndarray]]]


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn and laid out.

    - ``mode``: ``"ttft"`` (train pairs only) or ``"pretrain"`` (known test pairs join the pool);
    - ``max_len``: the longest prompt in tokens (at most the packer's row length);
    - ``on_too_long``: ``"drop_demos"`` or ``"skip"`` (see the module docstring);
    - ``loss_on``: ``"target"`` (the target output's tokens) or ``"outputs"`` (also every
      demonstration output but the first);
    - ``max_demos``: at most this many demonstrations (0: every other pair of the pool);
    - ``max_attempts``: draws per slot before it is left empty;
    - ``objectives``: ``(name, weight)`` pairs (or a mapping) of ``OBJECTIVES``; a slot draws each
      objective with probability weight / sum of the weights (an objective left out has weight 0).
      Stored as ``(name, float weight)`` pairs in id order, e.g. ``(("output", 1.0), ("verify",
      0.5))``; ``weights`` gives every objective's weight;
    - ``verify_right``: probability that a verify sample's candidate is the right output;
    - ``swap_bug``: an ablation, never a default. It reproduces the always-swap bug of an earlier
      public TTFT implementation (fixing it took that implementation's vote_2 from 21.9% to 32.1%):
      the last pair of the ``output``/``verify`` pool is never the target (the first n - 1 take
      turns) and stays a demonstration.
    """

    mode: str = "ttft"
    max_len: int = 8192
    on_too_long: str = "drop_demos"
    loss_on: str = "target"
    max_demos: int = 0
    max_attempts: int = 8
    objectives: tuple = (("output", 1.0),)
    verify_right: float = 0.5
    swap_bug: bool = False

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("on_too_long", ON_TOO_LONG), ("loss_on", LOSS_ON)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SampleConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.max_len < 1 or self.max_demos < 0 or self.max_attempts < 1:
            raise ValueError("SampleConfig: max_len and max_attempts must be >= 1, max_demos >= 0")
        items = self.objectives.items() if isinstance(self.objectives, Mapping) else self.objectives
        weights = dict.fromkeys(OBJECTIVES, 0.0)
        seen = set()
        for item in items:
            if isinstance(item, str) or len(item) != 2:
                raise ValueError(f"SampleConfig.objectives must hold (name, weight) pairs, got {item!r}")
            name, w = item
            if name not in OBJECTIVES:
                raise ValueError(f"SampleConfig.objectives: unknown objective {name!r} (one of {OBJECTIVES})")
            if name in seen:
                raise ValueError(f"SampleConfig.objectives: {name!r} is given twice")
            seen.add(name)
            w = float(w)
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"SampleConfig.objectives: the weight of {name!r} must be finite and >= 0, got {w}")
            weights[name] = w
        if not any(w > 0 for w in weights.values()):
            raise ValueError("SampleConfig.objectives: at least one weight must be > 0")
        if not 0.0 <= float(self.verify_right) <= 1.0:
            raise ValueError(f"SampleConfig.verify_right must lie in [0, 1], got {self.verify_right}")
        object.__setattr__(self, "objectives", tuple((k, weights[k]) for k in OBJECTIVES if k in seen))
        object.__setattr__(self, "verify_right", float(self.verify_right))

    @property
    def weights(self) -> tuple:
        """The weight of each objective, in id order (``OBJECTIVES``)."""
        given = dict(self.objectives)
        return tuple(given.get(k, 0.0) for k in OBJECTIVES)

    def to_core(self) -> dict:
        return {
            "mode": MODES.index(self.mode),
            "max_len": int(self.max_len),
            "on_too_long": ON_TOO_LONG.index(self.on_too_long),
            "loss_on": LOSS_ON.index(self.loss_on),
            "max_demos": int(self.max_demos),
            "max_attempts": int(self.max_attempts),
            "objectives": [float(w) for w in self.weights],
            "verify_right": float(self.verify_right),
            "swap_bug": bool(self.swap_bug),
        }


@dataclass
class SampleStats:
    """Counts over drawn slots (and, for a stream, over the batches delivered so far)."""

    drawn: int = 0                 # samples accepted
    skipped: int = 0               # draws rejected as too long, each redrawn
    dropped_demos: int = 0         # demonstrations removed to fit max_len
    trimmed: int = 0               # samples that lost at least one demonstration
    empty_slots: int = 0           # slots whose every draw was rejected
    compositions: int = 0          # samples carrying a task composition
    compositions_dropped: int = 0  # compositions dropped for the size limit
    objective_output: int = 0      # samples of each objective (OBJECTIVES)
    objective_input: int = 0
    objective_verify: int = 0
    candidate_right: int = 0       # verify samples by candidate kind (CANDIDATE_KINDS)
    candidate_prediction: int = 0
    candidate_cells: int = 0
    candidate_swap_colors: int = 0
    candidate_add_row: int = 0
    candidate_drop_row: int = 0
    candidate_add_col: int = 0
    candidate_drop_col: int = 0
    candidate_transform: int = 0
    candidate_input: int = 0
    candidate_fallbacks: int = 0   # corruptions that could not apply and became `cells` (counted there)

    def add(self, d: dict) -> None:
        for f in fields(self):
            if f.name in d:
                setattr(self, f.name, getattr(self, f.name) + int(d[f.name]))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def objectives(self) -> dict:
        """Samples by objective name."""
        return {k: getattr(self, f"objective_{k}") for k in OBJECTIVES}

    @property
    def candidates(self) -> dict:
        """Verify samples by candidate kind."""
        return {k: getattr(self, f"candidate_{k}") for k in CANDIDATE_KINDS}


@dataclass
class Sample:
    """One training sample.

    ``input_ids`` int32 [L] is the prompt (layout: docs/FORMAT.md, "Prompts"); ``labels`` int32 [L]
    equals ``input_ids`` on loss positions and -100 elsewhere (Hugging Face alignment: position
    ``t`` predicts ``labels[t + 1]``). ``augmentation.order`` is ``demos``.

    ``objective`` is its objective's name; ``target`` and ``demos`` index that objective's pool (the
    input pool for ``input``). A ``verify`` sample has ``candidate``, what its candidate is (a name
    of ``CANDIDATE_KINDS``: ``"right"`` exactly when its label is YES), and ``candidate_grid``, the
    candidate in the task's original frame (the prompt shows it through ``augmentation`` as an
    output grid); both are None for the other objectives.
    """

    task_index: int          # the task's index in the list given (its adapter id)
    task_id: str
    index: int               # slot index within the task
    attempt: int             # > 0 when earlier draws of the slot were too long
    target: int              # pool index of the target pair
    demos: tuple             # pool indices of the demonstrations, prompt order
    augmentation: Augmentation
    dropped_demos: int
    input_ids: np.ndarray
    labels: np.ndarray
    objective: str = "output"
    candidate: Optional[str] = None
    candidate_grid: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def objective_id(self) -> int:
        return OBJECTIVES.index(self.objective)


@dataclass
class SampleSet:
    """The samples of :func:`make_samples` (task-major, then slot index) and what drawing them did."""

    samples: list
    stats: SampleStats = field(default_factory=SampleStats)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _task_spec(task: Task, wrong: Optional[Mapping[int, Sequence[np.ndarray]]] = None) -> tuple:
    # Bytes, not str: an id from a JSON file may hold a lone surrogate, which has no UTF-8 form.
    spec = (id_bytes(task.id), id_bytes(task.source or ""), [(p.input, p.output) for p in task.train],
            [(p.input, p.output) for p in task.test])
    if not wrong:
        return spec
    listed = {}
    for k, grids in wrong.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"task {task.id}: wrong predictions are keyed by pair index (int), got {k!r}")
        if isinstance(grids, np.ndarray) and grids.ndim == 2:
            raise ValueError(f"task {task.id}: wrong predictions of pair {k} must be a list of grids, got one grid")
        listed[int(k)] = [np.asarray(g) for g in grids]
    return spec + (listed,)


def task_store(tasks: Sequence[Task], wrong: Optional[WrongPredictions] = None):
    """The tasks copied into the C++ core once (an opaque handle the sampler and stream share).

    ``wrong``: listed wrong predictions for the ``verify`` objective, ``{task id: {pair index: [grid,
    ...]}}`` in each task's original frame. The pair index is ``i`` for ``task.train[i]`` and
    ``len(task.train) + k`` for ``task.test[k]`` (the pool index in ``ttft`` mode, and in
    ``pretrain`` mode while every test pair before it has its output). A grid equal to the pair's
    output is dropped (it is not wrong); a pair out of range or a test pair without an output is a
    ValueError. Ids not among ``tasks`` are ignored.
    """
    if isinstance(tasks, Task):
        tasks = [tasks]
    wrong = wrong or {}
    return _core.TaskStore([_task_spec(t, wrong.get(t.id)) for t in tasks])


def pool_pairs(task: Task, mode: str = "ttft") -> list:
    """The task's pool as a list of ``Pair`` (pool index -> pair) for ``output`` and ``verify``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pool = list(task.train)
    if mode == "pretrain":
        pool += [p for p in task.test if p.output is not None]
    return pool


def pool_inputs(task: Task) -> list:
    """The ``input`` objective's pool (both modes): every input grid, train then test (pool index -> grid)."""
    return [p.input for p in task.train] + [p.input for p in task.test]


def _sample_from_core(tasks: Sequence[Task], plan: tuple, ids: np.ndarray, labels: np.ndarray) -> Sample:
    task_idx, index, attempt, target, pairs, transform, colors, comp, dropped, objective, cand_kind, cand = plan
    demos = tuple(pairs[:-1])
    aug = Augmentation(transform=transform, colors=tuple(colors), order=demos,
                       composition=Composition.from_core(comp))
    return Sample(task_idx, tasks[task_idx].id, index, attempt, target, demos, aug, dropped, ids, labels,
                  OBJECTIVES[objective], None if cand_kind < 0 else CANDIDATE_KINDS[cand_kind], cand)


def make_samples(tasks: Sequence[Task], n_per_task: int, seed: int = 0, config: Optional[SampleConfig] = None,
                 augment: Optional[AugmentConfig] = None, threads: int = 0,
                 wrong: Optional[WrongPredictions] = None) -> SampleSet:
    """Slots ``0 .. n_per_task-1`` of every task, drawn on ``threads`` threads (0: all cores).

    The result does not depend on ``threads``. Empty slots (every draw too long) are left out and
    counted in ``stats.empty_slots``. Raises ValueError when a task has fewer than 2 pairs in the
    pool of an objective with weight (leave-one-out needs a target and a demonstration).
    ``wrong``: listed wrong predictions for ``verify`` samples (see :func:`task_store`).
    """
    config = config or SampleConfig()
    augment = augment or AugmentConfig()
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    raw, counters = _core.make_samples(task_store(tasks, wrong), int(n_per_task), int(seed) & ((1 << 64) - 1),
                                       config.to_core(), augment.to_core(), int(threads))
    stats = SampleStats()
    stats.add(counters)
    return SampleSet([_sample_from_core(tasks, *r) for r in raw], stats)


__all__ = ["SampleConfig", "SampleStats", "Sample", "SampleSet", "make_samples", "task_store", "pool_pairs",
           "pool_inputs", "MODES", "ON_TOO_LONG", "LOSS_ON", "OBJECTIVES", "CANDIDATE_KINDS", "CORRUPTIONS"]
