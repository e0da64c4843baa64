"""LoRA training throughput: hf (transformers+PEFT, batch 1, full vocabulary: the common TTFT
recipe), unsloth (when importable) and native (packed rows, many tasks' adapters per step), in one run.

Workload: TTFT samples (leave-one-out prompts, augmented) of ARC-AGI-1 evaluation tasks, drawn by
arcfast.samples.sampling; LoRA r=32 (alpha 64) on every attention and MLP projection; AdamW. The model is a
built-in architecture with random weights (nothing downloaded): Qwen2.5-0.5B on CUDA, the tiny
config on the CPU.

    arcfast bench -k train                                  # defaults for the device
    arcfast bench -k train --set model=qwen2.5-0.5b --set tasks=16 --set steps=10

Options (``--set key=value``): model, steps, warmup, tasks (tasks per native step), per_task
(samples of each task per native step), row_len, max_len (longest sample), r, rslora (1: scaling
alpha/sqrt(r), e.g. with r=256 as NVARC trained), hf_steps,
attention/lora_path/ops/loss/compile/checkpoint (native TrainConfig fields), adapters and
adapter_max_len (the many-adapter case), cases (comma list of hf, unsloth, native1, native,
native1-graphs, native-graphs, many, hf-batch, unsloth-batch, and the recipe cases hf-nvarc,
unsloth-nvarc, native1-nvarc, native-nvarc, native-graphs-nvarc), hf_batch (samples per step of
the "-batch" cases).

Recipe cases (``-nvarc``): NVARC's per-task LoRA (r=256, alpha 32, rsLoRA, every projection) plus
each task's own embedding and LM-head rows, compact vocabulary; ``hf-nvarc`` runs it in
transformers+PEFT (``modules_to_save``) at batch 1, as NVARC trained, and is the baseline of the
other recipe cases. Their MFU leaves out the LoRA's own FLOPs, which are no longer negligible at
r=256.

Cases: ``hf-batch`` / ``unsloth-batch`` run those stacks with their own best throughput settings
rather than the TTFT recipe: ``hf_batch`` samples per step (8 on a GPU, right-padded: Unsloth's
padding-free mode lives in its trainer, which this per-step interface does not use) and the compact
vocabulary. ``native1-graphs`` and ``native-graphs`` are ``native1`` and ``native`` with the step
replayed as a CUDA graph (arcfast.train.graph; GPU only; batch-1 rows padded to bucketed lengths). ``many`` packs one sample of each of ``adapters`` tasks (64 on a
GPU) into one batch and times it with one adapter per task, then the very same batch with every
token through a single adapter: the ratio is the cost of many adapters (bar: >= 0.9).

Reported per case: trained (real, non-padding) tokens/s, samples/s, peak GPU memory, and MFU =
model FLOPs / time / peak bf16 FLOP/s of the GPU, where a trained token costs 4 x (weights in the
forward, the LM head at the vocabulary actually used included) + the attention over its sample
(forward 1x, backward 2x): the frozen base needs no weight gradients, LoRA's own FLOPs are
negligible at r=32.

Measured on an H100 80GB (torch 2.11, bf16, Qwen2.5-0.5B architecture, 16 tasks' samples of
arc1:eval, two each, 1.8k-2.3k tokens on average; benchmarks/results/2026-11-22T112728-gpu-train.json
in the source tree): hf batch 1 full vocab 9.0k tokens/s (3.9 samples/s, 22.6 GiB peak, MFU 2.2%);
native batch 1 8.6k (6.6 GiB); native, 16 tasks per step packed in rows of 8,192: 96.4k tokens/s,
52 samples/s, 37 GiB, MFU 17.8%, 10.7x hf. Both step times are ~0.3 s whatever the batch: the host
is the bottleneck (a profile puts half of it in the Python side of the LoRA kernels' launches), so
more tasks per step are nearly free. Same run with the LoRA delta through ``torch._grouped_mm`` and
plain-torch norms/SwiGLU/loss: 51.9k tokens/s. With FlexAttention instead of varlen
(benchmarks/results/2026-11-22T111931-gpu-train-flex.json): 85.7k packed, but 0.5k at batch 1,
where every new sample length recompiles it.
"""
from __future__ import annotations

