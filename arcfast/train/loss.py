"""From a packed batch to the training loss: the host-side preparation of a
:class:`arcfast.samples.batch.PackedBatch` (checks, model ids, the labelled positions and their
(task, objective) groups), the per-task and per-objective cross entropy, and
:class:`StepStats`, what a training step reports. Shared by the eager step (arcfast.train.trainer) and the
fixed-shape one (arcfast.train.graph).

Loss convention: ``PackedBatch.labels`` are aligned with ``input_ids``; position t predicts
``labels[t + 1]`` (as Hugging Face causal LMs), and a task's loss is the mean over its labelled
tokens in the batch. The cross entropy is summed per (task, objective) group; a task's loss is its
objectives' means weighted by their token shares, its plain mean, and the objectives' own means are
reported beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..arc import vocab as T
from ..model.attention import PackedAttention
from ..samples.batch import PackedBatch
from ..lora.multi import LoRAStep, MultiLoRA
from ..model.decoder import CausalLM
from ..runtime import with_fallback
from ..samples.sampling import OBJECTIVES

K = len(OBJECTIVES)   # loss groups per task: one per objective


@dataclass
class StepStats:
    """What one step did. Per-adapter arrays have ``n_adapters`` entries; nan/0 for adapters
    without labelled tokens in the batch (they did not step)."""

    loss: np.ndarray            # float64 [N]: each task's mean loss over its labelled tokens
    label_tokens: np.ndarray    # int64 [N]: labelled tokens per task
    grad_norm: np.ndarray       # float64 [N]: per-adapter gradient norm before clipping
    lr: np.ndarray              # float64 [N]: learning rate used
    tokens: int                 # real (non-padding) tokens in the batch
    positions: int              # rows * row_len
    time_s: float               # wall time of the step, device work included
    stepped: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # bool [N]
    # float64 [N, len(OBJECTIVES)]: each task's mean loss per objective (nan where the task has no
    # labelled token of that objective); int64 [N, len(OBJECTIVES)]: those tokens. Empty where the
    # backend does not say.
    objective_loss: np.ndarray = field(default_factory=lambda: np.zeros((0, len(OBJECTIVES))))
    objective_tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, len(OBJECTIVES)), np.int64))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s if self.time_s > 0 else 0.0


@dataclass
class DeviceBatch:
    """A PackedBatch on the device, plus what the loss needs (computed on the host)."""

    input_ids: torch.Tensor     # int64 [R, L] (model vocabulary ids)
    position_ids: torch.Tensor  # int64 [R, L]
    attention: PackedAttention
    lora: Optional[LoRAStep]
    pred_index: torch.Tensor    # int64 [M]: flat positions r*L+t whose next token is labelled
    targets: torch.Tensor       # int64 [M]: the labels they predict
    groups: torch.Tensor        # int64 [M]: the (adapter, objective) pair of each: adapter * K + objective
    counts: np.ndarray          # int64 [N]: labelled tokens per adapter
    pair_counts: np.ndarray     # int64 [N, K]: labelled tokens per adapter and objective (K = len(OBJECTIVES))
    tokens: int
    positions: int


def label_objectives(batch: PackedBatch, flat_index: np.ndarray) -> np.ndarray:
    """int64: the objective id of the sample at each flat position ``r * L + t`` of ``batch``
    (``output``, 0, everywhere when the batch does not carry ``objective_ids``)."""
    if batch.objective_ids is None or not len(flat_index):
        return np.zeros(len(flat_index), np.int64)
    return np.asarray(batch.objective_ids, np.int64)[batch.sample_ids.reshape(-1)[flat_index]]


def loss_groups(batch: PackedBatch, pred: np.ndarray, n_adapters: int) -> tuple[np.ndarray, np.ndarray]:
    """``(groups, pair_counts)`` of the predicting positions ``pred`` (flat ``r * L + t``): each
    one's (task, objective) group, ``adapter * K + objective``, int64 [len(pred)], and the labelled
    tokens of each group, int64 [n_adapters, K]."""
    groups = batch.adapter_ids.reshape(-1)[pred].astype(np.int64) * K + label_objectives(batch, pred)
    pair_counts = np.bincount(groups, minlength=n_adapters * K).astype(np.int64).reshape(n_adapters, K)
    return groups, pair_counts


def objective_shares(pair_counts: np.ndarray) -> np.ndarray:
    """float32 [N, K]: each objective's share of its task's labelled tokens (0 for a task without
    any), the weights that make a task's loss the plain mean over its tokens."""
    return (pair_counts / np.maximum(pair_counts.sum(1), 1)[:, None]).astype(np.float32)


def check_batch(batch: PackedBatch, n_adapters: int) -> None:
    """Clear errors for a batch that breaks the PackedBatch conventions the trainer relies on."""
    shapes = {k: getattr(batch, k).shape for k in ("input_ids", "labels", "position_ids", "sample_ids", "adapter_ids")}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"PackedBatch arrays disagree in shape: {shapes}")
    a = batch.adapter_ids
    if a.size and (a.max() >= n_adapters or a.min() < -1):
        raise ValueError(f"PackedBatch adapter ids span {a.min()}..{a.max()}, the trainer has {n_adapters} adapters")
    lab = batch.labels[:, 1:]
    labelled = lab != T.IGNORE_INDEX
    if labelled.any():
        ids = batch.adapter_ids[:, :-1][labelled]
        if (ids < 0).any():
            raise ValueError("PackedBatch has a labelled token whose predicting position has no adapter (-1)")
        same = batch.sample_ids[:, :-1][labelled] == batch.sample_ids[:, 1:][labelled]
        if not same.all():
            r, t = np.argwhere(labelled & (batch.sample_ids[:, :-1] != batch.sample_ids[:, 1:]))[0]
            raise ValueError(f"PackedBatch row {r} position {t + 1}: a labelled token starts a sample "
                             f"(the first token of every sample must have label -100)")


