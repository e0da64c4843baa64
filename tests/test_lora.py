"""Multi-adapter LoRA: every path against a per-token loop, adapters against merged weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.lora.routing import Routing, lora_delta_grouped, lora_delta_torch
from arcfast.model.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def per_token_delta(x, A, B, ids, scaling):
    """The definition, one token at a time."""
    out = torch.zeros(x.shape[0], B.shape[2], dtype=x.dtype)
    for t, a in enumerate(ids.tolist()):
        if a >= 0:
            out[t] = (x[t] @ A[a]) @ B[a] * scaling
    return out


@pytest.mark.parametrize("ids", [
    [2, 2, 0, 0, 0, 1, -1, -1, 2, 0],   # several adapters, unsorted, padding
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],     # one adapter everywhere
    [3, 3, 3, 3, 3, -1, -1, -1, -1, -1],  # one adapter and padding
    [-1] * 10,                          # nothing
])
def test_delta_paths_match_per_token_loop(ids):
    g = torch.Generator().manual_seed(0)
    N, din, r, dout = 4, 16, 4, 8  # 16-byte strides, as torch._grouped_mm needs
    x = torch.randn(len(ids), din, generator=g)
    A, B = torch.randn(N, din, r, generator=g), torch.randn(N, r, dout, generator=g)
    ids = np.array(ids, np.int32)
    routing = Routing(ids, N, "cpu")
    want = per_token_delta(x, A, B, torch.from_numpy(ids), 0.5)
    got = lora_delta_torch(x, A, B, routing, 0.5)
    real = torch.from_numpy(ids >= 0)
    # with a single adapter present, padding rows may carry its delta (never read): compare real rows
    torch.testing.assert_close(got[real], want[real])
    if routing.single is None:
        torch.testing.assert_close(got, want)
    try:
        grouped = lora_delta_grouped(x, A, B, routing, 0.5)
    except (RuntimeError, NotImplementedError) as exc:  # torch builds without a CPU _grouped_mm
        pytest.skip(f"torch._grouped_mm unavailable on the CPU: {exc}")
    torch.testing.assert_close(grouped[real], want[real])


def test_delta_gradients_match_per_token_loop():
    g = torch.Generator().manual_seed(1)
    N, din, r, dout = 3, 8, 2, 5
    ids = np.array([0, 0, 2, 2, 2, -1, 1, 0], np.int32)
    x = torch.randn(len(ids), din, generator=g, requires_grad=True)
    A = torch.randn(N, din, r, generator=g, requires_grad=True)
    B = torch.randn(N, r, dout, generator=g, requires_grad=True)
    w = torch.randn(len(ids), dout, generator=g)
    (lora_delta_torch(x, A, B, Routing(ids, N, "cpu"), 2.0) * w).sum().backward()
    got = [t.grad.clone() for t in (x, A, B)]
    for t in (x, A, B):
        t.grad = None
    (per_token_delta(x, A, B, torch.from_numpy(ids), 2.0) * w).sum().backward()
    for a, b in zip(got, (x.grad, A.grad, B.grad)):
        torch.testing.assert_close(a, b)


def test_routing_rejects_bad_ids():
    with pytest.raises(ValueError, match="adapter id 5 outside 0..2"):
        Routing(np.array([0, 5, 1]), 3, "cpu")


def test_layout_and_init():
    model = load_model("tiny")
    cfg = LoRAConfig(r=4, alpha=8)
    lora = MultiLoRA(model, cfg, 3)
    names = list(lora.slots)
    assert names[0] == "model.layers.0.self_attn.q_proj" and len(names) == 7 * model.config.n_layers
    assert lora.size == sum(cfg.r * (s.din + s.dout) for s in lora.slots.values())
    lora.reset([0, 1, 2], seeds=[7, 8, 7])
    for name, s in lora.slots.items():
        A, B = lora.A(name), lora.B(name)
        assert A.shape == (3, s.din, 4) and B.shape == (3, 4, s.dout)
        assert (B == 0).all()
        assert A.abs().max() <= 1 / math.sqrt(s.din) and A.std() > 0.3 / math.sqrt(s.din)
        torch.testing.assert_close(A[0], A[2])       # same seed, same adapter, any slot
        assert not torch.equal(A[0], A[1])
    got = lora.get(1)
    lora.set(0, got)
    torch.testing.assert_close(lora.weight[0], lora.weight[1])
    with pytest.raises(ValueError, match="expected"):
        lora.set(0, {names[0]: (got[names[0]][0][:, :2], got[names[0]][1])})


def merged_copy(model, tensors, scaling):
    """A copy of ``model`` with the adapter merged into its weights: W + scaling * (A B)^T."""
    m = load_model("tiny")
    m.load_state_dict(model.state_dict())
    mods = dict(m.named_modules())
    with torch.no_grad():
        for name, (a, b) in tensors.items():
            mods[name].weight += scaling * (a @ b).t()
    return m


def test_many_adapters_in_one_batch_equal_merged_models():
    """Each row, going through its own adapter, gives the logits of the model with that adapter
    merged into the weights; rows of a padding-only adapter id (-1) give the base model's."""
    torch.manual_seed(0)
    model = load_model("tiny", seed=1)
    cfg = LoRAConfig(r=4, alpha=8)
    lora = MultiLoRA(model, cfg, 3)
    lora.reset(range(3), seeds=[1, 2, 3])
    with torch.no_grad():
        lora.weight.normal_(0, 0.1)  # B non-zero too
    ids = torch.randint(0, 16, (4, 12))
    adapter_ids = np.array([[2] * 12, [0] * 12, [-1] * 12, [1] * 12], np.int32)
    step = lora.begin(adapter_ids, torch.float32, "torch")
    out = model.logits(model(ids, lora=step))
    for row, a in enumerate(adapter_ids[:, 0]):
        ref = model if a < 0 else merged_copy(model, lora.get(int(a)), cfg.scaling)
        torch.testing.assert_close(out[row], ref.logits(ref(ids[row:row + 1]))[0], rtol=1e-4, atol=1e-5)
    # and the gradient reaches only the adapters used, through one [N, P] buffer
    out[0].sum().backward()
    g = lora.weight.grad
    assert g[2].abs().sum() > 0 and (g[0] == 0).all() and (g[1] == 0).all()


