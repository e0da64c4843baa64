"""The hf backend: plain transformers + PEFT, one task at a time (the common TTFT recipe).

Each step takes one task's samples (the PackedBatch is unpacked) as one right-padded batch through
the transformers model with PEFT's LoRA; the loss is transformers' own (mean over the batch's
labelled tokens), the optimizer ``torch.optim.AdamW`` with ``clip_grad_norm_`` and a ``LambdaLR``
schedule of the same shape as the native one. This is both the baseline the benchmarks compare
against and the reference the native trainer is tested against.

An adapter's own embedding / LM-head rows (:attr:`arcfast.lora.multi.LoRAConfig.tokens`) are PEFT's own:
``modules_to_save`` (a trainable copy of the whole module) for a compact-vocabulary model, PEFT's
trainable tokens (``trainable_token_indices``, the rows of the compact ids) for a full-vocabulary
one, decided as :class:`arcfast.lora.multi.MultiLoRA` decides (a tied head of a full vocabulary reads the
embedding's rows, as PEFT ties it). With ``TrainConfig.embedding_lr`` they are a second AdamW
parameter group at that rate, on the same schedule.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ...arc import vocab as T
from ...budget.steps import StepGate
from ...lora.adapters import load_adapter_for, save_adapter, to_peft
from ...lora.multi import LoRAConfig, MultiLoRA
from ...model.hf import to_hf
from ..loss import StepStats
from ..optim import lr_factor
from ..trainer import TrainConfig, unpack_samples
from .base import Backend


def padded_batch(batch, cfg=None, device="cpu"):
    """A PackedBatch's samples as right-padded tensors (input_ids, attention_mask, labels), int64
    [k, longest], ids mapped to the model's own (:meth:`ModelConfig.model_ids`) when ``cfg`` is given."""
    samples = unpack_samples(batch)
    if not samples:
        raise ValueError("empty batch")
    n = max(len(s[0]) for s in samples)
    k = len(samples)
    ids = np.full((k, n), T.PAD, np.int64)
    mask = np.zeros((k, n), np.int64)
    labels = np.full((k, n), T.IGNORE_INDEX, np.int64)
    for i, (x, y, _) in enumerate(samples):
        ids[i, :len(x)], mask[i, :len(x)], labels[i, :len(x)] = x, 1, y
    if cfg is not None:
        ids, labels = cfg.model_ids(ids), cfg.model_ids(labels)
    t = lambda a: torch.from_numpy(a).to(device)
    return t(ids), t(mask), t(labels)


