"""report.html, `arcfast report` and `arcfast compare`, on runs whose answers are known: the scripted
generator (tests/scripted.py) answers the half turn of every test input, so a task whose output is
that half turn is solved, one whose output is something else is answered wrong, a task whose group
raises fails, a task that cannot be loaded is skipped, and a task id made of markup must be shown
as text."""
from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import arcfast.infer.generate
from arcfast.arc.loading import load_tasks
from arcfast.cli import main
from arcfast.run.answer import GroupInference
from arcfast.run.html import RunView, render_report
from arcfast.run.html.compare import compare_rows, compare_table, render_compare
from arcfast.run.html.view import grid_code
from arcfast.run.records import read_task_records, score_record
from scripted import ScriptedGenerator, turn

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures"
MARKUP = "</script><img src=x onerror=window.pwned=1>&amp;'\""
SOLVED, WRONG, FAILS, BROKEN = "solved-1", "wrong-1", "fails-1", "broken-1"


def _grid(seed, h, w):
    return np.random.default_rng(seed).integers(0, 10, (h, w)).tolist()


def _task(seed, rule, shape=(3, 4)):
    pairs = []
    for k in range(3):
        g = np.asarray(_grid(seed * 10 + k, *shape))
        pairs.append({"input": g.tolist(), "output": rule(g).tolist()})
    return pairs[:2], pairs[2:]


