"""The LoRA training step at fixed shapes, replayed as one CUDA graph.

A packed multi-adapter step of a 24-layer model is ~1,500 kernel launches (forward, backward,
clipping, AdamW). On an H100 the step measured ~0.3 s whether it held one sample or 29k tokens
(benchmarks/NOTES.md): the GPU waits on the host. A CUDA graph launches the whole step at once, but
it replays fixed addresses and fixed shapes, so :meth:`arcfast.train.trainer.Trainer.step` cannot be
captured as it stands: it gathers a data-dependent number of labelled positions, routes tokens on
the host, passes ``cu_seqlens`` of varying length to the attention and updates only the adapters
present in the batch through host-side index lists. :class:`StaticStep` computes the same update
with shapes that depend only on ``(rows, row_len, segment bucket)``:

- the loss covers every position: positions without a label get target -100 (cross entropy 0, no
  gradient), each labelled one adds into its (task, objective) sum, each sum is divided by its
  labelled-token count and weighted by its share of the task's tokens (device buffers) — the
  per-task mean of ``arcfast.train.loss.objective_losses``, with its per-objective means beside it. With the
  compact vocabulary (16 ids) the LM head over all positions costs a few microseconds;
- ``cu_seqlens`` is padded with zero-length segments to a power-of-two bucket (≥ 8) and varlen
  attention is told ``max_seqlen = row_len``, so one graph serves every batch of a bucket;
- rows are padded to a bucketed length (:func:`row_bucket`; a batch-1 recipe's row is as long as
  its sample), so nearby lengths share a graph;
- token routing happens on the device (:func:`arcfast.kernels.lora.lora_segments`, sort + search);
- AdamW is :func:`arcfast.train.optim.adamw_update`, the eager step's own update, on every adapter row
  with the per-row factors of :meth:`arcfast.train.optim.MultiAdamW.factors` held in device buffers: an
  adapter without tokens in the batch gets the neutral ones, which leave its weights and moments
  bit-for-bit unchanged (decay 1, update 0, moment blend 0), so the state equals the eager step's,
  which updates only the active rows.

Per step the host fills the buffers (a few small copies), replays the graph and reads the losses
and norms back: the one device sync, as in ``Trainer.step``. A graph is captured per shape key on
first use (two warm-up runs whose optimizer factors are all zero, so they change nothing, then the
capture); graphs share one memory pool.

``StaticStep(trainer, capture=False)`` runs the very same computation eagerly on any device: that
is what the tests hold equal to ``Trainer.step`` (tests/test_step_graph.py). Capture needs CUDA,
the Triton LoRA path, bf16 weights, no LoRA dropout, no activation checkpointing and a vocabulary of
at most ``MAX_VOCAB`` ids; :func:`graph_support` says which condition fails.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..arc import vocab as T
from ..lora.multi import LoRAStep
from ..lora.routing import triton_available
from ..model.attention import PackedAttention, varlen_available
from ..samples.batch import PackedBatch
from .loss import K, StepStats, check_batch, loss_groups, model_ids, objective_shares, objective_stats
from .optim import FACTORS, NEUTRAL, adamw_update, clip_per_adapter

MAX_VOCAB = 1024      # the all-positions LM head stays cheap up to here
MIN_SEGMENTS = 8      # smallest cu_seqlens bucket
MAX_GRAPHS = 32       # captured shape keys kept at once (oldest dropped beyond)
# Row lengths a captured step is padded up to: about 1.25x apart from 256 on (25% padding at most),
# then multiples of 2,048. A batch-1 recipe's rows are as long as its sample, so without buckets
# every new length would be a capture of its own.
ROW_BUCKETS = (256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192)


def row_bucket(row_len: int) -> int:
    """The row length a captured step runs ``row_len``-token rows at (>= row_len)."""
    for b in ROW_BUCKETS:
        if b >= row_len:
            return b
    return -(-int(row_len) // 2048) * 2048


def segment_bucket(n_segments: int) -> int:
    """The padded segment count of a batch with ``n_segments`` segments: a power of two >= 8."""
    return max(MIN_SEGMENTS, 1 << max(0, int(n_segments) - 1).bit_length())


def graph_support(trainer) -> Optional[str]:
    """None when ``trainer``'s step can be captured as a CUDA graph, else the reason it cannot."""
    m = trainer.model
    if m.device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if m.dtype != torch.bfloat16:
        return f"CUDA graphs of the training step run in bf16 (the model is {m.dtype})"
    if trainer.cfg.lora_path not in ("auto", "triton") or not triton_available():
        return "CUDA graphs need the Triton LoRA path (host-side routing otherwise)"
    if trainer.lora_cfg.dropout > 0:
        return "CUDA graphs are not used with LoRA dropout"
    if trainer.cfg.checkpoint or trainer.cfg.compile:
        return "CUDA graphs are not combined with activation checkpointing or torch.compile"
    if m.config.vocab_size > MAX_VOCAB:
        return f"CUDA graphs compute the LM head at every position: vocabulary {m.config.vocab_size} > {MAX_VOCAB}"
    if trainer.cfg.attention not in ("auto", "varlen"):
        return f"CUDA graphs use varlen attention (attention={trainer.cfg.attention!r})"

    if not varlen_available():
        return "CUDA graphs need varlen attention (torch.nn.attention.varlen or flash_attn)"
    return None


