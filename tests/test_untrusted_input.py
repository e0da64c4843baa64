"""A task file is untrusted input: no task id can make a run write outside --out or damage its
results, every id of the input is in the submission, and bad tasks never take the good ones down."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from arcfast.budget.clock import Deadline
from arcfast.arc.parse import TaskLoadError
from arcfast.arc.loading import load_tasks, skipped_tasks
from arcfast.run.outdir import MAX_NAME, OutDir, task_filename, task_id_from_filename
from arcfast.run.config import TTFTConfig
from arcfast.run.ttft import TTFTRun

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = ["../../../x", "/abs/x", "x/../../submission.json", "zz/../../submission", "x/../../tasks",
           ".", "..", "adapters", "a\x00b", "y" * 300, "$\\frac$", "line\nbreak", "é\ud800", ""]


def _cfg(out, tasks, **kw):
    base = dict(tasks=str(tasks), model="tiny", budget=120.0, out=str(out), steps=1, tasks_per_group=4, predictions=1,
                max_new_tokens=4, row_len=4096, max_len=4096, progress=False)
    return TTFTConfig(**{**base, **kw})


def _challenges(path, tasks: dict) -> str:
    """A Kaggle challenges file of ``{id: task JSON}`` (test outputs dropped)."""
    data = {}
    for tid, t in tasks.items():
        t = json.loads(json.dumps(t))
        for p in t.get("test", []) if isinstance(t, dict) else []:
            if isinstance(p, dict):
                p.pop("output", None)
        data[tid] = t
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def good():
    return [t.to_json() for t in load_tasks("arc1:eval[:3]")]


def _files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


# -- names ----------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_task_filename_is_one_safe_component_and_reversible(task_id):
    name = task_filename(task_id)
    assert 1 <= len(name) <= MAX_NAME
    assert not name.startswith(".") and name not in (".", "..")
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%~-")
    if "~" in name:   # a digest name: the id is read from inside the file
        assert len(task_id.encode("utf-8", "surrogatepass")) > 50
        assert task_id_from_filename(name) is None
    else:
        assert task_id_from_filename(name) == task_id


def test_task_filename_is_unique_and_keeps_ordinary_ids():
    ids = HOSTILE + ["00576224", "re_arc.3", "%41", "A", "%2E", "y" * 299, "y" * 301, "Y" * 300, ".x", "%"]
    names = [task_filename(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert [task_filename(i) for i in ("00576224", "re_arc.3", "seed-12")] == ["00576224", "re_arc.3", "seed-12"]


def test_outdir_refuses_a_path_outside(tmp_path):
    out = OutDir(tmp_path / "out")
    for tid in HOSTILE:
        for p in (out.task_file(tid), out.adapter_dir(tid)):
            assert p.parent in (out.tasks_dir, out.adapters_dir)
    (tmp_path / "out" / "tasks").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "out" / "tasks" / "evil.json")
    with pytest.raises(ValueError, match="outside the output directory"):
        out.task_file("evil")


# -- a run on hostile input -------------------------------------------------------------------------

def test_hostile_ids_never_write_outside_out_and_all_are_answered(tmp_path, good):
    where = tmp_path / "in"
    where.mkdir()
    tasks = {tid: good[i % 3] for i, tid in enumerate(HOSTILE)}
    tasks["plain"] = good[0]
    src = _challenges(where / "hostile_challenges.json", tasks)
    out = tmp_path / "deep" / "er" / "out"
    summary = TTFTRun(_cfg(out, src)).run()
    # Nothing was written anywhere but under out (the input file is the only other file).
    assert [f for f in _files(tmp_path) if not f.startswith(str(out) + os.sep)] == [src]
    assert summary["failed"] == [] and summary["trained"] == len(tasks)
    sub = json.loads((out / "submission.json").read_text())
    assert set(sub) == set(tasks)
    for tid in tasks:
        assert len(sub[tid]) == len(tasks[tid]["test"])
        assert np.asarray(sub[tid][0]["attempt_1"]).ndim == 2
    # One result file and one adapter per id, named by its encoding, the id itself inside.
    results = {json.loads(p.read_text())["task_id"]: p.name for p in (out / "tasks").iterdir()}
    assert results == {tid: task_filename(tid) + ".json" for tid in tasks}
    assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(task_filename(t) for t in tasks)
    from safetensors import safe_open

    for tid in tasks:
        with safe_open(str(out / "adapters" / task_filename(tid) / "adapter_model.safetensors"), "pt") as f:
            # A character with no UTF-8 form (the lone surrogate) is kept as its escape.
            assert f.metadata()["task"] == tid.encode("utf-8", "backslashreplace").decode()
    assert (out / "report.md").is_file() and (out / "report.png").is_file()


def test_tasks_the_loader_skips_keep_fallback_entries(tmp_path, good):
    bad_grid = {"train": [{"input": [[10]], "output": [[1]]}, good[0]["train"][0]],
                "test": [{"input": [[1, 2], [3, 4]]}, {"input": [[1, 2], [3]]}]}
    src = _challenges(tmp_path / "x_challenges.json", {
        "good": good[1], "bad_grid": bad_grid, "no_test": {"train": good[0]["train"]},
        "not_a_task": [1, 2], "no_train_pairs": {"train": [], "test": good[2]["test"]}})
    problems: list = []
    loaded = load_tasks(src, on_error="skip", problems=problems)
    stubs = skipped_tasks(problems, loaded)
    assert [t.id for t in loaded] == ["good"]
    assert sorted(stubs) == ["bad_grid", "no_test", "no_train_pairs", "not_a_task"]
    assert [None if g is None else g.tolist() for g in stubs["bad_grid"]] == [[[1, 2], [3, 4]], None]
    assert stubs["no_test"] is None and stubs["not_a_task"] is None and len(stubs["no_train_pairs"]) == 1

    out = tmp_path / "out"
    summary = TTFTRun(_cfg(out, src)).run()
    sub = json.loads((out / "submission.json").read_text())
    assert set(sub) == {"good", "bad_grid", "no_test", "not_a_task", "no_train_pairs"}
    assert sub["bad_grid"] == [{"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[1, 2], [3, 4]]},
                               {"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert sub["no_test"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    assert sub["no_train_pairs"][0]["attempt_1"] == good[2]["test"][0]["input"]
    assert summary["tasks"] == 5 and summary["unloadable"] == sorted(stubs) and summary["trained"] == 1


def test_deeply_nested_json_is_a_bad_file_not_a_crash(tmp_path, good):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "deep.json").write_text("[" * 100_000)
    (d / "fine.json").write_text(json.dumps(good[0]))
    with pytest.raises(TaskLoadError, match="nested too deeply") as e:
        load_tasks(str(d / "deep.json"))
    assert e.value.file.endswith("deep.json")
    problems: list = []
    assert [t.id for t in load_tasks(str(d), on_error="skip", problems=problems)] == ["fine"]
    assert len(problems) == 1 and "deep.json" in str(problems[0]) and "nested too deeply" in str(problems[0])
    kaggle = tmp_path / "k_challenges.json"
    kaggle.write_text('{"a": ' + "[" * 100_000)
    with pytest.raises(TaskLoadError, match="nested too deeply"):
        load_tasks(str(kaggle))
    out = tmp_path / "out"
    summary = TTFTRun(_cfg(out, d)).run()
    # The unreadable file's task (its id is its file name) still gets a fallback answer.
    sub = json.loads((out / "submission.json").read_text())
    assert summary["trained"] == 1 and summary["unloadable"] == ["deep"] and set(sub) == {"deep", "fine"}
    assert len(sub["deep"]) == 1 and set(sub["deep"][0]) == {"attempt_1", "attempt_2"}


def test_a_task_with_one_train_pair_does_not_hold_back_its_group(tmp_path, good):
    one = {"train": good[0]["train"][:1], "test": good[0]["test"]}
    src = _challenges(tmp_path / "x_challenges.json", {"a": good[0], "one_pair": one, "b": good[1], "c": good[2]})
    out = tmp_path / "out"
    summary = TTFTRun(_cfg(out, src, steps=2)).run()
    assert summary["failed"] == [] and summary["trained"] == 3
    recs = {r["task_id"]: r for r in (json.loads(p.read_text()) for p in (out / "tasks").iterdir())}
    assert {k: r["steps"] for k, r in recs.items()} == {"a": 2, "b": 2, "c": 2, "one_pair": 0}
    assert all(r["generated_tokens"] > 0 and r["error"] is None for r in recs.values())   # all four predicted
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    alone = [e for e in events if e["event"] == "no_training"]
    assert alone == [dict(alone[0], tasks=["one_pair"])] and "fewer than 2 train pairs" in alone[0]["reason"]


def test_resume_keeps_what_still_matches_and_redoes_what_changed(tmp_path, good):
    src = tmp_path / "x_challenges.json"
    _challenges(src, {"a": good[0], "b": good[1], "c": good[2]})
    out = tmp_path / "out"
    TTFTRun(_cfg(out, src)).run()
    before = {p.name: p.read_bytes() for p in (out / "tasks").iterdir()}
    changed = json.loads(json.dumps(good[1]))
    changed["test"] = changed["test"] + [{"input": [[1, 2], [3, 4]]}]     # one more test input
    _challenges(src, {"a": good[0], "b": changed, "d": good[2]})          # c gone, d new
    summary = TTFTRun(_cfg(out, src, resume=True)).run()
    assert summary["failed"] == []
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    resume = [e for e in events if e["event"] == "resume"][-1]
    assert resume["kept"] == ["a"] and resume["changed"] == ["b"] and resume["gone"] == ["c"]
    trained = [e for e in events if e["event"] == "step"]
    assert trained, "the changed and the new task were trained"
    after = {p.name: p.read_bytes() for p in (out / "tasks").iterdir()}
    assert after["a.json"] == before["a.json"] and after["c.json"] == before["c.json"]
    assert after["b.json"] != before["b.json"] and "d.json" in after
    sub = json.loads((out / "submission.json").read_text())
    assert set(sub) == {"a", "b", "d"} and len(sub["b"]) == len(changed["test"])


def test_a_run_removes_the_temporaries_a_killed_run_left(tmp_path, good):
    src = _challenges(tmp_path / "x_challenges.json", {"a": good[0]})
    out = tmp_path / "out"
    (out / "tasks").mkdir(parents=True)
    (out / "adapters" / ".a.k2j3").mkdir(parents=True)
    stale = [out / ".submission.json.abc123.tmp", out / "tasks" / ".a.json.x1.tmp", out / "adapters" / ".a.k2j3"]
    for p in stale[:2]:
        p.write_text("{")
    old = time.time() - 3600
    for p in stale:
        os.utime(p, (old, old))
    TTFTRun(_cfg(out, src)).run()
    assert not any(p.exists() for p in stale)
    assert not [f for f in _files(out) if os.path.basename(f).startswith(".")]


def test_the_run_time_counts_from_the_deadline_start(tmp_path, good):
    src = _challenges(tmp_path / "x_challenges.json", {"a": good[0]})
    # The CLI starts the deadline when the process starts: imports and loading are in the run time.
    deadline = Deadline(120.0, start=time.monotonic() - 7.0)
    summary = TTFTRun(_cfg(tmp_path / "out", src), deadline=deadline).run()
    assert summary["seconds"] >= 7.0
