"""Multi-adapter LoRA: N adapters of every targeted projection, each token through its own.

For a targeted layer ``y = x W^T + b`` and token t of adapter a = adapter_ids[t]:

    y_t = x_t W^T + b + scaling * (x_t A[a]) B[a]          (nothing added when a == -1)

with A [N, din, r], B [N, r, dout], ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with ``rslora``
(rank-stabilised LoRA, PEFT's ``use_rslora``: the update keeps its size as r grows, for high ranks
such as 256). A is initialised uniform in ±1/sqrt(din) (PEFT's kaiming-uniform with a=sqrt(5)), B
to zero, so a fresh adapter starts as the base model.

Storage: every adapter's A and B of every layer live in ONE fp32 parameter ``weight [N, P]``,
adapter-major (row a is adapter a's P numbers). Per-layer A/B are views of it, so per-adapter
operations of the optimizer (grad norm, clipping, AdamW with per-adapter step counts) are a few
ops on [N, P] whatever the number of layers.

Per step, :meth:`MultiLoRA.begin` makes a :class:`LoRAStep`: contiguous compute-dtype copies of
every layer's A and B (one autograd node whose backward fills one [N, P] gradient) and the
token->adapter routing, which the model's ``Linear`` layers call into. Paths for the delta:
``"torch"`` (tokens grouped by adapter, one matmul pair per adapter present: the reference),
``"grouped"`` (``torch._grouped_mm``, CUDA bf16), ``"triton"`` (arcfast.kernels.lora).

Token rows (``LoRAConfig.tokens``): an adapter may also carry its own rows of the embedding
(``"embed_tokens"``) and of the LM head (``"lm_head"``), for the ids arcfast uses (the whole
compact vocabulary, 16-20 rows; a full-vocabulary model's compact ids). They REPLACE the model's
rows for that adapter's tokens (PEFT's ``modules_to_save`` and trainable tokens do the same), start
as copies of the model's rows, and sit in the same flat row as the adapter's A and B, after them,
so clipping, AdamW and checkpoints treat them as more of the adapter. A tied head gets rows of its
own (PEFT's whole-module copies), except where the rows are part of a larger vocabulary (PEFT's
trainable tokens), which follow PEFT's tying: the head reads the embedding's rows (one table).
:class:`TokenStep` applies them in a forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.decoder import Linear
from ..runtime import fast_path, out_of_memory, switch_off
from .routing import Routing, grouped_available, lora_delta_grouped, lora_delta_torch, triton_available

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PATHS = ("auto", "torch", "grouped", "triton")
_FAST = {"grouped": "grouped_gemm", "triton": "triton"}   # path -> its switch in arcfast.runtime
# Trainable token rows: PEFT's module name -> the module's path in arcfast.model.decoder.CausalLM (the key of
# its rows in an adapter's tensors, as a LoRA layer's path is).
TOKEN_MODULES = {"embed_tokens": "model.embed_tokens", "lm_head": "lm_head"}


@dataclass
class LoRAConfig:
    r: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    targets: tuple = DEFAULT_TARGETS   # last component of the module name
    rslora: bool = False               # scaling alpha / sqrt(r) instead of alpha / r
    tokens: tuple = ()                 # "embed_tokens" / "lm_head": their rows trained per adapter

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if isinstance(self.tokens, str):
            self.tokens = (self.tokens,)
        bad = [t for t in self.tokens if t not in TOKEN_MODULES]
        if bad:
            raise ValueError(f"LoRA tokens must be among {tuple(TOKEN_MODULES)}, got {bad[0]!r}")
        self.tokens = tuple(t for t in TOKEN_MODULES if t in self.tokens)   # one order, no repeats
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.r!r}")
        self.r = int(self.r)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.number)) \
                or not math.isfinite(self.alpha):
            raise ValueError(f"LoRA alpha must be a finite number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.rslora, (bool, np.bool_)):
            raise ValueError(f"LoRA rslora must be True or False, got {self.rslora!r}")
        self.rslora = bool(self.rslora)

    @property
    def scaling(self) -> float:
        """The factor of the delta: ``alpha / r``, or ``alpha / sqrt(r)`` with ``rslora`` (PEFT's
        ``use_rslora``). Every user of an adapter takes it from here, never from alpha and r."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


