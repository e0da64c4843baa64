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

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arc import vocab as T
from ..kernels.add_rmsnorm import add_rms_norm_reference
from ..kernels.rmsnorm import rms_norm_reference
from ..kernels.rope import rope_reference
from ..kernels.swiglu import swiglu_reference
from ..runtime import default_dtype, resolve_device, with_fallback
from .attention import causal_attention
from .config import ModelConfig

# ----------------------------------------------------------------------------------------------
# Plain-torch operations (the kernels in arcfast.kernels compute the same functions)

@dataclass
class Ops:
    """The elementwise/normalisation operations a model runs with (plain torch or Triton)."""

    name: str
    rmsnorm: Callable
    swiglu: Callable
    rope: Callable
    add_rmsnorm: Callable   # inference only: (x, delta, weight, eps) -> (x + delta, its norm)


def _per_token(rope):
    """``rope(q, k, cos, sin)`` with one cos/sin row per token ([R, L, D], the rows the model builds
    for packed positions) from a kernel-style rope taking [positions, D] tables."""
    def apply(q, k, cos, sin):
        D = cos.shape[-1]
        return rope(q, k, cos.reshape(-1, D), sin.reshape(-1, D))
    return apply


# The plain path is the kernels' own references (Hugging Face's ops, line for line): one reference per op.
TORCH_OPS = Ops("torch", rms_norm_reference, swiglu_reference, _per_token(rope_reference), add_rms_norm_reference)


def triton_ops() -> Ops:
    """The fused Triton kernels of arcfast.kernels (each falls back to its reference on the CPU).
    The rope kernel rotates q and k in place."""
    from ..kernels.add_rmsnorm import add_rms_norm
    from ..kernels.rmsnorm import rms_norm
    from ..kernels.rope import rope_
    from ..kernels.swiglu import swiglu

    # Each kernel falls back to its reference, and the Triton path goes off for the run, where it
    # raises (a compile error on an older GPU): see arcfast.runtime.
    return Ops("triton", with_fallback("triton", rms_norm, rms_norm_reference),
               with_fallback("triton", swiglu, swiglu_reference),
               with_fallback("triton", _per_token(rope_), TORCH_OPS.rope),
               with_fallback("triton", add_rms_norm, add_rms_norm_reference))


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
