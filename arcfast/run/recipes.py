"""Named TTFT recipes: the settings of systems that placed in the ARC Prize, as one flag.

    arcfast ttft --recipe nvarc --model DIR                 # every field below, printed at the start
    arcfast ttft --recipe arc24 --steps 200                 # a flag given beside it wins

A recipe sets fields of :class:`arcfast.run.config.TTFTConfig`; a flag the user gives overrides its field;
the fields a recipe leaves out keep the engine's defaults. What each recipe is (per task):

- ``nvarc`` (ARC Prize 2025, first): LoRA r = 256, alpha 32, rank-stabilised (scaling alpha / sqrt(r)),
  on every attention and MLP projection; learning rate 5e-5, cosine, warm-up 0.1; batch 1 (one
  sample of each task per step); one epoch over 16 augmented copies of the task's leave-one-out
  pairs, about 64 steps for a task of 4 train pairs (``steps`` here is one number for every task).
  A task's training stops so that it and its inference fit 1,200 s, as the original capped a task.
  The embedding and the LM head are trained per task too (each task's own rows of the compact
  vocabulary, at the LoRA's learning rate).
- ``arc24`` (the 2024 system arcfast's seeds follow): LoRA r = 128; learning rate 8e-5; about 300
  steps at batch 1; 96 predictions per test input.
"""
from __future__ import annotations

from typing import Optional

RECIPES: dict[str, dict] = {
    "nvarc": dict(rank=256, alpha=32.0, rslora=True, tokens=("embed_tokens", "lm_head"), lr=5e-5, warmup_ratio=0.1,
                  samples_per_task=1, steps=64, max_task_seconds=1200.0),
    "arc24": dict(rank=128, lr=8e-5, warmup_ratio=0.1, samples_per_task=1, steps=300, predictions=96),
}


def recipe_fields(name: Optional[str]) -> dict:
    """The TTFTConfig fields of recipe ``name`` (an empty dict for None); ValueError naming the
    recipes for an unknown one."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: one of {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])


def resolve(name: Optional[str], given: dict) -> tuple[dict, dict]:
    """``(fields, overridden)``: the recipe's fields with the ``given`` ones (the flags the user
    passed, None for those not passed) laid over them, and which recipe fields a flag overrode
    (``{field: (recipe value, given value)}``)."""
    fields = recipe_fields(name)
    overridden = {k: (fields[k], v) for k, v in given.items() if v is not None and k in fields and v != fields[k]}
    fields.update({k: v for k, v in given.items() if v is not None})
    return fields, overridden


def describe(name: str, overridden: dict) -> str:
    """One line for the start of a run: the recipe's fields and the flags that overrode some."""
    parts = [f"{k}={v}" for k, v in RECIPES[name].items()]
    text = f"recipe {name}: " + ", ".join(parts)
    if overridden:
        text += "; overridden by flags: " + ", ".join(f"{k}={new} (recipe {old})" for k, (old, new) in overridden.items())
    return text


__all__ = ["RECIPES", "recipe_fields", "resolve", "describe"]
