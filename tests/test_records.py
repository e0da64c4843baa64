"""The task record, tasks/<name>.json: what one version writes, every version reads."""
import json

import pytest

from arcfast.run.records import TaskRun, read_task_record, read_task_records, write_task_record


def test_a_record_round_trips_and_other_versions_records_load(tmp_path):
    r = TaskRun("t1", steps=3, attempts=[[[[1, 2]], [[3]]]], votes=[2], fingerprint="abc", adapter_saved=True)
    write_task_record(tmp_path / "t1.json", r)
    assert read_task_record(tmp_path / "t1.json") == r
    # An earlier version's record: fields since added take their defaults, dropped ones are ignored.
    old = {"task_id": "t2", "steps": 1, "attempts": [], "rescore": [[0, 1]], "fingerprint": "f"}
    (tmp_path / "t2.json").write_text(json.dumps(old))
    got = read_task_record(tmp_path / "t2.json")
    assert got.task_id == "t2" and got.steps == 1 and got.adapter_saved is None and got.targets is None


def test_unreadable_records_are_named_and_skipped(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"steps": 1}))
    write_task_record(tmp_path / "c.json", TaskRun("c"))
    with pytest.raises(ValueError, match="b.json: not a task record"):
        read_task_record(tmp_path / "b.json")
    got = read_task_records(tmp_path)
    assert [p.name for p, _ in got] == ["a.json", "b.json", "c.json"]
    assert isinstance(got[0][1], ValueError) and isinstance(got[1][1], ValueError) and got[2][1] == TaskRun("c")


def test_a_run_an_earlier_version_wrote_resumes_with_nothing_run_again(tmp_path, monkeypatch):
    """tests/fixtures/run-210d515 was written by the version of 2026-12-05 (see its README): its
    three finished tasks are kept as they are, and the submission is theirs."""
    import shutil
    from pathlib import Path

    import arcfast.infer.generate
    from arcfast.cli import main
    from scripted import ScriptedGenerator

    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    fixture = Path(__file__).parent / "fixtures" / "run-210d515"
    out = tmp_path / "run"
    shutil.copytree(fixture, out)
    rc = main(["ttft", "--tasks", "arc1:eval[:3]", "--model", "tiny", "--budget", "60s", "--steps", "2",
               "--predictions", "2", "--save-adapters", "none", "--out", str(out), "--resume", "-q"])
    assert rc == 0
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    new = events[starts[-1]:]                                                 # this run's lines
    (resume,) = [e for e in new if e["event"] == "resume"]
    assert sorted(resume["kept"]) == ["00576224", "009d5c81", "00dbd492"] and not resume["changed"]
    assert "3 finished tasks kept, 0 to run" in resume["message"]
    assert not any(e["event"] in ("step", "predict") for e in new)
    assert json.loads((out / "submission.json").read_text()) == json.loads((fixture / "submission.json").read_text())
    for path in (fixture / "tasks").glob("*.json"):
        assert read_task_record(out / "tasks" / path.name) == read_task_record(path)
