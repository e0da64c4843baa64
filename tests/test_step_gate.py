"""A training step cut into micro-batches by the budget's gate: the same update when it runs
whole, nothing applied when it is abandoned, and a first step that measures itself small."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from arcfast.budget.clock import Rate
from arcfast.budget.steps import SampleRates, StepAbandoned, StepGate
from arcfast.model.checkpoint import load_model
from arcfast.train.trainer import Trainer, pack_samples
from test_trainer import LCFG, make_sample, train_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(seed=0, n_steps=3, n_tasks=3):
    """Packed steps of several tasks' samples, in rows of 64, with two objectives mixed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        samples = [make_sample(rng, a % n_tasks, int(rng.integers(8, 30))) for a in range(3 * n_tasks)]
        b = pack_samples(samples, 64)
        b.objective_ids = (np.arange(b.n_samples) % 2 * 2).astype(np.int32)   # output and verify
        out.append(b)
    return out


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def small_pieces(clock=time.monotonic, stop_at=None, frozen=False):
    """A gate measured at 10 ms per token that plans pieces of 0.3 s: about 24 tokens, one or two
    samples, so each step runs in several pieces. ``frozen``: it records nothing more (real times
    would resize the pieces), so every step through it is cut alike."""
    rates = SampleRates()
    rates.record(1.0, [100])
    if frozen:
        rates.record = lambda *a: None
    return StepGate(clock() + 1e6 if stop_at is None else stop_at, rates, piece_seconds=0.3, clock=clock)


def step_both(whole, cut, batch, min_pieces: int):
    """One step of ``batch`` by ``whole`` and, cut in pieces by a frozen gate, by ``cut``: their
    losses and gradient norms agree; both StepStats."""
    gate = small_pieces(frozen=True)
    a, c = whole.step(batch), cut.step(batch, gate=gate)
    assert gate.pieces >= min_pieces                  # it really was cut
    np.testing.assert_allclose(c.loss, a.loss, rtol=1e-5)
    np.testing.assert_allclose(c.grad_norm, a.grad_norm, rtol=1e-4)
    return a, c


