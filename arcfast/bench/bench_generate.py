"""Batched multi-adapter generation against transformers ``generate`` + PEFT, same prompts, same run.

    arcfast bench -k generate                # GPU: the DESIGN.md workload
    arcfast bench -k generate --quick        # smaller
    arcfast bench -k generate --set hf_full_vocab=1   # also the full-vocabulary baseline

Workload (GPU): the Qwen2.5-0.5B architecture with random weights (bf16, compact 16-id vocabulary),
LoRA r = 32 on every linear layer, 96 prompts of 1,400-1,600 random compact tokens, 200 new tokens
each (forced: EOG ignored), with 1 adapter for every prompt and with 16 adapters mixed (prompt i
uses adapter i mod 16). The baseline is transformers ``generate`` (greedy, SDPA, left padding, one
batch) on the same model converted with ``to_hf``, the adapters loaded through PEFT from their
saved directories (mixed via PEFT's ``adapter_names``). On the CPU: the tiny config, 16 prompts of
~100 tokens, 24 new tokens (``--quick``: 8 prompts, 8 new tokens).

Value: generated tokens per second of one call (prefill included) after a warm-up call on the same
Generator (which captures the CUDA graphs; its time is in ``extra.first_call_s``).
``--set prompts=N --set new=N --set prompt_len=N --set adapters=N`` change the sizes; our model runs
the fused Triton norm / RoPE / SwiGLU kernels on a GPU (``--set ops=torch``: the plain ones; the
baseline is unchanged). With one adapter the decode step uses it merged into the weights
(``Generator(merge_single=True)``, the default); ``--set merge=0`` keeps the low-rank path. Mixed
adapters decode fused (``fuse_lora=True``); ``--set fuse=0`` runs the seven projections apart;
``--set lora_mode=segments|grouped|gather`` picks the mixed-adapter path (default: grouped GEMMs on
sm90+, the Triton segment kernels on other GPUs).
"""
from __future__ import annotations

import tempfile
import time

from .runner import Context, Row, with_torch_threads

BENCH = "generate"


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _sizes(ctx: Context) -> dict:
    if ctx.device == "cuda":
        s = dict(model="qwen2.5-0.5b", prompts=96, new=200, prompt_len=1500, adapters=16, r=32)
        if ctx.quick:
            s.update(prompts=32, new=64, prompt_len=1000)
    else:
        s = dict(model="tiny", prompts=16, new=24, prompt_len=100, adapters=16, r=8)
        if ctx.quick:
            s.update(prompts=8, new=8, prompt_len=60, adapters=4)
    for k in ("prompts", "new", "prompt_len", "adapters", "r"):
        if k in ctx.options:
            s[k] = int(ctx.options[k])
    if "model" in ctx.options:
        s["model"] = ctx.options["model"]
    return s


def _prompts(n: int, length: int, seed: int = 0):
    import numpy as np

    from ..arc import vocab as T

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        L = int(rng.integers(length * 14 // 15, length * 16 // 15 + 1))
        body = rng.integers(0, 11, size=L - 2)
        out.append(np.concatenate([[T.BOS], body, [T.OUTPUT]]).astype(np.int32))
    return out


def _hf_peft(hf, lora, adapters):
    """``hf`` with adapters ``adapters`` of ``lora`` loaded through PEFT, named by their index."""
    from peft import PeftModel

    from ..lora.adapters import save_adapter

    with tempfile.TemporaryDirectory() as d:
        for a in adapters:
            save_adapter(f"{d}/{a}", lora.get(a), lora.cfg)
        model = PeftModel.from_pretrained(hf, f"{d}/{adapters[0]}", adapter_name=str(adapters[0]))
        for a in adapters[1:]:
            model.load_adapter(f"{d}/{a}", adapter_name=str(a))
    return model.eval()


def _hf_generate(model, prompts, new, device, adapter_names=None):
    import torch

    from ..arc import vocab as T
    from ..reference.generate import left_padded

    ids, mask = left_padded(prompts)
    L = ids.shape[1]
    kw = {} if adapter_names is None else {"adapter_names": adapter_names}
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids).to(device),
                             attention_mask=torch.from_numpy(mask).to(device),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1,
                             eos_token_id=None, pad_token_id=T.PAD, **kw)
    return int((out.shape[1] - L) * out.shape[0])


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    r = fn()
    _sync(device)
    return r, time.perf_counter() - t0


