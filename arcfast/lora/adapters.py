"""LoRA adapters on disk, in PEFT's format.

A directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with the keys and shapes
PEFT gives the equivalent transformers model (see :func:`arcfast.model.hf.to_hf`)::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   [r, din]
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   [dout, r]

so ``peft.PeftModel.from_pretrained(to_hf(model), dir)`` loads it as is. ``use_rslora: true`` in
the config says the scaling is ``alpha / sqrt(r)`` rather than ``alpha / r`` (see
:attr:`arcfast.lora.multi.LoRAConfig.scaling`); DoRA adapters are refused. An adapter without token rows
never touches the embedding or LM head, so one trained on a compact-vocabulary model also applies
to the original full-vocabulary checkpoint.

An adapter's own embedding / LM-head rows (:attr:`arcfast.lora.multi.LoRAConfig.tokens`) are saved as
PEFT saves them:

- a compact-vocabulary model (its rows are the whole module): ``modules_to_save`` in the config
  and the modules' whole weights, ``base_model.model.model.embed_tokens.weight`` [V, d] and
  ``base_model.model.lm_head.weight`` [V, d] (a tied head gets its own copy, as PEFT's wrappers do);
- a full-vocabulary model: ``trainable_token_indices`` ``{"embed_tokens": [ids], ...}`` and the
  rows of those ids, ``base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta``
  [n, d] (PEFT's name; the rows themselves, not differences). A tied head reads the embedding's
  rows, as PEFT ties it, so only the embedding is listed.

In memory an adapter is ``{layer name: (A [din, r], B [r, dout])}`` (arcfast's layout, x @ A @ B)
and, where it trains token rows, ``{module path: rows [n, d]}`` (``"model.embed_tokens"``,
``"lm_head"``): the values that are not pairs.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..files import fresh_dir, swap_in
from ..model.config import CheckpointError, json_field, read_json_object, read_safetensors
from ..model.decoder import Linear
from .multi import TOKEN_MODULES, LoRAConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."


_TOKEN_PATHS = {path: module for module, path in TOKEN_MODULES.items()}
_TRAINABLE_TOKENS = ".token_adapter.trainable_tokens_delta"


def token_rows(tensors: dict) -> dict:
    """The token rows of an in-memory adapter: ``{module path: rows}`` (its values that are not pairs)."""
    return {k: v for k, v in tensors.items() if not isinstance(v, tuple)}


def lora_layers(tensors: dict) -> dict:
    """The LoRA layers of an in-memory adapter: ``{name: (A, B)}``."""
    return {k: v for k, v in tensors.items() if isinstance(v, tuple)}


def to_peft(tensors: dict, dtype: Optional[torch.dtype] = None, token_ids: Optional[list] = None) -> dict:
    """``{name: (A [din, r], B [r, dout])}`` (and token rows) -> PEFT state dict ``{key: tensor}``
    (contiguous, CPU). Token rows are saved as whole modules (``modules_to_save``), or as PEFT's
    trainable tokens where ``token_ids`` (the model ids of the rows) is given."""
    out = {}
    for path, rows in token_rows(tensors).items():
        if path not in _TOKEN_PATHS:
            raise ValueError(f"adapter entry {path!r} is neither a LoRA layer's (A, B) nor token rows of "
                             f"{', '.join(_TOKEN_PATHS)}")
        rows = rows.detach().contiguous().cpu()
        rows = rows.to(dtype) if dtype is not None else rows
        out[f"{_PREFIX}{path}{_TRAINABLE_TOKENS}" if token_ids is not None else f"{_PREFIX}{path}.weight"] = rows
    for name, (a, b) in lora_layers(tensors).items():
        a, b = a.detach().t().contiguous().cpu(), b.detach().t().contiguous().cpu()
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        out[f"{_PREFIX}{name}.lora_A.weight"] = a
        out[f"{_PREFIX}{name}.lora_B.weight"] = b
    return out


def from_peft(sd: dict, source: str = "adapter") -> dict:
    """PEFT state dict -> ``{name: (A [din, r], B [r, dout])}`` (fp32). Keys may carry an adapter
    name (``lora_A.default.weight``) as PEFT's in-memory state dicts do."""
    parts: dict[str, dict] = {}
    rows: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        k = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        # Token rows: a whole module (modules_to_save; in memory PEFT names its copy
        # ``<path>.modules_to_save.<adapter>.weight``) or trainable tokens (``...delta[.<adapter>]``).
        path = k.split(_TRAINABLE_TOKENS)[0] if _TRAINABLE_TOKENS in k else \
            k.split(".modules_to_save.")[0] if ".modules_to_save." in k else \
            k[:-len(".weight")] if k.endswith(".weight") and k[:-len(".weight")] in _TOKEN_PATHS else None
        if path is not None:
            if path not in _TOKEN_PATHS or t.dim() != 2:
                raise ValueError(f"{source}: key {key!r}: trained rows of {path!r} {tuple(t.shape)}; only the "
                                 f"embedding's and the LM head's 2-D rows are read")
            rows[path] = t.float().contiguous()
            continue
        for which in ("lora_A", "lora_B"):
            tag = f".{which}."
            if tag in k:
                name = k.split(tag)[0]
                parts.setdefault(name, {})[which] = t
                break
        else:
            raise ValueError(f"{source}: key {key!r} is not a LoRA A/B weight nor embedding / LM-head rows "
                             f"(only LoRA on linear layers and trained token rows are read)")
    out = {}
    for name, ab in parts.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"{source}: layer {name} has {sorted(ab)} but needs both lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{source}: layer {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                             f"are not [r, din] and [dout, r]")
        out[name] = (a.t().float().contiguous(), b.t().float().contiguous())
    return {**out, **rows}


