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


def dtype(name: str, device):
    """The torch dtype of ``--dtype NAME`` on ``device`` (``auto``: the model's default there)."""
    import torch

    from .model.decoder import default_dtype

    if name == "auto":
        return default_dtype(device)
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (float32, bfloat16, float16)") from None


__all__ = ["dist", "device", "dtype"]
