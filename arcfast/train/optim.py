"""The optimizer of the LoRA trainer: per-adapter AdamW, its learning-rate schedule and per-adapter
gradient clipping. One update rule, :func:`adamw_update`, serves the eager step
(:meth:`MultiAdamW.step`, arcfast.train.trainer) and the fixed-shape step replayed as a CUDA graph
(arcfast.train.graph), which passes the same per-row factors as device buffers
(:meth:`MultiAdamW.factors`).

Row ``a`` of the parameter [N, P] is adapter ``a``'s, updated exactly as ``torch.optim.AdamW``
would update that adapter's parameters alone: its own step count (bias correction), learning
rate and activity. An inactive row (no labelled token in the batch) is left bit for bit as it was.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

# The per-row factors of one AdamW step (each float32 [N, 1]); a row that does not step gets the
# neutral ones, which leave its weights and moments unchanged.
FACTORS = ("decay", "m_blend", "v_keep", "v_blend", "step_scale", "bc2_sqrt")
NEUTRAL = {"decay": 1.0, "m_blend": 0.0, "v_keep": 1.0, "v_blend": 0.0, "step_scale": 0.0, "bc2_sqrt": 1.0}


@torch.no_grad()
def adamw_update(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, f: dict, eps: float,
                 lr_scale: Optional[torch.Tensor] = None) -> None:
    """One AdamW step of rows ``p`` (moments ``m``, ``v``; gradient ``g``), in place, with the per-row
    factors ``f`` of :data:`FACTORS` (tensors [rows, 1] or numbers), in torch.optim.AdamW's
    single-tensor order so results agree to rounding:

        p *= 1 - lr * wd;  m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
        p += (-lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    ``lr_scale``: fp32 [P], a learning-rate factor per column (the columns of a row's parts trained
    at their own rate, as torch's parameter groups with their own lr), or None for 1 everywhere.
    """
    if lr_scale is None:
        p.mul_(f["decay"])
    elif not (isinstance(f["decay"], (int, float)) and f["decay"] == 1.0):
        p.mul_(1.0 - (1.0 - f["decay"]) * lr_scale)     # 1 - (lr * scale) * wd
    m.lerp_(g, f["m_blend"])
    v.mul_(f["v_keep"]).addcmul_(g * f["v_blend"], g)
    denom = (v.sqrt() / f["bc2_sqrt"]).add_(eps)
    p.addcdiv_(m * (f["step_scale"] if lr_scale is None else f["step_scale"] * lr_scale), denom)


def lr_factor(step: np.ndarray, total: np.ndarray, warmup: np.ndarray, schedule: str) -> np.ndarray:
    """Learning-rate multiplier at 0-based step ``step`` of a ``total``-step run (elementwise), with
    a linear warm-up over ``warmup`` steps: the values of transformers' get_*_schedule_with_warmup."""
    step, total, warmup = (np.asarray(a, dtype=np.float64) for a in (step, total, warmup))
    warm = step / np.maximum(1.0, warmup)
    if schedule == "constant":
        after = np.ones_like(step)
    elif schedule == "linear":
        after = np.maximum(0.0, (total - step) / np.maximum(1.0, total - warmup))
    else:
        progress = (step - warmup) / np.maximum(1.0, total - warmup)
        after = np.maximum(0.0, 0.5 * (1.0 + np.cos(math.pi * progress)))
    return np.where(step < warmup, warm, after)


class MultiAdamW:
    """AdamW over the rows of one parameter [N, P], each row its own optimizer: its own step
    count (bias correction), learning rate and activity. Row a is updated exactly as
    ``torch.optim.AdamW`` would update adapter a's parameters alone."""

    def __init__(self, param: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 lr_scale: Optional[torch.Tensor] = None):
        self.param = param
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay
        # fp32 [P] on the parameter's device: each column's factor of the row's learning rate.
        self.lr_scale = None if lr_scale is None else lr_scale.to(param.device, torch.float32).reshape(-1)
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.steps = np.zeros(param.shape[0], dtype=np.int64)   # host: no device sync to read

    def reset(self, ids: Sequence[int]) -> None:
        idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.param.device)
        self.m.index_fill_(0, idx, 0.0)
        self.v.index_fill_(0, idx, 0.0)
        self.steps[list(ids)] = 0

    def factors(self, lr: np.ndarray, active: np.ndarray) -> dict:
        """The per-row factors (:data:`FACTORS`, float32 [N, 1] host arrays) of the next step of
        rows where ``active`` (bool [N]) at learning rates ``lr`` (float [N]); neutral elsewhere.
        Reads the step counts without advancing them."""
        t = (self.steps + 1).astype(np.float64)
        lr = np.asarray(lr, np.float64)
        values = {"decay": 1.0 - lr * self.weight_decay, "m_blend": np.full(len(t), 1.0 - self.beta1),
                  "v_keep": np.full(len(t), self.beta2), "v_blend": np.full(len(t), 1.0 - self.beta2),
                  "step_scale": -lr / (1.0 - self.beta1 ** t), "bc2_sqrt": np.sqrt(1.0 - self.beta2 ** t)}
        return {k: np.where(active, values[k], NEUTRAL[k]).astype(np.float32)[:, None] for k in FACTORS}

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: np.ndarray, active: np.ndarray) -> None:
        """One step of rows where ``active`` (bool [N]) with learning rates ``lr`` (float [N]).
        Only the active rows are read: an inactive row's gradient may hold anything (an fp16
        overflow's inf), and its weights and moments stay exactly as they were."""
        rows = np.flatnonzero(active)
        if rows.size == 0:
            return
        dev = self.param.device
        f = {k: torch.as_tensor(a[rows], device=dev) for k, a in self.factors(lr, active).items()}
        self.steps[rows] += 1
        if rows.size == len(active):
            adamw_update(self.param, self.m, self.v, grad, f, self.eps, self.lr_scale)
            return
        idx = torch.as_tensor(rows, dtype=torch.long, device=dev)
        p, g, m, v = self.param[idx], grad[idx], self.m[idx], self.v[idx]
        adamw_update(p, m, v, g, f, self.eps, self.lr_scale)
        self.param.index_copy_(0, idx, p)
        self.m.index_copy_(0, idx, m)
        self.v.index_copy_(0, idx, v)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "steps": torch.from_numpy(self.steps.copy())}

    def load_state_dict(self, sd: dict) -> None:
        self.m.copy_(sd["m"])
        self.v.copy_(sd["v"])
        self.steps[:] = sd["steps"].numpy()


def clip_per_adapter(grad: torch.Tensor, max_norm: Optional[float]) -> torch.Tensor:
    """Per-row gradient norms [N] (fp32, before clipping); rows over ``max_norm`` scaled down in
    place with torch's clip_grad_norm_ formula (coef = max_norm / (norm + 1e-6), at most 1)."""
    norms = torch.linalg.vector_norm(grad, dim=1)
    if max_norm is not None:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        grad.mul_(coef[:, None])
    return norms


__all__ = ["FACTORS", "NEUTRAL", "adamw_update", "lr_factor", "MultiAdamW", "clip_per_adapter"]
