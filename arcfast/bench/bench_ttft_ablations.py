"""TTFT's gain, measured: the seeds' test-time fine-tuning table re-run in miniature, through the
real engine, on a regime where fine-tuning on a task's own demonstrations is what answers it.

    arcfast bench -k ttft-ablations            # about 18 minutes on a 2-core CPU (5 seeds x 24 tasks)
    arcfast bench -k ttft-ablations --quick    # seconds: every row runs, the numbers mean little
    arcfast bench -k ttft-ablations --set seeds=5 --set rows=base,loo,swap-bug

**The regime.** Every task maps each cell of a 4x4 input on its own, by the cell's class
(background 0 or foreground 1-9) and a colour ``k`` drawn per task:

- ``paint``: background stays 0, foreground becomes ``k`` (what the model is pretrained on);
- ``invert``: background becomes ``k``, foreground becomes 0;
- ``fill``: background becomes ``k``, foreground keeps its colour;
- ``flood``: every cell becomes ``k``.

A tiny model (the ``tiny`` preset's shape, 64 x 2, 0.1M parameters) is pretrained from random weights
on ``pretrain_tasks`` generated ``paint`` tasks, as the learning benchmark does (``arcfast train
--full``'s stream and trainer, every augmentation). It reads ``k`` from the demonstrations in
context and answers held-out ``paint`` tasks (the ``paint held-out`` row). The held-out tasks of the
table follow ``invert`` and ``fill``, rules it never saw: without TTFT it paints them, and every
answer is wrong. Both rules are local and commute with the engine's augmentations (a dihedral
transform or a colour permutation of a task gives a task of the same rule), so fine-tuning on a
task's demonstrations can teach the rule, and half of the tasks follow each rule, so an adapter
only answers its own task's rule.

**The rows**, each the same held-out tasks and the same pretrained model, through
:class:`arcfast.run.ttft.TTFTRun` (a rank-16 LoRA per task, ``steps`` at ``lr``, ``predictions``
test-time augmentations, voting; ``tasks_per_group`` tasks share each packed batch):

============== ===================================================================================
``base``       no TTFT: the pretrained model as it is
``loo``        TTFT, leave-one-out: every train pair a target in turn, all augmentations
``swap-bug``   the sampler's ``swap_bug`` ablation: the last train pair is never a target
``n-2``        each sample shows n-2 demonstrations (``max_demos``) instead of n-1
``no-geom``    without the dihedral augmentation
``no-color``   without the colour permutation
``keep-zero``  colour 0 always kept in place by the colour permutation (default: 90% of samples)
``input``      the input-distribution objective added (``output=1, input=1``)
``poe``        ``loo``'s adapters, candidates ranked by ``--select poe`` (8 scoring augmentations)
``verify``     the verify objective added (``output=1, verify=0.5``), ``--select vote+verify``
============== ===================================================================================

Each row reports vote_2 (one of the two attempts right), pass_n (any prediction right) and accuracy
(the share of predictions right) in percent of the held-out tasks of every seed pooled, each with
its 95% Wilson score interval over those tasks, and the seconds of TTFT (training and inference).
``seeds`` draws a new pretraining set, model and held-out task set per seed. ``verify`` and ``poe``
also report plain voting on the same adapters (``vote_2_vote``). The table is written to
``<out>/ttft-ablations.md``, the chart to ``<out>/ttft-ablations.png``.

Options (``--set key=value``): seeds, rows (comma-separated), pretrain_tasks, pretrain_steps,
held_out_tasks, rules (held-out, comma-separated), steps, lr, rank, predictions, n_train,
tasks_per_group (0: all of a seed's tasks in one group), row_len (2,048: a step packs the group's
samples, about 190 tokens each, into rows this long).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .runner import Context, Row

BENCH = "ttft-ablations"
CONTROL = "paint (control)"
RULES = ("paint", "invert", "fill", "flood")
SIZE = (4, 4)
# name: (TTFTConfig fields over the loo recipe, what the row is)
ROWS = {
    "base": (dict(train=False), "no TTFT"),
    "loo": ({}, "TTFT, leave-one-out (every pair a target)"),
    "swap-bug": (dict(swap_bug=True), "TTFT with the swap bug (a pair never a target)"),
    "n-2": (dict(max_demos=-2), "TTFT, n-2 demonstrations"),
    "no-geom": (dict(geometric_aug=False), "TTFT without geometric augmentation"),
    "no-color": (dict(color_aug=False), "TTFT without colour augmentation"),
    "keep-zero": (dict(keep_zero_prob=1.0), "TTFT, colour 0 always kept"),
    "input": (dict(objectives=(("output", 1.0), ("input", 1.0))), "TTFT + input-distribution objective"),
    "poe": (dict(select="poe", rescore=8), "TTFT, --select poe"),
    "verify": (dict(objectives=(("output", 1.0), ("verify", 0.5)), select="vote+verify"),
               "TTFT + verify objective, --select vote+verify"),
}


def rule_task(rng: np.random.Generator, task_id: str, rule: str, n_train: int = 4, shape=SIZE):
    """A task of ``rule`` (see the module docstring) with ``n_train`` demonstrations and one test
    pair of ``shape``. Every input holds background and at least two foreground colours, so no
    output equals its input and the fallback answer (the test input) is never right."""
    from ..arc.task import Pair, Task

    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")
    k = int(rng.integers(1, 10))
    pairs = []
    for _ in range(n_train + 1):
        while True:
            g = np.where(rng.random(shape) < 0.4, 0, rng.integers(1, 10, shape)).astype(np.uint8)
            if (g == 0).any() and len(np.unique(g[g > 0])) >= 2:
                break
        fg = g > 0
        out = {"paint": np.where(fg, k, 0), "invert": np.where(fg, 0, k), "fill": np.where(fg, g, k),
               "flood": np.full_like(g, k)}[rule]
        pairs.append(Pair(g, out.astype(np.uint8)))
    return Task(id=task_id, train=pairs[:n_train], test=pairs[n_train:])


def held_out_tasks(rng: np.random.Generator, n: int, rules=("invert", "fill"), n_train: int = 4) -> list:
    """``n`` tasks taking ``rules`` in turn, each id naming its rule (``invert-0``, ``fill-1``, ...)."""
    return [rule_task(rng, f"{rules[i % len(rules)]}-{i}", rules[i % len(rules)], n_train) for i in range(n)]


def pretrain_model(tasks: list, steps: int, seed: int, lr: float = 3e-3, row_len: int = 2048):
    """The ``tiny`` preset from random weights, every weight trained on ``tasks`` as the learning
    benchmark trains (:func:`arcfast.bench.bench_learning.pretrain`: ``arcfast train --full``'s
    stream and trainer, every augmentation). Returns (the model in eval mode, its losses per step)."""
    import torch

    from ..model.decoder import build_model
    from ..model.config import preset
    from .bench_learning import pretrain

    model = build_model(preset("tiny"), dtype=torch.float32, device="cpu", seed=seed)
    losses, _ = pretrain(model, tasks, steps, seed, lr, row_len)
    return model.eval(), losses


def write_tasks(tasks: list, directory: Path) -> Path:
    """Each task as ``<directory>/<id>.json`` in the ARC format; the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (directory / f"{t.id}.json").write_text(json.dumps(t.to_json()))
    return directory


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% at z = 1.96); (0, 1) for
    n = 0. ``successes`` may be fractional: a mean of per-task shares times the task count."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _settings(ctx: Context) -> dict:
    q = ctx.quick
    s = dict(seeds=1 if q else 5, rows=",".join(ROWS), pretrain_tasks=200 if q else 2000,
             pretrain_steps=10 if q else 1000, held_out_tasks=4 if q else 24, rules="invert,fill",
             steps=2 if q else 100, lr=3e-3, rank=16, predictions=2 if q else 8, n_train=4,
             tasks_per_group=0, row_len=2048)
    for key, value in ctx.options.items():
        if key not in s:
            raise ValueError(f"unknown option {key!r} of -k {BENCH}; known: {', '.join(s)}")
        s[key] = type(s[key])(value) if not isinstance(s[key], str) else value
    rows = s["rows"].split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(ROWS)}")
    s["rows"] = rows
    s["rules"] = tuple(s["rules"].split(","))
    for r in s["rules"]:
        if r not in RULES:
            raise ValueError(f"unknown rule {r!r}; known: {', '.join(RULES)}")
    return s