def parse_tokens(text: str) -> tuple:
    """A command line's token modules: ``"none"``, ``"both"``, or a comma list of
    ``embed_tokens`` / ``lm_head`` (also ``embed`` / ``head``) -> :attr:`LoRAConfig.tokens`."""
    alias = {"embed": "embed_tokens", "head": "lm_head", "embed_tokens": "embed_tokens", "lm_head": "lm_head"}
    text = str(text).strip()
    if text in ("", "none"):
        return ()
    if text == "both":
        return tuple(TOKEN_MODULES)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in alias]
    if bad:
        raise ValueError(f"token modules are embed_tokens, lm_head, both or none; not {bad[0]!r}")
    return tuple(t for t in TOKEN_MODULES if t in {alias[p] for p in parts})


@dataclass
class Slot:
    """Where one layer's A and B sit in a row of the flat weight."""

    name: str
    din: int
    dout: int
    off_a: int
    off_b: int


@dataclass
class TokenSlot:
    """Where one module's trained token rows sit in a row of the flat weight: ``n_rows x dim``
    numbers from ``off`` (row k: the module's row of model id ``MultiLoRA.token_rows[k]``)."""

    module: str     # "embed_tokens" | "lm_head"
    path: str       # its path in the model: the key of its rows in an adapter's tensors
    off: int
    n_rows: int
    dim: int


# ----------------------------------------------------------------------------------------------
# Routing: which tokens go through which adapter


# ----------------------------------------------------------------------------------------------
# Delta paths


# ----------------------------------------------------------------------------------------------
# The adapters

