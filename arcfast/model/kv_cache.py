"""A static KV cache, and the two attentions that read and write it inside the model's one forward.

    kv = torch.zeros(layers, 2, rows, Hkv, S, D)                 # keys (0) and values (1)
    h = model(ids, attention=CachePrefill(kv, r0=0))              # prompts into rows 0..R-1
    h = model(tok[:, None], pos[:, None],
              attention=CacheDecode(kv, pos, S, rows, span))      # one token per row

Both are handed to :meth:`arcfast.model.decoder.CausalLM.forward` as its ``attention``: the forward asks
each for ``layer(i)``, the callable of layer ``i``, which stores that layer's keys and values in
the cache before attending. The cache slot of a token equals its position, so a row's prompt sits
in slots ``0..P-1`` and its n-th generated token in slot ``P + n``.

:class:`arcfast.infer.generate.Generator` runs its prefill and decode steps through these;
:mod:`arcfast.infer.search` forks rows (:func:`copy_rows`) when a search tree branches.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from .attention import causal_attention


class CachePrefill:
    """Causal attention over right-padded prompts in rows ``r0..r0+R-1`` of ``kv`` [layers, 2,
    cap, Hkv, S, D] (or in the rows ``rows``, int64 [R], when given) that first stores each
    layer's keys and values in slots ``0..L-1`` of those rows. Padding sits after a prompt's real
    tokens, so no real token attends to it; its slots are overwritten by decoding before any query
    may read them."""

    def __init__(self, kv: torch.Tensor, r0: int = 0, rows: Optional[torch.Tensor] = None):
        self.kv, self.r0, self.rows = kv, int(r0), rows

    def layer(self, li: int):
        return partial(self._attend, li)

    def _attend(self, li: int, q, k, v):
        R, L = k.shape[:2]
        rows = slice(self.r0, self.r0 + R) if self.rows is None else self.rows
        self.kv[li, 0, rows, :, :L] = k.transpose(1, 2)
        self.kv[li, 1, rows, :, :L] = v.transpose(1, 2)
        return causal_attention(q, k, v)


class CacheDecode:
    """Attention of one new token for each of cache rows ``0..B-1``: row ``b`` holds its token at
    position ``pos[b]`` (int64 [B]), stores its key and value in slot ``pos[b]`` and attends to
    slots ``0..pos[b]`` of its own row, among the first ``S`` slots. ``rows`` and ``span`` are
    ``arange`` buffers (int64, at least [B] and [S]) kept by the caller, so that the step reads
    only static tensors and runs inside a captured CUDA graph.

    ``gather=True``: the B tokens sit in the cache rows ``rows`` (int64 [B], any distinct rows)
    instead, read with a gather (a search tree's live nodes are scattered over the cache)."""

    def __init__(self, kv: torch.Tensor, pos: torch.Tensor, S: int, rows: torch.Tensor, span: torch.Tensor,
                 gather: bool = False):
        self.kv, self.pos, self.S, self.gather = kv, pos, int(S), bool(gather)
        self.rows = rows if gather else rows[:pos.shape[0]]
        self.mask = (span[:S][None, :] <= pos[:, None])[:, None, None, :]     # [B, 1, 1, S]

    def layer(self, li: int):
        return partial(self._attend, li)

    def _attend(self, li: int, q, k, v):
        B, _, H, D = q.shape
        Hkv = k.shape[2]
        kc, vc = self.kv[li, 0], self.kv[li, 1]                               # [cap, Hkv, S_alloc, D]
        kc[self.rows, :, self.pos] = k[:, 0]
        vc[self.rows, :, self.pos] = v[:, 0]
        # The G query heads sharing a kv head ride as G query positions: keys and values are read
        # once per kv head, and SDPA's fused kernels take the padding mask.
        qg = q[:, 0].view(B, Hkv, H // Hkv, D)
        if self.gather:
            kr, vr = kc[self.rows, :, :self.S], vc[self.rows, :, :self.S]
        else:
            kr, vr = kc[:B, :, :self.S], vc[:B, :, :self.S]
        o = F.scaled_dot_product_attention(qg, kr, vr, attn_mask=self.mask)    # [B, Hkv, G, D]
        return o.reshape(B, 1, H, D)


def copy_rows(kv: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int) -> None:
    """Copy slots ``0..n-1`` of cache rows ``src`` (int64 [k]) into rows ``dst`` (int64 [k], disjoint
    from ``src``): a branch of a search tree starts from its parent's cache."""
    kv[:, :, dst, :, :n] = kv[:, :, src, :, :n]
