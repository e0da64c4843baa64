"""Conversion to and from ``transformers``: the same parameter names both ways, so state dicts copy as they are; and a tokenizer for the compact vocabulary."""
from __future__ import annotations


import torch

from ..arc import vocab as T
from .config import CheckpointError, FAMILIES, ModelConfig, _REQUIRED, _json_kind, json_field
from .decoder import CausalLM, rope_inv_freq


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
