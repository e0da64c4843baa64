"""Checkpoints shipped inside the package, loaded by name (``--model starter``); nothing is ever
downloaded. Each lives in a directory here with its weights, config, tokenizer and model card."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SHIPPED: dict[str, Path] = {"starter": Path(__file__).resolve().parent / "starter"}


def shipped_model(name: str) -> Optional[Path]:
    """The directory of the shipped checkpoint ``name`` when its weights are installed, else None."""
    d = SHIPPED.get(str(name))
    return d if d is not None and (d / "config.json").is_file() and any(d.glob("*.safetensors")) else None


__all__ = ["SHIPPED", "shipped_model"]
