"""The fixed-shape training step (arcfast.train.graph) against Trainer.step.

On the CPU the static step runs eagerly: the same loss over all positions, the same padded segment
buckets and the same per-row AdamW factors that a CUDA graph replays. The capture itself is checked
against the eager step on a GPU (skipped here).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast.lora.multi import LoRAConfig
from arcfast.model.decoder import build_model
from arcfast.model.config import preset
from arcfast.train.graph import MIN_SEGMENTS, StaticStep, graph_support, segment_bucket
from arcfast.train.trainer import TrainConfig, Trainer, pack_samples
from test_trainer import make_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(seed: int, n_adapters: int, n_steps: int, row_len: int = 96, rows: int = 2):
    """Packed batches of ``rows`` x ``row_len``; some steps leave some adapters out."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_steps):
        present = [a for a in range(n_adapters) if (a + s) % 3 != 0] or [0]
        samples = [make_sample(rng, a, int(rng.integers(8, 28))) for a in present for _ in range(int(rng.integers(1, 3)))]
        out.append(pack_samples(samples, row_len, rows=rows))
    return out


def twins(n_adapters: int, cfg: TrainConfig, device="cpu", dtype=torch.float32, tokens=()):
    made = []
    for _ in range(2):
        model = build_model(preset("tiny"), dtype=dtype, device=device, seed=3)
        tr = Trainer(model, LoRAConfig(r=4, alpha=8, tokens=tokens), cfg, n_adapters)
        tr.reset_adapters(range(n_adapters), seeds=[11 + a for a in range(n_adapters)], total_steps=[5, 6, 7, 8][:n_adapters])
        with torch.no_grad():  # non-zero B, so every path of the LoRA gradient is exercised
            tr.lora.weight.add_(0.01 * torch.randn(tr.lora.weight.shape, generator=torch.Generator().manual_seed(5)).to(device))
        made.append(tr)
    return made


def test_segment_bucket():
    assert [segment_bucket(n) for n in (1, 7, 8, 9, 16, 17, 100)] == [8, 8, 8, 16, 16, 32, 128]
    assert segment_bucket(0) == MIN_SEGMENTS


@pytest.mark.parametrize("weight_decay,max_norm,tokens", [(0.0, 1.0, ()), (0.05, 1e-3, ()), (0.0, None, ()),
                                                           (0.05, 1.0, ("embed_tokens", "lm_head"))])
def test_static_step_equals_trainer_step(weight_decay, max_norm, tokens):
    """The fixed-shape step against the eager one; with each task's own embedding and head rows at
    their own learning rate too (the graphed step's head runs over every position)."""
    cfg = TrainConfig(lr=3e-3, warmup_ratio=0.3, weight_decay=weight_decay, max_grad_norm=max_norm, attention="sdpa",
                      embedding_lr=1e-3 if tokens else None)
    ref, fast = twins(4, cfg, tokens=tokens)
    static = StaticStep(fast, capture=False)
    assert static.reason.startswith("eager")
    for k, batch in enumerate(batches(0, 4, 5)):
        want = ref.step(batch)
        got = static.step(batch)
        np.testing.assert_array_equal(got.stepped, want.stepped)
        np.testing.assert_array_equal(got.label_tokens, want.label_tokens)
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-5, equal_nan=True, err_msg=f"step {k}")
        np.testing.assert_allclose(got.grad_norm, want.grad_norm, rtol=1e-4, atol=1e-7, err_msg=f"step {k}")
        np.testing.assert_allclose(got.lr, want.lr, rtol=1e-12)
        assert (got.tokens, got.positions) == (want.tokens, want.positions)
        np.testing.assert_array_equal(fast.opt.steps, ref.opt.steps)
        torch.testing.assert_close(fast.lora.weight, ref.lora.weight, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fast.opt.m, ref.opt.m, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(fast.opt.v, ref.opt.v, rtol=1e-4, atol=1e-12)
    assert not torch.equal(fast.lora.weight, twins(4, cfg)[0].lora.weight)  # it did train


def test_absent_adapter_is_untouched_bit_for_bit():
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, attention="sdpa")
    (tr,) = twins(3, cfg)[:1]
    static = StaticStep(tr, capture=False)
    rng = np.random.default_rng(1)
    batch = pack_samples([make_sample(rng, a, 20) for a in (0, 2)], 64, rows=1)
    before = [t.detach().clone() for t in (tr.lora.weight[1], tr.opt.m[1], tr.opt.v[1])]
    stats = static.step(batch)
    assert list(stats.stepped) == [True, False, True] and np.isnan(stats.loss[1])
    for b, a in zip(before, (tr.lora.weight[1], tr.opt.m[1], tr.opt.v[1])):
        assert torch.equal(b, a)
    assert tr.opt.steps.tolist() == [1, 0, 1]


