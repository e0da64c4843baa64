"""Plain reference for arcfast.infer.verify: one verification prompt at a time through the model's own
unpacked forward."""
from __future__ import annotations

import numpy as np

from ..arc import vocab as T
from .score import target_logprobs_reference


def verdict_reference(model, task, test_index: int, grid, augmentation, lora=None, adapter: int = -1) -> float:
    """The verifier's P(right) of ``grid`` (original frame) as the answer to
    ``task.test[test_index]`` under ``augmentation``: P(YES) / (P(YES) + P(NO)) at the prompt's
    final VERDICT."""
    from ..samples.prompts import build_verify_prompts

    prompt = build_verify_prompts(task, test_index, [np.asarray(grid, np.uint8)], [augmentation])[0]
    yes = float(target_logprobs_reference(model, prompt, [T.YES], lora, adapter)[0])
    no = float(target_logprobs_reference(model, prompt, [T.NO], lora, adapter)[0])
    return float(np.exp(yes) / (np.exp(yes) + np.exp(no)))
