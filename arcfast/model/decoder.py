"""The decoder arcfast trains: one readable implementation of the Qwen2/Qwen2.5, Qwen3, Llama and
Mistral families (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied or untied embeddings).

    model = load_model("qwen2.5-0.5b", device="cuda")          # built-in architecture, random init
    model = load_model("/ckpt/Qwen2.5-0.5B-Instruct")           # local HF checkpoint, vocab cut to 16
    hidden = model(input_ids, position_ids, attention, lora)    # [R, L, hidden]
    logits = model.logits(hidden)                               # [R, L, vocab]

Parameter names are exactly those of the equivalent ``transformers`` model (``model.layers.3.mlp.
up_proj.weight``, ``lm_head.weight``...), so :func:`to_hf` / :func:`from_hf` copy state dicts as they
are and LoRA adapters get PEFT's key names for free.

Tokens flow as packed rows ``[R, L]``: ``position_ids`` restart at every sample, an
:class:`arcfast.model.attention.PackedAttention` keeps attention inside samples, and an optional
:class:`arcfast.lora.multi.LoRAStep` adds each token's own adapter to every targeted projection.
"""
from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arc import tokens as T

FAMILIES = ("qwen2", "qwen3", "llama", "mistral")


class CheckpointError(ValueError):
    """A checkpoint or adapter file that cannot be used as it is: not JSON, not an object, a field
    missing or of the wrong type, truncated or corrupt weights, weights that do not fit the config.
    The message starts with the file (or directory) and says what is wrong."""


def read_json_object(path) -> dict:
    """The JSON object stored in file ``path``. Raises :class:`CheckpointError` naming the file
    (and the line and column of a syntax error) when it cannot be read, is not JSON or holds
    something other than an object; FileNotFoundError when it does not exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); a JSON file is expected") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a directory, not a JSON file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not text.strip():
        raise CheckpointError(f"{path}: empty file; a JSON object is expected")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a JSON object {{...}} is expected, found {_json_kind(obj)}")
    return obj


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {json.dumps(v)}"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v!r}"
    return {list: "an array", dict: "an object"}.get(type(v), type(v).__name__)


_REQUIRED = object()
_KINDS = {
    "count": "a positive integer",
    "number": "a finite number",
    "flag": "true or false",
    "object": "an object {...}",
}


def json_field(obj: dict, key: str, kind: str, source, default=_REQUIRED):
    """``obj[key]`` checked to be of ``kind`` (``"count"``: an integer >= 1, ``"number"``: a finite
    int or float, ``"flag"``: a boolean, ``"object"``: a dict). A missing or null value gives
    ``default``, or, when there is none, :class:`CheckpointError` naming ``source`` and ``key``;
    so does a value of another kind."""
    v = obj.get(key)
    if v is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{source}: {key!r} is {'null' if key in obj else 'missing'}; "
                                  f"{_KINDS[kind]} is required")
        return default
    if kind == "count":
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
    elif kind == "number":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    elif kind == "flag":
        ok = isinstance(v, bool)
    elif kind == "object":
        ok = isinstance(v, dict)
    else:
        raise ValueError(f"unknown field kind {kind!r}")
    if not ok:
        raise CheckpointError(f"{source}: {key!r} is {_json_kind(v)}; {_KINDS[kind]} is expected")
    return v


def read_safetensors(path) -> dict:
    """The tensors of the safetensors file ``path`` (on the CPU). Raises :class:`CheckpointError`
    naming the file when it is truncated, corrupt or unreadable; FileNotFoundError when it does
    not exist."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a safetensors file")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({path.stat().st_size:,} bytes): "
                              f"{e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None


# ----------------------------------------------------------------------------------------------
# Configuration

