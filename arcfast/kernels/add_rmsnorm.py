"""Residual add + RMSNorm, fused, forward only (the decoder's inference steps).

    s = x + delta                                                   (rounded to x's dtype)
    y = weight * (s * rsqrt(mean(s^2) + eps)).to(s.dtype)           statistics in fp32

Each transformer block adds its attention output to the residual stream and normalises the sum
for its MLP, then adds the MLP output and normalises for the next block. Eager PyTorch spends a
kernel on each add and five on each norm (one with :mod:`arcfast.kernels.rmsnorm`): in a decode
step, which is a string of tiny launches, the add is a launch of its own for a few kilobytes. This
kernel reads x and delta once and writes s and y: one launch per add-and-norm, 48 fewer per decode
step of a 24-layer model than add + fused norm.

No backward: training keeps :func:`arcfast.kernels.rmsnorm.rms_norm` (the add is free there, inside
autograd's graph); a call with a tensor that requires grad is refused.
"""
from __future__ import annotations

import torch

from ._common import kernel, next_pow2, tl, use_triton

__all__ = ["add_rms_norm", "add_rms_norm_reference"]


@kernel()
def _add_rms_norm_kernel(x_ptr, s_x, d_ptr, s_d, w_ptr, s_ptr, s_s, y_ptr, s_y, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * s_x + cols, mask=mask, other=0.0)
    d = tl.load(d_ptr + row * s_d + cols, mask=mask, other=0.0)
    s = x + d.to(x.dtype)                       # the residual stream, in its own dtype
    tl.store(s_ptr + row * s_s + cols, s, mask=mask)
    sf = s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / D + eps)
    h = (sf * rstd).to(s.dtype).to(tl.float32)  # HF rounds the normalised row to the input dtype
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + cols, (h * w).to(y_ptr.dtype.element_ty), mask=mask)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + delta, rms_norm(x + delta, weight, eps))`` in one pass; inference only.

    x, delta: [..., D] of one shape (delta cast to x's dtype before the add); weight: [D].
    Returns s [..., D] in x's dtype and y [..., D] in ``promote_types(x.dtype, weight.dtype)``.
    """
    if x.shape != delta.shape:
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)} and delta {tuple(delta.shape)} differ")
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"add_rms_norm: weight {tuple(weight.shape)} does not match x {tuple(x.shape)}")
    if torch.is_grad_enabled() and (x.requires_grad or delta.requires_grad or weight.requires_grad):
        raise RuntimeError("add_rms_norm has no backward: call it under torch.no_grad() / inference_mode()")
    if not use_triton(x):
        return add_rms_norm_reference(x, delta, weight, eps)
    lead, D = x.shape[:-1], x.shape[-1]
    x2, d2 = x.reshape(-1, D), delta.reshape(-1, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if d2.stride(-1) != 1:
        d2 = d2.contiguous()
    n_rows = x2.shape[0]
    s = torch.empty(n_rows, D, device=x.device, dtype=x.dtype)
    y = torch.empty(n_rows, D, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    block = next_pow2(D)
    if n_rows:
        _add_rms_norm_kernel[(n_rows,)](x2, x2.stride(0), d2, d2.stride(0), weight.contiguous(), s, s.stride(0),
                                        y, y.stride(0), D, float(eps), BLOCK_D=block,
                                        num_warps=4 if block <= 1024 else 8 if block <= 4096 else 16)
    return s.reshape(*lead, D), y.reshape(*lead, D)


def add_rms_norm_reference(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                           eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused operations: ``s = x + delta`` then Hugging Face's ``Qwen2RMSNorm.forward``."""
    from .rmsnorm import rms_norm_reference

    s = x + delta.to(x.dtype)
    return s, rms_norm_reference(s, weight, eps)
