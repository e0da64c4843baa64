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

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..model.decoder import FusedAddNormStep
from ..runtime import fast_path
from .routing import grouped_available, triton_available

log = logging.getLogger("arcfast.infer.generate")   # its warnings are the generator's


class _RowLoRA:
    """The LoRA of one decode step of B rows (what the model's ``Linear`` layers call into).

    Reads the :class:`DecodeAdapters`' static buffers only: ``flat`` [N+1, P] (adapters in the compute dtype; row N
    all zero = the base model), ``row_adapter`` int64 [cap] (slot of each row), ``perm`` int64
    [cap] (rows sorted by slot), ``offs`` int32 [N+1] (group ends in ``perm`` order), ``single``
    [1, P] (a copy of the one adapter serving every row, so the step gathers nothing)."""

    def __init__(self, engine: "DecodeAdapters", B: int, mode: str):
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

    def __init__(self, engine: "DecodeAdapters"):
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


def fused_parts(blk) -> dict:
    """The projections of a block as the fused steps run them: kind -> the Linear layers whose
    outputs it concatenates (all of one kind read the same input)."""
    a, m = blk.self_attn, blk.mlp
    return {"qkv": (a.q_proj, a.k_proj, a.v_proj), "o": (a.o_proj,),
            "gate_up": (m.gate_proj, m.up_proj), "down": (m.down_proj,)}


class _FusedRowLoRA(FusedAddNormStep):
    """The decode step when rows mix adapters (modes ``grouped`` and ``gather``, ``fuse_lora=True``):
    four projections per layer instead of seven, each one base GEMM plus one LoRA delta.

    Reads the :class:`DecodeAdapters`' static buffers (filled in place by :meth:`DecodeAdapters._fill_fused`):
    ``fused_w[li]`` the base ``qkv`` [dq+2dk, d] (+ ``qkv_bias``) and ``gate_up`` [2I, d] (o and
    down use the model's own weights); per kind (``qkv``, ``o``, ``gate_up``, ``down``)
    ``fused_a[kind]`` [layers, N+1, din, k*r] (the k parts' A side by side) and ``fused_b[kind]``
    [layers, N+1, k*r, dout] (their B on the block diagonal, times the LoRA scaling; slot N, the
    base model, and layers the LoRA does not target are zero); and the routing of
    :meth:`DecodeAdapters.route` (``perm``, ``offs``, ``row_adapter``). Per projection, x [B, 1, din]:

    - grouped: ``y = x W^T + b``; ``d = grouped_mm(grouped_mm(x[perm], A, offs), B, offs)``;
      ``y.index_add_(0, perm, d)``: five kernels;
    - gather:  ``y = baddbmm(x W^T + b, x A[ids], B[ids])`` with each row's A and B gathered:
      five kernels.
    """

    def __init__(self, engine: "DecodeAdapters", B: int, mode: str):
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


