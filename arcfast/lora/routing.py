"""Which adapter each token of a training step goes through, and the LoRA delta paths that read it: plain torch (one matmul pair per adapter present: the reference) and grouped GEMMs; whether the grouped and Triton paths can run here."""
from __future__ import annotations


import numpy as np
import torch


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
        from ..kernels import lora as _k
        from ..kernels._common import HAS_TRITON

        return HAS_TRITON and hasattr(_k, "lora_delta")
    except Exception:
        return False
