"""Backend selection and what the Unsloth backend hands to Unsloth (Unsloth itself needs a GPU)."""
from __future__ import annotations

import json

import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.train.backends import BackendUnavailable, backend_status, select_backend
from arcfast.train.backends.unsloth import checkpoint_for_unsloth
from arcfast.model.decoder import build_model
from arcfast.model.checkpoint import load_model
from arcfast.model.config import preset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auto_is_native_and_unavailable_backends_say_why():
    cls, reason = select_backend("auto")
    assert cls.name == "native" and reason.startswith("native:")
    status = backend_status()
    assert set(status) == {"native", "hf", "unsloth"} and status["hf"][0]
    if not status["unsloth"][0]:
        with pytest.raises(BackendUnavailable, match="unsloth not importable"):
            select_backend("unsloth")
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend("vllm")


@pytest.mark.parametrize("vocab", ["compact", "full"])
def test_unsloth_checkpoint_has_a_fitting_tokenizer_with_a_pad_token(tmp_path, vocab):
    from transformers import AutoTokenizer

    model = build_model(preset("tiny", vocab=vocab), dtype=torch.float32, device="cpu", seed=4)
    path = checkpoint_for_unsloth(model, tmp_path / "ckpt")
    tok = AutoTokenizer.from_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    assert tok.pad_token is not None and len(tok) <= cfg["vocab_size"]
    assert tok("12\n3", add_special_tokens=False)["input_ids"] == [1, 2, T.ROW, 3]
    assert tok.decode([1, 2, T.ROW, 3]) == "12\n3"
    back = load_model(str(path), dtype=torch.float32, vocab="full")
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("rslora", [False, True])
def test_hf_backend_scales_as_native(rslora):
    """The hf backend hands rsLoRA to PEFT (use_rslora): with the same adapter loaded, its loss is
    the native trainer's, and PEFT's layers carry alpha/sqrt(r) (or alpha/r)."""
    import numpy as np

    from arcfast.train.backends import make_backend
    from arcfast.lora.multi import LoRAConfig
    from arcfast.train.trainer import TrainConfig
    from test_adapters import random_batch

    model = load_model("tiny", seed=0)
    lcfg = LoRAConfig(r=16, alpha=8, rslora=rslora)       # scaling 2 with rsLoRA, 0.5 without
    tcfg = TrainConfig(attention="sdpa", lora_path="torch", ops="torch", loss="torch")
    native, hf = make_backend("native", model, lcfg, tcfg, 1), make_backend("hf", model, lcfg, tcfg, 1)
    assert {m.scaling["default"] for m in hf._lora_modules().values()} == {lcfg.scaling}
    g = torch.Generator().manual_seed(0)
    tensors = {n: (a, torch.randn(b.shape, generator=g) * 0.1) for n, (a, b) in native.lora.get(0).items()}
    native.load_adapter([0], tensors)
    hf.load_adapter([0], tensors)
    batch = random_batch(np.random.default_rng(1))
    np.testing.assert_allclose(native.eval_loss(batch), hf.eval_loss(batch), rtol=1e-5)


def test_inference_gets_the_trained_adapters_by_identity_and_every_backend_agrees():
    """Training hands its adapters to inference as they are: the native backend's own table (the
    same object, no PEFT round trip), and a PEFT-trained backend's converted once into a kept
    table; the same adapter loaded into both gives the same weights in inference's table."""
    from arcfast.train.backends import make_backend
    from arcfast.train.backends.base import Backend
    from arcfast.lora.multi import LoRAConfig
    from arcfast.train.trainer import TrainConfig

    model = load_model("tiny", seed=0)
    lcfg = LoRAConfig(r=4, alpha=8)
    tcfg = TrainConfig(attention="sdpa", lora_path="torch", ops="torch", loss="torch")
    native, hf = make_backend("native", model, lcfg, tcfg, 3), make_backend("hf", model, lcfg, tcfg, 1)
    g = torch.Generator().manual_seed(0)
    tensors = {n: (torch.randn(a.shape, generator=g) * 0.1, torch.randn(b.shape, generator=g) * 0.1)
               for n, (a, b) in native.lora.get(0).items()}
    native.load_adapter([2], tensors)
    hf.load_adapter([0], tensors)
    lora = native.inference_lora(model)
    assert lora is native.lora                                   # by identity: nothing copied
    converted = Backend.inference_lora(native, model)            # the PEFT route, for comparison
    torch.testing.assert_close(converted.weight, native.lora.weight, rtol=0, atol=0)
    from_hf = hf.inference_lora(model)
    assert from_hf is hf.inference_lora(model)                  # one kept table
    torch.testing.assert_close(from_hf.weight[0], native.lora.weight[2], rtol=0, atol=0)
