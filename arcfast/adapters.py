"""LoRA adapters on disk, in PEFT's format.

A directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with the keys and shapes
PEFT gives the equivalent transformers model (see :func:`arcfast.model.to_hf`)::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   [r, din]
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   [dout, r]

so ``peft.PeftModel.from_pretrained(to_hf(model), dir)`` loads it as is. ``use_rslora: true`` in
the config says the scaling is ``alpha / sqrt(r)`` rather than ``alpha / r`` (see
:attr:`arcfast.lora.LoRAConfig.scaling`); DoRA adapters are refused. LoRA never touches the
embedding or LM head, so an adapter trained on a compact-vocabulary model also applies to the
original full-vocabulary checkpoint.

In memory an adapter is ``{layer name: (A [din, r], B [r, dout])}`` (arcfast's layout, x @ A @ B).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from .lora import LoRAConfig
from .outdir import fresh_dir

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def to_peft(tensors: dict, dtype: Optional[torch.dtype] = None) -> dict:
    """``{name: (A [din, r], B [r, dout])}`` -> PEFT state dict ``{key: tensor}`` (contiguous, CPU)."""
    out = {}
    for name, (a, b) in tensors.items():
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
    for key, t in sd.items():
        k = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        for which in ("lora_A", "lora_B"):
            tag = f".{which}."
            if tag in k:
                name = k.split(tag)[0]
                parts.setdefault(name, {})[which] = t
                break
        else:
            raise ValueError(f"{source}: key {key!r} is not a LoRA A/B weight (only LoRA on linear layers is read)")
    out = {}
    for name, ab in parts.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"{source}: layer {name} has {sorted(ab)} but needs both lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{source}: layer {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                             f"are not [r, din] and [dout, r]")
        out[name] = (a.t().float().contiguous(), b.t().float().contiguous())
    return out


def adapter_config(cfg: LoRAConfig, base_model: str = "") -> dict:
    """The adapter_config.json of a LoRA of config ``cfg``."""
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
    }


def _header_str(value) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def save_adapter(path, tensors: dict, cfg: LoRAConfig, base_model: str = "",
                 dtype: Optional[torch.dtype] = None, meta: Optional[dict] = None) -> Path:
    """Write an adapter directory atomically (a temporary sibling, then renamed into place), with
    the modes a plain ``mkdir`` and file write give under the current umask.

    ``tensors``: ``{name: (A [din, r], B [r, dout])}``; ``dtype``: saved dtype (default: as given,
    fp32 for arcfast's master weights); ``meta``: strings stored in the safetensors header (a
    character with no UTF-8 form, such as a lone surrogate from a JSON task id, kept as its
    ``\\uXXXX`` escape)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(path.parent, f".{path.name}.")
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(adapter_config(cfg, base_model), indent=2))
        md = {"format": "pt", **{_header_str(k): _header_str(v) for k, v in (meta or {}).items()}}
        # Written here, not by save_file, which creates its file 0600 whatever the umask. The bytes
        # are held once in memory: tens of MB for a rank-32 adapter of a 0.5B model in fp32.
        (tmp / WEIGHTS_NAME).write_bytes(save(to_peft(tensors, dtype), metadata=md))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_adapter(path) -> tuple[LoRAConfig, dict]:
    """Read a PEFT LoRA directory -> (config, ``{name: (A [din, r], B [r, dout])}``).

    Raises FileNotFoundError when the directory or one of its files is missing, and
    :class:`arcfast.model.CheckpointError` (a ValueError) naming the file when adapter_config.json
    is not a JSON object with a positive integer ``r`` (numbers for ``lora_alpha`` and
    ``lora_dropout``, a boolean ``use_rslora``), is a DoRA adapter (``use_dora``), or the weights
    are truncated, corrupt or do not match it."""
    from .model import CheckpointError, json_field, read_json_object, read_safetensors

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
    tensors = from_peft(sd, str(source))
    if not targets or isinstance(targets, str):  # absent, or a regular expression: the layers present
        targets = sorted({n.split(".")[-1] for n in tensors})
    try:
        cfg = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(targets), rslora=rslora)
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    for name, (a, b) in tensors.items():
        if a.shape[1] != cfg.r:
            raise CheckpointError(f"{source}: layer {name} has rank {a.shape[1]}, {CONFIG_NAME} says r={cfg.r}")
    return cfg, tensors


def load_adapter_for(path, lora_cfg: LoRAConfig) -> dict:
    """The adapter at ``path`` as ``{name: (A, B)}`` for slots of ``lora_cfg``: the rank must match
    (ValueError naming both); a different scaling (alpha, rsLoRA) is folded into B (in fp32), so each
    layer's update, scaling x B A, is what the adapter was trained as."""
    cfg, tensors = load_adapter(path)
    if cfg.r != lora_cfg.r:
        raise ValueError(f"{path}: adapter rank {cfg.r} differs from r={lora_cfg.r} of the adapters it starts")
    scale = cfg.scaling / lora_cfg.scaling
    return tensors if scale == 1.0 else {n: (a, b.float() * scale) for n, (a, b) in tensors.items()}


def merge_adapter(model, adapter) -> list:
    """Add the PEFT LoRA adapter directory ``adapter`` into ``model``'s weights, in place:
    ``W += scaling * B @ A`` (W [dout, din], PEFT's B [dout, r], A [r, din]; scaling ``alpha / r``,
    or ``alpha / sqrt(r)`` for rsLoRA) on every layer it targets, summed in fp32 and rounded once to
    the model's dtype. The model then computes what it computed with the adapter attached. Returns
    the merged layer names; raises ValueError naming the directory and the layer, before changing
    anything, when a layer is not in the model or its shape differs."""
    import torch

    from .model import Linear

    cfg, tensors = load_adapter(adapter)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Linear)}
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
    return sorted(tensors)