class DecodeAdapters:
    """The adapters of a decode batch: which slot each row reads, and the buffers each mode reads.

    One object owns the token->adapter routing at decode time (the generator, search and scoring
    call it; nothing else reads its buffers): ``route`` sets the rows' slots and picks the mode of
    the next steps, ``step`` gives the layer strategy the model's forward runs with, ``token_step``
    the adapters' own embedding / head rows. Slot ``base`` (= the number of adapters) is the base
    model. Every buffer is static and filled in place, so captured CUDA graphs keep reading it.

    lora_mode:    "auto" (grouped where available, else gather; segments on a CUDA GPU without
                  grouped GEMMs), "grouped", "gather", "segments", or "single" to refuse mixing.
    merge_single: one adapter for every row: decode it merged into copies of the projections.
    fuse_lora:    mixed adapters: q/k/v and gate/up fused, one delta per fused projection.
    """

    def __init__(self, model, lora=None, lora_mode: str = "auto", merge_single: bool = True,
                 fuse_lora: bool = True):
        self.model, self.lora = model, lora
        self.device, self.dtype = model.device, model.dtype
        self.cuda = self.device.type == "cuda"
        self.n_layers = model.config.n_layers
        self.lora_mode = lora_mode
        self.merge_single = bool(merge_single)
        self.merged: list = []          # per layer: fused merged weights (allocated on first use)
        self._merged_slot = None        # the adapter slot the merged weights hold now
        self.fuse_lora = bool(fuse_lora)
        self.fused_w: list = []         # per layer: base qkv/gate_up fused (see _FusedRowLoRA)
        self.fused_a: dict = {}         # kind -> [layers, N+1, din, k*r]
        self.fused_b: dict = {}         # kind -> [layers, N+1, k*r, dout], scaled, block-diagonal
        self._fresh: set = set()        # adapter buffers already filled in this call
        self._flat = None
        self.tok_tables: dict = {}      # adapters' own embedding / head rows: module -> [N+1, V, d]
        if lora is not None:
            n, p = lora.weight.shape
            self.n_slots = n + 1  # slot n: the base model (all-zero adapter)
            with torch.inference_mode():
                self.offs = torch.zeros(n + 1, device=self.device, dtype=torch.int32)
                self.single = torch.zeros(1, p, device=self.device, dtype=self.dtype)
                # Slot n holds the model's own rows, so every decode row reads its slot's table.
                for t in lora.table_slots():
                    self.tok_tables[t.module] = torch.zeros(n + 1, t.n_rows, t.dim, device=self.device,
                                                            dtype=self.dtype)
        else:
            self.n_slots = 0
        if not fast_path("fused_decode"):
            self.plain()

    def plain(self) -> None:
        """Decode with the model's own layers and per-projection deltas from now on (the fused and
        merged weight copies are fast paths: see :mod:`arcfast.runtime`)."""
        self.merge_single = self.fuse_lora = False
        if self.lora_mode == "segments":
            self.lora_mode = "auto"

    @property
    def base(self) -> int:
        """The slot of the base model (no adapter)."""
        return self.n_slots - 1

    def allocate(self, cap: int) -> None:
        """The routing buffers of ``cap`` decode rows (every row on the base slot)."""
        i64 = dict(device=self.device, dtype=torch.int64)
        i32 = dict(device=self.device, dtype=torch.int32)
        self.row_adapter = torch.full((cap,), max(self.base, 0), **i64)
        self.perm = torch.arange(cap, **i64)
        self.seg_ids = torch.zeros(cap, **i32)        # mode "segments": arcfast.kernels.lora's
        self.seg_order = torch.arange(cap, **i32)     # LoraSegments of the rows, in static buffers
        self.seg_offsets = torch.zeros(max(self.n_slots, 1) + 2, **i32)

    def begin_call(self, adapter_ids: np.ndarray) -> np.ndarray:
        """Start a generate call: the adapters may have changed since the last one, so every
        buffer is refilled when first read. Returns each prompt's slot (-1, no adapter: ``base``)."""
        if self.lora is None:
            return adapter_ids
        self._fresh = set()
        self._merged_slot = None
        if self.tok_tables:
            self._fill_tokens()
        return np.where(adapter_ids >= 0, adapter_ids, self.base)

    def step(self, mode: str, B: int):
        """How the model's forward runs its projections for a decode step of rows 0..B-1 in ``mode``
        (set by :meth:`route`)."""
        if mode == "merged":
            return _MergedLoRA(self)
        if mode in ("grouped", "gather", "segments") and self.fuse_lora:
            return _FusedRowLoRA(self, B, mode)
        return FusedAddNormStep(None if mode == "none" else _RowLoRA(self, B, mode))

    def token_step(self, B: int):
        """The adapters' own embedding / head rows of a decode step of rows 0..B-1 (static buffers:
        captured graphs read them), or None where the adapters train none."""
        if not self.tok_tables:
            return None
        return self.lora.token_step(self.tok_tables, self.row_adapter[:B])

    @property
    def flat(self) -> torch.Tensor:
        """[N+1, P] the adapters in the compute dtype (row N all zero: the base model), read by the
        unfused low-rank steps; allocated on first use (the fused step reads its own buffers)."""
        if self._flat is None:
            with torch.inference_mode():
                self._flat = torch.zeros(self.n_slots, self.lora.weight.shape[1], device=self.device,
                                         dtype=self.dtype)
        return self._flat

    def route(self, n: int, B: int, slots: np.ndarray) -> str:
        """Set the decode LoRA routing for rows 0..B-1 (``slots`` int64 [n] of the live rows;
        padding rows get the base slot) and return the mode to run."""
        if self.lora is None:
            return "none"
        base = self.base
        ids = np.full(B, base, dtype=np.int64)
        ids[:n] = slots
        present = np.unique(ids[:n]) if n else np.array([base])
        self._check_room(mixed=len(present) > 1)
        if len(present) == 1 and present[0] == base and not self.merge_single:
            mode = "none"  # base model only: no LoRA at all
        elif len(present) == 1 and self.lora_mode in ("auto", "single"):
            ids[n:] = present[0]  # padding rows follow the live adapter: no second group
            if self.merge_single:
                mode = "merged"
                self._merge(int(present[0]))   # the base slot merges nothing
            else:
                mode = "single"
                self._refresh("flat")
                self.single.copy_(self.flat[int(present[0])][None])
        elif self.lora_mode == "single":
            raise ValueError("lora_mode='single' but the batch mixes adapters "
                             f"{sorted(int(a) for a in present)}")
        elif self.lora_mode == "segments" and fast_path("triton") or (
                self.lora_mode == "auto" and self.fuse_lora and self.cuda and fast_path("triton")
                and not grouped_available(self.device, self.dtype) and triton_available()):
            mode = "segments"
            order = np.argsort(ids, kind="stable")
            counts = np.bincount(ids, minlength=self.n_slots)
            self.seg_ids[:B].copy_(torch.from_numpy(ids.astype(np.int32)))
            self.seg_order[:B].copy_(torch.from_numpy(order.astype(np.int32)))
            self.seg_offsets.copy_(torch.from_numpy(np.concatenate([[0], np.cumsum(counts), [B]]).astype(np.int32)))
        elif fast_path("grouped_gemm") and (self.lora_mode == "grouped" or (
                self.lora_mode == "auto" and grouped_available(self.device, self.dtype))):
            mode = "grouped"
            order = np.argsort(ids, kind="stable")
            counts = np.bincount(ids, minlength=self.n_slots)
            self.perm[:B].copy_(torch.from_numpy(order))
            self.offs.copy_(torch.from_numpy(np.cumsum(counts).astype(np.int32)))
        else:
            mode = "gather"
        if mode in ("grouped", "gather", "segments"):
            self._refresh("fused" if self.fuse_lora else "flat")
        self.row_adapter[:B].copy_(torch.from_numpy(ids))
        return mode

    @torch.inference_mode()
    def _refresh(self, what: str) -> None:
        """Copy the LoRA's current weights into the ``"flat"`` or ``"fused"`` buffers, once per call
        (only the buffers the call's modes read), in place: captured graphs read them."""
        if what in self._fresh:
            return
        if what == "flat":
            self.flat[:self.lora.weight.shape[0]].copy_(self.lora.weight.detach())
        else:
            self._fill_fused()
        self._fresh.add(what)

    @torch.inference_mode()
    def _fill_tokens(self) -> None:
        """Copy the adapters' token rows into the decode tables, the model's own into the base slot."""
        lora, n = self.lora, self.lora.weight.shape[0]
        for module, table in self.tok_tables.items():
            table[:n].copy_(lora.token_table(module).detach())
            table[n].copy_(lora.token_base[module])

    def _fill_fused(self) -> None:
        """Fill the buffers of :class:`_FusedRowLoRA` from the model and the LoRA (allocated at the
        first call). Also the base weights are copied at every call, as the merged ones are, so a
        model changed between two calls is decoded as it is now."""
        lora, layers = self.lora, self.model.model.layers
        n, r, scaling = lora.weight.shape[0], lora.cfg.r, lora.cfg.scaling
        kw = dict(device=self.device, dtype=self.dtype)
        if not self.fused_a:
            for kind, mods in fused_parts(layers[0]).items():
                din, dout = mods[0].in_features, sum(m.out_features for m in mods)
                # Zeros: the off-diagonal blocks, the base slot and untargeted layers stay zero.
                self.fused_a[kind] = torch.zeros(self.n_layers, self.n_slots, din, len(mods) * r, **kw)
                self.fused_b[kind] = torch.zeros(self.n_layers, self.n_slots, len(mods) * r, dout, **kw)
            for blk in layers:
                a, m = blk.self_attn, blk.mlp
                qkv = (a.q_proj, a.k_proj, a.v_proj)
                self.fused_w.append({
                    "qkv": torch.empty(sum(p.out_features for p in qkv), a.q_proj.in_features, **kw),
                    "qkv_bias": None if a.q_proj.bias is None else torch.empty(sum(p.out_features for p in qkv), **kw),
                    "gate_up": torch.empty(2 * m.gate_proj.out_features, m.gate_proj.in_features, **kw)})
        for li, blk in enumerate(layers):
            parts, w = fused_parts(blk), self.fused_w[li]
            torch.cat([p.weight for p in parts["qkv"]], out=w["qkv"])
            if w["qkv_bias"] is not None:
                torch.cat([p.bias for p in parts["qkv"]], out=w["qkv_bias"])
            torch.cat([p.weight for p in parts["gate_up"]], out=w["gate_up"])
            for kind, mods in parts.items():
                A, Bm = self.fused_a[kind][li], self.fused_b[kind][li]
                col = 0
                for j, mod in enumerate(mods):
                    if mod.name in lora.slots:
                        A[:n, :, j * r:(j + 1) * r].copy_(lora.A(mod.name).detach())
                        # Scaled in fp32, rounded to the compute dtype once.
                        Bm[:n, j * r:(j + 1) * r, col:col + mod.out_features].copy_(
                            lora.B(mod.name).detach() * scaling)
                    col += mod.out_features

    def _check_room(self, mixed: bool) -> None:
        """Before the first merged (one adapter) or fused (mixed adapters) step allocates its weight
        copies, make sure they fit: on CUDA in half the memory left after the KV cache. Where they
        do not (a large model on a small GPU), that path is switched off for good, with a warning,
        and the model's own layers run instead."""
        if not self.cuda:
            return
        itemsize = torch.finfo(self.dtype).bits // 8
        layers = self.model.model.layers
        if not mixed and self.merge_single and not self.merged:
            need = sum(m.weight.numel() for blk in layers for mods in fused_parts(blk).values() for m in mods)
            self.merge_single = self._room_for(need * itemsize, "merged one-adapter decoding (merge_single)")
        if mixed and self.fuse_lora and not self.fused_a:
            r, n = self.lora.cfg.r, self.n_slots
            need = 0
            for kind, mods in fused_parts(layers[0]).items():
                din, dout = mods[0].in_features, sum(m.out_features for m in mods)
                need += n * len(mods) * r * (din + dout) * len(layers)
                if len(mods) > 1:
                    need += din * dout * len(layers)   # the concatenated base weights
            self.fuse_lora = self._room_for(need * itemsize, "fused mixed-adapter decoding (fuse_lora)")
            if not self.fuse_lora and self.lora_mode == "segments":
                self.lora_mode = "auto"

    def _room_for(self, nbytes: int, what: str) -> bool:
        free, _ = torch.cuda.mem_get_info(self.device)
        if nbytes <= 0.5 * free:
            return True
        log.warning("%s needs %.1f GiB of weight copies, more than half the %.1f GiB free: off",
                    what, nbytes / 2 ** 30, free / 2 ** 30)
        return False

    def _merge(self, slot: int) -> None:
        """Fill the fused merged weights with adapter ``slot`` (the base slot: no adapter), in
        place: captured graphs read them."""
        if self._merged_slot == slot:
            return
        lora = self.lora
        s = lora.cfg.scaling
        adapter = slot < lora.weight.shape[0]

        def merged(mod) -> torch.Tensor:
            W = mod.weight
            if not adapter or mod.name not in lora.slots:
                return W
            delta = (lora.A(mod.name)[slot] @ lora.B(mod.name)[slot]).t().to(W.device)   # fp32 [dout, din]
            return torch.add(W.float(), delta, alpha=s).to(W.dtype)   # out of place: W.float() may be W

        for li, blk in enumerate(self.model.model.layers):
            a, mlp = blk.self_attn, blk.mlp
            parts = {"qkv": torch.cat([merged(a.q_proj), merged(a.k_proj), merged(a.v_proj)]),
                     "qkv_bias": None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
                     "o": merged(a.o_proj), "gate_up": torch.cat([merged(mlp.gate_proj), merged(mlp.up_proj)]),
                     "down": merged(mlp.down_proj)}
            if li >= len(self.merged):
                self.merged.append({k: None if v is None else v.clone() for k, v in parts.items()})
            else:
                for k, v in parts.items():
                    if v is not None:
                        self.merged[li][k].copy_(v)
        self._merged_slot = slot
