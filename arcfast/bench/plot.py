"""Throughput from benchmark results files as horizontal bars: tokens/s, then samples/s.

    python -m arcfast.bench.plot bench-results/*.json -o bench-results/tokens_per_s.png

One panel per unit (trained ``tokens/s``, ``generated tok/s``, ``samples/s``: the throughput rows
``arcfast bench`` writes), a bar per measured case and one per baseline (grey), on a log
scale, each labelled with its value and, for a fast path, its ratio to the baseline. A baseline
that is also a row of its own (``bench_train``'s hf case) is drawn once. When several files hold
the same benchmark, each label names its file.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# Units plotted, in panel order; other rows (seconds, grids/s, fill) are left out.
UNITS = ("tokens/s", "generated tok/s", "samples/s")


@dataclass
class Bar:
    unit: str
    label: str
    value: float
    baseline: bool           # a baseline (grey) rather than a measured fast path
    ratio: Optional[float] = None


def _fmt(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def load(paths: Sequence) -> list[tuple[str, dict]]:
    """``(file stem, results document)`` for every JSON file given (a directory: its ``*.json``).

    Raises ValueError naming the file when one is not a results file (no ``rows`` list)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{f}: not a readable results file ({e})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
                raise ValueError(f"{f}: not a benchmark results file (no 'rows' list)")
            out.append((f.stem, doc))
    return out


def _tags(stems: Sequence[str]) -> dict:
    """A short name per file: its stem without the leading date and time, unless that collides."""
    short = {s: re.sub(r"^\d{4}-\d{2}-\d{2}T\d{4,6}-?", "", s) or s for s in stems}
    return short if len(set(short.values())) == len(set(stems)) else {s: s for s in stems}


def collect(docs: Sequence[tuple[str, dict]]) -> list[Bar]:
    """The bars of every throughput row of ``docs`` (see :func:`load`), in file and row order, each
    measured case followed by its baseline unless that baseline was already drawn. A row whose
    value is another row's baseline (same file, benchmark and unit) is drawn as a baseline."""
    files_per_bench: dict = {}
    for stem, doc in docs:
        for r in doc["rows"]:
            files_per_bench.setdefault(r.get("bench"), set()).add(stem)
    tags = _tags([stem for stem, _ in docs])
    bars: list[Bar] = []
    for stem, doc in docs:
        rows = [r for r in doc["rows"] if r.get("unit") in UNITS and (r.get("value") or 0) > 0]
        key = lambda r, v: (r["bench"], r["unit"], round(float(v), 6))
        baselines = {key(r, r["baseline_value"]) for r in rows if r.get("baseline_value")}
        seen = {key(r, r["value"]) for r in rows}
        for r in rows:
            bench, unit = r["bench"], r["unit"]
            tag = f" [{tags[stem]}]" if len(files_per_bench.get(bench, ())) > 1 else ""
            is_base = r.get("baseline_value") is None and key(r, r["value"]) in baselines
            bars.append(Bar(unit, f"{bench}: {r['case']}{tag}", float(r["value"]), is_base, r.get("ratio")))
            bv = r.get("baseline_value")
            if bv and bv > 0 and key(r, bv) not in seen:
                seen.add(key(r, bv))
                bars.append(Bar(unit, f"{bench}: {r.get('baseline') or 'baseline'}{tag}", float(bv), True))
    return bars


def plot(bars: Sequence[Bar], out, title: str = "") -> Path:
    """Write the chart of ``bars`` to ``out`` (PNG); ValueError when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(u, [b for b in bars if b.unit == u]) for u in UNITS]
    panels = [(u, bs) for u, bs in panels if bs]
    if not panels:
        raise ValueError(f"no rows with units {', '.join(UNITS)} to plot")
    heights = [max(1.2, 0.32 * len(bs) + 0.6) for _, bs in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (unit, bs) in zip(axes[:, 0], panels):
        y = list(range(len(bs)))[::-1]
        ax.barh(y, [b.value for b in bs], color=["#9e9e9e" if b.baseline else "#1f77b4" for b in bs])
        ax.set_yticks(y)
        ax.set_yticklabels([b.label for b in bs], fontsize=8)
        ax.set_xscale("log")
        hi = max(b.value for b in bs)
        ax.set_xlim(min(b.value for b in bs) / 3, hi * 8)
        for yi, b in zip(y, bs):
            note = _fmt(b.value) + ("" if b.ratio is None else f"  ({b.ratio:.1f}x)")
            ax.text(b.value * 1.08, yi, note, va="center", fontsize=8)
        ax.set_xlabel(unit + " (log scale; grey: baseline)")
        ax.grid(axis="x", which="both", alpha=0.25)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _title(docs: Sequence[tuple[str, dict]]) -> str:
    machines = []
    for _, doc in docs:
        m = doc.get("machine", {})
        name = m.get("gpu") or m.get("processor") or "?"
        if name not in machines:
            machines.append(name)
    dates = sorted({str(doc.get("date", ""))[:10] for _, doc in docs} - {""})
    return f"arcfast benchmarks: {', '.join(machines)}" + (f" ({', '.join(dates)})" if dates else "")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m arcfast.bench.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results JSON files (or directories of them)")
    ap.add_argument("-o", "--out", default="bench-results/tokens_per_s.png",
                    help="PNG to write (default: %(default)s under the current directory)")
    args = ap.parse_args(argv)
    docs = load(args.results)
    bars = collect(docs)
    path = plot(bars, args.out, _title(docs))
    print(f"{path}: {len(bars)} bars from {len(docs)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
