"""Deadlines bind inside generation and scoring, also on a slow machine.

The machine is slowed on purpose: each decode step, each prefill micro-batch or each scoring batch
sleeps a fixed time (the tiny model's own work is ~1 ms a step, so the sleep sets the pace). The
generator and the scorer time their work and start none that would end past the deadline at the
measured rate times ``DEADLINE_SAFETY`` (1.1); what is left past the deadline is the rate's error
(a sleep waking late on a busy machine), the cut rows' harvest and the return, each a few ms. The
tolerance is one slowed unit of work (a step, a micro-batch, a batch: 50 ms), against a cut up to
``sync_every`` steps (or a whole refill's prefill, or a batch) late without the planning.
"""
import time

import numpy as np
import pytest
import torch

import arcfast.infer.logprobs as score_mod
from arcfast.arc import vocab as T
from arcfast.infer.generate import Generator
from arcfast.infer.predict import predict_tasks
from arcfast.model.decoder import build_model, init_weights
from arcfast.model.config import preset
from arcfast.infer.logprobs import ScoreStats, Sequences, score_sequences, target_logprobs
from arcfast.arc.task import Pair, Task
from slowed import slow_down

pytestmark = pytest.mark.usefixtures("one_thread")

UNIT = 0.05        # seconds slept per slowed unit of work
TOL = UNIT         # allowed past the deadline: one unit (see the module docstring)
MAX_NEW = 9        # the prefill's token + 8 decode steps: one chunk at sync_every=8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(preset("tiny"), device="cpu", dtype=torch.float32)
    init_weights(m, seed=1, std=0.3)
    return m.eval()


def _prompts(n: int, length: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[T.BOS], rng.integers(0, 13, size=length), [T.OUTPUT]]).astype(np.int32)
            for _ in range(n)]


def _same(a, b) -> bool:
    return a.tokens.tolist() == b.tokens.tolist() and np.array_equal(a.logprobs, b.logprobs)


def test_a_slow_decode_stops_inside_a_chunk_and_keeps_finished_outputs(model, monkeypatch):
    slow_down(monkeypatch, Generator, "_step", UNIT)
    gen = Generator(model, cuda_graphs=False, max_batch=4, sync_every=8)
    prompts = _prompts(16)
    # Uncut: four waves of four rows, each a prefill and one chunk of 8 slowed steps.
    t0 = time.monotonic()
    full = gen.generate(prompts, max_new_tokens=MAX_NEW, stop_on_eog=False)
    wave = (time.monotonic() - t0) / 4
    assert gen.stats.cut_by_deadline == 0 and gen.stats.decode_steps == 32
    assert gen.stats.decode_s_per_step >= UNIT and gen.stats.step_s_by_batch[4] >= UNIT
    # The deadline falls in the middle of the third wave's chunk: without planning it would run
    # to the chunk's end, 4 steps (0.2 s) late.
    start = time.monotonic()
    deadline = start + 2.5 * wave
    outs = gen.generate(prompts, max_new_tokens=MAX_NEW, stop_on_eog=False, deadline=deadline)
    end = time.monotonic()
    assert end <= deadline + TOL, f"{end - deadline:.3f} s past the deadline"
    assert end >= deadline - 3 * UNIT, f"stopped {deadline - end:.3f} s early: the steps that fit were not run"
    st = gen.stats
    assert st.decode_steps % 8 != 0   # the last chunk ran the steps that fit, not 8
    finished = [i for i, o in enumerate(outs) if o.n_tokens == MAX_NEW]
    cut = [i for i, o in enumerate(outs) if o.n_tokens < MAX_NEW]
    assert len(finished) >= 4 and cut and len(finished) + len(cut) == 16
    assert st.cut_by_deadline == len(cut)
    for i in finished:   # finished before the cut: exactly the uncut run's outputs
        assert _same(outs[i], full[i])
    for i in cut:        # in flight: a prefix of the uncut output; never started: empty
        k = outs[i].n_tokens
        assert outs[i].tokens.tolist() == full[i].tokens[:k].tolist()
        assert np.array_equal(outs[i].logprobs, full[i].logprobs[:k])
    assert sum(o.n_tokens == 0 for o in outs) >= 4   # the fourth wave never started


