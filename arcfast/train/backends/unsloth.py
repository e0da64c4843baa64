"""The unsloth backend: Unsloth's FastLanguageModel with its LoRA, one task at a time.

Unsloth patches transformers when it is imported, so it is imported here, when this backend is
built, and never at ``import arcfast``. It loads models from a checkpoint directory: a model made
from a preset is first written to a temporary one (:func:`arcfast.model.checkpoint.save_model`, compact
tokenizer included). Steps, schedule, clipping and adapters are the hf backend's.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ...arc import vocab as T

from .base import BackendUnavailable
from .hf import HFBackend


def checkpoint_for_unsloth(model, path) -> Path:
    """Write ``model`` as a checkpoint directory Unsloth's ``from_pretrained`` loads: Unsloth needs a
    tokenizer whose vocabulary fits the model's and that has a pad token. A compact-vocabulary model
    gets its compact tokenizer from :func:`arcfast.model.checkpoint.save_model`; a full-vocabulary preset (random
    weights, no tokenizer of its own) gets the compact one too: its 16 ids are the model's first 16
    tokens, which is what a random full-vocabulary preset reads compact batches as."""
    from ...model.hf import compact_tokenizer
    from ...model.checkpoint import save_model

    path = save_model(model, path)
    if not (Path(path) / "tokenizer_config.json").exists():
        if model.config.vocab_size < T.VOCAB_SIZE:
            raise ValueError(f"cannot give Unsloth a tokenizer for a {model.config.vocab_size}-token vocabulary")
        compact_tokenizer().save_pretrained(str(path))
    return Path(path)


class UnslothBackend(HFBackend):
    name = "unsloth"
    max_adapters = 1

    def __init__(self, model, lora_cfg, train_cfg, n_adapters: int = 1, checkpoint=None,
                 gradient_checkpointing=False):
        self._checkpoint, self._gc = checkpoint, gradient_checkpointing
        super().__init__(model, lora_cfg, train_cfg, n_adapters)

    def _build(self, model, hf_model):
        try:
            from unsloth import FastLanguageModel
        except Exception as exc:  # ImportError, or its own refusal without a GPU
            raise BackendUnavailable(f"unsloth not importable: {type(exc).__name__}: {exc}") from exc
        path = self._checkpoint
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="arcfast-unsloth-")
            path = checkpoint_for_unsloth(model, self._tmp.name)
        fm, _tok = FastLanguageModel.from_pretrained(
            model_name=str(path), max_seq_length=model.config.max_position, dtype=model.dtype,
            load_in_4bit=False, local_files_only=True)
        c = self.lora_cfg
        extra = {}
        if c.tokens:
            # Whole modules (PEFT's modules_to_save) for a compact vocabulary, as the native trainer
            # saves them; a full vocabulary's trainable tokens are PEFT's alone.
            if self._slots.peft_token_ids() is not None:
                raise BackendUnavailable("unsloth trains the embedding / LM-head rows of a compact-vocabulary "
                                         "model only (modules_to_save); this model keeps its full vocabulary")
            extra["modules_to_save"] = list(c.tokens)
        return FastLanguageModel.get_peft_model(
            fm, r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, use_rslora=c.rslora,
            target_modules=list(c.targets), bias="none",
            use_gradient_checkpointing=("unsloth" if self._gc else False), random_state=0, **extra)
