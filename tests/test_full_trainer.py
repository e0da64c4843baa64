"""FullTrainer: packed steps == transformers + torch AdamW one sample at a time; master weights,
fp16 loss scaling, state round trip; merging a LoRA adapter into the weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arcfast.arc import vocab as T
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.checkpoint import load_model
from arcfast.model.hf import to_hf
from arcfast.train.trainer import FullTrainer, TrainConfig, pack_samples

pytestmark = pytest.mark.usefixtures("one_thread")


def make_sample(rng, n):
    """A BOS-led sample of n tokens whose second half is labelled (first label always -100)."""
    ids = rng.integers(0, 14, n).astype(np.int32)
    ids[0] = T.BOS
    lab = ids.copy()
    lab[: max(1, n // 2)] = T.IGNORE_INDEX
    return ids, lab, 0


def step_samples(seed=0, n_steps=3):
    rng = np.random.default_rng(seed)
    return [[make_sample(rng, int(rng.integers(6, 30))) for _ in range(int(rng.integers(3, 6)))]
            for _ in range(n_steps)]


def cfg(**kw):
    base = dict(lr=1e-2, steps=5, warmup_steps=1, schedule="cosine", weight_decay=0.1, betas=(0.9, 0.95),
                eps=1e-6, max_grad_norm=0.5, attention="sdpa", ops="torch", loss="torch")
    return TrainConfig(**{**base, **kw})


def test_packed_steps_equal_transformers_adamw_one_sample_at_a_time():
    """k packed steps of FullTrainer == the transformers twin trained by torch.optim.AdamW (decay on
    matrices only), transformers' cosine schedule and clip_grad_norm_, on the same samples run one
    by one, each step's loss the mean over all its labelled tokens: every weight agrees."""
    import transformers

    data = step_samples(0)
    model = load_model("tiny", seed=0)
    hf = to_hf(model)
    start = {k: v.detach().clone() for k, v in model.hf_state_dict().items()}
    trainer = FullTrainer(model, cfg())

    named = list(hf.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in named if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-6, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, 1, 5)
    norms = []
    for samples in data:
        batch = pack_samples(samples, 40)
        assert batch.shape[0] < len(samples)          # really packed
        st = trainer.step(batch)

        n = sum(int((y[1:] != T.IGNORE_INDEX).sum()) for _, y, _ in samples)
        total = 0.0
        for x, y, _ in samples:
            logits = hf(input_ids=torch.as_tensor(x, dtype=torch.long)[None]).logits[0]
            loss = F.cross_entropy(logits[:-1], torch.as_tensor(y[1:], dtype=torch.long),
                                   ignore_index=T.IGNORE_INDEX, reduction="sum") / n
            loss.backward()
            total += loss.item()
        lr = sched.get_last_lr()[0]
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.5)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

        assert st.stepped.tolist() == [True] and st.label_tokens.tolist() == [n]
        np.testing.assert_allclose(st.loss, [total], rtol=1e-5)
        np.testing.assert_allclose(st.grad_norm, [float(norm)], rtol=1e-4)
        np.testing.assert_allclose(st.lr, [lr], rtol=1e-12)
        norms.append(float(norm))
    assert max(norms) > 0.5                           # clipping bound

    got = {k: v.detach() for k, v in model.hf_state_dict().items()}
    want = hf.state_dict()
    moved = 0.0
    for k, v in got.items():
        # Adam divides by sqrt(v): rounding-level gradient differences show at ~1e-6 (lr 1e-2).
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-2
    # Every kind of weight trained: embedding (= tied LM head), a bias, a norm.
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias", "model.norm.weight"):
        assert (got[k] - start[k]).abs().max() > 1e-3, k


def test_eval_loss_unlabelled_batch_and_activation_checkpointing():
    data = step_samples(1, 1)[0]
    batch = pack_samples(data, 40)
    model = load_model("tiny", seed=0)
    t = FullTrainer(model, cfg(warmup_steps=0))
    ev = t.eval_loss(batch)
    np.testing.assert_allclose(ev, t.step(batch).loss, rtol=1e-6)
    unlabelled = pack_samples([(x, np.full_like(y, T.IGNORE_INDEX), 0) for x, y, _ in data], 40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    st = t.step(unlabelled)
    assert st.stepped.tolist() == [False] and np.isnan(st.loss[0]) and t.steps == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # not even weight decay
    assert np.isnan(t.eval_loss(unlabelled)[0])
    with pytest.raises(ValueError, match="adapter ids span"):
        bad = pack_samples(data, 40)
        bad.adapter_ids[bad.adapter_ids >= 0] = 1
        t.step(bad)
    # Recomputing the blocks in backward (activation checkpointing) takes the same step as t did.
    ck = FullTrainer(load_model("tiny", seed=0), cfg(warmup_steps=0, checkpoint=True))
    ck.step(batch)
    for n, a, b in zip(t.names, ck.master, t.master):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)