import gc
import time
from typing import Optional

import numpy as np

from .runner import Context, Row

# Dense bf16 (fp16 for the T4) peak FLOP/s by device name substring.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 181e12, "L4": 121e12, "A10": 125e12,
              "T4": 65e12, "4090": 165e12, "3090": 71e12}


def peak_flops(device: str) -> Optional[float]:
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    for key, val in PEAK_FLOPS.items():
        if key in name:
            return val
    return None


def flops_per_token(cfg, vocab: int, mean_context: float) -> float:
    """Model FLOPs of one LoRA-trained token (see the module docstring)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    weights = cfg.n_params(embeddings=False) + vocab * d
    attn_fwd = 4.0 * cfg.n_layers * cfg.n_heads * hd * mean_context
    return 4.0 * weights + 3.0 * attn_fwd


def mean_context(lengths) -> float:
    """Mean number of keys a token attends to (causal within its sample)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return float((lengths * (lengths + 1) / 2).sum() / lengths.sum())


# ----------------------------------------------------------------------------------------------
# Samples

def ttft_samples(n_tasks: int, per_task: int, max_len: int, seed: int = 0):
    """(tokens, labels, task index) of ``per_task`` samples of each of the first ``n_tasks``
    ARC-AGI-1 evaluation tasks that yield samples within ``max_len``; and how they were made."""
    from ..arc.loading import load_tasks
    from ..samples.sampling import SampleConfig, make_samples

    tasks = load_tasks("arc1:eval")
    ss = make_samples(tasks, per_task, seed=seed, config=SampleConfig(max_len=max_len))
    by_task: dict = {}
    for s in ss:
        by_task.setdefault(s.task_id, []).append(s)
    chosen = [v for v in by_task.values() if len(v) == per_task][:n_tasks]
    if len(chosen) < n_tasks:
        raise RuntimeError(f"only {len(chosen)} tasks give {per_task} samples within {max_len} tokens")
    out = [[(s.input_ids.astype(np.int32), s.labels.astype(np.int32), a) for s in v] for a, v in enumerate(chosen)]
    return out, "arcfast.samples.sampling.make_samples (arc1:eval, leave-one-out, augmented)"


# ----------------------------------------------------------------------------------------------
# Cases

def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _reset_peak(device):
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> Optional[float]:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2 ** 30


def _measure(device, run_step, batches, warmup: int, flops_tok: Optional[float] = None) -> dict:
    """Time ``run_step`` over ``batches`` after ``warmup`` untimed steps on the first ones."""
    for b in batches[:warmup]:
        run_step(b)
    _sync(device)
    timed = batches[warmup:]
    t0 = time.perf_counter()
    losses = []
    for b in timed:
        losses.append(run_step(b))
    _sync(device)
    dt = time.perf_counter() - t0
    tokens = sum(int((b.sample_ids >= 0).sum()) for b in timed)
    samples = sum(b.n_samples for b in timed)
    return {"tokens_per_s": tokens / dt, "samples_per_s": samples / dt, "steps": len(timed), "time_s": dt,
            "tokens": tokens, "step_ms": 1000 * dt / max(1, len(timed)), "last_loss": losses[-1] if losses else None}


def _nvarc_lora():
    from ..lora.multi import LoRAConfig

    return LoRAConfig(r=256, alpha=32.0, rslora=True, tokens=("embed_tokens", "lm_head"))


# The recipe cases ("<case>-nvarc"): NVARC's per-task LoRA, r=256, alpha 32, rsLoRA, with each
# task's own embedding and LM-head rows (arcfast.run.recipes), beside the plain r=32 cases.
RECIPE_SUFFIX = "-nvarc"


def _lora_desc(lcfg) -> str:
    if not lcfg.tokens and not lcfg.rslora and lcfg.r == 32:
        return ""
    return (f", LoRA r={lcfg.r} alpha {lcfg.alpha:g}{' rsLoRA' if lcfg.rslora else ''}"
            f"{' + embedding and head rows' if lcfg.tokens else ''}")


