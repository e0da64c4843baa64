"""Verification at inference: what it costs beside generation, and whether it picks better than votes.

    arcfast bench -k verify                          # the starter model, ARC-AGI-1 evaluation tasks
    arcfast bench -k verify --quick                  # the tiny model, 2 tasks: seconds on a CPU
    arcfast bench -k verify --set tasks=40 --set verify=8

Each run is the real engine (:class:`arcfast.run.ttft.TTFTRun`, as ``arcfast eval --ttft``) on the same
tasks with the same seed: per-task adapters trained for ``steps`` steps, ``predictions`` greedy
predictions per test input under test-time augmentations, every test input's distinct candidates
verified under up to ``verify`` augmentations (:func:`arcfast.infer.verify.verify_jobs`, in rounds: a
candidate stops once it cannot reach the top two), and every selector judged on the same
candidates (``vote``, ``verify``, ``vote+verify``). Two runs, apart only in what TTFT trains:

- ``output``: the output objective alone; the verdict ids are grown but never trained, so verify's
  ranking is the untrained adapter's;
- ``output+input+verify``: ``--objective output=1 --objective input=0.5 --objective verify=0.5``
  (the weights: ``objectives``), the adapter learning to verify from its own leave-one-out pairs and
  their corruptions.

Rows, per run: verification seconds against the run's generation seconds (both from the run's log:
the ``verify`` and ``predict`` events; ratio = generation / verification, the bar 10x: verification
at most 10% of generation). The engine verifies only test inputs with two or more distinct
candidates, which a weak model may rarely give; so a second row times verifying every distinct
candidate of the run, a lone one included, under all ``verify`` augmentations with its task's saved
adapter (:func:`verify_everything`), against the same generation time: the whole cost; and vote_2 of ``verify`` and of ``vote+verify`` against ``vote``'s on
the same candidates (ratio = theirs / vote's; ``extra`` holds every selector's vote_1/vote_2 and the
runs' pass@n, the share of test inputs with the right grid among the candidates at all, which bounds
every selector).

Options (``--set key=value``): tasks (count from the start of ``source``, default 12; ``--quick``
2), source (default arc1:eval), model (default the shipped ``starter``; ``--quick`` ``tiny``), steps
(per task; default 16, ``--quick`` 2), predictions (default 8, ``--quick`` 4), verify (K, default 8,
``--quick`` 2), objectives (the second run's, default ``output=1,input=0.5,verify=0.5``), max_new
(``--quick`` 48), budget (default 24h), out (the runs' parent directory; default a temporary one,
removed afterwards), reuse (1: a run already finished under ``out`` is read, not run again),
tokens (``both``, ``embed_tokens`` or ``lm_head``: each task's adapter also trains its own rows of
those, ``--train-tokens``; the verdict ids' rows then learn per task too; default none).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from .runner import Context, Row, with_torch_threads

BENCH = "verify"
SELECTORS = ("vote", "verify", "vote+verify")


def _options(ctx: Context) -> dict:
    quick = ctx.quick
    s = dict(tasks=2 if quick else 12, source="arc1:eval", model="tiny" if quick else "starter",
             steps=2 if quick else 16, predictions=4 if quick else 8, verify=2 if quick else 8,
             objectives="output=1,input=0.5,verify=0.5", max_new=48 if quick else None, budget="24h", out=None,
             reuse=False, tokens=())
    o = ctx.options
    for k in ("tasks", "steps", "predictions", "verify", "max_new"):
        if k in o:
            s[k] = int(o[k])
    for k in ("source", "model", "objectives", "budget", "out"):
        if k in o:
            s[k] = o[k]
    if "reuse" in o:
        s["reuse"] = o["reuse"].lower() in ("1", "true", "yes")
    if "tokens" in o:
        from ..lora.multi import parse_tokens

        s["tokens"] = parse_tokens(o["tokens"])
    if s["max_new"] == 0:   # --set max_new=0: the engine's own bound per task
        s["max_new"] = None
    if min(s["tasks"], s["steps"], s["verify"]) < 1 or s["predictions"] < 2:
        raise ValueError("tasks, steps and verify must be >= 1, predictions >= 2")
    return s


def _objectives(text: str) -> tuple:
    from ..samples.objectives import parse_objectives

    return parse_objectives(text)


def run_eval(s: dict, device: str, out: Path, objectives: tuple) -> dict:
    """One ``arcfast eval --ttft --verify K --select vote+verify`` run into ``out``: its generation
    and verification seconds (from its log), its verification counts and its selection results."""
    from ..budget.clock import parse_duration
    from ..run.config import TTFTConfig
    from ..run.ttft import TTFTRun

    cfg = TTFTConfig(tasks=f"{s['source']}[:{s['tasks']}]", model=s["model"], budget=parse_duration(s["budget"]),
                     out=str(out), backend="native", device=device, seed=0, steps=s["steps"],
                     predictions=s["predictions"], max_new_tokens=s["max_new"], progress=False,
                     objectives=objectives, verify=s["verify"], select="vote+verify", tokens=s["tokens"])
    t0 = time.perf_counter()
    if s["reuse"] and (out / "run.json").is_file():   # a finished run of the same settings: read it
        summary, wall = json.loads((out / "run.json").read_text()), None
    else:
        summary = TTFTRun(cfg).run()
        wall = time.perf_counter() - t0
    gen_s = verify_s = 0.0
    counts = dict(predictions=0, generated_tokens=0, verified_inputs=0, candidates=0, verifications=0,
                  stopped=0, verify_tokens=0, verify_cut=0)
    skipped, predicted = [], False
    with open(out / "log.jsonl") as f:
        for line in f:
            e = json.loads(line)
            if e.get("event") == "predict":
                predicted = True
                gen_s += e["seconds"]
                counts["predictions"] += e["predictions"]
                counts["generated_tokens"] += e["tokens"]
            elif e.get("event") == "verify":
                verify_s += e["seconds"]
                counts["verified_inputs"] += e["test_inputs"]
                counts["candidates"] += e["candidates"]
                counts["verifications"] += e["verifications"]
                counts["stopped"] += e["stopped"]
                counts["verify_tokens"] += e["tokens_computed"]
                counts["verify_cut"] += e["cut_by_deadline"]
            elif e.get("event") == "verify_skipped":
                skipped.append(e["reason"])
    if not predicted:
        raise RuntimeError(f"{out}: the run logged no prediction")
    # Each objective's loss at the end of TTFT, averaged over the tasks that trained it.
    ends: dict = {}
    for f in sorted((out / "tasks").glob("*.json")):
        for name, v in (json.loads(f.read_text()).get("objective_losses") or {}).items():
            if v is not None and v == v:
                ends.setdefault(name, []).append(v)
    counts["final_objective_loss"] = {k: round(sum(v) / len(v), 4) for k, v in ends.items()}
    if skipped:
        raise RuntimeError(f"{out}: verification was skipped: {skipped[0]}")
    return dict(wall_s=None if wall is None else round(wall, 2), generation_s=gen_s, verify_s=verify_s, **counts,
                selection=summary["selection"], metrics=summary["metrics"], tasks=summary["tasks"])


def verify_everything(s: dict, device: str, out: Path) -> dict:
    """Every distinct candidate of the run in ``out`` (a lone one included, which the engine leaves
    alone) verified under ``verify`` augmentations with its task's saved adapter, all rounds run:
    the whole cost verification would have in that run, in seconds, with the counts."""
    import numpy as np
    import torch

    from ..lora.adapters import load_adapter
    from ..arc.augment import test_time_augmentations
    from ..arc.loading import load_tasks
    from ..lora.multi import MultiLoRA
    from ..model.decoder import grow_vocab
    from ..model.checkpoint import load_model
    from ..run.outdir import OutDir
    from ..runtime import dtype as _dtype
    from ..run.answer import VERIFY_SEED_OFFSET
    from ..infer.verify import VerifyConfig, VerifyJob, VerifyStats, verify_jobs
    from ..answers.vote import Candidate

    paths = OutDir(out)
    tasks = load_tasks(f"{s['source']}[:{s['tasks']}]")
    model = load_model(s["model"], dtype=_dtype("auto", torch.device(device)), device=device)
    if not model.config.has_objective_ids:
        grow_vocab(model)
    model.eval()
    jobs, adapters = [], []
    for t in tasks:
        rec = json.loads(paths.task_file(t.id).read_text())
        cands = [[Candidate(grid=np.asarray(c["grid"], np.uint8), count=c["count"], mean_logprob=0.0, share=0.0,
                            members=()) for c in per_test] for per_test in rec["candidates"]]
        if not any(cands):
            continue
        cfg, tensors = load_adapter(paths.adapter_dir(t.id))
        adapters.append((cfg, tensors))
        augs = test_time_augmentations(t, s["verify"], seed=VERIFY_SEED_OFFSET)   # the run's (seed 0)
        jobs += [VerifyJob(t, ti, c, augs, len(adapters) - 1) for ti, c in enumerate(cands) if c]
    if not jobs:
        return dict(all_verify_s=0.0, all_candidates=0, all_verifications=0, all_tokens=0)
    lora = MultiLoRA(model, adapters[0][0], len(adapters))
    for i, (_, tensors) in enumerate(adapters):
        lora.set(i, tensors)
    st = VerifyStats()
    t0 = time.perf_counter()
    with torch.no_grad():
        verify_jobs(model, lora, jobs, VerifyConfig(augmentations=s["verify"], per_round=s["verify"],
                                                    confidence=1 - 1e-12, min_candidates=1), stats=st)
    return dict(all_verify_s=time.perf_counter() - t0, all_candidates=st.candidates,
                all_verifications=st.verifications, all_tokens=st.tokens)


def run(ctx: Context) -> list[Row]:
    return with_torch_threads(ctx, _run)


def _run(ctx: Context) -> list[Row]:
    s = _options(ctx)
    mix = _objectives(s["objectives"])
    runs = (("output", (("output", 1.0),)), ("+".join(n for n, _ in mix), mix))
    parent = Path(s["out"]) if s["out"] else Path(tempfile.mkdtemp(prefix="arcfast-bench-verify-"))
    rows: list[Row] = []
    try:
        for name, objectives in runs:
            run_dir = parent / name.replace("+", "-")
            r = run_eval(s, ctx.device, run_dir, objectives)
            r.update(verify_everything(s, ctx.device, run_dir))
            rows_trained = f" + {','.join(s['tokens'])} rows" if s["tokens"] else ""
            where = (f"{s['model']}, {s['source']}[:{s['tasks']}], TTFT {name}{rows_trained} x {s['steps']} steps, "
                     f"{s['predictions']} predictions, K={s['verify']}, {ctx.device}")
            rows.append(Row(BENCH, f"verification vs generation time ({where})", r["verify_s"], "s",
                            baseline="generation", baseline_value=r["generation_s"], higher_is_better=False,
                            bar=10.0, extra=dict(r)))
            rows.append(Row(BENCH, f"every distinct candidate verified x{s['verify']} vs generation time ({where})",
                            r["all_verify_s"], "s", baseline="generation", baseline_value=r["generation_s"],
                            higher_is_better=False, bar=10.0,
                            extra={k: r[k] for k in ("all_candidates", "all_verifications", "all_tokens",
                                                     "predictions", "generated_tokens")}))
            sel = r["selection"] or {}
            vote_2 = (sel.get("vote") or {}).get("vote_2")
            for selector in SELECTORS[1:]:
                got = (sel.get(selector) or {}).get("vote_2")
                if got is None:
                    continue
                rows.append(Row(BENCH, f"{selector} vote_2 ({where})", got, "share", baseline="vote",
                                baseline_value=vote_2, extra={"selection": sel, "pass_n": (r["metrics"] or {}).get("pass_n")}))
    finally:
        if not s["out"]:
            shutil.rmtree(parent, ignore_errors=True)
    return rows