class HFBackend(Backend):
    """transformers + PEFT on the transformers twin of ``model`` (weights copied by to_hf)."""

    name = "hf"
    max_adapters = 1

    def __init__(self, model, lora_cfg: LoRAConfig, train_cfg: TrainConfig, n_adapters: int = 1,
                 hf_model=None):
        if n_adapters != 1:
            raise ValueError(f"the {self.name} backend trains one adapter at a time, not {n_adapters}")
        self.n_adapters = 1
        self.lora_cfg, self.cfg = lora_cfg, train_cfg
        self.config = model.config
        self.device, self.dtype = model.device, model.dtype
        self._slots = MultiLoRA(model, lora_cfg, 1, device="cpu")   # layer names, shapes, init, token rows
        self.peft = self._build(model if hf_model is None else None, hf_model)
        self.params = [p for p in self.peft.parameters() if p.requires_grad]
        tokens = self._token_params()
        if any(not p.requires_grad for p in tokens.values()):
            raise RuntimeError(f"the {self.name} backend's token rows ({', '.join(tokens)}) are not trainable")
        self._token_param_ids = {id(p) for p in tokens.values()}
        self.reset_adapters([0])

    # transformers model + PEFT LoRA (the unsloth backend overrides this)
    def _build(self, model, hf_model):
        from peft import LoraConfig, get_peft_model

        hf = hf_model if hf_model is not None else to_hf(model)
        pc = LoraConfig(r=self.lora_cfg.r, lora_alpha=self.lora_cfg.alpha, lora_dropout=self.lora_cfg.dropout,
                        use_rslora=self.lora_cfg.rslora, target_modules=list(self.lora_cfg.targets), bias="none",
                        task_type="CAUSAL_LM", **self._peft_token_fields())
        with warnings.catch_warnings():
            # A tied head in modules_to_save gets its own copy, as arcfast's adapters do (see
            # arcfast.lora.adapters); PEFT warns that it is not tied to the embedding's.
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            return get_peft_model(hf, pc)

    def _peft_token_fields(self) -> dict:
        """The LoraConfig fields of the token rows: ``modules_to_save`` (whole modules, a compact
        vocabulary) or ``trainable_token_indices`` (the compact ids' rows of a full vocabulary; a
        tied head is left out, PEFT ties it to the embedding's rows); none without token rows."""
        tables = self._slots.table_slots()
        if not tables:
            return {}
        ids = self._slots.peft_token_ids()
        if ids is None:
            return {"modules_to_save": [t.module for t in tables]}
        return {"trainable_token_indices": {t.module: list(ids) for t in tables}}

    def _token_params(self) -> dict:
        """{module path: PEFT's trainable rows of it} for each table of ``self._slots`` (a shared
        table once, under the embedding's path): ``modules_to_save["default"].weight`` [V, d] of a
        whole module, ``token_adapter.trainable_tokens_delta["default"]`` [n, d] (the rows of
        :meth:`MultiLoRA.peft_token_ids`, not differences) of trainable tokens."""
        want = {t.path: t for t in self._slots.table_slots()}
        if not want:
            return {}
        out = {}
        for name, m in self.peft.named_modules():
            key = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
            if key not in want:
                continue
            if "default" in getattr(m, "modules_to_save", {}):
                out[key] = m.modules_to_save["default"].weight
            elif hasattr(m, "token_adapter") and m.token_adapter.tied_adapter is None \
                    and "default" in m.token_adapter.trainable_tokens_delta:
                out[key] = m.token_adapter.trainable_tokens_delta["default"]
        missing = [want[k].module for k in want if k not in out]
        if missing:
            raise RuntimeError(f"the {self.name} backend's PEFT model has no trainable rows of "
                               f"{', '.join(missing)} (LoRA tokens: {', '.join(self.lora_cfg.tokens)})")
        for key, p in out.items():
            t = want[key]
            if tuple(p.shape) != (t.n_rows, t.dim):
                raise RuntimeError(f"PEFT's trainable rows of {t.module}: {tuple(p.shape)}, expected "
                                   f"({t.n_rows}, {t.dim})")
        return out

    def _lora_modules(self):
        """{arcfast layer name: PEFT LoRA layer}."""
        out = {}
        for name, m in self.peft.named_modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                key = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
                out[key] = m
        return out

    @torch.no_grad()
    def _set_tensors(self, tensors: dict) -> None:
        """Load ``{name: (A, B)}`` and token rows ``{module path: rows}`` (:meth:`MultiLoRA.get`'s
        keys): layers not named get zeros, token rows not named the model's own."""
        params = self._token_params()
        for path, rows in tensors.items():
            if isinstance(rows, tuple):
                continue
            if path not in params:
                have = ", ".join(self.lora_cfg.tokens) or "none"
                raise KeyError(f"the adapter has trained rows of {path!r}, which these adapters do not train "
                               f"(token modules: {have})")
            if tuple(rows.shape) != tuple(params[path].shape):
                raise ValueError(f"adapter rows of {path}: {tuple(rows.shape)}, expected {tuple(params[path].shape)}")
        mods = self._lora_modules()
        for name, m in mods.items():
            a, b = tensors.get(name, (None, None))
            wa, wb = m.lora_A["default"].weight, m.lora_B["default"].weight
            wa.copy_(a.t() if a is not None else torch.zeros_like(wa))
            wb.copy_(b.t() if b is not None else torch.zeros_like(wb))
        base = {t.path: self._slots.token_base[t.module] for t in self._slots.table_slots()}
        for path, p in params.items():
            p.copy_(tensors.get(path, base[path]))

    def _fresh_optimizer(self, total_steps: int) -> None:
        c = self.cfg
        groups = self.params
        if self._token_param_ids and c.embedding_lr is not None and c.embedding_lr != c.lr:
            if c.lr <= 0:
                raise ValueError(f"embedding_lr {c.embedding_lr} needs a positive lr (the schedule it follows), "
                                 f"got {c.lr}")
            groups = [{"params": [p for p in self.params if id(p) not in self._token_param_ids]},
                      {"params": [p for p in self.params if id(p) in self._token_param_ids], "lr": c.embedding_lr}]
        self.opt = torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
        warm = c.warmup_for(total_steps)
        self.total_steps = np.array([total_steps], np.int64)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: float(lr_factor(s, self.total_steps[0], warm, c.schedule)))
        self.steps = 0

    # -- Backend interface ----------------------------------------------------------------------
    def reset_adapters(self, ids: Sequence[int], seeds=None, total_steps=None) -> None:
        ids = list(ids)
        if ids != [0]:
            raise ValueError(f"the {self.name} backend has one slot (0), got {ids}")
        self._slots.reset([0], seeds)
        self._set_tensors(self._slots.get(0))
        self._fresh_optimizer(int(self.cfg.steps if total_steps is None else np.ravel(total_steps)[0]))

    def load_adapter(self, ids, adapter, total_steps=None) -> None:
        self._set_tensors(load_adapter_for(adapter, self.lora_cfg, self._slots.peft_token_ids())
                          if isinstance(adapter, (str, Path)) else adapter)
        self._fresh_optimizer(int(self.cfg.steps if total_steps is None else np.ravel(total_steps)[0]))

    def step(self, batch, gate: Optional[StepGate] = None) -> StepStats:
        """One optimizer step on ``batch``; with a ``gate``, in micro-batches of whole samples that
        it admits one by one (as :meth:`arcfast.train.trainer.Trainer.step`: the same update when all
        run, :class:`StepAbandoned` and nothing applied when it refuses one)."""
        t0 = time.perf_counter()
        if (batch.adapter_ids[batch.sample_ids >= 0] != 0).any():
            raise ValueError(f"the {self.name} backend trains one task at a time: every adapter id must be 0")
        self.peft.train()
        if gate is None:
            ids, mask, labels = padded_batch(batch, self.config, self.device)
            out = self.peft(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            n_lab, loss, n_tokens, n_positions = (int((labels[:, 1:] != T.IGNORE_INDEX).sum()),
                                                  float(out.loss.detach()), int(mask.sum()), int(mask.numel()))
        else:
            n_lab, loss, n_tokens, n_positions = self._accumulate(batch, gate)
        if self.cfg.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params]))
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1
        return StepStats(loss=np.array([loss]), label_tokens=np.array([n_lab]), grad_norm=np.array([float(norm)]),
                         lr=np.array([lr]), tokens=n_tokens, positions=n_positions,
                         time_s=time.perf_counter() - t0, stepped=np.array([True]))

    def _accumulate(self, batch, gate: StepGate) -> tuple:
        """Forward and backward of ``batch`` in micro-batches through ``gate``: each piece's mean
        loss weighted by its share of the labelled tokens, so the gradient is the whole batch's.
        Returns (labelled tokens, mean loss, tokens, padded positions) of the whole batch."""
        total = int((batch.labels[:, 1:] != T.IGNORE_INDEX).sum())
        loss_sum, positions, tokens = 0.0, 0, 0
        sync = (lambda: torch.cuda.synchronize(self.device)) if torch.device(self.device).type == "cuda" else None
        try:
            for piece in gate.pieces_of(batch, probe=self._probe, sync=sync):
                ids, mask, labels = padded_batch(piece, self.config, self.device)
                k = int((labels[:, 1:] != T.IGNORE_INDEX).sum())
                out = self.peft(input_ids=ids, attention_mask=mask, labels=labels)
                if k:
                    (out.loss * (k / max(total, 1))).backward()
                    loss_sum += float(out.loss.detach()) * k
                positions += int(mask.numel())
                tokens += int(mask.sum())
        except BaseException:
            self.opt.zero_grad(set_to_none=True)   # nothing of an abandoned (or failed) step is applied
            raise
        return total, loss_sum / max(total, 1), tokens, positions

    def _probe(self, batch) -> None:
        """Forward and backward of ``batch`` for its time only (a step gate's calibration, before
        any piece of the step: there is no gradient to keep yet, and this one is dropped)."""
        ids, mask, labels = padded_batch(batch, self.config, self.device)
        out = self.peft(input_ids=ids, attention_mask=mask, labels=labels)
        if torch.isfinite(out.loss):
            out.loss.backward()
        self.opt.zero_grad(set_to_none=True)

    def recover(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        super().recover()

    @torch.no_grad()
    def eval_loss(self, batch) -> np.ndarray:
        ids, mask, labels = padded_batch(batch, self.config, self.device)
        self.peft.eval()
        return np.array([float(self.peft(input_ids=ids, attention_mask=mask, labels=labels).loss)])

    @torch.no_grad()
    def adapter_tensors(self) -> dict:
        """The current adapter as ``{name: (A [din, r], B [r, dout])}`` fp32 CPU copies, and its token
        rows ``{module path: [n_rows, dim]}`` (:meth:`MultiLoRA.get`'s keys)."""
        out = {n: (m.lora_A["default"].weight.t().float().cpu().clone(),
                   m.lora_B["default"].weight.t().float().cpu().clone()) for n, m in self._lora_modules().items()}
        for path, p in self._token_params().items():
            out[path] = p.detach().float().cpu().clone()
        return out

    def peft_token_ids(self):
        return self._slots.peft_token_ids()

    def export_adapter(self, i: int = 0, dtype=None) -> dict:
        return to_peft(self.adapter_tensors(), dtype, self._slots.peft_token_ids())

    def save_adapter(self, i: int, path, base_model: str = "", meta: Optional[dict] = None,
                     dtype=None) -> Path:
        return save_adapter(path, self.adapter_tensors(), self.lora_cfg, base_model or self.config.name,
                            dtype=dtype, meta=meta, token_ids=self._slots.peft_token_ids())