def write_tasks(folder: Path):
    """A Kaggle challenges file and its solutions: SOLVED and MARKUP follow the half turn (the
    scripted answer), WRONG's output is its input flipped left to right (same shape: a wrong
    answer with a cell-by-cell difference), FAILS is made to fail, BROKEN holds colour 12."""
    challenges, solutions = {}, {}
    for seed, (tid, rule) in enumerate([(SOLVED, turn), (WRONG, np.fliplr), (MARKUP, turn), (FAILS, turn)]):
        train, test = _task(seed + 1, lambda g: np.ascontiguousarray(turn(g)))
        if rule is np.fliplr:
            test = [{"input": test[0]["input"], "output": np.fliplr(np.asarray(test[0]["input"])).tolist()}]
        challenges[tid] = {"train": train, "test": [{"input": q["input"]} for q in test]}
        solutions[tid] = [q["output"] for q in test]
    challenges[BROKEN] = {"train": [{"input": [[12]], "output": [[1]]}], "test": [{"input": [[1]]}]}
    solutions[BROKEN] = [[[1]]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x_challenges.json").write_text(json.dumps(challenges))
    (folder / "x_solutions.json").write_text(json.dumps(solutions))
    return folder / "x_challenges.json", folder / "x_solutions.json"


def _tasks(run_dir) -> dict:
    return {t.id: t for t in load_tasks(str(run_dir.parent / "tasks" / "x_challenges.json"), on_error="skip")}


ARGS = ["--model", "tiny", "--budget", "60s", "--steps", "2", "--predictions", "3", "--tasks-per-group", "1",
        "--save-adapters", "none", "--row-len", "4096", "--max-len", "4096", "-q"]


def _run(tmp_path, monkeypatch, name, solutions=True, rule=turn):
    """A scripted `arcfast ttft` run of write_tasks' tasks, FAILS failing; returns its directory."""
    monkeypatch.setattr(arcfast.infer.generate, "Generator", partial(ScriptedGenerator, rule=rule))
    real = GroupInference.run

    def failing(self, backend, group, *a, **k):
        if any(t.id == FAILS for t in group):
            raise RuntimeError("the <b>group</b> failed on purpose")
        return real(self, backend, group, *a, **k)

    monkeypatch.setattr(GroupInference, "run", failing)
    challenges, sol = write_tasks(tmp_path / "tasks")
    out = tmp_path / name
    args = ["ttft", "--tasks", str(challenges), "--out", str(out), *ARGS]
    if solutions:
        args += ["--solutions", str(sol)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        return _run(tmp_path_factory.mktemp("html"), mp, "run")
    finally:
        mp.undo()   # the scripted generator and the failing group, for this run only


def test_rows_say_what_happened_to_each_task(run_dir):
    view = RunView.read(run_dir)
    rows = {r["id"]: r for r in view.rows()}
    assert {k: r["status"] for k, r in rows.items()} == {
        SOLVED: "solved", WRONG: "unsolved", MARKUP: "solved", FAILS: "error", BROKEN: "skipped"}
    assert "failed on purpose" in rows[FAILS]["error"]
    assert rows[SOLVED]["vote_2"] == 1.0 and rows[WRONG]["vote_2"] == 0.0 and rows[SOLVED]["pass_n"] == 1.0
    assert rows[SOLVED]["steps"] == 2 and rows[SOLVED]["votes"] == "3/3"
    assert rows[BROKEN]["steps"] is None


def test_a_task_detail_holds_its_grids_candidates_and_loss(run_dir):
    view = RunView.read(run_dir)
    task = _tasks(run_dir)[SOLVED]
    d = view.detail(SOLVED)
    assert d["train"] == [[grid_code(p.input), grid_code(p.output)] for p in task.train]
    (test,) = d["tests"]
    assert test["input"] == grid_code(task.test[0].input) and test["output"] == grid_code(task.test[0].output)
    assert test["attempts"] == [{"grid": grid_code(turn(task.test[0].input)), "right": True}]
    (cand,) = test["candidates"]
    assert cand["count"] == 3 and cand["right"] is True and cand["submitted"] == 1
    assert cand["rank"] == {"vote": 0} and sum(cand["found_by"].values()) == 3
    # The loss curve is this task's own losses, as its group's step events logged them.
    events = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    group = next(e["group"] for e in events if e["event"] == "group_start" and e["tasks"] == [SOLVED])
    steps = [e for e in events if e["event"] == "step" and e["group"] == group]
    assert len(steps) == 2 and d["loss_kind"] == "task"
    assert d["loss"] == [[e["step"], e["losses"][0]] for e in steps]

    wrong = view.detail(WRONG)["tests"][0]
    assert wrong["attempts"][0]["right"] is False and wrong["candidates"][0]["right"] is False
    a, b = wrong["attempts"][0]["grid"], wrong["output"]
    assert a.split(":")[0] == b.split(":")[0] and a != b   # same shape: the page draws the difference
    assert view.detail(FAILS)["error"].startswith("failed")
    assert view.detail(BROKEN)["tests"] == [] and not view.detail(BROKEN)["grids_known"]


def test_timeline_has_every_group_inside_the_budget(run_dir):
    tl = RunView.read(run_dir).timeline()
    assert tl["budget"] == 60.0 and tl["deadline"] < 60.0 and not tl["reconstructed"]
    assert sorted(t for g in tl["groups"] for t in g["tasks"]) == sorted([SOLVED, WRONG, MARKUP, FAILS])
    for g in tl["groups"]:
        names = [p[0] for p in g["phases"]]
        assert names[-1] == "write" and g["start"] <= g["end"] <= tl["seconds"]
        for _, a, b in g["phases"]:
            assert g["start"] - 1e-3 <= a <= b <= g["end"] + 1e-3
        assert g["failed"] == (g["tasks"] == [FAILS])
        if not g["failed"]:
            assert names[:2] == ["train", "predict"]


def test_page_shows_markup_as_text(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "<img" not in html and "window.pwned" in html       # present, but never as a tag
    assert "&lt;/script&gt;&lt;img src=x onerror=window.pwned=1&gt;&amp;amp;" in html   # the table cell
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', html, re.S)
    assert [b[0] for b in blocks] == ["run-data"] + [f"task-{i}" for i in range(5)]
    index = json.loads(blocks[0][1])
    assert MARKUP in [r["id"] for r in index["rows"]]
    assert json.loads(blocks[1 + [r["id"] for r in index["rows"]].index(MARKUP)][1])["id"] == MARKUP
    assert "the &lt;b&gt;group&lt;/b&gt; failed" in html
    # Self-contained: nothing is fetched.
    assert not re.search(r'(src|href)="(https?:)?//', html) and "@import" not in html


def test_the_live_page_equals_arcfast_report(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy), "--no-plot"]) == 0
    strip = lambda s: re.sub(r"<tr><th>written</th><td>[^<]*</td></tr>", "", s)   # noqa: E731
    assert strip((copy / "report.html").read_text()) == strip((run_dir / "report.html").read_text())
    # report.json too, and its metrics are run.json's: the failed task counts as unanswered.
    live, rebuilt = (json.loads((d / "report.json").read_text()) for d in (run_dir, copy))
    assert rebuilt["overall"] == live["overall"] == json.loads((run_dir / "run.json").read_text())["metrics"]
    assert rebuilt["totals"] == live["totals"] and live["totals"]["tasks_scored"] == 4


def test_score_record_gives_what_the_run_wrote(run_dir):
    tasks = _tasks(run_dir)
    n = 0
    for _, rec in read_task_records(run_dir / "tasks"):
        metrics, selection = score_record(tasks[rec.task_id], rec)
        assert metrics == pytest.approx(rec.metrics) and selection == rec.selection
        n += 1
    assert n == 3


def test_report_solutions_scores_a_run_made_without(tmp_path, monkeypatch, run_dir, capsys):
    challenges, sol = write_tasks(tmp_path / "tasks")
    out = tmp_path / "blind"
    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    real = GroupInference.run
    monkeypatch.setattr(GroupInference, "run", lambda self, b, group, *a, **k: (
        (_ for _ in ()).throw(RuntimeError("x")) if group[0].id == FAILS else real(self, b, group, *a, **k)))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    shutil.copy(challenges, hidden / "x_challenges.json")   # no solutions beside it
    assert main(["ttft", "--tasks", str(hidden / "x_challenges.json"), "--out", str(out), *ARGS]) == 0
    assert json.loads((out / "report.json").read_text())["overall"] is None
    assert main(["report", str(out), "--solutions", str(sol), "--no-plot"]) == 0
    scored = json.loads((out / "report.json").read_text())
    want = json.loads((run_dir / "report.json").read_text())
    assert scored["overall"] == pytest.approx(want["overall"]) and scored["selection"] == want["selection"]
    assert scored["meta"]["scored_with"] == str(sol)
    assert "solved" in (out / "report.html").read_text()
    # Kept: a later report without --solutions scores it the same way.
    assert main(["report", str(out), "--no-plot"]) == 0
    assert json.loads((out / "report.json").read_text())["overall"] == pytest.approx(want["overall"])


def test_compare_finds_the_tasks_one_run_solved(run_dir, tmp_path, monkeypatch, capsys):
    other = _run(tmp_path, monkeypatch, "identity", rule=lambda x: np.ascontiguousarray(x))
    views = [RunView.read(run_dir), RunView.read(other)]
    rows = {r["id"]: r for r in compare_rows(views)}
    assert {k for k, r in rows.items() if r["differs"]} == {SOLVED, MARKUP}
    assert rows[SOLVED]["solved_by"] == [0] and rows[SOLVED]["status"] == ["solved", "unsolved"]
    text = compare_table(views)
    assert re.search(r"solved\s+2\s+0", text) and "solved by run and not by every other run: 2" in text
    page = tmp_path / "cmp.html"
    assert main(["compare", str(run_dir), str(other), "--out", str(page)]) == 0
    html = page.read_text()
    assert "<img" not in html and "vs identity" in html
    assert "page: " in capsys.readouterr().out
    assert render_compare(views).count('type="application/json"') == 1 + len(rows)


@pytest.mark.parametrize("fixture", ["run-210d515", "run-e2a2dba"])
def test_runs_of_earlier_versions(fixture, tmp_path, capsys):
    run = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, run)
    assert main(["report", str(run), "--no-plot"]) == 0
    view = RunView.read(run)
    tl = view.timeline()
    assert tl["reconstructed"] and len(tl["groups"]) >= 1 and tl["groups"][0]["phases"][0][0] == "train"
    detail = view.detail(view.order[0])
    assert detail["train"] and detail["tests"][0]["attempts"] and detail["loss_kind"] == "group"
    assert (run / "report.html").stat().st_size > 0
    other = tmp_path / "other"
    shutil.copytree(FIXTURES / fixture, other)
    assert main(["compare", str(run), str(other), "--out", str(tmp_path / "c.html")]) == 0


