"""Adapters in PEFT format: what we save PEFT loads, what PEFT saves we load, same logits."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.lora.adapters import from_peft, load_adapter, save_adapter, to_peft
from arcfast.lora.multi import LoRAConfig
from arcfast.model.checkpoint import load_model
from arcfast.model.hf import to_hf
from arcfast.train.trainer import TrainConfig, Trainer, pack_samples

pytestmark = pytest.mark.usefixtures("one_thread")


LCFG = LoRAConfig(r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"))


def random_batch(rng, n: int = 2):
    """``n`` random 20-token samples of adapter 0 (the last 12 labelled), packed into rows of 48."""
    samples = []
    for _ in range(n):
        ids = rng.integers(0, 14, 20).astype(np.int32)
        ids[0] = T.BOS
        lab = ids.copy()
        lab[:8] = -100
        samples.append((ids, lab, 0))
    return pack_samples(samples, 48)


def trained(model, lcfg=LCFG, steps=3, seed=0):
    """A trainer whose adapter 0 has been trained a few steps (so A and B are both non-trivial)."""
    rng = np.random.default_rng(seed)
    t = Trainer(model, lcfg, TrainConfig(lr=5e-2, steps=steps, attention="sdpa", lora_path="torch",
                                         ops="torch", loss="torch"), 1)
    for _ in range(steps):
        t.step(random_batch(rng))
    return t


@pytest.mark.parametrize("rslora", [False, True])
def test_ttft_starts_from_an_adapter_of_another_scaling_with_its_update(tmp_path, rslora):
    """--adapter with another alpha or rsLoRA setting than the run's: B is rescaled so each layer's
    update, scaling x B A, is the saved adapter's."""
    from arcfast.lora.adapters import load_adapter_for

    saved = LoRAConfig(r=16, alpha=8, rslora=rslora)
    t = trained(load_model("tiny", seed=0), saved)
    path = t.save_adapter(0, tmp_path / "a")
    run = LoRAConfig(r=16, alpha=32)
    got = load_adapter_for(path, run)
    want = t.lora.get(0)
    assert set(got) == set(want)
    for name, (a, b) in got.items():
        torch.testing.assert_close(run.scaling * (a @ b), saved.scaling * (want[name][0] @ want[name][1]))
    with pytest.raises(ValueError, match="rank 16 differs"):
        load_adapter_for(path, LoRAConfig(r=8))


