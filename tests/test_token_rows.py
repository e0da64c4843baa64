"""Adapters' own embedding and LM-head rows (LoRAConfig.tokens): PEFT reads what we save and we read
what PEFT saves, with the same logits; the hf backend (PEFT's modules_to_save / trainable tokens)
trains them as the native trainer does; the per-column learning rate is torch's two parameter
groups; and many tasks in one packed batch train exactly as each task alone."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arcfast.arc import vocab as T
from arcfast.lora.adapters import load_adapter, lora_layers, token_rows
from arcfast.lora.multi import LoRAConfig
from arcfast.model.decoder import build_model
from arcfast.model.config import preset
from arcfast.model.hf import to_hf
from arcfast.train.trainer import TrainConfig, Trainer, pack_samples

pytestmark = pytest.mark.usefixtures("one_thread")

BOTH = ("embed_tokens", "lm_head")
TARGETS = ("q_proj", "v_proj", "down_proj")
PLAIN = dict(attention="sdpa", lora_path="torch", ops="torch", loss="torch")


def tiny(full: bool = False, tied: bool = True, seed: int = 0):
    """The tiny preset (compact vocabulary, 16 ids) or a full-vocabulary variant: 48 ids, of which
    the compact ids are 8..27, so the trained rows are a subset of the module."""
    cfg = replace(preset("tiny"), tie_embeddings=tied)
    if full:
        cfg = replace(cfg, vocab_size=48, token_ids=tuple(range(8, 28)))
    return build_model(cfg, dtype=torch.float32, seed=seed)


def samples(rng, n: int, adapter: int = 0, length: int = 20):
    """``n`` random samples of compact ids (the last 12 labelled) of ``adapter``."""
    out = []
    for _ in range(n):
        ids = rng.integers(0, 14, length).astype(np.int32)
        ids[0] = T.BOS
        lab = ids.copy()
        lab[:length - 12] = -100
        out.append((ids, lab, adapter))
    return out


def trained(model, tokens, steps: int = 3, seed: int = 0, **kw) -> Trainer:
    """A trainer whose adapter 0 (LoRA and token rows) has been trained a few steps at a rate that
    moves the rows well beyond rounding."""
    lcfg = LoRAConfig(r=4, alpha=8, targets=TARGETS, tokens=tokens)
    t = Trainer(model, lcfg, TrainConfig(lr=5e-2, steps=steps, **PLAIN, **kw), 1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        t.step(pack_samples(samples(rng, 2), 48))
    return t


@torch.no_grad()
def ours(trainer, ids, slot: int = 0):
    """arcfast's logits of model ids ``ids`` with adapter ``slot`` (LoRA and token rows)."""
    step = trainer.lora.begin(np.full(ids.shape, slot, np.int32), trainer.model.dtype, "torch", training=False)
    return trainer.model.logits(trainer.model(ids, lora=step), step.tokens, step.tokens.adapter_ids)


def without_rows(trainer, ids, slot: int = 0):
    """The logits with adapter ``slot``'s LoRA but the model's own rows (the slot is restored after)."""
    keep = trainer.lora.get(slot)
    trainer.lora.set(slot, lora_layers(keep))
    try:
        return ours(trainer, ids, slot)
    finally:
        trainer.lora.set(slot, keep)


def assert_rows_moved(trainer):
    """Every trained table differs from the model's rows it started from."""
    rows = token_rows(trainer.lora.get(0))
    assert rows
    for t in trainer.lora.table_slots():
        assert (rows[t.path] - trainer.lora.token_base[t.module]).abs().max() > 1e-2, t.module


# ----------------------------------------------------------------------------------------------
# PEFT reads what we save

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("tokens", [("embed_tokens",), ("lm_head",), BOTH], ids=["embed", "head", "both"])
def test_peft_loads_our_token_rows_of_a_compact_model(tmp_path, tokens, tied):
    from peft import PeftModel

    model = tiny(tied=tied, seed=1)
    t = trained(model, tokens)
    assert_rows_moved(t)
    path = t.save_adapter(0, tmp_path / "a")
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert sorted(cfg["modules_to_save"]) == sorted(tokens) and "trainable_token_indices" not in cfg
    ids = torch.randint(0, T.VOCAB_SIZE, (2, 25), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(to_hf(model), str(path)).eval()(ids).logits
    mine = ours(t, ids)
    assert (mine - without_rows(t, ids)).abs().max() > 1e-3   # the rows change the output...
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)   # ...the same way in both


