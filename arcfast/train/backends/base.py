"""The interface every training backend implements."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why."""


class Backend:
    """A trainer of ``n_adapters`` LoRA slots (``max_adapters``: how many one instance can train
    at once; 1 for the one-task-at-a-time backends).

    Methods (all slot ids are ints in ``range(n_adapters)``):

    - ``reset_adapters(ids, seeds=None, total_steps=None)``: fresh adapters, optimizer and schedule;
    - ``load_adapter(ids, adapter, total_steps=None)``: start from a PEFT directory / tensors;
    - ``step(batch: PackedBatch, gate=None) -> StepStats``: with a :class:`arcfast.budget.steps.StepGate`,
      in micro-batches the gate admits one by one (the same update when all of them run; when the
      gate refuses one, :class:`arcfast.budget.steps.StepAbandoned` and nothing applied);
    - ``eval_loss(batch) -> np.ndarray [n_adapters]``;
    - ``export_adapter(i) -> dict`` (PEFT state dict) and ``save_adapter(i, path) -> Path``;
    - ``inference_lora(model) -> MultiLoRA``: the trained adapters for inference, slot i = adapter i;
    - ``peft_token_ids()``: the token ids of the adapters' own rows, as PEFT files name them;
    - ``recover()``: after a step raised (out of memory, say), drop what it left half done
      (accumulated gradients, cached blocks) so the next step starts clean.
    """

    name = "base"
    max_adapters = 1
    reason = ""
    n_adapters: int

    def reset_adapters(self, ids: Sequence[int], seeds: Optional[Sequence[int]] = None,
                       total_steps: Union[int, Sequence[int], None] = None) -> None:
        raise NotImplementedError

    def load_adapter(self, ids: Sequence[int], adapter, total_steps=None) -> None:
        raise NotImplementedError

    def step(self, batch, gate=None):
        raise NotImplementedError

    def eval_loss(self, batch) -> np.ndarray:
        raise NotImplementedError

    def export_adapter(self, i: int) -> dict:
        raise NotImplementedError

    def save_adapter(self, i: int, path, base_model: str = "", meta: Optional[dict] = None,
                     dtype=None) -> Path:
        raise NotImplementedError

    def inference_lora(self, model):
        """The trained adapters as a :class:`arcfast.lora.multi.MultiLoRA` of ``model`` (slot i =
        adapter i), for generation, search, scoring and verification. This default converts each
        adapter from its PEFT weights into one MultiLoRA kept between calls (the backends that train
        a PEFT model); :class:`NativeBackend` hands over the table it trains."""
        from ...lora.adapters import from_peft
        from ...lora.multi import MultiLoRA

        lora = getattr(self, "_inference_lora", None)
        if lora is None:
            lora = self._inference_lora = MultiLoRA(model, self.lora_cfg, self.n_adapters)
        for i in range(self.n_adapters):
            lora.set(i, from_peft(self.export_adapter(i)))
        return lora

    def peft_token_ids(self):
        raise NotImplementedError

    def recover(self) -> None:
        _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
