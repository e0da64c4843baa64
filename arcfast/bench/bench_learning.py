"""Learning: from a seed to answers. Does a model that arcfast trains answer ARC-style tasks, and
how much does test-time fine-tuning add?

    arcfast bench -k learning                  # about 14 minutes on a 2-core CPU: part 1 about 6, part 2 7.5
    arcfast bench -k learning --quick          # seconds: the loop runs, the numbers mean little
    arcfast bench -k learning --set family=perm3 --set steps=6000 --set starter=0

Part 1, generated tasks (fixed by ``seed``), each with 4 demonstrations and a test pair, grids of
3x3 to 5x5, in one of three families: ``mix`` (default) is ARC in miniature: half its tasks paint
every non-zero cell with one colour drawn per task, the others apply one of the seven non-identity
dihedral transforms (rotations, flips, transposes) drawn per task, so a model must tell from the
demonstrations which rule a task follows; ``paint`` is the painting half alone; ``perm3``
recolours a 3-colour input by a permutation drawn per task. A small model (``hidden``/``layers``;
default 64 x 2, 0.1M parameters) is trained from random weights on ``tasks`` such tasks with
``arcfast train --full``'s stream and trainer (every weight, loss on every demonstration output,
the sampler's augmentations), ``steps`` packed rows of ``row_len`` tokens. Then, each through the
real ``arcfast ttft`` engine (:class:`arcfast.run.ttft.TTFTRun`, ``predictions`` per test input under
test-time augmentations, voting):

- ``seen``: tasks it was trained on, predicted as they are (can it fit what it saw?);
- ``held-out``: new tasks of the family, predicted without TTFT;
- ``held-out + TTFT``: the same, each task first fine-tuned on its own demonstrations (a LoRA of
  rank 8 per task, ``ttft_steps`` at ``ttft_lr``): the row's ratio is the gain of TTFT.

Part 2, the starter model (``starter=1``, when it is installed: arcfast/models/starter/): its scores
on ARC-AGI-1 training tasks it was trained on (``seen``, default ``arc1:train[:100]``) and on the
first 50 ARC-AGI-1 evaluation tasks (``held_out``) without and with TTFT (100 steps at
``ttft_lr``), each run inside ``budget`` (default 150 s; `scripts/ship_starter.sh` scores with 600).

Part 3, a compute curve (``curve=RUN``, the directory of an ``arcfast train --keep-snapshots``
run, such as the starter's): up to ``curve_points`` of its kept snapshots, evenly spread, each
scored without TTFT on ``curve_tasks`` (default ``arc1:train[:40]``, seen in the starter's training;
``curve_predictions`` per test input, ``curve_budget`` seconds per snapshot, enough for every task
to be predicted), against the tokens trained up to it (from the run's ``log.jsonl``). The curve is
drawn to ``<out>/learning-curve.png``. For each bar of the starter model (parse rate 95%, correct
size 85%, vote_2 10% of seen tasks), a least-squares line of the metric against log10(tokens)
says how many tokens would reach it, and at the run's median tokens/s how many hours: an
extrapolation of the measured trend, not a measurement (none when the metric does not rise).

Rows: ``vote_2`` (a test input counts when one of the two submitted attempts is right) in percent
of test inputs, with every metric of :mod:`arcfast.answers.metrics` in the row's extra (parse rate is
1 - unanswered); the pretraining loss (last 5% of steps against the first 5%). The loss curve is
drawn to ``<out>/learning-loss.png``.

Options (``--set key=value``): family, tasks, held_out_tasks, steps, row_len, lr, hidden, layers,
predictions, ttft_steps, ttft_lr, seed, synthetic (0/1: part 1), starter (0/1: part 2), seen,
held_out, budget, curve (a run directory: part 3), curve_tasks, curve_points, curve_predictions,
curve_budget.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .runner import Context, Row

BENCH = "learning"
FAMILIES = ("perm3", "paint", "mix")


def _grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = rng.integers(1, 10, (h, w)).astype(np.uint8)
    g[rng.random((h, w)) < 0.4] = 0
    return g


def family_task(rng: np.random.Generator, task_id: str, family: str, sizes=(3, 5), n_train: int = 4):
    """One generated task of ``family`` (see the module docstring) with uint8 grids of
    ``sizes[0]..sizes[1]`` rows and columns; no test output equals its input."""
    from ..arc.augment import Augmentation
    from ..arc.task import Pair, Task

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    k = int(rng.integers(1, 10))
    palette = rng.permutation(np.arange(1, 10))[:3].astype(np.uint8)
    while True:   # a permutation that moves at least one palette colour: no output equals its input
        perm = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        if (perm[palette] != palette).any():
            break
    # mix: half the tasks paint, the others apply one dihedral transform (1-7) drawn per task
    kind = ("paint" if rng.random() < 0.5 else int(rng.integers(1, 8))) if family == "mix" else family
    pairs = []
    while len(pairs) < n_train + 1:
        h, w = (int(x) for x in rng.integers(sizes[0], sizes[1] + 1, 2))
        g = _grid(rng, h, w)
        if kind == "perm3":
            g = np.where(g > 0, palette[g % 3], 0).astype(np.uint8)
            out = perm[g]
        elif kind != "paint":
            out = Augmentation(transform=kind).apply_grid(g)
        else:
            out = np.where(g > 0, k, 0).astype(np.uint8)
        if not np.array_equal(g, out):
            pairs.append(Pair(g, out))
    return Task(id=task_id, train=pairs[:n_train], test=pairs[n_train:])


def _settings(ctx: Context) -> dict:
    quick = ctx.quick
    s = dict(family="mix", tasks=200 if quick else 2000, held_out_tasks=4 if quick else 48,
             steps=20 if quick else 3000, row_len=2048, lr=3e-3, hidden=64, layers=2,
             predictions=2 if quick else 8, ttft_steps=4 if quick else 100, ttft_lr=1e-3, seed=0,
             synthetic=1, starter=0 if quick else 1, seen="arc1:train[:100]", held_out="arc1:eval[:50]",
             budget=60.0 if quick else 150.0, curve="", curve_tasks="arc1:train[:40]", curve_points=6,
             curve_predictions=2, curve_budget=600.0)
    for key, value in ctx.options.items():
        if key in s:
            s[key] = type(s[key])(value) if not isinstance(s[key], str) else value
    return s


def pretrain(model, tasks: list, steps: int, seed: int, lr: float = 3e-3, row_len: int = 2048,
             augment=None) -> tuple[list, float]:
    """Train every weight of ``model`` on ``tasks`` with ``arcfast train --full``'s stream and trainer
    (loss on every demonstration output after the first; ``augment``, default every augmentation):
    ``steps`` packed rows of ``row_len`` tokens. Returns (the loss of each step, seconds)."""
    from ..arc.augment import AugmentConfig
    from ..samples.mixture import MixtureStream
    from ..samples.sampling import SampleConfig
    from ..train.trainer import FullTrainer, TrainConfig

    trainer = FullTrainer(model, TrainConfig(lr=lr, steps=steps, warmup_ratio=0.05))
    config = SampleConfig(mode="pretrain", max_len=row_len, loss_on="outputs")
    losses = []
    t0 = time.perf_counter()
    with MixtureStream([tasks], [1.0], seed, row_len=row_len, segment_len=steps, config=config,
                       augment=augment or AugmentConfig()) as stream:
        for _ in range(steps):
            losses.append(float(trainer.step(next(stream)[1]).loss[0]))
    return losses, time.perf_counter() - t0


def _score(model: str, tasks, s: dict, out: Path, ttft: bool, budget: float, steps: int) -> dict:
    """Predict (and with ``ttft`` first fine-tune) ``tasks`` (a source string or a list of tasks)
    through :class:`arcfast.run.ttft.TTFTRun`; its summary with the run's seconds."""
    from ..budget.clock import Deadline
    from ..run.config import TTFTConfig
    from ..run.ttft import TTFTRun

    if not isinstance(tasks, str):
        d = out.parent / f"{out.name}-tasks"
        d.mkdir(parents=True, exist_ok=True)
        for t in tasks:
            (d / f"{t.id}.json").write_text(json.dumps(t.to_json()))
        tasks = str(d)
    cfg = TTFTConfig(tasks=tasks, model=model, out=str(out), budget=budget, device="cpu", dtype="float32",
                     seed=s["seed"], rank=8, alpha=16.0, lr=s["ttft_lr"], steps=max(1, steps), train=ttft,
                     tasks_per_group=16, row_len=s["row_len"] if s["row_len"] >= 4096 else 8192, max_len=8192,
                     predictions=s["predictions"], save_adapters="none", progress=False)
    summary = TTFTRun(cfg, deadline=Deadline(budget)).run()
    steps_done = [json.loads(p.read_text()).get("steps", 0) for p in (out / "tasks").glob("*.json")]
    summary["steps_per_task"] = round(float(np.mean(steps_done)), 1) if steps_done else 0.0
    return summary