def run_case(name: str, ctx: Context, opts: dict, data, ref_cfg) -> dict:
    import torch

    from ..lora.multi import LoRAConfig
    from ..model.checkpoint import load_model
    from ..train.trainer import TrainConfig, pack_samples

    device = ctx.device
    recipe = name.endswith(RECIPE_SUFFIX)
    kind = name[:-len(RECIPE_SUFFIX)] if recipe else name
    lcfg = _nvarc_lora() if recipe else LoRAConfig(r=opts["r"], alpha=2 * opts["r"], rslora=opts["rslora"])
    base = dict(lr=1e-4, steps=1000, warmup_steps=0)
    _reset_peak(device)
    flat = [s for task in data for s in task]
    if kind in ("hf", "unsloth", "hf-batch", "unsloth-batch"):
        from ..train.backends import select_backend

        cls, reason = select_backend(kind.split("-")[0])
        batched = kind.endswith("-batch")
        # batch 1 with the full vocabulary: the common recipe; "-batch": the stack's own best
        # settings for throughput: k samples per step (right-padded) and the compact vocabulary.
        # NVARC's recipe cut the vocabulary to 16 tokens: compact.
        vocab = "compact" if batched or recipe else "full"
        model = load_model(opts["model"], device=device, vocab=vocab)
        backend = cls(model, lcfg, TrainConfig(**base), 1)
        vocab_size = model.config.vocab_size
        del model
        n = opts["warmup"] + opts["hf_steps"]
        k = opts["hf_batch"] if batched else 1
        pool = (flat * (1 + n * k // len(flat)))[:n * k]
        batches = [pack_samples([(x, y, 0) for x, y, _ in pool[i * k:(i + 1) * k]], max(len(x) for x, _, _ in pool))
                   for i in range(n)]
        step = lambda b: float(backend.step(b).loss[0])
        lengths = [len(x) for x, _, _ in flat]
        desc = f"{name}: batch {k}{' (padded)' if batched else ''}, vocab {vocab_size}{_lora_desc(lcfg)}"
    else:
        tc = TrainConfig(**base, **{k: opts[k] for k in ("attention", "lora_path", "ops", "loss", "compile",
                                                          "checkpoint") if k in opts})
        model = load_model(opts["model"], device=device)
        vocab_size = model.config.vocab_size
        n = opts["warmup"] + opts["steps"]
        if kind in ("native1", "native1-graphs"):   # the per-task recipe on our engine: one sample per step
            from dataclasses import replace

            from ..train.backends.native import NativeBackend

            backend = NativeBackend(model, lcfg, replace(tc, cuda_graphs=kind.endswith("graphs")), 1)
            batches = [pack_samples([(x, y, 0)], len(x)) for x, y, _ in (flat * (1 + n // len(flat)))[:n]]
            lengths = [len(x) for x, _, _ in flat]
            desc = f"{name}: batch 1, vocab {vocab_size}{_lora_desc(lcfg)}"
        elif kind == "many":   # the same packed batches through N adapters, then through one
            return many_adapters(ctx, opts, tc, lcfg)
        else:
            from ..train.backends.native import NativeBackend

            if kind == "native-graphs":
                from dataclasses import replace

                tc = replace(tc, cuda_graphs=True)
            n_tasks, k = len(data), len(data[0])
            backend = NativeBackend(model, lcfg, tc, n_tasks)
            # Step s trains every task on one of its samples (its slot s mod k): k distinct batches.
            per_step = [[task[s % k] for task in data] for s in range(k)]
            packed = [pack_samples(ss, opts["row_len"]) for ss in per_step]
            batches = [packed[s % k] for s in range(n)]
            lengths = [len(x) for x, _, _ in flat]
            desc = (f"{name}: {n_tasks} tasks x 1 sample per step, rows of {opts['row_len']}, vocab {vocab_size}, "
                    f"fill {np.mean([b.fill for b in packed]):.2f}{_lora_desc(lcfg)}")
        step = lambda b: float(np.nanmean(backend.step(b).loss))
    if kind.endswith("-graphs"):
        # Steady state: one untimed pass captures the graph of every shape the timed pass meets.
        res = _measure(device, step, batches + batches, len(batches))
        res["graphs_captured"] = backend._graphed.captures if backend._graphed is not None else 0
    else:
        res = _measure(device, step, batches, opts["warmup"])
    res["peak_gib"] = _peak_gib(device)
    fl = flops_per_token(ref_cfg, vocab_size, mean_context(lengths))
    pk = peak_flops(device)
    res["mfu"] = res["tokens_per_s"] * fl / pk if pk else None
    res["desc"] = desc
    res["gflop_per_token"] = fl / 1e9
    res["lora"] = {"r": lcfg.r, "alpha": lcfg.alpha, "rslora": lcfg.rslora, "tokens": list(lcfg.tokens)}
    if kind.startswith("native"):
        res["paths"] = {"attention": tc.attention, "lora_path": tc.lora_path, "ops": backend.ops,
                        "loss": backend.loss_impl, "compile": tc.compile, "steps": backend.graph_status}
    del backend
    _reset_peak(device)
    return res


def many_adapters(ctx: Context, opts: dict, tc, lcfg) -> dict:
    """Tokens/s of packed steps whose samples belong to ``opts["adapters"]`` tasks (one adapter
    each), and of the very same batches with every token routed to one adapter."""
    from ..train.backends.native import NativeBackend
    from ..samples.batch import PackedBatch
    from ..model.checkpoint import load_model
    from ..train.trainer import pack_samples

    n = opts["adapters"]
    data, _ = ttft_samples(n, 1, opts["adapter_max_len"], seed=1)
    flat = [task[0] for task in data]
    row_len = max(opts["row_len"], max(len(x) for x, _, _ in flat))
    packed = pack_samples(flat, row_len)
    one = PackedBatch(packed.input_ids, packed.labels, packed.position_ids, packed.sample_ids,
                      np.where(packed.adapter_ids >= 0, 0, -1).astype(np.int32), packed.cu_seqlens)
    batches = opts["warmup"] + opts["steps"]
    out = {}
    for label, batch, n_adapters in (("many", packed, n), ("one", one, 1)):
        model = load_model(opts["model"], device=ctx.device)
        backend = NativeBackend(model, lcfg, tc, n_adapters)
        backend.set_total_steps(range(n_adapters), 10 ** 6)
        out[label] = _measure(ctx.device, lambda b: float(np.nanmean(backend.step(b).loss)), [batch] * batches,
                              opts["warmup"])
        out[label]["peak_gib"] = _peak_gib(ctx.device)
        del backend, model
        _reset_peak(ctx.device)
    res = dict(out["many"])
    res["single_tokens_per_s"] = out["one"]["tokens_per_s"]
    res["single"] = out["one"]
    res["desc"] = (f"many: {n} adapters in one packed batch ({packed.shape[0]} x {row_len}, fill {packed.fill:.2f}) "
                   f"vs the same batch through 1 adapter")
    return res


def run(ctx: Context) -> list[Row]:
    import torch

    from ..train.backends import backend_status
    from ..model.config import PRESETS

    cuda = ctx.device == "cuda"
    o = ctx.options
    quick = ctx.quick
    opts = {
        "model": o.get("model", "qwen2.5-0.5b" if cuda else "tiny"),
        "steps": int(o.get("steps", 3 if quick else (10 if cuda else 8))),
        "hf_steps": int(o.get("hf_steps", 4 if quick else (20 if cuda else 16))),
        "warmup": int(o.get("warmup", 1 if quick else 3)),
        "tasks": int(o.get("tasks", 4 if quick else 16)),
        "per_task": int(o.get("per_task", 2)),
        "max_len": int(o.get("max_len", 8192 if cuda else (512 if quick else 2048))),
        "r": int(o.get("r", 32)),
        "rslora": o.get("rslora", "0").lower() in ("1", "true", "yes"),
        "adapters": int(o.get("adapters", 64 if cuda else (4 if quick else 8))),
        "hf_batch": int(o.get("hf_batch", 8 if cuda else 2)),
        "adapter_max_len": int(o.get("adapter_max_len", 1024 if cuda else 256)),
    }
    # CPU: every padding position costs as much as a token, so rows only as long as a sample.
    opts["row_len"] = int(o.get("row_len", 8192 if cuda else opts["max_len"]))
    for k in ("attention", "lora_path", "ops", "loss"):
        if k in o:
            opts[k] = o[k]
    for k in ("compile", "checkpoint"):
        if k in o:
            opts[k] = o[k].lower() in ("1", "true", "yes")
    cases = o.get("cases", "hf,unsloth,hf-batch,unsloth-batch,native1,native1-graphs,native,native-graphs,"
                           "many,hf-nvarc,unsloth-nvarc,native1-nvarc,native-nvarc,native-graphs-nvarc").split(",")
    if not cuda:
        torch.set_num_threads(max(1, ctx.threads or torch.get_num_threads()))
    data, how = ttft_samples(opts["tasks"], opts["per_task"], opts["max_len"])
    if opts["model"] in PRESETS:
        ref_cfg = PRESETS[opts["model"]]
    else:  # a checkpoint directory
        import json
        from pathlib import Path

        from ..model.checkpoint import config_from_hf

        ref_cfg = config_from_hf(json.loads((Path(opts["model"]) / "config.json").read_text()))
    status = backend_status()

    results: dict = {}
    for name in cases:
        if name.startswith("unsloth") and not status["unsloth"][0]:
            results[name] = {"skipped": status["unsloth"][1]}
            continue
        if (name.endswith("-graphs") or name.endswith("-graphs" + RECIPE_SUFFIX)) and not cuda:
            results[name] = {"skipped": "CUDA graphs need a GPU"}
            continue
        try:
            results[name] = run_case(name, ctx, opts, data, ref_cfg)
        except torch.cuda.OutOfMemoryError as exc:
            results[name] = {"skipped": f"out of memory: {str(exc).splitlines()[0]}"}
            _reset_peak(ctx.device)

    common = {"model": opts["model"], "device": ctx.device, "lora_r": opts["r"], "rslora": opts["rslora"], "samples": how,
              "unsloth": _version("unsloth") if status["unsloth"][0] else None}
    rows: list[Row] = []
    for name in cases:
        r = results.get(name, {})
        if "skipped" in r:
            rows.append(Row("train", f"{name} (skipped)", 0.0, "tokens/s", extra={"reason": r["skipped"], **common}))
            continue
        extra = {k: v for k, v in r.items() if k not in ("tokens_per_s",)}
        extra.update(common)
        if name == "many":   # the many-adapter bar: N adapters cost what one does
            rows.append(Row("train", r["desc"], r["tokens_per_s"], "tokens/s", baseline="same batch, 1 adapter",
                            baseline_value=r["single_tokens_per_s"], bar=0.9, extra=extra))
            continue
        # A recipe case is held against the same recipe in transformers+PEFT (hf-nvarc).
        ref_name = "hf-nvarc" if name.endswith(RECIPE_SUFFIX) else "hf"
        ref = results.get(ref_name, {})
        is_base = name == ref_name
        rows.append(Row("train", r["desc"], r["tokens_per_s"], "tokens/s",
                        baseline=None if is_base else ref.get("desc", ref_name),
                        baseline_value=None if is_base else ref.get("tokens_per_s"), extra=extra))
        rows.append(Row("train", f"{name}: samples/s", r["samples_per_s"], "samples/s",
                        baseline=None if is_base else ref_name,
                        baseline_value=None if is_base else ref.get("samples_per_s"),
                        extra={"peak_gib": r.get("peak_gib"), "mfu": r.get("mfu")}))
    # The GPU speed bars, in samples/s: the best native case against hf's batch-1 recipe (>= 4x)
    # and against Unsloth at its own best settings (>= 2x).
    done = {n: results[n] for n in cases if n in results and "skipped" not in results[n]}
    best = max((n for n in ("native", "native-graphs") if n in done), key=lambda n: done[n]["samples_per_s"], default=None)
    if best:
        for other, bar in (("hf", 4.0), ("unsloth-batch", 2.0)):
            if other in done:
                rows.append(Row("train", f"bar: {best} vs {other}, samples/s", done[best]["samples_per_s"], "samples/s",
                                baseline=done[other]["desc"], baseline_value=done[other]["samples_per_s"], bar=bar))
    return rows


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