@dataclass
class ModelConfig:
    """Architecture of a decoder. ``vocab_size`` is the size the model is built with (16 for the
    compact format); ``full_vocab_size`` the original tokenizer's size (what the common recipe
    trains with); ``token_ids[c]`` the original token id of compact id ``c`` (None for a model whose
    ids already are the compact ids)."""

    family: str = "qwen2"
    vocab_size: int = T.VOCAB_SIZE
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    head_dim: Optional[int] = None          # None: hidden_size // n_heads
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None     # None, {"rope_type": "linear"|"llama3", ...}
    rms_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool = False                  # Qwen2/2.5: True
    qk_norm: bool = False                   # Qwen3: RMSNorm on every q and k head
    sliding_window: Optional[int] = None    # Mistral; samples longer than it are refused
    max_position: int = 32768
    full_vocab_size: Optional[int] = None
    token_ids: Optional[tuple] = None
    source_token_ids: Optional[tuple] = None  # a cut checkpoint: the original id of each compact row
    name: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"model family {self.family!r} is not one of {FAMILIES}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.n_heads} attention heads are not a multiple of {self.n_kv_heads} kv heads")
        if self.head_dim is None:
            if self.hidden_size % self.n_heads:
                raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {self.n_heads} heads")
            self.head_dim = self.hidden_size // self.n_heads
        if self.token_ids is not None:
            self.token_ids = tuple(int(t) for t in self.token_ids)

    @property
    def input_vocab(self) -> int:
        """The ids arcfast's prompts, targets and generated tokens use with this model: the compact
        ids it maps for a full-vocabulary model (16, or 20 with the objectives' ids; mapped by
        :meth:`model_ids`), else its own."""
        return self.vocab_size if self.token_ids is None else len(self.token_ids)

    @property
    def has_objective_ids(self) -> bool:
        """Whether the model has rows for the objectives' ids (CANDIDATE, VERDICT, YES, NO): what
        the ``verify`` objective needs (:func:`grow_vocab` adds them)."""
        return self.input_vocab >= T.OBJECTIVE_VOCAB

    def grid_columns(self) -> Optional[np.ndarray]:
        """The model's own ids of the grid vocabulary (compact ids 0-15), the columns generation
        and search choose among: a grid never holds the objectives' ids, which a model grown for
        ``verify`` can otherwise emit. None where those are all the model's ids (nothing to
        choose out)."""
        if self.token_ids is None and self.vocab_size <= T.VOCAB_SIZE:
            return None
        return self.model_ids(np.arange(T.VOCAB_SIZE))

    def model_ids(self, ids: np.ndarray) -> np.ndarray:
        """Compact ids -> this model's own token ids (``token_ids[c]``; unchanged for a model whose
        ids are the compact ones). Negative entries (the -100 of unlabelled positions) are kept.
        The one place the mapping is made: training, scoring and generation all go through it."""
        ids = np.asarray(ids)
        if self.token_ids is None:
            return ids
        table = np.asarray(self.token_ids, dtype=np.int64)
        # Only the negatives are clipped (for the lookup np.where discards): an id past the
        # compact vocabulary raises IndexError rather than turning into another token.
        return np.where(ids >= 0, table[np.clip(ids, 0, None)], ids)

    def n_params(self, embeddings: bool = True) -> int:
        """Parameters of the model built from this config."""
        d, hd = self.hidden_size, self.head_dim
        q, kv = self.n_heads * hd, self.n_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0) + (2 * hd if self.qk_norm else 0)
        mlp = 3 * d * self.intermediate_size
        n = self.n_layers * (attn + mlp + 2 * d) + d
        if embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return n


PRESETS: dict[str, ModelConfig] = {
    # Tests and demos: seconds on a CPU.
    "tiny": ModelConfig(family="qwen2", hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        intermediate_size=128, rope_theta=10000.0, tie_embeddings=True, qkv_bias=True,
                        full_vocab_size=T.VOCAB_SIZE, name="tiny"),
    # The starter model's architecture (random weights here; `starter` loads its trained weights,
    # see arcfast/models/starter/): 1.5M parameters, sized for hours of training on a few CPU cores.
    "starter-arch": ModelConfig(family="qwen2", hidden_size=128, n_layers=6, n_heads=4, n_kv_heads=2,
                                intermediate_size=512, rope_theta=10000.0, tie_embeddings=True, qkv_bias=True,
                                full_vocab_size=T.VOCAB_SIZE, name="starter-arch"),
    # Exact architectures of common ARC bases (weights random: nothing is downloaded).
    "qwen2.5-0.5b": ModelConfig(family="qwen2", hidden_size=896, n_layers=24, n_heads=14, n_kv_heads=2,
                                intermediate_size=4864, rope_theta=1e6, rms_eps=1e-6, tie_embeddings=True,
                                qkv_bias=True, full_vocab_size=151936, name="qwen2.5-0.5b"),
    "qwen2.5-1.5b": ModelConfig(family="qwen2", hidden_size=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                                intermediate_size=8960, rope_theta=1e6, rms_eps=1e-6, tie_embeddings=True,
                                qkv_bias=True, full_vocab_size=151936, name="qwen2.5-1.5b"),
    "qwen3-0.6b": ModelConfig(family="qwen3", hidden_size=1024, n_layers=28, n_heads=16, n_kv_heads=8,
                              head_dim=128, intermediate_size=3072, rope_theta=1e6, rms_eps=1e-6,
                              tie_embeddings=True, qk_norm=True, full_vocab_size=151936, name="qwen3-0.6b"),
    "llama-3.2-1b": ModelConfig(family="llama", hidden_size=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                                head_dim=64, intermediate_size=8192, rope_theta=500000.0, rms_eps=1e-5,
                                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                tie_embeddings=True, full_vocab_size=128256, max_position=131072,
                                name="llama-3.2-1b"),
}


