"""Packed attention: causal within a sample, never across samples.

A packed batch holds rows of ``L`` tokens, each several samples back to back (``sample_ids``; -1 on
padding). Every implementation here computes the same function:

    out[r, i] = softmax over { j <= i : sample_ids[r, j] == sample_ids[r, i] } of q_i . k_j / sqrt(D)

A padding position never reaches a real token and its output is finite (it attends to itself
only, or, under varlen, to the padding before it); it carries no loss, so its value is irrelevant.

Implementations (``impl``):
- ``"sdpa"``   : the reference: scaled_dot_product_attention with a dense block-diagonal causal mask
                 [R, 1, L, L] (memory grows with L^2; the CPU default).
- ``"flex"``   : FlexAttention with a BlockMask built from ``sample_ids`` (compiled on CUDA): skips
                 fully-masked blocks, so a row of 8 x 2k samples costs about a quarter of a 16k row.
- ``"varlen"`` : flash-attention's variable-length kernel over ``cu_seqlens`` (torch's own
                 ``torch.nn.attention.varlen`` or the ``flash_attn`` package), CUDA only.
- ``"loop"``   : one causal SDPA call per sample (segments from ``cu_seqlens``): costs the sum of
                 the samples' squared lengths instead of the rows', so the CPU default (a row of
                 2,048 holding 330-token samples trained 3.5x faster than the dense mask).

Measured on an H100 (torch 2.11, bf16, 4 rows x 2,048 tokens of 100-900-token samples, 14 heads,
2 kv heads, head dim 64, forward + backward + building the mask): varlen 1.50 ms, sdpa 1.57 ms,
flex 4.87 ms, loop 11.3 ms. FlexAttention is also compiled per row shape (``dynamic=False``), so a
stream of batches of varying shapes recompiles it: batch-1 training with flex ran at 0.22 samples/s
against 3.7 with varlen. Hence ``"auto"``: varlen on CUDA in bf16/fp16 when available, else sdpa on
CUDA (flash-attention's kernel takes no fp32), loop on the CPU (sdpa when no ``cu_seqlens``).

:class:`TreeAttention` packs prefix trees instead: one shared prompt per segment, then several
continuations that each see the prompt and themselves only (prefix-shared scoring, arcfast.infer.rescore).
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import fast_path, out_of_memory, switch_off

IMPLS = ("auto", "sdpa", "flex", "varlen", "loop")
_FAST = {"flex": "flex_attention", "varlen": "varlen_attention"}   # impl -> its switch in arcfast.runtime


# SDPA's enable_gqa (kv heads shared by groups of query heads, read in place) is torch >= 2.5.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on the [R, H, L, D] layout with grouped kv heads
    (k, v [R, Hkv, L, D], H a multiple of Hkv): ``enable_gqa`` where torch has it, else the kv
    heads repeated."""
    if q.shape[1] != k.shape[1]:
        if _SDPA_GQA:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over each whole row (one sample per row). q [R,L,H,D], k/v [R,L,Hkv,D]."""
    return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)


def packed_mask(sample_ids: torch.Tensor) -> torch.Tensor:
    """Dense attention mask bool [R, 1, L, L] (True = attend) from sample_ids int [R, L]."""
    L = sample_ids.shape[1]
    i = torch.arange(L, device=sample_ids.device)
    same = sample_ids[:, :, None] == sample_ids[:, None, :]
    real = (sample_ids >= 0)[:, :, None]
    causal = i[:, None] >= i[None, :]
    return ((same & real & causal) | (i[:, None] == i[None, :]))[:, None]


def _doc_causal_mask_mod(sample_ids: torch.Tensor):
    def mask_mod(b, h, q_idx, kv_idx):
        sq = sample_ids[b, q_idx]
        return ((sq == sample_ids[b, kv_idx]) & (q_idx >= kv_idx) & (sq >= 0)) | (q_idx == kv_idx)
    return mask_mod


@functools.lru_cache(maxsize=None)
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention  # torch >= 2.5 only

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


@functools.lru_cache(maxsize=None)
def _varlen_fn():
    """(function, style) for varlen attention, or None when neither torch nor flash_attn has one."""
    try:
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        return varlen_attn, ("window" if "window_size" in params else "is_causal"), "enable_gqa" in params
    except Exception:
        pass
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func, "flash_attn", True
    except Exception:
        return None


def varlen_available() -> bool:
    return torch.cuda.is_available() and _varlen_fn() is not None


def choose_impl(device, dtype: Optional[torch.dtype], have_cu_seqlens: bool = True) -> str:
    """What ``"auto"`` means on ``device`` for q/k/v of ``dtype`` (see the module docstring)."""
    if torch.device(device).type == "cuda":
        half = dtype in (torch.bfloat16, torch.float16)
        varlen = half and have_cu_seqlens and fast_path("varlen_attention") and _varlen_fn() is not None
        return "varlen" if varlen else "sdpa"
    return "loop" if have_cu_seqlens else "sdpa"


class PackedAttention:
    """Attention for one packed batch; built once per step and shared by every layer.

    sample_ids: int32/int64 [R, L] on the compute device (-1 on padding).
    cu_seqlens: int32 numpy [n_segments + 1] (``PackedBatch.cu_seqlens``, host side), needed by
    ``"varlen"`` and ``"loop"``; ``dtype``: of q/k/v, for ``"auto"``'s choice. Call with
    q [R, L, H, D], k and v [R, L, Hkv, D]; returns [R, L, H, D].
    """

    def __init__(self, sample_ids: torch.Tensor, impl: str = "auto", cu_seqlens: Optional[np.ndarray] = None,
                 compile: Optional[bool] = None, dtype: Optional[torch.dtype] = None):
        if impl not in IMPLS:
            raise ValueError(f"attention impl must be one of {IMPLS}, not {impl!r}")
        cuda = sample_ids.is_cuda
        if impl == "auto":
            impl = choose_impl(sample_ids.device, dtype, cu_seqlens is not None)
        elif impl in _FAST and not fast_path(_FAST[impl]):
            impl = "sdpa"   # switched off for the run (arcfast.runtime): the dense mask instead
        self.impl = impl
        self.sample_ids = sample_ids
        R, L = sample_ids.shape
        if impl in ("loop", "varlen") and cu_seqlens is None:
            raise ValueError(f"{impl} attention needs cu_seqlens")
        if impl == "loop":
            cu = np.asarray(cu_seqlens, dtype=np.int64)
            self.segments = [[] for _ in range(R)]
            for a, b in zip(cu[:-1], cu[1:]):
                r = int(a // L)
                if (b - 1) // L != r:
                    raise ValueError(f"cu_seqlens segment {a}..{b} crosses the end of row {r}")
                self.segments[r].append((int(a - r * L), int(b - r * L)))
        elif impl == "sdpa":
            self.mask = packed_mask(sample_ids)
        elif impl == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            self.compiled = cuda if compile is None else compile
            try:
                self.block_mask = create_block_mask(_doc_causal_mask_mod(sample_ids), R, None, L, L,
                                                    device=sample_ids.device, _compile=self.compiled)
            except Exception as e:
                if out_of_memory(e):
                    raise
                switch_off("flex_attention", e)
                self.impl, self.mask = "sdpa", packed_mask(sample_ids)
        else:
            fn = _varlen_fn()
            if fn is None or not cuda:
                raise RuntimeError("varlen attention needs CUDA and torch.nn.attention.varlen or flash_attn")
            self.max_seqlen = max_seqlen(cu_seqlens)
            self.cu_seqlens = torch.from_numpy(np.asarray(cu_seqlens, dtype=np.int32)).to(sample_ids.device)

    @classmethod
    def varlen_static(cls, sample_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> "PackedAttention":
        """Varlen attention reading ``cu_seqlens`` from a device tensor (int32 [S + 1]; trailing
        zero-length segments allowed) with a fixed ``max_seqlen``: nothing is read from the host,
        so a CUDA graph can replay it with new segment bounds written into the same tensor."""
        if _varlen_fn() is None or not sample_ids.is_cuda:
            raise RuntimeError("varlen attention needs CUDA and torch.nn.attention.varlen or flash_attn")
        self = cls.__new__(cls)
        self.impl, self.sample_ids = "varlen", sample_ids
        self.cu_seqlens, self.max_seqlen = cu_seqlens, int(max_seqlen)
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.impl == "sdpa":
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=self.mask).transpose(1, 2)
        if self.impl == "loop":
            return self._loop(q, k, v)
        try:
            return self._flex(q, k, v) if self.impl == "flex" else self._varlen(q, k, v)
        except Exception as e:
            # A fast kernel that does not run here: off for the run, this and every later call on
            # the dense mask (the same function).
            if out_of_memory(e):
                raise
            switch_off(_FAST[self.impl], e)
            self.impl, self.mask = "sdpa", packed_mask(self.sample_ids)
            return self(q, k, v)

    def _flex(self, q, k, v):
        o = _flex_fn(self.compiled)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                    block_mask=self.block_mask, enable_gqa=q.shape[2] != k.shape[2])
        return o.transpose(1, 2)

    def _loop(self, q, k, v):
        rows = []
        for r, segs in enumerate(self.segments):
            parts = []
            for a, b in segs:
                o = sdpa(q[r:r + 1, a:b].transpose(1, 2), k[r:r + 1, a:b].transpose(1, 2),
                         v[r:r + 1, a:b].transpose(1, 2), is_causal=True)
                parts.append(o.transpose(1, 2))
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def _varlen(self, q, k, v):
        R, L, H, D = q.shape
        fn, style, has_gqa = _varlen_fn()
        qf, kf, vf = q.reshape(R * L, H, D), k.reshape(R * L, k.shape[2], D), v.reshape(R * L, v.shape[2], D)
        cu, m = self.cu_seqlens, self.max_seqlen
        if style == "flash_attn":
            o = fn(qf, kf, vf, cu, cu, m, m, causal=True)
        else:
            if H != kf.shape[1] and not has_gqa:
                rep = H // kf.shape[1]
                kf, vf = kf.repeat_interleave(rep, dim=1), vf.repeat_interleave(rep, dim=1)
            kw = {"enable_gqa": True} if (has_gqa and H != kf.shape[1]) else {}
            if style == "window":
                o = fn(qf, kf, vf, cu, cu, m, m, window_size=(-1, 0), **kw)
            else:
                o = fn(qf, kf, vf, cu, cu, m, m, is_causal=True, **kw)
        return o.reshape(R, L, H, D)


def max_seqlen(cu_seqlens: np.ndarray) -> int:
    """Longest segment of a cu_seqlens array (host side, so no device sync)."""
    return int(np.diff(np.asarray(cu_seqlens)).max()) if len(cu_seqlens) > 1 else 0


# ----------------------------------------------------------------------------------------------
# Prefix trees: one shared prompt, several continuations

TREE_IMPLS = ("auto", "sdpa", "flex", "loop")


def tree_mask(segment_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """Dense attention mask bool [R, 1, L, L] (True = attend) of :class:`TreeAttention` from
    segment_ids and branch_ids int [R, L] (same device)."""
    L = segment_ids.shape[1]
    i = torch.arange(L, device=segment_ids.device)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids >= 0)[:, :, None]
    causal = i[:, None] >= i[None, :]
    bk = branch_ids[:, None, :]
    seen = (bk == 0) | (bk == branch_ids[:, :, None])
    return ((same & real & causal & seen) | (i[:, None] == i[None, :]))[:, None]


def _tree_mask_mod(segment_ids: torch.Tensor, branch_ids: torch.Tensor):
    def mask_mod(b, h, q_idx, kv_idx):
        sq, bk = segment_ids[b, q_idx], branch_ids[b, kv_idx]
        seen = (bk == 0) | (bk == branch_ids[b, q_idx])
        return ((sq == segment_ids[b, kv_idx]) & (q_idx >= kv_idx) & (sq >= 0) & seen) | (q_idx == kv_idx)
    return mask_mod


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception:
        return False
    return True


def choose_tree_impl(device) -> str:
    """What :class:`TreeAttention`'s ``"auto"`` means on ``device``: flex on CUDA when torch has
    it, else the dense sdpa mask; loop on the CPU."""
    if torch.device(device).type == "cuda":
        return "flex" if flex_available() and fast_path("flex_attention") else "sdpa"
    return "loop"


class TreeAttention:
    """Attention for packed rows of prefix trees; built once per forward and shared by every layer.

    A row holds segments (``segment_ids``, -1 on padding); inside a segment, branch 0 is the trunk
    (a shared prompt) and branches 1, 2, ... its continuations (``branch_ids``). Every
    implementation computes

        out[r, i] = softmax over { j <= i : seg[r, j] == seg[r, i], branch[r, j] in (0, branch[r, i]) }
                    of q_i . k_j / sqrt(D)

    so a trunk token sees the trunk causally and a continuation's token sees the trunk before it
    and its own earlier tokens, never another continuation. With one branch per segment, laid out
    after its trunk, this is :class:`PackedAttention`'s causal-within-sample function. A padding
    position attends to itself only (``"sdpa"``, ``"flex"``) or is zero (``"loop"``).

    segment_ids, branch_ids: int numpy [R, L] on the host (the layout is planned there, and
    ``"loop"`` reads its segments from them without a device sync); ``device``: where q/k/v live.
    Impls: ``"sdpa"`` a dense [R, 1, L, L] mask (the reference); ``"flex"`` FlexAttention with a
    BlockMask from the same rule (compiled on CUDA); ``"loop"`` per segment, the leading trunk by
    causal SDPA and the rest of the segment's queries against the segment's keys under a dense
    mask, so a segment of P trunk and C continuation tokens costs P^2/2 + C (P + C) instead of a
    whole row's L^2 (each segment must be contiguous in its row). ``"auto"``: flex on CUDA when
    torch has it, else sdpa; loop on the CPU. Call with q [R, L, H, D], k and v [R, L, Hkv, D];
    returns [R, L, H, D].
    """

    def __init__(self, segment_ids: np.ndarray, branch_ids: np.ndarray, impl: str = "auto",
                 device="cpu", compile: Optional[bool] = None):
        if impl not in TREE_IMPLS:
            raise ValueError(f"tree attention impl must be one of {TREE_IMPLS}, not {impl!r}")
        seg = np.asarray(segment_ids)
        br = np.asarray(branch_ids)
        if seg.ndim != 2 or seg.shape != br.shape:
            raise ValueError(f"segment_ids {seg.shape} and branch_ids {br.shape} must be the same [R, L] shape")
        device = torch.device(device)
        cuda = device.type == "cuda"
        if impl == "auto":
            impl = choose_tree_impl(device)
        elif impl == "flex" and not fast_path("flex_attention"):
            impl = "sdpa"
        self.impl = impl
        R, L = seg.shape
        if impl == "loop":
            self.segments = [self._plan_row(r, seg[r], br[r], device) for r in range(R)]
            self._additive = {}
            return
        seg_t = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int32)).to(device)
        br_t = torch.from_numpy(np.ascontiguousarray(br, dtype=np.int32)).to(device)
        self._ids = (seg_t, br_t)
        if impl == "sdpa":
            self.mask = tree_mask(seg_t, br_t)
        else:
            from torch.nn.attention.flex_attention import create_block_mask

            self.compiled = cuda if compile is None else compile
            try:
                self.block_mask = create_block_mask(_tree_mask_mod(seg_t, br_t), R, None, L, L,
                                                    device=device, _compile=self.compiled)
            except Exception as e:
                if out_of_memory(e):
                    raise
                switch_off("flex_attention", e)
                self.impl, self.mask = "sdpa", tree_mask(seg_t, br_t)

    @staticmethod
    def _plan_row(r: int, seg: np.ndarray, br: np.ndarray, device) -> list:
        """Per segment of row ``r``: (start, trunk end, parts), a part being (query start, query end,
        key ranges, mask bool [1, 1, queries, keys]) over the keys of the ranges back to back.

        Laid out as trunk then one contiguous run per branch (what arcfast.infer.rescore builds), each
        branch is a part: its queries against the trunk and itself (P + G keys, not the whole
        segment's); any other layout is one part, all queries past the trunk against the whole
        segment under the rule's mask."""
        out, seen = [], set()
        edges = np.flatnonzero(np.diff(seg)) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, len(seg)]):
            a, b, s = int(a), int(b), int(seg[a])
            if s < 0:
                continue
            if s in seen:
                raise ValueError(f"loop tree attention: segment {s} of row {r} is not contiguous")
            seen.add(s)
            rest = np.flatnonzero(br[a:b] != 0)
            t = a + (int(rest[0]) if rest.size else b - a)      # the leading trunk is a..t
            parts = []
            if t < b:
                cut = t + np.flatnonzero(np.diff(br[t:b])) + 1
                runs = list(zip(np.r_[t, cut].tolist(), np.r_[cut, b].tolist()))
                ids = [int(br[x]) for x, _ in runs]
                if min(ids) > 0 and len(set(ids)) == len(ids):
                    for x, y in runs:
                        m = np.ones((y - x, t - a + y - x), dtype=bool)
                        m[:, t - a:] = np.tri(y - x, dtype=bool)
                        parts.append((x, y, [(a, t), (x, y)], torch.from_numpy(m[None, None]).to(device)))
                else:
                    bq, bk = br[t:b, None], br[None, a:b]
                    causal = np.arange(t, b)[:, None] >= np.arange(a, b)[None, :]
                    m = causal & ((bk == 0) | (bk == bq))
                    parts.append((t, b, [(a, b)], torch.from_numpy(m[None, None]).to(device)))
            out.append((a, t, parts))
        return out

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.impl == "sdpa":
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=self.mask).transpose(1, 2)
        if self.impl == "flex":
            try:
                o = _flex_fn(self.compiled)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            block_mask=self.block_mask, enable_gqa=q.shape[2] != k.shape[2])
                return o.transpose(1, 2)
            except Exception as e:
                if out_of_memory(e):
                    raise
                switch_off("flex_attention", e)
                self.impl, self.mask = "sdpa", tree_mask(*self._ids)
                return self(q, k, v)
        return self._loop(q, k, v)

    def _loop(self, q, k, v):
        out = torch.zeros_like(q)
        masks = self._additive.get(q.dtype)
        if masks is None:   # SDPA turns a bool mask into an additive one per call: once per dtype here
            masks = self._additive[q.dtype] = {
                id(m): torch.zeros(m.shape, dtype=q.dtype, device=m.device).masked_fill_(~m, float("-inf"))
                for segs in self.segments for _, _, parts in segs for *_, m in parts}
        for r, segs in enumerate(self.segments):
            for a, t, parts in segs:
                if t > a:
                    o = sdpa(q[r:r + 1, a:t].transpose(1, 2), k[r:r + 1, a:t].transpose(1, 2),
                             v[r:r + 1, a:t].transpose(1, 2), is_causal=True)
                    out[r:r + 1, a:t] = o.transpose(1, 2)
                for x, y, ranges, m in parts:
                    kk = torch.cat([k[r:r + 1, i:j] for i, j in ranges], 1) if len(ranges) > 1 else k[r:r + 1, ranges[0][0]:ranges[0][1]]
                    vv = torch.cat([v[r:r + 1, i:j] for i, j in ranges], 1) if len(ranges) > 1 else v[r:r + 1, ranges[0][0]:ranges[0][1]]
                    o = sdpa(q[r:r + 1, x:y].transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
                             attn_mask=masks[id(m)])
                    out[r:r + 1, x:y] = o.transpose(1, 2)
        return out