def model_ids(batch: PackedBatch, cfg) -> tuple[np.ndarray, np.ndarray]:
    """int64 input ids and labels [R, L] of ``batch`` in the model's vocabulary (a full-vocabulary
    model maps each compact id to its own token id); ValueError for a sample longer than the
    model's sliding window, which the trainer does not apply."""
    ids = cfg.model_ids(batch.input_ids.astype(np.int64))
    labels = cfg.model_ids(batch.labels.astype(np.int64))
    if cfg.sliding_window is not None and batch.position_ids.size and batch.position_ids.max() >= cfg.sliding_window:
        raise ValueError(f"a sample is longer than the model's sliding window ({cfg.sliding_window} tokens), "
                         f"which this trainer does not apply")
    return ids, labels


def pair_counts_of(batch: PackedBatch, n_adapters: int) -> np.ndarray:
    """int64 [n_adapters, K]: the labelled tokens of each (task, objective) group of ``batch``,
    on the host (what :func:`prepare_batch` puts in ``pair_counts``)."""
    nxt = batch.labels[:, 1:] != T.IGNORE_INDEX
    L = batch.shape[1]
    r, t = np.nonzero(nxt)
    return loss_groups(batch, r.astype(np.int64) * L + t, n_adapters)[1]


def prepare_batch(batch: PackedBatch, model: CausalLM, lora: Optional[MultiLoRA], n_adapters: int,
                  attention: str = "auto", lora_path: str = "auto", training: bool = True) -> DeviceBatch:
    """Move a PackedBatch to the model's device and precompute the loss targets on the host."""
    check_batch(batch, n_adapters)
    cfg, dev = model.config, model.device
    R, L = batch.shape
    ids, labels = model_ids(batch, cfg)
    nxt = labels[:, 1:]
    pred = np.flatnonzero(np.concatenate([nxt != T.IGNORE_INDEX, np.zeros((R, 1), bool)], axis=1))
    targets = labels.reshape(-1)[pred + 1]
    groups, pair_counts = loss_groups(batch, pred, n_adapters)
    counts = pair_counts.sum(1)

    def t(a, dtype):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev, dtype=dtype, non_blocking=True)

    sample_ids = t(batch.sample_ids, torch.int32)
    att = PackedAttention(sample_ids, attention, cu_seqlens=batch.cu_seqlens, dtype=model.dtype)
    step = lora.begin(batch.adapter_ids, model.dtype, lora_path, training) if lora is not None else None
    return DeviceBatch(
        input_ids=t(ids, torch.long), position_ids=t(batch.position_ids, torch.long), attention=att, lora=step,
        pred_index=t(pred, torch.long), targets=t(targets, torch.long), groups=t(groups, torch.long),
        counts=counts, pair_counts=pair_counts, tokens=int((batch.sample_ids >= 0).sum()), positions=R * L)


def grouped_ce_torch(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, n_groups: int,
                     counts: np.ndarray) -> torch.Tensor:
    """Per-group mean cross entropy: logits [M, V], targets/groups int64 [M], counts [n] (host)
    -> fp32 [n] (0 for a group without tokens)."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(n_groups, device=logits.device, dtype=torch.float32).index_add_(0, groups, ce)
    return sums / torch.as_tensor(np.maximum(counts, 1), dtype=torch.float32, device=sums.device)


def _grouped_ce_triton(logits, targets, groups, n_groups, counts):
    from ..kernels.cross_entropy import grouped_cross_entropy

    return grouped_cross_entropy(logits, targets, groups, n_groups)


def objective_losses(model: CausalLM, hidden: torch.Tensor, b: DeviceBatch, n: int,
                     loss_impl: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_task fp32 [n], per_pair fp32 [n, K])``: each task's mean cross entropy over its own
    labelled tokens, and over those of each objective (0 where none). Only the labelled positions go
    through the LM head. The task's loss is its objectives' means weighted by their token shares,
    which is its plain mean (exactly so for a task with one objective), so mixing objectives in a
    batch changes nothing in training; the per-objective means only report."""
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, b.pred_index)
    tokens = b.lora.tokens if b.lora is not None else None
    adapters = tokens.adapter_ids.index_select(0, b.pred_index) if tokens is not None else None
    logits = model.logits(h, tokens, adapters)
    fn = with_fallback("triton", _grouped_ce_triton, grouped_ce_torch) if loss_impl == "triton" else grouped_ce_torch
    pair = fn(logits, b.targets, b.groups, n * K, b.pair_counts.reshape(-1)).view(n, K)
    share = torch.as_tensor(objective_shares(b.pair_counts), device=pair.device)
    return (pair * share).sum(1), pair


def task_losses(model: CausalLM, hidden: torch.Tensor, b: DeviceBatch, n: int, loss_impl: str = "torch") -> torch.Tensor:
    """fp32 [n]: each task's mean cross entropy over its own labelled tokens (0 where it has none)."""
    return objective_losses(model, hidden, b, n, loss_impl)[0]


def objective_stats(pair: torch.Tensor, pair_counts: np.ndarray) -> np.ndarray:
    """float64 [N, K] on the host: the per-objective means, nan where a task has no such token."""
    out = pair.detach().double().cpu().numpy()
    out[pair_counts == 0] = np.nan
    return out


__all__ = ["K", "StepStats", "DeviceBatch", "label_objectives", "loss_groups", "objective_shares", "check_batch",
           "model_ids", "pair_counts_of", "prepare_batch",
           "grouped_ce_torch", "objective_losses", "task_losses", "objective_stats"]
