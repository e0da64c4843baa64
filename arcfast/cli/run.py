"""`arcfast ttft` and `arcfast eval`: their flags (defined once, defaults from
:class:`arcfast.run.config.TTFTConfig`), the run (this process, one torchrun worker, or the launcher of
``--workers N``), and the summary printed at the end, with the exit status."""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time

from .args import _add_verbose, _no_task_loaded, add_quiet, add_shared_flags, budget_and_margin, deadline_of

# Exit status of a run (ttft, eval) that finished with a complete submission but could not write
# some of its other outputs (adapters, task results: a full disk); 0 when everything was written.
EXIT_NOT_WRITTEN = 3


def _add_run_flags(p, command: str) -> None:
    """The flags `arcfast ttft` and `arcfast eval` share, defined once (defaults: TTFTConfig)."""
    from ..answers.select import SELECTORS
    from ..infer.search import SEARCHES
    from ..run.config import DEFAULT_BUDGET, DEFAULT_TASKS, TTFTConfig
    from ..run.recipes import RECIPES

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
    add_shared_flags(g, ("model", "adapter", "budget", "margin", "out", "resume", "report_to"), d, command,
                     defaults={"budget": DEFAULT_BUDGET if ttft else "24h"})
    g.add_argument("--save-adapters", default=d.save_adapters, choices=("all", "none"),
                   help="write each task's trained adapter under OUT/adapters (none: only the answers; "
                        "400 adapters of a 0.5B model at rank 32 take about 14 GB)")
    g = p.add_argument_group("engine")
    g.add_argument("--backend", default=d.backend, choices=("auto", "native", "hf", "unsloth"),
                   help="the trainer: native (many tasks per packed batch), hf (transformers + PEFT, one task "
                        "at a time), unsloth (where it is installed); auto is native; the run prints which it "
                        "uses and why")
    add_shared_flags(g, ("device", "dtype", "seed"), d, command)
    g.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine, one per GPU, pulling tasks from one shared "
                        "queue (as under torchrun --nproc_per_node N); 1: this process alone")
    g.add_argument("--lease-seconds", type=float, default=d.lease_s, metavar="S",
                   help="with the queue: a worker silent for S seconds (it died) has its tasks handed out again")
    g.add_argument("--sharding", choices=("queue", "static"), default=d.sharding,
                   help="with several workers (torchrun or --workers): queue (each takes the next task, "
                        "longest first, from a shared queue) or static (worker r takes every N-th task)")
    add_shared_flags(g, ("cuda_graphs",), d, command)
    g = p.add_argument_group("training recipe (per task)")
    if not ttft:
        g.add_argument("--ttft", action="store_true",
                       help="fine-tune a per-task adapter first, as `arcfast ttft` does (the flags below)")
    # The flags a --recipe sets default to None: a flag given wins over the recipe, which wins over
    # the engine's default (shown in each help).
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named recipe that sets the fields below (printed at the start; a flag given "
                        "beside it wins): nvarc (r=256, alpha 32, rsLoRA, each task's embedding and LM-head "
                        "rows, lr 5e-5, warm-up 0.1, batch 1, 64 steps, --max-task-seconds 1200), arc24 "
                        "(r=128, lr 8e-5, warm-up 0.1, 300 steps at batch 1, 96 predictions); see "
                        "arcfast/run/recipes.py")
    via_recipe = ("rank", "alpha", "rslora", "tokens", "embedding_lr", "lr", "steps")
    add_shared_flags(g, via_recipe, d, command, recipe=via_recipe)
    g.add_argument("--max-task-seconds", type=float, default=None, metavar="S",
                   help="stop a group's training so that it and the group's inference fit S seconds (the "
                        "tasks of a group train together; NVARC capped a task at 1200); default: no cap")
    g.add_argument("--samples-per-task", type=int, default=None,
                   help=f"samples of each task in every step (default {d.samples_per_task})")
    add_shared_flags(g, ("objectives", "loss_on"), d, command)
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
    add_shared_flags(g, ("row_len", "max_len"), d, command)
    g = p.add_argument_group("inference")
    g.add_argument("--predictions", type=int, default=None,
                   help=f"predictions per test input (one per test-time augmentation; default {d.predictions})")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated per prediction at most (default: from the 30x30 size limit)")
    g.add_argument("--search", choices=SEARCHES, default=d.search,
                   help="how each augmented prompt is decoded: greedy (one output), sample (one output at "
                        "--temperature), dfs (every output of probability >= --min-prob, found depth-first)")
    g.add_argument("--min-prob", type=float, default=d.min_prob, metavar="P",
                   help="with --search dfs: the probability an output needs to be found (at most 1/P outputs "
                        "reach it; the greedy one is always kept too)")
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
    add_quiet(p)
    _add_verbose(p)


def _run_config(args, command: str):
    """The TTFTConfig of `arcfast ttft`/`arcfast eval` from their shared flags: the engine's
    defaults, then the --recipe's fields, then the flags given (``args.recipe_line`` says which)."""
    from ..run.config import TTFTConfig
    from ..run.recipes import describe, resolve

    d_objectives = TTFTConfig.__dataclass_fields__["objectives"].default
    budget, margin = budget_and_margin(args)
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
                      report_to=args.report_to,
                      train=getattr(args, "ttft", True), progress=not args.quiet)


def _add_ttft(sub) -> None:
    p = sub.add_parser("ttft", help="test-time fine-tune and predict a task set inside a time budget",
                       description="Train a LoRA adapter per task (many tasks per packed batch), predict "
                                   "each test output under augmentations, vote, and write submission.json "
                                   "— all before --budget runs out.")
    _add_run_flags(p, "ttft")
    p.set_defaults(func=cmd_ttft)


def cmd_ttft(args) -> int:
    return _run(args, _run_config(args, "ttft"))


def _run(args, cfg) -> int:
    """Run ``cfg`` as this process, as one worker of several (torchrun's environment: the
    process group joined and left), or, with ``--workers N``, as the launcher of N local workers.
    Rank 0 prints the summary."""
    from ..run.ttft import TTFTRun
    from ..runtime import dist as _dist

    rank, world = _dist()
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and world == 1:
        return _spawn_workers(args, cfg)
    deadline = deadline_of(args, cfg)
    if rank == 0:
        _note_random_weights(cfg.model)
        _note_recipe(args)
    if world > 1:
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = TTFTRun(cfg, deadline=deadline, command=shlex.join(["arcfast", *getattr(args, "argv", [])])).run()
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
    from ..model.config import PRESETS

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
    from ..arc.loading import load_tasks

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
    for name, why in (s.get("fast_paths_off") or {}).items():
        print(f"fast path {name} raised and was switched off, the run went on without it: {why}")
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
    print(f"submission: {s['submission']}\nreport:     {out}/report.md, {out}/report.html")
