"""`arcfast train`: its flags (defaults from :class:`arcfast.run.train.FinetuneConfig`) and its run."""
from __future__ import annotations

import argparse
import time

from ..run.train import FinetuneConfig, run_train
from .args import add_quiet, add_shared_flags, budget_and_margin, deadline_of


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an ``argparse`` subparsers object."""
    d = FinetuneConfig()
    p = subparsers.add_parser(
        "train", help="fine-tune a LoRA adapter (or, with --full, the whole model) on a weighted mixture of "
                      "task sources (before TTFT)",
        description="Fine-tune one LoRA adapter on a weighted mixture of task sources through the streaming "
                    "sampler, with checkpoints, resume and a validation loss; the adapter is written in PEFT "
                    "format to OUT/adapter for `arcfast ttft --adapter OUT/adapter`. With --full every weight "
                    "is trained instead (fp32 master weights and AdamW state) and the model is written as a "
                    "transformers checkpoint to OUT/model for `arcfast ttft --model OUT/model`.")
    g = p.add_argument_group("what and where")
    g.add_argument("--data", action="append", default=None, metavar="SOURCE=WEIGHT",
                   help="a task source (bundled set such as arc1:train, Kaggle file, task directory, BARC .jsonl, "
                        "RE-ARC directory) and its weight, the expected share of training batches; repeatable "
                        "(default: arc1:train=1.0)")
    g.add_argument("--val", default=None, help="held-out task source for the validation loss, e.g. arc1:eval[:20]")
    add_shared_flags(g, ("model", "adapter"), d, "train")
    g.add_argument("--full", action="store_true",
                   help="full fine-tuning: train every weight (embedding and LM head included; --rank and --alpha "
                        "unused) and write OUT/model, a transformers checkpoint, instead of OUT/adapter")
    add_shared_flags(g, ("out", "resume", "budget", "margin", "report_to"), d, "train", defaults={"budget": None})
    g = p.add_argument_group("schedule and checkpoints")
    add_shared_flags(g, ("steps",), d, "train")
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps (0: at the end)")
    g.add_argument("--keep-snapshots", action="store_true",
                   help="also keep the weights of every checkpoint as OUT/snapshots/step-N, from which "
                        "`arcfast bench -k learning --set curve=OUT` draws the run's learning curve")
    g.add_argument("--val-every", type=int, default=d.val_every, help="validation interval (0: --save-every)")
    g.add_argument("--val-batches", type=int, default=d.val_batches, help="packed batches of the validation set")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps per train line of log.jsonl")
    g = p.add_argument_group("recipe")
    add_shared_flags(g, ("rank", "alpha", "rslora", "tokens", "embedding_lr", "lr", "warmup_ratio"), d, "train")
    g.add_argument("--schedule", default=d.schedule, choices=("cosine", "linear", "constant"),
                   help="the learning rate after warm-up: down to 0 by a cosine or linearly, or held")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW's decoupled weight decay")
    add_shared_flags(g, ("row_len",), d, "train")
    g.add_argument("--rows", type=int, default=d.rows, help="rows per batch")
    add_shared_flags(g, ("max_len", "loss_on", "objectives"), d, "train")
    g.add_argument("--wrong-from", action="append", default=[], metavar="RUN",
                   help="an `arcfast eval` run directory whose wrong predictions of these tasks the verify "
                        "objective learns from (beside synthetic corruptions), repeatable")
    g = p.add_argument_group("engine")
    add_shared_flags(g, ("device", "dtype", "seed"), d, "train")
    g.add_argument("--threads", type=int, default=d.threads, help="sampler threads per source")
    add_shared_flags(g, ("cuda_graphs",), d, "train")
    add_quiet(p)
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args) -> FinetuneConfig:
    from ..samples.objectives import parse_objectives

    budget, margin = budget_and_margin(args)
    return FinetuneConfig(
        data=args.data or ["arc1:train=1.0"], val=args.val, model=args.model,
        out=args.out or time.strftime("runs/train-%Y%m%d-%H%M%S"), adapter=args.adapter, full=args.full,
        resume=args.resume,
        steps=args.steps, save_every=args.save_every, keep_snapshots=args.keep_snapshots, val_every=args.val_every, val_batches=args.val_batches,
        log_every=args.log_every, budget=budget, margin=margin, seed=args.seed,
        device=args.device, dtype=args.dtype, rank=args.rank, alpha=args.alpha, rslora=args.rslora,
        tokens=args.tokens, embedding_lr=args.embedding_lr, lr=args.lr,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, weight_decay=args.weight_decay,
        row_len=args.row_len, rows=args.rows, max_len=args.max_len, loss_on=args.loss_on, threads=args.threads,
        objectives=parse_objectives(args.objective), wrong_from=tuple(args.wrong_from),
        progress=not args.quiet, cuda_graphs=args.cuda_graphs, report_to=args.report_to)


def cmd_train(args) -> int:
    """The ``arcfast train`` entry point: runs :func:`run_train` and prints a summary."""
    cfg = config_from_args(args)
    s = run_train(cfg, deadline=deadline_of(args, cfg))
    val = f", val loss {s['val_loss']:.4f}" if s["val_loss"] is not None else ""
    print(f"\n{s['steps']}/{s['target_steps']} steps ({s['stopped']}) in {s['seconds']:.1f}s, "
          f"{s['tokens_per_s']:,.0f} tok/s{val}\n"
          + (f"model: {s['model']}" if "model" in s else f"adapter: {s['adapter']}"))
    return 0

__all__ = ["add_train_parser", "config_from_args", "cmd_train"]
