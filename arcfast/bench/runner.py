"""One command runs every benchmark present, each fast path beside its baseline in the same run.

    arcfast bench                   # all benchmarks, full size
    arcfast bench --quick           # small sizes (what the test suite runs)
    arcfast bench -k encode         # only benchmarks whose name contains "encode"
    arcfast bench -x workload       # all but those whose name contains "workload"
    arcfast bench --out DIR         # results into DIR (default: ./bench-results/)

``python -m arcfast.bench`` is the same command, and so is ``python -m benchmarks`` in a clone.
A benchmark is a module ``arcfast/bench/bench_<name>.py`` with ``run(ctx: Context) -> list[Row]``.
The runner prints one table and writes ``<out>/<date>-<cpu|gpu>[-quick].json`` stamped with the
date, the machine, the versions and the command line, under the current directory unless --out
says where (the GPU records kept in the source tree are in ``benchmarks/results/``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import pkgutil
import platform
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

# Relative: resolved against the working directory when the results are written, never the package.
DEFAULT_OUT = Path("bench-results")
PROG = "arcfast bench"


@dataclass
class Context:
    quick: bool = False          # small sizes: seconds, not minutes
    device: str = "cpu"          # "cpu" or "cuda"
    threads: int = 0             # 0 = all cores
    options: dict = field(default_factory=dict)
    out: Path = DEFAULT_OUT      # where a benchmark may write files beside the results (plots)


def with_torch_threads(ctx: Context, fn):
    """``fn(ctx)`` with torch's intra-op pool at ``ctx.threads`` (default one) on the CPU, restored
    after. The tiny CPU shapes gain nothing from the pool, which only adds waits: both sides of the
    generation benchmark ran 5-10x slower with 2 threads on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    if ctx.device == "cpu":
        torch.set_num_threads(ctx.threads or 1)
    try:
        return fn(ctx)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Row:
    """One measured fast path, its baseline measured in the same run, and the ratio between them.

    ``higher_is_better`` says which way ``unit`` goes (grids/s: yes; seconds: no); ``ratio`` is
    always "how many times better the fast path is". ``bar`` is the ratio the project promises.
    """

    bench: str
    case: str
    value: float
    unit: str
    baseline: Optional[str] = None
    baseline_value: Optional[float] = None
    higher_is_better: bool = True
    bar: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> Optional[float]:
        if self.baseline_value is None or not self.baseline_value or not self.value:
            return None
        r = self.value / self.baseline_value
        return r if self.higher_is_better else 1.0 / r

    @property
    def meets_bar(self) -> Optional[bool]:
        if self.bar is None or self.ratio is None:
            return None
        return self.ratio >= self.bar

    def to_json(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["meets_bar"] = self.meets_bar
        return d


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f}k"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def format_table(rows: list[Row]) -> str:
    head = ("benchmark", "case", "value", "unit", "baseline", "baseline value", "ratio", "bar")
    body = []
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.1f}x"
        bar = "-" if r.bar is None else f">={r.bar:g}x " + ("ok" if r.meets_bar else "MISSED")
        body.append((r.bench, r.case, _fmt(r.value), r.unit, r.baseline or "-",
                     _fmt(r.baseline_value), ratio, bar))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def machine_info(device: str) -> dict:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    for mod in ("numpy", "torch", "transformers", "peft", "triton", "unsloth"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:
            pass
    if device == "cuda":
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0)
        except Exception:
            pass
    return info


def write_results(rows: list[Row], ctx: Context, argv: list[str], errors: dict,
                  out_dir: Path = DEFAULT_OUT, prog: str = PROG) -> Path:
    """Write ``rows`` as ``out_dir/<date>-<cpu|gpu>[-quick].json``; ``prog`` + ``argv`` is the
    command line recorded in it."""
    now = _dt.datetime.now(_dt.timezone.utc)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if ctx.device == "cuda" else "cpu"
    path = out_dir / f"{now:%Y-%m-%dT%H%M%S}-{tag}{'-quick' if ctx.quick else ''}.json"
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join([prog, *argv]),
        "machine": machine_info(ctx.device),
        "context": {**asdict(ctx), "out": str(ctx.out)},
        "rows": [r.to_json() for r in rows],
        "errors": errors,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The benchmark runner's flags (``prog`` names the command in --help)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, seconds per benchmark")
    ap.add_argument("-k", dest="only", default="", help="run benchmarks whose name contains this")
    ap.add_argument("-x", "--exclude", action="append", default=[], metavar="NAME",
                    help="skip benchmarks whose name contains this (repeatable)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=0, help="threads for the C++ batch paths (0 = all)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                    help="directory for the JSON results, created when missing "
                         "(default: %(default)s/ under the current directory)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="benchmark options, e.g. --set model=qwen2.5-0.5b")
    return ap


def main(argv: Optional[list[str]] = None, prog: str = PROG) -> int:
    """Run the benchmarks ``argv`` selects (``sys.argv[1:]`` when None); 1 when any failed.
    ``prog`` names the command in --help and in the results file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    device = args.device
    if device is None:
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:
            device = "cpu"
    options = dict(kv.split("=", 1) for kv in args.set)
    ctx = Context(quick=args.quick, device=device, threads=args.threads, options=options, out=Path(args.out))

    rows: list[Row] = []
    errors: dict[str, str] = {}
    key = lambda text: text.replace("-", "_")   # -k ttft-ablations selects bench_ttft_ablations
    for name in discover():
        if (args.only and key(args.only) not in name) or any(key(x) in name for x in args.exclude):
            continue
        t0 = time.perf_counter()
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
            got = mod.run(ctx)
            rows.extend(got)
        except Exception as exc:  # one broken benchmark never hides the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"[{name}] {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    print(format_table(rows))
    if not args.no_save:
        path = write_results(rows, ctx, argv, errors, Path(args.out), prog)
        print(f"\nresults: {path}")
    for name, err in errors.items():
        print(f"ERROR in {name}: {err}", file=sys.stderr)
    return 1 if errors else 0
