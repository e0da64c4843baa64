"""What the kernel tests share: the device, the dtypes, the tolerances and the comparison.

Tolerances are on the relative error ``||got - want|| / ||want||`` against the reference run in
float64 on the same inputs:

| dtype, device              | matmul-based ops                  | elementwise / row ops |
|----------------------------|-----------------------------------|-----------------------|
| fp32, CPU (interpreter)    | 1e-5                              | 1e-5                  |
| fp32, GPU                  | 5e-3 (Triton's fp32 dot is tf32)  | 1e-5                  |
| bf16 / fp16, GPU           | 2e-2                              | 1e-2                  |

bf16 rounds at 2^-8 relative, so one rounding of the output alone costs about 2e-3; gradients go
through two or three roundings. The GPU-only exactness tests hold the bf16 kernels to the bf16
reference (Hugging Face's rounding) at one bf16 ulp instead.
"""
from __future__ import annotations

import torch

from ._common import HAS_TRITON, triton_interpreted

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# The interpreter computes bf16 wrongly (numpy has no bf16), so the CPU checks are fp32.
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]

_TOL = {
    ("cpu", torch.float32): {"matmul": 1e-5, "elementwise": 1e-5},
    ("cuda", torch.float32): {"matmul": 5e-3, "elementwise": 1e-5},
    ("cuda", torch.bfloat16): {"matmul": 2e-2, "elementwise": 1e-2},
    ("cuda", torch.float16): {"matmul": 2e-2, "elementwise": 1e-2},
}


def enable_kernels(monkeypatch) -> None:
    """Make the public functions take their Triton path for the current test. On a GPU, autotuning
    is off (the first config of each kernel runs): tuning every new test shape costs minutes, and
    tests of their own check every config. Without Triton (an optional extra) the test is skipped:
    every public function then runs its reference, which other tests check."""
    if not HAS_TRITON:
        import pytest

        pytest.skip("triton is not installed (pip install 'arcfast[triton]'): the kernels cannot run")
    if ON_GPU:
        monkeypatch.setenv("ARCFAST_AUTOTUNE", "0")
        return
    assert triton_interpreted(), (
        "Triton was imported in compiled mode before tests/conftest.py could switch it to the "
        "interpreter; run with TRITON_INTERPRET=1 set, or make sure nothing imports triton earlier")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def tolerance(dtype: torch.dtype, kind: str) -> float:
    return _TOL[(DEVICE, dtype)][kind]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, kind: str, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all() or not torch.isfinite(want).all(), f"{what}: non-finite values"
    tol = tolerance(dtype, kind)
    if want.abs().max() == 0:
        assert got.abs().max() == 0, f"{what}: expected all zeros, got max |x| = {float(got.abs().max())}"
        return
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g} ({dtype}, {DEVICE})"


def grads(outputs, inputs, upstream):
    """Gradients of ``sum(out * up)`` w.r.t. each input (None where an input gets none)."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    upstream = upstream if isinstance(upstream, (tuple, list)) else (upstream,)
    return torch.autograd.grad(outputs, inputs, upstream, allow_unused=True)


def leaf(t: torch.Tensor, dtype=None, requires_grad: bool = True) -> torch.Tensor:
    return t.detach().to(dtype or t.dtype).clone().requires_grad_(requires_grad)