@pytest.mark.parametrize("tied,tokens", [(True, BOTH), (True, ("embed_tokens",)), (False, BOTH),
                                         (False, ("lm_head",))],
                         ids=["tied-both", "tied-embed", "untied-both", "untied-head"])
def test_peft_loads_our_trainable_tokens_of_a_full_vocabulary(tmp_path, tied, tokens):
    from peft import PeftModel

    model = tiny(full=True, tied=tied, seed=2)
    t = trained(model, tokens)
    assert_rows_moved(t)
    rows = t.lora.token_rows
    assert list(rows) == list(range(8, 28)) and t.lora.tokens_shared is tied
    path = t.save_adapter(0, tmp_path / "a")
    cfg = json.loads((path / "adapter_config.json").read_text())
    # A tied head follows the embedding's rows: only the embedding is listed (PEFT ties the head).
    listed = ["embed_tokens"] if tied else list(tokens)
    assert cfg["trainable_token_indices"] == {m: list(range(8, 28)) for m in listed}
    assert cfg["modules_to_save"] is None
    # Ids inside and outside the trained rows (8..27), in the input and among the logits' columns.
    ids = torch.randint(0, 48, (2, 30), generator=torch.Generator().manual_seed(3))
    peft_model = PeftModel.from_pretrained(to_hf(model), str(path)).eval()
    with torch.no_grad():
        theirs = peft_model(ids).logits
    mine = ours(t, ids)
    assert (mine - without_rows(t, ids)).abs().max() > 1e-3
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)

    other = torch.tensor([i for i in range(48) if i not in set(rows)])
    with torch.no_grad():
        # The head's columns of untrained ids are the model's own rows applied to the hidden state.
        step = t.lora.begin(np.zeros(ids.shape, np.int32), torch.float32, "torch", training=False)
        hidden = t.model(ids, lora=step)
        torch.testing.assert_close(mine[..., other], F.linear(hidden, model.lm_head_weight()[other]),
                                   rtol=1e-5, atol=1e-5)
        # The embedding of untrained ids is the model's own; of trained ids the adapter's rows.
        embed = peft_model.get_input_embeddings()
        base = model.model.embed_tokens.weight
        torch.testing.assert_close(embed(other), base[other])
        if "embed_tokens" in tokens or tied:
            trained_rows = t.lora.get(0)["model.embed_tokens"]
            torch.testing.assert_close(embed(torch.tensor(rows)), trained_rows)
            assert (trained_rows - base[torch.tensor(rows)]).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# Round trips and refusals

@pytest.mark.parametrize("full,tied", [(False, True), (True, True), (True, False)],
                         ids=["compact", "full-tied", "full-untied"])
def test_token_rows_round_trip(tmp_path, full, tied):
    model = tiny(full=full, tied=tied, seed=3)
    t = trained(model, BOTH, steps=2)
    path = t.save_adapter(0, tmp_path / "a")
    cfg, tensors = load_adapter(path)
    assert cfg.tokens == (("embed_tokens",) if full and tied else BOTH)
    want = t.lora.get(0)
    fresh = Trainer(model, t.lora_cfg, TrainConfig(**PLAIN), 2)
    fresh.load_adapter([1], path)
    got = fresh.lora.get(1)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,)
    for read in (tensors, got):
        assert set(read) == set(want)
        for k, v in want.items():
            assert all(torch.equal(a, b) for a, b in zip(as_tuple(v), as_tuple(read[k]))), k
    assert all(not torch.equal(v, got[k]) for k, v in token_rows(fresh.lora.get(0)).items())   # slot 0 untouched

    # Token rows into adapters that do not train them: refused, naming the modules.
    plain = Trainer(model, LoRAConfig(r=4, alpha=8, targets=TARGETS), TrainConfig(**PLAIN), 1)
    with pytest.raises(ValueError, match="do not train"):
        plain.load_adapter([0], path)


