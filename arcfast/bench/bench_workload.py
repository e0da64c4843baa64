"""The whole TTFT workload through the real ``arcfast ttft`` engine, against the hf recipe's time for
the same work estimated from step times measured in the same run.

    arcfast bench -k workload                      # CUDA: the full workload below
    arcfast bench -k workload --quick              # tiny model, 3 tasks: seconds on a CPU
    arcfast bench -k workload --set tasks=100 --set group=64

Workload (CUDA default): the ARC-AGI-1 evaluation set (400 tasks), a fresh LoRA adapter per task
(r = 32, alpha 64, every projection), 300 training samples per task (300 optimizer steps of one
sample each, so every task gets the batch-1 recipe's steps), 96 predictions per test input (the
augmentations of ``arcfast.arc.augment.test_time_augmentations``), voting, adapters, submission and
report written; the Qwen2.5-0.5B architecture with random weights (nothing is downloaded). On the CPU
and with ``--quick``: the tiny model, 3 tasks, 4 samples, 4 predictions, at most 48 new tokens.

The engine runs in-process as :class:`arcfast.run.ttft.TTFTRun` with a budget far beyond the work (24 h
by default), so the step planner never cuts a task short; the benchmark then checks from the run's
own results that every task took exactly its steps and every test input got every prediction, that
no step or generation was stopped by the deadline, that ``submission.json`` answers every test input
of every task (:func:`arcfast.answers.submission.validate_submission`) and that the report files exist.

The hf estimate, measured in the same process after the run (the arcfast model freed first):

- training: :class:`arcfast.train.backends.hf.HFBackend` (transformers + PEFT, batch 1, the full
  vocabulary: the common recipe, as in ``bench_train``) steps over samples of the workload's own
  tasks (one each, tasks evenly spaced through the set), ``hf_warmup`` untimed then ``hf_steps``
  timed; mean seconds per sample x the run's samples;
- inference: transformers ``generate`` + PEFT (greedy, one batch of ``hf_prompts`` real inference
  prompts of a task: the predictions of one test input) for ``hf_gen_tasks`` tasks at even quantiles
  of prompt length, each forced to the mean number of tokens the run generated per prediction;
  mean seconds per prediction x the run's predictions.

Rows (seconds: lower is better, ratio = hf estimate / arcfast): the whole workload, its training and
inference phases, trained tokens/s, samples/s and generated tokens/s against the hf measurements,
and the bar: the full workload on one H100 in at most 30 minutes (ratio = 1800 s / wall time, bar
1x; only set for the full workload on CUDA).

Options (``--set key=value``): tasks (count, from the start of ``source``; with ``spread=1`` every
k-th task, k = 400 // tasks, i.e. about ``tasks`` of them, and a row projecting the full
workload's time from them), source (default
arc1:eval), samples (per task), per_step (samples of each task per step; samples must be a multiple),
predictions, model, group (tasks per packed group; 0 = the engine's default: 32 on a GPU),
row_len and max_len (8192; 4096 on the CPU: from ONE_DEMO_MAX = 3,729 on no sample slot can be
empty, so every task provably gets all its samples), rank, max_new (max new tokens; default the
engine's bound per task, also with ``max_new=0``), budget, out (run directory; default a temporary one, removed afterwards
unless keep=1), graphs (1: training steps as CUDA graphs, ``arcfast ttft --cuda-graphs``),
hf_steps, hf_warmup, hf_prompts, hf_gen_tasks, cases (``arcfast`` to skip the hf estimate; add
``dfs`` for the search case below), min_prob and rescore (the search case's).

The search case (``dfs`` in ``cases``; in the defaults on the CPU and with ``--quick``, opt-in on
the full CUDA workload, whose training it repeats): the same workload run again with ``--search dfs
--min-prob P --select nvarc --rescore M`` (defaults 0.1 and 8; 2 with ``--quick``), against the
greedy + vote run above: wall time, inference phase, distinct grids per test input, and, the
tasks' outputs being known, vote_2 of both runs (and of every selector on the DFS run's candidates).

The queue case (``queue`` in ``cases``; in the defaults on the CPU and with ``--quick``):
``queue_tasks`` tasks of ``source`` (default 8, ``--quick`` 6), written in an order that static
sharding splits badly (a slow half at even places, all on worker 0 of 2: the larger tasks by grid
cells, their test inputs repeated ``slow_tests`` times, default 4), run by
``arcfast ttft --workers 2`` (two CPU processes, one task per group, model ``queue_model``, default
``tiny``; generation bounded per task by the engine, from the task's own output sizes, so a larger
task's predictions cost more) with ``--sharding queue``
(tasks pulled from the shared queue, longest first) against ``--sharding static`` (every other
task): wall time to finish all of them, and each worker's task count and seconds in ``extra``.

Reading the numbers: the hf estimate counts only steps and generation, none of the recipe's
per-task overheads (adapter reset, saving, voting), so it flatters the baseline. A random-weight
model rarely emits the end-of-grid token, so its outputs run to the length bound: inference costs
more than with a trained model, on both sides alike (the hf batches generate the run's own mean).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_train import _reset_peak as _free, _sync
from .runner import Context, Row, with_torch_threads

BENCH = "workload"
BAR_SECONDS = 1800.0                               # the promise: 30 minutes on one H100
FULL = dict(tasks=400, samples=300, predictions=96)  # the workload the bar is stated for
# Log events that mean the run did less than the workload asks.
CUT_EVENTS = ("stop_early", "out_of_time", "inference_cut", "no_training", "group_failed")
# The longest training prompt with one demonstration: BOS, then two pairs of 30 x 30 grids, each
# grid behind its INPUT / OUTPUT marker. The sampler drops demonstrations down to one, so with
# max_len at least this no slot is ever left empty and every step gives every task its samples.
ONE_DEMO_MAX = 1 + 2 * (2 + 2 * (30 * 31 + 1))


def _options(ctx: Context) -> dict:
    cuda = ctx.device == "cuda"
    if cuda and not ctx.quick:
        s = dict(model="qwen2.5-0.5b", **FULL, hf_steps=20, hf_warmup=3, hf_prompts=96, hf_gen_tasks=3)
    else:
        # A random tiny model rarely emits EOG: 48 new tokens keep its outputs (and the hf
        # baseline's forced ones) short enough for seconds on two CPU cores.
        s = dict(model="tiny", tasks=3, samples=4, predictions=4, hf_steps=3, hf_warmup=1, hf_prompts=2,
                 hf_gen_tasks=1, max_new=48)
    s.setdefault("max_new", None)
    small = ctx.quick or not cuda
    s.update(source="arc1:eval", per_step=1, group=0, rank=32, budget="24h", out=None, keep=False,
             cases="arcfast,hf,dfs,queue" if small else "arcfast,hf", spread=False, graphs=False, min_prob=0.1,
             queue_tasks=6 if ctx.quick else 8, queue_model="tiny", slow_tests=4,
             rescore=2 if ctx.quick else 8,
             row_len=8192 if cuda else 4096, max_len=8192 if cuda else 4096)
    o = ctx.options
    for k in ("tasks", "samples", "predictions", "per_step", "group", "rank", "row_len", "max_len", "max_new",
              "hf_steps", "hf_warmup", "hf_prompts", "hf_gen_tasks", "rescore", "queue_tasks", "slow_tests"):
        if k in o:
            s[k] = int(o[k])
    for k in ("model", "source", "budget", "out", "cases", "queue_model"):
        if k in o:
            s[k] = o[k]
    if "min_prob" in o:
        s["min_prob"] = float(o["min_prob"])
    for k in ("keep", "spread", "graphs"):
        if k in o:
            s[k] = o[k].lower() in ("1", "true", "yes")
    if s["max_new"] == 0:   # --set max_new=0: the engine's own bound per task
        s["max_new"] = None
    if s["samples"] % s["per_step"]:
        raise ValueError(f"samples={s['samples']} is not a multiple of per_step={s['per_step']}")
    if min(s["tasks"], s["samples"], s["predictions"], s["hf_steps"], s["hf_prompts"], s["hf_gen_tasks"]) < 1:
        raise ValueError("tasks, samples, predictions, hf_steps, hf_prompts and hf_gen_tasks must be >= 1")
    s["max_len"] = min(s["max_len"], s["row_len"])
    return s


def task_spec(s: dict) -> str:
    """The task source of the run: the whole set, its first ``tasks``, or with ``spread`` every
    k-th task (k = 400 // tasks), a sample of the whole set for a projection to all 400."""
    if s["tasks"] >= 400 and s["source"] == "arc1:eval":
        return s["source"]
    if s["spread"]:
        return f"{s['source']}[::{max(1, FULL['tasks'] // s['tasks'])}]"   # ceil(400 / k) tasks
    return f"{s['source']}[:{s['tasks']}]"


def _is_full(s: dict, device: str) -> bool:
    return device == "cuda" and s["source"] == "arc1:eval" and all(s[k] >= v for k, v in FULL.items())


# ----------------------------------------------------------------------------------------------
# arcfast: the real engine

def run_arcfast(s: dict, device: str, out: Path, search: str = "greedy", select: str = "vote") -> dict:
    """Run ``arcfast ttft`` on the workload into ``out`` (``search`` and ``select`` as its flags;
    with ``nvarc`` or ``poe``, ``s["rescore"]`` scoring augmentations); returns what it did and what
    was checked.

    Raises RuntimeError when the submission is invalid or a report file is missing (the run is then
    not the workload's output); a run that did less than the workload (a task short of its steps or
    predictions, a deadline cut) is returned with ``complete=False`` and the shortfall listed.
    """
    from ..budget.clock import parse_duration
    from ..arc.loading import load_tasks
    from ..answers.submission import SubmissionError, validate_submission
    from ..run.config import TTFTConfig
    from ..run.ttft import TTFTRun

    spec = task_spec(s)
    steps = s["samples"] // s["per_step"]
    cfg = TTFTConfig(tasks=spec, model=s["model"], budget=parse_duration(s["budget"]), out=str(out),
                     backend="native", device=device, seed=0, rank=s["rank"], alpha=2.0 * s["rank"], steps=steps,
                     samples_per_task=s["per_step"], tasks_per_group=s["group"], row_len=s["row_len"],
                     max_len=s["max_len"], predictions=s["predictions"], max_new_tokens=s["max_new"],
                     cuda_graphs=s["graphs"], progress=False, search=search, min_prob=s["min_prob"],
                     select=select, rescore=s["rescore"] if select != "vote" else 0)
    t0 = time.perf_counter()
    ttft = TTFTRun(cfg)
    summary = ttft.run()
    _sync(device)
    wall = time.perf_counter() - t0
    results = dict(ttft.results)
    gen = ttft.inference.decoder.generator if ttft.inference is not None else None
    group_size = gen.lora.weight.shape[0] if gen is not None else None
    del ttft
    _free(device)

    tasks = load_tasks(spec)
    # What the run did, read back from its own per-task results and log.
    # A task's steps are its group's; each step holds per_step samples of every task unless a slot
    # was left empty, which cannot happen from ONE_DEMO_MAX on. Below it, a task that got no token
    # at all is short; one that got some may still be short, and the check says so.
    short_steps = sorted(t.id for t in tasks if t.id not in results or results[t.id].steps != steps
                         or (steps > 0 and results[t.id].train_tokens == 0))
    samples_verified = s["max_len"] >= ONE_DEMO_MAX
    # A searched prompt gives one prediction per completion found, or one "no_completion": at least one.
    short_preds = sorted(t.id for t in tasks if t.id not in results or len(results[t.id].predictions) != len(t.test)
                         or any(n < s["predictions"] if search == "dfs" else n != s["predictions"]
                                for n in results[t.id].predictions))
    events: dict = {}
    search_stats: dict = {}
    with open(out / "log.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            ev = rec.get("event")
            if ev in CUT_EVENTS + ("rescore_skipped",) or (ev in ("search", "rescore") and rec.get("cut_by_deadline")):
                events[ev] = events.get(ev, 0) + 1
            if ev == "search":
                for k in ("prompts", "completions", "tokens", "forks", "capped"):
                    search_stats[k] = search_stats.get(k, 0) + rec[k]
    try:
        validate_submission(out / "submission.json", tasks)
    except SubmissionError as e:
        raise RuntimeError(f"the workload's submission is invalid: {e}") from None
    missing = [n for n in ("report.json", "report.md", "report.png", "run.json")
               if not (out / n).is_file() or (out / n).stat().st_size == 0]
    if missing:
        raise RuntimeError(f"{out}: the run did not write {', '.join(missing)}")

    rs = list(results.values())
    n_inputs = sum(len(t.test) for t in tasks)
    return {
        "wall_s": wall,
        "run_seconds": summary["seconds"],
        "train_s": sum(r.train_seconds for r in rs),
        "inference_s": sum(r.inference_seconds for r in rs),
        "tasks": len(tasks),
        "test_inputs": n_inputs,
        "steps_per_task": steps,
        "samples_per_task": s["samples"],
        "samples": sum(r.steps for r in rs) * s["per_step"],
        "predictions": sum(sum(r.predictions) for r in rs),
        "candidates": sum(len(c) for r in rs for c in r.candidates),   # distinct parsed grids
        "train_tokens": sum(r.train_tokens for r in rs),
        "generated_tokens": sum(r.generated_tokens for r in rs),
        "answered": summary["answered"],
        "backend": summary["backend"],
        "group_size": group_size,
        "task_errors": sum(1 for r in rs if r.error),
        "complete": not short_steps and not short_preds and not events and samples_verified,
        "samples_verified": samples_verified,
        "short_steps": short_steps[:20],
        "short_predictions": short_preds[:20],
        "cut_events": events,
        "submission_valid": True,
        "tasks_spec": spec,
        "search": search,
        "select": select,
        "search_stats": search_stats or None,
        "metrics": summary["metrics"],
        "selection": summary["selection"],
    }


# ----------------------------------------------------------------------------------------------
# hf: the common recipe's step times, measured on the same tasks

def _spread(n: int, k: int) -> list[int]:
    """``k`` indices evenly spread over ``range(n)`` (repeating when k > n)."""
    return [int(i * n / k) % n for i in range(k)] if k <= n else [i % n for i in range(k)]


def hf_train(s: dict, device: str, tasks) -> dict:
    """Time the hf backend (batch 1, full vocabulary) on one sample each of tasks spread through
    ``tasks``: ``hf_warmup`` untimed steps, then ``hf_steps`` timed."""
    from ..train.backends import select_backend
    from ..lora.multi import LoRAConfig
    from ..model.checkpoint import load_model
    from ..samples.sampling import SampleConfig, make_samples
    from ..train.trainer import TrainConfig, pack_samples

    n = s["hf_warmup"] + s["hf_steps"]
    chosen = [tasks[i] for i in _spread(len(tasks), n)]
    # Distinct tasks draw their slot 0; a task met again draws its next slot.
    per = max(1, math.ceil(n / len(tasks)))
    ss = make_samples(list({t.id: t for t in chosen}.values()), per, seed=0,
                      config=SampleConfig(max_len=s["max_len"]))
    by_task: dict = {}
    for x in ss:
        by_task.setdefault(x.task_id, []).append(x)
    if not by_task:
        raise RuntimeError(f"no sample of the chosen tasks fits max_len={s['max_len']}")
    used: dict = {}
    samples = []
    for t in chosen:
        if t.id not in by_task:   # every draw too long (only when max_len < ONE_DEMO_MAX)
            continue
        k = used.get(t.id, 0)
        used[t.id] = k + 1
        x = by_task[t.id][k % len(by_task[t.id])]
        samples.append((x.input_ids.astype(np.int32), x.labels.astype(np.int32), 0))
    samples = [samples[i % len(samples)] for i in range(n)]

    cls, _ = select_backend("hf")
    model = load_model(s["model"], device=device, vocab="full")
    lcfg = LoRAConfig(r=s["rank"], alpha=2.0 * s["rank"])
    backend = cls(model, lcfg, TrainConfig(lr=1e-4, steps=1000, warmup_steps=0), 1)
    vocab = model.config.vocab_size
    del model
    batches = [pack_samples([smp], len(smp[0])) for smp in samples]
    for b in batches[:s["hf_warmup"]]:
        backend.step(b)
    _sync(device)
    timed = batches[s["hf_warmup"]:]
    t0 = time.perf_counter()
    for b in timed:
        backend.step(b)
    _sync(device)
    dt = time.perf_counter() - t0
    tokens = sum(b.n_tokens for b in timed)
    return {"backend": backend, "vocab": vocab, "seconds": dt, "steps": len(timed), "tokens": tokens,
            "s_per_sample": dt / len(timed), "s_per_token": dt / tokens, "tasks_sampled": len(set(used))}


def hf_generate(s: dict, device: str, peft, tasks, new_tokens: int, token_ids=None) -> dict:
    """Time transformers ``generate`` + PEFT on ``hf_prompts`` real inference prompts (test input 0)
    of ``hf_gen_tasks`` tasks at even quantiles of prompt length, ``new_tokens`` forced per prompt."""
    import torch

    from ..arc.augment import test_time_augmentations
    from ..samples.prompts import build_inference_prompt, build_inference_prompts

    from .bench_generate import _hf_generate

    lens = []
    for i, t in enumerate(tasks):
        try:
            lens.append((len(build_inference_prompt(t, 0, max_len=s["max_len"])), i))
        except ValueError:  # no demonstration fits max_len: the run skipped it too
            continue
    lens.sort()
    k = min(s["hf_gen_tasks"], len(lens))
    picks = [lens[int((j + 0.5) * len(lens) / k)][1] for j in range(k)]
    table = None if token_ids is None else np.asarray(token_ids, np.int64)
    peft.eval()
    per_pred, rates, done = [], [], []
    for i in picks:
        t = tasks[i]
        augs = test_time_augmentations(t, s["predictions"], seed=0)[:s["hf_prompts"]]
        prompts = build_inference_prompts(t, 0, augs, max_len=s["max_len"])
        if table is not None:
            prompts = [table[p] for p in prompts]
        _hf_generate(peft, prompts[:2], 2, device)   # warm-up
        batch = len(prompts)
        while True:
            try:
                _sync(device)
                t0 = time.perf_counter()
                n_tok = sum(_hf_generate(peft, prompts[j:j + batch], new_tokens, device)
                            for j in range(0, len(prompts), batch))
                _sync(device)
                dt = time.perf_counter() - t0
                break
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)   # what the recipe would do on this GPU
                _free(device)
        per_pred.append(dt / len(prompts))
        rates.append(n_tok / dt)
        done.append({"task": t.id, "prompts": len(prompts), "batch": batch, "seconds": dt,
                     "mean_prompt_len": float(np.mean([len(p) for p in prompts]))})
    return {"s_per_prediction": float(np.mean(per_pred)), "tokens_per_s": float(np.mean(rates)),
            "new_tokens": new_tokens, "batches": done}


# ----------------------------------------------------------------------------------------------

def run(ctx: Context) -> list[Row]:
    return with_torch_threads(ctx, _run)


def _dfs_rows(s: dict, dev: str, greedy: dict) -> list[Row]:
    """The search case: the workload again with DFS and NVARC's selection, against ``greedy`` (the
    greedy + vote run's record)."""
    tmp = tempfile.mkdtemp(prefix="arcfast-workload-dfs-")
    try:
        d = run_arcfast(s, dev, Path(tmp) / "run", search="dfs", select="nvarc")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    label = f"--search dfs --min-prob {s['min_prob']:g} --select nvarc --rescore {s['rescore']}"
    if not d["complete"]:
        label += " (INCOMPLETE: see extra)"
    base = "greedy + vote (same workload)"
    extra = {k: d[k] for k in ("complete", "short_steps", "short_predictions", "cut_events", "search_stats",
                               "metrics", "selection", "train_s", "inference_s", "predictions")}
    rows = [
        Row(BENCH, f"{label}: wall time", d["wall_s"], "s", base, greedy["wall_s"], higher_is_better=False,
            extra=extra),
        Row(BENCH, f"{label}: inference phase", d["inference_s"], "s", base, greedy["inference_s"],
            higher_is_better=False),
        Row(BENCH, f"{label}: distinct candidates per test input", d["candidates"] / max(1, d["test_inputs"]),
            "grids", base, greedy["candidates"] / max(1, greedy["test_inputs"])),
    ]
    if d["metrics"] is not None and greedy["metrics"] is not None:
        rows.append(Row(BENCH, f"{label}: vote_2", d["metrics"]["vote_2"], "share", base,
                        greedy["metrics"]["vote_2"], extra={"selection": d["selection"],
                                                            "greedy_selection": greedy["selection"]}))
    return rows


def unbalanced_tasks(s: dict, root: Path) -> tuple[Path, list]:
    """``queue_tasks`` tasks of ``source`` written to ``root`` in an order that static sharding
    splits badly: the slow half at even places, so worker 0 of 2 gets every slow task. The slow
    half are the larger tasks (by grid cells), each with its test inputs repeated ``slow_tests``
    times: predictions cost per test input, while a training step costs the same for every task
    (a packed row is as long as the longest prompt allowed). Returns (the directory, the tasks in
    that order, the slow ones with their repeated test inputs)."""
    from dataclasses import replace

    from ..arc.loading import load_tasks
    from ..run.queue import longest_first

    pool = longest_first(load_tasks(s["source"]))
    n = s["queue_tasks"]
    big = [replace(t, test=list(t.test) * s["slow_tests"]) for t in pool[:n // 2]]
    small = pool[-(n - n // 2):]
    order = [t for pair in zip(big, small) for t in pair] + big[len(small):] + small[len(big):]
    root.mkdir(parents=True, exist_ok=True)
    for k, t in enumerate(order):
        (root / f"{k:03d}-{t.id}.json").write_text(json.dumps(t.to_json()))
    return root, order


def run_workers(s: dict, tasks_dir: Path, out: Path, sharding: str) -> dict:
    """``arcfast ttft --workers 2 --sharding S`` on ``tasks_dir`` (its own processes, as a user
    runs it): wall seconds and what each worker did."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "arcfast", "ttft", "--workers", "2", "--sharding", sharding,
           "--tasks", str(tasks_dir), "--model", s["queue_model"], "--budget", s["budget"], "--out", str(out),
           "--steps", str(s["samples"] // s["per_step"]), "--samples-per-task", str(s["per_step"]),
           "--predictions", str(s["predictions"]), "--row-len", str(s["row_len"]), "--max-len", str(s["max_len"]),
           "--tasks-per-group", "1", "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"arcfast ttft --workers 2 --sharding {sharding} failed: {proc.stderr[-2000:]}")
    ranks = [json.loads((out / f"run.rank{r}.json").read_text()) for r in (0, 1)]
    return {"wall_s": wall, "tasks_per_worker": [r["tasks_this_rank"] for r in ranks],
            "seconds_per_worker": [r["seconds"] for r in ranks], "trained": ranks[0]["trained"]}


def _queue_rows(s: dict, dev: str) -> list[Row]:
    """The queue case: two CPU workers on a task set static sharding splits badly, pulling from the
    shared queue against taking every other task."""
    if dev != "cpu":
        return []
    tmp = Path(tempfile.mkdtemp(prefix="arcfast-workload-queue-"))
    try:
        tasks_dir, order = unbalanced_tasks(s, tmp / "tasks")
        q = run_workers(s, tasks_dir, tmp / "queue", "queue")
        st = run_workers(s, tasks_dir, tmp / "static", "static")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    what = (f"2 CPU workers, {len(order)} tasks ({s['source']}; a slow half, test inputs x{s['slow_tests']}, "
            f"all on static's worker 0), "
            f"{s['queue_model']}, {s['samples']} steps, one task per group")
    return [Row(BENCH, f"{what}: shared queue vs static sharding, wall time", q["wall_s"], "s",
                "static sharding", st["wall_s"], higher_is_better=False,
                extra={"queue": q, "static": st, "order": [t.id for t in order]})]


def _run(ctx: Context) -> list[Row]:
    import torch

    s = _options(ctx)
    dev = ctx.device
    cases = s["cases"].split(",")
    if "arcfast" not in cases:
        raise ValueError("cases must include arcfast (the hf estimate scales the run's own work)")
    tmp = None
    if s["out"] is None:
        tmp = tempfile.mkdtemp(prefix="arcfast-workload-")
        out = Path(tmp) / "run"
    else:
        out = Path(s["out"])
    try:
        a = run_arcfast(s, dev, out)
    finally:
        if tmp is not None and not s["keep"]:
            shutil.rmtree(tmp, ignore_errors=True)

    h: dict = {}
    if "hf" in cases:
        from ..arc.loading import load_tasks

        tasks = load_tasks(a["tasks_spec"])
        tr = hf_train(s, dev, tasks)
        backend = tr.pop("backend")
        mean_new = max(1, round(a["generated_tokens"] / max(1, a["predictions"])))
        with torch.no_grad():
            ge = hf_generate(s, dev, backend.peft, tasks, mean_new, backend.config.token_ids)
        del backend
        _free(dev)
        h = {"train": tr, "generate": ge,
             "train_s": tr["s_per_sample"] * a["samples"],
             "inference_s": ge["s_per_prediction"] * a["predictions"],
             # The same from seconds per token: differs when the timed samples' lengths do.
             "train_s_by_tokens": tr["s_per_token"] * a["train_tokens"]}
        h["total_s"] = h["train_s"] + h["inference_s"]

    what = (f"{s['model']}, {a['tasks']} tasks x {a['samples_per_task']} samples, "
            f"{s['predictions']} predictions/input, {dev}")
    if not a["complete"]:
        what += " (INCOMPLETE: see extra)"
    base = "hf recipe (estimated)"
    extra = {k: v for k, v in a.items() if k not in ("tasks_spec",)}
    extra.update(options={k: v for k, v in s.items() if k != "out"}, hf=h or None)
    train_tps = a["train_tokens"] / a["train_s"] if a["train_s"] else 0.0
    gen_tps = a["generated_tokens"] / a["inference_s"] if a["inference_s"] else 0.0
    hf_tr, hf_ge = h.get("train", {}), h.get("generate", {})
    rows = [
        Row(BENCH, f"{what}: wall time", a["wall_s"], "s", base if h else None, h.get("total_s"),
            higher_is_better=False, extra=extra),
        Row(BENCH, "training phase", a["train_s"], "s", "hf: s/sample x samples" if h else None, h.get("train_s"),
            higher_is_better=False, extra={"samples": a["samples"], "hf_s_per_sample": hf_tr.get("s_per_sample")}),
        Row(BENCH, "inference phase", a["inference_s"], "s", "hf: s/prediction x predictions" if h else None,
            h.get("inference_s"), higher_is_better=False,
            extra={"predictions": a["predictions"], "hf_s_per_prediction": hf_ge.get("s_per_prediction")}),
        Row(BENCH, "training: trained tokens/s", train_tps, "tokens/s",
            "hf batch 1, full vocab" if h else None, hf_tr["tokens"] / hf_tr["seconds"] if hf_tr else None,
            extra={"train_tokens": a["train_tokens"]}),
        Row(BENCH, "training: samples/s", a["samples"] / a["train_s"] if a["train_s"] else 0.0, "samples/s",
            "hf batch 1, full vocab" if h else None, 1.0 / hf_tr["s_per_sample"] if hf_tr else None),
        Row(BENCH, "inference: generated tokens/s", gen_tps, "generated tok/s",
            "transformers generate + PEFT" if h else None, hf_ge.get("tokens_per_s"),
            extra={"generated_tokens": a["generated_tokens"]}),
    ]
    if "dfs" in cases:
        rows += _dfs_rows(s, dev, a)
    if "queue" in cases:
        rows += _queue_rows(s, dev)
    full = _is_full(s, dev)
    rows.append(Row(BENCH, "the whole workload on one GPU in 30 minutes" if full else
                    f"30-minute bar (not the full workload: {what})", a["wall_s"], "s", "30 minutes",
                    # An incomplete run has no ratio, so the bar reads as missed.
                    BAR_SECONDS if a["complete"] else None, higher_is_better=False, bar=1.0 if full else None,
                    extra={"gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
                           "complete": a["complete"]}))
    if s["spread"] and not full and a["complete"] and s["source"] == "arc1:eval" and \
            all(s[k] >= FULL[k] for k in ("samples", "predictions")):
        # Every k-th task of the set: the work per task is a sample of the whole set's, so the
        # full workload's time projects linearly (a projection, not the measured bar).
        k = FULL["tasks"] / a["tasks"]
        rows.append(Row(BENCH, f"projected to all 400 tasks (x{k:.1f} of {a['tasks']} spread tasks)",
                        a["wall_s"] * k, "s", "30 minutes", BAR_SECONDS, higher_is_better=False,
                        extra={"measured_s": a["wall_s"], "factor": k, "projection": True}))
    return rows