def run(ctx: Context) -> list[Row]:
    return with_torch_threads(ctx, _run)


def _run(ctx: Context) -> list[Row]:
    import torch

    from ..infer.decoding import GenerationConfig
    from ..infer.generate import Generator
    from ..lora.multi import LoRAConfig, MultiLoRA
    from ..model.decoder import build_model
    from ..model.config import preset
    from ..model.hf import to_hf

    s = _sizes(ctx)
    dev = ctx.device
    model = build_model(preset(s["model"]), device=dev, seed=0).eval()
    # The fused Triton norm / RoPE / SwiGLU kernels on a GPU (as a TTFT run has them: the trainer
    # sets them); --set ops=torch for the plain ones.
    ops = ctx.options.get("ops", "triton" if dev == "cuda" else "torch")
    model.set_ops(ops)
    lora = MultiLoRA(model, LoRAConfig(r=s["r"], alpha=2.0 * s["r"]), n_adapters=s["adapters"])
    with torch.no_grad():
        g = torch.Generator(device=lora.weight.device).manual_seed(1)
        lora.weight.normal_(0.0, 0.02, generator=g)
    prompts = _prompts(s["prompts"], s["prompt_len"])
    n_prompt_tokens = sum(len(p) for p in prompts)
    cfg = GenerationConfig(max_new_tokens=s["new"], stop_on_eog=False)
    on = lambda key: ctx.options.get(key, "1") not in ("0", "false", "no")
    gen = Generator(model, lora=lora, merge_single=on("merge"), fuse_lora=on("fuse"),
                    lora_mode=ctx.options.get("lora_mode", "auto"))
    cases = [("1 adapter", [0] * len(prompts)),
             (f"{s['adapters']} adapters mixed", [i % s["adapters"] for i in range(len(prompts))])]
    if "hf_full_vocab" in ctx.options:
        cases = cases[:1]
    rows = []
    for case, ids in cases:
        _, first = _timed(lambda: gen.generate(prompts, ids, cfg), dev)
        graphs = gen.stats.graphs_captured  # by the warm-up call; the timed call replays them
        outs, secs = _timed(lambda: gen.generate(prompts, ids, cfg), dev)
        n_tok = sum(o.n_tokens for o in outs)
        st = gen.stats
        used = sorted(set(ids))
        peft = _hf_peft(to_hf(model), lora, used)
        names = None if len(used) == 1 else [str(a) for a in ids]
        if names is None:
            peft.set_adapter(str(used[0]))
        _hf_generate(peft, prompts[:2], 2, dev, None if names is None else names[:2])  # warm-up
        hf_tok, hf_secs = _timed(lambda: _hf_generate(peft, prompts, s["new"], dev, names), dev)
        rows.append(Row(
            bench=BENCH, case=f"{s['model']}, {len(prompts)} x ~{s['prompt_len']} prompt, {s['new']} new, {case}",
            value=n_tok / secs, unit="generated tok/s",
            baseline="transformers generate + PEFT", baseline_value=hf_tok / hf_secs,
            extra=dict(seconds=secs, baseline_seconds=hf_secs, first_call_s=first, prompt_tokens=n_prompt_tokens,
                       prefill_s=st.prefill_s, decode_s=st.decode_s, decode_steps=st.decode_steps,
                       ms_per_step=1e3 * st.decode_s / max(st.decode_steps, 1), graphs=graphs,
                       lora_modes=st.lora_modes, cuda_graphs=gen.cuda_graphs, dtype=str(model.dtype),
                       ops=model.ops.name)))
        del peft
    if "hf_full_vocab" in ctx.options:
        # What the common stack runs: the full 151,936-id vocabulary, the same base weights elsewhere.
        full = build_model(preset(s["model"], vocab="full"), device=dev, seed=0).eval()
        hf_full = _hf_peft(to_hf(full), lora, [0])
        _hf_generate(hf_full, prompts[:2], 2, dev)
        hf_tok, hf_secs = _timed(lambda: _hf_generate(hf_full, prompts, s["new"], dev), dev)
        rows.append(Row(bench=BENCH, case=f"{s['model']}, 1 adapter, baseline with the full vocabulary",
                        value=rows[0].value, unit="generated tok/s",
                        baseline="transformers generate + PEFT, full vocab", baseline_value=hf_tok / hf_secs,
                        extra=dict(baseline_seconds=hf_secs)))
    return rows
