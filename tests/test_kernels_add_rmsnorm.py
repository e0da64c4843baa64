"""Fused residual add + RMSNorm (inference) against the unfused operations.

Tolerances: arcfast/kernels/_testing.py.
"""
import pytest
import torch

from arcfast.kernels import _testing as kt
from arcfast.kernels.add_rmsnorm import add_rms_norm, add_rms_norm_reference

DEV = kt.DEVICE


@pytest.fixture(autouse=True)
def _kernels(monkeypatch):
    kt.enable_kernels(monkeypatch)


SHAPES = [(13, 40), (1, 7), (3, 5, 96)]
if kt.ON_GPU:
    SHAPES += [(96, 1, 896), (4096, 896)]


@pytest.mark.parametrize("dtype", kt.DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_rms_norm_matches_the_unfused_ops(shape, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=gen) * 3).to(DEV, dtype)
    d = torch.randn(*shape, generator=gen).to(DEV, dtype)
    w = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(DEV, dtype)
    with torch.no_grad():
        s, y = add_rms_norm(x, d, w, 1e-6)
        s_ref, y_ref = add_rms_norm_reference(x.double(), d.double(), w.double(), 1e-6)
    assert s.dtype == dtype and y.dtype == dtype and s.shape == y.shape == x.shape
    kt.assert_close(s, s_ref, dtype, "elementwise", "s")
    kt.assert_close(y, y_ref, dtype, "elementwise", "y")
    # the sum is rounded to x's dtype exactly as torch's add rounds it
    assert torch.equal(s, x + d)


def test_strided_rows_and_refusals():
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(6, 2, 24, generator=gen).to(DEV)
    x, d = big[:, 0], big[:, 1]              # rows 48 floats apart
    w = torch.rand(24, generator=gen).to(DEV) + 0.5
    with torch.no_grad():
        s, y = add_rms_norm(x, d, w, 1e-5)
    s_ref, y_ref = add_rms_norm_reference(x.double(), d.double(), w.double(), 1e-5)
    kt.assert_close(y, y_ref, torch.float32, "elementwise", "y")
    kt.assert_close(s, s_ref, torch.float32, "elementwise", "s")
    with pytest.raises(ValueError, match="differ"):
        add_rms_norm(x, d[:3], w)
    with pytest.raises(RuntimeError, match="no backward"):
        add_rms_norm(x.clone().requires_grad_(), d, w)
