"""The `arcfast` command line.

    arcfast ttft [--tasks SOURCE] [--model PATH|PRESET] [--budget 11h] [--out DIR] ...
    arcfast train --data arc1:train=1 --data barc.jsonl=0.5 --val arc1:eval[:20] --model PATH --out DIR [--full]
    arcfast eval --tasks SOURCE [--model PATH] [--adapter DIR] [--ttft] [--search dfs] [--select nvarc]
    arcfast validate SOURCE [--solutions PATH] [--max-size 30]
    arcfast bench [--quick] [-k NAME] [--set KEY=VALUE]      # python -m arcfast.bench
    arcfast info

Exit status: 0 when a run wrote everything; 2 for a usage or input error; 3 when a run's submission
is complete but some adapters or task results could not be written (the summary says which and why).

`arcfast ttft` with no arguments runs its embedded default: a few tasks of the bundled ARC-AGI-1
evaluation set, the starter model (trained by arcfast, shipped inside the package; the random-weight
tiny preset where it is not installed), a short budget: a complete run in about a minute on a CPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional

from .budget import process_start

# Exit status of a run (ttft, eval) that finished with a complete submission but could not write
# some of its other outputs (adapters, task results: a full disk); 0 when everything was written.
EXIT_NOT_WRITTEN = 3


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; every option's help ends with its default (see _show_defaults)."""


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of ``parser`` and its subcommands that
    has a default worth showing (not None, not False) and does not state it already."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.formatter_class = _Help
                _show_defaults(sub)
            continue
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if any(action.default is x for x in (None, False, argparse.SUPPRESS)) or "default" in (action.help or ""):
            continue
        action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def _add_verbose(p) -> None:
    # Also after the subcommand (arcfast ttft ... -v); SUPPRESS keeps the top-level value otherwise.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")


