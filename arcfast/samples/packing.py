"""Sequence packing and the streaming sampler (C++ core: csrc/packing.h, csrc/pipeline.cpp).

Samples are placed whole into rows of ``row_len`` tokens by best-fit-decreasing: longest first
(ties: earlier sample first), each into the row whose free space is the smallest that holds it
(ties: the lower row). The result is a :class:`arcfast.samples.batch.PackedBatch` (its docstring states the
conventions: HF-aligned labels, positions restarting per sample, cu_seqlens with each row's tail
padding as a segment).

:class:`PackedStream` draws, augments, encodes and packs on background C++ threads, ahead of the
consumer, into a bounded queue. Two ways to fill batches:

- ``samples_per_task=k``: batch ``b`` holds slots ``b*k .. b*k+k-1`` of *every* task, so each task
  (adapter) gets exactly ``k`` samples per optimizer step; rows as needed (or exactly ``rows``);
- flat (``samples_per_task=None``): stream slot ``q`` is slot ``q // T`` of task ``q % T``; a window
  of ``window`` pending samples is packed into ``rows`` rows and what does not fit waits for the
  next batch (samples that have waited ``max_wait`` batches are placed first, oldest first).

Batch ``b`` depends only on the seed, the tasks and the settings, never on ``threads``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .. import _core
from ..arc.augment import AugmentConfig
from .batch import PackedBatch
from .sampling import Sample, SampleConfig, SampleStats, task_store
from ..arc.task import Task


def _batch(d: dict) -> PackedBatch:
    obj, tgt = d.get("objective_ids"), d.get("target_ids")
    return PackedBatch(d["input_ids"], d["labels"], d["position_ids"], d["sample_ids"], d["adapter_ids"],
                       d["cu_seqlens"], None if obj is None else np.asarray(obj, np.int32),
                       None if tgt is None else np.asarray(tgt, np.int32))


def best_fit_decreasing(lengths: Sequence[int], row_len: int, rows: Optional[int] = None
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """Placement of samples of the given lengths: (row int32 [n] (-1: did not fit), offset int32 [n], rows used).

    ``rows=None`` opens rows as needed; with ``rows=R`` samples that fit none of the R rows get -1.
    """
    lens = [int(x) for x in lengths]
    row_of, off_of, n = _core.best_fit_decreasing(lens, list(range(len(lens))), int(row_len), int(rows or 0))
    return np.asarray(row_of, np.int32), np.asarray(off_of, np.int32), n


def pack(samples: Sequence[Sample], row_len: int = 8192, rows: Optional[int] = None) -> PackedBatch:
    """All ``samples`` packed into rows of ``row_len`` tokens: a PackedBatch of shape [R, row_len].

    ``adapter_ids`` are each sample's ``task_index``. ``rows=None``: as many rows as best-fit-
    decreasing needs; ``rows=R``: exactly R rows, ValueError if the samples need more.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("nothing to pack")
    lens = [len(s) for s in samples]
    ids = np.concatenate([s.input_ids for s in samples]).astype(np.int32, copy=False)
    labels = np.concatenate([s.labels for s in samples]).astype(np.int32, copy=False)
    d = _core.pack(ids, labels, lens, [int(s.task_index) for s in samples], int(row_len), int(rows or 0),
                   objective_ids=[int(s.objective_id) for s in samples])
    return _batch(d)


def padded_fill(lengths: Sequence[int]) -> float:
    """The fill of the same samples padded to the longest one, one sample per row (the baseline)."""
    lengths = list(lengths)
    return sum(lengths) / (len(lengths) * max(lengths)) if lengths else 0.0


@dataclass
class StreamStats(SampleStats):
    """What the delivered batches hold, plus the sampling counts of the draws made for them."""

    batches: int = 0
    samples: int = 0    # samples packed into delivered batches
    tokens: int = 0     # real tokens in them
    positions: int = 0  # rows * row_len summed

    @property
    def fill(self) -> float:
        return self.tokens / self.positions if self.positions else 0.0


