"""Decode-time LoRA for :class:`arcfast.infer.generate.Generator`: the LoRA of one decode step of many
rows, each row with its own adapter, without host syncs or data-dependent shapes (so a step can
be captured as a CUDA graph).

Decode-time LoRA is graph-safe (no host sync, no data-dependent shapes): every row has an adapter
slot (the base model is an extra all-zero slot), and a step runs in one of these modes:

- ``merged``:  one adapter (or none) for every row, the default then: no delta at all, the step
               reads copies of the projections with that adapter merged in, q/k/v and gate/up
               fused (:class:`_MergedLoRA`);
- ``single``:  one adapter for every row, ``merge_single=False``: ``(x A[a]) B[a]`` on each of the
               model's projections (:class:`_RowLoRA`);
- ``grouped``: several adapters, ``torch._grouped_mm`` over rows sorted by adapter (the default on
               CUDA bf16 sm90+; ``lora_mode="grouped"`` also runs it on the CPU);
- ``segments``: several adapters on a CUDA GPU without grouped GEMMs (a T4, an L4, an A100: sm < 90),
               ``lora_mode="segments"`` anywhere: the trainer's Triton kernels
               (:func:`arcfast.kernels.lora.lora_linear`), rows grouped by adapter once per routing,
               the base GEMM with each row's expand in its epilogue; each adapter read once;
- ``gather``:  several adapters elsewhere (the CPU): each row's A and B gathered, then batched matmuls.

With several adapters the step is fused (:class:`_FusedRowLoRA`, ``fuse_lora=True``, the default):
the base q/k/v and gate/up weights are concatenated as in ``merged``, and so are the adapters (per
slot, the A side by side and the B on a block diagonal with the LoRA scaling folded in), so each
layer runs four projections, each one base GEMM and one delta added into its output.
``fuse_lora=False`` keeps the seven projections with a delta each (:class:`_RowLoRA`). Aten ops
called by one decode step (torch.profiler on the CPU, counted as ``_ops_per_step`` in
tests/test_generate.py does: ops that may return a view, such as ``view``, ``slice`` or ``to``,
not counted; the tiny preset with 24 layers, fp32, 8 rows, LoRA r=8 on all seven projections,
4 adapters and the base model mixed); on CUDA nearly each one is a kernel launch:

    mode                                         ops/step   projection + LoRA ops per layer
    merged                                          825        4
    none (the base model, merge_single=False)       897        7
    single (merge_single=False)                   1,569       35
    gather, fuse_lora=False                       1,905       49
    grouped, fuse_lora=False                      2,073       56 (7 of them empty_like)
    gather or grouped, fused (the default)        1,209       20

The other ~730 ops of a step (norms, RoPE, attention, cache writes, residual adds, the head and
the token choice) are now the larger part.

The fused buffers are allocated at the first mixed step and refilled in place at each call (the
model's and the LoRA's weights as they are then): a copy of the base q/k/v and gate/up weights,
and N+1 slots of adapters in the compute dtype, A as large as the LoRA's, B of q/k/v 3x and B of
gate/up 2x as large (the zero blocks off the diagonal, which the grouped GEMMs also read). For the
Qwen2.5-0.5B architecture, r=32, 32 adapters, bf16: 0.47 GB of base copies and 1.77 GB of
adapters (0.52 GB of A, 1.25 GB of B), where the unfused path's copy is 1.16 GB (allocated only
when a step reads it); a grouped step with every adapter present reads ~0.6 GB more of B than
unfused. The gather mode copies each row's A and B: fused, 215 MB per layer at 96 rows of that
model against 141 MB unfused, so where grouped GEMMs are missing on a GPU the fused gather trades
launches for memory traffic.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..model.decoder import FusedAddNormStep


class _RowLoRA:
    """The LoRA of one decode step of B rows (what the model's ``Linear`` layers call into).

    Reads the engine's static buffers only: ``flat`` [N+1, P] (adapters in the compute dtype; row N
    all zero = the base model), ``row_adapter`` int64 [cap] (slot of each row), ``perm`` int64
    [cap] (rows sorted by slot), ``offs`` int32 [N+1] (group ends in ``perm`` order), ``single``
    [1, P] (a copy of the one adapter serving every row, so the step gathers nothing)."""

    def __init__(self, engine: "Generator", B: int, mode: str):
        self.e, self.B, self.mode = engine, B, mode
        self.lora = engine.lora
        self.scaling = engine.lora.cfg.scaling

    def __contains__(self, name: str) -> bool:
        return name in self.lora.slots

    def linear(self, name: str, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        e, B = self.e, self.B
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        A, Bm = self.lora.A(name, e.flat), self.lora.B(name, e.flat)  # [N+1, din, r], [N+1, r, dout]
        y = F.linear(x2, W, b)
        if self.mode == "single":
            d = (x2 @ self.lora.A(name, e.single)[0]) @ self.lora.B(name, e.single)[0]
        elif self.mode == "grouped":
            perm = e.perm[:B]
            h = torch._grouped_mm(x2.index_select(0, perm), A, offs=e.offs)
            d = torch.empty_like(y).index_copy_(0, perm, torch._grouped_mm(h, Bm, offs=e.offs))
        else:
            ids = e.row_adapter[:B]
            h = torch.bmm(x2[:, None, :], A.index_select(0, ids))
            d = torch.bmm(h, Bm.index_select(0, ids))[:, 0]
        y = y + d * self.scaling
        return y.view(*lead, W.shape[0])


def _split_qkv(attn, y: torch.Tensor, cos, sin):
    """q [R,L,H,D], k and v [R,L,Hkv,D] of a fused q/k/v projection ``y`` [R, L, dq+2dk], normed
    and rotated as :meth:`arcfast.model.decoder.Attention.qkv` does."""
    R, L, _ = y.shape
    dq, dk = attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim
    q, k, v = y.split((dq, dk, dk), dim=-1)
    q = q.view(R, L, attn.n_heads, attn.head_dim)
    k = k.view(R, L, attn.n_kv_heads, attn.head_dim)
    v = v.view(R, L, attn.n_kv_heads, attn.head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = attn.ops.rope(q, k, cos, sin)
    return q, k, v


class _MergedLoRA(FusedAddNormStep):
    """The decode step when every row uses one adapter (or none): that adapter merged into copies
    of the projections (``W + scaling * (A B)^T``, filled by :meth:`Generator._merge`), with q/k/v
    fused into one matrix and gate/up into another. The step then runs the base model's kernels
    only, and fewer of them (see the module docstring for the counts)."""

    def __init__(self, engine: "Generator"):
        self.w = engine.merged    # per layer: {"qkv", "qkv_bias", "o", "gate_up", "down"}

    def qkv(self, li: int, attn, h: torch.Tensor, cos, sin):
        w = self.w[li]
        return _split_qkv(attn, F.linear(h, w["qkv"], w["qkv_bias"]), cos, sin)

    def o(self, li: int, attn, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w[li]["o"])

    def mlp(self, li: int, blk, h: torch.Tensor) -> torch.Tensor:
        w = self.w[li]
        gate, up = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
        return F.linear(blk.mlp.ops.swiglu(gate, up), w["down"])


def _fused_parts(blk) -> dict:
    """The projections of a block as the fused steps run them: kind -> the Linear layers whose
    outputs it concatenates (all of one kind read the same input)."""
    a, m = blk.self_attn, blk.mlp
    return {"qkv": (a.q_proj, a.k_proj, a.v_proj), "o": (a.o_proj,),
            "gate_up": (m.gate_proj, m.up_proj), "down": (m.down_proj,)}


class _FusedRowLoRA(FusedAddNormStep):
    """The decode step when rows mix adapters (modes ``grouped`` and ``gather``, ``fuse_lora=True``):
    four projections per layer instead of seven, each one base GEMM plus one LoRA delta.

    Reads the engine's static buffers (filled in place by :meth:`Generator._fill_fused`):
    ``fused_w[li]`` the base ``qkv`` [dq+2dk, d] (+ ``qkv_bias``) and ``gate_up`` [2I, d] (o and
    down use the model's own weights); per kind (``qkv``, ``o``, ``gate_up``, ``down``)
    ``fused_a[kind]`` [layers, N+1, din, k*r] (the k parts' A side by side) and ``fused_b[kind]``
    [layers, N+1, k*r, dout] (their B on the block diagonal, times the LoRA scaling; slot N, the
    base model, and layers the LoRA does not target are zero); and the routing of
    :meth:`Generator._route` (``perm``, ``offs``, ``row_adapter``). Per projection, x [B, 1, din]:

    - grouped: ``y = x W^T + b``; ``d = grouped_mm(grouped_mm(x[perm], A, offs), B, offs)``;
      ``y.index_add_(0, perm, d)``: five kernels;
    - gather:  ``y = baddbmm(x W^T + b, x A[ids], B[ids])`` with each row's A and B gathered:
      five kernels.
    """

    def __init__(self, engine: "Generator", B: int, mode: str):
        self.e, self.B, self.mode = engine, B, mode

    def _linear(self, kind: str, li: int, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]):
        e, B = self.e, self.B
        x2 = x.reshape(B, x.shape[-1])
        A, Bm = e.fused_a[kind][li], e.fused_b[kind][li]
        if self.mode == "segments":
            from ..kernels.lora import LoraSegments, lora_linear

            # The trainer's Triton kernels: the shrink over rows grouped by adapter, then the base
            # GEMM with each row's expand in its epilogue (scaling already in B).
            seg = LoraSegments(e.seg_ids[:B], e.seg_order[:B], e.seg_offsets, e.n_slots)
            return lora_linear(x2, W, b, A, Bm, seg, 1.0).view(*x.shape[:-1], W.shape[0])
        y = F.linear(x2, W, b)
        if self.mode == "grouped":
            perm = e.perm[:B]
            h = torch._grouped_mm(x2.index_select(0, perm), A, offs=e.offs)
            # perm is a permutation: each row of y gets exactly one add, so the atomics of CUDA's
            # index_add_ cannot reorder sums.
            y.index_add_(0, perm, torch._grouped_mm(h, Bm, offs=e.offs))
        else:
            ids = e.row_adapter[:B]
            h = torch.bmm(x2[:, None, :], A.index_select(0, ids))
            y = torch.baddbmm(y[:, None, :], h, Bm.index_select(0, ids))[:, 0]
        return y.view(*x.shape[:-1], W.shape[0])

    def qkv(self, li: int, attn, h: torch.Tensor, cos, sin):
        w = self.e.fused_w[li]
        return _split_qkv(attn, self._linear("qkv", li, h, w["qkv"], w["qkv_bias"]), cos, sin)

    def o(self, li: int, attn, x: torch.Tensor) -> torch.Tensor:
        return self._linear("o", li, x, attn.o_proj.weight, attn.o_proj.bias)

    def mlp(self, li: int, blk, h: torch.Tensor) -> torch.Tensor:
        gate, up = self._linear("gate_up", li, h, self.e.fused_w[li]["gate_up"], None).chunk(2, dim=-1)
        down = blk.mlp.down_proj
        return self._linear("down", li, blk.mlp.ops.swiglu(gate, up), down.weight, down.bias)


def _triton_lora() -> bool:
    from .multi import triton_available

    return triton_available()


def _grouped_mm_ok(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cuda" and dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(device) >= (9, 0))