def token_modules(text: str) -> tuple:
    """argparse type of --train-tokens (:func:`arcfast.lora.parse_tokens`)."""
    from .lora import parse_tokens

    try:
        return parse_tokens(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_run_flags(p, command: str) -> None:
    """The flags `arcfast ttft` and `arcfast eval` share, defined once (defaults: TTFTConfig)."""
    from .sampling import LOSS_ON
    from .search import SEARCHES
    from .select import SELECTORS
    from .recipes import RECIPES
    from .ttft import DEFAULT_BUDGET, DEFAULT_MODEL, DEFAULT_TASKS, TTFTConfig

    d = TTFTConfig()
    ttft = command == "ttft"
    g = p.add_argument_group("what and where")
    if ttft:
        g.add_argument("--tasks", default=DEFAULT_TASKS,
                       help="task source: a bundled set (arc1:eval, arc2:eval[:20]), a Kaggle challenges "
                            "file, a directory of task JSON files, a BARC .jsonl...")
    else:
        g.add_argument("--tasks", required=True,
                       help="task source with solutions (e.g. arc1:eval, arc1:train[:50])")
    g.add_argument("--solutions", default=None, help="solutions file, when not found beside the challenges")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="a local Hugging Face checkpoint directory, the shipped starter model, or a "
                        "built-in preset (tiny, starter-arch, qwen2.5-0.5b, ...: random weights)")
    g.add_argument("--adapter", default=None, help="PEFT adapter directory every task starts from")
    g.add_argument("--budget", default=DEFAULT_BUDGET if ttft else "24h",
                   help="wall time for the whole run from the start of the process, e.g. 11h, 30m, 90s")
    g.add_argument("--margin", default=None,
                   help="time kept back from the budget for writing the results, e.g. 30s (default: 3%% "
                        "of the budget, at least 10s and at most 5m)")
    g.add_argument("--out", default=None, help=f"output directory (default: runs/{command}-<date>-<time>)")
    g.add_argument("--resume", action="store_true", help="keep the tasks an earlier run in --out finished")
    g.add_argument("--save-adapters", default=d.save_adapters, choices=("all", "none"),
                   help="write each task's trained adapter under OUT/adapters (none: only the answers; "
                        "400 adapters of a 0.5B model at rank 32 take about 14 GB)")
    g = p.add_argument_group("engine")
    g.add_argument("--backend", default=d.backend, choices=("auto", "native", "hf", "unsloth"),
                   help="the trainer: native (many tasks per packed batch), hf (transformers + PEFT), unsloth")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", default=d.dtype, help="auto, float32, bfloat16 or float16")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice")
    g.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine, one per GPU, pulling tasks from one shared "
                        "queue (as under torchrun --nproc_per_node N); 1: this process alone")
    g.add_argument("--lease-seconds", type=float, default=d.lease_s, metavar="S",
                   help="with the queue: a worker silent for S seconds (it died) has its tasks handed out again")
    g.add_argument("--sharding", choices=("queue", "static"), default=d.sharding,
                   help="with several workers (torchrun or --workers): queue (each takes the next task, "
                        "longest first, from a shared queue) or static (worker r takes every N-th task)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay each training step as a CUDA graph (native backend on a GPU; falls back to "
                        "eager steps, and says why, where it cannot)")
    g = p.add_argument_group("training recipe (per task)")
    if not ttft:
        g.add_argument("--ttft", action="store_true",
                       help="fine-tune a per-task adapter first, as `arcfast ttft` does (the flags below)")
    # The flags a --recipe sets default to None: a flag given wins over the recipe, which wins over
    # the engine's default (shown in each help).
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named recipe that sets the fields below (printed at the start; a flag given "
                        "beside it wins): nvarc (r=256, alpha 32, rsLoRA, lr 5e-5, batch 1), arc24 (r=128, "
                        "lr 8e-5, 300 steps, 96 predictions); see arcfast/recipes.py")
    g.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {d.rank})")
    g.add_argument("--alpha", type=float, default=None, help=f"LoRA alpha (default {d.alpha:g})")
    g.add_argument("--rslora", action="store_true", default=None,
                   help="rank-stabilised LoRA: scale by alpha/sqrt(rank) instead of alpha/rank (PEFT's "
                        "use_rslora), for high ranks such as 256")
    g.add_argument("--train-tokens", dest="tokens", type=token_modules, default=None, metavar="MODULES",
                   help="also train each task's own rows of the embedding and/or LM head: embed_tokens, "
                        "lm_head, both (embed_tokens,lm_head) or none (default none); saved in PEFT's format "
                        "(modules_to_save, or trainable tokens for a full vocabulary)")
    g.add_argument("--embedding-lr", type=float, default=None, metavar="LR",
                   help="learning rate of those rows, on the same schedule (default: --lr)")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr:g})")
    g.add_argument("--steps", type=int, default=None, help=f"optimizer steps per task at most (default {d.steps})")
    g.add_argument("--max-task-seconds", type=float, default=None, metavar="S",
                   help="stop a group's training so that it and the group's inference fit S seconds (the "
                        "tasks of a group train together; NVARC capped a task at 1200); default: no cap")
    g.add_argument("--samples-per-task", type=int, default=None,
                   help=f"samples of each task in every step (default {d.samples_per_task})")
    g.add_argument("--objective", action="append", default=None, metavar="NAME=W",
                   help="a training objective and its share of the samples, repeatable: output (predict "
                        "the output), input (generate another input of the task), verify (judge a candidate "
                        "output: right or a corruption); e.g. --objective output=1 --objective verify=0.5 "
                        "(default: output only)")
    g.add_argument("--loss-on", choices=LOSS_ON, default=d.loss_on,
                   help="the tokens that carry loss: the left-out pair's output, or every output of the "
                        "prompt but the first demonstration's")
    g.add_argument("--geometric-aug", action=argparse.BooleanOptionalAction, default=d.geometric_aug,
                   help="a dihedral transform drawn per training sample (--no-geometric-aug: the tasks as "
                        "they are oriented)")
    g.add_argument("--color-aug", action=argparse.BooleanOptionalAction, default=d.color_aug,
                   help="a colour permutation drawn per training sample (--no-color-aug: the tasks' own colours)")
    g.add_argument("--keep-zero", type=float, default=d.keep_zero_prob, metavar="P",
                   help="probability that a sample's colour permutation keeps colour 0 (the usual "
                        f"background) in place (1: always; default: {d.keep_zero_prob})")
    g.add_argument("--max-demos", type=int, default=d.max_demos, metavar="N",
                   help="demonstrations per training sample at most (0: every train pair but the target; N-2 "
                        f"of N pairs is the seeds' 'n-2' recipe; default: {d.max_demos})")
    g.add_argument("--swap-bug", action="store_true",
                   help="ablation only: reproduce the always-swap bug of an earlier public implementation "
                        "(the last train pair is never a target), to measure what leave-one-out is worth")
    g.add_argument("--tasks-per-group", type=int, default=d.tasks_per_group,
                   help="tasks trained together in one packed batch (0: 8 on CPU, 32 on GPU)")
    g.add_argument("--row-len", type=int, default=d.row_len, help="tokens per packed row")
    g.add_argument("--max-len", type=int, default=d.max_len, help="longest prompt in tokens")
    g = p.add_argument_group("inference")
    g.add_argument("--predictions", type=int, default=None,
                   help=f"predictions per test input (one per test-time augmentation; default {d.predictions})")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated per prediction at most (default: from the 30x30 size limit)")
    g.add_argument("--search", choices=SEARCHES, default=d.search,
                   help="how each augmented prompt is decoded: greedy (one output), sample (one output at "
                        "--temperature), dfs (every output of probability >= --min-prob, found depth-first)")
    g.add_argument("--min-prob", type=float, default=d.min_prob, metavar="P",
                   help="with --search dfs: the probability an output needs to be found")
    g.add_argument("--max-candidates", type=int, default=None, metavar="N",
                   help="with --search dfs: outputs per augmented prompt after which its search stops "
                        "branching (default: none, every output >= P is found: there are at most 1/P)")
    g.add_argument("--temperature", type=float, default=d.temperature,
                   help="with --search sample: the softmax temperature")
    g.add_argument("--select", choices=SELECTORS, default=None,
                   help="which candidates are submitted: vote (times found), poe (log-probability summed "
                        "over the M scoring augmentations), nvarc (times found + mean log-probability), "
                        "verify (the verifier's mean P(right), see --verify), vote+verify (times found x "
                        "mean P(right)); default: poe with --rescore, else vote")
    g.add_argument("--rescore", type=int, default=None, metavar="M",
                   help="score the voted candidates under M augmentations (default: 8 with --select poe or "
                        "nvarc, else 0: off); eval then reports every selector side by side")
    g.add_argument("--rescore-top", type=int, default=d.rescore_top, metavar="K",
                   help="with --rescore: how many voted candidates per test input are scored")
    g.add_argument("--verify", type=int, default=None, metavar="K",
                   help="ask the model whether each voted candidate is right under up to K augmentations, "
                        "in rounds that drop candidates out of reach of the top two (a model trained on the "
                        "verify objective; default: 8 with --select verify or vote+verify or --objective "
                        "verify=W, else 0: off); eval then reports verify_1/verify_2 beside vote_1/vote_2")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    _add_verbose(p)


