"""One model with its trained adapters, for every kind of inference a run does.

    decoder = Decoder(model)
    decoder.use(backend.inference_lora(model), {"00576224": 0, "009d5c81": 1})
    preds = decoder.predict(tasks, n_predictions=8)            # generation, or search=SearchConfig
    scores = decoder.score(build_sequences(items))              # log-probabilities of targets
    cands = decoder.verify(jobs_of(decoder), VerifyConfig(4))   # the verifier's verdicts

Prediction (batched generation or depth-first search), scoring and verification all read the same
model and adapter table through this object. It keeps the generator between calls (its KV buffers,
CUDA graphs, decode-time adapter routing and measured rates), and it knows which slot of the table
holds each task's adapter: callers name tasks, never slots.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from . import generate as _generate
from .logprobs import score_sequences
from .predict import predict_tasks
from .verify import verify_jobs


class Decoder:
    """``model`` and the adapters it decodes with (see the module docstring)."""

    def __init__(self, model, lora=None, slot_of: Optional[Mapping[str, int]] = None):
        self.model = model
        self.lora = None
        self.generator = None   # an arcfast.infer.generate.Generator, built on first use
        self.slot_of: dict = {}
        self.use(lora, slot_of or {})

    def use(self, lora, slot_of: Mapping[str, int]) -> None:
        """Decode with ``lora`` (a MultiLoRA of the model, or None) from now on, task ``t``'s adapter
        in slot ``slot_of[t]`` (a task not named gets the base model). The generator is kept when
        the table is the same (its buffers are refilled at each call)."""
        if lora is not self.lora:
            self.generator = None
        self.lora = lora
        self.slot_of = dict(slot_of)

    def slot(self, task_id: str) -> int:
        """The slot of task ``task_id``'s adapter; -1 (the base model) for a task without one."""
        return self.slot_of.get(task_id, -1)

    def reset(self) -> None:
        """Drop the generator (after a failure whose cause may be its buffers); the next call
        builds a new one."""
        self.generator = None

    def gen(self):
        """The :class:`arcfast.infer.generate.Generator`, built on first use and kept between calls
        (looked up in its module when built, so a substitute generator can stand in for it)."""
        if self.generator is None:
            self.generator = _generate.Generator(self.model, self.lora)
        return self.generator

    def predict(self, tasks: Sequence, **kwargs) -> list:
        """:func:`arcfast.infer.predict.predict_tasks` of ``tasks``, each with its own adapter."""
        return predict_tasks(self.model, tasks, [self.slot(t.id) for t in tasks], self.lora,
                             generator=self.gen(), **kwargs)

    def score(self, seqs, **kwargs):
        """:func:`arcfast.infer.logprobs.score_sequences` with the adapters (the sequences carry
        their slots: build them with :meth:`slot`)."""
        return score_sequences(self.model, self.lora, seqs, **kwargs)

    def verify(self, jobs: Sequence, config=None, **kwargs) -> list:
        """:func:`arcfast.infer.verify.verify_jobs` with the adapters."""
        return verify_jobs(self.model, self.lora, jobs, config, **kwargs)


__all__ = ["Decoder"]
