"""Plain references for arcfast.infer.generate.

- :func:`greedy_reference`: one prompt, no cache: every step reruns the model's own full forward
  over the prompt and everything generated so far. Slow and obviously right.
- :func:`hf_generate`: transformers ``generate`` (greedy) on the equivalent transformers model
  (:func:`arcfast.model.hf.to_hf`), batched with left padding.
- :func:`hf_with_adapter`: that model with one adapter of a MultiLoRA loaded through PEFT from the
  PEFT-format directory :func:`arcfast.lora.adapters.save_adapter` writes.
"""
from __future__ import annotations

import tempfile
from typing import Optional, Sequence

import numpy as np
import torch

from ..arc import vocab as T


@torch.no_grad()
def greedy_reference(model, prompt, lora=None, adapter: int = -1, max_new_tokens: int = 16,
                     stop_on_eog: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding of one prompt by full forwards. Returns (tokens int32 [n], per-token
    log-probabilities float32 [n], fp32 log-softmax)."""
    ids = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=model.device)[None]
    toks, lps = [], []
    for _ in range(max_new_tokens):
        step = None
        if lora is not None and adapter >= 0:
            step = lora.begin(np.full(ids.shape, adapter, dtype=np.int32), model.dtype, training=False)
        hidden = model(ids, lora=step)
        logits = model.logits(hidden[:, -1], *own_head(step, 1)).float()
        logp = torch.log_softmax(logits, dim=-1)[0]
        t = int(torch.argmax(logits[0]))
        toks.append(t)
        lps.append(float(logp[t]))
        if stop_on_eog and t == T.EOG:
            break
        ids = torch.cat([ids, torch.tensor([[t]], device=ids.device)], dim=1)
    return np.array(toks, dtype=np.int32), np.array(lps, dtype=np.float32)


def own_head(step, rows: int) -> tuple:
    """The ``tokens, adapters`` arguments of ``model.logits`` for ``rows`` hidden rows of the one
    adapter of ``step`` (a LoRAStep; nothing where it is None or trains no head rows)."""
    tokens = getattr(step, "tokens", None)
    if tokens is None:
        return ()
    return tokens, tokens.adapter_ids[:1].long().expand(rows)


def hf_with_adapter(hf_model, lora, adapter: int):
    """``hf_model`` wrapped by PEFT with adapter ``adapter`` of MultiLoRA ``lora`` loaded from disk
    (written in PEFT's format by arcfast.lora.adapters, read back by ``PeftModel.from_pretrained``)."""
    from peft import PeftModel

    from ..lora.adapters import save_adapter

    with tempfile.TemporaryDirectory() as d:
        save_adapter(f"{d}/adapter", lora.get(adapter), lora.cfg, token_ids=lora.peft_token_ids())
        peft_model = PeftModel.from_pretrained(hf_model, f"{d}/adapter")
    return peft_model.eval()


@torch.no_grad()
def left_padded(prompts) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as transformers ``generate`` takes a batch: int64 ``input_ids`` [n, longest] padded
    with PAD on the left, and the ``attention_mask`` (1 on real tokens)."""
    L = max(len(p) for p in prompts)
    ids = np.full((len(prompts), L), T.PAD, dtype=np.int64)
    mask = np.zeros((len(prompts), L), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = p
        mask[i, L - len(p):] = 1
    return ids, mask


def hf_generate(hf_model, prompts: Sequence, max_new_tokens: int, stop_on_eog: bool = True,
                batch_size: Optional[int] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """transformers greedy ``generate`` over ``prompts`` (left-padded batches of ``batch_size``,
    default all). Returns per prompt (tokens int32 [n], per-token log-probabilities float32 [n]),
    cut after the first EOG when ``stop_on_eog``."""
    device = next(hf_model.parameters()).device
    prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
    bs = batch_size or len(prompts)
    out = []
    for s in range(0, len(prompts), bs):
        group = prompts[s:s + bs]
        ids, mask = left_padded(group)
        L = ids.shape[1]
        res = hf_model.generate(
            input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device),
            max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, num_beams=1,
            eos_token_id=T.EOG if stop_on_eog else None, pad_token_id=T.PAD,
            return_dict_in_generate=True, output_logits=True)
        new = res.sequences[:, L:].cpu().numpy()
        logp = torch.stack([lg.float().log_softmax(-1) for lg in res.logits], dim=1)  # [b, n, V]
        chosen = logp.gather(2, res.sequences[:, L:, None].to(logp.device))[..., 0].cpu().numpy()
        for i in range(len(group)):
            n = new.shape[1]
            if stop_on_eog:
                hits = np.flatnonzero(new[i] == T.EOG)
                if hits.size:
                    n = int(hits[0]) + 1
            out.append((new[i, :n].astype(np.int32), chosen[i, :n].astype(np.float32)))
    return out
