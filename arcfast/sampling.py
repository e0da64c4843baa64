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
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterator, Optional, Sequence

import numpy as np

from . import _core
from .augment import AugmentConfig, Augmentation, Composition
from .task import Task, id_bytes

MODES = ("ttft", "pretrain")
ON_TOO_LONG = ("drop_demos", "skip")
LOSS_ON = ("target", "outputs")


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn and laid out.

    - ``mode``: ``"ttft"`` (train pairs only) or ``"pretrain"`` (known test pairs join the pool);
    - ``max_len``: the longest prompt in tokens (at most the packer's row length);
    - ``on_too_long``: ``"drop_demos"`` or ``"skip"`` (see the module docstring);
    - ``loss_on``: ``"target"`` (the target output's tokens) or ``"outputs"`` (also every
      demonstration output but the first);
    - ``max_demos``: at most this many demonstrations (0: every other pair of the pool);
    - ``max_attempts``: draws per slot before it is left empty.
    """

    mode: str = "ttft"
    max_len: int = 8192
    on_too_long: str = "drop_demos"
    loss_on: str = "target"
    max_demos: int = 0
    max_attempts: int = 8

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("on_too_long", ON_TOO_LONG), ("loss_on", LOSS_ON)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SampleConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.max_len < 1 or self.max_demos < 0 or self.max_attempts < 1:
            raise ValueError("SampleConfig: max_len and max_attempts must be >= 1, max_demos >= 0")

    def to_core(self) -> dict:
        return {
            "mode": MODES.index(self.mode),
            "max_len": int(self.max_len),
            "on_too_long": ON_TOO_LONG.index(self.on_too_long),
            "loss_on": LOSS_ON.index(self.loss_on),
            "max_demos": int(self.max_demos),
            "max_attempts": int(self.max_attempts),
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

    def add(self, d: dict) -> None:
        for f in fields(self):
            if f.name in d:
                setattr(self, f.name, getattr(self, f.name) + int(d[f.name]))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Sample:
    """One training sample.

    ``input_ids`` int32 [L] is the prompt (layout: docs/FORMAT.md, "Prompts"); ``labels`` int32 [L]
    equals ``input_ids`` on loss positions and -100 elsewhere (Hugging Face alignment: position
    ``t`` predicts ``labels[t + 1]``). ``augmentation.order`` is ``demos``.
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

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


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


def _task_spec(task: Task) -> tuple:
    # Bytes, not str: an id from a JSON file may hold a lone surrogate, which has no UTF-8 form.
    return (id_bytes(task.id), id_bytes(task.source or ""), [(p.input, p.output) for p in task.train],
            [(p.input, p.output) for p in task.test])


def task_store(tasks: Sequence[Task]):
    """The tasks copied into the C++ core once (an opaque handle the sampler and stream share)."""
    if isinstance(tasks, Task):
        tasks = [tasks]
    return _core.TaskStore([_task_spec(t) for t in tasks])


def pool_pairs(task: Task, mode: str = "ttft") -> list:
    """The task's pool as a list of ``Pair`` (pool index -> pair)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pool = list(task.train)
    if mode == "pretrain":
        pool += [p for p in task.test if p.output is not None]
    return pool


def _sample_from_core(tasks: Sequence[Task], plan: tuple, ids: np.ndarray, labels: np.ndarray) -> Sample:
    task_idx, index, attempt, target, pairs, transform, colors, comp, dropped = plan
    demos = tuple(pairs[:-1])
    aug = Augmentation(transform=transform, colors=tuple(colors), order=demos,
                       composition=Composition.from_core(comp))
    return Sample(task_idx, tasks[task_idx].id, index, attempt, target, demos, aug, dropped, ids, labels)


def make_samples(tasks: Sequence[Task], n_per_task: int, seed: int = 0, config: Optional[SampleConfig] = None,
                 augment: Optional[AugmentConfig] = None, threads: int = 0) -> SampleSet:
    """Slots ``0 .. n_per_task-1`` of every task, drawn on ``threads`` threads (0: all cores).

    The result does not depend on ``threads``. Empty slots (every draw too long) are left out and
    counted in ``stats.empty_slots``. Raises ValueError when a task has fewer than 2 pairs in its
    pool (leave-one-out needs a target and a demonstration).
    """
    config = config or SampleConfig()
    augment = augment or AugmentConfig()
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    raw, counters = _core.make_samples(task_store(tasks), int(n_per_task), int(seed) & ((1 << 64) - 1),
                                       config.to_core(), augment.to_core(), int(threads))
    stats = SampleStats()
    stats.add(counters)
    return SampleSet([_sample_from_core(tasks, *r) for r in raw], stats)


__all__ = ["SampleConfig", "SampleStats", "Sample", "SampleSet", "make_samples", "task_store", "pool_pairs",
           "MODES", "ON_TOO_LONG", "LOSS_ON"]
