"""Multi-adapter LoRA kernels against the per-adapter PyTorch reference (forward and every gradient).

On the CPU the kernels run in Triton's interpreter (fp32, small shapes); on a GPU in fp32 and bf16
with a larger, model-sized case too. Tolerances: arcfast/kernels/_testing.py.
"""
import pytest
import torch

from arcfast.kernels import _testing as kt
from arcfast.kernels.lora import (
    lora_delta,
    lora_delta_reference,
    lora_linear,
    lora_linear_reference,
    lora_segments,
)

DEV = kt.DEVICE


@pytest.fixture(autouse=True)
def _kernels(monkeypatch):
    kt.enable_kernels(monkeypatch)


def _ids(T, n, layout, gen):
    """adapter ids: 'random' token by token (with -1s), 'runs' like packed samples with a padded
    tail, 'one' all adapter 0, 'sparse' only some adapters used."""
    if layout == "random":
        return torch.randint(-1, n, (T,), generator=gen, dtype=torch.int32)
    if layout == "one":
        return torch.zeros(T, dtype=torch.int32)
    if layout == "sparse":
        return torch.where(torch.rand(T, generator=gen) < 0.5, n - 1, -1).to(torch.int32)
    # runs: samples of 3..12 tokens, each with a random adapter, then padding
    out, t = [], 0
    while t < T - 4:
        length = int(torch.randint(3, 13, (1,), generator=gen))
        out += [int(torch.randint(0, n, (1,), generator=gen))] * length
        t += length
    out = (out + [-1] * T)[:T]
    return torch.tensor(out, dtype=torch.int32)


# (T, d_in, d_out, r, n_adapters, layout): odd sizes everywhere so every tile has a masked tail
CASES = [
    (37, 40, 48, 8, 3, "random"),
    (64, 32, 33, 16, 1, "one"),
    (50, 24, 40, 4, 5, "runs"),
    (29, 17, 20, 3, 4, "sparse"),
    (1, 16, 16, 2, 2, "random"),
]
if kt.ON_GPU:
    CASES += [(3000, 896, 1152, 32, 16, "runs"), (2048, 256, 320, 16, 64, "random")]
# The ranks TTFT recipes use, up to 256 (rsLoRA's high ranks): few tokens and narrow layers so the
# interpreter stays fast; r = 256 fills a whole rank block of the fused epilogue (BLOCK_R = 256)
# and is the reduction length of the expand (16 k-steps of the interpreter's BLOCK_K = 16). On a
# GPU also at model width.
RANK_CASES = [(23, 20, 24, 8, 3, "runs"), (21, 24, 20, 64, 3, "random"), (19, 16, 24, 256, 2, "runs")]
if kt.ON_GPU:
    RANK_CASES += [(1024, 896, 1152, r, 8, "runs") for r in (64, 256)]


def _make(T, d_in, d_out, r, n, layout, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d_in, generator=gen)
    A = torch.randn(n, d_in, r, generator=gen) / d_in ** 0.5
    B = torch.randn(n, r, d_out, generator=gen) / r ** 0.5
    W = torch.randn(d_out, d_in, generator=gen) / d_in ** 0.5
    bias = torch.randn(d_out, generator=gen)
    ids = _ids(T, n, layout, gen)
    up = torch.randn(T, d_out, generator=gen)
    cast = lambda t: kt.leaf(t.to(DEV), dtype)
    return cast(x), cast(A), cast(B), cast(W), cast(bias), ids.to(DEV), up.to(DEV, dtype)


