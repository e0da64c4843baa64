"""The LoRA trainer: many tasks' adapters trained in one packed batch, each exactly as if alone.

    from arcfast.model.decoder import load_model
    from arcfast.lora.multi import LoRAConfig
    from arcfast.train.trainer import Trainer, TrainConfig

    model = load_model("qwen2.5-0.5b", device="cuda")
    trainer = Trainer(model, LoRAConfig(r=32, alpha=64), TrainConfig(lr=1e-4, steps=200), n_adapters=64)
    trainer.reset_adapters(range(64), seeds=task_seeds, total_steps=steps_per_task)
    for batch in batches:                      # arcfast.samples.batch.PackedBatch, adapter_ids = task slot
        stats = trainer.step(batch)            # StepStats: loss per adapter, tokens, time
    trainer.save_adapter(3, "out/adapters/<task id>")   # PEFT format

API
---
``Trainer(model, lora_cfg, train_cfg, n_adapters)``
    Freezes ``model`` and attaches ``n_adapters`` LoRA slots (:class:`arcfast.lora.multi.MultiLoRA`).
``reset_adapters(ids, seeds=None, total_steps=None)``
    Fresh adapters (A from each seed, B = 0), zero optimizer state and step count, and each slot's
    schedule length (default ``train_cfg.steps``). Call per task before training it.
``load_adapter(ids, adapter, total_steps=None)``
    Start slots from a pretrained adapter: a PEFT directory or ``{name: (A, B)}``.
``step(batch) -> StepStats``
    One optimizer step for every adapter that has labelled tokens in ``batch``; the others are
    left exactly as they were (no update, no step counted, no weight decay).
``eval_loss(batch) -> np.ndarray [n_adapters]``
    Per-adapter loss without training (nan where an adapter has no labelled token).
``export_adapter(i) -> dict`` / ``save_adapter(i, path)``
    Adapter ``i`` as a PEFT state dict / directory.
``state_dict()`` / ``load_state_dict(sd)``
    Adapters, optimizer state and schedules, for checkpoints and resume.

:class:`FullTrainer` (``FullTrainer(model, train_cfg)``) trains every weight of the model instead,
with the same ``step`` / ``eval_loss`` / ``state_dict`` surface and one slot (0); ``save_model``
writes a transformers checkpoint directory (``arcfast train --full``).

What "exactly as if alone" takes (each is a test in tests/test_trainer.py):
- attention never crosses samples (arcfast.model.attention), so packing changes no activation;
- each task's loss is normalised over its own labelled tokens and the total is the SUM over
  tasks, so the gradient reaching adapter a is the gradient of task a's own loss;
- gradient clipping is per adapter (a global norm would couple the tasks);
- AdamW runs per adapter: its own step count (bias correction), learning-rate schedule position
  and weight decay, and an adapter absent from a batch is not touched.

Loss convention: ``PackedBatch.labels`` are aligned with ``input_ids``; position t predicts
``labels[t + 1]`` (as Hugging Face causal LMs), and a task's loss is the mean over its labelled
tokens in the batch, i.e. the loss HF computes for that task's samples as one padded batch.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..arc import vocab as T
from ..budget.steps import StepAbandoned, StepGate
from ..lora.adapters import load_adapter_for, save_adapter, to_peft
from ..lora.multi import LoRAConfig, MultiLoRA
from ..model.checkpoint import save_model
from ..model.decoder import CausalLM
from ..runtime import fast_path, fast_path_of, out_of_memory, switch_off
from ..samples.batch import PackedBatch
from ..samples.sampling import OBJECTIVES
from .loss import DeviceBatch, StepStats, objective_losses, objective_stats, pair_counts_of, prepare_batch
from .optim import MultiAdamW, clip_per_adapter, lr_factor

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig:
    lr: float = 1e-4
    steps: int = 100                    # default schedule length of every adapter
    warmup_steps: Optional[int] = None  # None: ceil(warmup_ratio * steps)
    warmup_ratio: float = 0.0
    schedule: str = "cosine"            # cosine | linear | constant (after warm-up)
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0  # per adapter; None: no clipping
    attention: str = "auto"             # arcfast.model.attention impl: auto | sdpa | flex | varlen | loop
    lora_path: str = "auto"             # arcfast.lora.multi path: auto | torch | grouped | triton
    ops: str = "auto"                   # rmsnorm/swiglu/rope: auto | torch | triton
    loss: str = "auto"                  # per-task cross entropy: auto | torch | triton
    # torch.compile the blocks. Off by default: the graph is specialised on the batch shape and the
    # adapter routing, so it recompiles whenever they change (measured on the CPU: a 45 s recompile
    # per step of the tiny model); worth trying only for fixed-shape streams on CUDA.
    compile: bool = False
    checkpoint: bool = False            # recompute each block in backward (activation memory)
    # Replay each step as a CUDA graph (arcfast.train.graph): fixed shapes per (rows, row_len,
    # segment bucket), no host work between kernels. Used only where step_graph.graph_support
    # allows (CUDA, bf16, Triton LoRA path, compact vocabulary); elsewhere the step runs eagerly.
    cuda_graphs: bool = False
    init_loss_scale: float = 2.0 ** 16  # fp16 only: dynamic loss scaling
    # The learning rate of the adapters' own embedding / LM-head rows (LoRAConfig.tokens), on the
    # same schedule; None: ``lr``. (The ARChitects trained embeddings at a tenth of the LoRA's.)
    embedding_lr: Optional[float] = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        self.betas = tuple(self.betas)

    def warmup_for(self, total: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total)


def _kernels_available(*names: str) -> bool:
    """Whether the named Triton kernels can run: Triton importable and each kernel file present."""
    from ..kernels._common import HAS_TRITON

    return HAS_TRITON and all(importlib.util.find_spec(f"arcfast.kernels.{n}") is not None for n in names)


def _setup_model(model: CausalLM, cfg: TrainConfig) -> tuple[str, str]:
    """Resolve ``cfg.ops`` / ``cfg.loss`` ("auto": the Triton kernels on CUDA), put the ops into
    ``model`` (and compile its blocks when asked); returns ``(ops, loss_impl)``."""
    cuda = model.device.type == "cuda"
    triton = fast_path("triton")
    ops = cfg.ops if cfg.ops != "auto" else \
        ("triton" if cuda and triton and _kernels_available("rmsnorm", "swiglu", "rope") else "torch")
    loss = cfg.loss if cfg.loss != "auto" else \
        ("triton" if cuda and triton and _kernels_available("cross_entropy") else "torch")
    if not triton:
        ops, loss = "torch", "torch"
    model.set_ops(ops)
    if cfg.compile:
        model.compile_blocks(True)
    return ops, loss


def token_lr_scale(lora: MultiLoRA, cfg: TrainConfig) -> Optional[torch.Tensor]:
    """fp32 [P]: the learning-rate factor of each column of an adapter's row, ``embedding_lr / lr``
    on its token rows and 1 elsewhere; None where every column runs at ``lr``."""
    if not lora.tables or cfg.embedding_lr is None or cfg.embedding_lr == cfg.lr:
        return None
    if cfg.lr <= 0:
        raise ValueError(f"embedding_lr {cfg.embedding_lr} needs a positive lr (the schedule it follows), got {cfg.lr}")
    scale = torch.ones(lora.size, dtype=torch.float32)
    for t in lora.table_slots():
        scale[t.off:t.off + t.n_rows * t.dim] = cfg.embedding_lr / cfg.lr
    return scale


def plain_retry(trainer, step, batch: PackedBatch, gate: Optional[StepGate]) -> StepStats:
    """``step(batch, gate)``; where it raises inside a fast path (a Triton kernel's backward that
    does not compile, a graph that cannot be captured), that path is switched off for the run
    (:mod:`arcfast.runtime`), the step's gradient dropped, the trainer moved to the plain path, and
    the step run again. Any other error, and one of a path already off, is raised as it is."""
    try:
        return step(batch, gate)
    except StepAbandoned:
        raise
    except Exception as e:
        name = fast_path_of(e)
        if name is None or out_of_memory(e) or not switch_off(name, e):
            raise
    trainer._drop_gradient()
    if not fast_path("triton"):
        trainer.model.set_ops("torch")
        trainer.ops, trainer.loss_impl = "torch", "torch"
    if not fast_path("cuda_graphs") and getattr(trainer, "_graphed", None) is not None:
        trainer._graphs_off()
    return step(batch, gate)


# ----------------------------------------------------------------------------------------------
# The trainer

class Trainer:
    """Trains ``n_adapters`` LoRA adapters of a frozen ``model`` (see the module docstring)."""

    def __init__(self, model: CausalLM, lora_cfg: LoRAConfig, train_cfg: TrainConfig, n_adapters: int):
        self.model, self.lora_cfg, self.cfg, self.n_adapters = model, lora_cfg, train_cfg, n_adapters
        model.requires_grad_(False)
        self.lora = MultiLoRA(model, lora_cfg, n_adapters)
        self.opt = MultiAdamW(self.lora.weight, train_cfg.betas, train_cfg.eps, train_cfg.weight_decay,
                              lr_scale=token_lr_scale(self.lora, train_cfg))
        self.total_steps = np.full(n_adapters, train_cfg.steps, dtype=np.int64)
        self.ops, self.loss_impl = _setup_model(model, train_cfg)
        self.fp16 = model.dtype == torch.float16
        self.loss_scale = train_cfg.init_loss_scale if self.fp16 else 1.0
        self._good_steps = 0
        self.lora.reset(range(n_adapters))
        self._graphed = None
        self._graph_refusal = "off"
        if train_cfg.cuda_graphs and fast_path("cuda_graphs"):
            from .graph import StaticStep, graph_support

            self._graph_refusal = graph_support(self)
            if self._graph_refusal is None:
                self._graphed = StaticStep(self, capture=True)

    @property
    def graph_status(self) -> str:
        """How steps run: "CUDA graphs", or why not (``TrainConfig.cuda_graphs`` off, unsupported
        here, or a capture that failed and fell back to eager steps)."""
        return self._graphed.reason if self._graphed is not None else self._graph_refusal

    # -- adapters ---------------------------------------------------------------------------------
    def reset_adapters(self, ids: Sequence[int], seeds: Optional[Sequence[int]] = None,
                       total_steps: Union[int, Sequence[int], None] = None) -> None:
        """Fresh adapters in slots ``ids`` (A drawn from ``seeds``, default the slot ids; B zero),
        zero optimizer state, and their schedule lengths (default ``train_cfg.steps``)."""
        ids = [int(i) for i in ids]
        self.lora.reset(ids, seeds)
        self.opt.reset(ids)
        self.set_total_steps(ids, self.cfg.steps if total_steps is None else total_steps)

    def load_adapter(self, ids: Sequence[int], adapter, total_steps=None) -> None:
        """Start slots ``ids`` from a pretrained adapter (PEFT directory or ``{name: (A, B)}``),
        with fresh optimizer state. A different alpha is folded into B; the rank must match."""
        tensors = load_adapter_for(adapter, self.lora_cfg, self.lora.peft_token_ids()) \
            if isinstance(adapter, (str, Path)) else adapter
        ids = [int(i) for i in ids]
        for i in ids:
            self.lora.set(i, tensors)
        self.opt.reset(ids)
        self.set_total_steps(ids, self.cfg.steps if total_steps is None else total_steps)

    def set_total_steps(self, ids: Sequence[int], steps: Union[int, Sequence[int]]) -> None:
        """Schedule length of slots ``ids`` (the planner may change it while a task trains)."""
        self.total_steps[list(ids)] = steps

    def export_adapter(self, i: int, dtype: Optional[torch.dtype] = None) -> dict:
        """Adapter ``i`` as a PEFT state dict (keys ``base_model.model.<layer>.lora_A.weight``...)."""
        return to_peft(self.lora.get(i), dtype, self.lora.peft_token_ids())

    def save_adapter(self, i: int, path, base_model: str = "", meta: Optional[dict] = None,
                     dtype: Optional[torch.dtype] = None) -> Path:
        """Write adapter ``i`` as a PEFT directory (adapter_config.json + adapter_model.safetensors),
        in ``dtype`` (default fp32, the master weights)."""
        return save_adapter(path, self.lora.get(i), self.lora_cfg, base_model=base_model or self.model.config.name,
                            dtype=dtype, meta=meta, token_ids=self.lora.peft_token_ids())

    # -- steps --------------------------------------------------------------------------------------
    def _forward_losses(self, b: DeviceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-task losses [N], per-(task, objective) losses [N, K]) of :func:`objective_losses`."""
        hidden = self.model(b.input_ids, b.position_ids, b.attention, b.lora, checkpoint=self.cfg.checkpoint)
        return objective_losses(self.model, hidden, b, self.n_adapters, self.loss_impl)

    def step(self, batch: PackedBatch, gate: Optional[StepGate] = None) -> StepStats:
        """One training step on ``batch`` (adapter_ids = slot of each token's task); a step that
        raises inside a fast path is redone on the plain path, that path off for the run
        (:func:`plain_retry`).

        With a ``gate`` (:class:`arcfast.budget.steps.StepGate`) the step runs as micro-batches of whole
        samples (gradients accumulated, each piece's loss weighted by its share of each task's
        labelled tokens: the update is the whole batch's) sized by ``gate.piece_tokens()``; before
        each piece the gate is asked whether the rest of the step still fits, and when it does not
        the step is abandoned: its gradient dropped, nothing updated, :class:`StepAbandoned` raised.
        A graph-replayed or compiled step runs whole, once the gate admits all of it."""
        return plain_retry(self, self._step, batch, gate)

    def _step(self, batch: PackedBatch, gate: Optional[StepGate] = None) -> StepStats:
        if self._graphed is not None or (gate is not None and self.cfg.compile):
            return self._whole_step(batch, gate)
        t0 = time.perf_counter()
        if gate is not None:
            losses, pair, counts, pair_counts = self._accumulate(batch.trimmed(), gate)
            return self._update(losses, pair, counts, pair_counts, batch, batch.n_tokens, t0)
        # Rows cut to what they hold, except for a compiled model, which is specialised on shapes.
        b = prepare_batch(batch if self.cfg.compile else batch.trimmed(), self.model, self.lora, self.n_adapters,
                          self.cfg.attention, self.cfg.lora_path)
        losses, pair = self._forward_losses(b)
        (losses.sum() * self.loss_scale).backward()
        return self._update(losses, pair, b.counts, b.pair_counts, batch, b.tokens, t0)

    def _whole_step(self, batch: PackedBatch, gate: Optional[StepGate]) -> StepStats:
        """A step that cannot be cut (replayed graph, compiled model): admitted whole or not at all."""
        lengths = batch.sample_lengths()
        if gate is not None and not gate.admit(lengths):
            raise StepAbandoned(0, int(lengths.sum()), 0.0, gate.rates.seconds(lengths), gate.left())
        stats = self._graph_step(batch) if self._graphed is not None else self._step(batch)
        if gate is not None:
            gate.record(stats.time_s, lengths)
        return stats

    def _graph_step(self, batch: PackedBatch) -> StepStats:
        """The replayed step; where capturing or replaying it raises, CUDA graphs go off for the run
        (arcfast.runtime) and the step runs eagerly."""
        try:
            return self._graphed.step(batch)
        except Exception as e:
            if out_of_memory(e) or fast_path_of(e) not in (None, "cuda_graphs") or not switch_off("cuda_graphs", e):
                raise
        self._drop_gradient()
        self._graphs_off()
        return self._step(batch)

    def _graphs_off(self) -> None:
        """Eager steps from now on: CUDA graphs were switched off (arcfast.runtime)."""
        self._graphed, self._graph_refusal = None, "off: the capture failed"

    def _accumulate(self, batch: PackedBatch, gate: StepGate):
        """Forward and backward of ``batch`` in micro-batches through ``gate`` (see :meth:`step`):
        (per-task losses [N], per-pair losses [N, K], counts [N], pair counts [N, K]) of the whole
        batch, its gradient accumulated where backward puts it (dropped if the step is abandoned)."""
        pair_counts = pair_counts_of(batch, self.n_adapters)
        counts = pair_counts.sum(1)
        dev = self.model.device
        # A piece's per-pair means times its counts are its sums; over the whole batch's counts,
        # they add up to the whole batch's means.
        whole_task = torch.as_tensor(np.maximum(counts, 1), dtype=torch.float32, device=dev)
        whole_pair = torch.as_tensor(np.maximum(pair_counts, 1), dtype=torch.float32, device=dev)
        sums = torch.zeros(pair_counts.shape, dtype=torch.float32, device=dev)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
        try:
            for piece in gate.pieces_of(batch, probe=self._probe, sync=sync):
                b = self._prepare(piece)
                _, pair = self._forward_losses(b)
                part = pair * torch.as_tensor(b.pair_counts, dtype=torch.float32, device=dev)
                ((part.sum(1) / whole_task).sum() * self.loss_scale).backward()
                sums += part.detach()
        except BaseException:
            self._drop_gradient()   # nothing of an abandoned (or failed) step is applied
            raise
        return sums.sum(1) / whole_task, sums / whole_pair, counts, pair_counts

    def _prepare(self, batch: PackedBatch, training: bool = True):
        return prepare_batch(batch, self.model, self.lora, self.n_adapters, self.cfg.attention, self.cfg.lora_path,
                             training=training)

    def _drop_gradient(self) -> None:
        self.lora.weight.grad = None

    def _probe(self, batch: PackedBatch) -> None:
        """Forward and backward of ``batch`` for its time only (a step gate's calibration, run
        before a step's first piece, when there is no gradient yet): the gradient is dropped."""
        self._forward_losses(self._prepare(batch))[0].sum().backward()
        self._drop_gradient()

    def _update(self, losses, pair, counts, pair_counts, batch, tokens, t0) -> StepStats:
        """The optimizer part of a step whose gradient is in ``lora.weight.grad``."""
        active = counts > 0

        grad = self.lora.weight.grad
        self.lora.weight.grad = None
        if self.loss_scale != 1.0:
            grad.div_(self.loss_scale)
        norms = clip_per_adapter(grad, self.cfg.max_grad_norm)
        if self.fp16:
            active = self._update_loss_scale(norms, active)
        lr = self.step_lrs()
        self.opt.step(grad, lr, active)

        loss_np = losses.detach().double().cpu().numpy()   # the step's one device sync
        norms_np = norms.double().cpu().numpy()
        loss_np[~(counts > 0)] = np.nan
        return StepStats(loss=loss_np, label_tokens=counts, grad_norm=norms_np, lr=np.where(active, lr, 0.0),
                         # the batch's positions as given (its fill), whatever the trim computed
                         tokens=tokens, positions=int(np.prod(batch.shape)), time_s=time.perf_counter() - t0,
                         stepped=active, objective_loss=objective_stats(pair, pair_counts),
                         objective_tokens=pair_counts)

    def step_lrs(self) -> np.ndarray:
        """float64 [N]: each adapter's learning rate for its next step (its schedule position)."""
        warm = np.array([self.cfg.warmup_for(int(n)) for n in self.total_steps])
        return self.cfg.lr * lr_factor(self.opt.steps, self.total_steps, warm, self.cfg.schedule)

    def _update_loss_scale(self, norms: torch.Tensor, active: np.ndarray) -> np.ndarray:
        """fp16: adapters whose gradient overflowed skip this step; the scale halves on overflow and
        doubles after 2000 clean steps (torch.amp.GradScaler's policy, per adapter for the skip)."""
        finite = torch.isfinite(norms).cpu().numpy()
        if not finite[active].all():
            self.loss_scale /= 2.0
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= 2000:
                self.loss_scale *= 2.0
                self._good_steps = 0
        return active & finite

    @torch.no_grad()
    def eval_loss(self, batch: PackedBatch) -> np.ndarray:
        """Per-adapter mean loss [N] on ``batch`` without training (nan where no labelled token)."""
        b = prepare_batch(batch, self.model, self.lora, self.n_adapters, self.cfg.attention, self.cfg.lora_path,
                          training=False)
        out = self._forward_losses(b)[0].double().cpu().numpy()
        out[b.counts == 0] = np.nan
        return out

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"lora": self.lora.weight.detach().clone(), "opt": self.opt.state_dict(),
                "total_steps": torch.from_numpy(self.total_steps.copy()), "loss_scale": self.loss_scale}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            self.lora.weight.copy_(sd["lora"])
        self.opt.load_state_dict(sd["opt"])
        self.total_steps[:] = sd["total_steps"].numpy()
        self.loss_scale = float(sd["loss_scale"])


