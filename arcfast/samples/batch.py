"""The packed batch: the one structure the sampler hands the trainer.

Rows of ``row_len`` tokens, each holding several whole samples back to back, then padding.
All arrays are numpy (``torch.from_numpy`` views them without a copy).

Conventions (every producer and consumer of a PackedBatch keeps them):
- ``labels`` are aligned with ``input_ids`` as in Hugging Face causal LMs: position ``t`` is trained
  to predict ``labels[t + 1]``. The first token of every sample (``BOS``) has label -100, so the shift
  never crosses from one sample into the next; padding has label -100.
- ``position_ids`` restart at 0 at the first token of every sample; padding positions hold 0.
- ``sample_ids`` number the samples of the batch 0..n_samples-1 in row-major order; padding is -1.
  Attention is causal within a sample and never crosses samples.
- ``adapter_ids`` give, for every token, the index of the task (LoRA adapter) it trains; padding
  is -1. Each task's loss is normalised over its own labelled tokens.
- ``cu_seqlens`` are the cumulative boundaries of the samples over the flattened
  ``rows * row_len`` tokens, with each row's tail padding as one extra segment of its own, so
  ``cu_seqlens[0] == 0`` and ``cu_seqlens[-1] == rows * row_len`` (the varlen-attention layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class PackedBatch:
    input_ids: np.ndarray     # int32 [rows, row_len]; PAD where empty
    labels: np.ndarray        # int32 [rows, row_len]; -100 where no loss
    position_ids: np.ndarray  # int32 [rows, row_len]
    sample_ids: np.ndarray    # int32 [rows, row_len]; -1 on padding
    adapter_ids: np.ndarray   # int32 [rows, row_len]; -1 on padding
    cu_seqlens: np.ndarray    # int32 [n_segments + 1]
    # int32 [n_samples]: the objective of each sample (arcfast.samples.sampling.OBJECTIVES ids), indexed by
    # its sample_ids value; None where the maker did not say (every sample an ``output`` one)
    objective_ids: Optional[np.ndarray] = None
    # int32 [n_samples]: the pool index of each sample's target pair (for ``input`` samples, of its
    # target input), indexed as objective_ids; None where the maker did not say (packed by ``pack``)
    target_ids: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int((self.sample_ids >= 0).sum())

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.max()) + 1 if self.sample_ids.size and self.sample_ids.max() >= 0 else 0

    @property
    def fill(self) -> float:
        """Fraction of positions that hold real tokens."""
        return self.n_tokens / max(1, self.input_ids.size)

    def widen(self, row_len: int) -> "PackedBatch":
        """The same samples in rows of ``row_len >= self.row_len`` tokens: each row's tail padded
        (PAD, label -100, sample and adapter -1), ``cu_seqlens`` rebuilt. Nothing a sample sees
        changes; shapes can then be bucketed (one CUDA graph per bucket, not per length)."""
        R, L = self.shape
        if row_len < L:
            raise ValueError(f"widen: row_len {row_len} is shorter than the rows ({L})")
        if row_len == L:
            return self

        def pad(a, value):
            out = np.full((R, row_len), value, dtype=a.dtype)
            out[:, :L] = a
            return out

        from ..arc import vocab as T

        sample_ids = pad(self.sample_ids, -1)
        return PackedBatch(pad(self.input_ids, T.PAD), pad(self.labels, T.IGNORE_INDEX), pad(self.position_ids, 0),
                           sample_ids, pad(self.adapter_ids, -1), cu_seqlens_of(sample_ids), self.objective_ids,
                           self.target_ids)

    def trimmed(self, multiple: int = 128) -> "PackedBatch":
        """The same samples without what is only padding: rows holding no sample are dropped and
        every row is cut after the longest row's last token (rounded up to ``multiple``). A step
        computes every position of its rows, so a stream's fixed-length rows, when a step holds far
        fewer tokens, cost as if full: on the CPU, 1,416 tokens in a row of 8,192 trained at 2.2k
        tokens/s, the same tokens in rows of 2,048 at 26.7k. Padding carries no loss and attention
        never reaches it, so the step is the same (tested against the untrimmed batch). ``self``
        when nothing would change."""
        R, L = self.shape
        used = self.sample_ids >= 0
        rows = np.flatnonzero(used.any(axis=1))
        if len(rows) == 0:
            return self
        last = int(np.max(L - np.argmax(used[rows, ::-1], axis=1)))
        keep = min(L, -(-last // multiple) * multiple)
        if keep == L and len(rows) == R:
            return self
        cut = lambda a: np.ascontiguousarray(a[rows, :keep])
        sample_ids = cut(self.sample_ids)
        return PackedBatch(cut(self.input_ids), cut(self.labels), cut(self.position_ids), sample_ids,
                           cut(self.adapter_ids), cu_seqlens_of(sample_ids), self.objective_ids, self.target_ids)

    def sample_lengths(self) -> np.ndarray:
        """int64 [n_samples]: the tokens of each sample, by sample id."""
        sid = self.sample_ids[self.sample_ids >= 0]
        return np.bincount(sid, minlength=self.n_samples).astype(np.int64)

    def prefix(self, n: int) -> "PackedBatch":
        """The first ``n`` positions of every row (a sample cut there keeps its first tokens: a
        valid, shorter sample; a calibration probe's batch)."""
        if n >= self.shape[1]:
            return self
        cut = lambda a: np.ascontiguousarray(a[:, :n])
        sample_ids = cut(self.sample_ids)
        return PackedBatch(cut(self.input_ids), cut(self.labels), cut(self.position_ids), sample_ids,
                           cut(self.adapter_ids), cu_seqlens_of(sample_ids), self.objective_ids, self.target_ids)

    def samples(self, first: int, last: int) -> "PackedBatch":
        """The samples ``first .. last - 1`` (consecutive sample ids) as a batch of their own: each
        row's run of them moved to the start of a row of the longest run's length, their ids
        renumbered from 0 (``objective_ids`` / ``target_ids`` cut alike). A sample sees what it saw
        in ``self``: a step over the pieces of a batch computes what the whole batch does (micro-
        batches of one step, :meth:`arcfast.train.trainer.Trainer.step` with a gate)."""
        n = self.n_samples
        if not 0 <= first < last <= n:
            raise ValueError(f"samples({first}, {last}): the batch holds samples 0..{n - 1}")
        inside = (self.sample_ids >= first) & (self.sample_ids < last)
        rows = np.flatnonzero(inside.any(axis=1))
        starts = np.argmax(inside[rows], axis=1)
        widths = inside[rows].sum(axis=1)
        R, L = len(rows), int(widths.max())
        from ..arc import vocab as T

        out = {k: np.full((R, L), v, np.int32) for k, v in
               (("input_ids", T.PAD), ("labels", T.IGNORE_INDEX), ("position_ids", 0), ("sample_ids", -1),
                ("adapter_ids", -1))}
        for j, (r, s, w) in enumerate(zip(rows, starts, widths)):
            span = slice(int(s), int(s + w))   # a row's samples lie back to back
            for k, a in out.items():
                a[j, :w] = getattr(self, k)[r, span]
        out["sample_ids"][out["sample_ids"] >= 0] -= first
        cut = lambda a: None if a is None else np.ascontiguousarray(np.asarray(a)[first:last])
        return PackedBatch(out["input_ids"], out["labels"], out["position_ids"], out["sample_ids"],
                           out["adapter_ids"], cu_seqlens_of(out["sample_ids"]), cut(self.objective_ids),
                           cut(self.target_ids))

    def target_counts(self, n_adapters: int, n_pairs: int, objectives=(0, 2)) -> np.ndarray:
        """int64 [n_adapters, n_pairs]: how many samples of each adapter (task) took each pool pair
        as their target, counting samples of ``objectives`` (default output and verify, which share
        the train pairs' pool). Raises ValueError when the batch does not carry ``target_ids``."""
        if self.target_ids is None:
            raise ValueError("this batch does not say which pair each sample targets (target_ids)")
        sid = self.sample_ids.ravel()
        real = sid >= 0
        samples, first = np.unique(sid[real], return_index=True)
        adapters = self.adapter_ids.ravel()[real][first]
        targets = np.asarray(self.target_ids)[samples]
        keep = np.ones(len(samples), bool)
        if self.objective_ids is not None:
            keep = np.isin(np.asarray(self.objective_ids)[samples], objectives)
        out = np.zeros((n_adapters, n_pairs), np.int64)
        ok = keep & (adapters >= 0) & (adapters < n_adapters) & (targets >= 0) & (targets < n_pairs)
        np.add.at(out, (adapters[ok], targets[ok]), 1)
        return out


def cu_seqlens_of(sample_ids: np.ndarray) -> np.ndarray:
    """int32 cu_seqlens of a batch from its ``sample_ids`` [rows, row_len]: a boundary wherever the
    sample changes within a row and at every row's end (each row's padding run one segment)."""
    R, L = sample_ids.shape
    change = np.zeros((R, L), dtype=bool)
    change[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    starts = np.flatnonzero(change) if R and L else np.zeros(0, np.int64)
    rows = np.arange(R, dtype=np.int64) * L
    return np.unique(np.concatenate([[0], starts, rows, [R * L]])).astype(np.int32)
