"""The native backend: arcfast's packed multi-adapter trainer."""
from __future__ import annotations

from ..trainer import Trainer
from .base import Backend


class NativeBackend(Trainer, Backend):
    """:class:`arcfast.train.trainer.Trainer` under the backend interface: any number of adapters."""

    name = "native"
    max_adapters = 1 << 30

    def inference_lora(self, model):
        """The adapters as they are: the trainer's own table, read by inference in place (no copy,
        no PEFT round trip); a different model gets the base class's conversion."""
        return self.lora if model is self.model else Backend.inference_lora(self, model)

    def peft_token_ids(self):
        return self.lora.peft_token_ids()

    def recover(self) -> None:
        self.lora.weight.grad = None   # a backward cut short leaves a partial gradient behind
        Backend.recover(self)