def token_config(tensors: dict, token_ids: Optional[list] = None) -> dict:
    """The adapter_config.json fields of an adapter's token rows: ``modules_to_save`` (whole
    modules), or ``trainable_token_indices`` where ``token_ids`` gives the rows' model ids."""
    modules = [_TOKEN_PATHS[p] for p in _TOKEN_PATHS if p in token_rows(tensors)]
    if not modules:
        return {"modules_to_save": None}
    if token_ids is None:
        return {"modules_to_save": modules}
    return {"modules_to_save": None, "trainable_token_indices": {m: [int(i) for i in token_ids] for m in modules}}


def adapter_config(cfg: LoRAConfig, base_model: str = "", tokens: Optional[dict] = None) -> dict:
    """The adapter_config.json of a LoRA of config ``cfg`` (``tokens``: :func:`token_config`'s fields)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": cfg.rslora,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        **(tokens or {}),
    }


def _header_str(value) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def save_adapter(path, tensors: dict, cfg: LoRAConfig, base_model: str = "",
                 dtype: Optional[torch.dtype] = None, meta: Optional[dict] = None,
                 token_ids: Optional[list] = None) -> Path:
    """Write an adapter directory atomically (a temporary sibling, then renamed into place), with
    the modes a plain ``mkdir`` and file write give under the current umask.

    ``tensors``: ``{name: (A [din, r], B [r, dout])}`` and token rows; ``token_ids``: the model ids
    of those rows when they are not the whole module (PEFT's trainable tokens, see the module
    docstring; :meth:`arcfast.lora.multi.MultiLoRA.peft_token_ids`); ``dtype``: saved dtype (default: as given,
    fp32 for arcfast's master weights); ``meta``: strings stored in the safetensors header (a
    character with no UTF-8 form, such as a lone surrogate from a JSON task id, kept as its
    ``\\uXXXX`` escape)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(path.parent, f".{path.name}.")
    try:
        config = adapter_config(cfg, base_model, token_config(tensors, token_ids))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        md = {"format": "pt", **{_header_str(k): _header_str(v) for k, v in (meta or {}).items()}}
        # Written here, not by save_file, which creates its file 0600 whatever the umask. The bytes
        # are held once in memory: tens of MB for a rank-32 adapter of a 0.5B model in fp32.
        (tmp / WEIGHTS_NAME).write_bytes(save(to_peft(tensors, dtype, token_ids), metadata=md))
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_adapter(path) -> tuple[LoRAConfig, dict]:
    """Read a PEFT LoRA directory -> (config, ``{name: (A [din, r], B [r, dout])}`` and token rows).

    Raises FileNotFoundError when the directory or one of its files is missing, and
    :class:`arcfast.model.config.CheckpointError` (a ValueError) naming the file when adapter_config.json
    is not a JSON object with a positive integer ``r`` (numbers for ``lora_alpha`` and
    ``lora_dropout``, a boolean ``use_rslora``), is a DoRA adapter (``use_dora``), or the weights
    are truncated, corrupt or do not match it. ``config.tokens`` names the modules whose rows it
    trains (``modules_to_save`` / ``trainable_token_indices``)."""
    cfg, tensors, _ = _read_adapter(path)
    return cfg, tensors


