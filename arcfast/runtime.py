"""Where a run computes: its device, its dtype, and its place among several workers."""
from __future__ import annotations

import os


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


__all__ = ["dist", "device", "dtype", "default_dtype", "resolve_device"]