def _row(case: str, summary: dict, baseline: dict | None = None, base_name: str | None = None) -> Row:
    m = summary.get("metrics") or {}
    extra = {k: round(v, 4) for k, v in m.items()}
    extra.update(parse_rate=round(1.0 - m.get("unanswered", 1.0), 4), seconds=summary.get("seconds"),
                 tasks=summary.get("tasks"), trained=summary.get("trained"),
                 steps_per_task=summary.get("steps_per_task"))
    b = (baseline.get("metrics") or {}) if baseline else None
    return Row(BENCH, case, 100.0 * m.get("vote_2", 0.0), "% vote_2", base_name,
               100.0 * b.get("vote_2", 0.0) if b is not None else None, extra=extra)


def _plot(losses: list, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6, color="#4c72b0", alpha=0.5, label="per step")
    k = max(1, len(losses) // 50)
    if len(losses) >= 2 * k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(losses) + 1), smooth, lw=1.5, color="#dd8452", label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss (demonstration outputs)", title=title)
    ax.set_yscale("log")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _synthetic(s: dict, ctx: Context, work: Path) -> list:
    """Part 1 (see the module docstring): its rows."""
    import torch

    from ..model.config import ModelConfig
    from ..model.decoder import build_model
    from ..model.checkpoint import save_model

    rows: list = []
    rng = np.random.default_rng(s["seed"])
    fam = s["family"]
    train = [family_task(rng, f"{fam}-{i}", fam) for i in range(s["tasks"])]
    held = [family_task(rng, f"{fam}-new-{i}", fam) for i in range(s["held_out_tasks"])]
    cfg = ModelConfig(family="qwen2", hidden_size=s["hidden"], n_layers=s["layers"], n_heads=4, n_kv_heads=2,
                      intermediate_size=4 * s["hidden"], qkv_bias=True, name=f"learning-{s['hidden']}x{s['layers']}")
    torch.manual_seed(s["seed"])
    model = build_model(cfg, dtype=torch.float32, device="cpu", seed=s["seed"])
    losses, train_s = pretrain(model, train, s["steps"], s["seed"], s["lr"], s["row_len"])
    save_model(model.eval(), work / "model")
    del model
    n = max(1, len(losses) // 20)
    first, last = float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
    rows.append(Row(BENCH, f"{fam} pretraining loss ({s['steps']} steps)", last, "loss", f"first {n} steps",
                    first, higher_is_better=False,
                    extra={"seconds": round(train_s, 1), "params": cfg.n_params(), "tasks": len(train)}))
    _plot(losses, f"arcfast learning: {fam}, {cfg.name}, {s['tasks']} tasks", ctx.out / "learning-loss.png")
    model_dir = str(work / "model")
    seen = _score(model_dir, train[: s["held_out_tasks"]], s, work / "seen", False, s["budget"], 0)
    rows.append(_row(f"{fam} seen", seen))
    base = _score(model_dir, held, s, work / "held", False, s["budget"], 0)
    rows.append(_row(f"{fam} held-out", base))
    tuned = _score(model_dir, held, s, work / "held-ttft", True, s["budget"], s["ttft_steps"])
    rows.append(_row(f"{fam} held-out + TTFT", tuned, base, "no TTFT"))
    return rows


# The bars a starter model is held to (seen ARC-AGI-1 training tasks), for the curve's extrapolation.
CURVE_BARS = (("parse_rate", 0.95), ("correct_size", 0.85), ("vote_2", 0.10))


def train_log_curve(run_dir: Path) -> tuple[dict, dict, float]:
    """From an ``arcfast train`` run's ``log.jsonl``: ({step: tokens trained up to it},
    {step: validation loss}, mean tokens/s). A step logged twice (a run stopped after it and resumed
    from an earlier checkpoint) counts once, as the later line has it."""
    per_step: dict = {}
    val: dict = {}
    speeds = []
    with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue   # a line cut by a crash
            if e.get("event") == "train":
                per_step[int(e["step"])] = int(e["tokens"])
                speeds.append(float(e["tokens_per_s"]))
            elif e.get("event") == "val":
                val[int(e["step"])] = float(e["loss"])
    cum, total = {}, 0
    for step in sorted(per_step):
        total += per_step[step]
        cum[step] = total
    return cum, val, float(np.median(speeds)) if speeds else float("nan")


def _tokens_at(cum: dict, step: int) -> float:
    """Tokens trained up to ``step``, interpolated between the logged steps (0 at step 0)."""
    xs = [0] + sorted(cum)
    ys = [0] + [cum[k] for k in sorted(cum)]
    return float(np.interp(step, xs, ys))


def fit_log_linear(tokens: list, values: list, target: float) -> Optional[float]:
    """Tokens at which the least-squares line of ``values`` against log10(tokens) reaches ``target``;
    None when it does not rise (or there are fewer than two points)."""
    x = np.log10(np.asarray(tokens, dtype=float))
    y = np.asarray(values, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    a, b = np.polyfit(x, y, 1)
    if a <= 0:
        return None
    return float(10 ** ((target - b) / a))


def snapshot_steps(run_dir: Path) -> dict:
    """{step: directory} of the weights an ``arcfast train --keep-snapshots`` run kept."""
    d = Path(run_dir) / "snapshots"
    out = {}
    for p in d.glob("step-*") if d.is_dir() else ():
        tail = p.name[len("step-"):]
        if tail.isdigit() and (p / "config.json").exists():
            out[int(tail)] = p
    return out


def _pick(steps: list, n: int) -> list:
    """At most ``n`` of ``steps`` (sorted), evenly spread, the first and the last always in."""
    if len(steps) <= n:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]


def _plot_curve(points: list, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [p["tokens"] / 1e6 for p in points]
    for key, label in (("parse_rate", "parse rate"), ("correct_size", "correct size"),
                       ("correct_pixels", "correct pixels"), ("vote_2", "vote_2")):
        ax.plot(x, [100 * p[key] for p in points], marker="o", label=label)
    ax.set(xlabel="tokens trained (millions, log scale)", ylabel="% (seen tasks)", title=title)
    ax.set_xscale("log")
    val = [(xi, p["val_loss"]) for xi, p in zip(x, points) if p.get("val_loss") is not None]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), color="black", ls="--", marker="x", label="validation loss")
        ax2.set_ylabel("validation loss")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _curve(s: dict, ctx: Context, work: Path) -> list:
    """Part 3 (``curve=RUN``): the kept snapshots of a training run scored on ``curve_tasks``, and
    how much training the bars would take on the measured trend."""
    run_dir = Path(s["curve"])
    snaps = snapshot_steps(run_dir)
    if not snaps:
        raise ValueError(f"{run_dir}: no snapshots/step-N directories (train with --keep-snapshots)")
    cum, val, tok_s = train_log_curve(run_dir)
    cs = dict(s, predictions=s["curve_predictions"])
    rows, points = [], []
    for step in _pick(sorted(snaps), s["curve_points"]):
        summary = _score(str(snaps[step]), s["curve_tasks"], cs, work / f"curve-{step}", False,
                         s["curve_budget"], 0)
        m = summary.get("metrics") or {}
        pt = dict(step=step, tokens=_tokens_at(cum, step), val_loss=val.get(step),
                  parse_rate=1.0 - m.get("unanswered", 1.0), **{k: m.get(k, 0.0) for k in
                                                               ("correct_size", "correct_pixels", "vote_2")})
        points.append(pt)
        r = _row(f"curve step {step} ({pt['tokens'] / 1e6:.1f}M tokens) {s['curve_tasks']}", summary)
        r.extra.update(step=step, tokens=int(pt["tokens"]), val_loss=pt["val_loss"])
        rows.append(r)
    _plot_curve(points, f"arcfast learning: {run_dir.name} on {s['curve_tasks']}", ctx.out / "learning-curve.png")
    usable = [p for p in points if p["tokens"] > 0]
    for key, bar in CURVE_BARS:
        need = fit_log_linear([p["tokens"] for p in usable], [p[key] for p in usable], bar)
        hours = need / tok_s / 3600 if need is not None and tok_s > 0 else None
        rows.append(Row(BENCH, f"curve: tokens to {key} {bar:.0%} (log-linear fit)",
                        need / 1e6 if need is not None else float("nan"), "M tokens",
                        extra={"points": len(usable), "tokens_per_s": round(tok_s, 1),
                               "hours_at_that_speed": round(hours, 1) if hours is not None else None,
                               "now": round(usable[-1][key], 4) if usable else None,
                               "rising": need is not None}))
    return rows


def run(ctx: Context) -> list[Row]:
    import torch

    from ..models import shipped_model

    s = _settings(ctx)
    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads or threads)
    work = Path(tempfile.mkdtemp(prefix="arcfast-learning-"))
    rows: list[Row] = []
    try:
        if s["synthetic"]:
            rows += _synthetic(s, ctx, work)
        if s["curve"]:
            rows += _curve(s, ctx, work)
        if s["starter"] and shipped_model("starter") is not None:
            seen = _score("starter", s["seen"], s, work / "starter-seen", False, s["budget"], 0)
            rows.append(_row(f"starter seen {s['seen']}", seen))
            base = _score("starter", s["held_out"], s, work / "starter-held", False, s["budget"], 0)
            rows.append(_row(f"starter {s['held_out']}", base))
            tuned = _score("starter", s["held_out"], s, work / "starter-ttft", True, s["budget"], 100)
            rows.append(_row(f"starter {s['held_out']} + TTFT ({s['budget']:.0f}s)", tuned, base, "no TTFT"))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    return rows