def run_row(name: str, model_dir: Path, tasks_dir: Path, out: Path, s: dict, seed: int) -> dict:
    """One row's TTFT run on one seed's tasks: {task id: {metric: value}} with the run's seconds."""
    from ..budget.clock import Deadline
    from ..run.config import TTFTConfig
    from ..run.ttft import TTFTRun

    fields = dict(ROWS[name][0])
    if fields.get("max_demos", 0) < 0:
        fields["max_demos"] = s["n_train"] + fields["max_demos"]
    n_tasks = len(list(tasks_dir.glob("*.json")))
    budget = 3600.0
    cfg = TTFTConfig(tasks=str(tasks_dir), model=str(model_dir), out=str(out), budget=budget, device="cpu",
                     dtype="float32", seed=seed, rank=s["rank"], alpha=2.0 * s["rank"], lr=s["lr"],
                     steps=s["steps"], tasks_per_group=s["tasks_per_group"] or n_tasks, row_len=s["row_len"],
                     max_len=s["row_len"], predictions=s["predictions"], save_adapters="none", progress=False,
                     **fields)
    run = TTFTRun(cfg, deadline=Deadline(budget))
    summary = run.run()
    if summary["failed"] or len(run.results) != n_tasks:
        raise RuntimeError(f"row {name}, seed {seed}: {len(summary['failed'])} of {n_tasks} tasks failed "
                           f"({', '.join(summary['failed'][:3])}); see {out / 'log.jsonl'}")
    per_task = {}
    for task_id, r in run.results.items():
        m = dict(r.metrics or {})
        for selector, votes in (r.selection or {}).items():
            m[f"vote_2_{selector}"] = votes["vote_2"]
        m["steps"] = r.steps
        per_task[task_id] = m
    return {"tasks": per_task, "seconds": summary["seconds"], "select": cfg.select,
            "trained": summary["trained"], "failed": summary["failed"]}