def test_fresh_adapter_is_the_base_model():
    model = load_model("tiny", seed=2)
    lora = MultiLoRA(model, LoRAConfig(r=2, alpha=4), 2)
    lora.reset([0, 1])
    ids = torch.randint(0, 16, (2, 9))
    step = lora.begin(np.array([[0] * 9, [1] * 9], np.int32), torch.float32)
    torch.testing.assert_close(model.logits(model(ids, lora=step)), model.logits(model(ids)))


def test_targets_and_config_checks():
    model = load_model("tiny")
    lora = MultiLoRA(model, LoRAConfig(r=2, targets=("q_proj", "v_proj")), 1)
    assert all(n.endswith(("q_proj", "v_proj")) for n in lora.slots)
    with pytest.raises(ValueError, match="no layer"):
        MultiLoRA(model, LoRAConfig(targets=("c_attn",)), 1)
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)


@pytest.mark.parametrize("r", [8, 64, 256])
def test_scaling_is_alpha_over_r_or_over_sqrt_r_with_rslora(r):
    assert LoRAConfig(r=r, alpha=16).scaling == 16 / r
    assert LoRAConfig(r=r, alpha=16, rslora=True).scaling == pytest.approx(16 / math.sqrt(r), rel=1e-15)
    assert LoRAConfig(r=r, alpha=16).rslora is False


def test_rslora_adapter_at_rank_256_equals_its_merged_model():
    """A rank-256 rsLoRA adapter adds alpha/sqrt(r) * (A B)^T to every targeted weight: 16 times
    what alpha/r would add, so a forgotten sqrt shows."""
    model = load_model("tiny", seed=3)
    cfg = LoRAConfig(r=256, alpha=32, rslora=True)
    lora = MultiLoRA(model, cfg, 1)
    with torch.no_grad():
        lora.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 16, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.logits(model(ids, lora=lora.begin(np.zeros((1, 10), np.int32), torch.float32, "torch")))
        ref = merged_copy(model, lora.get(0), 2.0)        # 32 / sqrt(256)
        plain = merged_copy(model, lora.get(0), 32 / 256)
        torch.testing.assert_close(out, ref.logits(ref(ids)), rtol=1e-4, atol=1e-5)
        assert (out - plain.logits(plain(ids))).abs().max() > 1e-2


@pytest.mark.parametrize("bad,match", [
    (dict(r=0), "rank"), (dict(r=-4), "rank"), (dict(r=2.5), "rank"), (dict(r=True), "rank"),
    (dict(alpha=float("nan")), "alpha"), (dict(alpha=float("inf")), "alpha"), (dict(alpha="16"), "alpha"),
    (dict(rslora="yes"), "rslora"), (dict(rslora=1), "rslora"),
])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**bad)
