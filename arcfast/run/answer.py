"""One group's inference, from trained adapters to each task's answers: prediction (sampling or
depth-first search) under test-time augmentations, voting, re-scoring and verification of the voted
candidates, selection, and the metrics where solutions are known. Every stage stops at its share of
the deadline, at rates it measured."""
from __future__ import annotations

import math
import time

from ..budget.clock import InferenceRates
from ..infer.decoder import Decoder

VERIFY_SEED_OFFSET = 2   # verification's augmentations: a seed apart from prediction's and re-scoring's


def _candidate_record(c, predictions, ranks: dict) -> dict:
    """One distinct grid of a test input in ``tasks/<id>.json``: the grid, its count, its
    predictions' mean per-token log-probability, its log-probability under each scoring
    augmentation (``None``: not scored), how many of its predictions each search found, and its
    place under each selector."""
    found: dict = {}
    for m in c.members:
        how = predictions[m].search or "unknown"
        found[how] = found.get(how, 0) + 1
    return {"grid": c.grid.tolist(), "count": c.count,
            "mean_logprob": c.mean_logprob if math.isfinite(c.mean_logprob) else None,
            "logprobs": list(c.logprobs) if c.logprobs is not None else None,
            "verdicts": list(c.verdicts) if c.verdicts is not None else None,
            "found_by": found, "rank": ranks}