def _pooled(runs: list, key: str) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of ``key`` over every task of ``runs`` (one per seed), 95% Wilson."""
    values = [m.get(key, 0.0) for r in runs for m in r["tasks"].values()]
    n = len(values)
    mean = float(np.mean(values)) if values else 0.0
    lo, hi = wilson(mean * n, n)
    return mean, lo, hi, n


def _row(name: str, runs: list, base: list | None) -> Row:
    extra: dict = {"recipe": ROWS[name][1]}
    for key in ("vote_2", "pass_n", "accuracy") + (("vote_2_vote",) if name in ("poe", "verify") else ()):
        mean, lo, hi, n = _pooled(runs, key)
        extra[key] = round(100 * mean, 1)
        extra[f"{key}_ci95"] = [round(100 * lo, 1), round(100 * hi, 1)]
    extra["tasks"] = n
    extra["seconds"] = round(float(sum(r["seconds"] for r in runs)), 1)
    extra["seconds_per_seed"] = [round(r["seconds"], 1) for r in runs]
    extra["select"] = runs[0]["select"]
    extra["seeds"] = len(runs)
    extra["vote_2_per_seed"] = [round(100 * float(np.mean([m.get("vote_2", 0.0) for m in r["tasks"].values()])), 1)
                                for r in runs]
    extra["by_rule"] = {}
    for rule in sorted({tid.split("-")[0] for r in runs for tid in r["tasks"]}):
        vals = [m.get("vote_2", 0.0) for r in runs for tid, m in r["tasks"].items() if tid.split("-")[0] == rule]
        extra["by_rule"][rule] = round(100 * float(np.mean(vals)), 1)
    extra["failed"] = sorted(t for r in runs for t in r["failed"])
    b = None
    if base is not None:
        base_mean, _, base_hi, _ = _pooled(base, "vote_2")
        b = 100 * base_mean
        extra["separated_from_base"] = extra["vote_2_ci95"][0] > round(100 * base_hi, 1)
    return Row(BENCH, f"{name}: {ROWS[name][1]}", extra["vote_2"], "% vote_2", "no TTFT" if base else None, b,
               extra=extra)


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table: vote_2, pass_n and accuracy with their 95% intervals, seconds."""
    lines = ["| row | vote_2 % [95% CI] | pass_n % [95% CI] | accuracy % [95% CI] | TTFT s | tasks |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        e = r.extra
        if "vote_2_ci95" not in e:
            continue
        cells = [f"{e[k]:.1f} [{e[k + '_ci95'][0]:.1f}, {e[k + '_ci95'][1]:.1f}]" for k in ("vote_2", "pass_n", "accuracy")]
        note = f" (vote: {e['vote_2_vote']:.1f})" if "vote_2_vote" in e else ""
        lines.append(f"| {r.case} | {cells[0]}{note} | {cells[1]} | {cells[2]} | {e['seconds']:.0f} | {e['tasks']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Horizontal bars of vote_2 with 95% intervals, one per row (the base model and the control in
    grey), each labelled with its short name and value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if "vote_2_ci95" in r.extra]
    fig = Figure(figsize=(7.5, 0.42 * len(rows) + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    vals = [r.extra["vote_2"] for r in rows]
    lo = [r.extra["vote_2"] - r.extra["vote_2_ci95"][0] for r in rows]
    hi = [r.extra["vote_2_ci95"][1] - r.extra["vote_2"] for r in rows]
    grey = {"base", CONTROL}
    ax.barh(y, vals, xerr=[lo, hi], capsize=3,
            color=["#999999" if _label(r) in grey else "#4c72b0" for r in rows])
    ax.set_yticks(y, [_label(r) for r in rows])
    for yi, r in zip(y, rows):
        ax.text(min(r.extra["vote_2_ci95"][1] + 1.5, 101), yi, f"{r.extra['vote_2']:.0f}", va="center", fontsize=8)
    ax.set(xlim=(0, 110), xlabel="held-out vote_2, % of tasks (95% Wilson interval)")
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _label(r: Row) -> str:
    return CONTROL if r.case.startswith("paint held-out") else r.case.split(":")[0]


def run(ctx: Context) -> list[Row]:
    import torch

    from ..model.checkpoint import save_model

    s = _settings(ctx)
    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads or 1)   # tiny shapes: the intra-op pool only adds waits
    work = Path(tempfile.mkdtemp(prefix="arcfast-ttft-ablations-"))
    names = s["rows"] if "base" in s["rows"] else ["base", *s["rows"]]
    results: dict = {n: [] for n in names}
    paint: list = []
    pre_info = []
    try:
        for seed in range(s["seeds"]):
            rng = np.random.default_rng(seed)
            pre = [rule_task(rng, f"pre-{i}", "paint", s["n_train"]) for i in range(s["pretrain_tasks"])]
            held = held_out_tasks(rng, s["held_out_tasks"], s["rules"], s["n_train"])
            paint_held = held_out_tasks(rng, s["held_out_tasks"], ("paint",), s["n_train"])
            t0 = time.perf_counter()
            model, losses = pretrain_model(pre, s["pretrain_steps"], seed)
            k = max(1, len(losses) // 20)
            pre_info.append({"seconds": round(time.perf_counter() - t0, 1),
                             "loss_first": round(float(np.mean(losses[:k])), 4),
                             "loss_last": round(float(np.mean(losses[-k:])), 4)})
            d = work / f"seed-{seed}"
            save_model(model, d / "model")
            del model
            tasks_dir = write_tasks(held, d / "held")
            paint.append(run_row("base", d / "model", write_tasks(paint_held, d / "paint"), d / "run-paint", s, seed))
            for name in names:
                results[name].append(run_row(name, d / "model", tasks_dir, d / f"run-{name}", s, seed))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    rows = [Row(BENCH, "pretraining loss (paint, last 5% of steps)", float(np.mean([p["loss_last"] for p in pre_info])),
                "loss", "first 5% of steps", float(np.mean([p["loss_first"] for p in pre_info])),
                higher_is_better=False, extra={"per_seed": pre_info, "steps": s["pretrain_steps"],
                                               "tasks": s["pretrain_tasks"]})]
    r = _row("base", paint, None)
    r.case = "paint held-out (the pretrained rule), no TTFT"
    r.extra["recipe"] = "control: the model answers its own rule in context"
    rows.append(r)
    base = results["base"]
    for name in names:
        rows.append(_row(name, results[name], None if name == "base" else base))
    for r in rows:
        r.extra.setdefault("settings", {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()})
    ctx.out.mkdir(parents=True, exist_ok=True)
    title = (f"TTFT ablations: held-out {'/'.join(s['rules'])} tasks,\n{s['seeds']} seed(s) x "
             f"{s['held_out_tasks']} tasks, rank {s['rank']}, {s['steps']} steps at lr {s['lr']:g}")
    (ctx.out / "ttft-ablations.md").write_text(title.replace("\n", " ") + "\n\n" + markdown_table(rows))
    plot(rows, ctx.out / "ttft-ablations.png", title)
    return rows