def _run_config(args, command: str):
    """The TTFTConfig of `arcfast ttft`/`arcfast eval` from their shared flags: the engine's
    defaults, then the --recipe's fields, then the flags given (``args.recipe_line`` says which)."""
    from .recipes import describe, resolve
    from .ttft import TTFTConfig

    d_objectives = TTFTConfig.__dataclass_fields__["objectives"].default
    budget, margin = _budget_and_margin(args)
    given = {k: getattr(args, k) for k in ("rank", "alpha", "rslora", "tokens", "embedding_lr", "lr", "steps",
                                           "samples_per_task", "predictions", "max_task_seconds")}
    recipe, overridden = resolve(args.recipe, given)
    args.recipe_line = describe(args.recipe, overridden) if args.recipe else None
    return TTFTConfig(tasks=args.tasks, solutions=args.solutions, model=args.model, adapter=args.adapter,
                      budget=budget, margin=margin, out=args.out or time.strftime(f"runs/{command}-%Y%m%d-%H%M%S"),
                      backend=args.backend, device=args.device, dtype=args.dtype, seed=args.seed,
                      recipe=args.recipe, sharding=args.sharding, lease_s=args.lease_seconds, **recipe,
                      loss_on=args.loss_on, geometric_aug=args.geometric_aug, color_aug=args.color_aug,
                      keep_zero_prob=args.keep_zero, max_demos=args.max_demos, swap_bug=args.swap_bug,
                      tasks_per_group=args.tasks_per_group,
                      row_len=args.row_len, max_len=args.max_len,
                      max_new_tokens=args.max_new_tokens, search=args.search, min_prob=args.min_prob,
                      max_candidates=args.max_candidates,
                      temperature=args.temperature, select=args.select, rescore=args.rescore,
                      rescore_top=args.rescore_top, verify=args.verify,
                      objectives=tuple(args.objective) if args.objective else d_objectives,
                      cuda_graphs=args.cuda_graphs, resume=args.resume, save_adapters=args.save_adapters,
                      train=getattr(args, "ttft", True), progress=not args.quiet)


