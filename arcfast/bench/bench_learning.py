"""Learning: from a seed to answers. Does a model that arcfast trains answer ARC-style tasks, and
how much does test-time fine-tuning add?

    arcfast bench -k learning                  # part 1 about 6 minutes, part 2 about 12, on a 2-core CPU
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
real ``arcfast ttft`` engine (:class:`arcfast.ttft.TTFTRun`, ``predictions`` per test input under
test-time augmentations, voting):

- ``seen``: tasks it was trained on, predicted as they are (can it fit what it saw?);
- ``held-out``: new tasks of the family, predicted without TTFT;
- ``held-out + TTFT``: the same, each task first fine-tuned on its own demonstrations (a LoRA of
  rank 8 per task, ``ttft_steps`` at ``ttft_lr``): the row's ratio is the gain of TTFT.

Part 2, the starter model (``starter=1``, when it is installed: arcfast/models/starter/): its scores
on ARC-AGI-1 training tasks it was trained on (``seen``, default ``arc1:train[:100]``) and on the
first 50 ARC-AGI-1 evaluation tasks (``held_out``) without and with TTFT (100 steps at
``ttft_lr``), each run inside ``budget`` (default 4 minutes).

Rows: ``vote_2`` (a test input counts when one of the two submitted attempts is right) in percent
of test inputs, with every metric of :mod:`arcfast.metrics` in the row's extra (parse rate is
1 - unanswered); the pretraining loss (last 5% of steps against the first 5%). The loss curve is
drawn to ``<out>/learning-loss.png``.

Options (``--set key=value``): family, tasks, held_out_tasks, steps, row_len, lr, hidden, layers,
predictions, ttft_steps, ttft_lr, seed, synthetic (0/1: part 1), starter (0/1: part 2), seen,
held_out, budget.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .runner import Context, Row

BENCH = "learning"
FAMILIES = ("perm3", "paint", "mix")


def _grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = rng.integers(1, 10, (h, w)).astype(np.uint8)
    g[rng.random((h, w)) < 0.4] = 0
    return g


def _dihedral(g: np.ndarray, t: int) -> np.ndarray:
    """Dihedral transform ``t`` as numbered in :mod:`arcfast.augment`."""
    fns = (lambda a: a, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 3),
           lambda a: a.T, np.fliplr, np.flipud, lambda a: np.rot90(a, 2).T)
    return np.ascontiguousarray(fns[t](g))


def family_task(rng: np.random.Generator, task_id: str, family: str, sizes=(3, 5), n_train: int = 4):
    """One generated task of ``family`` (see the module docstring) with uint8 grids of
    ``sizes[0]..sizes[1]`` rows and columns; no test output equals its input."""
    from ..task import Pair, Task

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
            out = _dihedral(g, kind)
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
             budget=60.0 if quick else 240.0)
    for key, value in ctx.options.items():
        if key in s:
            s[key] = type(s[key])(value) if not isinstance(s[key], str) else value
    return s


def _pretrain(model, tasks: list, s: dict) -> tuple[list, float]:
    from ..augment import AugmentConfig
    from ..finetune import MixtureStream
    from ..sampling import SampleConfig
    from ..trainer import FullTrainer, TrainConfig

    trainer = FullTrainer(model, TrainConfig(lr=s["lr"], steps=s["steps"], warmup_ratio=0.05))
    config = SampleConfig(mode="pretrain", max_len=s["row_len"], loss_on="outputs")
    losses = []
    t0 = time.perf_counter()
    with MixtureStream([tasks], [1.0], s["seed"], row_len=s["row_len"], segment_len=s["steps"], config=config,
                       augment=AugmentConfig()) as stream:
        for _ in range(s["steps"]):
            losses.append(float(trainer.step(next(stream)[1]).loss[0]))
    return losses, time.perf_counter() - t0


def _score(model: str, tasks, s: dict, out: Path, ttft: bool, budget: float, steps: int) -> dict:
    """Predict (and with ``ttft`` first fine-tune) ``tasks`` (a source string or a list of tasks)
    through :class:`arcfast.ttft.TTFTRun`; its summary with the run's seconds."""
    from ..budget import Deadline
    from ..ttft import TTFTConfig, TTFTRun

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
    return TTFTRun(cfg, deadline=Deadline(budget)).run()


def _row(case: str, summary: dict, baseline: dict | None = None, base_name: str | None = None) -> Row:
    m = summary.get("metrics") or {}
    extra = {k: round(v, 4) for k, v in m.items()}
    extra.update(parse_rate=round(1.0 - m.get("unanswered", 1.0), 4), seconds=summary.get("seconds"),
                 tasks=summary.get("tasks"), trained=summary.get("trained"))
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

    from ..model import ModelConfig, build_model, save_model

    rows: list = []
    rng = np.random.default_rng(s["seed"])
    fam = s["family"]
    train = [family_task(rng, f"{fam}-{i}", fam) for i in range(s["tasks"])]
    held = [family_task(rng, f"{fam}-new-{i}", fam) for i in range(s["held_out_tasks"])]
    cfg = ModelConfig(family="qwen2", hidden_size=s["hidden"], n_layers=s["layers"], n_heads=4, n_kv_heads=2,
                      intermediate_size=4 * s["hidden"], qkv_bias=True, name=f"learning-{s['hidden']}x{s['layers']}")
    torch.manual_seed(s["seed"])
    model = build_model(cfg, dtype=torch.float32, device="cpu", seed=s["seed"])
    losses, train_s = _pretrain(model, train, s)
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