def _read_adapter(path) -> tuple[LoRAConfig, dict, Optional[list]]:
    """:func:`load_adapter`, and the model ids of the token rows where it saved PEFT's trainable
    tokens (``trainable_token_indices``; None for whole modules or no rows)."""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such adapter directory")
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (not a PEFT adapter directory)")
    c = read_json_object(cfg_file)
    if c.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_file}: peft_type {c.get('peft_type')!r}; only LORA adapters are read")
    if c.get("use_dora"):
        raise CheckpointError(f"{cfg_file}: a DoRA adapter (use_dora: true); DoRA is not supported, "
                              f"only LoRA and rsLoRA adapters are read")
    r = json_field(c, "r", "count", cfg_file)
    rslora = json_field(c, "use_rslora", "flag", cfg_file, default=False)
    alpha = float(json_field(c, "lora_alpha", "number", cfg_file, default=r))
    dropout = float(json_field(c, "lora_dropout", "number", cfg_file, default=0.0))
    targets = c.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise CheckpointError(f"{cfg_file}: 'target_modules' is {targets!r}; a list of module names "
                              f"(or one regular expression) is expected")
    if w_file.exists():
        source = w_file
        sd = read_safetensors(w_file)
    elif (path / "adapter_model.bin").exists():
        import pickle

        source = path / "adapter_model.bin"
        try:
            sd = torch.load(str(source), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"{source}: truncated or corrupt PyTorch file: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: a state dict is expected, found {type(sd).__name__}")
    else:
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")
    try:
        tensors = from_peft(sd, str(source))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if not targets or isinstance(targets, str):  # absent, or a regular expression: the layers present
        targets = sorted({n.split(".")[-1] for n in lora_layers(tensors)})
    saved, token_ids = _token_fields(c, cfg_file)
    rows = token_rows(tensors)
    have = sorted(_TOKEN_PATHS[p] for p in rows)
    # A tied head's trainable tokens follow the embedding's: listed or not, only the embedding has rows.
    if token_ids is not None and "embed_tokens" in saved and "lm_head" in saved and "model.embed_tokens" in rows \
            and "lm_head" not in rows:
        saved = ["embed_tokens"]
    if sorted(saved) != have:
        raise CheckpointError(f"{source}: trained rows of {have or 'no module'}, but {CONFIG_NAME} names "
                              f"{sorted(saved) or 'none'} (modules_to_save / trainable_token_indices)")
    for p_, t in rows.items():
        if token_ids is not None and t.shape[0] != len(token_ids):
            raise CheckpointError(f"{source}: {t.shape[0]} trained rows of {_TOKEN_PATHS[p_]}, "
                                  f"{CONFIG_NAME} lists {len(token_ids)} token ids")
    try:
        cfg = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(targets), rslora=rslora,
                         tokens=tuple(saved))
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    for name, (a, b) in lora_layers(tensors).items():
        if a.shape[1] != cfg.r:
            raise CheckpointError(f"{source}: layer {name} has rank {a.shape[1]}, {CONFIG_NAME} says r={cfg.r}")
    return cfg, tensors, token_ids


def _token_fields(c: dict, cfg_file) -> tuple[list, Optional[list]]:
    """(modules with trained rows, their token ids or None) from an adapter_config.json dict."""
    mts, tti = c.get("modules_to_save"), c.get("trainable_token_indices")
    if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str) for m in mts)):
        raise CheckpointError(f"{cfg_file}: 'modules_to_save' is {mts!r}; a list of module names is expected")
    saved = [m.split(".")[-1] for m in (mts or [])]
    bad = [m for m in saved if m not in TOKEN_MODULES]
    if bad:
        raise CheckpointError(f"{cfg_file}: modules_to_save names {bad[0]!r}; only {', '.join(TOKEN_MODULES)} "
                              f"are read (whole modules of other kinds are not)")
    if tti is None:
        return saved, None
    if isinstance(tti, list):
        tti = {"embed_tokens": tti}
    if not isinstance(tti, dict) or not all(isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                        for i in v) for v in tti.values()):
        raise CheckpointError(f"{cfg_file}: 'trainable_token_indices' is {tti!r}; a list of token ids or "
                              f"{{module: [token ids]}} is expected")
    mods = [m.split(".")[-1] for m in tti]
    bad = [m for m in mods if m not in TOKEN_MODULES]
    if bad or saved:
        raise CheckpointError(f"{cfg_file}: trainable_token_indices of {bad[0] if bad else mods!r}"
                              f"{' beside modules_to_save' if saved else ''}; only the embedding's and the "
                              f"LM head's rows are read, listed one way")
    ids = list(tti.values())
    if any(v != ids[0] for v in ids):
        raise CheckpointError(f"{cfg_file}: trainable_token_indices lists different ids per module; one set "
                              f"of ids for the embedding and the head is read")
    return mods, ids[0]