def _add_ttft(sub) -> None:
    p = sub.add_parser("ttft", help="test-time fine-tune and predict a task set inside a time budget",
                       description="Train a LoRA adapter per task (many tasks per packed batch), predict "
                                   "each test output under augmentations, vote, and write submission.json "
                                   "— all before --budget runs out.")
    _add_run_flags(p, "ttft")
    p.set_defaults(func=cmd_ttft)


def _budget_and_margin(args) -> tuple:
    """(budget, margin) in seconds from --budget and --margin (None: the default margin)."""
    from .budget import parse_duration

    budget = parse_duration(args.budget)
    if args.margin is None:
        return budget, None
    margin = parse_duration(args.margin)
    if margin >= budget:
        raise ValueError(f"--margin {args.margin} leaves nothing of --budget {args.budget}")
    return budget, margin


def _deadline(args, cfg):
    from .budget import Deadline

    return Deadline(cfg.budget, margin=cfg.margin, start=getattr(args, "started", None))


def cmd_ttft(args) -> int:
    return _run(args, _run_config(args, "ttft"))


def _run(args, cfg) -> int:
    """Run ``cfg`` as this process, as one worker of several (torchrun's environment: the
    process group joined and left), or, with ``--workers N``, as the launcher of N local workers.
    Rank 0 prints the summary."""
    from .runtime import dist as _dist
    from .ttft import TTFTRun

    rank, world = _dist()
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and world == 1:
        return _spawn_workers(args, cfg)
    deadline = _deadline(args, cfg)
    if rank == 0:
        _note_random_weights(cfg.model)
        _note_recipe(args)
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = TTFTRun(cfg, deadline=deadline).run()
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        _print_summary(summary, cfg.out_dir)
    return EXIT_NOT_WRITTEN if summary.get("adapters_not_saved") or summary.get("results_not_written") else 0


