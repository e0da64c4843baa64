"""The run report: what each task cost, how sure the vote was, and (when solutions are known)
how well it scored.

``RunReport`` accumulates one ``TaskResult`` per task as tasks finish (thread-safe) and ``write``
produces, each file replaced atomically:

- ``report.json``: run metadata, totals, overall metrics and every task's result;
- ``report.md``:   the overall metrics and totals, then one table row per task;
- ``report.png``:  seconds per task (training and inference stacked), the winning grid's share of
  the votes per task (green when ``vote_2`` is right, red when wrong, blue when unknown), and the
  overall metrics.

Overall metrics are the mean over the tasks whose result carries metrics (see
``arcfast.answers.metrics``); a task that failed outright should be given the metrics of no predictions
(``score_task(task, None)``) so that it counts against the run.
"""
from __future__ import annotations

import io
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..answers.metrics import METRICS, mean_metrics
from ..files import atomic_write
from ..answers.vote import Candidate


@dataclass
class TaskResult:
    """One task's outcome.

    metrics:           ``{name: value}`` for ``metrics.METRICS``, or ``None`` when solutions are unknown.
    train_seconds:     wall time spent training its adapter.
    inference_seconds: wall time spent generating and voting.
    steps:             optimizer steps taken for it.
    train_tokens:      tokens trained on.
    generated_tokens:  tokens generated for its predictions.
    predictions:       predictions made, per test input.
    votes:             votes of the winning grid, per test input (0 when nothing parsed).
    error:             why the task failed, when it did (the run went on without it).
    selection:         ``{selector: {"vote_1": x, "vote_2": y}}``: each selector judged on the same
                       candidates (:mod:`arcfast.answers.select`), when solutions are known.
    extra:             anything else worth keeping (JSON-serialisable).
    """

    task_id: str
    metrics: Optional[dict] = None
    train_seconds: float = 0.0
    inference_seconds: float = 0.0
    steps: int = 0
    train_tokens: int = 0
    generated_tokens: int = 0
    predictions: list = field(default_factory=list)
    votes: list = field(default_factory=list)
    error: Optional[str] = None
    selection: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.votes) != len(self.predictions):
            raise ValueError(f"task {self.task_id}: {len(self.votes)} vote counts for {len(self.predictions)} test inputs")
        for i, (v, n) in enumerate(zip(self.votes, self.predictions)):
            if not 0 <= v <= n:
                raise ValueError(f"task {self.task_id}: test {i}: winning votes {v} outside 0..{n} predictions")
        if self.metrics is not None:
            missing = [m for m in METRICS if m not in self.metrics]
            if missing:
                raise ValueError(f"task {self.task_id}: metrics lack {missing}")

    @staticmethod
    def votes_from(candidates_per_test: Sequence[Sequence[Candidate]]) -> list[int]:
        """The winning grid's count per test input from ranked candidates (0 where none)."""
        return [c[0].count if c else 0 for c in candidates_per_test]

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.inference_seconds

    @property
    def share(self) -> Optional[float]:
        """The winning grid's votes / predictions, over all test inputs; ``None`` without predictions."""
        n = sum(self.predictions)
        return sum(self.votes) / n if n else None


def task_result(r) -> TaskResult:
    """The report's view of a task's record (:class:`arcfast.run.records.TaskRun`)."""
    return TaskResult(task_id=r.task_id, metrics=r.metrics, train_seconds=r.train_seconds,
                      inference_seconds=r.inference_seconds, steps=r.steps, train_tokens=r.train_tokens,
                      generated_tokens=r.generated_tokens, predictions=r.predictions, votes=r.votes,
                      error=r.error, selection=r.selection)


def json_safe(x: Any) -> Any:
    # JSON has no inf/NaN: write them as null rather than produce a file strict parsers reject.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _plot_label(task_id: str) -> str:
    """A task id as an axis label: printable, at most 24 characters, and never read as mathtext
    (an id comes from an input file and may hold ``$`` or control characters)."""
    text = "".join(c if c.isprintable() else "?" for c in task_id)
    text = text if len(text) <= 24 else text[:23] + "…"
    return text.replace("$", r"\$")


def percent(x: Optional[float]) -> str:
    """A share as ``12.5%``; ``–`` for none (or a value that is not a finite number)."""
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:.1f}%"


def _cell(text: Any) -> str:
    # Task ids come from input files: control characters and lone surrogates are shown escaped.
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text).replace("\n", " "))
    return text.replace("|", "\\|")


