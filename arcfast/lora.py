"""Multi-adapter LoRA: N adapters of every targeted projection, each token through its own.

For a targeted layer ``y = x W^T + b`` and token t of adapter a = adapter_ids[t]:

    y_t = x_t W^T + b + scaling * (x_t A[a]) B[a]          (nothing added when a == -1)

with A [N, din, r], B [N, r, dout], ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with ``rslora``
(rank-stabilised LoRA, PEFT's ``use_rslora``: the update keeps its size as r grows, for high ranks
such as 256). A is initialised uniform in ±1/sqrt(din) (PEFT's kaiming-uniform with a=sqrt(5)), B
to zero, so a fresh adapter starts as the base model.

Storage: every adapter's A and B of every layer live in ONE fp32 parameter ``weight [N, P]``,
adapter-major (row a is adapter a's P numbers). Per-layer A/B are views of it, so per-adapter
operations of the optimizer (grad norm, clipping, AdamW with per-adapter step counts) are a few
ops on [N, P] whatever the number of layers.

Per step, :meth:`MultiLoRA.begin` makes a :class:`LoRAStep`: contiguous compute-dtype copies of
every layer's A and B (one autograd node whose backward fills one [N, P] gradient) and the
token->adapter routing, which the model's ``Linear`` layers call into. Paths for the delta:
``"torch"`` (tokens grouped by adapter, one matmul pair per adapter present: the reference),
``"grouped"`` (``torch._grouped_mm``, CUDA bf16), ``"triton"`` (arcfast.kernels.lora).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PATHS = ("auto", "torch", "grouped", "triton")


@dataclass
class LoRAConfig:
    r: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    targets: tuple = DEFAULT_TARGETS   # last component of the module name
    rslora: bool = False               # scaling alpha / sqrt(r) instead of alpha / r

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.r!r}")
        self.r = int(self.r)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number)) \
                or not math.isfinite(self.alpha):
            raise ValueError(f"LoRA alpha must be a finite number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.rslora, (bool, np.bool_)):
            raise ValueError(f"LoRA rslora must be True or False, got {self.rslora!r}")
        self.rslora = bool(self.rslora)

    @property
    def scaling(self) -> float:
        """The factor of the delta: ``alpha / r``, or ``alpha / sqrt(r)`` with ``rslora`` (PEFT's
        ``use_rslora``). Every user of an adapter takes it from here, never from alpha and r."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


@dataclass
class Slot:
    """Where one layer's A and B sit in a row of the flat weight."""

    name: str
    din: int
    dout: int
    off_a: int
    off_b: int


# ----------------------------------------------------------------------------------------------
# Routing: which tokens go through which adapter

class Routing:
    """Token -> adapter routing of one batch, computed on the host from numpy ids (no device sync).

    ``adapter_ids`` int32 [T] on the device (-1: no adapter); ``perm`` int64 [T'] the non-padding
    token indices sorted (stably) by adapter; ``counts[a]`` tokens of adapter a (host ints);
    ``offsets`` int32 [N] cumulative ends of the groups in ``perm`` order (``torch._grouped_mm``'s
    ``offs``); ``single`` the adapter id when it is the only one present, else None: the -1 tokens
    then go through it too, which is harmless for padding (it never reaches a real token nor carries
    loss). ``base_tokens=True`` says the -1 tokens are real base-model tokens (mixed prompts of a
    generator's prefill), which must get no delta: ``single`` is then set only when every token
    has that one adapter.
    """

    def __init__(self, adapter_ids: np.ndarray, n_adapters: int, device, base_tokens: bool = False):
        ids = np.asarray(adapter_ids, dtype=np.int32).reshape(-1)
        if ids.size and (ids.max() >= n_adapters or ids.min() < -1):
            bad = int(ids[(ids >= n_adapters) | (ids < -1)][0])
            raise ValueError(f"adapter id {bad} outside 0..{n_adapters - 1} (and -1 for padding)")
        self.n_adapters = n_adapters
        self.n_tokens = ids.size
        counts = np.bincount(ids[ids >= 0], minlength=n_adapters)
        self.counts = counts.tolist()
        self.present = [a for a in range(n_adapters) if counts[a] > 0]
        only = len(self.present) == 1 and (not base_tokens or counts[self.present[0]] == ids.size)
        self.single = self.present[0] if only else None
        order = np.argsort(ids, kind="stable")
        order = order[ids[order] >= 0]
        self.adapter_ids = torch.from_numpy(ids).to(device, non_blocking=True)
        self.perm = torch.from_numpy(order.astype(np.int64)).to(device, non_blocking=True)
        self.offsets = torch.from_numpy(np.cumsum(counts).astype(np.int32)).to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# Delta paths

