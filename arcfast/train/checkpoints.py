"""Checkpoints of `arcfast train`: the weights (adapter in PEFT format, or the whole model) with the optimizer, step and data position, written atomically so that `--resume` continues exactly; snapshots kept along the way; the final result."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional


from ..files import atomic_write, fresh_dir, swap_in


CHECKPOINT = "checkpoint"


STATE_FILE = "state.pt"


_STATE_VERSION = 1


def find_checkpoint(out) -> Optional[Path]:
    """The checkpoint directory under ``out`` (or the one a crash mid-swap left), or None."""
    out = Path(out)
    for d in (out / CHECKPOINT, out / f".{CHECKPOINT}.old"):
        if (d / STATE_FILE).exists():
            return d
    return None


def _write_weights(trainer, path: Path, step: int) -> Path:
    """The trainer's result at ``path``: a PEFT adapter directory, or a transformers checkpoint
    directory for a :class:`arcfast.train.trainer.FullTrainer`."""
    from .trainer import FullTrainer

    if isinstance(trainer, FullTrainer):
        return trainer.save_model(path)
    return trainer.save_adapter(0, path, meta={"step": step})


def _weights_name(trainer) -> str:
    from .trainer import FullTrainer

    return "model" if isinstance(trainer, FullTrainer) else "adapter"


def save_checkpoint(out, trainer, step: int, settings: dict, segment_len: int) -> Path:
    """Write ``out/checkpoint`` atomically (see the module docstring). Returns its path."""
    import torch

    out = Path(out)
    tmp = fresh_dir(out, f".{CHECKPOINT}.")
    try:
        # Straight to the file (no bytes copy in memory: a full run's state is 12 bytes per weight);
        # the directory rename below is what makes the checkpoint atomic.
        torch.save({"version": _STATE_VERSION, "step": int(step), "segment_len": int(segment_len),
                    "settings": settings, "trainer": trainer.state_dict()}, tmp / STATE_FILE)
        _write_weights(trainer, tmp / _weights_name(trainer), step)
        atomic_write(tmp / "meta.json", json.dumps({"step": step, "time": time.time(), **settings}, indent=1))
        swap_in(tmp, out / CHECKPOINT)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / CHECKPOINT


SNAPSHOTS = "snapshots"


def save_snapshot(checkpoint: Path, trainer, step: int) -> Path:
    """Copy the weights of ``checkpoint`` (just written) to ``OUT/snapshots/step-<step>`` atomically
    and return that path: one directory per checkpoint, loadable like the final result (a learning
    curve is drawn from them, e.g. by ``arcfast bench -k learning --set curve=OUT``)."""
    checkpoint = Path(checkpoint)
    root = checkpoint.parent / SNAPSHOTS
    root.mkdir(exist_ok=True)
    final = root / f"step-{int(step)}"
    tmp = fresh_dir(root, f".{final.name}.")
    try:
        shutil.copytree(checkpoint / _weights_name(trainer), tmp, dirs_exist_ok=True)
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_result(out, trainer, step: int) -> Path:
    """Write the final ``out/adapter`` (LoRA) or ``out/model`` (full) atomically; returns its path."""
    out = Path(out)
    final = out / _weights_name(trainer)
    tmp = fresh_dir(out, f".{final.name}.")
    try:
        _write_weights(trainer, tmp, step)
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path) -> dict:
    import torch

    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')} (this arcfast reads {_STATE_VERSION})")
    return state
