"""Plain references for arcfast.infer.rescore: one sequence at a time through the model's own unpacked
forward, the prompt built by the single-prompt builder and the grid encoded by itself."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .generate import own_head


@torch.no_grad()
def target_logprobs_reference(model, prompt, target, lora=None, adapter: int = -1) -> np.ndarray:
    """float32 [G]: log-probability of each token of ``target`` (compact ids int [G]) after ``prompt``
    (compact ids int [P]), fp32 log-softmax, ``adapter`` of ``lora`` on every token (-1: none)."""
    seq = np.concatenate([np.asarray(prompt, np.int64), np.asarray(target, np.int64)])
    tgt = np.asarray(target, np.int64)
    if model.config.token_ids is not None:
        table = np.asarray(model.config.token_ids, dtype=np.int64)
        seq, tgt = table[seq], table[tgt]
    ids = torch.as_tensor(seq, device=model.device)[None]
    step = None
    if lora is not None and adapter >= 0:
        step = lora.begin(np.full(ids.shape, adapter, dtype=np.int32), model.dtype, training=False)
    hidden = model(ids, lora=step)[0]
    P = len(prompt)
    logp = torch.log_softmax(model.logits(hidden[P - 1:-1], *own_head(step, len(tgt))).float(), dim=-1)
    return logp[torch.arange(len(tgt)), torch.as_tensor(tgt, device=logp.device)].cpu().numpy()


def score_item_reference(model, task, test_index: int, grid, augmentation, adapter: int = -1, lora=None,
                         max_prompt_len: Optional[int] = None) -> float:
    """The summed log-probability of ``grid`` (original frame), end-of-grid included, as the answer
    to ``task.test[test_index]`` prompted under ``augmentation``."""
    from ..arc.formats import encode
    from ..samples.prompts import build_inference_prompt

    prompt = build_inference_prompt(task, test_index, augmentation, max_len=max_prompt_len)
    target = encode(augmentation.apply_grid(np.asarray(grid, np.uint8), "output"), "compact")
    lp = target_logprobs_reference(model, prompt, target, lora, adapter)
    return float(np.sum(lp, dtype=np.float64))
