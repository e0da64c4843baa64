"""Verification: how likely each candidate output is right, asked of a model trained on the
``verify`` objective (:mod:`arcfast.samples.objectives`), one teacher-forced forward per candidate and
augmentation, no generation.

    jobs = [VerifyJob(task, 0, vote(preds, top_k=None), augmentations, adapter), ...]
    verified = verify_jobs(model, lora, jobs, VerifyConfig())
    select(verified[0], "verify")            # arcfast.answers.select ranks by the verdicts

The question, under augmentation ``a`` (:func:`arcfast.samples.prompts.build_verify_prompts`): the task's
demonstrations, the test input, ``CANDIDATE``, the candidate grid, ``VERDICT``; the answer is the
next token, ``YES`` or ``NO``. A candidate's verdict under ``a`` is P(YES) renormalised over the
two answers: ``1 / (1 + exp(logp(NO) - logp(YES)))``.

The sequences go through the packed, prefix-shared scorer (:func:`arcfast.infer.logprobs.target_logprobs`):
everything up to ``CANDIDATE`` is the prompt every candidate of a test input shares under one
augmentation, computed once; each candidate adds its grid, ``VERDICT`` and one answer token (its
YES and NO sequences share their grid too, in the same tree).

Rounds (the binomial stopping rule of the verifier this follows): every round verifies each
candidate still in the running under ``per_round`` more augmentations; a candidate's verdicts so
far are read as the successes of a binomial of that many trials, and once the upper end of its
interval (Wilson, at ``confidence``) falls below the lower end of the ``top``-th best candidate's,
it stops: it cannot reach the places that matter. The ``top`` best always go on, to ``augmentations``
verifications. Verification spends its work on the candidates that can still be submitted.

A ``deadline`` stops the work between batches (:func:`arcfast.infer.logprobs.target_logprobs`); a candidate
keeps the verdicts of the augmentations that finished (both answers scored).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

from ..arc import vocab as T


@dataclass(frozen=True)
class VerifyConfig:
    """augmentations: verifications per candidate at most (K); per_round: added each round;
    confidence: of the interval that stops a candidate; top: the places that matter (2 attempts);
    max_candidates: the most voted candidates of a test input that are verified at all;
    min_candidates: the fewest a test input needs to be verified at all (2: with one there is nothing
    to choose between; 1 verifies every candidate, which measures the whole cost)."""

    augmentations: int = 8
    per_round: int = 2
    confidence: float = 0.95
    top: int = 2
    max_candidates: int = 16
    min_candidates: int = 2

    def __post_init__(self):
        for name in ("augmentations", "per_round", "top", "max_candidates", "min_candidates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VerifyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"VerifyConfig.confidence must be in (0, 1), got {self.confidence}")


@dataclass
class VerifyJob:
    """The candidates of one test input (voting order) to verify under ``augmentations`` (at least
    ``VerifyConfig.augmentations`` of them) through adapter ``adapter`` (-1: the base model)."""

    task: object
    test_index: int
    candidates: Sequence
    augmentations: Sequence
    adapter: int = -1


@dataclass
class VerifyStats:
    """What a :func:`verify_jobs` call did: rounds run, candidates verified at all, verifications
    (candidate x augmentation) done, candidates stopped early by the interval rule, tokens the
    scorer computed (``whole_tokens``: without prefix sharing), its seconds, and verifications the
    deadline left undone."""

    rounds: int = 0
    candidates: int = 0
    verifications: int = 0
    stopped: int = 0
    tokens: int = 0
    whole_tokens: int = 0
    seconds: float = 0.0
    cut_by_deadline: int = 0


def p_right(logp_yes: float, logp_no: float) -> float:
    """P(YES) renormalised over the two answers."""
    d = float(logp_no) - float(logp_yes)
    return 1.0 / (1.0 + math.exp(d)) if d < 700 else 0.0


def wilson(mean: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``mean`` over ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def still_running(verdicts: Sequence[Sequence[float]], running: Sequence[int], top: int, z: float) -> list[int]:
    """The candidates of ``running`` (indices into ``verdicts``) whose interval still reaches the
    ``top``-th best lower bound; the ``top`` best by mean always stay (voting order breaks ties)."""
    if len(running) <= top:
        return list(running)
    means = {i: float(np.mean(verdicts[i])) for i in running}
    order = sorted(running, key=lambda i: (-means[i], i))
    bounds = {i: wilson(means[i], len(verdicts[i]), z) for i in running}
    floor = bounds[order[top - 1]][0]
    return sorted(i for k, i in enumerate(order) if k < top or bounds[i][1] >= floor)


def _round_sequences(jobs, running, config, r, max_prompt_len):
    """The sequences of round ``r``: per job, augmentation of the round and running candidate, the
    YES and the NO sequence; and where each pair of sequences belongs."""
    from ..samples.prompts import build_verify_prompts
    from .logprobs import Sequences

    prompts, targets, adapters, where = [], [], [], []
    lo = r * config.per_round
    for j, job in enumerate(jobs):
        augs = list(job.augmentations)[lo:min(lo + config.per_round, config.augmentations)]
        if not augs or not running[j]:
            continue
        grids = [job.candidates[i].grid for i in running[j]]
        try:
            built = build_verify_prompts(job.task, job.test_index, grids, augs, max_len=max_prompt_len)
        except ValueError as e:
            raise ValueError(f"task {job.task.id}, test input {job.test_index}: {e}") from None
        k = 0
        for i in running[j]:
            for a in range(len(augs)):
                p = np.asarray(built[k], np.int32)
                k += 1
                cut = int(np.flatnonzero(p == T.CANDIDATE)[-1]) + 1
                for answer in (T.YES, T.NO):
                    prompts.append(p[:cut])
                    targets.append(np.concatenate([p[cut:], [answer]]).astype(np.int32))
                    adapters.append(job.adapter)
                where.append((j, i))
    return Sequences(prompts, targets, np.asarray(adapters, np.int64)), where


def verify_jobs(model, lora, jobs: Sequence[VerifyJob], config: Optional[VerifyConfig] = None,
                deadline: Optional[float] = None, stats: Optional[VerifyStats] = None,
                max_prompt_len: Optional[int] = None, **score_kwargs) -> list:
    """Verify the candidates of many test inputs together (every round one batched scoring call).

    Returns, per job, its candidates in the given order, each verified one carrying its verdicts
    (P(right) under each augmentation it was verified with, in augmentation order) in
    ``verdicts``; the rest (beyond ``max_candidates``, or a job with fewer than ``min_candidates``)
    unchanged. ``score_kwargs`` go to
    :func:`arcfast.infer.logprobs.target_logprobs` (batch_tokens, row_len, s_per_token, ...).
    """
    from .logprobs import ScoreStats, target_logprobs

    config = config or VerifyConfig()
    if not model.config.has_objective_ids:
        raise ValueError(f"{model.config.name or 'the model'} has no ids for the verify objective "
                         f"(CANDIDATE, VERDICT, YES, NO): grow them (arcfast.model.decoder.grow_vocab) and train "
                         f"it on the verify objective first")
    st = stats if stats is not None else VerifyStats()
    z = NormalDist().inv_cdf(0.5 + config.confidence / 2)
    for j, job in enumerate(jobs):
        if len(job.augmentations) < config.augmentations:
            raise ValueError(f"job {j} (task {job.task.id}, test input {job.test_index}): "
                             f"{len(job.augmentations)} augmentations for {config.augmentations} verifications")
    verdicts = [[[] for _ in job.candidates] for job in jobs]
    running = [list(range(min(len(job.candidates), config.max_candidates)))
               if len(job.candidates) >= config.min_candidates else []
               for job in jobs]
    st.candidates += sum(len(r) for r in running)
    rounds = math.ceil(config.augmentations / config.per_round)
    for r in range(rounds):
        seqs, where = _round_sequences(jobs, running, config, r, max_prompt_len)
        if not where:
            break
        if deadline is not None and time.monotonic() >= deadline:
            st.cut_by_deadline += len(where)
            break
        sst = ScoreStats()
        lps = target_logprobs(model, lora, seqs, deadline=deadline, stats=sst, **score_kwargs)
        st.rounds += 1
        st.tokens += sst.tokens
        st.whole_tokens += sst.whole_tokens
        st.seconds += sst.seconds
        cut = False
        for k, (j, i) in enumerate(where):
            yes, no = lps[2 * k], lps[2 * k + 1]
            if yes is None or no is None:
                cut = True
                st.cut_by_deadline += 1
                continue
            verdicts[j][i].append(p_right(yes[-1], no[-1]))
            st.verifications += 1
        if cut:
            break
        for j in range(len(jobs)):
            kept = still_running(verdicts[j], running[j], config.top, z)
            st.stopped += len(running[j]) - len(kept)
            running[j] = kept
    return [[replace(c, verdicts=tuple(v)) if v else c for c, v in zip(job.candidates, vs)]
            for job, vs in zip(jobs, verdicts)]


__all__ = ["VerifyConfig", "VerifyJob", "VerifyStats", "verify_jobs", "p_right", "wilson", "still_running"]
