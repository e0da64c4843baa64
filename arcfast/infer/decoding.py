"""What a generation call takes and gives (:class:`GenerationConfig`, :class:`Generation`,
:class:`GenerationStats`) and how each token is chosen: greedy, or Gumbel-max sampling with noise
drawn from a hash of (seed, key, position), so a row's samples do not depend on its batch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..arc import vocab as T


MAX_NEW_TOKENS = T.grid_len(T.MAX_SIZE, T.MAX_SIZE)  # 931: a 30x30 grid with its EOG


LORA_MODES = ("auto", "single", "grouped", "segments", "gather")


@dataclass
class GenerationConfig:
    """Settings of one generation call.

    max_new_tokens: tokens generated at most per prompt (EOG included); default: the largest grid.
    stop_on_eog:    stop a row at its first EOG (False forces ``max_new_tokens`` tokens: benchmarks).
    temperature:    0 = greedy; > 0 samples from softmax(logits / temperature).
    top_k:          when sampling, keep only the ``top_k`` most likely tokens (0 = all).
    seed:           sampling seed (with each prompt's key; see module docstring).
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    stop_on_eog: bool = True
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        self.max_new_tokens, self.top_k, self.seed = int(self.max_new_tokens), int(self.top_k), int(self.seed)

    @property
    def sampling(self) -> tuple:
        """What a captured step bakes in: (temperature, top_k), (0.0, 0) for greedy."""
        return (0.0, 0) if self.temperature == 0.0 else (float(self.temperature), self.top_k)


@dataclass
class Generation:
    """One prompt's output.

    tokens:   int32 [n] generated ids (the EOG included when the row stopped on it).
    logprobs: float32 [n] log-probability of each generated token (fp32 log-softmax, temperature 1).
    """

    tokens: np.ndarray
    logprobs: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def logprob(self) -> float:
        """Total log-probability of the generated tokens (float64 sum)."""
        return float(np.sum(self.logprobs, dtype=np.float64))

    @property
    def finished(self) -> bool:
        """Whether the output ended with EOG (False: cut at ``max_new_tokens``)."""
        return self.n_tokens > 0 and int(self.tokens[-1]) == T.EOG


# A deadline-bound call's first prefill, unmeasured, is first measured on this many tokens.
PREFILL_PROBE_TOKENS = 256


@dataclass
class GenerationStats:
    """What the last call did: counts and seconds (wall clock, device synchronised at the end),
    and the measured rates a caller plans its next call from.

    Rates (the :class:`Generator` keeps them between calls, and a deadline is kept with them: no
    prefill micro-batch and no decode chunk is started that would end past it at these rates):

    prefill_s_per_token: seconds per prefill token, padding included (``prefill_s`` over
                         ``prefill_padded_tokens`` of this call; the generator's last estimate when
                         this call ran no prefill; 0.0 when nothing was ever measured).
    decode_s_per_step:   seconds per decode step of this call, over the steps whose chunk captured
                         no CUDA graph (0.0 when none was measured); a step costs about this at the
                         batch sizes this call ran.
    step_s_by_batch:     batch bucket -> seconds per decode step, the latest measurement at that
                         size (also from earlier calls): what the next call starts planning from.
    capture_s:           seconds of the latest CUDA graph capture (0.0: none yet); a decode chunk
                         that needs a new graph is planned to cost this much more.
    """

    prompts: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    row_steps: int = 0          # sum over decode steps of the batch size run (padding included)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    graphs_captured: int = 0
    compactions: int = 0
    lora_modes: dict = field(default_factory=dict)
    cut_by_deadline: int = 0    # prompts stopped in flight or never started because of the deadline
    prefill_padded_tokens: int = 0   # tokens the prefill forwards ran over, padding included
    prefill_s_per_token: float = 0.0
    decode_s_per_step: float = 0.0
    step_s_by_batch: dict = field(default_factory=dict)
    capture_s: float = 0.0

# Token choice (shared by prefill, the eager step and the captured step)
_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(seed: int, keys: torch.Tensor, index: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise float32 [B, vocab], a pure function of (seed, keys[b], index[b], v).
    keys, index: int64 [B]."""
    h = _mix32(torch.full_like(keys, (seed * 0x9E3779B1 + 0x632BE5AB) & _M32))
    h = _mix32(h ^ (keys & _M32))
    h = _mix32(h ^ (index & _M32))
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = _mix32(h[:, None] ^ _mix32(v + 0x165667B1)[None, :])
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


def choose_tokens(logits: torch.Tensor, keys: torch.Tensor, index: torch.Tensor, sampling: tuple,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of each row. logits [B, V] (any float dtype); keys, index int64 [B].
    Returns (token int64 [B], its log-probability float32 [B] at temperature 1)."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    temperature, top_k = sampling
    if temperature == 0.0:
        choice = logits.argmax(dim=-1)
    else:
        z = logits / temperature
        if top_k and top_k < z.shape[-1]:
            kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        choice = (z + gumbel_noise(seed, keys, index, z.shape[-1])).argmax(dim=-1)
    return choice, logp.gather(1, choice[:, None])[:, 0]


def check_requests(prompts: Sequence, adapter_ids: Optional[Sequence[int]], lora, vocab: int,
                   keys: Optional[Sequence[int]] = None, who: str = "") -> tuple:
    """``(prompts as int64 arrays, adapter ids int64 [n], keys int64 [n])`` of a generation or
    search call, every problem a ValueError naming the prompt and the place: a prompt that is not a
    non-empty 1-D integer array, a token id outside ``0..vocab-1``, an adapter id that is neither
    -1 (the base model) nor a slot of ``lora``, counts of adapter ids or keys that differ from the
    prompts'. ``who`` prefixes each message."""
    out = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1 or a.shape[0] == 0:
            raise ValueError(f"{who}prompt {i}: must be a non-empty 1-D array of token ids, got shape {a.shape}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"{who}prompt {i}: token ids must be integers, got dtype {a.dtype}")
        bad = np.flatnonzero((a < 0) | (a >= vocab))
        if bad.size:
            raise ValueError(f"{who}prompt {i}: token id {int(a[bad[0]])} at position {int(bad[0])} is outside "
                             f"the model's vocabulary 0..{vocab - 1}")
        out.append(a.astype(np.int64))
    n = len(out)
    if adapter_ids is None:
        adapters = np.full(n, -1, dtype=np.int64)
    else:
        adapters = np.asarray(adapter_ids, dtype=np.int64).reshape(-1)
        if adapters.shape[0] != n:
            raise ValueError(f"{who}{adapters.shape[0]} adapter_ids for {n} prompts")
        n_ad = 0 if lora is None else lora.weight.shape[0]
        bad = np.flatnonzero((adapters < -1) | (adapters >= n_ad))
        if bad.size:
            i = int(bad[0])
            have = "no LoRA was given" if lora is None else f"the LoRA holds adapters 0..{n_ad - 1}"
            raise ValueError(f"{who}prompt {i}: adapter id {int(adapters[i])} is invalid ({have}; -1 = base model)")
    k = np.arange(n, dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64).reshape(-1)
    if k.shape[0] != n:
        raise ValueError(f"{who}{k.shape[0]} keys for {n} prompts")
    return out, adapters, k
