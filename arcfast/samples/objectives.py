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
from typing import Mapping, Sequence, Union


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




__all__ = ["OBJECTIVES", "NEEDS_OBJECTIVE_IDS", "parse_objectives", "format_objectives"]
