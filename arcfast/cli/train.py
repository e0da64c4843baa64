"""`arcfast train`: its flags (defaults from :class:`arcfast.run.train.FinetuneConfig`) and its run."""
from __future__ import annotations

import argparse
import time

from ..budget.clock import Deadline, parse_duration
from ..run.train import FinetuneConfig, run_train
from .args import token_modules


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an ``argparse`` subparsers object."""
    from ..samples.sampling import LOSS_ON

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
    g.add_argument("--model", default=d.model, help="a local Hugging Face checkpoint directory or a built-in preset")
    g.add_argument("--adapter", default=None, help="PEFT adapter to start from (a resumed run uses its checkpoint); "
                                                   "with --full it is merged into the weights first")
    g.add_argument("--full", action="store_true",
                   help="full fine-tuning: train every weight (embedding and LM head included; --rank and --alpha "
                        "unused) and write OUT/model, a transformers checkpoint, instead of OUT/adapter")
    g.add_argument("--out", default=None, help="output directory (default: runs/train-<date>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    g.add_argument("--budget", default=None, help="wall time for the whole run, e.g. 2h, 30m (default: none)")
    g = p.add_argument_group("schedule and checkpoints")
    g.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps (the schedule length)")
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps (0: at the end)")
    g.add_argument("--keep-snapshots", action="store_true",
                   help="also keep the weights of every checkpoint as OUT/snapshots/step-N (for learning curves)")
    g.add_argument("--val-every", type=int, default=d.val_every, help="validation interval (0: --save-every)")
    g.add_argument("--val-batches", type=int, default=d.val_batches, help="packed batches of the validation set")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps per train line of log.jsonl")
    g = p.add_argument_group("recipe")
    g.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    g.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha")
    g.add_argument("--rslora", action="store_true",
                   help="rank-stabilised LoRA: scale by alpha/sqrt(rank) instead of alpha/rank (PEFT's "
                        "use_rslora), for high ranks such as 256")
    g.add_argument("--train-tokens", dest="tokens", type=token_modules, default="none", metavar="MODULES",
                   help="also train the adapter's own rows of the embedding and/or LM head: embed_tokens, "
                        "lm_head, both or none; saved in PEFT's format (default: none)")
    g.add_argument("--embedding-lr", type=float, default=None, metavar="LR",
                   help="learning rate of those rows, on the same schedule (default: --lr)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    g.add_argument("--schedule", default=d.schedule, choices=("cosine", "linear", "constant"))
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--row-len", type=int, default=d.row_len, help="tokens per packed row")
    g.add_argument("--rows", type=int, default=d.rows, help="rows per batch")
    g.add_argument("--max-len", type=int, default=d.max_len, help="longest prompt in tokens")
    g.add_argument("--loss-on", default=d.loss_on, choices=LOSS_ON)
    g.add_argument("--objective", action="append", default=None, metavar="NAME=W",
                   help="a training objective and its share of the samples, repeatable: output, input, verify "
                        "(default: output only; see arcfast.samples.objectives)")
    g.add_argument("--wrong-from", action="append", default=[], metavar="RUN",
                   help="an `arcfast eval` run directory whose wrong predictions of these tasks the verify "
                        "objective learns from (beside synthetic corruptions), repeatable")
    g = p.add_argument_group("engine")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", default=d.dtype, help="auto, float32, bfloat16 or float16")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=d.threads, help="sampler threads per source")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay each LoRA step as a CUDA graph (GPU; eager steps, and why, where it cannot)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args) -> FinetuneConfig:
    from ..samples.objectives import parse_objectives

    return FinetuneConfig(
        data=args.data or ["arc1:train=1.0"], val=args.val, model=args.model,
        out=args.out or time.strftime("runs/train-%Y%m%d-%H%M%S"), adapter=args.adapter, full=args.full,
        resume=args.resume,
        steps=args.steps, save_every=args.save_every, keep_snapshots=args.keep_snapshots, val_every=args.val_every, val_batches=args.val_batches,
        log_every=args.log_every, budget=parse_duration(args.budget) if args.budget else None, seed=args.seed,
        device=args.device, dtype=args.dtype, rank=args.rank, alpha=args.alpha, rslora=args.rslora,
        tokens=args.tokens, embedding_lr=args.embedding_lr, lr=args.lr,
        warmup_ratio=args.warmup_ratio, schedule=args.schedule, weight_decay=args.weight_decay,
        row_len=args.row_len, rows=args.rows, max_len=args.max_len, loss_on=args.loss_on, threads=args.threads,
        objectives=parse_objectives(args.objective), wrong_from=tuple(args.wrong_from),
        progress=not args.quiet, cuda_graphs=args.cuda_graphs)


def cmd_train(args) -> int:
    """The ``arcfast train`` entry point: runs :func:`run_train` and prints a summary."""
    cfg = config_from_args(args)
    deadline = None
    if cfg.budget is not None:
        # The budget counts from when `arcfast.cli.main` started (imports and loading included).
        deadline = Deadline(cfg.budget, margin=cfg.margin, start=getattr(args, "started", None))
    s = run_train(cfg, deadline=deadline)
    val = f", val loss {s['val_loss']:.4f}" if s["val_loss"] is not None else ""
    print(f"\n{s['steps']}/{s['target_steps']} steps ({s['stopped']}) in {s['seconds']:.1f}s, "
          f"{s['tokens_per_s']:,.0f} tok/s{val}\n"
          + (f"model: {s['model']}" if "model" in s else f"adapter: {s['adapter']}"))
    return 0

__all__ = ["add_train_parser", "config_from_args", "cmd_train"]