@dataclass
class _Buffers:
    """Device inputs of one shape key; refilled in place before every run."""

    input_ids: torch.Tensor     # int64 [R, L]
    position_ids: torch.Tensor  # int64 [R, L]
    sample_ids: torch.Tensor    # int32 [R, L]
    adapter_ids: torch.Tensor   # int32 [R * L]
    cu_seqlens: torch.Tensor    # int32 [S + 1], zero-length segments at the end
    targets: torch.Tensor       # int64 [R * L]: the label position t predicts, -100 where none
    groups: torch.Tensor        # int64 [R * L]: the (adapter, objective) pair of position t, adapter * K +
                                # objective (0 where no label)
    counts: torch.Tensor        # fp32 [N * K]: labelled tokens per pair, at least 1
    share: torch.Tensor         # fp32 [N, K]: each objective's share of its adapter's labelled tokens
    decay: torch.Tensor         # fp32 [N, 1]: 1 - lr * weight_decay (1 when inactive)
    m_blend: torch.Tensor       # fp32 [N, 1]: 1 - beta1 (0 when inactive)
    v_keep: torch.Tensor        # fp32 [N, 1]: beta2 (1 when inactive)
    v_blend: torch.Tensor       # fp32 [N, 1]: 1 - beta2 (0 when inactive)
    step_scale: torch.Tensor    # fp32 [N, 1]: -lr / (1 - beta1^t) (0 when inactive)
    bc2_sqrt: torch.Tensor      # fp32 [N, 1]: sqrt(1 - beta2^t) (1 when inactive)

    @classmethod
    def empty(cls, R: int, L: int, S: int, N: int, device) -> "_Buffers":
        def z(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(z((R, L), torch.long), z((R, L), torch.long), z((R, L), torch.int32), z(R * L, torch.int32),
                   z(S + 1, torch.int32), z(R * L, torch.long), z(R * L, torch.long), z(N * K, torch.float32),
                   z((N, K), torch.float32), *(z((N, 1), torch.float32) for _ in range(6)))


@dataclass
class _HostStep:
    """What the host computes for one step: buffer contents and the stats it reports."""

    arrays: dict
    counts: np.ndarray    # int64 [N]
    pair_counts: np.ndarray  # int64 [N, K]
    active: np.ndarray    # bool [N]
    lr: np.ndarray        # float64 [N]
    tokens: int
    positions: int


class StaticStep:
    """:meth:`arcfast.train.trainer.Trainer.step` at fixed shapes (see the module docstring).

    ``capture=None`` captures CUDA graphs when :func:`graph_support` allows (else runs eagerly and
    ``reason`` says why); ``True`` requires it (ValueError otherwise); ``False`` always runs eagerly.
    ``bucket_rows`` (default: when capturing) pads rows to :func:`row_bucket` lengths first
    (:meth:`arcfast.samples.batch.PackedBatch.widen`), so batches of nearby lengths share a graph.
    fp16 models are refused (their dynamic loss scale needs a host decision every step).
    """

    def __init__(self, trainer, capture: Optional[bool] = None, bucket_rows: Optional[bool] = None):
        if trainer.fp16:
            raise ValueError("StaticStep does not run fp16 models (dynamic loss scaling); use Trainer.step")
        why = graph_support(trainer)
        if capture and why:
            raise ValueError(f"cannot capture the training step: {why}")
        self.trainer = trainer
        self.capture = why is None if capture is None else bool(capture)
        self.reason = "CUDA graphs" if self.capture else f"eager ({why or 'capture off'})"
        self._buffers: dict = {}
        self._graphs: dict = {}
        self._pool = None
        self.captures = 0     # graphs captured so far
        self.bucket_rows = self.capture if bucket_rows is None else bool(bucket_rows)

    # -- host side -------------------------------------------------------------------------------
    def _host(self, batch: PackedBatch) -> _HostStep:
        tr = self.trainer
        N = tr.n_adapters
        check_batch(batch, N)
        R, L = batch.shape
        ids, labels = model_ids(batch, tr.model.config)
        nxt = np.concatenate([labels[:, 1:], np.full((R, 1), T.IGNORE_INDEX, np.int64)], axis=1).reshape(-1)
        pos = np.flatnonzero(nxt != T.IGNORE_INDEX)
        pair_of, pair_counts = loss_groups(batch, pos, N)
        groups = np.zeros(R * L, np.int64)
        groups[pos] = pair_of
        counts = pair_counts.sum(1)
        active = counts > 0
        lr = tr.step_lrs()
        cu = np.asarray(batch.cu_seqlens, np.int32)
        S = segment_bucket(len(cu) - 1)
        cu_pad = np.full(S + 1, R * L, np.int32)
        cu_pad[:len(cu)] = cu
        arrays = {
            "input_ids": ids, "position_ids": batch.position_ids.astype(np.int64),
            "sample_ids": batch.sample_ids.astype(np.int32), "adapter_ids": batch.adapter_ids.reshape(-1).astype(np.int32),
            "cu_seqlens": cu_pad, "targets": nxt, "groups": groups,
            "counts": np.maximum(pair_counts, 1).astype(np.float32).reshape(-1),
            "share": objective_shares(pair_counts),
            **tr.opt.factors(lr, active),
        }
        return _HostStep(arrays, counts, pair_counts, active, lr, int((batch.sample_ids >= 0).sum()), R * L)

    # -- the computation (eager, or recorded into a graph) ------------------------------------------
    def _compute(self, buf: _Buffers, attention, lora_step) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.trainer
        model, lora, opt = tr.model, tr.lora, tr.opt
        N = tr.n_adapters
        hidden = model(buf.input_ids, buf.position_ids, attention, lora_step)
        logits = model.logits(hidden.reshape(-1, hidden.shape[-1]), lora_step.tokens, buf.adapter_ids)
        ce = F.cross_entropy(logits.float(), buf.targets, ignore_index=T.IGNORE_INDEX, reduction="none")
        pair = (torch.zeros(N * K, device=ce.device, dtype=torch.float32).index_add_(0, buf.groups, ce)
                / buf.counts).view(N, K)
        losses = (pair * buf.share).sum(1)
        losses.sum().backward()
        grad = lora.weight.grad
        lora.weight.grad = None
        norms = clip_per_adapter(grad, tr.cfg.max_grad_norm)
        # MultiAdamW.step's update, every row with its own factors (neutral where it does not step).
        adamw_update(lora.weight, opt.m, opt.v, grad, {k: getattr(buf, k) for k in FACTORS}, opt.eps, opt.lr_scale)
        return losses.detach(), pair.detach(), norms

    def _eager_inputs(self, batch: PackedBatch, buf: _Buffers):
        tr = self.trainer
        att = PackedAttention(buf.sample_ids, tr.cfg.attention, cu_seqlens=batch.cu_seqlens, dtype=tr.model.dtype)
        step = tr.lora.begin(batch.adapter_ids, tr.model.dtype, tr.cfg.lora_path, training=True)
        return att, step

    def _graph_inputs(self, buf: _Buffers, L: int):
        tr = self.trainer
        att = PackedAttention.varlen_static(buf.sample_ids, buf.cu_seqlens, max_seqlen=L)
        step = LoRAStep(tr.lora, _DeviceRouting(buf.adapter_ids, tr.n_adapters), tr.model.dtype, "triton", True)
        return att, step

    # -- one step -------------------------------------------------------------------------------------
    def step(self, batch: PackedBatch):
        """One training step on ``batch``; returns the :class:`arcfast.train.loss.StepStats` that
        ``Trainer.step`` would."""

        t0 = time.perf_counter()
        tr = self.trainer
        tokens = batch.n_tokens
        if self.bucket_rows:
            batch = batch.widen(row_bucket(batch.shape[1]))
        h = self._host(batch)
        R, L = batch.shape
        key = (R, L, len(h.arrays["cu_seqlens"]) - 1)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffers.empty(R, L, key[2], tr.n_adapters, tr.model.device)
        self._fill(buf, h.arrays)
        if self.capture:
            try:
                losses, pair, norms = self._replay(key, buf, h.arrays)
            except torch.cuda.OutOfMemoryError:
                raise   # the batch is too big, not the capture at fault: the caller splits it
            except RuntimeError as e:
                if key in self._graphs or self.captures:
                    raise   # a graph that worked before: not a capture problem
                self._give_up(e)
                self._fill(buf, h.arrays)
        if not self.capture:
            att, lora_step = self._eager_inputs(batch, buf)
            losses, pair, norms = self._compute(buf, att, lora_step)
        tr.opt.steps[h.active] += 1
        loss_np = losses.double().cpu().numpy()   # the step's one device sync
        norms_np = norms.double().cpu().numpy()
        loss_np[~h.active] = np.nan
        return StepStats(loss=loss_np, label_tokens=h.counts, grad_norm=norms_np, lr=np.where(h.active, h.lr, 0.0),
                         tokens=tokens, positions=h.positions, time_s=time.perf_counter() - t0, stepped=h.active,
                         objective_loss=objective_stats(pair, h.pair_counts), objective_tokens=h.pair_counts)

    def _give_up(self, err: Exception) -> None:
        """The first capture failed (an op that cannot be captured on this stack): run eagerly
        from now on. The warm-ups changed no state (neutral optimizer factors), so nothing is lost."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._graphs.clear()
        self.trainer.lora.weight.grad = None
        self.capture = False
        self.reason = f"eager (capture failed: {type(err).__name__}: {str(err).splitlines()[0][:200]})"
        warnings.warn(f"arcfast: CUDA graph capture of the training step failed, running eagerly: {err}")

    @staticmethod
    def _fill(buf: _Buffers, arrays: dict) -> None:
        for name, a in arrays.items():
            dst = getattr(buf, name)
            dst.copy_(torch.from_numpy(np.ascontiguousarray(a)).view(dst.shape), non_blocking=False)

    def _replay(self, key, buf: _Buffers, arrays: dict):
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture_graph(key, buf, arrays)
        graph, out = entry
        graph.replay()
        return out

    def _capture_graph(self, key, buf: _Buffers, arrays: dict):
        tr = self.trainer
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        # Warm-up runs (Triton autotuning, cuBLAS workspaces, the allocator) with every optimizer
        # factor neutral, so they leave adapters and moments unchanged; then the real factors.
        neutral = dict(arrays)
        N = tr.n_adapters
        for name in FACTORS:
            neutral[name] = np.full((N, 1), NEUTRAL[name], np.float32)
        self._fill(buf, neutral)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._compute(buf, *self._graph_inputs(buf, key[1]))
        torch.cuda.current_stream().wait_stream(side)
        tr.lora.weight.grad = None
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._compute(buf, *self._graph_inputs(buf, key[1]))
        self._graphs[key] = (graph, out)
        self.captures += 1
        self._fill(buf, arrays)
        return graph, out


class _DeviceRouting:
    """The routing the Triton LoRA path reads: adapter ids on the device, nothing on the host."""

    def __init__(self, adapter_ids: torch.Tensor, n_adapters: int):
        self.adapter_ids = adapter_ids
        self.n_adapters = n_adapters


__all__ = ["StaticStep", "graph_support", "segment_bucket", "MAX_VOCAB"]
