"""report.html and compare.html: Jinja2 templates (autoescaped) filled from
:class:`arcfast.run.html.view.RunView`s.

Each page is one self-contained file: its style and script are inlined, no font, script or image
is fetched. The page's data travels as JSON in ``<script type="application/json">`` blocks
(Jinja2's ``tojson``, which escapes ``<``, ``>``, ``&`` and ``'``, so no task-derived string can
close the block), one block per task, parsed and drawn only when the task is opened; the page's
script puts every string into the document as text, never as markup.
"""
from __future__ import annotations

import datetime
import logging
import math
import time
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import jinja2
from markupsafe import Markup

from ...answers.metrics import METRICS
from ...budget.clock import format_duration
from ...files import atomic_write
from ..report import json_safe, percent
from .view import PALETTE, STATUSES, RunView

_log = logging.getLogger("arcfast.run.html")
_ENV: Optional[jinja2.Environment] = None
# What writing report.html is expected to take, at most (measured: `arcfast bench -k report`).
HTML_SECONDS = 0.5
HTML_SECONDS_PER_TASK = 0.01


def _num(x, digits: int = 2) -> str:
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}f}"


def _duration(x) -> str:
    return "none" if not isinstance(x, (int, float)) else format_duration(x)


def environment() -> jinja2.Environment:
    """The templates' environment: every ``{{ }}`` is HTML-escaped."""
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(loader=jinja2.PackageLoader("arcfast.run.html", "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                 lstrip_blocks=True)
        env.filters.update(pct=percent, num=_num, duration=_duration)
        env.policies["json.dumps_kwargs"] = {"sort_keys": False, "separators": (",", ":"), "allow_nan": False}
        _ENV = env
    return _ENV


def _asset(name: str) -> Markup:
    """A file of the templates folder, inlined as it is (our own style and script, not data)."""
    return Markup(resources.files("arcfast.run.html").joinpath("templates", name).read_text(encoding="utf-8"))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_report(view: RunView) -> str:
    """The text of ``report.html`` for ``view``."""
    rep = view.report()
    rows = view.rows()
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    index = json_safe({"palette": PALETTE, "rows": rows, "timeline": view.timeline()})
    return environment().get_template("report.html").render(
        title=view.title, h=view.header(), written=_now(), problems=view.problems + [
            f"tasks/{name}: unreadable ({why})" for name, why in view.unreadable],
        overall=rep.overall(), selection=rep.selection(), totals=rep.totals(), metric_names=METRICS,
        timeline=index["timeline"], rows=rows, statuses=STATUSES, counts=counts, index=index,
        details=[json_safe(d) for d in view.details()],
        css=_asset("style.css"), js=_asset("grids.js") + Markup("\n") + _asset("report.js"))


def write_report_html(view: RunView, path: Optional[Union[str, Path]] = None) -> Path:
    """Write ``report.html`` (default: in the run directory) atomically; returns its path."""
    path = Path(path) if path is not None else view.root / "report.html"
    # A task id read from a file may hold a lone surrogate, which UTF-8 cannot carry: written escaped.
    atomic_write(path, render_report(view).encode("utf-8", "backslashreplace"))
    return path


def write_html_in_budget(out: Path, tasks, deadline, log) -> Optional[Path]:
    """A run's own report.html (``tasks``: the run's, for their grids), written when the budget
    (margin included) has what it is expected to take left, else skipped with a log line
    (``log``: the run's JSON-lines log). A failure is logged, never raised: the page is a view of
    results that are already on disk."""
    left = deadline.budget - deadline.elapsed()
    needed = HTML_SECONDS + HTML_SECONDS_PER_TASK * len(tasks)
    if left < needed:
        log(event="report_html_skipped", reason="deadline", left_s=round(left, 2), needed_s=round(needed, 2))
        return None
    try:
        t0 = time.perf_counter()
        path = write_report_html(RunView.read(out, tasks=tasks))
        log(event="report_html", seconds=round(time.perf_counter() - t0, 3))
        return path
    except Exception as e:
        _log.error("report.html not written: %s: %s", type(e).__name__, e)
        log(event="report_failed", page="report.html", error=f"{type(e).__name__}: {e}")
        return None


__all__ = ["environment", "render_report", "write_html_in_budget", "write_report_html"]