def _spawn_workers(args, cfg) -> int:
    """``--workers N`` on one machine: N processes of this same command, wired as torchrun would
    wire them (RANK, LOCAL_RANK (the GPU), WORLD_SIZE, a rendezvous on a free local port), one
    output directory, one budget counted from this process's start. Returns the worst exit code."""
    import socket
    import subprocess

    n = args.workers
    argv, skip = [], False
    for a in args.argv:   # the same command less --workers, with the output directory fixed
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            argv.append(a)
    if not args.out:
        argv += ["--out", str(cfg.out_dir)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    epoch = time.time() - (time.monotonic() - args.started)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n),
               LOCAL_WORLD_SIZE=str(n), ARCFAST_START_EPOCH=repr(epoch))
    procs = [subprocess.Popen([sys.executable, "-m", "arcfast", *argv],
                              env=dict(env, RANK=str(i), LOCAL_RANK=str(i))) for i in range(n)]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"arcfast {args.command}: worker exit codes {codes}", file=sys.stderr)
    return max(codes, key=abs)


def _note_recipe(args) -> None:
    if getattr(args, "recipe_line", None):
        print(args.recipe_line, flush=True)


def _note_random_weights(model: str) -> None:
    from .model import PRESETS

    if model in PRESETS:
        print(f"note: --model {model} is a built-in architecture with random weights: it times the engine "
              f"and solves nothing; pass --model DIR with a trained checkpoint for real answers.", flush=True)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="predict, vote and score a model on tasks with known outputs",
                       description="Predicts every test output of a task source with known solutions under "
                                   "test-time augmentations (with the base model, a --adapter, or --ttft "
                                   "adapters trained first), votes, scores and writes the report.")
    _add_run_flags(p, "eval")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from .data import load_tasks

    cfg = _run_config(args, "eval")
    problems: list = []
    tasks = load_tasks(args.tasks, solutions=args.solutions, on_error="skip", problems=problems)
    if not tasks:
        raise ValueError(_no_task_loaded(args.tasks, problems))
    if not any(t.has_solutions for t in tasks):
        raise ValueError(f"{args.tasks}: no task has known test outputs; `arcfast eval` needs solutions "
                         f"(use `arcfast ttft` to predict without them)")
    return _run(args, cfg)


