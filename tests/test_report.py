import json
import math
import threading

import numpy as np
import pytest

import arcfast.files as files
from arcfast.answers.metrics import METRICS, score_test
from arcfast.run.report import RunReport, TaskResult
from arcfast.answers.vote import Prediction, vote

S = np.array([[1, 2], [3, 4]], np.uint8)
W = np.array([[0]], np.uint8)


def result(tid, preds, solution=S, **kw):
    cands = vote(preds)
    metrics = score_test(preds, solution) if solution is not None else None
    return TaskResult(tid, metrics=metrics, predictions=[len(preds)], votes=TaskResult.votes_from([cands]), **kw)


def sample_report():
    rep = RunReport("eval smoke", meta={"model": "tiny", "device": "cpu"})
    rep.add(result("right", [Prediction(S)] * 6 + [Prediction(W)] * 2, train_seconds=3.0,
                   inference_seconds=1.0, steps=10, train_tokens=5000, generated_tokens=80))
    rep.add(result("wrong", [Prediction(W)] * 3 + [Prediction(None)] * 5, train_seconds=2.0,
                   inference_seconds=1.5, steps=10, train_tokens=4000, generated_tokens=40))
    rep.add(TaskResult("broken", metrics=score_test([], S), predictions=[0], votes=[0],
                       train_seconds=0.5, error="a | b\ntraceback"))
    return rep


def test_overall_and_totals():
    rep = sample_report()
    ov = rep.overall()
    assert ov["vote_1"] == pytest.approx(1 / 3)
    assert ov["accuracy"] == pytest.approx((6 / 8 + 0 + 0) / 3)
    assert ov["unanswered"] == pytest.approx((0 + 5 / 8 + 1) / 3)
    tot = rep.totals()
    assert tot == {"tasks": 3, "tasks_scored": 3, "tasks_failed": 1, "train_seconds": 5.5,
                   "inference_seconds": 2.5, "steps": 20, "train_tokens": 9000, "generated_tokens": 120,
                   "predictions": 16}
    assert [r.share for r in rep.results] == [pytest.approx(6 / 8), pytest.approx(3 / 8), None]


def test_write_all_three_files(tmp_path):
    rep = sample_report()
    paths = rep.write(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["totals"]["tasks"] == 3
    assert data["overall"]["vote_2"] == pytest.approx(1 / 3)
    assert [t["task_id"] for t in data["tasks"]] == ["right", "wrong", "broken"]
    assert data["tasks"][0]["votes"] == [6] and data["tasks"][1]["votes"] == [3]
    assert data["tasks"][2]["error"].startswith("a | b")
    md = paths["md"].read_text()
    assert md.startswith("# eval smoke")
    assert "| " + " | ".join(METRICS) + " |" in md
    assert "| right | 3.0 | 1.0 | 10 | 5000 | 6/8 | 100.0% |" in md
    assert "| wrong | 2.0 | 1.5 | 10 | 4000 | 3/8 | 0.0% |" in md
    assert "a \\| b traceback" in md  # a pipe or newline in an error does not break the table
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_unknown_solutions_and_non_finite_values(tmp_path):
    rep = RunReport()
    rep.add(result("hidden", [Prediction(S)] * 3, solution=None, inference_seconds=0.2,
                   extra={"mean_logprob": -math.inf}))
    assert rep.overall() is None
    paths = rep.write(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["overall"] is None and data["tasks"][0]["metrics"] is None
    assert data["tasks"][0]["extra"]["mean_logprob"] is None
    md = paths["md"].read_text()
    assert "Metrics" not in md and "| hidden |" in md


def test_empty_and_many_tasks_render(tmp_path):
    RunReport().write(tmp_path / "empty")
    rep = RunReport("400 tasks")
    for i in range(400):
        rep.add(TaskResult(f"{i:08x}", metrics=None, predictions=[96], votes=[i % 97],
                           train_seconds=1 + i % 7, inference_seconds=0.5))
    assert rep.png()[:4] == b"\x89PNG"


def test_add_replaces_and_is_thread_safe():
    rep = RunReport()

    def add(k):
        for i in range(50):
            rep.add(TaskResult(f"t{k}-{i}", predictions=[1], votes=[1]))

    ts = [threading.Thread(target=add, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(rep.results) == 200
    rep.add(TaskResult("t0-0", steps=7))
    assert len(rep.results) == 200 and rep.results[0].steps == 7


def test_task_result_validation():
    with pytest.raises(ValueError, match="task x: 1 vote counts for 2 test inputs"):
        TaskResult("x", predictions=[4, 4], votes=[1])
    with pytest.raises(ValueError, match="task x: test 0: winning votes 5 outside 0..4"):
        TaskResult("x", predictions=[4], votes=[5])
    with pytest.raises(ValueError, match="metrics lack"):
        TaskResult("x", metrics={"accuracy": 1.0})


def test_failed_write_keeps_previous_report(tmp_path, monkeypatch):
    rep = sample_report()
    paths = rep.write(tmp_path)
    before = paths["json"].read_bytes()
    rep.add(TaskResult("late", predictions=[1], votes=[1]))

    def crash(src, dst):
        raise OSError("no space")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="no space"):
        rep.write(tmp_path)
    assert paths["json"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.png"]
