"""The trainer: packed == one by one, many adapters == each alone, native == transformers+PEFT."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.decoder import build_model
from arcfast.model.checkpoint import load_model
from arcfast.train.optim import MultiAdamW, clip_per_adapter, lr_factor
from arcfast.train.trainer import TrainConfig, Trainer, pack_samples, unpack_samples
from arcfast.train.loss import prepare_batch, task_losses

pytestmark = pytest.mark.usefixtures("one_thread")


def make_sample(rng, adapter, n):
    """A BOS-led sample of n tokens whose second half is labelled (first label always -100)."""
    ids = rng.integers(0, 14, n).astype(np.int32)
    ids[0] = T.BOS
    lab = ids.copy()
    lab[: max(1, n // 2)] = T.IGNORE_INDEX
    return ids, lab, adapter


def task_data(seed=0, n_tasks=3, n_steps=4):
    """Per task, per step: 1-3 samples of 8-30 tokens."""
    rng = np.random.default_rng(seed)
    return {a: [[make_sample(rng, a, int(rng.integers(8, 30))) for _ in range(int(rng.integers(1, 4)))]
                for _ in range(n_steps)] for a in range(n_tasks)}


# ----------------------------------------------------------------------------------------------
# Schedule, optimizer, clipping against torch / transformers

@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 3), (7, 7), (50, 5)])
def test_lr_factor_matches_transformers(schedule, total, warmup):
    import transformers

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    if schedule == "cosine":
        s = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
    elif schedule == "linear":
        s = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
    else:
        s = transformers.get_constant_schedule_with_warmup(opt, warmup)
    want = []
    for _ in range(total + 2):
        want.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    got = lr_factor(np.arange(total + 2), total, warmup, schedule)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_multi_adamw_rows_equal_torch_adamw():
    g = torch.Generator().manual_seed(0)
    N, P = 3, 50
    init = torch.randn(N, P, generator=g)
    param = init.clone().requires_grad_()
    opt = MultiAdamW(param, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    refs = [init[a].clone().requires_grad_() for a in range(N)]
    ropt = [torch.optim.AdamW([p], lr=1.0, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, foreach=False)
            for p in refs]
    for step in range(6):
        grad = torch.randn(N, P, generator=g)
        lr = np.array([1e-2, 3e-3, 5e-2]) * (step + 1)
        active = np.array([True, step % 2 == 0, step != 4])
        opt.step(grad.clone(), lr, active)
        for a in range(N):
            if active[a]:
                refs[a].grad = grad[a].clone()
                ropt[a].param_groups[0]["lr"] = float(lr[a])
                ropt[a].step()
    for a in range(N):
        torch.testing.assert_close(param[a].detach(), refs[a].detach(), rtol=1e-6, atol=1e-6)
    assert opt.steps.tolist() == [6, 3, 5]


def test_clip_per_adapter_equals_clip_grad_norm_per_row():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(4, 30, generator=g) * torch.tensor([[0.01], [1.0], [5.0], [0.0]])
    norms = clip_per_adapter(grad.clone(), None)
    clipped = grad.clone()
    clip_per_adapter(clipped, 1.0)
    for a in range(4):
        p = torch.zeros(30, requires_grad=True)
        p.grad = grad[a].clone()
        n = torch.nn.utils.clip_grad_norm_([p], 1.0)
        torch.testing.assert_close(norms[a], n)
        torch.testing.assert_close(clipped[a], p.grad)


# ----------------------------------------------------------------------------------------------
# Packing helpers

def test_pack_unpack_roundtrip_and_conventions():
    data = task_data(1)
    samples = [s for a in data for s in data[a][0]]
    b = pack_samples(samples, 40)
    assert b.n_samples == len(samples)
    assert b.cu_seqlens[0] == 0 and b.cu_seqlens[-1] == b.input_ids.size
    assert (np.diff(b.cu_seqlens) > 0).all()
    assert (b.input_ids[b.sample_ids < 0] == T.PAD).all() and (b.labels[b.sample_ids < 0] == -100).all()
    back = unpack_samples(b)
    assert len(back) == len(samples)
    got = sorted((tuple(x), tuple(y), a) for x, y, a in back)
    want = sorted((tuple(x), tuple(y), a) for x, y, a in samples)
    assert got == want
    with pytest.raises(ValueError, match="longer than a row"):
        pack_samples(samples, 5)


# ----------------------------------------------------------------------------------------------
# Packed == one by one

def test_packed_loss_and_gradients_equal_one_by_one():
    """One task's samples packed into rows give the loss and the gradients (LoRA and every base
    weight) of the same samples run one at a time, each in its own unpadded batch."""
    torch.manual_seed(0)
    model = load_model("tiny", seed=3)
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8), 1)
    with torch.no_grad():
        lora.weight.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    samples = [make_sample(rng, 0, n) for n in (9, 17, 5, 23, 12)]
    batch = pack_samples(samples, 32)
    assert batch.shape[0] < len(samples)  # really packed

    def grads():
        out = [p.grad.clone() for p in model.parameters()] + [lora.weight.grad.clone()]
        model.zero_grad(set_to_none=True)
        lora.weight.grad = None
        return out

    model.requires_grad_(True)
    b = prepare_batch(batch, model, lora, 1, attention="sdpa", lora_path="torch")
    hidden = model(b.input_ids, b.position_ids, b.attention, b.lora)
    loss = task_losses(model, hidden, b, 1)[0]
    loss.backward()
    packed = grads()

    total_labels = sum(int((y[1:] != -100).sum()) for _, y, _ in samples)
    loss_sum = 0.0
    for x, y, a in samples:
        one = prepare_batch(pack_samples([(x, y, a)], len(x)), model, lora, 1, "sdpa", "torch")
        h = model(one.input_ids, one.position_ids, one.attention, one.lora)
        part = task_losses(model, h, one, 1)[0] * int(one.counts[0]) / total_labels
        part.backward()
        loss_sum = loss_sum + part.item()
    alone = grads()
    assert abs(loss.item() - loss_sum) < 1e-5
    for p, q in zip(packed, alone):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Many adapters == each alone

LCFG = LoRAConfig(r=4, alpha=8)


def train_cfg(**kw):
    base = dict(lr=2e-2, steps=6, warmup_steps=1, weight_decay=0.05, max_grad_norm=0.3, schedule="cosine",
                attention="sdpa", lora_path="torch", ops="torch", loss="torch")
    return TrainConfig(**{**base, **kw})


def test_many_adapters_in_one_batch_equal_each_trained_alone():
    data = task_data(0, n_tasks=3, n_steps=4)
    seeds, totals = [11, 12, 13], [6, 4, 9]
    absent = {(2, 1)}  # task 2 has no samples at step 1: it must not move
    model = load_model("tiny", seed=0)
    multi = Trainer(model, LCFG, train_cfg(), 3)
    multi.reset_adapters(range(3), seeds=seeds, total_steps=totals)
    multi_losses = []
    for s in range(4):
        samples = [x for a in range(3) if (a, s) not in absent for x in data[a][s]]
        rng = np.random.default_rng(s)
        samples = [samples[i] for i in rng.permutation(len(samples))]  # tasks interleaved in rows
        st = multi.step(pack_samples(samples, 48))
        multi_losses.append(st.loss)
        assert st.stepped.tolist() == [(a, s) not in absent for a in range(3)]
    assert np.isnan(multi_losses[1][2])

    for a in range(3):
        alone = Trainer(model, LCFG, train_cfg(), 1)
        alone.reset_adapters([0], seeds=[seeds[a]], total_steps=totals[a])
        for s in range(4):
            if (a, s) in absent:
                continue
            st = alone.step(pack_samples([(x, y, 0) for x, y, _ in data[a][s]], 48))
            assert abs(st.loss[0] - multi_losses[s][a]) < 1e-5
        # Adam divides by sqrt(v): rounding-level gradient differences show at ~1e-6 (lr is 2e-2)
        torch.testing.assert_close(multi.lora.weight[a], alone.lora.weight[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(multi.opt.m[a], alone.opt.m[0], rtol=1e-5, atol=1e-7)
        assert multi.opt.steps[a] == alone.opt.steps[0]


def test_clipping_and_decay_were_active_in_that_test():
    """Guards the test above: with its settings clipping binds and the adapters move."""
    data = task_data(0, n_tasks=1, n_steps=1)
    t = Trainer(load_model("tiny", seed=0), LCFG, train_cfg(warmup_steps=0), 1)
    before = t.lora.weight.detach().clone()
    st = t.step(pack_samples(data[0][0], 48))
    assert st.grad_norm[0] > 0.3 and st.lr[0] > 0
    assert (t.lora.weight - before).abs().max() > 1e-3


def test_native_equals_transformers_peft():
    """The native trainer on one task equals transformers + PEFT + torch AdamW + LambdaLR +
    clip_grad_norm_ (the hf backend) after several steps: loss, gradient norm, lr and adapter."""
    from arcfast.train.backends import make_backend

    data = task_data(2, n_tasks=1, n_steps=4)[0]
    model = load_model("tiny", seed=0)
    cfg = train_cfg(lr=1e-2, steps=5, warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5, schedule="linear")
    native = make_backend("native", model, LCFG, cfg, 1)
    hf = make_backend("hf", model, LCFG, cfg, 1)
    for bk in (native, hf):
        bk.reset_adapters([0], seeds=[5], total_steps=5)
    for s in range(4):
        batch = pack_samples(data[s], 40)
        a, b = native.step(batch), hf.step(batch)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
        np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-4)
        np.testing.assert_allclose(a.lr, b.lr, rtol=1e-9)
    x, y = native.export_adapter(0), hf.export_adapter(0)
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-3, atol=1e-4)
    assert max(v.abs().max() for k, v in x.items() if "lora_B" in k) > 1e-3  # B really trained


def test_full_vocabulary_model_reads_compact_batches():
    """A model with an original vocabulary maps compact ids (inputs and labels) through
    ``token_ids``: its per-task loss is the cross entropy over the full vocabulary at the mapped ids."""
    vocab = 40
    perm = np.random.default_rng(0).permutation(vocab)[:T.VOCAB_SIZE]
    cfg = replace(load_model("tiny").config, vocab_size=vocab, token_ids=tuple(int(i) for i in perm))
    model = build_model(cfg, seed=1)
    data = task_data(3, n_tasks=2, n_steps=1)
    samples = [x for a in range(2) for x in data[a][0]]
    got = Trainer(model, LCFG, train_cfg(), 2).eval_loss(pack_samples(samples, 48))
    table = torch.as_tensor(perm, dtype=torch.long)
    for a in range(2):
        ce = []
        for x, y, _ in (s for s in samples if s[2] == a):
            logits = model.logits(model(table[torch.as_tensor(x, dtype=torch.long)][None]))[0]
            keep = torch.as_tensor(y[1:] != -100)
            tgt = table[torch.as_tensor(np.clip(y[1:], 0, None), dtype=torch.long)]
            ce.append(torch.nn.functional.cross_entropy(logits[:-1][keep], tgt[keep], reduction="none"))
        np.testing.assert_allclose(got[a], torch.cat(ce).mean().item(), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Checkpoints, eval, memory options, errors

def test_resume_from_state_dict_equals_uninterrupted():
    data = task_data(4, n_tasks=2, n_steps=4)
    batches = [pack_samples([x for a in range(2) for x in data[a][s]], 48) for s in range(4)]
    model = load_model("tiny", seed=0)
    straight = Trainer(model, LCFG, train_cfg(), 2)
    for b in batches:
        straight.step(b)
    first = Trainer(model, LCFG, train_cfg(), 2)
    for b in batches[:2]:
        first.step(b)
    sd = first.state_dict()
    second = Trainer(model, LCFG, train_cfg(), 2)
    second.load_state_dict(sd)
    for b in batches[2:]:
        second.step(b)
    torch.testing.assert_close(second.lora.weight, straight.lora.weight)


def test_eval_loss_and_checkpointing():
    data = task_data(5, n_tasks=2, n_steps=1)
    batch = pack_samples([x for a in range(2) for x in data[a][0]], 48)
    model = load_model("tiny", seed=0)
    plain = Trainer(model, LCFG, train_cfg(warmup_steps=0), 2)
    ev = plain.eval_loss(batch)
    st = plain.step(batch)
    np.testing.assert_allclose(ev, st.loss, rtol=1e-6)
    ckpt = Trainer(model, LCFG, train_cfg(warmup_steps=0, checkpoint=True), 2)
    ckpt.step(batch)
    torch.testing.assert_close(ckpt.lora.weight, plain.lora.weight)


def test_training_lowers_the_loss():
    rng = np.random.default_rng(0)
    samples = [make_sample(rng, 0, 20) for _ in range(2)]
    batch = pack_samples(samples, 48)
    t = Trainer(load_model("tiny", seed=0), LoRAConfig(r=8, alpha=16),
                train_cfg(lr=3e-2, steps=40, schedule="constant", weight_decay=0.0, max_grad_norm=1.0), 1)
    first = t.step(batch).loss[0]
    for _ in range(39):
        last = t.step(batch).loss[0]
    # ln 16 = 2.77 at the start; the tiny random model's small tied embedding (std 0.02) bounds the
    # logits, so the loss floors near 2.2 (measured 2.25) rather than going to zero.
    assert last < 0.85 * first


def test_bad_batches_are_refused():
    t = Trainer(load_model("tiny"), LCFG, train_cfg(), 2)
    rng = np.random.default_rng(0)
    good = pack_samples([make_sample(rng, 0, 10), make_sample(rng, 1, 10)], 24)
    bad = pack_samples([make_sample(rng, 0, 10)], 24)
    bad.adapter_ids[bad.adapter_ids >= 0] = 2
    with pytest.raises(ValueError, match="adapter ids span"):
        t.step(bad)
    bad = pack_samples([make_sample(rng, 0, 10), make_sample(rng, 1, 10)], 24)
    bad.labels[0, 10] = 3  # the first token of the second sample
    with pytest.raises(ValueError, match="row 0 position 10"):
        t.step(bad)
    t.step(good)


def test_objective_losses_are_each_objectives_own_mean():
    """A batch mixing objectives (``objective_ids``): each (task, objective) loss equals the loss of
    the same batch with only that objective's labels kept, and the task's loss, which trains, is
    what it is without objective ids (the plain mean over its tokens) -- for the LoRA trainer, its
    fixed-shape step and the full trainer."""
    from arcfast.samples.sampling import OBJECTIVES
    from arcfast.train.graph import StaticStep
    from arcfast.train.trainer import FullTrainer

    data = task_data(7, n_tasks=2, n_steps=2)
    samples = [x for a in range(2) for step in data[a] for x in step]
    objectives = np.array([k % len(OBJECTIVES) for k in range(len(samples))], np.int32)
    # one row: samples keep their list order as sample ids (objective_ids is indexed by those)
    ROW = sum(len(x) for x, _, _ in samples)
    batch = replace(pack_samples(samples, ROW), objective_ids=objectives)
    assert batch.shape[0] == 1 and batch.objective_ids is not None and len(set(objectives)) == len(OBJECTIVES)

    def only(o):
        keep = [(x, (y if objectives[k] == o else np.full_like(y, T.IGNORE_INDEX)).astype(np.int32), a)
                for k, (x, y, a) in enumerate(samples)]
        return pack_samples(keep, ROW)

    def check(make, n):
        ref = make()
        want = np.stack([ref.eval_loss(only(o)) for o in range(len(OBJECTIVES))], axis=1)
        plain = make().step(replace(batch, objective_ids=None))
        st = make().step(batch)
        assert st.objective_loss.shape == (n, len(OBJECTIVES))
        assert np.isfinite(want).all()
        np.testing.assert_allclose(st.objective_loss, want, rtol=1e-5)
        np.testing.assert_array_equal(st.objective_tokens.sum(1), st.label_tokens)
        np.testing.assert_allclose(st.loss, plain.loss, rtol=1e-6)
        # without objective ids every token is an ``output`` one
        np.testing.assert_allclose(plain.objective_loss[:, 0], plain.loss, rtol=1e-6)
        assert np.isnan(plain.objective_loss[:, 1:]).all()

    check(lambda: Trainer(load_model("tiny", seed=0), LCFG, train_cfg(warmup_steps=0), 2), 2)

    class Static:
        def __init__(self):
            self.tr = Trainer(load_model("tiny", seed=0), LCFG, train_cfg(warmup_steps=0), 2)

        def eval_loss(self, b):
            return self.tr.eval_loss(b)

        def step(self, b):
            return StaticStep(self.tr, capture=False).step(b)

    check(Static, 2)
    one = [(x, y, 0) for x, y, _ in samples]
    batch = replace(pack_samples(one, ROW), objective_ids=objectives)
    samples = one
    check(lambda: FullTrainer(load_model("tiny", seed=0), train_cfg(warmup_steps=0)), 1)


def test_the_step_modules_form_no_cycle_and_share_one_update():
    """arcfast.train.graph builds on arcfast.train.optim and arcfast.train.loss, never on arcfast.train.trainer; the
    optimizer's neutral factors change nothing, bit for bit."""
    import subprocess
    import sys

    code = "import sys, arcfast.train.graph; assert 'arcfast.train.trainer' not in sys.modules, 'step_graph imports trainer'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from arcfast.train.optim import FACTORS, NEUTRAL, adamw_update

    opt = MultiAdamW(torch.randn(3, 7), betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    opt.m.normal_()
    opt.v.uniform_(0.1, 1.0)
    f = opt.factors(np.array([1e-2, 2e-2, 3e-2]), np.array([True, False, True]))
    assert set(f) == set(FACTORS) and all(a.shape == (3, 1) for a in f.values())
    assert all(f[k][1, 0] == NEUTRAL[k] for k in FACTORS)
    before = [t.clone() for t in (opt.param, opt.m, opt.v)]
    adamw_update(opt.param, opt.m, opt.v, torch.randn(3, 7), {k: torch.from_numpy(a) for k, a in f.items()}, opt.eps)
    for b, a in zip(before, (opt.param, opt.m, opt.v)):
        assert torch.equal(b[1], a[1]) and not torch.equal(b[0], a[0])
    assert opt.steps.tolist() == [0, 0, 0]   # factors read the counts, the step advances them


def test_trimmed_batch_gives_the_padded_batchs_losses_and_gradients():
    """Rows cut to what they hold (and rows of padding only dropped) compute the same per-task
    losses and LoRA gradients as the stream's padded rows: the padded batch is the reference."""
    torch.manual_seed(0)
    model = load_model("tiny", seed=3)
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8), 3)
    with torch.no_grad():
        lora.weight.normal_(0, 0.1)
    rng = np.random.default_rng(1)
    samples = [make_sample(rng, a % 3, int(rng.integers(8, 40))) for a in range(9)]
    from arcfast.samples.batch import PackedBatch, cu_seqlens_of

    wide = pack_samples(samples, 128).widen(1024)   # two more rows of padding only, below
    arrays = [np.concatenate([a, np.full((2, 1024), v, a.dtype)]) for a, v in
              ((wide.input_ids, T.PAD), (wide.labels, T.IGNORE_INDEX), (wide.position_ids, 0),
               (wide.sample_ids, -1), (wide.adapter_ids, -1))]
    padded = PackedBatch(*arrays, cu_seqlens_of(arrays[3]))
    trimmed = padded.trimmed(multiple=64)
    R = int((padded.sample_ids >= 0).any(1).sum())
    assert trimmed.shape == (R, 128) and padded.shape == (R + 2, 1024)
    assert trimmed.n_tokens == padded.n_tokens and trimmed.trimmed(multiple=64) is trimmed

    def losses_and_grad(batch):
        b = prepare_batch(batch, model, lora, 3, attention="sdpa", lora_path="torch")
        loss = task_losses(model, model(b.input_ids, b.position_ids, b.attention, b.lora), b, 3)
        loss.sum().backward()
        g = lora.weight.grad.clone()
        lora.weight.grad = None
        return loss.detach(), g

    (l1, g1), (l2, g2) = losses_and_grad(padded), losses_and_grad(trimmed)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    assert g1.abs().sum() > 0

    # The trainer trims before its step: a widened batch steps exactly as the compact one does.
    a = Trainer(model, LCFG, train_cfg(), 3)
    b = Trainer(model, LCFG, train_cfg(), 3)
    for t in (a, b):
        t.reset_adapters(range(3), seeds=[1, 2, 3], total_steps=4)
    sa, sb = a.step(pack_samples(samples, 128)), b.step(padded)
    np.testing.assert_allclose(sa.loss, sb.loss, rtol=1e-5)
    torch.testing.assert_close(a.lora.weight, b.lora.weight, rtol=1e-4, atol=1e-6)