def preset(name: str, vocab: str = "compact") -> ModelConfig:
    """A copy of a built-in config; ``vocab="full"`` builds it with its original vocabulary size."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; built-in: {', '.join(PRESETS)}")
    cfg = replace(PRESETS[name])
    if vocab == "full":
        full = cfg.full_vocab_size or cfg.vocab_size
        # A random full-vocabulary model still reads compact batches: compact id c is token c.
        cfg = replace(cfg, vocab_size=full, token_ids=tuple(range(T.OBJECTIVE_VOCAB)))
    elif vocab != "compact":
        raise ValueError(f"vocab must be 'compact' or 'full', not {vocab!r}")
    return cfg


# ----------------------------------------------------------------------------------------------
# Plain-torch operations (the kernels in arcfast.kernels compute the same functions)

def rmsnorm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, statistics in fp32, result in x.dtype (the HF order of casts)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rmsnorm_torch(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """``(s, rmsnorm(s))`` with ``s = x + delta``: a residual add and the norm that follows it."""
    s = x + delta
    return s, rmsnorm_torch(s, weight, eps)


def swiglu_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    return F.silu(gate) * up


def rope_torch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotary embedding (HF rotate_half convention) of q [R, L, H, D] and k [R, L, Hkv, D] with
    per-token cos/sin [R, L, D] (q.dtype). Returns new (q, k)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rot(q), rot(k)


@dataclass
class Ops:
    """The elementwise/normalisation operations a model runs with (plain torch or Triton)."""

    name: str
    rmsnorm: Callable
    swiglu: Callable
    rope: Callable
    add_rmsnorm: Callable   # inference only: (x, delta, weight, eps) -> (x + delta, its norm)


TORCH_OPS = Ops("torch", rmsnorm_torch, swiglu_torch, rope_torch, add_rmsnorm_torch)


def triton_ops() -> Ops:
    """The fused Triton kernels of arcfast.kernels (each falls back to its reference on the CPU)."""
    from ..kernels.add_rmsnorm import add_rms_norm
    from ..kernels.rmsnorm import rms_norm
    from ..kernels.rope import rope_
    from ..kernels.swiglu import swiglu

    def rope(q, k, cos, sin):
        # One table row per token (P = R*L), so no position ids; rotates q and k in place.
        D = cos.shape[-1]
        return rope_(q, k, cos.reshape(-1, D), sin.reshape(-1, D))

    return Ops("triton", rms_norm, swiglu, rope, add_rms_norm)


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] (fp32), with Llama-3 / linear scaling applied."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(sc["factor"])
    if kind == "llama3":
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"RoPE scaling {kind!r} is not supported (default, linear and llama3 are)")


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [R, L, head_dim] for integer positions [R, L], computed in fp32."""
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# ----------------------------------------------------------------------------------------------
# Modules (names mirror transformers' so state dicts match key for key)

class Linear(nn.Module):
    """``y = x W^T + b`` (weight [out, in] as in torch/HF) plus, when a LoRA step targets this
    layer, each token's own adapter delta. ``name`` is the full module path, e.g.
    ``model.layers.0.self_attn.q_proj``: the LoRA and PEFT key of this layer."""

    def __init__(self, din: int, dout: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = din, dout
        self.weight = nn.Parameter(torch.empty(dout, din))
        self.bias = nn.Parameter(torch.empty(dout)) if bias else None
        self.name = ""

    def forward(self, x: torch.Tensor, lora=None) -> torch.Tensor:
        if lora is not None and self.name in lora:
            return lora.linear(self.name, x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = TORCH_OPS

    def forward(self, x):
        return self.ops.rmsnorm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.q_proj = Linear(d, cfg.n_heads * hd, cfg.qkv_bias)
        self.k_proj = Linear(d, cfg.n_kv_heads * hd, cfg.qkv_bias)
        self.v_proj = Linear(d, cfg.n_kv_heads * hd, cfg.qkv_bias)
        self.o_proj = Linear(cfg.n_heads * hd, d, False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_eps)
        else:
            self.q_norm = self.k_norm = None
        self.ops = TORCH_OPS

    def qkv(self, x, cos, sin, lora):
        """Projected, normed and rotated q [R,L,H,D] and k, v [R,L,Hkv,D] of x [R,L,hidden]
        (the cached decoder in arcfast.infer.generate calls this too)."""
        R, L, _ = x.shape
        q = self.q_proj(x, lora).view(R, L, self.n_heads, self.head_dim)
        k = self.k_proj(x, lora).view(R, L, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x, lora).view(R, L, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.rope(q, k, cos, sin)
        return q, k, v

    def forward(self, x, cos, sin, attention, lora):
        R, L, _ = x.shape
        q, k, v = self.qkv(x, cos, sin, lora)
        o = attention(q, k, v)                                  # [R, L, H, D]
        return self.o_proj(o.reshape(R, L, self.n_heads * self.head_dim), lora)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False)
        self.ops = TORCH_OPS

    def forward(self, x, lora):
        return self.down_proj(self.ops.swiglu(self.gate_proj(x, lora), self.up_proj(x, lora)), lora)


class LayerStep:
    """How a block runs its projections and residual adds: through the model's own ``Linear``
    layers, each with ``lora`` (an :class:`arcfast.lora.multi.LoRAStep`, a decode-time row LoRA, or
    None). This is the forward of training, scoring and prefill. The decoder passes its own
    strategies with the same four methods (merged or fused projections, the fused add + norm
    kernel: :mod:`arcfast.lora.decode`)."""

    def __init__(self, lora=None):
        self.lora = lora

    def qkv(self, li: int, attn: "Attention", h: torch.Tensor, cos, sin):
        return attn.qkv(h, cos, sin, self.lora)

    def o(self, li: int, attn: "Attention", x: torch.Tensor) -> torch.Tensor:
        return attn.o_proj(x, self.lora)

    def mlp(self, li: int, blk: "Block", h: torch.Tensor) -> torch.Tensor:
        return blk.mlp(h, self.lora)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor, norm: "RMSNorm"):
        """(x + delta, norm(x + delta)), differentiable."""
        x = x + delta
        return x, norm(x)


class FusedAddNormStep(LayerStep):
    """:class:`LayerStep` with each residual add and the norm after it in one kernel (the Triton
    ``add_rmsnorm`` where the model runs Triton ops): inference only, no backward."""

    def add_norm(self, x, delta, norm):
        return norm.ops.add_rmsnorm(x, delta, norm.weight, norm.eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attention, step: LayerStep, li: int = 0, h=None, next_norm=None):
        """One block: ``x`` [R, L, hidden] the residual stream in; ``h`` its input norm when the
        previous block computed it (else computed here); returns ``(x, next_norm(x))``, or
        ``(x, None)`` without ``next_norm``. ``attention(q, k, v)`` -> [R, L, H, D]; ``step``
        runs the projections (:class:`LayerStep`)."""
        R, L, _ = x.shape
        attn = self.self_attn
        if h is None:
            h = self.input_layernorm(x)
        q, k, v = step.qkv(li, attn, h, cos, sin)
        o = attention(q, k, v)
        x, h = step.add_norm(x, step.o(li, attn, o.reshape(R, L, attn.n_heads * attn.head_dim)),
                             self.post_attention_layernorm)
        delta = step.mlp(li, self, h)
        if next_norm is None:
            return x + delta, None
        return step.add_norm(x, delta, next_norm)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)


