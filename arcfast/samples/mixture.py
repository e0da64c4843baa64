"""Training data from several sources at set weights (``--data barc.jsonl=0.7 --data arc1:train=0.3``): which source each sample comes from, drawn per segment from a seed so that a resumed run draws the same."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np


def parse_mixture(specs: Sequence[str]) -> list[tuple[str, float]]:
    """``["arc1:train=1.0", "barc.jsonl=0.5", "dir"]`` -> ``[(source, weight), ...]``.

    The weight follows the last ``=`` (default 1.0 when there is none). Raises ValueError naming
    the spec when a weight is not a positive finite number or no source is given.
    """
    out = []
    for spec in specs:
        src, sep, w = str(spec).rpartition("=")
        if not sep:
            src, w = str(spec), "1"
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"--data {spec!r}: weight {w!r} is not a number (expected SOURCE=WEIGHT)") from None
        if not src:
            raise ValueError(f"--data {spec!r}: no source before '='")
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"--data {spec!r}: weight must be positive, got {weight}")
        out.append((src, weight))
    if not out:
        raise ValueError("no training data: give at least one --data SOURCE=WEIGHT")
    return out


def _seed(*parts: int) -> int:
    """A 64-bit seed from integer parts (each taken modulo 2**63 so negative seeds work)."""
    ss = np.random.SeedSequence([int(p) & ((1 << 63) - 1) for p in parts])
    return int(ss.generate_state(1, np.uint64)[0])


def source_schedule(seed: int, segment: int, segment_len: int, weights: Sequence[float]) -> np.ndarray:
    """int64 [segment_len]: the source of each step of segment ``segment`` (a pure function of the
    arguments), drawn with probabilities ``weights / sum(weights)``."""
    w = np.asarray(weights, np.float64)
    if len(w) == 1:
        return np.zeros(segment_len, np.int64)
    rng = np.random.default_rng(_seed(seed, 3, segment))
    return rng.choice(len(w), size=segment_len, p=w / w.sum()).astype(np.int64)


def shared_adapter(batch):
    """A copy of ``batch`` whose every token trains adapter 0 (padding stays -1)."""
    return replace(batch, adapter_ids=np.where(batch.adapter_ids >= 0, 0, -1).astype(np.int32))


class MixtureStream:
    """Packed batches for steps ``start_step, start_step + 1, ...`` of a weighted mixture.

    ``sources``: lists of tasks; ``weights``: one positive weight each. ``next()`` returns
    ``(source index, PackedBatch)``: a batch of ``rows`` rows of ``row_len`` tokens from that source
    alone, with every token's ``adapter_ids`` 0 (padding -1). See the module docstring for what a
    batch depends on. Close it (or use it as a context manager) to stop the background threads.
    """

    def __init__(self, sources: Sequence[Sequence], weights: Sequence[float], seed: int, *, row_len: int,
                 rows: int = 1, segment_len: int = 1000, start_step: int = 0, config=None, augment=None,
                 threads: int = 1, wrong=None):
        if len(sources) != len(weights) or not sources:
            raise ValueError("MixtureStream needs one weight per source and at least one source")
        if any(len(s) == 0 for s in sources):
            raise ValueError("MixtureStream: a source has no tasks")
        if segment_len < 1 or start_step < 0:
            raise ValueError("segment_len must be >= 1 and start_step >= 0")
        self.sources = [list(s) for s in sources]
        self.weights = [float(w) for w in weights]
        self.seed, self.row_len, self.rows, self.segment_len = int(seed), row_len, rows, segment_len
        self.config, self.augment, self.threads, self.wrong = config, augment, threads, wrong
        self.step = start_step
        self.counts = np.zeros(len(sources), np.int64)   # batches delivered per source
        self._segment = -1
        self._streams: dict = {}
        self._open(start_step // segment_len)
        for j in range(start_step - self._segment * segment_len):  # used by an earlier run
            next(self._stream(int(self._choice[j])))

    def _open(self, segment: int) -> None:
        self.close()
        self._segment = segment
        self._choice = source_schedule(self.seed, segment, self.segment_len, self.weights)

    def _stream(self, k: int):
        from .packing import PackedStream

        if k not in self._streams:
            # A fresh task order per segment: the flat stream visits tasks in list order, and a
            # segment may see fewer samples than a large source has tasks.
            order = np.random.default_rng(_seed(self.seed, 2, self._segment, k)).permutation(len(self.sources[k]))
            self._streams[k] = PackedStream([self.sources[k][i] for i in order], _seed(self.seed, 1, self._segment, k),
                                            row_len=self.row_len, rows=self.rows, config=self.config,
                                            augment=self.augment, threads=self.threads, wrong=self.wrong)
        return self._streams[k]

    def __iter__(self):
        return self

    def __next__(self):
        seg = self.step // self.segment_len
        if seg != self._segment:
            self._open(seg)
        k = int(self._choice[self.step - seg * self.segment_len])
        batch = shared_adapter(next(self._stream(k)))
        self.step += 1
        self.counts[k] += 1
        return k, batch

    def close(self) -> None:
        for s in self._streams.values():
            s.close()
        self._streams = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
