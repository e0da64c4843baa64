"""The data pipeline (augment -> encode -> prompt -> pack) through the C++ core against the plain-Python
reference (arcfast/reference/pipeline.py: numpy transforms, Python encoding), same batches.

    arcfast bench -k pipeline            # full size
    arcfast bench -k pipeline --quick    # fewer batches

Workload: the 400 ARC-AGI-1 evaluation tasks (TTFT mode: train pairs only, full augmentation,
8,192-token rows), in two batch layouts:

- per-task: every batch holds one sample of each of the 400 tasks (``samples_per_task=1``), rows
  as needed (~70);
- flat: 8 rows per batch, samples round-robin over the tasks through the packing window.

Before timing, the first batch of each side is compared array by array: the rows measure the same
work. Rates are per CPU-second of the process (``time.process_time``: "on one core" even when the
machine is shared; the C++ side runs one producer thread and the consumer only waits); wall-clock
rates are in ``extra``. Rows:

- ``augment+encode+pack``: tokens/s and samples/s, C++ vs the reference (bar 30x);
- ``fill``: real tokens / positions of the per-task batches, best-fit-decreasing vs padding every
  sample to its batch's longest (one sample per row); and against the required 0.97 (bar 1x);
- ``stream``: packed tokens/s of the C++ stream on one thread against the required 1M/s (bar 1x),
  and on ``--threads`` threads (0: all cores) against one.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .runner import Context, Row

BENCH = "pipeline"
FIELDS = ("input_ids", "labels", "position_ids", "sample_ids", "adapter_ids", "cu_seqlens")


def _timed(fn):
    """(result, cpu seconds, wall seconds) of fn()."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def _cpp_run(tasks, n_batches, threads, **kw):
    """(StreamStats, cpu s, wall s) of n_batches taken from a fresh stream."""
    from ..samples.packing import PackedStream

    def go():
        with PackedStream(tasks, seed=0, threads=threads, queue_size=4, **kw) as st:
            for _ in range(n_batches):
                next(st)
        return st.stats

    return _timed(go)


def _padded_positions(batch: dict) -> int:
    """Positions the batch's samples take when each is padded to the batch's longest, one per row."""
    sid = batch["sample_ids"]
    lens = np.bincount(sid[sid >= 0])
    return len(lens) * int(lens.max())


def _ref_run(tasks, n_batches, **kw):
    from ..arc.augment import AugmentConfig
    from ..reference import pipeline as R
    from ..samples.sampling import SampleConfig

    def go():
        g = R.stream(tasks, 0, SampleConfig(), AugmentConfig(), 8192, kw.get("rows") or 0,
                     kw.get("samples_per_task") or 0, kw.get("window", 0), kw.get("max_wait", 8))
        out = [next(g) for _ in range(n_batches)]
        return out

    batches, cpu, wall = _timed(go)
    return batches, cpu, wall


def _check_same(tasks, kw, ref_batch):
    from ..samples.packing import PackedStream

    with PackedStream(tasks, seed=0, threads=1, **kw) as st:
        b = next(st)
    for f in FIELDS:
        if not np.array_equal(getattr(b, f), ref_batch[f]):
            raise AssertionError(f"C++ and reference batches differ in {f}")


def run(ctx: Context) -> list[Row]:
    from ..arc.loading import load_tasks

    tasks = load_tasks("arc1:eval")
    n_cpp = 30 if ctx.quick else 300
    n_ref = 1 if ctx.quick else 6
    rows: list[Row] = []
    layouts = (
        ("per-task 400x1", dict(samples_per_task=1)),
        ("flat 8 rows", dict(rows=8, window=128, max_wait=8)),
    )
    for name, kw in layouts:
        scale = 1 if "samples_per_task" in kw else 8  # flat batches are ~1/8 of a per-task batch
        ref_batches, ref_cpu, ref_wall = _ref_run(tasks, n_ref * scale, **kw)
        _check_same(tasks, kw, ref_batches[0])
        ref_tok = sum(b["stats"]["tokens"] for b in ref_batches)
        ref_smp = sum(b["stats"]["samples"] for b in ref_batches)
        st, cpu, wall = _cpp_run(tasks, n_cpp * scale, 1, **kw)
        tok, smp = st.tokens, st.samples
        extra = dict(cpp_wall_tokens_per_s=tok / wall, ref_wall_tokens_per_s=ref_tok / ref_wall,
                     cpp_batches=n_cpp * scale, ref_batches=n_ref * scale, cpp_tokens=tok, ref_tokens=ref_tok,
                     threads=1)
        rows.append(Row(BENCH, f"augment+encode+pack, {name}", tok / cpu, "tokens/s", "python reference",
                        ref_tok / ref_cpu, bar=30, extra=extra))
        rows.append(Row(BENCH, f"augment+encode+pack, {name}", smp / cpu, "samples/s", "python reference",
                        ref_smp / ref_cpu, bar=30, extra=dict(cpp_samples=smp, ref_samples=ref_smp)))
        rows.append(Row(BENCH, f"fill, {name}", st.fill, "fill", "required", 0.97, bar=1,
                        extra=dict(batches=st.batches)))
        if "samples_per_task" in kw:
            pad_fill = ref_tok / sum(_padded_positions(b) for b in ref_batches)
            rows.append(Row(BENCH, f"fill, {name}", st.fill, "fill", "padding to the batch's longest", pad_fill,
                            extra=dict(note="one sample per row, padded to the longest sample of its batch")))
            rows.append(Row(BENCH, "stream, 1 thread", tok / cpu, "tokens/s", "required", 1e6, bar=1,
                            extra=dict(wall_tokens_per_s=tok / wall)))
            threads = ctx.threads or os.cpu_count() or 1
            st_n, _, wall_n = _cpp_run(tasks, n_cpp, threads, **kw)
            rows.append(Row(BENCH, f"stream, {threads} threads (wall)", st_n.tokens / wall_n, "tokens/s",
                            "1 thread (wall)", tok / wall, extra=dict(threads=threads)))
    return rows