class MultiLoRA(nn.Module):
    """N LoRA adapters for the ``cfg.targets`` projections of ``model``.

    ``weight``: fp32 [N, P] parameter (row a = adapter a). ``slots`` lists the targeted layers in
    model order. The model itself is not modified: pass ``lora.begin(...)`` to its forward.
    ``A(name)`` / ``B(name)`` are views of ``weight`` for reading and writing adapters; a forward
    uses the contiguous compute-dtype copies a :class:`LoRAStep` makes.
    """

    def __init__(self, model: nn.Module, cfg: LoRAConfig, n_adapters: int, device=None):
        super().__init__()

        self.cfg = cfg
        self.n_adapters = n_adapters
        self.slots: dict[str, Slot] = {}
        off, r = 0, cfg.r
        for name, m in model.named_modules():
            if isinstance(m, Linear) and name.split(".")[-1] in cfg.targets:
                self.slots[name] = Slot(name, m.in_features, m.out_features, off, off + m.in_features * r)
                off += r * (m.in_features + m.out_features)
        if not self.slots:
            raise ValueError(f"no layer of the model matches LoRA targets {cfg.targets}")
        device = device if device is not None else next(model.parameters()).device
        self.tables: dict[str, TokenSlot] = {}      # module -> its rows (a shared table: one slot twice)
        self.token_rows: Optional[np.ndarray] = None
        self.tokens_shared = False
        if cfg.tokens:
            off = self._init_tokens(model, off, device)
        self.size = off
        self.weight = nn.Parameter(torch.zeros(n_adapters, off, device=device, dtype=torch.float32))

    def _init_tokens(self, model, off: int, device) -> int:
        """Slots for the token rows of ``cfg.tokens`` after ``off``; returns the new row size."""
        mc = model.config
        rows = np.asarray(mc.model_ids(np.arange(mc.input_vocab)), np.int64)
        rows = rows[rows < mc.vocab_size]          # a random full-vocabulary preset may lack some
        self.all_rows = bool(len(rows) == mc.vocab_size and (rows == np.arange(len(rows))).all())
        # Trainable tokens of a tied model (PEFT's format where the rows are not the whole module):
        # the head follows the embedding. Whole modules (modules_to_save) each get their own copy.
        self.tokens_shared = not self.all_rows and mc.tie_embeddings
        if self.tokens_shared and "embed_tokens" not in self.cfg.tokens:
            raise ValueError("a full-vocabulary model with a tied LM head trains its token rows as PEFT's trainable "
                             "tokens do, one table read by the embedding and the head: train embed_tokens "
                             f"(asked: {', '.join(self.cfg.tokens)})")
        d = mc.hidden_size
        for mod in self.cfg.tokens:
            if mod == "lm_head" and self.tokens_shared:
                continue
            self.tables[mod] = TokenSlot(mod, TOKEN_MODULES[mod], off, len(rows), d)
            off += len(rows) * d
        if self.tokens_shared:
            self.tables["lm_head"] = self.tables["embed_tokens"]   # the head follows the embedding's rows
        self.token_rows = rows
        self.token_ids_t = torch.from_numpy(rows).to(device)   # the same, on the device (TokenStep's)
        # Every model id's row in the tables, -1 for one not trained (a full vocabulary's others).
        row_of = torch.full((mc.vocab_size,), -1, dtype=torch.long)
        row_of[torch.from_numpy(rows)] = torch.arange(len(rows))
        self.row_of = row_of.to(device)
        idx = torch.from_numpy(rows).to(model.device)
        weights = {"embed_tokens": model.model.embed_tokens.weight, "lm_head": model.lm_head_weight()}
        # The model's own rows, what a fresh adapter starts from (fp32 copies: tens of rows).
        self.token_base = {mod: weights[mod].detach().index_select(0, idx).float().to(device)
                           for mod in self.tables}
        return off

    def peft_token_ids(self) -> Optional[list]:
        """The model ids of the token rows where PEFT saves them as trainable tokens (a full
        vocabulary), None where it saves whole modules (see arcfast.lora.adapters)."""
        return None if not self.tables or self.all_rows else [int(i) for i in self.token_rows]

    def token_step(self, tables: dict, adapter_ids: torch.Tensor) -> "TokenStep":
        """A :class:`TokenStep` over ``tables`` (``{module of a distinct slot: [S, V, d]}``: a
        forward's compute-dtype views, or a decoder's buffers) for tokens of slots ``adapter_ids``;
        the head reads the embedding's table where the two share one."""
        head = tables[self.tables["lm_head"].module] if "lm_head" in self.tables else None
        return TokenStep(tables.get("embed_tokens"), head, self.row_of, self.token_ids_t, adapter_ids, self.all_rows)

    def _put_base_rows(self, row: torch.Tensor) -> None:
        """Write the model's own token rows into ``row`` (one adapter's flat row, any device)."""
        for t in self.table_slots():
            row[t.off:t.off + t.n_rows * t.dim] = self.token_base[t.module].reshape(-1).to(row.device)

    def table_slots(self) -> list:
        """The distinct :class:`TokenSlot` s (one where the head shares the embedding's table)."""
        out = []
        for t in self.tables.values():
            if all(t is not o for o in out):
                out.append(t)
        return out

    def token_table(self, module: str, flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, n_rows, dim] view of ``module``'s trained rows (of ``flat`` if given)."""
        t = self.tables[module]
        w = self.weight if flat is None else flat
        return w[:, t.off:t.off + t.n_rows * t.dim].view(-1, t.n_rows, t.dim)

    # -- views ----------------------------------------------------------------------------------
    def A(self, name: str, flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, din, r] view of layer ``name``'s A (of ``flat`` if given, e.g. a bf16 copy)."""
        s, r = self.slots[name], self.cfg.r
        w = self.weight if flat is None else flat
        return w[:, s.off_a:s.off_a + s.din * r].view(-1, s.din, r)

    def B(self, name: str, flat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, r, dout] view of layer ``name``'s B."""
        s, r = self.slots[name], self.cfg.r
        w = self.weight if flat is None else flat
        return w[:, s.off_b:s.off_b + r * s.dout].view(-1, r, s.dout)

    # -- per-adapter state ----------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, ids: Sequence[int], seeds: Optional[Sequence[int]] = None) -> None:
        """Fresh adapters in slots ``ids``: A uniform(±1/sqrt(din)) drawn from ``seeds[i]`` (default:
        the slot id) on the CPU so any device gives the same numbers, B zero, token rows the
        model's own."""
        seeds = list(ids) if seeds is None else list(seeds)
        for i, seed in zip(ids, seeds):
            gen = torch.Generator().manual_seed(int(seed))
            row = torch.zeros(self.size, dtype=torch.float32)
            r = self.cfg.r
            for s in self.slots.values():
                bound = 1.0 / math.sqrt(s.din)
                # Drawn as PEFT's lora_A.weight [r, din], then stored transposed.
                a = torch.empty(r, s.din).uniform_(-bound, bound, generator=gen)
                row[s.off_a:s.off_a + s.din * r] = a.t().reshape(-1)
            self._put_base_rows(row)
            self.weight[int(i)].copy_(row.to(self.weight.device))

    @torch.no_grad()
    def set(self, i: int, tensors: dict) -> None:
        """Load adapter ``i`` from ``{name: (A [din, r], B [r, dout])}`` and, where it trains token
        rows, ``{module path: rows [n_rows, dim]}`` (``"model.embed_tokens"``, ``"lm_head"``); layers
        not named get zeros (no change to the base), token rows not named the model's own. An adapter
        of another scaling: :func:`arcfast.lora.adapters.load_adapter_for`."""
        row = torch.zeros(self.size, dtype=torch.float32, device=self.weight.device)
        by_path = {t.path: t for t in self.tables.values()}
        self._put_base_rows(row)
        r = self.cfg.r
        for name, value in tensors.items():
            if not isinstance(value, tuple):
                t = by_path.get(name)
                if t is None:
                    have = ", ".join(self.cfg.tokens) or "none"
                    raise KeyError(f"the adapter has trained rows of {name!r}, which these adapters do not train "
                                   f"(token modules: {have})")
                if tuple(value.shape) != (t.n_rows, t.dim):
                    raise ValueError(f"adapter rows of {name}: {tuple(value.shape)}, expected ({t.n_rows}, {t.dim})")
                row[t.off:t.off + t.n_rows * t.dim] = value.reshape(-1).float()
                continue
            a, b = value
            if name not in self.slots:
                raise KeyError(f"adapter layer {name!r} is not a LoRA target of this model")
            s = self.slots[name]
            if tuple(a.shape) != (s.din, r) or tuple(b.shape) != (r, s.dout):
                raise ValueError(f"adapter layer {name}: A {tuple(a.shape)} / B {tuple(b.shape)}, "
                                 f"expected ({s.din}, {r}) / ({r}, {s.dout})")
            row[s.off_a:s.off_a + s.din * r] = a.reshape(-1).float()
            row[s.off_b:s.off_b + r * s.dout] = b.reshape(-1).float()
        self.weight[int(i)].copy_(row)

    @torch.no_grad()
    def get(self, i: int) -> dict:
        """Adapter ``i`` as ``{name: (A [din, r], B [r, dout])}`` fp32 copies, and its token rows
        ``{module path: [n_rows, dim]}`` (a shared table once, under the embedding's path)."""
        out = {n: (self.A(n)[i].clone(), self.B(n)[i].clone()) for n in self.slots}
        for t in self.table_slots():
            out[t.path] = self.token_table(t.module)[i].clone()
        return out

    # -- one forward ----------------------------------------------------------------------------
    def begin(self, adapter_ids: np.ndarray, dtype: torch.dtype, path: str = "auto",
              training: bool = True, base_tokens: bool = False) -> "LoRAStep":
        """The LoRA of one forward: ``adapter_ids`` int32 numpy [R, L] or [T] (-1: none).
        ``base_tokens``: the -1 tokens are real base-model tokens, not padding (see :class:`Routing`)."""
        routing = Routing(adapter_ids, self.n_adapters, self.weight.device, base_tokens)
        return LoRAStep(self, routing, dtype, path, training)


