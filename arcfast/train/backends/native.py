"""The native backend: arcfast's packed multi-adapter trainer."""
from __future__ import annotations

from ..trainer import Trainer
from .base import Backend


class NativeBackend(Trainer, Backend):
    """:class:`arcfast.train.trainer.Trainer` under the backend interface: any number of adapters."""

    name = "native"
    max_adapters = 1 << 30

    def recover(self) -> None:
        self.lora.weight.grad = None   # a backward cut short leaves a partial gradient behind
        Backend.recover(self)
