"""``arcfast report RUN`` and ``arcfast compare RUN_A RUN_B [...]``: the pages of finished (or
interrupted) run directories, this version's or an earlier one's."""
from __future__ import annotations

from pathlib import Path

from .args import _add_verbose


def add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild a run directory's report.html (and report.json/md/png), scoring it if asked",
        description="Reads a run directory (tasks/*.json, log.jsonl, run.json and report.json, whichever "
                    "exist: an interrupted run too) and writes its report.html, report.json, report.md and "
                    "report.png again. The tasks' grids are loaded from the run's task source, or --tasks.")
    p.add_argument("run", metavar="RUN", help="the run directory (the --out of arcfast ttft or eval)")
    p.add_argument("--solutions", default=None, metavar="FILE",
                   help="score the run against these solutions (a Kaggle *_solutions.json): a run made "
                        "without them, e.g. on Kaggle, scored afterwards on the public evaluation set; kept "
                        "in report.json, so a later `arcfast report RUN` scores it the same way")
    p.add_argument("--tasks", default=None, metavar="SOURCE",
                   help="where the run's tasks are now, when their source has moved (default: the source "
                        "the run was given)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="leave report.png as it is")
    _add_verbose(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..run.html import RunView, write_report_html

    view = RunView.read(args.run, task_source=args.tasks, solutions=args.solutions)
    report = view.report()
    paths = report.write(view.root, plot=args.plot)
    paths["html"] = write_report_html(view)
    for p in view.problems:
        print(f"note: {p}")
    rows = view.rows()
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{view.root}: {len(rows)} tasks (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    overall = report.overall()
    if overall is not None:
        print("  " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in overall.items()))
    for kind in ("html", "md", "json", "png"):
        if kind in paths:
            print(f"  {kind:4s} {paths[kind]}")
    return 0


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="runs side by side: metrics, tasks solved by one and not another, time per task",
        description="Prints a table of the runs' metrics and writes one HTML page of them side by side: "
                    "each run's metrics and selectors, the tasks one run solved and another did not (every "
                    "run's attempts drawn beside the right output), and each task's seconds in each run.")
    p.add_argument("runs", metavar="RUN", nargs="+", help="two run directories or more")
    p.add_argument("--out", default="compare.html", metavar="FILE", help="where to write the page")
    p.add_argument("--solutions", default=None, metavar="FILE",
                   help="score every run against these solutions (see arcfast report --solutions)")
    _add_verbose(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from ..run.html import RunView
    from ..run.html.compare import compare_table, write_compare_html

    if len(args.runs) < 2:
        raise ValueError(f"compare needs two runs or more, got {len(args.runs)}")
    out = Path(args.out)
    if out.is_dir():
        out = out / "compare.html"
    views = [RunView.read(r, solutions=args.solutions) for r in args.runs]
    for v in views:
        for p in v.problems:
            print(f"note: {v.root}: {p}")
    print(compare_table(views))
    print(f"page: {write_compare_html(views, out)}")
    return 0


__all__ = ["add_compare_parser", "add_report_parser", "cmd_compare", "cmd_report"]
