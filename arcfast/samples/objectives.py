"""What a model is trained to do, beside predicting outputs: the objectives a training mixture
draws from (layouts: docs/FORMAT.md, "Objectives"; drawn by the sampler, :mod:`arcfast.samples.sampling`).

- ``output``: a task's demonstrations, then a new input; the loss is on its output (what
  inference asks of the model).
- ``input``: a task's input grids, then one more; the loss is on that input: the distribution of
  the task's inputs, which at test time is fully known (test inputs included).
- ``verify``: demonstrations, an input, a candidate output, then a verdict (YES: the candidate is
  the right output; NO: it is one of the model's own wrong predictions or a synthetic corruption of
  the right one); the loss is on the verdict. A model trained on it judges candidates
  (:mod:`arcfast.infer.verify`).

A mixture is a weight per objective, the share of the samples drawn for it:
``parse_objectives(["output=1", "verify=0.5"])``. Wrong predictions to learn from come from the
``tasks/<task>.json`` records of earlier ``arcfast eval`` runs (:func:`read_wrong_predictions`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .sampling import OBJECTIVES  # noqa: E402  (the sampler's ids: 0, 1, 2)

NEEDS_OBJECTIVE_IDS = ("verify",)   # the objectives whose layout uses ids 16-19

log = logging.getLogger(__name__)


def parse_objectives(specs: Union[None, str, Sequence[str], Mapping[str, float]]) -> tuple[tuple[str, float], ...]:
    """``(("output", 1.0), ...)`` from ``["output=1", "input=0.5"]`` (a bare name weighs 1), a
    comma-separated string, or a mapping; ``None`` or empty: output only. Raises ValueError naming
    the bad entry for an unknown objective, a repeated one, a weight that is not a finite number
    >= 0, or weights that sum to 0."""
    if specs is None or (not isinstance(specs, Mapping) and len(specs) == 0):
        return (("output", 1.0),)
    if isinstance(specs, Mapping):
        items = [(str(k), v) for k, v in specs.items()]
    else:
        if isinstance(specs, str):
            specs = [s for s in specs.split(",") if s.strip()]
        items = []
        for spec in specs:
            name, eq, weight = str(spec).partition("=")
            items.append((name.strip(), weight.strip() if eq else "1"))
    out: dict = {}
    for name, weight in items:
        if name not in OBJECTIVES:
            raise ValueError(f"objective {name!r}: unknown; choose from {', '.join(OBJECTIVES)}")
        if name in out:
            raise ValueError(f"objective {name!r} is given twice")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"objective {name!r}: weight {weight!r} is not a number") from None
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"objective {name!r}: weight must be a finite number >= 0, got {weight!r}")
        out[name] = w
    if not sum(out.values()) > 0:
        raise ValueError(f"objective weights sum to 0: {out}")
    return tuple(out.items())


def format_objectives(objectives: Sequence[tuple[str, float]]) -> str:
    """``"output=1 input=0.5"``: a mixture as the flags give it."""
    return " ".join(f"{n}={w:g}" for n, w in objectives)


def read_wrong_predictions(runs: Sequence[Union[str, Path]], tasks: Sequence, mode: str = "pretrain",
                           stats: Optional[dict] = None) -> dict:
    """The model's own wrong predictions of ``tasks``, read from earlier runs' ``tasks/*.json``
    records (``runs``: run directories, or their ``tasks`` directories).

    Every distinct candidate grid of a test input (the ``candidates`` of a record, or the submitted
    ``attempts`` of records written before candidates were kept) that differs from the test input's
    known output is a wrong prediction, kept once however many runs found it. Records of tasks not in ``tasks``, of a task whose content
    changed since (its fingerprint), and unreadable ones are skipped and counted; a test input
    without a known output gives none. Returns ``{task_id: {pool_index: [uint8 grids]}}`` with
    the sampler's pool indices: in ``"pretrain"`` mode test input ``i`` is pool pair
    ``len(task.train) + i`` (in ``"ttft"`` mode the pool holds no test output to judge by, so
    nothing is returned). ``stats`` (a dict), when given, gets the counts: ``records``, ``grids``,
    ``skipped_unknown_task``, ``skipped_changed``, ``skipped_unreadable``.
    """
    from ..run.outdir import task_id_from_filename
    from ..run.records import read_task_records
    from ..answers.vote import check_grid, grid_key

    if mode not in ("pretrain", "ttft"):
        raise ValueError(f"mode must be 'pretrain' or 'ttft', not {mode!r}")
    counts = {"records": 0, "grids": 0, "skipped_unknown_task": 0, "skipped_changed": 0, "skipped_unreadable": 0}
    by_id = {t.id: t for t in tasks}
    out: dict = {}
    seen_of: dict = {}   # (task id, pool index) -> grid keys met: the right output and every kept grid
    for run in runs:
        root = Path(run)
        folder = root / "tasks" if (root / "tasks").is_dir() else root
        if not folder.is_dir():
            raise FileNotFoundError(f"{run}: neither a run directory with tasks/ nor a tasks directory")
        for path, rec in read_task_records(folder):
            if isinstance(rec, Exception):
                counts["skipped_unreadable"] += 1
                continue
            task_id = rec.task_id
            task = by_id.get(task_id)
            if task is None or task_id_from_filename(path.stem) not in (None, task_id):
                counts["skipped_unknown_task"] += 1
                continue
            if rec.fingerprint != task.fingerprint():
                counts["skipped_changed"] += 1
                continue
            counts["records"] += 1
            if mode != "pretrain":
                continue
            per_test = rec.candidates or [[{"grid": g} for g in a] for a in rec.attempts or []]
            for ti, cands in enumerate(per_test[:len(task.test)]):
                right = task.test[ti].output
                if right is None:
                    continue
                pool = len(task.train) + ti
                seen = seen_of.setdefault((task_id, pool), {grid_key(np.ascontiguousarray(right, np.uint8))})
                for k, c in enumerate(cands):
                    try:
                        g = check_grid(c["grid"], f"{path}: test input {ti}, candidate {k}")
                    except (ValueError, TypeError, KeyError) as e:
                        log.warning("%s; skipped", e)
                        continue
                    if grid_key(g) in seen:
                        continue
                    seen.add(grid_key(g))
                    out.setdefault(task_id, {}).setdefault(pool, []).append(g)
                    counts["grids"] += 1
    if stats is not None:
        stats.update(counts)
    return out


__all__ = ["OBJECTIVES", "NEEDS_OBJECTIVE_IDS", "parse_objectives", "format_objectives", "read_wrong_predictions"]