@pytest.mark.parametrize("dtype", kt.DTYPES)
@pytest.mark.parametrize("case", CASES + RANK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_lora_delta_matches_reference(case, dtype):
    x, A, B, _, _, ids, up = _make(*case, dtype)
    scaling = 0.75
    seg = lora_segments(ids, A.shape[0])
    out = lora_delta(x, A, B, seg, scaling)
    g = kt.grads(out, (x, A, B), up)
    xr, Ar, Br = (kt.leaf(t, torch.float64) for t in (x, A, B))
    ref = lora_delta_reference(xr, Ar, Br, ids, scaling)
    gr = kt.grads(ref, (xr, Ar, Br), up.double())
    kt.assert_close(out, ref, dtype, "matmul", "delta")
    for name, a, b in zip(("dx", "dA", "dB"), g, gr):
        kt.assert_close(a, b, dtype, "matmul", name)
    # tokens with no adapter get exactly nothing
    none = ids < 0
    if none.any():
        assert out[none].abs().max() == 0


# lora_linear adds the LoRA expand either in its GEMM's epilogue ("fused") or after a torch matmul
# ("matmul+pass"); the interpreter checks the second on one shape (it is slow) and the high rank,
# the GPU on all.
LINEAR_CASES = [(case, bias, train, path)
                for case in CASES[:3] + CASES[5:] + RANK_CASES
                for bias, train in [(True, False), (False, True)]
                for path in ("fused", "matmul+pass")
                if path == "fused" or kt.ON_GPU or case is CASES[0] or case is RANK_CASES[2]]


@pytest.mark.parametrize("dtype", kt.DTYPES)
@pytest.mark.parametrize("case,with_bias,train_base,path", LINEAR_CASES,
                         ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_lora_linear_matches_reference(case, with_bias, train_base, path, dtype, monkeypatch):
    import arcfast.kernels.lora as lora

    monkeypatch.setattr(lora, "_FUSED_MAX_K", 1 << 30 if path == "fused" else 0)
    x, A, B, W, bias, ids, up = _make(*case, dtype)
    W.requires_grad_(train_base)
    bias = bias if with_bias else None
    if bias is not None:
        bias.requires_grad_(train_base)
    scaling = 2.0
    out = lora_linear(x, W, bias, A, B, ids, scaling)
    inputs = [t for t in (x, W, bias, A, B) if t is not None and t.requires_grad]
    g = kt.grads(out, inputs, up)
    ref_inputs = {id(t): kt.leaf(t, torch.float64, t.requires_grad) for t in (x, W, bias, A, B) if t is not None}
    r = lambda t: None if t is None else ref_inputs[id(t)]
    ref = lora_linear_reference(r(x), r(W), r(bias), r(A), r(B), ids, scaling)
    gr = kt.grads(ref, [r(t) for t in inputs], up.double())
    kt.assert_close(out, ref, dtype, "matmul", "output")
    for i, (a, b) in enumerate(zip(g, gr)):
        kt.assert_close(a, b, dtype, "matmul", f"grad of input {i}")


def test_segments_group_tokens_stably():
    ids = torch.tensor([2, -1, 0, 2, 0, 1, -1, 2], dtype=torch.int32, device=DEV)
    seg = lora_segments(ids, 4)
    assert seg.order.tolist() == [2, 4, 5, 0, 3, 7, 1, 6]
    assert seg.offsets.tolist() == [0, 2, 3, 6, 6, 8]
    assert seg.counts().tolist() == [2, 1, 3, 0]
    assert seg.order.dtype == torch.int32 and seg.offsets.dtype == torch.int32


def test_segments_and_ids_give_the_same_result_and_shapes_carry_through():
    x, A, B, W, bias, ids, _ = _make(38, 24, 40, 4, 3, "runs", torch.float32, seed=3)
    x3, ids2 = x.detach().reshape(2, 19, 24), ids.reshape(2, 19)
    seg = lora_segments(ids2, 3)
    a = lora_delta(x3, A.detach(), B.detach(), ids2, 0.5)
    b = lora_delta(x3, A.detach(), B.detach(), seg, 0.5)
    assert a.shape == (2, 19, 40)
    assert torch.equal(a, b)
    y = lora_linear(x3, W.detach(), bias.detach(), A.detach(), B.detach(), seg, 0.5)
    want = lora_linear_reference(x3.double(), W.double(), bias.double(), A.double(), B.double(), ids2, 0.5)
    assert y.shape == (2, 19, 40)
    kt.assert_close(y, want, torch.float32, "matmul", "3-D input")


def test_no_adapter_anywhere_is_the_base_layer():
    x, A, B, W, bias, _, _ = _make(20, 16, 24, 4, 2, "one", torch.float32)
    ids = torch.full((20,), -1, dtype=torch.int32, device=DEV)
    y = lora_linear(x.detach(), W.detach(), bias.detach(), A.detach(), B.detach(), ids, 1.0)
    kt.assert_close(y, torch.nn.functional.linear(x.double(), W.double(), bias.double()),
                    torch.float32, "matmul", "base only")
    assert lora_delta(x.detach(), A.detach(), B.detach(), ids, 1.0).abs().max() == 0


def test_bad_inputs_are_named():
    x, A, B, W, _, ids, _ = _make(10, 16, 24, 4, 2, "random", torch.float32)
    with pytest.raises(ValueError, match=r"adapter_ids\[3\] = 2 is outside -1..1"):
        lora_segments(torch.tensor([0, 1, -1, 2]), 2)
    with pytest.raises(ValueError, match="x has 15 features"):
        lora_delta(x[:, :15], A, B, ids, 1.0)
    with pytest.raises(TypeError, match="one dtype"):
        lora_delta(x.double(), A, B, ids, 1.0)
    with pytest.raises(ValueError, match="segments were built for 3 adapters"):
        lora_delta(x, A, B, lora_segments(ids, 3), 1.0)
    with pytest.raises(ValueError, match="9 adapter ids for 10 tokens"):
        lora_delta(x, A, B, ids[:9], 1.0)
    with pytest.raises(ValueError, match="W must be"):
        lora_linear(x, W.t(), None, A, B, ids, 1.0)


@pytest.mark.skipif(kt.ON_GPU, reason="checks the CPU fallback")
def test_cpu_without_interpreter_takes_the_reference_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    import arcfast.kernels.lora as lora

    def boom(*a, **k):
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(lora, "_seg_matmul", boom)
    monkeypatch.setattr(lora, "_lora_gemm", boom)
    x, A, B, W, bias, ids, _ = _make(12, 16, 24, 4, 2, "random", torch.float32)
    assert torch.equal(lora_delta(x, A, B, ids, 1.0), lora_delta_reference(x, A, B, ids, 1.0))
    lora_linear(x, W, bias, A, B, ids, 1.0).sum().backward()
    assert x.grad is not None and A.grad is not None


def _all_configs():
    import arcfast.kernels.lora as lora

    names = ("_seg_matmul_kernel", "_seg_weight_grad_kernel", "_lora_gemm_kernel")
    return [(n, i) for n in names for i in range(len(getattr(lora, n).configs))]


@pytest.mark.skipif(not kt.ON_GPU, reason="autotune configs are compiled for the GPU only")
@pytest.mark.parametrize("name,index", _all_configs() if kt.ON_GPU else [])
def test_every_autotune_config_matches_reference(name, index):
    import arcfast.kernels.lora as lora

    # sizes off every block multiple; r = 24 leaves part of the rank block masked
    x, A, B, W, bias, ids, up = _make(999, 264, 328, 24, 16, "runs", torch.bfloat16, seed=index)
    with getattr(lora, name).pin(index):
        out = lora_linear(x, W, bias, A, B, ids, 0.5)
        g = kt.grads(out, (x, A, B), up)
        delta = lora_delta(x.detach(), A.detach(), B.detach(), ids, 0.5)
    r = {id(t): kt.leaf(t, torch.float64, t.requires_grad) for t in (x, W, bias, A, B)}
    ref = lora_linear_reference(*(r[id(t)] for t in (x, W, bias, A, B)), ids, 0.5)
    gr = kt.grads(ref, [r[id(t)] for t in (x, A, B)], up.double())
    kt.assert_close(out, ref, torch.bfloat16, "matmul", f"{name}[{index}] output")
    for what, a, b in zip(("dx", "dA", "dB"), g, gr):
        kt.assert_close(a, b, torch.bfloat16, "matmul", f"{name}[{index}] {what}")
    want = lora_delta_reference(*(r[id(t)].detach() for t in (x, A, B)), ids, 0.5)
    kt.assert_close(delta, want, torch.bfloat16, "matmul", f"{name}[{index}] delta")
