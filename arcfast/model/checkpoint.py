"""Checkpoints in and out: a preset, a shipped model or a local Hugging Face directory to a :class:`CausalLM` (vocabulary cut to the compact ids through the tokenizer's own digit tokens), and the model saved back in the same layout."""
from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..arc import vocab as T
from ..models import SHIPPED, shipped_model
from ..runtime import default_dtype, resolve_device
from .config import PRESETS, CheckpointError, json_field, preset, read_json_object, read_safetensors
from .decoder import CausalLM, build_model, rope_inv_freq
from .hf import compact_tokenizer, config_from_hf, to_hf


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