# ----------------------------------------------------------------------------------------------
# Full fine-tuning: every weight of the model, one optimizer

def _decays(p: torch.Tensor) -> bool:
    """Weight decay for matrices only: norm weights and biases (the 1-D parameters) take none."""
    return p.dim() >= 2


class FullTrainer:
    """Trains every weight of ``model`` (embedding and LM head included: 16 rows each with the
    compact vocabulary) on packed batches; the surface of :class:`Trainer` with one slot, 0.

        trainer = FullTrainer(load_model("/ckpt", device="cuda"), TrainConfig(lr=1e-5, steps=2000))
        stats = trainer.step(batch)            # every labelled token trains the model (adapter id 0)
        trainer.save_model("out/model")        # a transformers checkpoint directory

    ``step(batch) -> StepStats``: per-adapter arrays of length 1. The loss is the mean cross entropy
    over the batch's labelled tokens (:func:`task_losses` with one group), so a packed batch trains
    exactly as its samples would as one padded batch. Then, in this order: one global gradient
    norm over all parameters (clipped to ``max_grad_norm`` with ``clip_grad_norm_``'s formula),
    AdamW (``torch.optim.AdamW``, decoupled weight decay) at ``lr * lr_factor(...)`` (the warm-up and
    schedule of :class:`TrainConfig`). Weight decay applies to the matrices only (projections,
    embedding, LM head); norm weights and biases take none. A batch without labelled tokens does
    not step (no update, no decay, no schedule step).

    Precision: the optimizer holds fp32 master weights and fp32 AdamW moments. For a bf16 / fp16
    model the model's gradients are taken in fp32, the master weights stepped and copied back
    (rounded) into the model after every step, so updates smaller than the model dtype's
    resolution still add up. fp16 uses :class:`Trainer`'s dynamic loss scaling: a step
    whose gradient overflowed is skipped and the scale halves; it doubles after 2000 clean steps.

    ``eval_loss(batch) -> np.ndarray [1]`` (nan without labelled tokens); ``state_dict()`` /
    ``load_state_dict()``: master weights, AdamW state, step count, schedule length, loss scale;
    ``save_model(path)``: :func:`arcfast.model.checkpoint.save_model` (config, safetensors, compact tokenizer).
    """

    n_adapters = 1

    def __init__(self, model: CausalLM, train_cfg: TrainConfig):
        self.model, self.cfg = model, train_cfg
        model.requires_grad_(True)
        self.names, self.params = zip(*model.named_parameters())   # tied weights appear once
        self.mixed = model.dtype != torch.float32
        if self.mixed:
            self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        else:
            self.master = list(self.params)
        decay = [m for p, m in zip(self.params, self.master) if _decays(p)]
        plain = [m for p, m in zip(self.params, self.master) if not _decays(p)]
        cuda = model.device.type == "cuda"
        # fused: one kernel for all tensors on CUDA (fp32 masters qualify); the same update rule.
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}],
            lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps, fused=True if cuda else None)
        self.steps = 0                   # optimizer steps taken: the schedule position
        self.total_steps = np.array([train_cfg.steps], dtype=np.int64)
        self.ops, self.loss_impl = _setup_model(model, train_cfg)
        self.fp16 = model.dtype == torch.float16
        self.loss_scale = train_cfg.init_loss_scale if self.fp16 else 1.0
        self._good_steps = 0

    # The LoRA trainer's forward (checkpointed or not), micro-batched step and fp16 loss-scale
    # policy, shared as they are.
    _forward_losses = Trainer._forward_losses
    _accumulate = Trainer._accumulate
    _probe = Trainer._probe
    _update_loss_scale = Trainer._update_loss_scale

    def _prepare(self, batch: PackedBatch, training: bool = True):
        return prepare_batch(batch, self.model, None, 1, self.cfg.attention, training=training)

    def _drop_gradient(self) -> None:
        for p in self.params:
            p.grad = None

    def set_total_steps(self, ids: Sequence[int], steps: Union[int, Sequence[int]]) -> None:
        """Schedule length (``ids`` must be ``[0]``, the one slot: :class:`Trainer`'s signature)."""
        if [int(i) for i in ids] != [0]:
            raise ValueError(f"FullTrainer has one slot (0), got {list(ids)}")
        self.total_steps[:] = np.ravel(steps)[:1]

    def next_lr(self) -> float:
        """The learning rate of the next step."""
        total = int(self.total_steps[0])
        return float(self.cfg.lr * lr_factor(self.steps, total, self.cfg.warmup_for(total), self.cfg.schedule))

    def step(self, batch: PackedBatch, gate: Optional[StepGate] = None) -> StepStats:
        """One optimizer step on ``batch`` (adapter_ids 0 on every real token, -1 on padding);
        with a ``gate``, in micro-batches as :meth:`Trainer.step` (the same update when all run,
        :class:`StepAbandoned` and nothing applied when the gate refuses one)."""
        return plain_retry(self, self._step, batch, gate)

    def _step(self, batch: PackedBatch, gate: Optional[StepGate] = None) -> StepStats:
        t0 = time.perf_counter()
        if gate is None:
            b = self._prepare(batch)
            counts, pair_counts, tokens, positions = b.counts, b.pair_counts, b.tokens, b.positions
        else:
            pair_counts = pair_counts_of(batch, 1)
            counts, tokens, positions = pair_counts.sum(1), batch.n_tokens, int(np.prod(batch.shape))
        if counts[0] == 0:
            return StepStats(loss=np.full(1, np.nan), label_tokens=counts, grad_norm=np.zeros(1), lr=np.zeros(1),
                             tokens=tokens, positions=positions, time_s=time.perf_counter() - t0,
                             stepped=np.zeros(1, bool), objective_loss=np.full((1, len(OBJECTIVES)), np.nan),
                             objective_tokens=pair_counts)
        if gate is None:
            losses, pair = self._forward_losses(b)
            (losses.sum() * self.loss_scale).backward()
        else:
            losses, pair, _, _ = self._accumulate(batch, gate)

        grads = self._master_grads()
        if self.loss_scale != 1.0:
            torch._foreach_div_(grads, self.loss_scale)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        active = np.ones(1, bool)
        if self.fp16:
            active = self._update_loss_scale(norm[None], active)
        lr = self.next_lr()
        if active[0]:
            if self.cfg.max_grad_norm is not None:
                # clip_grad_norm_'s formula (torch >= 2.4; clip_grads_with_norm_ is 2.6+).
                torch._foreach_mul_(grads, (self.cfg.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.opt.step()
            self.steps += 1
            if self.mixed:
                with torch.no_grad():
                    torch._foreach_copy_(list(self.params), self.master)
        self.opt.zero_grad(set_to_none=True)

        loss_np = losses.detach().double().cpu().numpy()   # the step's one device sync
        return StepStats(loss=loss_np, label_tokens=counts, grad_norm=np.array([float(norm)]),
                         lr=np.where(active, lr, 0.0), tokens=tokens, positions=positions,
                         time_s=time.perf_counter() - t0, stepped=active,
                         objective_loss=objective_stats(pair, pair_counts), objective_tokens=pair_counts)

    def _master_grads(self) -> list:
        """fp32 gradients of the master weights (moved off the model's parameters when mixed). A
        parameter without a gradient is left out, and torch's AdamW then leaves it alone."""
        if self.mixed:
            for p, m in zip(self.params, self.master):
                m.grad = p.grad.float() if p.grad is not None else None
                p.grad = None
        return [m.grad for m in self.master if m.grad is not None]

    @torch.no_grad()
    def eval_loss(self, batch: PackedBatch) -> np.ndarray:
        """Mean loss [1] over ``batch``'s labelled tokens without training (nan if none)."""
        b = prepare_batch(batch, self.model, None, 1, self.cfg.attention, training=False)
        out = self._forward_losses(b)[0].double().cpu().numpy()
        out[b.counts == 0] = np.nan
        return out

    # -- weights and checkpoints ---------------------------------------------------------------------
    def save_model(self, path) -> Path:
        """Write the model as a transformers checkpoint directory (see :func:`arcfast.model.checkpoint.save_model`)."""
        return save_model(self.model, path)

    def state_dict(self) -> dict:
        """Master weights (fp32 CPU copies, by parameter name), AdamW state (torch's state dict: its
        moments are the live tensors, save them before the next step), step, schedule, loss scale."""
        # CPU copies: a device clone would double the masters' GPU memory while a checkpoint is saved.
        return {"weights": {n: m.detach().to("cpu", copy=True) for n, m in zip(self.names, self.master)},
                "opt": self.opt.state_dict(), "steps": self.steps,
                "total_steps": torch.from_numpy(self.total_steps.copy()),
                "loss_scale": self.loss_scale, "good_steps": self._good_steps}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        w = sd["weights"]
        if set(w) != set(self.names):
            missing, extra = sorted(set(self.names) - set(w)), sorted(set(w) - set(self.names))
            raise ValueError(f"FullTrainer state does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        for n, p, m in zip(self.names, self.params, self.master):
            if tuple(w[n].shape) != tuple(p.shape):
                raise ValueError(f"FullTrainer state: {n} is {tuple(w[n].shape)}, the model's is {tuple(p.shape)}")
            m.copy_(w[n])
            if self.mixed:
                p.copy_(m)
        self.opt.load_state_dict(sd["opt"])
        self.steps = int(sd["steps"])
        self.total_steps[:] = sd["total_steps"].numpy()
        self.loss_scale = float(sd["loss_scale"])
        self._good_steps = int(sd.get("good_steps", 0))


# ----------------------------------------------------------------------------------------------
# Small packing helpers (tests, demos, the hf/unsloth backends; arcfast.samples.packing is the fast path)

def pack_samples(samples: Sequence[tuple], row_len: int, rows: Optional[int] = None) -> PackedBatch:
    """Pack ``(input_ids, labels, adapter_id)`` samples (1-D int arrays of equal length each) into
    a PackedBatch, first fit in the given order; ``rows`` fixes the row count (error if they do not
    fit). Every sample's first label must be -100 (see arcfast.samples.batch)."""
    placed: list[list[int]] = []
    used: list[int] = []
    for k, (ids, _, _) in enumerate(samples):
        n = len(ids)
        if n > row_len:
            raise ValueError(f"sample {k} has {n} tokens, longer than a row ({row_len})")
        for r in range(len(used)):
            if used[r] + n <= row_len:
                placed[r].append(k)
                used[r] += n
                break
        else:
            placed.append([k])
            used.append(n)
    R = rows if rows is not None else max(1, len(placed))
    if len(placed) > R:
        raise ValueError(f"{len(samples)} samples need {len(placed)} rows of {row_len}, only {R} allowed")
    shape = (R, row_len)
    input_ids = np.full(shape, T.PAD, np.int32)
    labels = np.full(shape, T.IGNORE_INDEX, np.int32)
    position_ids = np.zeros(shape, np.int32)
    sample_ids = np.full(shape, -1, np.int32)
    adapter_ids = np.full(shape, -1, np.int32)
    cu = [0]
    sid = 0
    for r in range(R):
        pos = 0
        for k in (placed[r] if r < len(placed) else []):
            ids, lab, a = samples[k]
            n = len(ids)
            if len(lab) != n:
                raise ValueError(f"sample {k}: {n} input ids but {len(lab)} labels")
            if n and lab[0] != T.IGNORE_INDEX:
                raise ValueError(f"sample {k}: its first label must be {T.IGNORE_INDEX}")
            sl = slice(pos, pos + n)
            input_ids[r, sl], labels[r, sl] = ids, lab
            position_ids[r, sl] = np.arange(n)
            sample_ids[r, sl], adapter_ids[r, sl] = sid, a
            sid += 1
            pos += n
            cu.append(r * row_len + pos)
        if pos < row_len:
            cu.append((r + 1) * row_len)
    return PackedBatch(input_ids, labels, position_ids, sample_ids, adapter_ids, np.asarray(cu, np.int32))


def unpack_samples(batch: PackedBatch) -> list[tuple]:
    """The samples of a PackedBatch in sample-id order: ``(input_ids, labels, adapter_id)``."""
    out = []
    for s in range(batch.n_samples):
        r, cols = np.nonzero(batch.sample_ids == s)
        out.append((batch.input_ids[r, cols].copy(), batch.labels[r, cols].copy(), int(batch.adapter_ids[r[0], cols[0]])))
    return out