def test_segment_buckets_change_nothing():
    # The same samples as one row (few segments) and spread over rows (more, padded differently).
    cfg = TrainConfig(lr=2e-3, attention="loop")
    a, b = twins(2, cfg)
    rng = np.random.default_rng(2)
    samples = [make_sample(rng, i % 2, 10) for i in range(6)]
    one, six = pack_samples(samples, 64, rows=1), pack_samples(samples, 16, rows=6)
    assert segment_bucket(len(one.cu_seqlens) - 1) == 8 and segment_bucket(len(six.cu_seqlens) - 1) == 16
    sa = StaticStep(a, capture=False).step(one)
    sb = StaticStep(b, capture=False).step(six)
    np.testing.assert_allclose(sa.loss, sb.loss, rtol=1e-5)
    torch.testing.assert_close(a.lora.weight, b.lora.weight, rtol=1e-4, atol=1e-6)


def test_graph_support_and_refusals():
    cfg = TrainConfig(attention="sdpa")
    (tr,) = twins(1, cfg)[:1]
    if not torch.cuda.is_available():
        assert "CUDA" in graph_support(tr)
        with pytest.raises(ValueError, match="cannot capture"):
            StaticStep(tr, capture=True)
        assert StaticStep(tr).capture is False
    fp16 = Trainer(build_model(preset("tiny"), dtype=torch.float16, device="cpu"), LoRAConfig(r=2), cfg, 1)
    with pytest.raises(ValueError, match="fp16"):
        StaticStep(fp16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("tokens", [(), ("embed_tokens", "lm_head")])
def test_cuda_graph_replay_equals_eager(tokens):
    from arcfast.lora.routing import triton_available

    if not triton_available():
        pytest.skip("Triton LoRA kernels unavailable")
    cfg = TrainConfig(lr=3e-3, warmup_ratio=0.2, weight_decay=0.01, embedding_lr=1e-3 if tokens else None)
    eager_tr, graph_tr = twins(4, cfg, device="cuda", dtype=torch.bfloat16, tokens=tokens)
    if graph_support(graph_tr):
        pytest.skip(graph_support(graph_tr))
    eager, graphed = StaticStep(eager_tr, capture=False), StaticStep(graph_tr, capture=True)
    data = batches(4, 4, 6, row_len=128, rows=2) + batches(5, 4, 3, row_len=64, rows=4)
    for k, batch in enumerate(data):
        want, got = eager.step(batch), graphed.step(batch)
        np.testing.assert_allclose(got.loss, want.loss, rtol=2e-2, equal_nan=True, err_msg=f"step {k}")
        torch.testing.assert_close(graph_tr.lora.weight, eager_tr.lora.weight, rtol=2e-2, atol=2e-4)
    assert 2 <= graphed.captures <= len(data)


def test_device_routing_feeds_the_triton_lora_path(monkeypatch):
    """The graph builds its LoRA step from adapter ids already on the device (no host routing);
    under the Triton interpreter that path gives the loss and gradients of the host-routed one."""
    from arcfast.kernels._testing import enable_kernels
    from arcfast.lora.multi import LoRAStep
    from arcfast.train.graph import _DeviceRouting

    enable_kernels(monkeypatch)
    # Two targets (an attention and an MLP projection) keep the interpreter to seconds.
    tr = Trainer(build_model(preset("tiny"), dtype=torch.float32, device="cpu", seed=3),
                 LoRAConfig(r=4, alpha=8, targets=("v_proj", "down_proj")), TrainConfig(attention="sdpa"), 3)
    with torch.no_grad():
        tr.lora.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(7))
    rng = np.random.default_rng(6)
    batch = pack_samples([make_sample(rng, a, 9) for a in (2, 0, 1)] + [make_sample(rng, 0, 4)], 32, rows=1)
    ids = torch.from_numpy(batch.input_ids.astype(np.int64))
    pos = torch.from_numpy(batch.position_ids.astype(np.int64))
    from arcfast.model.attention import PackedAttention

    att = PackedAttention(torch.from_numpy(batch.sample_ids), "sdpa")
    results = []
    for make in (lambda: tr.lora.begin(batch.adapter_ids, torch.float32, "torch"),
                 lambda: LoRAStep(tr.lora, _DeviceRouting(torch.from_numpy(batch.adapter_ids.reshape(-1).astype(np.int32)), 3),
                                  torch.float32, "triton", True)):
        step = make()
        loss = tr.model(ids, pos, att, step).square().mean()
        loss.backward()
        results.append((loss.detach(), tr.lora.weight.grad.clone()))
        tr.lora.weight.grad = None
    assert results[1][1].abs().sum() > 0
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)