class PackedStream:
    """An endless (or ``batches``-long) iterator of PackedBatch, produced by background C++ threads.

    - ``tasks``: the tasks; a sample's ``adapter_ids`` entry is its task's index in this list;
    - ``seed``: everything is a function of it (and of the task ids, slot indices and settings);
    - ``row_len``: tokens per row; ``config.max_len`` must not exceed it;
    - ``samples_per_task``: k samples of every task per batch; ``None`` for the flat stream;
    - ``rows``: rows per batch (flat: required, default 1; per-task: exact count, default as needed);
    - ``window``: pending samples the flat packer chooses from (larger: fuller rows; default
      ``16 * rows``); ``max_wait``: a pending sample passed over for this many batches goes before
      all others (oldest first), so short samples are not held back behind long ones indefinitely;
    - ``threads``: background threads; ``queue_size``: batches produced ahead of the consumer;
    - ``wrong``: listed wrong predictions for ``verify`` samples (:func:`arcfast.samples.sampling.task_store`).

    Each batch's ``objective_ids`` give the objective of every sample it holds.

    ``stats`` (:class:`StreamStats`) sums the delivered batches. Use as a context manager or call
    :meth:`close` to stop the threads early.
    """

    def __init__(self, tasks: Sequence[Task], seed: int = 0, *, row_len: int = 8192,
                 samples_per_task: Optional[int] = None, rows: Optional[int] = None, window: Optional[int] = None,
                 max_wait: int = 8,
                 config: Optional[SampleConfig] = None, augment: Optional[AugmentConfig] = None,
                 threads: int = 1, queue_size: int = 4, batches: Optional[int] = None, wrong=None):
        self.config = config or SampleConfig()
        self.augment = augment or AugmentConfig()
        self.tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
        if self.config.max_len > row_len:
            raise ValueError(f"SampleConfig.max_len={self.config.max_len} exceeds row_len={row_len}: "
                             "a sample never straddles rows")
        if samples_per_task is not None and samples_per_task < 1:
            raise ValueError("samples_per_task must be >= 1 (or None for the flat stream)")
        if samples_per_task is None:
            rows = 1 if rows is None else rows
            window = 16 * rows if window is None else window
            if window < 1 or max_wait < 0:
                raise ValueError("window must be >= 1 and max_wait >= 0")
        if rows is not None and rows < 1:
            raise ValueError("rows must be >= 1")
        if rows is not None and rows * row_len >= 2 ** 31:
            raise ValueError("rows * row_len must stay below 2**31 (int32 cu_seqlens)")
        self.row_len, self.rows, self.samples_per_task = row_len, rows, samples_per_task
        self.window, self.max_wait = window or 0, max_wait
        self.batches = batches
        self.stats = StreamStats()
        self._core = _core.PackedStream(task_store(self.tasks, wrong), int(seed) & ((1 << 64) - 1), self.config.to_core(),
                                        self.augment.to_core(), int(row_len), int(rows or 0),
                                        int(samples_per_task or 0), int(window or 0), int(max_wait),
                                        max(1, int(threads)),
                                        max(1, int(queue_size)))

    def __iter__(self) -> Iterator[PackedBatch]:
        return self

    def __next__(self) -> PackedBatch:
        if self.batches is not None and self.stats.batches >= self.batches:
            self.close()
            raise StopIteration
        d = self._core.next()
        st = d.pop("stats")
        self.stats.add(st)
        self.stats.batches += 1
        return _batch(d)

    def take(self, n: int) -> list[PackedBatch]:
        return [next(self) for _ in range(n)]

    def close(self) -> None:
        if self._core is not None:
            self._core.close()

    def __enter__(self) -> "PackedStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["pack", "best_fit_decreasing", "padded_fill", "PackedStream", "StreamStats"]
