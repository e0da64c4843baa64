"""ARC prediction on the batched generator: every test input of many tasks, each task with its
adapter, prompted under test-time augmentations, decoded strictly, the augmentation undone on each
parsed grid; one :class:`arcfast.answers.vote.Prediction` per output, ready for voting.

    preds = predict_tasks(model, tasks, adapter_ids, lora, n_predictions=8)
    preds[task][test_input]        # list of Prediction, in augmentation order
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..arc import vocab as T
from . import generate as _generate
from .decoding import Generation, GenerationConfig

NO_INVERSE = "no_inverse"  # status of a parsed grid that no grid maps to under the augmentation


def max_output_tokens(task, max_size: int = 30) -> int:
    """A bound on the tokens of any test output of ``task`` in any dihedral frame.

    ARC outputs either have a size of their own (seen among the train outputs) or scale with the
    input (the train pairs show the ratio); the bound takes the larger of both for every test input,
    on both axes (a transform may swap them), capped at ``max_size``. A random or untrained model
    that never emits EOG then stops after a plausible grid rather than after 30 x 30.
    """
    dims = []
    for p in task.train:
        dims += list(p.output.shape)
    for q in task.test:
        h, w = q.input.shape
        dims += [h, w]
        for p in task.train:
            (hi, wi), (ho, wo) = p.input.shape, p.output.shape
            dims += [math.ceil(h * ho / hi), math.ceil(w * wo / wi)]
    m = min(max_size, max(dims))
    return T.grid_len(m, m)


def augmentation_name(index: int, aug) -> str:
    """A short label of a test-time augmentation: ``"#<index> d<transform> c<colours>"``."""
    return f"#{index} d{aug.transform} c{''.join(str(c) for c in aug.colors)}"


@dataclass
class _Job:
    task: int
    test: int
    aug_index: int
    aug: Any
    adapter: int


def _prompts_for(task, augmentations, max_prompt_len, adapter, t_index) -> tuple[list, list]:
    from ..samples.prompts import build_inference_prompts

    prompts, jobs = [], []
    for ti in range(len(task.test)):
        try:
            ps = build_inference_prompts(task, ti, augmentations, max_len=max_prompt_len)
        except ValueError as e:
            raise ValueError(f"task {task.id} ({task.source or 'no source'}), test input {ti}: {e}") from None
        prompts += ps
        jobs += [_Job(t_index, ti, ai, a, adapter) for ai, a in enumerate(augmentations)]
    return prompts, jobs


def _to_prediction(gen: Generation, grid, status, job: _Job, adapter_name: str, search: str):
    from ..answers.vote import Prediction

    status = getattr(status, "value", status)
    if grid is not None:
        grid = job.aug.invert_grid(grid)
        if grid is None:
            status = NO_INVERSE
    return Prediction(grid=grid, status=status if grid is None else "ok", logprob=gen.logprob,
                      n_tokens=gen.n_tokens, augmentation=augmentation_name(job.aug_index, job.aug),
                      adapter=adapter_name, search=search)


def predict_tasks(model, tasks: Sequence, adapter_ids: Optional[Sequence[int]] = None, lora=None,
                  n_predictions: int = 8, augmentations: Optional[Sequence[Sequence]] = None,
                  config: Optional[GenerationConfig] = None, generator: Optional["_generate.Generator"] = None,
                  max_prompt_len: Optional[int] = None, seed: int = 0, on_error: str = "raise",
                  errors: Optional[dict] = None, adapter_names: Optional[Sequence[str]] = None,
                  deadline: Optional[float] = None, search=None,
                  search_stats=None) -> list[list[list]]:
    """Predict every test output of many tasks in one batched generation, each task with its adapter.

    tasks:          sequence of :class:`arcfast.arc.task.Task`.
    adapter_ids:    per task, its row of ``lora`` (a MultiLoRA), or -1 for the base model (default).
    n_predictions:  outputs per test input, under ``arcfast.arc.augment.test_time_augmentations(task,
                    n_predictions, seed)``: the identity first, then transform ``i % 8`` with a colour
                    permutation and shuffled demonstrations (96 gives 12 per dihedral transform).
    augmentations:  per task, an explicit list of :class:`arcfast.arc.augment.Augmentation` (overrides
                    ``n_predictions``).
    config:         :class:`GenerationConfig` (greedy, max new tokens 931 by default).
    generator:      a :class:`Generator` to reuse (keeps its CUDA graphs); default: a new one.
    max_prompt_len: drop demonstrations from the end of a prompt's order until it fits.
    on_error:       ``"raise"``: a task whose prompts cannot be built raises ValueError naming it;
                    ``"skip"``: it gets no predictions and ``errors[task.id]`` says why.
    adapter_names:  per task, the label stored in each Prediction's ``adapter`` (default: the id).
    deadline:       a ``time.monotonic()`` instant generation ends by (see
                    :meth:`Generator.generate`: no work is started that would end past it at the
                    measured rates); outputs cut short decode as ``"unterminated"``, and the
                    generator's ``stats`` hold the cut count and the rates.
    search:         an :class:`arcfast.infer.search.SearchConfig`: each prompt is searched depth-first
                    (:func:`arcfast.infer.search.dfs`, same adapters, deadline and prompt lengths) instead
                    of decoded once, and every completion found becomes a Prediction (its
                    ``max_new_tokens`` is ``config.max_new_tokens`` when a ``config`` is given); a
                    prompt with none gives one unparsed Prediction of status ``"no_completion"``.
                    ``search_stats``: an :class:`arcfast.infer.search.SearchStats` to fill.

    Returns ``out[task][test_input]``: a list of :class:`arcfast.answers.vote.Prediction` in the task's
    original frame, one per augmentation (with ``search``: one per completion), in augmentation
    order, each saying how it was found in ``search`` (``"greedy"``, ``"sample"`` or ``"dfs"``). Outputs that fail the strict
    decoder keep its status (``"unterminated"``, ``"ragged"``...), and a grid that no grid maps to
    under the augmentation gets ``"no_inverse"``; neither raises.
    """
    from ..arc.augment import test_time_augmentations
    from ..arc.formats import decode_batch

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if n_predictions < 1:
        raise ValueError(f"n_predictions must be >= 1, got {n_predictions}")
    tasks = list(tasks)
    ids = [-1] * len(tasks) if adapter_ids is None else [int(a) for a in adapter_ids]
    if len(ids) != len(tasks):
        raise ValueError(f"{len(ids)} adapter ids for {len(tasks)} tasks")
    if augmentations is not None and len(augmentations) != len(tasks):
        raise ValueError(f"{len(augmentations)} augmentation lists for {len(tasks)} tasks")
    names = [str(a) if a >= 0 else "base" for a in ids] if adapter_names is None else list(adapter_names)
    errors = {} if errors is None else errors
    out: list[list[list]] = [[[] for _ in t.test] for t in tasks]
    prompts, jobs = [], []
    for i, task in enumerate(tasks):
        augs = list(augmentations[i]) if augmentations is not None else \
            test_time_augmentations(task, n_predictions, seed=seed)
        try:
            p, j = _prompts_for(task, augs, max_prompt_len, ids[i], i)
        except ValueError as e:
            if on_error == "raise":
                raise
            errors[task.id] = str(e)
            continue
        prompts += p
        jobs += j
    if not prompts:
        return out
    if search is not None:
        return _search_tasks(model, lora, prompts, jobs, names, out, search, config, deadline, search_stats)
    gen = generator if generator is not None else _generate.Generator(model, lora=lora)
    if gen.model is not model or gen.lora is not lora:
        raise ValueError("the generator was built for another model or LoRA")
    # Keys make sampling noise a function of the job, not of the batch it shares.
    keys = [(j.task * 1009 + j.test) * 100003 + j.aug_index for j in jobs]
    gens = gen.generate(prompts, [j.adapter for j in jobs], config, keys=keys, deadline=deadline)
    decoded = decode_batch([g.tokens for g in gens], "compact")
    how = "sample" if config is not None and config.temperature > 0 else "greedy"
    for g, (grid, status), job in zip(gens, decoded, jobs):
        out[job.task][job.test].append(_to_prediction(g, grid, status, job, names[job.task], how))
    return out


NO_COMPLETION = "no_completion"  # status of a searched prompt that gave no completion


def _search_tasks(model, lora, prompts, jobs, names, out, search, config, deadline, stats):
    """:func:`predict_tasks` with depth-first search: every completion of every prompt decoded and
    un-augmented."""
    from ..arc.formats import decode_batch
    from .search import dfs

    if config is not None:
        search = dataclasses.replace(search, max_new_tokens=config.max_new_tokens)
    found = dfs(model, prompts, [j.adapter for j in jobs], lora, search, deadline=deadline, stats=stats)
    flat = [c for f in found for c in f]
    decoded = iter(decode_batch([c.tokens for c in flat], "compact"))
    for f, job in zip(found, jobs):
        if not f:
            out[job.task][job.test].append(_to_prediction(
                Generation(np.zeros(0, np.int32), np.zeros(0, np.float32)), None, NO_COMPLETION, job,
                names[job.task], "dfs"))
        for c in f:
            grid, status = next(decoded)
            out[job.task][job.test].append(_to_prediction(c, grid, status, job, names[job.task], "dfs"))
    return out


def predict_task(model, task, adapter: int = -1, lora=None, n_predictions: int = 8,
                 augmentations: Optional[Sequence] = None, **kwargs) -> list[list]:
    """:func:`predict_tasks` for one task: ``out[test_input]`` -> list of Predictions."""
    augs = None if augmentations is None else [list(augmentations)]
    return predict_tasks(model, [task], [adapter], lora, n_predictions, augs, **kwargs)[0]