def test_a_step_in_micro_batches_is_the_whole_step():
    model = load_model("tiny", seed=0)
    whole, cut = (Trainer(model, LCFG, train_cfg(), 3) for _ in range(2))
    for t in (whole, cut):
        t.reset_adapters(range(3), seeds=[4, 5, 6], total_steps=6)
    for b in batches():
        a, c = step_both(whole, cut, b, min_pieces=4)
        np.testing.assert_allclose(c.objective_loss, a.objective_loss, rtol=1e-5)
        np.testing.assert_array_equal(c.label_tokens, a.label_tokens)
        np.testing.assert_array_equal(c.objective_tokens, a.objective_tokens)
        assert c.tokens == a.tokens and c.stepped.tolist() == a.stepped.tolist()
    # Adam divides by sqrt(v): a summation-order difference in a near-zero gradient shows at ~1e-5
    # in a weight (lr is 2e-2); the gradients themselves are compared below
    torch.testing.assert_close(cut.lora.weight, whole.lora.weight, rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(cut.opt.m, whole.opt.m, rtol=1e-4, atol=1e-7)
    assert (cut.opt.steps == whole.opt.steps).all()


def test_the_accumulated_gradient_is_the_whole_batchs():
    model = load_model("tiny", seed=0)
    t = Trainer(model, LCFG, train_cfg(), 3)
    with torch.no_grad():
        t.lora.weight.normal_(0, 0.1)
    b = batches(4, n_steps=1)[0]
    from arcfast.train.loss import prepare_batch

    d = prepare_batch(b, model, t.lora, 3, "sdpa", "torch")
    whole = t._forward_losses(d)[0]
    whole.sum().backward()
    g_whole, t.lora.weight.grad = t.lora.weight.grad.clone(), None
    gate = small_pieces(frozen=True)
    losses = t._accumulate(b.trimmed(), gate)[0]
    assert gate.pieces >= 4
    torch.testing.assert_close(losses, whole.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.lora.weight.grad, g_whole, rtol=1e-4, atol=1e-7)
    assert g_whole.abs().sum() > 0


def test_an_abandoned_step_applies_nothing_and_leaves_no_gradient_behind():
    model = load_model("tiny", seed=0)
    t, ref = (Trainer(model, LCFG, train_cfg(), 3) for _ in range(2))
    for x in (t, ref):
        x.reset_adapters(range(3), seeds=[4, 5, 6], total_steps=6)
    b0, b1 = batches(1, n_steps=2)
    clock = FakeClock()
    # 10 ms per token measured: 0.3 s left fits one ~24-token piece but never the rest of the step.
    gate = small_pieces(clock, stop_at=0.3 + 1e-9, frozen=True)
    before = (t.lora.weight.detach().clone(), t.opt.m.clone(), t.opt.v.clone(), t.opt.steps.copy())
    with pytest.raises(StepAbandoned) as e:
        t.step(b0, gate=gate)
    assert e.value.tokens == b0.n_tokens and e.value.tokens_done == 0 and e.value.predicted > e.value.left
    assert t.lora.weight.grad is None
    torch.testing.assert_close(t.lora.weight, before[0], rtol=0, atol=0)
    assert torch.equal(t.opt.m, before[1]) and torch.equal(t.opt.v, before[2])
    assert (t.opt.steps == before[3]).all()

    # Part way: the first pieces run (the clock moves as they do), then the rest no longer fits.
    clock.t = 0.0
    gate = small_pieces(clock, stop_at=b0.n_tokens * 0.0125)   # just enough for the whole step at 10 ms
    gate.rates.record = lambda s, ls: setattr(clock, "t", clock.t + 0.02 * sum(ls))   # it runs at 20 ms
    with pytest.raises(StepAbandoned) as e:
        t.step(b0, gate=gate)
    assert 0 < e.value.tokens_done < e.value.tokens and t.lora.weight.grad is None
    torch.testing.assert_close(t.lora.weight, before[0], rtol=0, atol=0)
    # The next step is exactly a fresh trainer's: no gradient of the abandoned one leaked into it.
    a, c = ref.step(b1), t.step(b1)
    np.testing.assert_allclose(c.loss, a.loss, rtol=1e-6)
    torch.testing.assert_close(t.lora.weight, ref.lora.weight, rtol=1e-5, atol=1e-7)


def test_the_first_piece_is_measured_small_before_a_long_sample_runs():
    model = load_model("tiny", seed=0)
    t = Trainer(model, LCFG, train_cfg(), 1)
    rng = np.random.default_rng(0)
    b = pack_samples([make_sample(rng, 0, 600), make_sample(rng, 0, 300)], 1024)
    clock = FakeClock()
    gate = StepGate(5.0, SampleRates(), piece_seconds=1.0, calibration_tokens=64, clock=clock)
    probed = []
    real_probe = t._probe
    t._probe = lambda piece: (probed.append(piece.n_tokens), real_probe(piece))
    # The probe's time on this clock: 0.1 s for 64 tokens, so 600 tokens would take ~1 s or more.
    real_record = gate.rates.record
    gate.rates.record = lambda s, ls: real_record(0.1 * sum(ls) / 64, ls)
    clock.t = 4.5                                  # 0.5 s left: the long first sample cannot fit
    with pytest.raises(StepAbandoned) as e:
        t.step(b, gate=gate)
    assert probed == [32, 64] and e.value.tokens_done == 0 and t.lora.weight.grad is None
    assert gate.rates.per_token(64)[0] == pytest.approx(0.1 / 64)
    # With time enough, the probe is not run again (measured) and the step completes.
    clock.t = 0.0
    st = t.step(b, gate=gate)
    assert probed == [32, 64] and st.stepped[0] and gate.pieces >= 1


def test_hf_backend_steps_in_micro_batches_as_whole():
    from arcfast.train.backends import make_backend

    model = load_model("tiny", seed=0)
    cfg = train_cfg(lr=1e-2, steps=5, warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5)
    whole, cut = (make_backend("hf", model, LCFG, cfg, 1) for _ in range(2))
    for bk in (whole, cut):
        bk.reset_adapters([0], seeds=[5], total_steps=5)
    for b in batches(2, n_steps=3, n_tasks=1):
        b.objective_ids = None
        step_both(whole, cut, b, min_pieces=3)
    x, y = whole.export_adapter(0), cut.export_adapter(0)
    for k in x:
        torch.testing.assert_close(y[k], x[k], rtol=1e-4, atol=1e-6)


def test_pieces_partition_the_batch_and_keep_its_conventions():
    rng = np.random.default_rng(3)
    b = pack_samples([make_sample(rng, a % 2, int(rng.integers(5, 40))) for a in range(11)], 64)
    b.objective_ids = np.arange(b.n_samples, dtype=np.int32) % 3
    b.target_ids = np.arange(b.n_samples, dtype=np.int32) * 10
    lengths = b.sample_lengths()
    assert lengths.sum() == b.n_tokens and len(lengths) == 11
    got = []
    for first, last in ((0, 3), (3, 4), (4, 11)):
        p = b.samples(first, last)
        assert p.n_samples == last - first and p.n_tokens == lengths[first:last].sum()
        assert p.cu_seqlens[0] == 0 and p.cu_seqlens[-1] == p.input_ids.size
        np.testing.assert_array_equal(p.objective_ids, b.objective_ids[first:last])
        for s in range(p.n_samples):
            r, c = np.nonzero(p.sample_ids == s)
            R, C = np.nonzero(b.sample_ids == first + s)
            np.testing.assert_array_equal(p.input_ids[r, c], b.input_ids[R, C])
            np.testing.assert_array_equal(p.labels[r, c], b.labels[R, C])
            np.testing.assert_array_equal(p.position_ids[r, c], np.arange(len(c)))
            got.append(int(p.target_ids[s]))
    assert got == list(b.target_ids)
    with pytest.raises(ValueError, match="holds samples 0..10"):
        b.samples(5, 12)


def test_rate_follows_a_slowdown_at_once_and_a_speedup_within_its_window():
    r = Rate(window=4)
    assert r.per_unit is None and r.seconds(10) is None
    for _ in range(6):
        r.record(1.0, 100)
    assert r.per_unit == pytest.approx(0.01) and r.safety == pytest.approx(1.0)
    r.record(3.0, 100)                                 # another process started
    assert r.per_unit == pytest.approx(0.03)           # the next estimate is the slow one
    assert r.safety > 1.5                              # and the disagreement widens the margin
    for _ in range(4):
        r.record(1.0, 100)
    assert r.per_unit == pytest.approx(0.01)           # gone from the window
    assert r.seconds(100) == pytest.approx(1.0)


def test_sample_rates_plan_a_longer_sample_from_a_shorter_one_until_it_is_measured():
    r = SampleRates()
    assert r.seconds([100]) is None and not r.measured
    r.record(1.0, [512])                                # a 512-token probe: 1/512 s per token
    per, safety = r.per_token(512)
    assert per == pytest.approx(1 / 512) and safety == pytest.approx(1.25)
    # 5,593 tokens: four length classes up, the per-token cost x sqrt(2)^4, with a wider margin
    per, safety = r.per_token(5593)
    assert per == pytest.approx(4 / 512) and safety == pytest.approx(1.25 ** 2)
    assert r.per_token(100)[0] == pytest.approx(1 / 512)   # a shorter sample: no dearer per token
    r.record(50.0, [5593])                              # measured: its own rate from now on
    assert r.per_token(5593)[0] == pytest.approx(50 / 5593) and r.slowest == pytest.approx(50 / 5593)
    assert r.seconds([5593, 512]) == pytest.approx(50 * 1.25 + 1.25)


def test_full_fine_tuning_steps_in_micro_batches_as_whole_and_abandons_cleanly():
    from arcfast.train.trainer import FullTrainer

    cfg = train_cfg(lr=1e-3, warmup_steps=0)
    whole, cut = FullTrainer(load_model("tiny", seed=0), cfg), FullTrainer(load_model("tiny", seed=0), cfg)
    for b in batches(5, n_steps=2, n_tasks=1):
        b.adapter_ids[b.adapter_ids >= 0] = 0
        step_both(whole, cut, b, min_pieces=3)
    for (n, p), q in zip(whole.model.named_parameters(), cut.model.parameters()):
        # Adam's 1/sqrt(v) shows rounding in near-zero gradients at ~3e-6 (lr 1e-3)
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)
    before = [p.detach().clone() for p in cut.model.parameters()]
    clock = FakeClock()
    gate = small_pieces(clock, stop_at=0.3 + 1e-9, frozen=True)
    with pytest.raises(StepAbandoned):
        cut.step(b, gate=gate)
    assert cut.steps == 2 and all(p.grad is None for p in cut.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(cut.model.parameters(), before))
