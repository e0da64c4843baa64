"""report.html and the compare page in a real browser: headless Chromium (Debian's ``chromium``,
driven through Playwright with that executable). A task is clicked open and what the page drew
is counted against the run's own data: grids, cells, the right attempt marked, the cells where a
wrong attempt differs; the task id made of markup is shown as text and never runs; the page's
console stays free of errors. Skips, saying why, where no browser is installed (CI installs one:
.ci/run)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from arcfast.run.html import RunView
from arcfast.run.html.compare import compare_detail
from test_report_html import MARKUP, SOLVED, WRONG, _run

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if CHROMIUM is None:
    pytest.skip("no Chromium found (Debian: apt-get install chromium; .ci/run installs it as root)",
                allow_module_level=True)

# As the sandboxed, offline machines need: no sandbox (root), no GPU, no background connections.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _cells(code) -> int:
    h, w = code.split(":")[0].split("x")
    return int(h) * int(w)


def _drawn(detail) -> list:
    """The grid codes report.js draws for an opened task, in order."""
    out = [g for pair in detail["train"] for g in pair]
    for t in detail["tests"]:
        out += [g for g in (t["input"], t["output"]) if g]
        out += [a["grid"] for a in t["attempts"]]
        out += [a["grid"] for a in t["attempts"] if t["output"] and a["right"] is False]   # the differences
        out += [c["grid"] for c in t["candidates"]]
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    yield page
    context.close()


def _open(page, path):
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)


def test_report_in_chromium(tmp_path, monkeypatch, page):
    run = _run(tmp_path, monkeypatch, "run")
    view = RunView.read(run)
    _open(page, run / "report.html")
    rows = page.locator("#task-table tr.task")
    assert rows.count() == len(view.order) == 5
    # The id made of markup is a table cell's text; its onerror never ran.
    assert MARKUP in page.locator("#task-table td.id").all_inner_texts()
    assert page.evaluate("typeof window.pwned") == "undefined"
    # Nothing drawn before a task is opened.
    assert page.locator(".grid").count() == 0
    assert page.locator("svg.timeline rect").count() >= 4   # a phase or more per group

    i = view.order.index(SOLVED)
    rows.nth(i).click()
    detail = view.detail(SOLVED)
    want = _drawn(detail)
    assert page.locator(".detail-cell .grid").count() == len(want) == 2 * 2 + 2 + 1 + 1
    assert page.locator(".detail-cell .cell").count() == sum(_cells(g) for g in want)
    right = page.locator(".detail-cell figure.g.right figcaption")
    assert [t for t in right.all_inner_texts() if t.startswith("attempt")] == ["attempt 1 ✓ right · 3×4"]
    assert page.locator(".detail-cell svg.loss polyline").count() == 1
    page.screenshot(path=str(tmp_path / "report-solved.png"), full_page=True)

    rows.nth(i).click()   # closed again
    assert page.locator(".detail-cell").count() == 0
    rows.nth(view.order.index(WRONG)).click()
    test = view.detail(WRONG)["tests"][0]
    a = np.array(list(test["attempts"][0]["grid"].split(":")[1]))
    b = np.array(list(test["output"].split(":")[1]))
    assert page.locator(".detail-cell .cell.bad").count() == int((a != b).sum()) > 0
    assert page.locator(".detail-cell figure.g.wrong").count() == 1

    page.locator("#filters button[data-filter='error']").click()
    assert page.locator("#task-table tr.task:visible").count() == 1
    page.locator("#filters button[data-filter='all']").click()
    page.locator("#task-table th[data-key='seconds']").click()
    assert page.locator("#task-table tr.task:visible").count() == 5
    assert page.locator(".detail-cell").count() == 0   # sorting closed the open task
    page.locator("#task-table tr.task").first.focus()   # the keyboard opens a task too
    page.keyboard.press("Enter")
    assert page.locator(".detail-cell").count() == 1
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.problems == []


def test_compare_in_chromium(tmp_path, monkeypatch, page):
    a = _run(tmp_path, monkeypatch, "turn")
    b = _run(tmp_path, monkeypatch, "identity", rule=lambda x: np.ascontiguousarray(x))
    from arcfast.cli import main

    out = tmp_path / "compare.html"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    _open(page, out)
    assert page.locator("svg.scatter circle").count() == 3   # time per task: the three tasks both answered
    shown = page.locator("#task-table tr.task:visible")
    assert shown.count() == 2   # the tasks one run solved and the other did not
    ids = [t for t in shown.locator("td.id").all_inner_texts()]
    assert sorted(ids) == sorted([SOLVED, MARKUP])
    shown.nth(ids.index(SOLVED)).click()
    d = compare_detail([RunView.read(a), RunView.read(b)], SOLVED)
    (test,) = d["tests"]
    # Each run's attempts, a wrong one with the cells where it differs marked.
    grids = [test["input"], test["output"]] + [x["grid"] for r in test["runs"] for x in r["attempts"]]
    assert page.locator(".detail-cell .grid").count() == len(grids)
    assert page.locator(".detail-cell .cell").count() == sum(_cells(g) for g in grids)
    assert page.locator(".detail-cell figure.g.right").count() == 1
    assert page.locator(".detail-cell .cell.bad").count() > 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    assert page.problems == []