def test_a_deadline_that_does_not_bind_changes_nothing(model):
    gen = Generator(model, cuda_graphs=False, max_batch=4, sync_every=8, prefill_tokens=64)
    prompts = _prompts(10, seed=3) + _prompts(6, length=12, seed=4)
    ref = gen.generate(prompts, max_new_tokens=MAX_NEW + 7, stop_on_eog=False)
    steps = gen.stats.decode_steps
    far = gen.generate(prompts, max_new_tokens=MAX_NEW + 7, stop_on_eog=False, deadline=time.monotonic() + 1e6)
    assert gen.stats.decode_steps == steps and gen.stats.cut_by_deadline == 0
    assert all(_same(a, b) for a, b in zip(ref, far))
    assert gen.stats.prefill_padded_tokens >= gen.stats.prompt_tokens and gen.stats.prefill_s_per_token > 0
    est = gen.estimate_seconds(len(prompts), gen.stats.prompt_tokens, MAX_NEW + 7)
    assert est is not None and est > 0


def test_a_slow_prefill_is_cut_between_micro_batches(model, monkeypatch):
    slow_down(monkeypatch, Generator, "_prefill_forward", UNIT)
    prompts = _prompts(16, seed=1)
    # One prompt per micro-batch: one refill of 16 slowed micro-batches (0.8 s).
    kw = dict(cuda_graphs=False, max_batch=16, prefill_tokens=len(prompts[0]))
    full = Generator(model, **kw).generate(prompts, max_new_tokens=MAX_NEW, stop_on_eog=False)
    gen = Generator(model, **kw)   # fresh: its first micro-batch is unplanned, the others are planned
    start = time.monotonic()
    deadline = start + 6.5 * UNIT
    outs = gen.generate(prompts, max_new_tokens=MAX_NEW, stop_on_eog=False, deadline=deadline)
    end = time.monotonic()
    assert end <= deadline + TOL, f"{end - deadline:.3f} s past the deadline"
    st = gen.stats
    started = [i for i, o in enumerate(outs) if o.n_tokens > 0]
    never = [i for i, o in enumerate(outs) if o.n_tokens == 0]
    assert 1 <= len(started) <= 7 and len(never) >= 9
    assert st.prefill_padded_tokens == len(started) * len(prompts[0]) and st.prefill_s_per_token >= UNIT / 32
    assert st.cut_by_deadline == sum(o.n_tokens < MAX_NEW for o in outs)
    # The prompts admitted decode in a smaller batch than uncut: the same tokens, and
    # log-probabilities equal up to float rounding.
    for i in started:
        k = outs[i].n_tokens
        assert outs[i].tokens.tolist() == full[i].tokens[:k].tolist()
        np.testing.assert_allclose(outs[i].logprobs, full[i].logprobs[:k], atol=1e-5)


def test_generation_planned_from_an_earlier_call_starts_nothing_that_cannot_fit(model, monkeypatch):
    slow_down(monkeypatch, Generator, "_prefill_forward", UNIT)
    gen = Generator(model, cuda_graphs=False, max_batch=4)
    prompts = _prompts(4, seed=2)
    gen.generate(prompts, max_new_tokens=2)   # measures the rates
    start = time.monotonic()
    # Measured at 0.05 s for four prompts: not even one prompt fits in 0.005 s, so none is started.
    outs = gen.generate(prompts, max_new_tokens=2, deadline=start + 0.1 * UNIT)
    assert time.monotonic() - start < 0.5 * UNIT
    assert all(o.n_tokens == 0 for o in outs) and gen.stats.cut_by_deadline == 4