def test_an_interrupted_run_still_gets_a_page(run_dir, tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(run_dir, run)
    for name in ("run.json", "report.json", "report.md", "report.html"):
        (run / name).unlink()
    view = RunView.read(run)   # the config is read from the log's start event
    assert view.header()["interrupted"] and view.config["tasks"].endswith("x_challenges.json")
    assert {r["id"]: r["status"] for r in view.rows()}[SOLVED] == "solved"
    assert "interrupted" in render_report(view)


def test_the_page_is_skipped_when_no_time_is_left(tmp_path, monkeypatch):
    import arcfast.run.html.page as page

    monkeypatch.setattr(page, "HTML_SECONDS", 1e6)
    out = _run(tmp_path, monkeypatch, "late")
    assert not (out / "report.html").exists() and (out / "report.json").exists()
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "report_html_skipped" for e in events)


def test_not_a_run_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2


def test_ids_no_file_system_or_encoding_can_carry(tmp_path):
    """Ids with a lone surrogate, control characters, a path or nothing at all: every record is
    read back under its own id and the page is written, each id shown escaped or as text."""
    from arcfast.run.outdir import OutDir
    from arcfast.run.records import TaskRun, write_task_record

    ids = ["a\udc80b", "tab\there", "../../etc/passwd", "", "x" * 300]
    paths = OutDir(tmp_path)
    for tid in ids:
        write_task_record(paths.task_file(tid), TaskRun(tid, attempts=[[[[1, 2]]]], votes=[1], predictions=[1],
                                                        candidates=[[{"grid": [[1, 2]], "count": 1}]]))
    view = RunView.read(tmp_path)
    assert sorted(view.records) == sorted(ids) and {r["status"] for r in view.rows()} == {"answered"}
    from arcfast.run.html import write_report_html

    html = write_report_html(view).read_bytes().decode("utf-8")
    assert "a\\udc80b" in html and "../../etc/passwd" in html
    assert not (tmp_path.parent / "etc").exists()


