"""The `arcfast` command line.

    arcfast ttft [--tasks SOURCE] [--model PATH|PRESET] [--budget 11h] [--out DIR] ...
    arcfast train --data arc1:train=1 --data barc.jsonl=0.5 --val arc1:eval[:20] --model PATH --out DIR [--full]
    arcfast eval --tasks SOURCE [--model PATH] [--adapter DIR] [--ttft] [--search dfs] [--select nvarc]
    arcfast validate SOURCE [--solutions PATH] [--max-size 30]
    arcfast report RUN [--solutions FILE]                     # report.html (and the others) again
    arcfast compare RUN_A RUN_B [...] [--out compare.html]    # runs side by side
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
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

from ..budget.clock import process_start
from .args import _add_verbose, _Help, _no_task_loaded, _show_defaults
from .pages import add_compare_parser, add_report_parser
from .run import _add_eval, _add_ttft


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="load, check and encode a task source, with a summary",
                       description="Loads every task (skip policy: each problem is reported), encodes "
                                   "every grid in the compact format and round-trips it.")
    p.add_argument("source", help="a bundled set (arc1:eval), a file or a directory")
    p.add_argument("--solutions", default=None, metavar="FILE",
                   help="solutions file, when not found beside the challenges")
    p.add_argument("--max-size", type=int, default=30, metavar="N",
                   help="the largest number of rows and of columns a grid may have")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_verbose(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from ..arc.formats import decode_batch, encode_batch
    from ..arc.loading import load_tasks

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


def check_out_dir(out, flag: str = "--out") -> None:
    """Refuse, before any work, an output directory that cannot be created or written: an existing
    file, a path under a file, a directory (or the nearest existing one above it) where nothing can
    be created — no permission, a read-only file system. Writability is tried, not guessed from
    permission bits (which do not bind root): an empty temporary directory is created there and
    removed at once. Raises ValueError naming the path and what is wrong."""
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
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> int:
    from .. import __version__

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
        from ..kernels._common import HAS_TRITON
        from ..model.attention import choose_impl

        if torch.cuda.is_available():
            kernels = ("Triton kernels (LoRA, RMSNorm, SwiGLU, RoPE, cross-entropy)" if HAS_TRITON
                       else "plain PyTorch references: triton is not importable (pip install 'arcfast[triton]')")
            att = choose_impl("cuda", torch.bfloat16)
        else:
            kernels, att = "plain PyTorch references (Triton kernels run on a GPU only)", choose_impl("cpu", None)
        print(f"  kernels: {kernels}; packed attention: {att}")
        from ..train.backends import backend_status

        for name, (ok, why) in backend_status().items():
            print(f"  backend {name:8s} {'yes' if ok else 'no '}  {why}")
    except Exception as e:
        print(f"  backends unavailable: {type(e).__name__}: {e}")
    return 0


def cmd_bench(argv: list) -> int:
    """``arcfast bench ARGS``: the benchmark suite in ``arcfast.bench`` (see arcfast/bench/runner.py)."""
    from ..bench.runner import main as bench_main

    return int(bench_main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="arcfast", description=__doc__, formatter_class=_Help)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("--version", action="version", version=f"arcfast {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_ttft(sub)
    from .train import add_train_parser

    _add_verbose(add_train_parser(sub))
    _add_eval(sub)
    _add_validate(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
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
