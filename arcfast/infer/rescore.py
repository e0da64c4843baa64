"""Teacher-forced scores of candidate answers, and re-ranking by the augmentation product.

    items = [ScoreItem(task, 0, grid, aug, adapter), ...]      # grid in the task's original frame
    s = score_candidates(model, lora, items)                   # float64 [n]: summed log-probabilities
    ranked = rescore_predictions(model, lora, task, 0, vote(preds, top_k=None), augs, adapter)

An item's sequence is the inference prompt of ``task.test[test_index]`` under ``augmentation`` (the
one :func:`arcfast.samples.prompts.build_inference_prompts` builds for generation) followed by the augmented
grid in the compact format, its end-of-grid token included. Its score is the sum over the grid's
tokens of their log-probabilities: the fp32 log-softmax of the model's logits, as
:class:`arcfast.infer.decoding.Generation` records them, so the score of a greedy output's own grid equals
that output's ``logprob``.

Fast path (prefix-shared, the default): the sequences with identical prompt tokens and the same
adapter (K candidates of one test input under one augmentation) are laid out once as a tree: the
prompt at positions 0..P-1, then each candidate's target at positions P..P+G-1, where a target token
attends to the prompt and its own earlier tokens only (:class:`arcfast.model.attention.TreeAttention`).
The prompt's last position predicts every candidate's first token. A tree holds at most a row
(``row_len``) of tokens: a larger group becomes several trees, the prompt repeated in each. Trees
(at most ``batch_tokens`` tokens a batch) are packed into rows
(:func:`arcfast.samples.packing.best_fit_decreasing`), attention never crosses trees, each token goes
through its tree's adapter (:meth:`arcfast.lora.multi.MultiLoRA.begin`), and one no-grad forward runs
per batch; only the scored positions go through the LM head. K candidates of ~100 tokens after a
~1,000-token prompt cost P + K G positions instead of K (P + G): 4.9x fewer at K = 8.
``prefix_share=False`` packs every sequence whole (:class:`arcfast.model.attention.PackedAttention`), as
a batch without a shared prompt is anyway. The plain reference (:mod:`arcfast.reference.score`)
runs each sequence alone through the model's own unpacked forward.

Re-scoring (:func:`rescore_jobs`): every voted candidate of a test input is scored under M
augmentations and the candidates are ranked by the sum (:func:`arcfast.answers.select.select`, ``poe``), all test
inputs of all tasks in one batched call. Items are scored batch after batch, grouped by prompt, the
groups in the order of their first item, so when a ``deadline`` stops the work the items left
unscored (NaN) belong to the last jobs (the last groups: each job's prompts are its own unless two
jobs share a test input and adapter), and only the test inputs they belong to keep their voting
order. Batches are timed, and none is started that would end
past the deadline at the measured seconds per token (:class:`ScoreStats` keeps the rate).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..answers.select import select
from ..answers.vote import Candidate
from ..arc.augment import Augmentation
from ..arc.task import Task
from .logprobs import ScoreItem, score_candidates

# ----------------------------------------------------------------------------------------------
# Re-ranking voted candidates

@dataclass
class RescoreJob:
    """The candidates of one test input to re-rank: each is scored under every augmentation of
    ``augmentations`` through adapter ``adapter``."""

    task: Task
    test_index: int
    candidates: Sequence[Candidate]
    augmentations: Sequence[Augmentation]
    adapter: int = -1


def rescore_items(jobs: Sequence[RescoreJob]) -> list[ScoreItem]:
    """The items of ``jobs``: job by job, then candidate by candidate, then augmentation."""
    return [ScoreItem(j.task, j.test_index, c.grid, a, j.adapter)
            for j in jobs for c in j.candidates for a in j.augmentations]


def score_jobs(jobs: Sequence[RescoreJob], scores: np.ndarray) -> list:
    """Each job's candidates, in the given order, each carrying its score under every augmentation
    of the job in ``logprobs`` (:mod:`arcfast.answers.select` ranks them), from ``scores`` float
    [len(rescore_items(jobs))]; ``None`` for a job with an unscored (NaN) item."""
    scores = np.asarray(scores, dtype=np.float64)
    want = sum(len(j.candidates) * len(j.augmentations) for j in jobs)
    if scores.shape != (want,):
        raise ValueError(f"score_jobs: {scores.shape} scores for {want} items")
    out, k = [], 0
    for j in jobs:
        m, c = len(j.augmentations), len(j.candidates)
        s = scores[k:k + c * m].reshape(c, m)
        k += c * m
        if c and np.isnan(s).any():
            out.append(None)
            continue
        out.append([replace(cand, logprobs=tuple(float(x) for x in s[ci])) for ci, cand in enumerate(j.candidates)])
    return out


def rank_jobs(jobs: Sequence[RescoreJob], scores: np.ndarray) -> list:
    """Each job's candidates ranked by their summed scores (:func:`arcfast.answers.select.select`'s
    ``poe``: ties keep the given order; each carries its sum in ``score`` and its scores in
    ``logprobs``), from ``scores`` float [len(rescore_items(jobs))]; ``None`` for a job with an
    unscored (NaN) item."""
    return [None if cands is None else select(cands, "poe") for cands in score_jobs(jobs, scores)]


def rescore_jobs(model, lora, jobs: Sequence[RescoreJob], max_prompt_len: Optional[int] = None,
                 **kwargs) -> list:
    """Re-rank the candidates of many test inputs in one batched scoring call. Returns, per job, its
    candidates ranked by summed score, or ``None`` where a ``deadline`` (in ``kwargs``, with the
    other :func:`target_logprobs` settings) stopped the scoring first."""
    items = rescore_items(jobs)
    return rank_jobs(jobs, score_candidates(model, lora, items, max_prompt_len, **kwargs))


def rescore_predictions(model, lora, task: Task, test_index: int, candidates: Sequence[Candidate],
                        augmentations: Sequence[Augmentation], adapter: int = -1,
                        max_prompt_len: Optional[int] = None, **kwargs) -> list[Candidate]:
    """``candidates`` (e.g. ``vote(predictions, top_k=None)``) of ``task.test[test_index]`` ranked
    by their log-probability summed over ``augmentations``, highest first, each with its sum in
    ``score`` (ties keep the given order)."""
    if not augmentations:
        raise ValueError("rescore_predictions: needs at least one augmentation")
    job = RescoreJob(task, test_index, list(candidates), list(augmentations), adapter)
    return rescore_jobs(model, lora, [job], max_prompt_len, **kwargs)[0]


__all__ = ["RescoreJob", "rescore_items", "score_jobs", "rank_jobs", "rescore_jobs", "rescore_predictions"]
