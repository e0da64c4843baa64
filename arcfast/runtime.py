"""Where a run computes: its device, its dtype, its place among several workers, and which fast
paths it may take.

Fast paths (the Triton kernels, grouped GEMMs, FlexAttention, varlen attention, CUDA graphs, fused
decode-time LoRA) are chosen where they are used, but switched here: :func:`fast_path` says whether
one may run, and a fast path that raises where it runs (a Triton compile error on an older GPU, a
graph capture that fails, a kernel missing from this build of torch) is switched off with
:func:`switch_off` for the rest of the process, with one logged line saying which and why, and the
work is redone on the plain path. :func:`with_fallback` wraps a fast function with its plain one;
:func:`fast_path_of` names the fast path an exception was raised in, from its traceback.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional

log = logging.getLogger("arcfast.runtime")

FAST_PATHS = {
    "triton": "Triton kernels",
    "grouped_gemm": "grouped GEMMs over adapters (torch._grouped_mm)",
    "flex_attention": "FlexAttention",
    "varlen_attention": "variable-length flash attention",
    "cuda_graphs": "CUDA graphs",
    "fused_decode": "merged and fused decode-time LoRA",
}
_OFF: dict = {}   # fast path -> why it was switched off


def fast_path(name: str) -> bool:
    """Whether fast path ``name`` (a key of ``FAST_PATHS``) may run."""
    if name not in FAST_PATHS:
        raise KeyError(f"unknown fast path {name!r} (one of {', '.join(FAST_PATHS)})")
    return name not in _OFF


def switch_off(name: str, error: BaseException) -> bool:
    """Switch fast path ``name`` off for the rest of the process because it raised ``error``; says
    so once. Returns False where it was off already."""
    if not fast_path(name):
        return False
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    _OFF[name] = f"{type(error).__name__}: {first}" if first else type(error).__name__
    log.warning("fast path off for the rest of the run: %s (%s) raised %s; running the plain path",
                name, FAST_PATHS[name], _OFF[name])
    return True


def fast_paths_off() -> dict:
    """{fast path: the error that switched it off}."""
    return dict(_OFF)


def reset_fast_paths() -> None:
    """Every fast path on again (a new run in the same process, tests)."""
    _OFF.clear()


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is running out of memory: the work's size, not a broken fast path."""
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def with_fallback(name: str, fast: Callable, plain: Callable) -> Callable:
    """``fast`` while fast path ``name`` is on, else ``plain`` (same arguments, same result). A call of
    ``fast`` that raises (running out of memory aside) switches the path off and is redone by
    ``plain``."""
    @functools.wraps(fast)
    def call(*args, **kwargs):
        if name in _OFF:
            return plain(*args, **kwargs)
        try:
            return fast(*args, **kwargs)
        except Exception as e:
            if out_of_memory(e):
                raise
            switch_off(name, e)
            return plain(*args, **kwargs)
    return call


# Where a frame of the traceback runs -> the fast path it belongs to.
_FRAMES = (
    ("/arcfast/kernels/", "triton"), ("/triton/", "triton"),
    ("flex_attention", "flex_attention"),
    ("/torch/nn/attention/varlen", "varlen_attention"), ("/flash_attn/", "varlen_attention"),
    ("/torch/cuda/graphs", "cuda_graphs"), ("/arcfast/train/graph.py", "cuda_graphs"),
)
_FUNCTIONS = {"lora_delta_grouped": "grouped_gemm", "_flex_fn": "flex_attention",
              "_varlen": "varlen_attention"}


def fast_path_of(e: BaseException) -> Optional[str]:
    """The fast path ``e`` was raised in (the innermost frame that belongs to one), or None."""
    found = None
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        fn = code.co_filename.replace(os.sep, "/")
        name = _FUNCTIONS.get(code.co_name)
        for part, path in _FRAMES:
            if part in fn:
                name = path
        found = name or found
        tb = tb.tb_next
    return found


def dist() -> tuple[int, int]:
    """(rank, world size) under torchrun (or ``arcfast ... --workers N``), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def device(name: str):
    """The torch device of ``--device NAME``: ``auto`` is this worker's GPU (``LOCAL_RANK``) when
    CUDA is there, else the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


def default_dtype(device):
    """fp32 on the CPU; bf16 on GPUs that have it, else fp16 (train with loss scaling)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(device=None):
    """``device``, or the GPU when there is one and ``device`` is None, else the CPU."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def dtype(name: str, device):
    """The torch dtype of ``--dtype NAME`` on ``device`` (``auto``: the model's default there)."""
    import torch

    if name == "auto":
        return default_dtype(device)
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (float32, bfloat16, float16)") from None


__all__ = ["dist", "device", "dtype", "default_dtype", "resolve_device", "FAST_PATHS", "fast_path", "switch_off",
           "fast_paths_off", "reset_fast_paths", "out_of_memory", "with_fallback", "fast_path_of"]