def our_logits(trainer, ids):
    step = trainer.lora.begin(np.zeros(ids.shape, np.int32), trainer.model.dtype, "torch", training=False)
    with torch.no_grad():
        return trainer.model.logits(trainer.model(ids, lora=step))


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_our_adapter_with_the_same_logits(tmp_path, rslora):
    from peft import PeftModel

    model = load_model("tiny", seed=1)
    t = trained(model, replace(LCFG, rslora=rslora))
    path = t.save_adapter(0, tmp_path / "task-a")
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"
    assert cfg["use_rslora"] is rslora and cfg["use_dora"] is False
    peft_model = PeftModel.from_pretrained(to_hf(model), str(path)).eval()
    ids = torch.randint(0, T.VOCAB_SIZE, (2, 25), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = peft_model(ids).logits
        base = to_hf(model)(ids).logits
    ours = our_logits(t, ids)
    assert (ours - base).abs().max() > 1e-3  # the adapter changes the output...
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # ...the same way in both

    # The flag is what makes them agree: read with the other scaling (2 for 4), PEFT differs.
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    (flipped / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": not rslora}))
    (flipped / "adapter_model.safetensors").write_bytes((path / "adapter_model.safetensors").read_bytes())
    with torch.no_grad():
        other = PeftModel.from_pretrained(to_hf(model), str(flipped)).eval()(ids).logits
    assert (other - theirs).abs().max() > 1e-3


@pytest.mark.parametrize("r", [4, 256])
def test_rslora_adapter_round_trips(tmp_path, r):
    g = torch.Generator().manual_seed(r)
    name = "model.layers.0.self_attn.q_proj"
    tensors = {name: (torch.randn(8, r, generator=g), torch.randn(r, 6, generator=g))}
    cfg = LoRAConfig(r=r, alpha=16, targets=("q_proj",), rslora=True)
    p = save_adapter(tmp_path / "a", tensors, cfg)
    assert json.loads((p / "adapter_config.json").read_text())["use_rslora"] is True
    back, got = load_adapter(p)
    assert back == cfg and back.rslora is True and back.scaling == cfg.scaling == 16 / r ** 0.5
    torch.testing.assert_close(got[name][1], tensors[name][1])
    # Without the flag (or with it false or null) an adapter is plain LoRA, alpha / r.
    for value in (False, None, "absent"):
        c = json.loads((p / "adapter_config.json").read_text())
        if value == "absent":
            del c["use_rslora"]
        else:
            c["use_rslora"] = value
        (p / "adapter_config.json").write_text(json.dumps(c))
        plain, _ = load_adapter(p)
        assert plain.rslora is False and plain.scaling == 16 / r


def test_merge_of_an_rslora_adapter_gives_peft_logits(tmp_path):
    from peft import PeftModel

    from arcfast.lora.adapters import merge_adapter

    model = load_model("tiny", seed=7)
    t = trained(model, replace(LCFG, alpha=6.0, rslora=True), seed=2)   # scaling 3, not 1.5
    path = t.save_adapter(0, tmp_path / "rs")
    merged = load_model("tiny", seed=7)
    merge_adapter(merged, path)
    ids = torch.randint(0, T.VOCAB_SIZE, (1, 20), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(to_hf(model), str(path)).eval()(ids).logits
        torch.testing.assert_close(merged.logits(merged(ids)), theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_logits(t, ids), theirs, rtol=1e-5, atol=1e-5)


def test_dora_adapters_are_refused_and_bad_flags_named(tmp_path):
    from arcfast.model.config import CheckpointError

    name = "model.layers.0.self_attn.q_proj"
    tensors = {name: (torch.zeros(8, 2), torch.zeros(2, 6))}
    p = save_adapter(tmp_path / "a", tensors, LoRAConfig(r=2, alpha=4, targets=("q_proj",)))
    c = json.loads((p / "adapter_config.json").read_text())
    (p / "adapter_config.json").write_text(json.dumps({**c, "use_dora": True, "use_rslora": True}))
    with pytest.raises(CheckpointError, match=r"adapter_config.json: a DoRA adapter .*not supported"):
        load_adapter(p)
    (p / "adapter_config.json").write_text(json.dumps({**c, "use_rslora": "yes"}))
    with pytest.raises(CheckpointError, match="'use_rslora' is the string 'yes'; true or false"):
        load_adapter(p)


@pytest.mark.parametrize("rslora", [False, True])
def test_we_load_a_peft_saved_adapter(tmp_path, rslora):
    """An adapter PEFT itself wrote (another alpha than ours, rsLoRA or not) gives PEFT's logits in
    our trainer, whose own adapters are plain LoRA: the scaling is folded into B."""
    from peft import LoraConfig, get_peft_model

    model = load_model("tiny", seed=2)
    pm = get_peft_model(to_hf(model), LoraConfig(r=4, lora_alpha=12, use_rslora=rslora,
                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(str(tmp_path / "peft"))
    cfg, tensors = load_adapter(tmp_path / "peft")
    assert cfg.r == 4 and cfg.alpha == 12 and set(cfg.targets) == {"q_proj", "v_proj", "down_proj"}
    assert cfg.rslora is rslora and cfg.scaling == (6.0 if rslora else 3.0)
    assert len(tensors) == 3 * model.config.n_layers

    t = Trainer(model, LCFG, TrainConfig(), 2)   # alpha 8, all seven projections
    t.load_adapter([1], tmp_path / "peft")
    ids = torch.randint(0, T.VOCAB_SIZE, (1, 18), generator=g)
    step = t.lora.begin(np.ones(ids.shape, np.int32), torch.float32, "torch", training=False)
    with torch.no_grad():
        ours = model.logits(model(ids, lora=step))
        theirs = pm.eval()(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_adapter_of_a_cut_model_applies_to_the_full_checkpoint(tmp_path):
    """LoRA never touches the embedding or LM head, so an adapter trained on the compact cut of a
    checkpoint gives, on the original full-vocabulary checkpoint, the same logits at the kept ids."""
    from peft import PeftModel
    from test_model import write_checkpoint

    d, hf_full, tok = write_checkpoint(tmp_path, "qwen2")
    compact = load_model(str(d))
    t = trained(compact, seed=4)
    path = t.save_adapter(0, tmp_path / "adapter")
    full = PeftModel.from_pretrained(hf_full, str(path)).eval()
    ids = torch.randint(0, T.VOCAB_SIZE, (1, 22), generator=torch.Generator().manual_seed(5))
    keep = list(compact.config.source_token_ids)
    with torch.no_grad():
        theirs = full(torch.tensor(keep)[ids]).logits[..., keep]
    torch.testing.assert_close(our_logits(t, ids), theirs, rtol=1e-5, atol=1e-5)


def test_roundtrip_overwrite_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"model.layers.0.self_attn.q_proj": (torch.randn(8, 2, generator=g), torch.randn(2, 6, generator=g))}
    cfg = LoRAConfig(r=2, alpha=4, targets=("q_proj",))
    p = save_adapter(tmp_path / "a", tensors, cfg)
    p = save_adapter(tmp_path / "a", {k: (a * 2, b) for k, (a, b) in tensors.items()}, cfg)  # replaced whole
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a"]
    cfg2, back = load_adapter(p)
    assert cfg2 == cfg
    a, b = back["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(a, tensors["model.layers.0.self_attn.q_proj"][0] * 2)
    sd = to_peft(tensors)
    assert sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (2, 8)
    assert sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (6, 2)
    with pytest.raises(ValueError, match="not a LoRA A/B weight"):
        from_peft({"base_model.model.model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="needs both"):
        from_peft({"x.lora_A.weight": torch.zeros(2, 3)})
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path)
    t = Trainer(load_model("tiny"), LoRAConfig(r=4), TrainConfig(), 1)
    with pytest.raises(ValueError, match="rank 2 differs"):
        t.load_adapter([0], p)