class RunReport:
    """Collects ``TaskResult``s as tasks finish; ``write(out_dir)`` renders all three files."""

    def __init__(self, title: str = "arcfast run", meta: Optional[dict] = None):
        self.title = title
        self.meta = dict(meta or {})
        self._results: dict[str, TaskResult] = {}
        self._lock = threading.Lock()

    def add(self, result: TaskResult) -> None:
        """Record (or replace) one task's result."""
        with self._lock:
            self._results[result.task_id] = result

    @property
    def results(self) -> list[TaskResult]:
        with self._lock:
            return list(self._results.values())

    def overall(self) -> Optional[dict]:
        """Mean metrics over the tasks that have metrics, or ``None`` when none has."""
        scored = [r.metrics for r in self.results if r.metrics is not None]
        return mean_metrics(scored) if scored else None

    def selection(self) -> Optional[dict]:
        """Per selector, the mean ``vote_1`` / ``vote_2`` over the tasks that have metrics (a task
        scored without a selection, e.g. one that failed, counts 0), or ``None`` when no task has
        a selection."""
        from ..answers.select import mean_selection

        return mean_selection([r.selection for r in self.results if r.metrics is not None])

    def totals(self) -> dict:
        rs = self.results
        return {
            "tasks": len(rs),
            "tasks_scored": sum(r.metrics is not None for r in rs),
            "tasks_failed": sum(r.error is not None for r in rs),
            "train_seconds": sum(r.train_seconds for r in rs),
            "inference_seconds": sum(r.inference_seconds for r in rs),
            "steps": sum(r.steps for r in rs),
            "train_tokens": sum(r.train_tokens for r in rs),
            "generated_tokens": sum(r.generated_tokens for r in rs),
            "predictions": sum(sum(r.predictions) for r in rs),
        }

    def to_json(self) -> dict:
        return json_safe({
            "title": self.title,
            "meta": self.meta,
            "totals": self.totals(),
            "overall": self.overall(),
            "selection": self.selection(),
            "tasks": [asdict(r) for r in self.results],
        })

    def markdown(self) -> str:
        rs = self.results
        tot = self.totals()
        overall = self.overall()
        out = [f"# {self.title}", ""]
        for k, v in self.meta.items():
            out.append(f"- {k}: {v}")
        if self.meta:
            out.append("")
        out += ["| | |", "|---|---|"]
        out.append(f"| tasks | {tot['tasks']} ({tot['tasks_scored']} scored, {tot['tasks_failed']} failed) |")
        out.append(f"| train seconds | {tot['train_seconds']:.1f} |")
        out.append(f"| inference seconds | {tot['inference_seconds']:.1f} |")
        out.append(f"| optimizer steps | {tot['steps']} |")
        out.append(f"| trained tokens | {tot['train_tokens']} |")
        out.append(f"| generated tokens | {tot['generated_tokens']} |")
        out.append(f"| predictions | {tot['predictions']} |")
        out.append("")
        if overall is not None:
            out += ["## Metrics (mean over tasks)", "", "| " + " | ".join(METRICS) + " |",
                    "|" + "---:|" * len(METRICS), "| " + " | ".join(percent(overall[m]) for m in METRICS) + " |", ""]
        selection = self.selection()
        if selection is not None:
            chosen = self.meta.get("config", {}).get("select") if isinstance(self.meta.get("config"), dict) else None
            out += ["## Selection (every selector on the same candidates)", "", "| selector | vote_1 | vote_2 |",
                    "|---|---:|---:|"]
            for name, m in selection.items():
                label = f"{name} (submitted)" if name == chosen else name
                out.append(f"| {label} | {percent(m['vote_1'])} | {percent(m['vote_2'])} |")
            out.append("")
        shown = ("vote_2", "vote_1", "pass_n", "accuracy", "unanswered")
        head = ["task", "train s", "infer s", "steps", "tokens", "winning votes"]
        if overall is not None:
            head += list(shown)
        head.append("error")
        out += ["## Tasks", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
        for r in rs:
            votes = ", ".join(f"{v}/{n}" for v, n in zip(r.votes, r.predictions)) or "–"
            row = [r.task_id, f"{r.train_seconds:.1f}", f"{r.inference_seconds:.1f}", str(r.steps),
                   str(r.train_tokens), votes]
            if overall is not None:
                row += [percent(r.metrics[m]) if r.metrics is not None else "–" for m in shown]
            row.append(r.error or "")
            out.append("| " + " | ".join(_cell(x) for x in row) + " |")
        return "\n".join(out) + "\n"

    def png(self) -> bytes:
        """The plot as PNG bytes (matplotlib's Agg canvas; no global pyplot state is touched)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rs = self.results
        overall = self.overall()
        n = max(1, len(rs))
        width = min(16.0, 6.0 + 0.28 * n) + (3.5 if overall is not None else 0.0)
        fig = Figure(figsize=(width, 7.0), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        if overall is not None:
            gs = fig.add_gridspec(2, 2, width_ratios=[max(1.0, width - 3.5), 3.5])
            ax_t, ax_v, ax_m = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[:, 1])
        else:
            gs = fig.add_gridspec(2, 1)
            ax_t, ax_v, ax_m = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[1, 0]), None
        fig.suptitle(self.title)
        x = list(range(len(rs)))
        labels = [_plot_label(r.task_id) for r in rs]
        bar = {"width": 0.8} if len(rs) <= 60 else {"width": 1.0, "linewidth": 0}

        train = [r.train_seconds for r in rs]
        infer = [r.inference_seconds for r in rs]
        ax_t.bar(x, train, color="#4c72b0", label="train", **bar)
        ax_t.bar(x, infer, bottom=train, color="#dd8452", label="inference", **bar)
        top = max((a + b for a, b in zip(train, infer)), default=0.0) or 1.0
        failed = [i for i, r in enumerate(rs) if r.error]
        if failed:
            ax_t.scatter(failed, [0.02 * top] * len(failed), marker="x", color="black", zorder=3, label="failed")
        ax_t.set_ylabel("seconds")
        ax_t.set_title("time per task")
        ax_t.set_ylim(0, 1.25 * top)  # headroom so the legend never hides a bar
        ax_t.legend(loc="upper right", fontsize="small", ncols=3)

        colours, shares = [], []
        for r in rs:
            shares.append(r.share or 0.0)
            if r.metrics is None:
                colours.append("#4c72b0")
            else:
                colours.append("#55a868" if r.metrics["vote_2"] >= 1.0 else
                               "#c44e52" if r.metrics["vote_2"] <= 0.0 else "#ccb974")
        ax_v.bar(x, shares, color=colours, **bar)
        ax_v.set_ylim(0, 1.12)
        ax_v.set_ylabel("winning votes / predictions")
        ax_v.set_title("agreement of the winning grid" + (" (green: vote_2 right, red: wrong)" if overall else ""))
        if len(rs) <= 40:
            for i, r in enumerate(rs):
                if r.predictions:
                    ax_v.text(i, shares[i] + 0.01, f"{sum(r.votes)}/{sum(r.predictions)}", ha="center",
                              va="bottom", fontsize=7)
        for ax in (ax_t, ax_v):
            ax.set_xlim(-0.6, n - 0.4)
            if len(rs) <= 60:
                ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
            else:  # hundreds of ids are unreadable; the JSON and Markdown carry them
                ax.set_xticks([])
                ax.set_xlabel(f"{len(rs)} tasks, in run order")

        if ax_m is not None:
            vals = [overall[m] for m in METRICS]
            ax_m.barh(range(len(METRICS)), vals, color="#8172b3")
            ax_m.set_yticks(range(len(METRICS)), METRICS)
            ax_m.invert_yaxis()
            ax_m.set_xlim(0, 1.15)
            for i, v in enumerate(vals):
                ax_m.text(v + 0.01, i, f"{100 * v:.1f}%", va="center", fontsize=8)
            ax_m.set_title(f"overall ({sum(r.metrics is not None for r in rs)} tasks)")

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def write(self, out_dir: Union[str, Path], plot: bool = True) -> dict[str, Path]:
        """Write report.json, report.md and (``plot``: the slow part, about a second) report.png
        under ``out_dir``, each atomically.

        Returns ``{"json": path, "md": path}`` and ``"png": path`` when plotted.
        """
        out = Path(out_dir)
        paths = {"json": out / "report.json", "md": out / "report.md"}
        atomic_write(paths["json"], json.dumps(self.to_json(), indent=1, allow_nan=False))
        atomic_write(paths["md"], self.markdown())
        if plot:
            paths["png"] = out / "report.png"
            atomic_write(paths["png"], self.png())
        return paths