class CausalLM(nn.Module):
    """The decoder. ``forward`` returns the final hidden states; ``logits`` applies the LM head
    (callers that need logits of a few positions only gather those first)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        for name, m in self.named_modules():
            if isinstance(m, Linear):
                m.name = name
        self.ops = TORCH_OPS
        # Per-block compiled forwards (see compile_blocks); None runs the blocks eagerly.
        self._block_fns = None

    # -- kernels and compilation -------------------------------------------------------------
    def set_ops(self, ops: Ops | str) -> "CausalLM":
        """Run with plain torch (``"torch"``) or the Triton kernels (``"triton"``)."""
        if isinstance(ops, str):
            ops = TORCH_OPS if ops == "torch" else triton_ops() if ops == "triton" else None
            if ops is None:
                raise ValueError("ops must be 'torch' or 'triton'")
        self.ops = ops
        for m in self.modules():
            if hasattr(m, "ops"):
                m.ops = ops
        return self

    def compile_blocks(self, enable: bool = True, **kwargs) -> "CausalLM":
        """torch.compile each block's forward (one graph reused by every layer: same shapes).
        Only worthwhile on CUDA with shapes that repeat; ``kwargs`` go to ``torch.compile``."""
        if not enable:
            self._block_fns = None
            return self
        fn = torch.compile(Block.forward, **kwargs)
        self._block_fns = [fn.__get__(b) for b in self.model.layers]
        return self

    # -- forward -------------------------------------------------------------------------------
    @property
    def device(self):
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.model.embed_tokens.weight.dtype

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention=None, lora=None, checkpoint: bool = False, step: Optional[LayerStep] = None,
                compiled: bool = True, tokens=None) -> torch.Tensor:
        """Final hidden states: the one forward of the model, for training, scoring, prefill and
        the decode step alike.

        input_ids: int64 [R, L] (the model's own ids); position_ids: int64 [R, L] (default:
        0..L-1 in every row); attention: a callable ``(q [R,L,H,D], k, v) -> [R,L,H,D]`` such as
        :class:`arcfast.model.attention.PackedAttention` (default: causal over each whole row), or an
        object whose ``layer(i)`` gives layer i's callable (a KV cache that writes as it attends:
        :mod:`arcfast.model.kv_cache`); lora: an :class:`arcfast.lora.multi.LoRAStep` or None; step: how the
        projections run (default ``LayerStep(lora)``; the decoder passes merged or fused ones);
        checkpoint: while gradients are on, keep only each block's input and recompute the block
        in backward (activation memory for compute; the blocks run eagerly); compiled: use the
        blocks of :meth:`compile_blocks` when set; tokens: adapters' own embedding rows, an
        :class:`arcfast.lora.multi.TokenStep` (default: the one of ``lora``, or of ``step``'s LoRA). Returns
        [R, L, hidden] in the model dtype.
        """
        from .attention import causal_attention

        R, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(R, L)
        if attention is None:
            attention = causal_attention
        if step is None:
            step = LayerStep(lora)
        per_layer = getattr(attention, "layer", None)
        x = self.model.embed_tokens(input_ids)
        if tokens is None:
            tokens = getattr(lora if lora is not None else getattr(step, "lora", None), "tokens", None)
        if tokens is not None:
            x = tokens.embed_rows(input_ids, x)
        cos, sin = rope_cos_sin(position_ids, self.inv_freq, x.dtype)
        layers = self.model.layers
        if checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint as recomputed

            # Each block norms its own input, so only the residual stream is kept per block.
            for i, block in enumerate(layers):
                att = per_layer(i) if per_layer is not None else attention
                x, _ = recomputed(block, x, cos, sin, att, step, i, use_reentrant=False)
            return self.model.norm(x)
        # Each block hands the next its input norm (one fused add + norm kernel at decode time).
        fns = layers if self._block_fns is None or not compiled else self._block_fns
        h = None
        for i, fn in enumerate(fns):
            att = per_layer(i) if per_layer is not None else attention
            nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.norm
            x, h = fn(x, cos, sin, att, step, i, h, nxt)
        return h

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor, tokens=None, adapters: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[..., hidden] -> [..., vocab] in the model dtype. ``tokens``: adapters' own head rows (an
        :class:`arcfast.lora.multi.TokenStep`), with ``adapters`` the adapter slot of each hidden row
        ([...], -1: the model's own head)."""
        out = F.linear(hidden, self.lm_head_weight())
        if tokens is None or tokens.head is None:
            return out
        if adapters is None:
            raise ValueError("logits with adapters' own head rows need each row's adapter")
        lead = hidden.shape[:-1]
        d = hidden.shape[-1]
        return tokens.head_logits(hidden.reshape(-1, d), out.reshape(-1, out.shape[-1]), adapters).view(*lead, -1)

    def hf_state_dict(self) -> dict:
        """State dict under transformers' names (``lm_head.weight`` present even when tied)."""
        sd = {k: v for k, v in self.state_dict().items()}
        if self.lm_head is None:
            sd["lm_head.weight"] = self.model.embed_tokens.weight
        return sd


# ----------------------------------------------------------------------------------------------
# Construction and loading

def default_dtype(device) -> torch.dtype:
    """fp32 on the CPU; bf16 on GPUs that have it, else fp16 (train with loss scaling)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(device=None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@torch.no_grad()
def init_weights(model: CausalLM, seed: int = 0, std: float = 0.02) -> CausalLM:
    """Random init as transformers does it (normal(0, std) matrices, zero biases, unit norms),
    reproducible from ``seed`` on any device."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    return model


def build_model(cfg: ModelConfig, dtype=None, device=None, seed: int = 0) -> CausalLM:
    """A randomly initialised model of config ``cfg`` on ``device`` in ``dtype``."""
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    with torch.device(device):
        model = CausalLM(cfg)
    model.to(dtype=dtype)
    model.inv_freq = rope_inv_freq(cfg, device=device)  # stays fp32
    return init_weights(model, seed)


def grow_vocab(model: CausalLM, n_ids: int = T.OBJECTIVE_VOCAB, seed: int = 0) -> CausalLM:
    """Give ``model`` rows for the compact ids below ``n_ids`` it lacks (the objectives' ids 16-19
    of a model saved with the 16 grid ids), in place; a model that has them is returned as it is.

    The new embedding rows (and LM-head rows of an untied head) are drawn from a normal of the
    existing rows' standard deviation with a fixed generator (``seed``), so growing the same model
    twice gives the same rows: adapters trained on a grown model work on it grown again. The rows
    start untrained (a LoRA adapter learns to use them; distinct YES and NO rows are what lets a
    verdict be read at all). A full-vocabulary model maps the objectives' ids to tokens of its own
    tokenizer instead (:func:`compact_token_ids`); one whose tokenizer lacks them cannot grow here.
    """
    cfg = model.config
    if cfg.input_vocab >= n_ids:
        return model
    if n_ids > T.RESERVED_VOCAB:
        raise ValueError(f"the compact vocabulary has {T.RESERVED_VOCAB} ids at most, not {n_ids}")
    if cfg.token_ids is not None:
        if cfg.vocab_size >= n_ids and cfg.token_ids == tuple(range(len(cfg.token_ids))):
            model.config = replace(cfg, token_ids=tuple(range(n_ids)))   # a random preset: id c is token c
            return model
        raise ValueError(f"{cfg.name or 'model'}: a full-vocabulary model whose tokenizer gives no distinct single "
                         f"tokens for {' '.join(T.OBJECTIVE_SYMBOLS)} (the objectives' ids); load it with the "
                         f"compact vocabulary instead")
    gen = torch.Generator().manual_seed(seed)

    def grown(w: torch.Tensor) -> nn.Parameter:
        w = w.detach()
        rows = torch.randn(n_ids - w.shape[0], w.shape[1], generator=gen) * w.float().std()
        return nn.Parameter(torch.cat([w, rows.to(device=w.device, dtype=w.dtype)]), requires_grad=w.requires_grad)

    emb = model.model.embed_tokens
    emb.weight = grown(emb.weight)
    emb.num_embeddings = n_ids
    if model.lm_head is not None:
        model.lm_head.weight = grown(model.lm_head.weight)
        model.lm_head.out_features = n_ids
    model.config = replace(cfg, vocab_size=n_ids)
    return model


def load_model(path_or_preset: str, dtype=None, device=None, vocab: str = "compact",
               seed: int = 0) -> CausalLM:
    """A model from a local Hugging Face checkpoint directory (config.json, *.safetensors,
    tokenizer files), a checkpoint shipped inside the package (``"starter"``: see
    arcfast/models/starter/MODEL_CARD.md), or a built-in preset (random weights, ``seed``). A
    directory of that name in the working directory wins over a shipped model or a preset.

    ``vocab="compact"`` (default) cuts a checkpoint's embedding and LM head to the 16 compact ids
    (each compact symbol's single token); ``"full"`` keeps the original vocabulary (the common
    recipe, and the baseline). Default dtype: fp32 on the CPU, bf16 on GPUs (fp16 without bf16).
    """
    from ..models import SHIPPED, shipped_model

    p = Path(str(path_or_preset))
    if not p.is_dir() and str(path_or_preset) in SHIPPED:
        shipped = shipped_model(str(path_or_preset))
        if shipped is None:
            raise FileNotFoundError(f"the shipped model {path_or_preset!r} is not installed here "
                                    f"({SHIPPED[str(path_or_preset)]} has no weights)")
        return load_checkpoint(shipped, dtype=dtype, device=device, vocab=vocab)
    if str(path_or_preset) in PRESETS and not p.is_dir():
        return build_model(preset(str(path_or_preset), vocab), dtype=dtype, device=device, seed=seed)
    if not p.is_dir():
        raise FileNotFoundError(f"{path_or_preset!r} is neither a checkpoint directory, a shipped model "
                                f"({', '.join(SHIPPED)}) nor a preset ({', '.join(PRESETS)})")
    return load_checkpoint(p, dtype=dtype, device=device, vocab=vocab)


def config_from_hf(hf: dict, source: str = "") -> ModelConfig:
    """Our config from a transformers config.json dict (families: qwen2, qwen3, llama, mistral).

    Raises :class:`CheckpointError` naming ``source`` (default ``config.json``) and the field when a
    field is missing or of the wrong type, or the fields do not make a consistent architecture."""
    source = source or "config.json"
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: a JSON object {{...}} is expected, found {_json_kind(hf)}")
    mt = hf.get("model_type", "")
    if mt not in FAMILIES:
        raise CheckpointError(f"{source}: model_type {mt!r} is not supported "
                              f"(supported: {', '.join(FAMILIES)})")
    rope = dict(json_field(hf, "rope_parameters", "object", source, default={}))
    theta = float(json_field(rope, "rope_theta", "number", f"{source}: rope_parameters",
                             default=json_field(hf, "rope_theta", "number", source, default=10000.0)))
    scaling = (json_field(hf, "rope_scaling", "object", source, default=None)
               or (rope if rope.get("rope_type", "default") != "default" else None))
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
    count = lambda key, default=_REQUIRED: json_field(hf, key, "count", source, default)
    n_heads = count("num_attention_heads")
    hidden = count("hidden_size")
    vocab_size = count("vocab_size")
    sliding = None
    if mt == "mistral" or (mt in ("qwen2", "qwen3") and hf.get("use_sliding_window")):
        sliding = count("sliding_window", None)
    try:
        cfg = ModelConfig(
            family=mt,
            vocab_size=vocab_size,
            hidden_size=hidden,
            n_layers=count("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=count("num_key_value_heads", n_heads),
            intermediate_size=count("intermediate_size"),
            head_dim=count("head_dim", None) or hidden // n_heads,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_eps=float(json_field(hf, "rms_norm_eps", "number", source, default=1e-6)),
            tie_embeddings=bool(json_field(hf, "tie_word_embeddings", "flag", source, default=False)),
            qkv_bias=True if mt == "qwen2" else bool(json_field(hf, "attention_bias", "flag", source, default=False)),
            qk_norm=(mt == "qwen3"),
            sliding_window=sliding,
            max_position=count("max_position_embeddings", 32768),
            full_vocab_size=vocab_size,
            name=str(hf.get("_name_or_path") or "") or source,
        )
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    try:
        rope_inv_freq(cfg)
    except (KeyError, TypeError, ValueError) as e:
        what = f"field {e} missing" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{source}: RoPE scaling {scaling}: {what}") from None
    return cfg


def _read_safetensors(path: Path) -> dict:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json_field(read_json_object(index), "weight_map", "object", index)
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (path / f).is_file():
                raise FileNotFoundError(f"{index}: names the weight file {f}, which is not in {path}")
    else:
        files = sorted(f.name for f in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (other formats are not read)")
    sd = {}
    for f in files:
        sd.update(read_safetensors(path / f))
    return sd


_NEEDS = ("The compact format needs a tokenizer with a distinct single token for each of the digits 0-9, "
          "the newline and the letters I O E B P (byte-level BPE tokenizers such as Qwen's and Llama 3's have "
          "them; a SentencePiece tokenizer needs these pieces, or byte-fallback pieces such as <0x0A>). Use a "
          "checkpoint whose tokenizer has them, or add the missing symbol to the tokenizer (add_tokens) and "
          "grow the embedding to match (resize_token_embeddings) before saving the checkpoint; its new row "
          "starts untrained.")


_PREFIX_PIECES = ("\u2581", " ", "\u0120")  # a word-start marker: SentencePiece's "▁", a space, byte-level "Ġ"


def _symbol_token(sym: str, encode, lookup, piece, normalize, unk: Optional[int]) -> tuple[Optional[int], str]:
    """The token that stands for ``sym`` or, when there is none, what the tokenizer does with it.

    In order: the symbol's own vocabulary entry (``"0"``, or the byte-fallback piece ``"<0x0A>"``
    for ``"\\n"``) unless the normaliser rewrites the symbol's text; then the symbol's encoding, less
    the word-start token a SentencePiece-style tokenizer puts before a text (``"0"`` encodes as
    ``["▁", "0"]`` in Llama 2 and Mistral). A leading-space variant such as ``"▁I"`` is what such
    tokenizers give a text's first word only: inside ARC text (``"\\nI"``) it is the bare ``"I"``,
    which the lookup finds first. Byte-level BPE (GPT-2, Qwen, Llama 3) stores ``"\\n"`` as
    ``"Ċ"``, found by encoding; its other symbols are their own entries, which are also their
    encodings."""
    norm = normalize(sym)
    rewritten = norm.lstrip("".join(_PREFIX_PIECES)) != sym
    if not rewritten:
        t = lookup(sym)
        if t is None and len(sym.encode("utf-8")) == 1:
            t = lookup(f"<0x{sym.encode('utf-8')[0]:02X}>")
        if t is not None:
            return int(t), ""
    toks = [int(t) for t in encode(sym)]
    if len(toks) == 2 and piece(toks[0]) in _PREFIX_PIECES:
        t = toks[1]
    elif len(toks) == 1:
        t = toks[0]
    else:
        t = None
    if t is not None and t != unk:
        return t, ""
    found = f"{len(toks)} tokens {toks}" if len(toks) != 1 else f"the token {toks}"
    if toks:
        found += " (" + " ".join(repr(piece(t)) for t in toks) + ")"
    found += " in this tokenizer"
    if unk is not None and unk in toks:
        found += f", {piece(unk)!r} being the unknown token"
    if rewritten:
        found += (f", whose normaliser rewrites it as {norm!r}, so no vocabulary entry "
                  f"{sym!r} is ever used for it")
    else:
        b = sym.encode("utf-8")
        found += f", and the vocabulary has no token {sym!r}"
        found += f" nor byte piece '<0x{b[0]:02X}>'" if len(b) == 1 else ""
    return None, found


def compact_token_ids(tokenizer_dir, tokenizer=None) -> list[int]:
    """For each compact id, the id of its symbol's single token in the checkpoint's tokenizer: the
    16 grid ids (``tokens.SYMBOLS``), then the objectives' 4 (``tokens.OBJECTIVE_SYMBOLS``: C ? Y N)
    when the tokenizer has a distinct single token for each of them too (else 16 ids: such a model
    runs every objective but ``verify``, or gets the rows from :func:`grow_vocab`).

    The symbol's own vocabulary entry (or byte-fallback piece ``<0xNN>``) when it has one, else its
    encoding, less a SentencePiece-style word-start token ``"▁"`` (see :func:`_symbol_token`).
    Raises ValueError naming the symbol, the tokens it encodes to and what to do when a grid symbol
    has no single token, is the unknown token, or shares its token with another symbol."""
    unk = None
    if tokenizer is None and (Path(tokenizer_dir) / "tokenizer.json").exists():
        # The checkpoint's own pipeline, as written (transformers may rebuild some tokenizers by
        # class, ignoring a custom normaliser or pre-tokenizer in tokenizer.json).
        from tokenizers import Tokenizer

        tok_file = Path(tokenizer_dir) / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the tokenizers library raises plain Exception for a bad file
            raise CheckpointError(f"{tok_file}: not a readable tokenizer file: {e}") from None
        unk_tok = getattr(tok.model, "unk_token", None)
        unk = tok.token_to_id(unk_tok) if unk_tok else None
        encode = lambda s: tok.encode(s, add_special_tokens=False).ids
        lookup = tok.token_to_id
        piece = tok.id_to_token
        normalizer = tok.normalizer
    else:
        if tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{tokenizer_dir}: no tokenizer transformers can load "
                                      f"(tokenizer.json or tokenizer_config.json and its files): "
                                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        unk = getattr(tokenizer, "unk_token_id", None)
        encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
        # get_vocab, not convert_tokens_to_ids: the latter answers the unknown token's id for a miss.
        lookup = tokenizer.get_vocab().get
        piece = lambda t: tokenizer.convert_ids_to_tokens(int(t))
        backend = getattr(tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
    normalize = normalizer.normalize_str if normalizer is not None else (lambda s: s)
    ids, seen = [], {}
    for cid, (sym, name) in enumerate(zip(T.SYMBOLS, T.NAMES)):
        t, found = _symbol_token(sym, encode, lookup, piece, normalize, unk)
        if t is None:
            raise ValueError(f"{tokenizer_dir}: compact symbol {sym!r} (id {cid}, {name}) is {found}. {_NEEDS}")
        if t in seen:
            raise ValueError(f"{tokenizer_dir}: compact symbols {seen[t]!r} and {sym!r} share token {t} "
                             f"({piece(t)!r}). {_NEEDS}")
        seen[t] = sym
        ids.append(t)
    extra = [_symbol_token(sym, encode, lookup, piece, normalize, unk)[0] for sym in T.OBJECTIVE_SYMBOLS]
    if all(t is not None for t in extra) and len(set(extra)) == len(extra) and not set(extra) & set(seen):
        ids += extra
    return ids


def load_checkpoint(path, dtype=None, device=None, vocab: str = "compact") -> CausalLM:
    """Load a local HF checkpoint directory; see :func:`load_model`."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face checkpoint directory)")
    cfg = config_from_hf(read_json_object(cfg_file), str(cfg_file))
    # The name an adapter records as its base (adapter_config.json's base_model_name_or_path): the
    # directory itself, which PEFT's AutoPeftModel loads; config.json's own _name_or_path is
    # wherever the checkpoint was written from, or nothing.
    cfg = replace(cfg, name=str(path.resolve()))
    sd = _read_safetensors(path)
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in sd:
        if not cfg.tie_embeddings:
            raise CheckpointError(f"{path}: lm_head.weight missing and tie_word_embeddings is false")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        t = sd.get(key)
        if t is not None and (t.dim() != 2 or t.shape[0] != cfg.vocab_size):
            raise CheckpointError(f"{path}: {key} is {list(t.shape)} in the weights; {cfg_file.name} says "
                                  f"vocab_size {cfg.vocab_size}")
    if vocab == "compact":
        ids = compact_token_ids(path)
        if max(ids) >= cfg.vocab_size:
            raise CheckpointError(f"{path}: tokenizer id {max(ids)} is outside the embedding ({cfg.vocab_size} rows)")
        index = torch.tensor(ids, dtype=torch.long)
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in sd:
                sd[key] = sd[key].index_select(0, index).contiguous()
        cfg = replace(cfg, vocab_size=len(ids), token_ids=None, source_token_ids=tuple(ids))
    elif vocab == "full":
        cfg = replace(cfg, token_ids=tuple(compact_token_ids(path)))
    else:
        raise ValueError(f"vocab must be 'compact' or 'full', not {vocab!r}")
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = CausalLM(cfg)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    expected = model.state_dict()
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the {cfg.family} architecture; "
                              f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    wrong = [(k, list(sd[k].shape), list(expected[k].shape)) for k in sorted(sd) if sd[k].shape != expected[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"{path}: weights do not match {cfg_file.name}: {k} is {got} in the weights, "
                              f"the config makes it {want}"
                              + (f" (and {len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else ""))
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    model.inv_freq = rope_inv_freq(cfg)  # a buffer built on "meta" above; stays fp32
    return model.to(device)


# ----------------------------------------------------------------------------------------------
# transformers interop

def hf_config(cfg: ModelConfig):
    """The transformers config of the same architecture."""
    import transformers

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope = {**rope, **cfg.rope_scaling}
        rope.setdefault("rope_type", rope.pop("type", "default"))
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.rms_eps,
                  tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=cfg.max_position)
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        common["rope_parameters"] = rope
    else:
        common["rope_theta"] = cfg.rope_theta
        if cfg.rope_scaling:
            common["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if cfg.family == "qwen2":
        if not cfg.qkv_bias:
            raise ValueError("the transformers Qwen2 model always has q/k/v biases")
        return transformers.Qwen2Config(**common)
    if cfg.family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=cfg.head_dim, attention_bias=cfg.qkv_bias)
    if cfg.family == "llama":
        return transformers.LlamaConfig(**common, head_dim=cfg.head_dim, attention_bias=cfg.qkv_bias)
    return transformers.MistralConfig(**common, head_dim=cfg.head_dim, sliding_window=cfg.sliding_window)


def to_hf(model: CausalLM, attn_implementation: str = "sdpa"):
    """A transformers ``*ForCausalLM`` with the same weights (copied), dtype and device."""
    import transformers

    cfg = hf_config(model.config)
    cfg._attn_implementation = attn_implementation
    cls = {"qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}[model.config.family]
    with torch.device(model.device):
        hf = cls(cfg)
    hf.to(dtype=model.dtype)
    missing, unexpected = hf.load_state_dict(model.hf_state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf


def from_hf(hf_model, dtype=None) -> CausalLM:
    """Our model with the weights (copied) of a transformers ``*ForCausalLM``."""
    cfg = config_from_hf(hf_model.config.to_dict())
    dtype = dtype or next(hf_model.parameters()).dtype
    device = next(hf_model.parameters()).device
    with torch.device(device):
        model = CausalLM(cfg)
    model.to(dtype=dtype)
    model.inv_freq = rope_inv_freq(cfg, device=device)
    sd = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    model.load_state_dict(sd)
    return model


def compact_tokenizer(n_ids: int = T.VOCAB_SIZE):
    """A transformers tokenizer of the compact format: one token per symbol, token id == compact id
    (``"12\\n"`` -> ``[1, 2, 10]``), BOS ``"B"``, EOS ``"E"`` (end of grid), PAD ``"P"``; with
    ``n_ids`` = 20 also the objectives' symbols ``C ? Y N`` (ids 16-19).

    Byte-level BPE (``"\\n"`` is stored as ``"Ċ"``, as GPT-2-style vocabularies do) with UNK = PAD:
    transformers' ``AutoTokenizer`` loads a saved checkpoint's tokenizer as its model type's class
    (``Qwen2Tokenizer`` for Qwen2), which re-reads the vocabulary byte-level and adds its own
    ``<|endoftext|>`` unless every special token is one of ours. So built, the checkpoint encodes
    and decodes the same under either class and keeps exactly ``n_ids`` tokens (Unsloth refuses a
    tokenizer larger than the embedding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if n_ids not in (T.VOCAB_SIZE, T.OBJECTIVE_VOCAB):
        raise ValueError(f"a compact tokenizer has {T.VOCAB_SIZE} or {T.OBJECTIVE_VOCAB} ids, not {n_ids}")
    symbols = (T.SYMBOLS + T.OBJECTIVE_SYMBOLS)[:n_ids]
    vocab = {"".join(p for p, _ in byte_level.pre_tokenize_str(s)): i for i, s in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=T.SYMBOLS[T.BOS], eos_token=T.SYMBOLS[T.EOG],
                                   pad_token=T.SYMBOLS[T.PAD], unk_token=T.SYMBOLS[T.PAD])


def save_model(model: CausalLM, path) -> Path:
    """Write ``model`` as a transformers checkpoint directory (config.json, model.safetensors and,
    for a compact-vocabulary model, the compact tokenizer), loadable by transformers, PEFT, vLLM
    and :func:`load_model`."""
    from transformers.utils import logging as hf_logging

    path = Path(path)
    hf = to_hf(model)
    if model.config.token_ids is None and model.config.vocab_size in (T.VOCAB_SIZE, T.OBJECTIVE_VOCAB):
        hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id = T.BOS, T.EOG, T.PAD
        compact_tokenizer(model.config.vocab_size).save_pretrained(str(path))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()      # its "Writing model shards" bar in every quiet log
    try:
        hf.save_pretrained(str(path))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # The weights come out 0600 whatever the umask (written through a private temporary file);
    # give them the mode config.json got from a plain write, as every other file arcfast writes.
    mode = stat.S_IMODE((path / "config.json").stat().st_mode)
    for f in path.glob("*.safetensors"):
        os.chmod(f, mode)
    return path