def _print_summary(s: dict, out) -> None:
    print(f"\n{s['tasks']} tasks, {s['trained']} trained, {s['answered']} answered by the model, "
          f"in {s['seconds']:.1f}s (budget {s['budget']:.0f}s) with backend {s['backend']}")
    cut = []
    if s.get("untrained"):
        cut.append(f"{len(s['untrained'])} tasks left untrained")
    if s.get("steps_abandoned"):
        cut.append(f"{s['steps_abandoned']} training steps abandoned part way (not applied)")
    if cut:
        print("the budget cut: " + ", ".join(cut) + " (see log.jsonl)")
    lost = s.get("adapters_not_saved") or []
    if lost:
        print(f"{len(lost)} of {len(lost) + s.get('adapters_saved', 0)} adapters not saved: {s.get('write_error')}")
    if s.get("results_not_written"):
        print(f"{len(s['results_not_written'])} task results not written to tasks/ (their answers are in the "
              f"submission; --resume runs them again): {s.get('write_error')}")
    if s.get("problems"):
        print(f"{len(s['problems'])} input problems (see log.jsonl); first: {s['problems'][0]}")
    if s.get("metrics"):
        names = list(s["metrics"])
        print("| " + " | ".join(names) + " |\n|" + "---:|" * len(names))
        print("| " + " | ".join(f"{100 * s['metrics'][k]:.1f}%" for k in names) + " |")
    if s.get("selection") and len(s["selection"]) > 1:
        print("selection on the same candidates: " + ", ".join(
            f"{k}{' (submitted)' if k == s.get('select') else ''} {100 * v['vote_1']:.1f}% / {100 * v['vote_2']:.1f}%"
            for k, v in s["selection"].items()) + "  (vote_1 / vote_2)")
    print(f"submission: {s['submission']}\nreport:     {out}/report.md")


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="load, check and encode a task source, with a summary",
                       description="Loads every task (skip policy: each problem is reported), encodes "
                                   "every grid in the compact format and round-trips it.")
    p.add_argument("source", help="a bundled set (arc1:eval), a file or a directory")
    p.add_argument("--solutions", default=None)
    p.add_argument("--max-size", type=int, default=30)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_verbose(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    import numpy as np

    from .data import load_tasks
    from .formats import decode_batch, encode_batch

    t0 = time.perf_counter()
    problems: list = []
    tasks = load_tasks(args.source, solutions=args.solutions, on_error="skip", problems=problems,
                       max_size=args.max_size)
    t_load = time.perf_counter() - t0
    if not tasks:
        raise ValueError(_no_task_loaded(args.source, problems))
    grids = [g for t in tasks for g in t.grids()]
    t1 = time.perf_counter()
    ids = encode_batch(grids, "compact")
    decoded = decode_batch(ids, "compact", max_size=args.max_size)
    t_codec = time.perf_counter() - t1
    bad = sum(1 for (g, st), ref in zip(decoded, grids) if g is None or not np.array_equal(g, ref))
    sizes = np.array([g.size for g in grids]) if grids else np.zeros(0)
    summary = {
        "source": args.source, "tasks": len(tasks), "problems": [str(p) for p in problems],
        "train_pairs": sum(len(t.train) for t in tasks), "test_pairs": sum(len(t.test) for t in tasks),
        "with_solutions": sum(1 for t in tasks if t.has_solutions), "grids": len(grids),
        "tokens": int(sum(len(x) for x in ids)), "max_cells": int(sizes.max()) if len(sizes) else 0,
        "round_trip_failures": bad, "load_seconds": round(t_load, 3), "codec_seconds": round(t_codec, 3),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{summary['source']}: {summary['tasks']} tasks ({summary['with_solutions']} with solutions), "
              f"{summary['train_pairs']} train / {summary['test_pairs']} test pairs, {summary['grids']} grids, "
              f"{summary['tokens']:,} compact tokens; loaded in {t_load:.2f}s, encoded + decoded in "
              f"{t_codec * 1e3:.1f} ms; round-trip failures: {bad}")
        for p in problems:
            print(f"  problem: {p}")
    return 0 if bad == 0 else 1


def _no_task_loaded(source: str, problems: list) -> str:
    if not problems:
        return f"{source}: no task was loaded (the source holds no task)"
    return (f"{source}: no task was loaded; {len(problems)} skipped "
            f"(first: {problems[0]})")


def check_out_dir(out, flag: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot be created or written: an existing
    file, a path under a file, a directory (or the nearest existing one above it) where nothing can
    be created — no permission, a read-only file system. Writability is tried, not guessed from
    permission bits (which do not bind root): an empty temporary directory is created there and
    removed at once. Raises ValueError naming the path and what is wrong."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out}: an existing file, not a directory; give a directory "
                         f"(it is created when missing)")
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{flag} {out}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag} {out}: {probe} is a file, so the directory cannot be created under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".arcfast-write-check-", dir=str(probe)))
    except OSError as e:
        what = "the directory" if probe == path else f"{probe}, where it would be created,"
        raise ValueError(f"{flag} {out}: {what} is not writable ({e.strerror or e})") from None


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> int:
    import platform

    from . import __version__

    print(f"arcfast {__version__}, Python {platform.python_version()} ({platform.machine()}, "
          f"{platform.system()})")
    print("  " + ", ".join(f"{m} {_version(m)}" for m in ("torch", "triton", "transformers", "peft",
                                                           "safetensors", "numpy", "unsloth")))
    try:
        import torch
    except Exception as e:  # torch missing or broken: say so, don't crash
        print(f"  torch unusable: {type(e).__name__}: {e}")
        return 0
    print(f"  torch build: CUDA {torch.version.cuda or 'none'}; {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
                  f"{p.major}.{p.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        print("  no CUDA device: the CPU runs the plain PyTorch paths")
    try:
        from .attention import choose_impl
        from .kernels._common import HAS_TRITON

        if torch.cuda.is_available():
            kernels = ("Triton kernels (LoRA, RMSNorm, SwiGLU, RoPE, cross-entropy)" if HAS_TRITON
                       else "plain PyTorch references: triton is not importable (pip install 'arcfast[triton]')")
            att = choose_impl("cuda", torch.bfloat16)
        else:
            kernels, att = "plain PyTorch references (Triton kernels run on a GPU only)", choose_impl("cpu", None)
        print(f"  kernels: {kernels}; packed attention: {att}")
        from .backends import backend_status

        for name, (ok, why) in backend_status().items():
            print(f"  backend {name:8s} {'yes' if ok else 'no '}  {why}")
    except Exception as e:
        print(f"  backends unavailable: {type(e).__name__}: {e}")
    return 0


def cmd_bench(argv: list) -> int:
    """``arcfast bench ARGS``: the benchmark suite in ``arcfast.bench`` (see arcfast/bench/runner.py)."""
    from .bench.runner import main as bench_main

    return int(bench_main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="arcfast", description=__doc__, formatter_class=_Help)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("--version", action="version", version=f"arcfast {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_ttft(sub)
    from .finetune import add_train_parser

    _add_verbose(add_train_parser(sub))
    _add_eval(sub)
    _add_validate(sub)
    info = sub.add_parser("info", help="versions, the device, and which backends and kernels run here")
    _add_verbose(info)
    info.set_defaults(func=cmd_info)
    # Listed for --help; main() hands its arguments to the benchmark runner untouched.
    sub.add_parser("bench", add_help=False,
                   help="benchmarks against transformers + PEFT and Unsloth, side by side in one run "
                        "(arcfast bench --help; the same as python -m arcfast.bench)")
    _show_defaults(p)
    return p


# Errors a user's paths cause (a missing file, a file where a directory belongs, no permission):
# each is reported in one line. Other OSErrors (a full disk, an I/O error) keep their traceback.
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _describe(e: BaseException) -> str:
    """One line for an error: ``path: reason`` for an OSError that names its file, else its text."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror}"
    return str(e) or type(e).__name__


def main(argv: Optional[list] = None) -> int:
    # A budget counts from the start of the process: interpreter start-up and every import
    # included. Called with an argument list (as a library), from this call.
    from_command_line = argv is None
    started = process_start() if argv is None else time.monotonic()
    if os.environ.get("ARCFAST_START_EPOCH"):   # a worker of --workers: the launcher's budget
        started = time.monotonic() - max(0.0, time.time() - float(os.environ["ARCFAST_START_EPOCH"]))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["ttft"], ["eval"], ["train"]) and "torch" not in sys.modules:
        # OpenMP threads that spin while they wait for each other lose their cores to any other
        # process that computes, and every op then waits a scheduler slice for its slowest thread:
        # on 2 cores beside 2 busy loops a 512-token training probe took 6.5 s spinning, 0.28 s
        # passive (unloaded: 0.11 s and 0.13 s). Passive waits keep a budget's rates honest on a
        # shared machine; a value the user set is kept. (Read once, when torch loads OpenMP.)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv[:1] == ["bench"]:
        try:
            return cmd_bench(argv[1:])
        except FileNotFoundError as e:
            print(f"arcfast bench: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "out", None):
            check_out_dir(args.out)
        code = args.func(args)
    except (ValueError, *_USER_OS_ERRORS) as e:
        print(f"arcfast {args.command}: error: {_describe(e)}", file=sys.stderr)
        return 2
    if from_command_line and args.command in ("ttft", "eval", "train"):
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End a budgeted run's process as soon as its outputs are on disk: every file was written
    atomically and closed, so the interpreter's teardown (module by module, torch's OpenMP threads
    woken to be joined) is only time, and on a loaded machine a lot of it: 4 s of a 60 s budget
    beside eight busy processes on two cores, against 0.5 s unloaded."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
