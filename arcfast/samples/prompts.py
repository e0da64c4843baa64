"""Prompts in the compact format (layout: docs/FORMAT.md, "Prompts"; C++ core: csrc/sampler.h).

    BOS  (INPUT <grid> OUTPUT <grid>) per demonstration  INPUT <target input> OUTPUT <target output>

A training prompt carries labels (loss on the target output's cells, ROWs and EOG; optionally on
every demonstration output but the first); an inference prompt stops right after the target's
OUTPUT marker, where generation starts. A verification prompt (the ``verify`` objective,
docs/FORMAT.md, "Objectives") puts a candidate output after the test input and stops at VERDICT:

    BOS  (INPUT <grid> OUTPUT <grid>) per demonstration  INPUT <test input> CANDIDATE <candidate> VERDICT

and the model's next token there, YES or NO, is its verdict on the candidate.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import _core
from ..arc.augment import Augmentation
from .sampling import LOSS_ON, MODES, task_store
from ..arc.task import Task
from ..arc.vocab import MAX_SIZE


def _aug_args(aug: Augmentation) -> tuple:
    comp = None if aug.composition is None else aug.composition.to_core()
    return aug.transform, list(aug.colors), comp


def build_training_prompt(task: Task, target: int, demos: Sequence[int], augmentation: Optional[Augmentation] = None,
                          mode: str = "ttft", loss_on: str = "target", max_size: int = MAX_SIZE
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids int32 [L], labels int32 [L]) for explicit pool indices (see arcfast.samples.sampling).

    ``augmentation.order`` is ignored here: ``demos`` gives the order. ``labels`` equal ``input_ids``
    on loss positions and -100 elsewhere.
    """
    if mode not in MODES or loss_on not in LOSS_ON:
        raise ValueError(f"mode must be one of {MODES} and loss_on one of {LOSS_ON}")
    aug = augmentation or Augmentation()
    return _core.training_prompt(task_store([task]), 0, MODES.index(mode), [int(d) for d in demos], int(target),
                                 *_aug_args(aug), LOSS_ON.index(loss_on), max_size)


def build_inference_prompt(task: Task, test_index: int, augmentation: Optional[Augmentation] = None,
                           max_len: Optional[int] = None, max_size: int = MAX_SIZE) -> np.ndarray:
    """The prompt for ``task.test[test_index]``: input_ids int32 [L], ending with OUTPUT.

    Demonstrations are the train pairs in ``augmentation.order`` (file order when None), each
    augmented. When ``max_len`` is given, demonstrations are dropped from the end of the order
    until the prompt fits; ValueError if even one demonstration is too many.
    """
    return build_inference_prompts(task, test_index, [augmentation or Augmentation()], max_len, max_size)[0]


def build_inference_prompts(task: Task, test_index: int, augmentations: Sequence[Augmentation],
                            max_len: Optional[int] = None, max_size: int = MAX_SIZE) -> list[np.ndarray]:
    """One inference prompt (int32 [L_i]) per augmentation, the task copied to the core once."""
    store = task_store([task])
    out = []
    for aug in augmentations:
        order = list(range(len(task.train))) if aug.order is None else list(aug.order)
        ids, _used = _core.inference_prompt(store, 0, int(test_index), *_aug_args(aug), order,
                                            int(max_len or 0), max_size)
        out.append(ids)
    return out


def build_verify_prompts(task: Task, test_index: int, candidates: Sequence, augmentations: Sequence[Augmentation],
                         max_len: Optional[int] = None, max_size: int = MAX_SIZE) -> list[np.ndarray]:
    """The verification prompts of ``task.test[test_index]``: one int32 [L] array per (candidate,
    augmentation), candidate-major (``out[c * len(augmentations) + a]``), each
    ``BOS (INPUT g OUTPUT g)* INPUT test_in CANDIDATE cand VERDICT``.

    ``candidates``: output grids (2-D, colours 0-9) in the task's original frame. Under each
    augmentation the demonstrations, their order and the test input are those of
    :func:`build_inference_prompts`, and the candidate goes through the augmentation as an output
    grid does (an output-side composition included). With ``max_len``, demonstrations are dropped
    from the end of the order until the whole prompt, candidate included, fits; ValueError if even
    one demonstration is too many, or a grid is not a grid of colours 0-9 (naming the candidate).
    The model's next-token distribution at the final VERDICT gives P(YES).
    """
    store = task_store([task])
    augs = [a or Augmentation() for a in augmentations]
    orders = [list(range(len(task.train))) if a.order is None else list(a.order) for a in augs]
    out = []
    for c, cand in enumerate(candidates):
        grid = np.asarray(cand)
        for aug, order in zip(augs, orders):
            ids, _used = _core.verify_prompt(store, 0, int(test_index), grid, *_aug_args(aug), order,
                                             int(max_len or 0), max_size, c)
            out.append(ids)
    return out


__all__ = ["build_training_prompt", "build_inference_prompt", "build_inference_prompts", "build_verify_prompts"]