def load_adapter_for(path, lora_cfg: LoRAConfig, token_ids: Optional[list] = None) -> dict:
    """The adapter at ``path`` as ``{name: (A, B)}`` (and token rows) for slots of ``lora_cfg``: the
    rank must match (ValueError naming both); a different scaling (alpha, rsLoRA) is folded into B (in
    fp32), so each layer's update, scaling x B A, is what the adapter was trained as. Token rows
    must be of modules ``lora_cfg`` trains and, as trainable tokens, of the ids ``token_ids``
    (:meth:`arcfast.lora.multi.MultiLoRA.peft_token_ids`, None: whole modules)."""
    cfg, tensors, ids = _read_adapter(path)
    if cfg.r != lora_cfg.r:
        raise ValueError(f"{path}: adapter rank {cfg.r} differs from r={lora_cfg.r} of the adapters it starts")
    rows = token_rows(tensors)
    extra = sorted(_TOKEN_PATHS[p] for p in rows if _TOKEN_PATHS[p] not in lora_cfg.tokens)
    if extra:
        raise ValueError(f"{path}: the adapter has trained rows of {', '.join(extra)}, which the adapters it starts "
                         f"do not train (their token modules: {', '.join(lora_cfg.tokens) or 'none'})")
    if rows and (ids is None) != (token_ids is None):
        raise ValueError(f"{path}: the adapter's token rows are " + ("whole modules (a compact vocabulary)" if ids is None
                         else "trainable tokens (a full vocabulary)") + ", the model's are not")
    if rows and ids is not None and list(ids) != list(token_ids):
        raise ValueError(f"{path}: the adapter's rows are of token ids {ids[:8]}..., the model's {list(token_ids)[:8]}...")
    scale = cfg.scaling / lora_cfg.scaling
    if scale == 1.0:
        return tensors
    return {n: (v[0], v[1].float() * scale) if isinstance(v, tuple) else v for n, v in tensors.items()}


def merge_adapter(model, adapter) -> list:
    """Add the PEFT LoRA adapter directory ``adapter`` into ``model``'s weights, in place:
    ``W += scaling * B @ A`` (W [dout, din], PEFT's B [dout, r], A [r, din]; scaling ``alpha / r``,
    or ``alpha / sqrt(r)`` for rsLoRA) on every layer it targets, summed in fp32 and rounded once to
    the model's dtype; its embedding / LM-head rows, where it trains them, replace the model's (a
    tied head given rows of its own is untied). The model then computes what it computed with the
    adapter attached. Returns the merged layer names (and module paths); raises ValueError naming
    the directory and the layer, before changing anything, when a layer is not in the model or its
    shape differs."""
    cfg, tensors, ids = _read_adapter(adapter)
    rows = token_rows(tensors)
    tensors = lora_layers(tensors)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Linear)}
    idx = _merge_rows_check(model, adapter, rows, ids)
    for name, (a, b) in tensors.items():          # arcfast layout: a [din, r], b [r, dout]
        m = layers.get(name)
        if m is None:
            raise ValueError(f"{adapter}: adapter layer {name!r} is not a linear layer of the model")
        dout, din = m.weight.shape
        if (a.shape[0], b.shape[1]) != (din, dout):
            raise ValueError(f"{adapter}: adapter layer {name} maps {a.shape[0]} -> {b.shape[1]} features, "
                             f"the model's layer {din} -> {dout}")
    with torch.no_grad():
        for name, (a, b) in tensors.items():
            w = layers[name].weight
            delta = (a.to(w.device) @ b.to(w.device)).t() * cfg.scaling
            w.copy_((w.float() + delta).to(w.dtype))
        _merge_rows(model, rows, idx, whole=ids is None)
    return sorted(tensors) + sorted(rows)


def _merge_rows_check(model, adapter, rows: dict, ids: Optional[list]):
    """The model ids (int64 tensor) the adapter's token rows replace; ValueError naming the adapter
    where they do not fit the model."""
    if not rows:
        return None
    V, d = model.config.vocab_size, model.config.hidden_size
    idx = torch.arange(V) if ids is None else torch.as_tensor(ids, dtype=torch.long)
    if len(idx) and (idx.max() >= V or idx.min() < 0):
        raise ValueError(f"{adapter}: trained token id {int(idx.max())} is outside the model's {V} rows")
    for path, t in rows.items():
        if tuple(t.shape) != (len(idx), d):
            raise ValueError(f"{adapter}: rows of {path} are {tuple(t.shape)}, the model's "
                             f"{'module' if ids is None else 'listed rows'} {(len(idx), d)}")
    return idx


def _merge_rows(model, rows: dict, idx, whole: bool) -> None:
    """Write the adapter's token rows into ``model``. A tied head is untied first (its own copy of
    the embedding) where it gets rows of its own, or where the embedding's are whole modules, which
    PEFT gives the embedding alone; trainable tokens of a tied model are the head's rows too."""
    if not rows:
        return
    emb = model.model.embed_tokens
    if model.lm_head is None and ("lm_head" in rows or whole):
        head = Linear(emb.weight.shape[1], emb.weight.shape[0], False).to(emb.weight.device, emb.weight.dtype)
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        head.name = "lm_head"
        model.lm_head = head
        model.config = replace(model.config, tie_embeddings=False)
    for path, t in rows.items():
        w = emb.weight if path == "model.embed_tokens" else model.lm_head.weight
        w[idx.to(w.device)] = t.to(w.device, w.dtype)