def test_a_resumed_run(run_dir, tmp_path, monkeypatch):
    """--resume appends to the log: the time line is the latest start's, every task keeps its
    status and its loss curve from the start that trained it."""
    run = tmp_path / "again"
    shutil.copytree(run_dir, run)
    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    args = ["ttft", "--tasks", str(run_dir.parent / "tasks" / "x_challenges.json"), "--solutions",
            str(run_dir.parent / "tasks" / "x_solutions.json"), "--out", str(run), "--resume", *ARGS]
    assert main(args) == 0
    view = RunView.read(run)
    tl = view.timeline()
    assert tl["starts"] == 2 and [g["tasks"] for g in tl["groups"]] == [[FAILS]]   # only the failed task ran again
    assert {r["id"]: r["status"] for r in view.rows()} == {
        SOLVED: "solved", WRONG: "unsolved", MARKUP: "solved", FAILS: "solved", BROKEN: "skipped"}
    assert view.detail(SOLVED)["loss_kind"] == "task" and len(view.detail(SOLVED)["loss"]) == 2
    assert "The run was resumed (2 starts)" in (run / "report.html").read_text()


def test_timeline_phases_of_rescoring_and_verification(tmp_path, monkeypatch):
    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    challenges, sol = write_tasks(tmp_path / "tasks")
    out = tmp_path / "rv"
    assert main(["ttft", "--tasks", str(challenges), "--solutions", str(sol), "--out", str(out), *ARGS,
                 "--rescore", "2", "--verify", "2", "--select", "poe"]) == 0
    view = RunView.read(out)
    for g in view.timeline()["groups"]:
        assert [p[0] for p in g["phases"]] == ["train", "predict", "rescore", "verify", "write"]
    cand = view.detail(SOLVED)["tests"][0]["candidates"][0]
    assert set(cand["rank"]) == {"vote", "poe", "nvarc", "verify", "vote+verify"}
    html = (out / "report.html").read_text()
    assert "poe (submitted)" in html
