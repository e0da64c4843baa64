"""Plain reference for :func:`arcfast.infer.search.dfs`: a recursive depth-first search of one prompt where
every node reruns the model's own full forward over the prompt and its prefix (no cache, no
batching). Slow and obviously right."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..arc import vocab as T
from .generate import own_head


@torch.no_grad()
def dfs_reference(model, prompt, min_prob: float, lora=None, adapter: int = -1, max_new_tokens: int = 16,
                  keep_greedy: bool = True) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Every completion (ending with EOG, at most ``max_new_tokens`` tokens) of probability >=
    ``min_prob``, and the greedy one when ``keep_greedy``. Returns (tokens int32 [n], per-token
    log-probabilities float32 [n], is greedy) in the order found (greedy first)."""
    cfg = model.config
    vocab = torch.as_tensor(cfg.model_ids(np.arange(T.VOCAB_SIZE)), dtype=torch.long, device=model.device)
    log_p = math.log(min_prob)
    out = []

    def logp_next(ids):
        x = torch.as_tensor(cfg.model_ids(np.asarray(ids, np.int64)), device=model.device)[None]
        step = None
        if lora is not None and adapter >= 0:
            step = lora.begin(np.full(x.shape, adapter, dtype=np.int32), model.dtype, training=False)
        h = model(x, lora=step)
        return torch.log_softmax(model.logits(h[:, -1], *own_head(step, 1)).float(), dim=-1)[0, vocab].cpu().numpy()

    def visit(gen, lps, cum, greedy):
        lp = logp_next(list(prompt) + gen)
        g = int(np.argmax(lp))
        for t in np.argsort(-lp, kind="stable"):
            t = int(t)
            c = cum + float(lp[t])
            on_greedy = greedy and t == g
            if c < log_p and not (on_greedy and keep_greedy):
                continue
            if t == T.EOG:
                out.append((np.array(gen + [t], np.int32), np.array(lps + [float(lp[t])], np.float32), on_greedy))
            elif len(gen) + 1 < max_new_tokens:
                visit(gen + [t], lps + [float(lp[t])], c, on_greedy)

    visit([], [], 0.0, True)
    return out