class GroupInference:
    """Inference for the groups of one run: one :class:`arcfast.infer.decoder.Decoder` (the model,
    each group's trained adapters found by task id, the generator kept between groups) for
    prediction, re-scoring and verification, and the rates they measured (re-scoring and
    verification per task, which the next group's generation leaves time for)."""

    def __init__(self, cfg, model, deadline, log, status):
        self.cfg, self.model, self.deadline = cfg, model, deadline
        self.decoder = Decoder(model)   # the model and the group's adapters, by task id
        self.log, self.status = log, status
        self.rates = InferenceRates()
        self.phases: dict = {}   # the last group's seconds per stage: predict, rescore, verify

    def run(self, backend, group, runs, planner, slot_of: dict) -> None:
        """Predict every test input of ``group`` with its task's adapter as the backend trained it
        (``slot_of``: task id -> its slot), vote, re-score and verify where asked, and fill each
        task's answers, candidates and metrics into ``runs`` (task id -> :class:`TaskRun`)."""
        import torch

        from ..answers.select import SCORED, VERIFIED, judge, ranks, select
        from ..answers.vote import vote
        from ..infer.decoding import GenerationConfig
        from ..infer.predict import max_output_tokens
        from ..infer.search import SearchConfig, SearchStats

        cfg = self.cfg
        self.phases = {}   # seconds of each stage, for the run's time line
        if self.deadline.expired():
            for t in group:
                runs[t.id].error = "no time left for inference: fallback answers"
            return
        # The adapters as trained (the native backend's own table: no copy, no PEFT round trip),
        # each task's found by its id.
        self.decoder.use(backend.inference_lora(self.model), slot_of)
        generator = self.decoder.gen()
        max_new = cfg.max_new_tokens or max(max_output_tokens(t) for t in group)
        gen_cfg = GenerationConfig(max_new_tokens=max_new,
                                   temperature=cfg.temperature if cfg.search == "sample" else 0.0, seed=cfg.seed)
        search = SearchConfig(min_prob=cfg.min_prob, max_new_tokens=max_new, max_candidates=cfg.max_candidates) \
            if cfg.search == "dfs" else None
        # The first prefill is planned from what was measured: a training step's seconds per token
        # (a forward alone never costs more) until the generator measures its own.
        generator.rates.prime(planner.sample_rates.slowest)
        search_stats = SearchStats(prefill_s_per_token=generator.rates.prefill or 0.0) \
            if search is not None else None
        # Generation stops at the deadline less what the later groups are owed, and less what
        # re-scoring this group took per task before (measured; nothing before the first group).
        stop_at = self.deadline.clock() + max(0.0, planner.inference_seconds())
        gen_stop = stop_at - self.rates.after_generation(len(group), cfg.rescore > 0, cfg.verify > 0)
        errors: dict = {}
        t0 = time.perf_counter()
        n_inputs = sum(len(t.test) for t in group)
        how = {"greedy": "", "sample": f" (sampled at temperature {cfg.temperature:g})",
               "dfs": f" (depth-first search, p >= {cfg.min_prob:g})"}[cfg.search]
        self.status(f"predicting {n_inputs} test inputs x {cfg.predictions}{how}", force=True)
        with torch.no_grad():
            preds = self.decoder.predict(group, n_predictions=cfg.predictions, config=gen_cfg,
                                         max_prompt_len=cfg.max_len, seed=cfg.seed, on_error="skip", errors=errors,
                                         deadline=gen_stop, search=search, search_stats=search_stats)
        self.phases["predict"] = time.perf_counter() - t0
        self.log(event="predict", tasks=[t.id for t in group], test_inputs=n_inputs,
                 predictions=sum(len(p) for per_test in preds for p in per_test),
                 tokens=sum(q.n_tokens for per_test in preds for p in per_test for q in p),
                 seconds=round(time.perf_counter() - t0, 3))
        if search_stats is not None:
            st = search_stats
            self.log(event="search", tasks=[t.id for t in group], prompts=st.prompts, completions=st.completions,
                     steps=st.steps, tokens=st.node_steps, forks=st.forks, capped=st.capped,
                     cut_by_deadline=st.cut_by_deadline, seconds=round(st.prefill_s + st.decode_s, 3))
        elif generator.stats.cut_by_deadline:   # the stats of this call (each call starts them anew)
            self.log(event="inference_cut", tasks=[t.id for t in group],
                     prompts=generator.stats.cut_by_deadline, reason="deadline")
        voted = [[vote(p, top_k=None) for p in per_test] for per_test in preds]
        if cfg.rescore > 0:
            self.status("scoring the voted candidates", force=True)
            t1 = time.perf_counter()
            self._rescore_group(group, voted, stop_at)
            self.phases["rescore"] = time.perf_counter() - t1
        if cfg.verify > 0:
            self.status("verifying the voted candidates", force=True)
            t1 = time.perf_counter()
            self._verify_group(group, voted, stop_at)
            self.phases["verify"] = time.perf_counter() - t1
        # Every selector that can rank these candidates is judged on them, side by side.
        selectors = ("vote",) + (SCORED if cfg.rescore > 0 else ()) + (VERIFIED if cfg.verify > 0 else ())
        per_task = (time.perf_counter() - t0) / len(group)
        for i, (t, per_test) in enumerate(zip(group, preds)):
            r = runs[t.id]
            r.inference_seconds = per_task
            if t.id in errors:
                r.error = (r.error + "; " if r.error else "") + str(errors[t.id])
            r.attempts, r.votes, r.predictions, r.candidates = [], [], [], []
            chosen = []
            for preds_i, cands in zip(per_test, voted[i]):
                ranked = select(cands, cfg.select)
                chosen.append(ranked[:2])
                r.attempts.append([c.grid.tolist() for c in ranked[:2]])
                r.votes.append(ranked[0].count if ranked else 0)
                r.predictions.append(len(preds_i))
                r.generated_tokens += sum(p.n_tokens for p in preds_i)
                r.candidates.append([_candidate_record(c, preds_i, k)
                                     for c, k in zip(cands, ranks(cands, selectors))])
            if t.has_solutions and per_test:
                from ..answers.metrics import score_task

                r.metrics = score_task(t, per_test, chosen)
                r.selection = judge([q.output for q in t.test], voted[i], selectors)

    def _rescore_group(self, group, voted, stop_at) -> None:
        """Score the top ``rescore_top`` voted candidates of every test input of ``group`` with two
        or more of them under ``rescore`` augmentations (one batched scoring call): each gets its
        log-probabilities in ``logprobs``, in place in ``voted``. Skipped, with a log event, when
        even its first batch would not end by ``stop_at``; otherwise stopped between batches at
        ``stop_at`` (test inputs left unscored are ranked by their votes)."""
        from ..arc.augment import test_time_augmentations
        from ..infer.logprobs import ScoreStats, build_sequences, default_batch_tokens
        from ..infer.rescore import RescoreJob, rescore_items, score_jobs

        cfg, model = self.cfg, self.model
        jobs, where = [], []
        for i, t in enumerate(group):
            # A seed apart from the prediction's: the candidates are judged from other viewpoints.
            augs = test_time_augmentations(t, cfg.rescore, seed=cfg.seed + 1)
            for ti, cands in enumerate(voted[i]):
                if len(cands) >= 2:
                    jobs.append(RescoreJob(t, ti, cands[:cfg.rescore_top], augs, self.decoder.slot(t.id)))
                    where.append((i, ti))
        if not jobs:
            return
        ids = sorted({group[i].id for i, _ in where})
        try:
            seqs = build_sequences(rescore_items(jobs), max_prompt_len=cfg.max_len)
        except ValueError as e:
            self.log(event="rescore_skipped", tasks=ids, reason=str(e))
            return
        # Batches are planned from the measured seconds per token: the previous scoring call's, or
        # before any, the generator's prefill (a scoring forward is a prefill). Test inputs are
        # scored in order and each one finished is used; no batch starts that would end past
        # stop_at, so a batch that cannot fit is never run.
        rate = self.rates.scoring_rate(self.decoder.gen().stats.prefill_s_per_token)
        sst = ScoreStats()
        t0 = time.perf_counter()
        out = score_jobs(jobs, self.decoder.score(seqs, deadline=stop_at, s_per_token=rate,
                                               stats=sst))
        seconds = time.perf_counter() - t0
        self.rates.record_rescore(seconds, len(group), sst.s_per_token)
        if sst.batches == 0:
            self.log(event="rescore_skipped", tasks=ids, tokens=seqs.n_tokens,
                     first_batch_s=round((rate or 0.0) * min(seqs.n_tokens, default_batch_tokens(model.device)), 2),
                     left_s=round(stop_at - self.deadline.clock(), 2), reason="deadline")
            return
        cut = sum(r is None for r in out)
        for (i, ti), scored in zip(where, out):
            if scored is not None:
                voted[i][ti] = scored + list(voted[i][ti][len(scored):])
        self.log(event="rescore", tasks=ids, test_inputs=len(jobs), sequences=len(seqs), tokens=seqs.n_tokens,
                 tokens_computed=sst.tokens, seconds=round(seconds, 3), cut_by_deadline=cut)

    def _verify_group(self, group, voted, stop_at) -> None:
        """Verify the voted candidates of every test input of ``group`` with two or more of them
        (:func:`arcfast.infer.verify.verify_jobs`, rounds, ``verify`` augmentations at most, each test
        input's adapter): each verified candidate gets its ``verdicts``, in place in ``voted``.
        Stopped between batches at ``stop_at``."""
        from ..arc.augment import test_time_augmentations
        from ..infer.verify import VerifyConfig, VerifyJob, VerifyStats

        cfg = self.cfg
        jobs, where = [], []
        for i, t in enumerate(group):
            # Viewpoints apart from the prediction's and the re-scoring's.
            augs = test_time_augmentations(t, cfg.verify, seed=cfg.seed + VERIFY_SEED_OFFSET)
            for ti, cands in enumerate(voted[i]):
                if len(cands) >= 2:
                    jobs.append(VerifyJob(t, ti, cands, augs, self.decoder.slot(t.id)))
                    where.append((i, ti))
        if not jobs:
            return
        st = VerifyStats()
        t0 = time.perf_counter()
        rate = self.rates.scoring_rate(self.decoder.gen().stats.prefill_s_per_token)
        try:
            out = self.decoder.verify(jobs, VerifyConfig(augmentations=cfg.verify), deadline=stop_at,
                              stats=st, max_prompt_len=cfg.max_len, s_per_token=rate)
        except ValueError as e:
            self.log(event="verify_skipped", tasks=sorted({group[i].id for i, _ in where}), reason=str(e))
            return
        seconds = time.perf_counter() - t0
        self.rates.record_verify(seconds, len(group))
        for (i, ti), cands in zip(where, out):
            voted[i][ti] = cands
        self.log(event="verify", tasks=sorted({group[i].id for i, _ in where}), test_inputs=len(jobs),
                 candidates=st.candidates, verifications=st.verifications, stopped=st.stopped, rounds=st.rounds,
                 tokens_computed=st.tokens, tokens=st.whole_tokens, seconds=round(seconds, 3),
                 cut_by_deadline=st.cut_by_deadline)