def test_token_rows_of_another_vocabulary_are_refused(tmp_path):
    """Whole modules (a compact model's) into a full vocabulary's trainable tokens, and back."""
    compact = trained(tiny(seed=4), BOTH, steps=1)
    full = trained(tiny(full=True, tied=False, seed=4), BOTH, steps=1)
    a = compact.save_adapter(0, tmp_path / "compact")
    b = full.save_adapter(0, tmp_path / "full")
    with pytest.raises(ValueError, match="whole modules"):
        full.load_adapter([0], a)
    with pytest.raises(ValueError, match="trainable tokens"):
        compact.load_adapter([0], b)


def _perturbed_peft(model, **fields):
    """PEFT's own LoRA (and token rows) on ``model``'s transformers twin, every trainable weight
    (LoRA A/B, the saved modules' copies or the trainable tokens) moved by random noise."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(to_hf(model), LoraConfig(r=4, lora_alpha=12, target_modules=list(TARGETS), **fields))
    g = torch.Generator().manual_seed(5)
    moved = []
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
                moved.append(n)
    return pm, moved


@pytest.mark.parametrize("kind", ["modules_to_save", "trainable_tokens"])
def test_we_load_peft_saved_token_rows(tmp_path, kind):
    """An adapter PEFT saved with its own token rows (another alpha than ours) gives PEFT's logits."""
    if kind == "modules_to_save":
        model = tiny(tied=False, seed=6)
        pm, moved = _perturbed_peft(model, modules_to_save=["embed_tokens", "lm_head"])
        assert any("modules_to_save" in n for n in moved)
        ids = torch.randint(0, T.VOCAB_SIZE, (1, 18), generator=torch.Generator().manual_seed(7))
    else:
        model = tiny(full=True, tied=True, seed=6)
        pm, moved = _perturbed_peft(model, trainable_token_indices={"embed_tokens": list(range(8, 28))})
        assert any("trainable_tokens_delta" in n for n in moved)
        ids = torch.randint(0, 48, (1, 18), generator=torch.Generator().manual_seed(7))
    pm.save_pretrained(str(tmp_path / "peft"))
    cfg, tensors = load_adapter(tmp_path / "peft")
    assert cfg.tokens == (("embed_tokens",) if kind == "trainable_tokens" else BOTH)

    t = Trainer(model, LoRAConfig(r=4, alpha=8, targets=TARGETS, tokens=BOTH), TrainConfig(**PLAIN), 2)
    t.load_adapter([1], tmp_path / "peft")
    with torch.no_grad():
        theirs = pm.eval()(ids).logits
        base = to_hf(model)(ids).logits
    mine = ours(t, ids, slot=1)
    assert (theirs - base).abs().max() > 1e-2
    assert (mine - without_rows(t, ids, 1)).abs().max() > 1e-3
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The hf backend (PEFT's own machinery) trains the rows as the native trainer does

@pytest.mark.parametrize("full,tied,tokens", [(False, True, BOTH), (False, True, ("lm_head",)),
                                              (True, False, BOTH), (True, True, ("embed_tokens",))],
                         ids=["compact-tied", "compact-tied-head", "full-untied", "full-tied"])
def test_hf_backend_trains_token_rows_as_native(tmp_path, full, tied, tokens):
    from arcfast.train.backends import make_backend

    model = tiny(full=full, tied=tied, seed=8)
    lcfg = LoRAConfig(r=4, alpha=8, targets=TARGETS, tokens=tokens)
    tcfg = TrainConfig(lr=1e-2, embedding_lr=3e-2, steps=6, warmup_steps=1, weight_decay=0.1,
                       max_grad_norm=0.5, **PLAIN)
    native, hf = make_backend("native", model, lcfg, tcfg, 1), make_backend("hf", model, lcfg, tcfg, 1)
    assert [g["initial_lr"] for g in hf.opt.param_groups] == [1e-2, 3e-2]
    token_params = hf._token_params()
    assert set(token_params) == {t.path for t in native.lora.table_slots()}
    assert all(p.requires_grad and any(p is q for q in hf.params) for p in token_params.values())

    g = torch.Generator().manual_seed(9)
    start = {n: (a, torch.randn(b.shape, generator=g) * 0.1) for n, (a, b) in lora_layers(native.lora.get(0)).items()}
    start.update({p: r + torch.randn(r.shape, generator=g) * 0.01 for p, r in token_rows(native.lora.get(0)).items()})
    native.load_adapter([0], start)
    hf.load_adapter([0], start)
    for k, v in token_rows(hf.adapter_tensors()).items():
        torch.testing.assert_close(v, start[k])

    rng = np.random.default_rng(10)
    for _ in range(5):
        batch = pack_samples(samples(rng, 3), 48)
        a, b = native.step(batch), hf.step(batch)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-4)
        np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-4)
        np.testing.assert_allclose(a.lr, b.lr, rtol=1e-6)
    mine, theirs = native.lora.get(0), hf.adapter_tensors()
    assert set(mine) == set(theirs)
    for k, v in token_rows(mine).items():
        assert (v - start[k]).abs().max() > 1e-2          # the rows trained...
        torch.testing.assert_close(v, theirs[k], rtol=1e-4, atol=1e-5)   # ...alike
    for k, (a, b) in lora_layers(mine).items():
        torch.testing.assert_close(a, theirs[k][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b, theirs[k][1], rtol=1e-4, atol=1e-5)

    # The embedding rate is what moved the rows: at lr the hf backend's rows end elsewhere.
    slow = make_backend("hf", model, lcfg, replace(tcfg, embedding_lr=None), 1)
    assert len(slow.opt.param_groups) == 1
    slow.load_adapter([0], start)
    rng = np.random.default_rng(10)
    for _ in range(5):
        slow.step(pack_samples(samples(rng, 3), 48))
    rows = token_rows(slow.adapter_tensors())
    assert any((rows[k] - theirs[k]).abs().max() > 1e-3 for k in rows)

    # What the hf backend saves is what the native one saves: the same files' keys and rows.
    cfg_a = json.loads((native.save_adapter(0, tmp_path / "n") / "adapter_config.json").read_text())
    cfg_b = json.loads((hf.save_adapter(0, tmp_path / "h") / "adapter_config.json").read_text())
    assert {k: cfg_a[k] for k in ("modules_to_save", "trainable_token_indices") if k in cfg_a} == \
        {k: cfg_b[k] for k in ("modules_to_save", "trainable_token_indices") if k in cfg_b}
    assert set(native.export_adapter(0)) == set(hf.export_adapter(0))
    back = make_backend("hf", model, lcfg, tcfg, 1)
    back.load_adapter([0], tmp_path / "h")
    for k, v in token_rows(back.adapter_tensors()).items():
        assert torch.equal(v, theirs[k])


def test_hf_backend_refuses_rows_it_does_not_train():
    from arcfast.train.backends import make_backend

    model = tiny(seed=11)
    hf = make_backend("hf", model, LoRAConfig(r=4, alpha=8, targets=TARGETS, tokens=("lm_head",)),
                      TrainConfig(**PLAIN), 1)
    rows = torch.zeros(T.VOCAB_SIZE, 64)
    with pytest.raises(KeyError, match="model.embed_tokens"):
        hf.load_adapter([0], {"model.embed_tokens": rows})
    with pytest.raises(ValueError, match="expected"):
        hf.load_adapter([0], {"lm_head": rows[:3]})
    # Rows not given are the model's own.
    hf.load_adapter([0], {})
    torch.testing.assert_close(hf.adapter_tensors()["lm_head"], model.lm_head_weight().detach())


# ----------------------------------------------------------------------------------------------
# The per-column learning rate

def test_per_column_lr_is_torch_adamw_with_two_parameter_groups():
    from arcfast.train.optim import MultiAdamW

    N, P, k = 2, 40, 25           # columns k.. run at a third of the row's rate
    g = torch.Generator().manual_seed(12)
    w0 = torch.randn(N, P, generator=g)
    scale = torch.ones(P)
    scale[k:] = 1 / 3
    mine = w0.clone()
    opt = MultiAdamW(mine, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, lr_scale=scale)
    theirs = [(w0[a, :k].clone().requires_grad_(), w0[a, k:].clone().requires_grad_()) for a in range(N)]
    torch_opts = [torch.optim.AdamW([{"params": [p1]}, {"params": [p2]}], lr=1.0, betas=(0.9, 0.95),
                                    eps=1e-6, weight_decay=0.1) for p1, p2 in theirs]
    lrs = [np.array([1e-2, 3e-2]), np.array([2e-2, 1e-2]), np.array([5e-3, 4e-2]), np.array([1e-2, 1e-2])]
    for lr in lrs:
        grad = torch.randn(N, P, generator=g)
        opt.step(grad, lr, np.ones(N, bool))
        for a, ((p1, p2), o) in enumerate(zip(theirs, torch_opts)):
            o.param_groups[0]["lr"], o.param_groups[1]["lr"] = lr[a], lr[a] / 3
            p1.grad, p2.grad = grad[a, :k].clone(), grad[a, k:].clone()
            o.step()
    want = torch.stack([torch.cat([p1.detach(), p2.detach()]) for p1, p2 in theirs])
    assert (mine[:, k:] - w0[:, k:]).abs().max() > 1e-2
    torch.testing.assert_close(mine, want, rtol=1e-6, atol=1e-6)
    # The scale matters: with one rate everywhere the last columns end elsewhere.
    same = w0.clone()
    flat = MultiAdamW(same, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    g = torch.Generator().manual_seed(12)
    torch.randn(N, P, generator=g)
    for lr in lrs:
        flat.step(torch.randn(N, P, generator=g), lr, np.ones(N, bool))
    torch.testing.assert_close(same[:, :k], want[:, :k], rtol=1e-6, atol=1e-6)
    assert (same[:, k:] - want[:, k:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# Many tasks' token rows in one packed batch

@pytest.mark.parametrize("full", [False, True], ids=["compact", "full-tied"])
def test_packed_tasks_train_their_rows_as_each_alone(full):
    model = tiny(full=full, seed=13)
    lcfg = LoRAConfig(r=4, alpha=8, targets=TARGETS, tokens=BOTH)
    tcfg = TrainConfig(lr=1e-2, embedding_lr=2e-2, steps=4, weight_decay=0.05, **PLAIN)
    seeds = [21, 22, 23]
    rng = np.random.default_rng(14)
    # Two steps (the second Adam step depends on the gradients' values, not only their signs); each
    # task's samples of a step of different lengths and counts, packed two or three to a row.
    per_task = [[samples(rng, n, a, length) for a, (n, length) in enumerate([(2, 20), (3, 14), (1, 24)])]
                for _ in range(2)]

    packed = Trainer(model, lcfg, tcfg, 3)
    packed.reset_adapters([0, 1, 2], seeds=seeds)
    stats = []
    for step in per_task:
        mixed = [s for group in itertools.zip_longest(*step) for s in group if s is not None]   # interleaved
        batch = pack_samples(mixed, 48)
        assert batch.n_samples == 6
        assert any(len(set(row[row >= 0])) > 1 for row in batch.adapter_ids)   # tasks share rows
        stats.append(packed.step(batch))

    for a in range(3):
        alone = Trainer(model, lcfg, tcfg, 1)
        alone.reset_adapters([0], seeds=[seeds[a]])
        for k, step in enumerate(per_task):
            s = alone.step(pack_samples([(x, y, 0) for x, y, _ in step[a]], 48))
            np.testing.assert_allclose(stats[k].loss[a], s.loss[0], rtol=1e-5)
            np.testing.assert_allclose(stats[k].grad_norm[a], s.grad_norm[0], rtol=1e-5)
        # The moments are linear in the gradients: tight. The weights: Adam divides by sqrt(v), which
        # turns the rounding of a near-zero gradient into a visible step, hence a looser atol.
        torch.testing.assert_close(packed.opt.m[a], alone.opt.m[0], rtol=1e-5, atol=1e-8)
        mine, theirs = packed.lora.get(a), alone.lora.get(0)
        assert set(mine) == set(theirs)
        for t in packed.lora.table_slots():
            assert (mine[t.path] - packed.lora.token_base[t.module]).abs().max() > 1e-3
            torch.testing.assert_close(mine[t.path], theirs[t.path], rtol=1e-4, atol=1e-4)
        for n, (x, y) in lora_layers(mine).items():
            torch.testing.assert_close(x, theirs[n][0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(y, theirs[n][1], rtol=1e-4, atol=1e-4)
    # The tasks' rows are their own: the three adapters ended apart.
    rows = [token_rows(packed.lora.get(a))["model.embed_tokens"] for a in range(3)]
    assert (rows[0] - rows[1]).abs().max() > 1e-3 and (rows[1] - rows[2]).abs().max() > 1e-3
