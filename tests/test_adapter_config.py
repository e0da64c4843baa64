"""What an adapter directory records about its base, and the modes it is written with.

``base_model_name_or_path`` names the checkpoint directory (so ``peft.AutoPeftModelForCausalLM``
finds the base from the adapter alone) or, for a built-in preset, the preset's name.
"""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.lora.adapters import load_adapter, save_adapter
from arcfast.lora.multi import LoRAConfig
from arcfast.model.checkpoint import load_model, save_model

from test_adapters import our_logits, trained

pytestmark = pytest.mark.usefixtures("one_thread")


def base_of(adapter_dir) -> str:
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


@pytest.fixture
def checkpoint(tmp_path):
    return save_model(load_model("tiny", seed=6), tmp_path / "ckpt")


def test_a_loaded_checkpoint_is_named_by_its_directory(checkpoint, tmp_path, monkeypatch):
    assert load_model(str(checkpoint)).config.name == str(checkpoint.resolve())
    # a relative path is made absolute (the adapter may be used from another working directory)
    monkeypatch.chdir(tmp_path)
    assert load_model("ckpt").config.name == str(checkpoint.resolve())
    assert load_model("ckpt", vocab="full").config.name == str(checkpoint.resolve())
    assert load_model("tiny").config.name == "tiny"


def test_adapter_names_its_checkpoint_and_autopeft_loads_it(checkpoint, tmp_path):
    from peft import AutoPeftModelForCausalLM

    model = load_model(str(checkpoint))
    t = trained(model, seed=1)
    path = t.save_adapter(0, tmp_path / "adapters" / "task-a")
    assert base_of(path) == str(checkpoint.resolve())
    assert base_of(t.save_adapter(0, tmp_path / "named", base_model="my/base")) == "my/base"   # a name given wins

    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(path)).eval()
    ids = torch.randint(0, T.VOCAB_SIZE, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = peft_model(ids).logits
        base = peft_model.get_base_model()(ids).logits   # PEFT's own base, adapter in place
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    ours = our_logits(t, ids)
    assert (ours - plain).abs().max() > 1e-3     # the adapter changes the output...
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)   # ...the same way in both
    torch.testing.assert_close(base, theirs)
    torch.testing.assert_close(plain, model.logits(model(ids)).detach(), rtol=1e-5, atol=1e-5)


def test_adapter_of_a_preset_names_the_preset(tmp_path):
    t = trained(load_model("tiny", seed=3), steps=1)
    assert base_of(t.save_adapter(0, tmp_path / "a")) == "tiny"


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"model.layers.0.self_attn.q_proj": (torch.randn(8, 2, generator=g), torch.randn(2, 6, generator=g))}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_adapter_directory_has_the_umask_modes(tmp_path, umask):
    cfg = LoRAConfig(r=2, alpha=4, targets=("q_proj",))
    old = os.umask(umask)
    try:
        first = save_adapter(tmp_path / "out" / "a", _tensors(), cfg)
        again = save_adapter(tmp_path / "out" / "a", _tensors(), cfg)   # replaces the directory whole
        os.mkdir(tmp_path / "plain")
        (tmp_path / "plain" / "f").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert first == again
    assert mode(tmp_path / "plain") == 0o777 & ~umask          # what a plain mkdir gives here
    assert mode(tmp_path / "plain" / "f") == 0o666 & ~umask
    assert mode(again) == 0o777 & ~umask
    files = sorted(again.iterdir())
    assert [f.name for f in files] == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(mode(f) == 0o666 & ~umask for f in files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]   # no temporary left behind
    load_adapter(again)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    cfg = LoRAConfig(r=2, alpha=4, targets=("q_proj",))
    bad = {"model.layers.0.self_attn.q_proj": (np.zeros((8, 2)), None)}   # not tensors
    with pytest.raises(AttributeError):
        save_adapter(tmp_path / "a", bad, cfg)
    assert list(tmp_path.iterdir()) == []