def lora_delta_torch(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, routing: Routing,
                     scaling: float) -> torch.Tensor:
    """Reference LoRA delta. x [T, din]; A [N, din, r]; B [N, r, dout] -> [T, dout] (x.dtype),
    zero on tokens without an adapter. One matmul pair per adapter present in the batch."""
    if routing.single is not None:
        a = routing.single
        return (x @ A[a]) @ B[a] * scaling
    xs = x.index_select(0, routing.perm)
    # split, not slices: a slice's backward zero-fills a gradient of all the tokens per adapter (a
    # quarter of a 16-task CPU step, by arcfast.bench.profile_step); split's backward is one cat.
    chunks = xs.split([routing.counts[a] for a in routing.present])
    parts = [(c @ A[a]) @ B[a] for a, c in zip(routing.present, chunks)]
    d = torch.cat(parts) * scaling if parts else xs.new_zeros(0, B.shape[2])
    return x.new_zeros(x.shape[0], B.shape[2]).index_copy(0, routing.perm, d)


def lora_delta_grouped(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, routing: Routing,
                       scaling: float) -> torch.Tensor:
    """LoRA delta with ``torch._grouped_mm`` (CUDA, bf16): two launches whatever N."""
    if routing.single is not None:
        a = routing.single
        return (x @ A[a]) @ B[a] * scaling
    xs = x.index_select(0, routing.perm)
    h = torch._grouped_mm(xs, A, offs=routing.offsets)
    d = torch._grouped_mm(h, B, offs=routing.offsets) * scaling
    return x.new_zeros(x.shape[0], B.shape[2]).index_copy(0, routing.perm, d)