def test_bf16_model_steps_fp32_master_weights():
    """A bf16 model: the optimizer steps fp32 master weights, the model holds them rounded. An lr
    far below bf16's resolution at 1.0 moves the norm weights' masters, not the bf16 norm weights."""
    batch = pack_samples(step_samples(2, 1)[0], 40)
    model = load_model("tiny", seed=0, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = FullTrainer(model, cfg(lr=1e-6, warmup_steps=0, weight_decay=0.0, schedule="constant"))
    assert all(m.dtype == torch.float32 for m in t.master)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for _ in range(2):
        assert t.step(batch).stepped[0]
    for n, p, m in zip(t.names, t.params, t.master):
        assert torch.equal(p, m.to(torch.bfloat16)), n
        assert (m - before[n].float()).abs().max() > 1e-7, n          # every master moved
        if n.endswith("norm.weight"):                                  # 1.0 +- 2e-6 rounds to 1.0
            assert torch.equal(p, before[n]) and (m != 1.0).any(), n
    # A large lr does reach the model.
    big = FullTrainer(load_model("tiny", seed=0, dtype=torch.bfloat16), cfg(lr=1e-2, warmup_steps=0))
    big.step(batch)
    assert not torch.equal(big.model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])


def test_fp16_loss_scaling_skips_overflowed_steps():
    """fp16: with a scale so large the fp16 gradients overflow, steps are skipped (nothing moves,
    no schedule step) and the scale halves until a step goes through; that step's update equals
    the fp32 trainer's up to fp16 rounding, so the gradient was unscaled."""
    batch = pack_samples(step_samples(3, 1)[0], 40)
    # eps = 1 makes Adam's first update ~lr * g (not the sign-like lr * g / |g|), no clipping and no
    # decay: an update of the wrong size shows.
    kw = dict(warmup_steps=0, eps=1.0, max_grad_norm=None, weight_decay=0.0)
    model = load_model("tiny", seed=0, dtype=torch.float16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale0 = 2.0 ** 40
    t = FullTrainer(model, cfg(init_loss_scale=scale0, **kw))
    skipped = 0
    while True:
        st = t.step(batch)
        if st.stepped[0]:
            break
        skipped += 1
        assert st.lr[0] == 0.0 and t.steps == 0 and t.loss_scale == scale0 / 2 ** skipped
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert skipped < 40
    assert skipped >= 1 and t.steps == 1 and np.isfinite(st.grad_norm[0])
    ref = FullTrainer(load_model("tiny", seed=0), cfg(**kw))
    start = [m.detach().clone() for m in ref.master]
    ref.step(batch)
    for n, m, r, r0 in zip(t.names, t.master, ref.master, start):
        got, want = (m - before[n].float()).detach(), (r - r0).detach()
        assert float((got - want).norm() / want.norm()) < 0.05, n


def test_state_dict_round_trip_equals_uninterrupted():
    batches = [pack_samples(s, 40) for s in step_samples(4, 4)]
    straight = FullTrainer(load_model("tiny", seed=0), cfg())
    for b in batches:
        straight.step(b)
    first = FullTrainer(load_model("tiny", seed=0), cfg())
    for b in batches[:2]:
        first.step(b)
    sd = first.state_dict()
    second = FullTrainer(load_model("tiny", seed=7), cfg(steps=99))   # other weights, other schedule
    second.load_state_dict(sd)
    assert second.steps == 2 and second.total_steps.tolist() == [5]
    for b in batches[2:]:
        second.step(b)
    for n, a, b in zip(straight.names, straight.master, second.master):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    with pytest.raises(ValueError, match="does not match"):
        FullTrainer(load_model("tiny", seed=0), cfg()).load_state_dict(
            {**sd, "weights": {k: v for k, v in sd["weights"].items() if "norm" not in k}})


def test_merged_adapter_gives_the_logits_of_the_model_with_the_adapter(tmp_path):
    from arcfast.lora.adapters import save_adapter
    from arcfast.lora.adapters import merge_adapter

    lcfg = LoRAConfig(r=4, alpha=12.0)            # scaling 3: a forgotten scaling shows
    model = load_model("tiny", seed=0)
    lora = MultiLoRA(model, lcfg, 1)
    with torch.no_grad():
        lora.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    path = save_adapter(tmp_path / "ad", lora.get(0), lcfg)

    ids = torch.as_tensor(step_samples(5, 1)[0][0][0], dtype=torch.long)[None]
    with torch.no_grad():
        plain = model.logits(model(ids))
        step = lora.begin(np.zeros(ids.shape, np.int32), model.dtype, "torch", training=False)
        with_adapter = model.logits(model(ids, lora=step))
        merged_model = load_model("tiny", seed=0)
        names = merge_adapter(merged_model, path)
        merged = merged_model.logits(merged_model(ids))
    assert len(names) == 7 * 2                     # every projection of both layers
    assert (with_adapter - plain).abs().max() > 1e-2
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-5)

    # The same through PEFT on the transformers twin.
    from peft import PeftModel

    peft = PeftModel.from_pretrained(to_hf(load_model("tiny", seed=0)), str(path))
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, merged, rtol=1e-4, atol=1e-5)

    wrong = load_model("tiny", seed=0)
    with torch.no_grad():
        wrong.model.layers[1].mlp.up_proj.weight.data = torch.zeros(64, 64)   # another shape
    with pytest.raises(ValueError, match="up_proj"):
        merge_adapter(wrong, path)
    torch.testing.assert_close(wrong.model.layers[0].mlp.up_proj.weight,
                               model.model.layers[0].mlp.up_proj.weight)   # nothing merged before the error