def test_trainer_option_falls_back_to_eager_with_a_reason():
    (plain,) = twins(2, TrainConfig(attention="sdpa"))[:1]
    (asked,) = twins(2, TrainConfig(attention="sdpa", cuda_graphs=True))[:1]
    if not torch.cuda.is_available():
        assert asked._graphed is None and "CUDA" in asked.graph_status
    batch = batches(8, 2, 1)[0]
    a, b = plain.step(batch), asked.step(batch)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert torch.equal(plain.lora.weight, asked.lora.weight)


def test_a_failed_first_capture_falls_back_to_eager_steps(monkeypatch):
    """An op the capture refuses must not end the run: the step runs eagerly, state unchanged."""
    cfg = TrainConfig(lr=3e-3, attention="sdpa")
    ref, fast = twins(2, cfg)
    static = StaticStep(fast, capture=False)
    static.capture = True   # as on a GPU, where the capture below fails

    def fail(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(static, "_capture_graph", fail)
    with pytest.warns(UserWarning, match="capture of the training step failed"):
        got = static.step(batches(9, 2, 1)[0])
    want = ref.step(batches(9, 2, 1)[0])
    assert not static.capture and "capture failed" in static.reason
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-5)
    torch.testing.assert_close(fast.lora.weight, ref.lora.weight, rtol=1e-4, atol=1e-6)


def test_row_buckets_and_widened_batches_train_alike():
    from arcfast.train.graph import row_bucket

    assert [row_bucket(n) for n in (1, 256, 257, 700, 8192, 8193, 10000)] == [256, 256, 320, 768, 8192, 10240, 10240]
    cfg = TrainConfig(lr=3e-3, warmup_ratio=0.2, attention="loop")
    ref, fast = twins(1, cfg)
    static = StaticStep(fast, capture=False, bucket_rows=True)
    rng = np.random.default_rng(11)
    for k in range(4):   # the batch-1 recipe: one sample per step, each its own length
        n = int(rng.integers(9, 60))
        batch = pack_samples([make_sample(rng, 0, n)], n)
        wide = batch.widen(row_bucket(n))
        assert wide.shape == (1, 256) and wide.n_tokens == n and wide.cu_seqlens.tolist() == [0, n, 256]
        want, got = ref.step(batch), static.step(batch)
        assert got.tokens == want.tokens == n
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-5)
        torch.testing.assert_close(fast.lora.weight, ref.lora.weight, rtol=1e-4, atol=1e-6)


def test_cu_seqlens_of_agrees_with_the_packer_and_widen_keeps_every_sample():
    from arcfast.samples.batch import cu_seqlens_of
    from arcfast.train.trainer import unpack_samples

    rng = np.random.default_rng(12)
    for rows, L in ((1, 40), (3, 30), (2, 64)):
        samples = [make_sample(rng, a % 2, int(rng.integers(5, 14))) for a in range(rows * 2)]
        b = pack_samples(samples, L, rows=rows)
        assert cu_seqlens_of(b.sample_ids).tolist() == b.cu_seqlens.tolist()
        w = b.widen(L + 7)
        assert w.shape == (rows, L + 7) and w.cu_seqlens[-1] == rows * (L + 7)
        for (x, y, a), (x2, y2, a2) in zip(unpack_samples(b), unpack_samples(w)):
            assert x.tolist() == x2.tolist() and y.tolist() == y2.tolist() and a == a2
    with pytest.raises(ValueError, match="shorter"):
        b.widen(L - 1)