def grouped_available(device, dtype) -> bool:
    if not (torch.device(device).type == "cuda" and dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")):
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def triton_available() -> bool:
    """Whether the Triton LoRA kernels can run: Triton importable and the kernels present."""
    try:
        from .kernels import lora as _k
        from .kernels._common import HAS_TRITON

        return HAS_TRITON and hasattr(_k, "lora_delta")
    except Exception:
        return False


# ----------------------------------------------------------------------------------------------
# The adapters

class MultiLoRA(nn.Module):
    """N LoRA adapters for the ``cfg.targets`` projections of ``model``.

    ``weight``: fp32 [N, P] parameter (row a = adapter a). ``slots`` lists the targeted layers in
    model order. The model itself is not modified: pass ``lora.begin(...)`` to its forward.
    ``A(name)`` / ``B(name)`` are views of ``weight`` for reading and writing adapters; a forward
    uses the contiguous compute-dtype copies a :class:`LoRAStep` makes.
    """

    def __init__(self, model: nn.Module, cfg: LoRAConfig, n_adapters: int, device=None):
        super().__init__()
        from .model import Linear

        self.cfg = cfg
        self.n_adapters = n_adapters
        self.slots: dict[str, Slot] = {}
        off, r = 0, cfg.r
        for name, m in model.named_modules():
            if isinstance(m, Linear) and name.split(".")[-1] in cfg.targets:
                self.slots[name] = Slot(name, m.in_features, m.out_features, off, off + m.in_features * r)
                off += r * (m.in_features + m.out_features)
        if not self.slots:
            raise ValueError(f"no layer of the model matches LoRA targets {cfg.targets}")
        self.size = off
        device = device if device is not None else next(model.parameters()).device
        self.weight = nn.Parameter(torch.zeros(n_adapters, off, device=device, dtype=torch.float32))

    # -- views ----------------------------------------------------------------------------------
    def A(self, name: str, flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, din, r] view of layer ``name``'s A (of ``flat`` if given, e.g. a bf16 copy)."""
        s, r = self.slots[name], self.cfg.r
        w = self.weight if flat is None else flat
        return w[:, s.off_a:s.off_a + s.din * r].view(-1, s.din, r)

    def B(self, name: str, flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, r, dout] view of layer ``name``'s B."""
        s, r = self.slots[name], self.cfg.r
        w = self.weight if flat is None else flat
        return w[:, s.off_b:s.off_b + r * s.dout].view(-1, r, s.dout)

    # -- per-adapter state ----------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, ids: Sequence[int], seeds: Optional[Sequence[int]] = None) -> None:
        """Fresh adapters in slots ``ids``: A uniform(±1/sqrt(din)) drawn from ``seeds[i]`` (default:
        the slot id) on the CPU so any device gives the same numbers, B zero."""
        seeds = list(ids) if seeds is None else list(seeds)
        for i, seed in zip(ids, seeds):
            gen = torch.Generator().manual_seed(int(seed))
            row = torch.zeros(self.size, dtype=torch.float32)
            r = self.cfg.r
            for s in self.slots.values():
                bound = 1.0 / math.sqrt(s.din)
                # Drawn as PEFT's lora_A.weight [r, din], then stored transposed.
                a = torch.empty(r, s.din).uniform_(-bound, bound, generator=gen)
                row[s.off_a:s.off_a + s.din * r] = a.t().reshape(-1)
            self.weight[int(i)].copy_(row.to(self.weight.device))

    @torch.no_grad()
    def set(self, i: int, tensors: dict) -> None:
        """Load adapter ``i`` from ``{name: (A [din, r], B [r, dout])}``; layers not named get zeros
        (no change to the base). An adapter of another scaling: :func:`arcfast.adapters.load_adapter_for`."""
        row = torch.zeros(self.size, dtype=torch.float32, device=self.weight.device)
        r = self.cfg.r
        for name, (a, b) in tensors.items():
            if name not in self.slots:
                raise KeyError(f"adapter layer {name!r} is not a LoRA target of this model")
            s = self.slots[name]
            if tuple(a.shape) != (s.din, r) or tuple(b.shape) != (r, s.dout):
                raise ValueError(f"adapter layer {name}: A {tuple(a.shape)} / B {tuple(b.shape)}, "
                                 f"expected ({s.din}, {r}) / ({r}, {s.dout})")
            row[s.off_a:s.off_a + s.din * r] = a.reshape(-1).float()
            row[s.off_b:s.off_b + r * s.dout] = b.reshape(-1).float()
        self.weight[int(i)].copy_(row)

    @torch.no_grad()
    def get(self, i: int) -> dict:
        """Adapter ``i`` as ``{name: (A [din, r], B [r, dout])}`` fp32 copies."""
        return {n: (self.A(n)[i].clone(), self.B(n)[i].clone()) for n in self.slots}

    # -- one forward ----------------------------------------------------------------------------
    def begin(self, adapter_ids: np.ndarray, dtype: torch.dtype, path: str = "auto",
              training: bool = True, base_tokens: bool = False) -> "LoRAStep":
        """The LoRA of one forward: ``adapter_ids`` int32 numpy [R, L] or [T] (-1: none).
        ``base_tokens``: the -1 tokens are real base-model tokens, not padding (see :class:`Routing`)."""
        routing = Routing(adapter_ids, self.n_adapters, self.weight.device, base_tokens)
        return LoRAStep(self, routing, dtype, path, training)


class _SlotViews(torch.autograd.Function):
    """Every layer's A and B of the flat [N, P] weight as contiguous ``dtype`` tensors, in one
    autograd node. Plain slicing would make the backward of each of the ~2 x 7 x layers slices
    allocate a zero [N, P] gradient; here the backward writes all slot gradients into one."""

    @staticmethod
    def forward(ctx, flat, spans, shapes, dtype):
        ctx.spans, ctx.shape = spans, flat.shape
        outs = []
        for (a, b), shape in zip(spans, shapes):
            out = torch.empty(shape, dtype=dtype, device=flat.device)
            outs.append(out.copy_(flat[:, a:b].view(shape)))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        out = torch.zeros(ctx.shape, dtype=torch.float32, device=grads[0].device if grads else None)
        for (a, b), g in zip(ctx.spans, grads):
            if g is not None:
                out[:, a:b].copy_(g.reshape(ctx.shape[0], b - a))
        return out, None, None, None


class LoRAStep:
    """Compute-dtype adapters and the routing of one forward; the model's ``Linear`` layers call
    :meth:`linear`. The dtype cast is differentiable, so gradients reach the fp32 ``weight``."""

    def __init__(self, lora: MultiLoRA, routing: Routing, dtype: torch.dtype, path: str, training: bool):
        if path not in PATHS:
            raise ValueError(f"LoRA path must be one of {PATHS}, not {path!r}")
        dev = lora.weight.device
        if path == "auto":
            path = "triton" if (dev.type == "cuda" and triton_available()) else \
                   "grouped" if grouped_available(dev, dtype) else "torch"
        self.path = path
        self.lora, self.routing, self.training = lora, routing, training
        self.scaling = lora.cfg.scaling
        self.dropout = lora.cfg.dropout if training else 0.0
        r, N = lora.cfg.r, lora.n_adapters
        spans, shapes = [], []
        for s in lora.slots.values():
            spans += [(s.off_a, s.off_a + s.din * r), (s.off_b, s.off_b + r * s.dout)]
            shapes += [(N, s.din, r), (N, r, s.dout)]
        views = _SlotViews.apply(lora.weight, spans, shapes, dtype)
        self.ab = {name: (views[2 * k], views[2 * k + 1]) for k, name in enumerate(lora.slots)}
        self.segments = None
        if path == "triton":
            from .kernels.lora import lora_segments

            self.segments = lora_segments(routing.adapter_ids, N)

    def __contains__(self, name: str) -> bool:
        return name in self.ab

    def linear(self, name: str, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """x [..., din] -> x W^T + b + per-token LoRA delta, [..., dout]."""
        A, B = self.ab[name]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.path == "triton" and self.dropout == 0.0:
            from .kernels.lora import lora_linear

            y = lora_linear(x2, W, b, A, B, self.segments, self.scaling)
            return y.view(*lead, W.shape[0])
        xin = F.dropout(x2, self.dropout, True) if self.dropout > 0 else x2
        if self.path == "grouped":
            delta = lora_delta_grouped(xin, A, B, self.routing, self.scaling)
        elif self.path == "triton":
            from .kernels.lora import lora_delta

            delta = lora_delta(xin, A, B, self.segments, self.scaling)
        else:
            delta = lora_delta_torch(xin, A, B, self.routing, self.scaling)
        y = F.linear(x2, W, b) + delta
        return y.view(*lead, W.shape[0])
