"""Training backends behind one interface, so the CLI and the benchmarks drive them alike.

================  ===========================================================================
``native``        arcfast's own trainer (arcfast.train.trainer): packed rows, many tasks' adapters in
                  one batch, Triton kernels on CUDA. ``max_adapters`` = as many as asked.
``hf``            transformers + PEFT, one task at a time, its samples as one right-padded batch:
                  the common recipe, the reference and the baseline.
``unsloth``       Unsloth's FastLanguageModel + LoRA, one task at a time (when ``unsloth`` is
                  importable; it is imported only when this backend is made).
================  ===========================================================================

Every backend takes the same :class:`arcfast.samples.batch.PackedBatch` (``adapter_ids`` = slot) and
returns the same :class:`arcfast.train.loss.StepStats`::

    cls, reason = select_backend("auto")          # reason: "native: CUDA available (NVIDIA H100 ...)"
    backend = cls(model, lora_cfg, train_cfg, n_adapters=min(n, cls.max_adapters))
    backend.reset_adapters([0], seeds=[task_seed], total_steps=200)
    stats = backend.step(batch)
    backend.save_adapter(0, out_dir / task_id)
"""
from __future__ import annotations

import importlib.util
from typing import Optional

from .base import Backend, BackendUnavailable

BACKENDS = ("native", "hf", "unsloth")


def _cuda() -> Optional[str]:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def backend_status() -> dict:
    """``{name: (available, reason)}`` for every backend, without importing Unsloth (importing it
    patches transformers, so availability is read from the installed package only)."""
    gpu = _cuda()
    out = {"native": (True, f"native: CUDA available ({gpu})" if gpu else
                      "native: no CUDA; plain torch paths on the CPU")}
    out["hf"] = ((importlib.util.find_spec("peft") is not None),
                 "hf: transformers + PEFT, one task at a time" if importlib.util.find_spec("peft")
                 else "hf: peft is not installed")
    if importlib.util.find_spec("unsloth") is None:
        out["unsloth"] = (False, "unsloth not importable: the package is not installed")
    elif gpu is None:
        out["unsloth"] = (False, "unsloth not importable: it needs a CUDA GPU")
    else:
        out["unsloth"] = (True, "unsloth: installed, CUDA available")
    return out


def select_backend(name: str = "auto") -> tuple[type, str]:
    """The backend class for ``name`` (``auto``, ``native``, ``hf``, ``unsloth``) and why.

    ``auto`` is always ``native`` (it batches many tasks; the others train one at a time). A named
    backend that cannot run raises :class:`BackendUnavailable` carrying the reason."""
    if name == "auto":
        ok, reason = backend_status()["native"]
        from .native import NativeBackend

        return NativeBackend, reason
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}; not {name!r}")
    ok, reason = backend_status()[name]
    if not ok:
        raise BackendUnavailable(reason)
    if name == "native":
        from .native import NativeBackend as cls
    elif name == "hf":
        from .hf import HFBackend as cls
    else:
        from .unsloth import UnslothBackend as cls
    return cls, reason


def make_backend(name: str, model, lora_cfg, train_cfg, n_adapters: int = 1) -> Backend:
    """Select and build a backend; its ``.reason`` says which and why."""
    cls, reason = select_backend(name)
    backend = cls(model, lora_cfg, train_cfg, n_adapters=min(n_adapters, cls.max_adapters))
    backend.reason = reason
    return backend


__all__ = ["Backend", "BackendUnavailable", "BACKENDS", "backend_status", "select_backend", "make_backend"]
