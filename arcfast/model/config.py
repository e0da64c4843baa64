"""A model's architecture: :class:`ModelConfig` (the fields of a Hugging Face ``config.json`` arcfast reads), the built-in presets, and the checked JSON and safetensors readers that checkpoint loading shares."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..arc import vocab as T


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