def test_a_prompt_too_long_for_the_time_left_is_skipped_and_shorter_ones_still_run(model):
    """Longest first, but a long prompt that cannot fit does not close the door on the short ones:
    at a primed 10 ms per token, 3,000 tokens (30 s) are skipped and 20 tokens (0.2 s) run."""
    gen = Generator(model, cuda_graphs=False, max_batch=4)
    gen.rates.prime(0.01)
    long, short = _prompts(1, length=3000, seed=3)[0], _prompts(1, length=20, seed=4)[0]
    outs = gen.generate([long, short], max_new_tokens=2, deadline=time.monotonic() + 5.0)
    assert outs[0].n_tokens == 0 and outs[1].n_tokens == 2
    assert gen.stats.cut_by_deadline == 1 and gen.stats.prefill_padded_tokens == len(short)


def _task(tid: str, seed: int) -> Task:
    rng = np.random.default_rng(seed)

    def g(h, w):
        return rng.integers(0, 10, size=(h, w)).astype(np.uint8)

    return Task(tid, [Pair(g(2, 3), g(3, 2)) for _ in range(2)], [Pair(g(2, 2)), Pair(g(3, 2))], source="test")


def test_predictions_under_a_deadline_are_complete(model, monkeypatch):
    """Cut or not, every test input gets one prediction per augmentation, by the deadline."""
    from arcfast.infer.decoding import GenerationConfig

    slow_down(monkeypatch, Generator, "_step", UNIT)
    gen = Generator(model, cuda_graphs=False, max_batch=8, sync_every=8)
    tasks = [_task("a", 0), _task("b", 1)]
    start = time.monotonic()
    deadline = start + 10 * UNIT
    preds = predict_tasks(model, tasks, n_predictions=4, config=GenerationConfig(max_new_tokens=40),
                          generator=gen, deadline=deadline)
    assert time.monotonic() <= deadline + TOL
    assert gen.stats.cut_by_deadline > 0
    for per_task in preds:
        assert len(per_task) == 2 and all(len(p) == 4 for p in per_task)
        for p in per_task:
            assert all((q.status == "ok") == (q.grid is not None) for q in p)


# ----------------------------------------------------------------------------------------------
# Scoring

def _sequences(n: int, seed: int = 0) -> Sequences:
    rng = np.random.default_rng(seed)
    prompts = [np.concatenate([[T.BOS], rng.integers(0, 13, size=int(rng.integers(20, 40))), [T.OUTPUT]]).astype(np.int32)
               for _ in range(n)]
    targets = [rng.integers(0, 11, size=int(rng.integers(3, 12))).astype(np.int32) for _ in range(n)]
    return Sequences(prompts, targets, np.full(n, -1, dtype=np.int64))


def test_a_slow_scorer_starts_no_batch_that_would_end_past_the_deadline(model, monkeypatch):
    slow_down(monkeypatch, score_mod, "_forward_batch", UNIT)
    seqs = _sequences(24)
    kw = dict(batch_tokens=100)   # 2 sequences a batch: 12 slowed batches
    st = ScoreStats()
    full = score_sequences(model, None, seqs, stats=st, **kw)
    assert st.batches == 12 and st.scored == 24 and st.cut_by_deadline == 0 and st.s_per_token > 0
    assert st.tokens == seqs.n_tokens
    # Planned from the first batch on (the rate measured here); the deadline falls mid-batch.
    start = time.monotonic()
    deadline = start + 4.5 * UNIT
    cut_st = ScoreStats()
    got = score_sequences(model, None, seqs, deadline=deadline, s_per_token=st.s_per_token, stats=cut_st, **kw)
    end = time.monotonic()
    assert end <= deadline + TOL, f"{end - deadline:.3f} s past the deadline"
    k = cut_st.scored
    assert 2 <= k <= 8 and cut_st.cut_by_deadline == 24 - k
    assert np.array_equal(got[:k], full[:k]) and np.isnan(got[k:]).all()   # scored in order, exactly
    # A first batch that cannot fit is not started.
    start = time.monotonic()
    none = target_logprobs(model, None, seqs, deadline=start + 0.5 * UNIT, s_per_token=st.s_per_token, **kw)
    assert time.monotonic() - start < 0.5 * UNIT and all(x is None for x in none)
    # A deadline that does not bind changes nothing.
    far = score_sequences(model, None, seqs, deadline=time.monotonic() + 1e6, **kw)
    assert np.array_equal(far, full)