class _SlotViews(torch.autograd.Function):
    """Every layer's A and B of the flat [N, P] weight as contiguous ``dtype`` tensors, in one
    autograd node. Plain slicing would make the backward of each of the ~2 x 7 x layers slices
    allocate a zero [N, P] gradient; here the backward writes all slot gradients into one."""

    @staticmethod
    def forward(ctx, flat, spans, shapes, dtype):
        ctx.spans, ctx.shape = spans, flat.shape
        outs = []
        for (a, b), shape in zip(spans, shapes):
            out = torch.empty(shape, dtype=dtype, device=flat.device)
            outs.append(out.copy_(flat[:, a:b].view(shape)))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        out = torch.zeros(ctx.shape, dtype=torch.float32, device=grads[0].device if grads else None)
        for (a, b), g in zip(ctx.spans, grads):
            if g is not None:
                out[:, a:b].copy_(g.reshape(ctx.shape[0], b - a))
        return out, None, None, None


class LoRAStep:
    """Compute-dtype adapters and the routing of one forward; the model's ``Linear`` layers call
    :meth:`linear`. The dtype cast is differentiable, so gradients reach the fp32 ``weight``."""

    def __init__(self, lora: MultiLoRA, routing: Routing, dtype: torch.dtype, path: str, training: bool):
        if path not in PATHS:
            raise ValueError(f"LoRA path must be one of {PATHS}, not {path!r}")
        dev = lora.weight.device
        if path == "auto":
            path = "triton" if (dev.type == "cuda" and fast_path("triton") and triton_available()) else \
                   "grouped" if fast_path("grouped_gemm") and grouped_available(dev, dtype) else "torch"
        elif path in _FAST and not fast_path(_FAST[path]):
            path = "torch"   # switched off for the run (arcfast.runtime)
        self.path = path
        self.lora, self.routing, self.training = lora, routing, training
        self.scaling = lora.cfg.scaling
        self.dropout = lora.cfg.dropout if training else 0.0
        r, N = lora.cfg.r, lora.n_adapters
        spans, shapes = [], []
        for s in lora.slots.values():
            spans += [(s.off_a, s.off_a + s.din * r), (s.off_b, s.off_b + r * s.dout)]
            shapes += [(N, s.din, r), (N, r, s.dout)]
        tables = lora.table_slots()
        for t in tables:
            spans.append((t.off, t.off + t.n_rows * t.dim))
            shapes.append((N, t.n_rows, t.dim))
        views = _SlotViews.apply(lora.weight, spans, shapes, dtype)
        self.ab = {name: (views[2 * k], views[2 * k + 1]) for k, name in enumerate(lora.slots)}
        self.tokens = None
        if tables:
            self.tokens = lora.token_step({t.module: views[2 * len(lora.slots) + k] for k, t in enumerate(tables)},
                                          routing.adapter_ids)
        self.segments = None
        if path == "triton":
            from ..kernels.lora import lora_segments

            self.segments = lora_segments(routing.adapter_ids, N)

    def __contains__(self, name: str) -> bool:
        return name in self.ab

    def linear(self, name: str, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """x [..., din] -> x W^T + b + per-token LoRA delta, [..., dout]. A fast path that raises
        here is switched off for the run and the call redone on the torch path."""
        if self.path == "torch":
            return self._linear(name, x, W, b)
        try:
            return self._linear(name, x, W, b)
        except Exception as e:
            if out_of_memory(e):
                raise
            switch_off(_FAST[self.path], e)
            self.path = "torch"
            return self._linear(name, x, W, b)

    def _linear(self, name: str, x: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        A, B = self.ab[name]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.path == "triton" and self.dropout == 0.0:
            from ..kernels.lora import lora_linear

            y = lora_linear(x2, W, b, A, B, self.segments, self.scaling)
            return y.view(*lead, W.shape[0])
        xin = F.dropout(x2, self.dropout, True) if self.dropout > 0 else x2
        if self.path == "grouped":
            delta = lora_delta_grouped(xin, A, B, self.routing, self.scaling)
        elif self.path == "triton":
            from ..kernels.lora import lora_delta

            delta = lora_delta(xin, A, B, self.segments, self.scaling)
        else:
            delta = lora_delta_torch(xin, A, B, self.routing, self.scaling)
        y = F.linear(x2, W, b) + delta
        return y.view(*lead, W.shape[0])


# ----------------------------------------------------------------------------------------------
# Token rows

class TokenStep:
    """An adapter's own embedding and LM-head rows in one forward (see the module docstring).

    ``embed`` / ``head``: compute-dtype tables [S, V, d] or None (row ``s``: slot s's rows of the V
    trained ids; the same tensor for a shared table); ``row_of``: int64 [vocab], each model id's row
    in them (-1: not trained); ``rows``: the trained model ids (int64 [V], on ``row_of``'s device);
    ``adapter_ids``: int [T], the slot of each token of the forward (-1: the model's own rows);
    ``all_rows``: the trained ids are the whole vocabulary in order (a compact model).
    The model calls :meth:`embed_rows` after its embedding and :meth:`head_logits` after its head.
    """

    def __init__(self, embed, head, row_of: torch.Tensor, rows, adapter_ids: torch.Tensor, all_rows: bool):
        self.embed, self.head, self.row_of = embed, head, row_of
        self.rows = rows
        self.adapter_ids = adapter_ids
        self.all_rows = all_rows

    def embed_rows(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x [..., d], the embedding of ``input_ids`` [...], with each token of an adapter given its
        adapter's row."""
        if self.embed is None:
            return x
        S, V, d = self.embed.shape
        a = self.adapter_ids.reshape(input_ids.shape).long()
        j = self.row_of[input_ids]
        m = (a >= 0) & (j >= 0)
        rows = F.embedding(torch.where(m, a * V + j, torch.zeros_like(j)), self.embed.reshape(S * V, d))
        return torch.where(m[..., None], rows.to(x.dtype), x)

    def head_logits(self, hidden: torch.Tensor, logits: torch.Tensor, adapters: torch.Tensor) -> torch.Tensor:
        """The logits [M, vocab] of ``hidden`` [M, d] with the trained ids' columns of each row of an
        adapter (``adapters`` [M], -1: none) taken from its adapter's head rows."""
        if self.head is None:
            return logits
        S, V, d = self.head.shape
        z = (hidden @ self.head.reshape(S * V, d).t()).view(-1, S, V)      # every slot's columns: S x V small
        a = adapters.reshape(-1).long()
        own = z.gather(1, a.clamp(min=0)[:, None, None].expand(-1, 1, V))[:, 0].to(logits.dtype)
        m = (a >= 0)[:, None]
        if self.all_rows:
            return torch.where(m, own, logits)
        return logits.index_copy(1, self.rows, torch.where(m, own, logits.index_select(1, self.rows)))
