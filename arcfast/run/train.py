"""`arcfast train`: fine-tune one shared LoRA adapter, or the whole model (``--full``), on a weighted
mixture of task sources, before TTFT.

    arcfast train --data arc1:train=1.0 --data barc.jsonl=0.5 --val arc1:eval[:20] \\
                  --model qwen2.5-0.5b --out runs/pre --steps 20000 --save-every 500 --budget 2h
    arcfast ttft --adapter runs/pre/adapter ...

    arcfast train --full --data arc1:train=1.0 --model /ckpt --out runs/full --lr 1e-5 ...
    arcfast ttft --model runs/full/model ...

What a run does (:func:`run_train`): load every source (bad tasks are reported and skipped), load the
model, attach ONE LoRA adapter (slot 0 of :class:`arcfast.train.trainer.Trainer`; every token of every batch
trains it), then take optimizer steps on packed batches from :class:`MixtureStream` until ``steps``
are done or the budget runs out, with a validation loss every ``val_every`` steps and a checkpoint
every ``save_every`` steps. The final adapter is written in PEFT format to ``OUT/adapter``.

With ``full`` (``--full``) every weight is trained instead (:class:`arcfast.train.trainer.FullTrainer`: fp32
master weights and AdamW state, global gradient clipping, no weight decay on norms and biases) and
the result is a transformers checkpoint directory, ``OUT/model``, that ``arcfast ttft --model`` and
``load_model`` read. ``--adapter`` then names a PEFT adapter merged into the weights before training
(``W += scaling * B @ A`` on every layer it targets; scaling alpha / r, alpha / sqrt(r) with
rsLoRA), so a LoRA-pretrained model can be fully fine-tuned. A checkpoint records its mode: a LoRA
run cannot be resumed as a full one or back.

The mixture. Each source is a list of tasks with a weight. The source of batch ``b`` is drawn with
probability ``weight / sum(weights)``, so a weight is a source's expected share of the training
*batches* — hence of packed token positions, every batch having ``rows * row_len`` of them. (A
source of short tasks packs more samples into its batches than one of long tasks; per-sample
shares follow from that.) A batch holds samples of one source only; each source has its own flat
:class:`arcfast.samples.packing.PackedStream` in ``"pretrain"`` mode (known test pairs join the pool).

Determinism and resume. Steps are cut into segments of ``segment_len`` steps (the first run's
``save_every``, kept in the checkpoint). Segment ``k`` draws its source sequence, a shuffled task
order per source and its streams' seeds from ``(seed, k)`` alone, so batch ``b`` depends only on the
seed, the sources and the settings. A resumed run rebuilds the segment of its checkpoint step and
skips the batches already used in it (at most one segment's worth, produced by the C++ threads), so
a run that is stopped (or crashes) and is resumed from its last checkpoint ends with the adapter an
uninterrupted run gives, having lost at most the last ``save_every`` steps.

On disk, under ``OUT``:

- ``checkpoint/``: ``state.pt`` (trainer state: adapter or, with ``--full``, fp32 master weights;
  AdamW moments, schedule; the step; the settings the batches depend on), ``adapter/`` (PEFT copy) or
  ``model/`` (transformers copy), ``meta.json``. The directory is built beside its place and renamed
  into it, so a crash leaves the previous checkpoint or the new one;
- ``adapter/``: the final adapter (PEFT: adapter_config.json + adapter_model.safetensors), or
  ``model/`` with ``--full`` (config.json, model.safetensors, the compact tokenizer);
- ``log.jsonl``: one JSON object per line: ``train`` (mean loss, tokens/s, lr), ``val``,
  ``checkpoint``, ``stop``, ``end`` events;
- ``run.json``: the summary;
- ``tensorboard/``, ``wandb/``: with ``--report-to``, the log's metrics in those libraries' own
  files (:mod:`arcfast.run.tracking`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .config import RecipeConfig
from .tracking import open_log
from ..budget.clock import Deadline, format_duration
from ..budget.steps import StepAbandoned, StepPlanner
from ..files import atomic_write
from ..samples.mixture import MixtureStream, _seed, parse_mixture, shared_adapter
from ..train.checkpoints import (
    CHECKPOINT, find_checkpoint, load_checkpoint, save_checkpoint, save_result, save_snapshot,
)

log = logging.getLogger("arcfast.run.train")

# Settings that decide which batches a step sees: a checkpoint made with others cannot be resumed
# into the same run (changing --steps, --val, --budget or --save-every is fine).
_BATCH_KEYS = ("data", "seed", "row_len", "rows", "max_len", "loss_on", "rank", "alpha", "model", "full",
               "objectives", "wrong_from", "rslora", "tokens")
# What a checkpoint written before a key existed ran with.
_BATCH_DEFAULTS = {"full": False, "objectives": "output=1", "wrong_from": [], "rslora": False, "tokens": []}


@dataclass
class FinetuneConfig(RecipeConfig):
    """A run of `arcfast train`: the shared settings (:class:`arcfast.run.config.RecipeConfig`, with
    train's defaults), the data mixture, the schedule, checkpoints and validation."""
    model: str = "tiny"
    out: str = "runs/train"
    budget: Optional[float] = None         # seconds for the whole run (None: no limit)
    steps: int = 1000                      # total optimizer steps (the schedule length)
    warmup_ratio: float = 0.02
    data: list = field(default_factory=lambda: ["arc1:train=1.0"])   # SOURCE=WEIGHT specs
    val: Optional[str] = None              # held-out task source for the validation loss
    full: bool = False                     # train every weight (FullTrainer), write OUT/model; --adapter
                                           # is then merged into the weights
    save_every: int = 100                  # checkpoint interval in steps (0: only at the end)
    keep_snapshots: bool = False           # also keep each checkpoint's weights as OUT/snapshots/step-N
    val_every: int = 0                     # 0: same as save_every
    val_batches: int = 8
    log_every: int = 10
    schedule: str = "cosine"
    weight_decay: float = 0.0
    rows: int = 1
    wrong_from: tuple = ()                 # eval run directories whose wrong predictions verify learns from
    threads: int = 2

    def __post_init__(self):
        self.check_recipe()

    def batch_settings(self) -> dict:
        from ..samples.objectives import format_objectives, parse_objectives

        d = asdict(self)
        d["objectives"] = format_objectives(parse_objectives(dict(self.objectives)))
        d["wrong_from"] = [str(p) for p in self.wrong_from]
        d["tokens"] = list(self.tokens)
        skip = ("rank", "alpha", "rslora", "tokens") if self.full else ()   # no LoRA in a full run
        return {k: d[k] for k in _BATCH_KEYS if k not in skip}


def _load_source(source: str, what: str, logger) -> list:
    from ..arc.loading import load_tasks

    problems: list = []
    tasks = load_tasks(source, on_error="skip", problems=problems)
    for p in problems:
        log.warning("%s", p)
        logger(event="task_problem", source=source, message=str(p))
    if not tasks:
        raise ValueError(f"{what} {source}: no task could be loaded"
                         + (f" ({len(problems)} problems, first: {problems[0]})" if problems else ""))
    return tasks


def _label_count(batch) -> int:
    from ..arc import vocab as T

    return int((batch.labels[:, 1:] != T.IGNORE_INDEX).sum())


def run_train(cfg: FinetuneConfig, deadline: Optional[Deadline] = None,
              on_step: Optional[Callable[[int, object], bool]] = None) -> dict:
    """Fine-tune as configured (see the module docstring); returns the summary written to run.json.

    ``deadline``: default ``Deadline(cfg.budget)`` when a budget is set. ``on_step(step, stats)`` is
    called after every optimizer step (``step`` counted from 1, ``stats`` a
    :class:`arcfast.train.loss.StepStats`); returning True stops the run as a budget stop does
    (checkpoint and adapter written).
    """
    t_start = time.time()
    if cfg.steps < 1 or cfg.save_every < 0 or cfg.val_batches < 0 or cfg.log_every < 1 or cfg.rows < 1:
        raise ValueError("steps, log_every and rows must be >= 1; save_every and val_batches >= 0")
    if deadline is None and cfg.budget is not None:
        deadline = Deadline(cfg.budget, margin=cfg.margin)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    jlog = open_log(out / "log.jsonl", cfg)   # mirrored to --report-to's trackers
    try:
        return _train(cfg, deadline, on_step, out, jlog, t_start)
    finally:   # a run that raises still closes its log and finishes its trackers' runs
        jlog.close()


def _train(cfg: FinetuneConfig, deadline, on_step, out: Path, jlog, t_start: float) -> dict:
    from ..model.checkpoint import load_model
    from ..samples.sampling import OBJECTIVES, SampleConfig
    from ..train.trainer import FullTrainer, Trainer
    from ..runtime import device as _device
    from ..runtime import dtype as _dtype

    mixture = parse_mixture(cfg.data)
    settings = cfg.batch_settings()

    state = None
    if cfg.resume:
        ck = find_checkpoint(out)
        if ck is None:
            log.warning("%s: no checkpoint to resume from; starting at step 0", out)
        else:
            state = load_checkpoint(ck)
            before = {**_BATCH_DEFAULTS, **state["settings"]}    # e.g. checkpoints from before --full were LoRA
            if bool(before["full"]) != cfg.full:
                raise ValueError(
                    f"{ck}: the checkpoint is of a {'full' if before['full'] else 'LoRA'} run and cannot be resumed "
                    f"{'with' if cfg.full else 'without'} --full; start a new run (another --out, or no --resume)"
                    + ("" if before["full"] else f", e.g. with --full --adapter {ck / 'adapter'} to fully fine-tune "
                                                 f"from its adapter"))
            diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
            if diff:
                raise ValueError(f"{ck}: cannot resume with other settings than the checkpoint's "
                                 + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))
    start = int(state["step"]) if state else 0
    segment_len = int(state["segment_len"]) if state else (cfg.save_every or cfg.steps)

    sources = [_load_source(src, "--data", jlog) for src, _ in mixture]
    val_tasks = _load_source(cfg.val, "--val", jlog) if cfg.val else []
    if val_tasks:
        seen = {t.id for s in sources for t in s}
        overlap = sum(1 for t in val_tasks if t.id in seen)
        if overlap:
            log.warning("%d of %d validation tasks are also training tasks", overlap, len(val_tasks))
            jlog(event="warning", message=f"{overlap} of {len(val_tasks)} validation tasks are also training tasks")

    from ..samples.objectives import NEEDS_OBJECTIVE_IDS, format_objectives, parse_objectives
    from .records import read_wrong_predictions

    objectives = parse_objectives(dict(cfg.objectives))
    wrong = None
    if cfg.wrong_from:
        counts: dict = {}
        wrong = read_wrong_predictions(cfg.wrong_from, [t for s in sources for t in s], stats=counts)
        jlog(event="wrong_predictions", runs=[str(p) for p in cfg.wrong_from], **counts)
        log.info("wrong predictions from %d runs: %d grids of %d task records", len(cfg.wrong_from),
                 counts["grids"], counts["records"])
    device = _device(cfg.device)
    model = load_model(cfg.model, dtype=_dtype(cfg.dtype, device), device=device)
    if any(w > 0 and n in NEEDS_OBJECTIVE_IDS for n, w in objectives) and not model.config.has_objective_ids:
        from ..model.decoder import grow_vocab

        grow_vocab(model)   # the same rows every time: an adapter trained on them stays valid
        jlog(event="grow_vocab", vocab_size=model.config.vocab_size, objectives=format_objectives(objectives))
    train_cfg = cfg.train_config(schedule=cfg.schedule, weight_decay=cfg.weight_decay)
    if cfg.full:
        if cfg.adapter and not state:
            from ..lora.adapters import merge_adapter

            merged = merge_adapter(model, cfg.adapter)   # before the trainer copies the weights
            jlog(event="merge", adapter=str(cfg.adapter), layers=len(merged))
        trainer = FullTrainer(model, train_cfg)
    else:
        trainer = Trainer(model, cfg.lora_config(), train_cfg, n_adapters=1)
    if state:
        trainer.load_state_dict(state["trainer"])
        trainer.set_total_steps([0], cfg.steps)  # a longer --steps extends the schedule
    elif cfg.full:
        pass    # the loaded (and merged) weights are the start
    elif cfg.adapter:
        trainer.load_adapter([0], cfg.adapter, total_steps=cfg.steps)
    else:
        trainer.reset_adapters([0], seeds=[_seed(cfg.seed, 4) & 0x7FFFFFFF], total_steps=cfg.steps)

    sample_cfg = SampleConfig(mode="pretrain", max_len=min(cfg.max_len, cfg.row_len), loss_on=cfg.loss_on,
                              objectives=objectives)
    val_set = []
    if val_tasks and cfg.val_batches:
        from ..samples.packing import PackedStream

        with PackedStream(val_tasks, _seed(cfg.seed, 5), row_len=cfg.row_len, rows=cfg.rows, config=sample_cfg,
                          threads=1) as vs:
            val_set = [shared_adapter(b) for b in vs.take(cfg.val_batches)]

    def validate(step: int) -> Optional[float]:
        if not val_set:
            return None
        n = np.array([_label_count(b) for b in val_set], np.float64)
        losses = np.array([trainer.eval_loss(b)[0] if c else 0.0 for b, c in zip(val_set, n)])
        value = float((losses * n).sum() / max(1.0, n.sum()))
        jlog(event="val", step=step, loss=value, label_tokens=int(n.sum()))
        return value

    msg = (f"train: {len(sources)} sources ({', '.join(f'{s}={w:g}:{len(t)} tasks' for (s, w), t in zip(mixture, sources))}), "
           f"model {cfg.model} on {model.device} {model.dtype}, "
           + (f"full fine-tuning ({sum(p.numel() for p in model.parameters()):,} weights)" if cfg.full
              else f"LoRA r={cfg.rank}" + (f", steps: {trainer.graph_status}" if cfg.cuda_graphs else ""))
           + f", steps {start}->{cfg.steps}"
           + (f", budget {format_duration(deadline.budget)}" if deadline else ""))
    log.info(msg)
    jlog(event="start" if not state else "resume", step=start, message=msg, config=asdict(cfg))
    if cfg.progress:
        print(msg, flush=True)

    planner = StepPlanner(deadline, max_steps=cfg.steps) if deadline else None
    save_s, val_s = 1.0, 0.0        # estimates, replaced by measurements
    val_every = cfg.val_every or cfg.save_every or cfg.steps
    last_val = None
    if start == 0 and val_set:
        t = time.perf_counter()
        last_val = validate(0)
        val_s = time.perf_counter() - t
    bar = None
    if cfg.progress:
        from .progress import Progress

        bar = Progress(cfg.steps, start, desc="train", unit="steps")

    saved_at = start if state else -1

    def checkpoint(step: int) -> None:
        nonlocal save_s, saved_at
        if step == saved_at:
            return
        t = time.perf_counter()
        ck = save_checkpoint(out, trainer, step, settings, segment_len)
        if cfg.keep_snapshots:
            save_snapshot(ck, trainer, step)
        save_s = time.perf_counter() - t
        saved_at = step
        jlog(event="checkpoint", step=step, seconds=round(save_s, 3))

    if deadline is not None and saved_at < 0:
        checkpoint(start)   # times the save, which the budget must keep room for
    step, stop, tokens, train_s = start, "steps", 0, 0.0
    acc_loss = acc_n = acc_tok = 0.0
    acc_t = 0.0
    acc_obj = np.zeros((2, len(OBJECTIVES)))   # per objective: loss x tokens, tokens
    last_loss, last_obj = None, {}
    stream = MixtureStream(sources, [w for _, w in mixture], cfg.seed, row_len=cfg.row_len, rows=cfg.rows,
                           segment_len=segment_len, start_step=start, config=sample_cfg, threads=cfg.threads,
                           wrong=wrong)
    try:
        while step < cfg.steps:
            # Room for this step, a checkpoint and the final adapter (twice the measured save):
            # no step starts that is predicted not to fit, and each runs in micro-batches through
            # the planner's gate, abandoned whole (nothing applied) when its rest would not fit.
            k, batch = next(stream)
            lengths = batch.sample_lengths()
            if planner and not planner.may_step(reserve_after=2.5 * save_s, lengths=lengths):
                stop = "budget"
                break
            gate = planner.gate(reserve_after=2.5 * save_s) if planner else None
            t_step = time.perf_counter()
            try:
                stats = trainer.step(batch, gate=gate) if gate is not None else trainer.step(batch)
            except StepAbandoned as e:
                stop = "budget"
                jlog(event="step_abandoned", step=step + 1, tokens=e.tokens, tokens_done=e.tokens_done,
                     seconds=round(e.seconds, 2), left_s=round(e.left, 2))
                break
            step += 1
            if planner:
                planner.record(time.perf_counter() - t_step, gated=gate.seconds)
            n = float(stats.label_tokens[0])
            if n:
                acc_loss += float(stats.loss[0]) * n
                acc_n += n
            if len(stats.objective_tokens):
                seen = stats.objective_tokens[0] > 0
                acc_obj[0, seen] += stats.objective_loss[0, seen] * stats.objective_tokens[0, seen]
                acc_obj[1] += stats.objective_tokens[0]
            acc_tok += stats.tokens
            acc_t += stats.time_s
            tokens += stats.tokens
            train_s += stats.time_s
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_loss = acc_loss / acc_n if acc_n else None
                last_obj = {o: float(acc_obj[0, i] / acc_obj[1, i]) for i, o in enumerate(OBJECTIVES) if acc_obj[1, i]}
                jlog(event="train", step=step, loss=last_loss, objective_loss=last_obj, tokens=int(acc_tok),
                     tokens_per_s=round(acc_tok / max(acc_t, 1e-9), 1), lr=float(stats.lr[0]),
                     source_batches=stream.counts.tolist())
                acc_loss = acc_n = acc_tok = 0.0
                acc_obj[:] = 0.0
                acc_t = 0.0
            if bar is not None:
                bar.update(1, text=f"loss {float(stats.loss[0]):.4f} · {stats.tokens_per_s:,.0f} tok/s"
                           + (f" · val {last_val:.4f}" if last_val is not None else "")
                           + (f" · budget left {format_duration(deadline.remaining())}" if deadline else ""))
            if val_set and step % val_every == 0 and step < cfg.steps:
                if not deadline or deadline.remaining() > val_s + 2.5 * save_s:
                    t = time.perf_counter()
                    last_val = validate(step)
                    val_s = time.perf_counter() - t
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                checkpoint(step)
            if on_step is not None and on_step(step, stats):
                stop = "requested"
                break
    finally:
        stream.close()
        if bar is not None:
            bar.close()

    if stop == "steps" and val_set and (not deadline or deadline.remaining() > val_s + 2.5 * save_s):
        last_val = validate(step)
    checkpoint(step)
    result = save_result(out, trainer, step)
    if stop != "steps":
        jlog(event="stop", step=step, reason=stop)
    summary = {
        "steps": step, "start_step": start, "target_steps": cfg.steps, "stopped": stop,
        "train_loss": last_loss, "train_objective_loss": last_obj, "val_loss": last_val, "tokens": tokens,
        "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        "source_batches": {src: int(c) for (src, _), c in zip(mixture, stream.counts)},
        "seconds": round(time.time() - t_start, 2), ("model" if cfg.full else "adapter"): str(result),
        "checkpoint": str(out / CHECKPOINT),
    }
    atomic_write(out / "run.json", json.dumps(summary, indent=1))
    jlog(event="end", **{k: summary[k] for k in ("steps", "stopped", "seconds", "train_loss", "val_loss", "tokens_per_s")})
    return summary


__all__ = ["FinetuneConfig", "run_train"]
