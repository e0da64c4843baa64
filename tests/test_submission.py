import json
import os
import threading

import numpy as np
import pytest

import arcfast.files as files
from arcfast.files import atomic_write
from arcfast.answers.submission import SubmissionError, SubmissionWriter, make_attempts, validate_submission
from arcfast.arc.task import Pair, Task
from arcfast.answers.vote import Prediction, vote


def make_tasks(n, tests=(1, 2)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        k = tests[i % len(tests)]
        test = [Pair(rng.integers(0, 10, size=(2 + j, 3), dtype=np.uint8)) for j in range(k)]
        out.append(Task(f"task{i:02d}", train=[], test=test, source="mem.json"))
    return out


def answers(task, colour):
    return [[np.full((1, 2), colour, np.uint8), np.full((2, 1), colour, np.uint8)] for _ in task.test]


def test_fresh_writer_holds_fallback_for_everything(tmp_path):
    tasks = make_tasks(4)
    path = tmp_path / "submission.json"
    w = SubmissionWriter(path, tasks)
    sub = validate_submission(path, tasks)
    assert list(sub) == [t.id for t in tasks]
    for t in tasks:
        assert len(sub[t.id]) == len(t.test)
        for i, e in enumerate(sub[t.id]):
            assert e["attempt_1"] == e["attempt_2"] == t.test[i].input.tolist()
    assert w.done == frozenset()
    z = SubmissionWriter(tmp_path / "z.json", tasks, fallback="zero")
    assert all(e == {"attempt_1": [[0]], "attempt_2": [[0]]} for v in z.snapshot().values() for e in v)
    with pytest.raises(ValueError, match="unknown fallback"):
        SubmissionWriter(tmp_path / "q.json", tasks, fallback="ones")


def test_run_cut_short_leaves_complete_valid_file(tmp_path):
    tasks = make_tasks(10)
    path = tmp_path / "submission.json"
    w = SubmissionWriter(path, tasks)
    for t in tasks[:5]:
        w.update(t.id, answers(t, 7))
    del w  # the run stops here
    sub = validate_submission(path, tasks)
    for t in tasks[:5]:
        assert all(e == {"attempt_1": [[7, 7]], "attempt_2": [[7], [7]]} for e in sub[t.id])
    for t in tasks[5:]:
        assert [e["attempt_1"] for e in sub[t.id]] == [p.input.tolist() for p in t.test]


def test_task_whose_every_prediction_fails_gets_the_fallback(tmp_path):
    tasks = make_tasks(2)
    path = tmp_path / "submission.json"
    w = SubmissionWriter(path, tasks)
    t = tasks[1]  # two test inputs
    per_test = [vote([Prediction(None, status="ragged")] * 8) for _ in t.test]
    assert per_test == [[], []]
    w.update(t.id, [[c.grid for c in cands] for cands in per_test])
    sub = validate_submission(path, tasks)
    for i, e in enumerate(sub[t.id]):
        assert e["attempt_1"] == e["attempt_2"] == t.test[i].input.tolist()
    assert w.done == {t.id}


def test_one_candidate_second_attempt_is_fallback():
    fb = [[3, 3]]
    a = make_attempts([np.array([[1]], np.uint8)], fb)
    assert a == {"attempt_1": [[1]], "attempt_2": [[3, 3]]}
    assert make_attempts([[[1]], [[2]]], fb) == {"attempt_1": [[1]], "attempt_2": [[2]]}
    with pytest.raises(ValueError, match="3 answers, at most 2"):
        make_attempts([[[1]]] * 3, fb)


def test_failed_replace_keeps_old_file_intact(tmp_path, monkeypatch):
    tasks = make_tasks(3)
    path = tmp_path / "submission.json"
    w = SubmissionWriter(path, tasks)
    w.update(tasks[0].id, answers(tasks[0], 1))
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        w.update(tasks[1].id, answers(tasks[1], 2))
    assert path.read_bytes() == before
    validate_submission(path, tasks)
    assert os.listdir(tmp_path) == ["submission.json"]  # no temporary file left behind
    monkeypatch.undo()
    # the answers given during the failed write are not lost: the next write carries them
    w.update(tasks[2].id, answers(tasks[2], 3))
    sub = validate_submission(path, tasks)
    assert sub[tasks[1].id][0]["attempt_1"] == [[2, 2]] and sub[tasks[2].id][0]["attempt_1"] == [[3, 3]]


def test_failed_write_of_data_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write(path, '{"a": 1}')

    def crash(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write(path, '{"a": 2, "b": ' + "[0]" * 10)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_concurrent_updates_and_readers_always_see_valid_json(tmp_path):
    tasks = make_tasks(16)
    path = tmp_path / "submission.json"
    w = SubmissionWriter(path, tasks)
    stop = threading.Event()
    seen, errors = [0], []

    def reader():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
                seen[0] += 1
            except Exception as e:  # a torn read would show up here
                errors.append(e)

    def writer(ts, colour):
        for t in ts:
            w.update(t.id, answers(t, colour))

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(tasks[k::4], k + 1)) for k in range(4)]
    for x in ws:
        x.start()
    for x in ws:
        x.join()
    stop.set()
    r.join()
    assert not errors and seen[0] > 0
    sub = validate_submission(path, tasks)
    for k in range(4):
        for t in tasks[k::4]:
            assert sub[t.id][0]["attempt_1"] == [[k + 1, k + 1]]
    assert w.done == {t.id for t in tasks}


def test_update_errors_name_task_test_and_attempt(tmp_path):
    tasks = make_tasks(2)
    w = SubmissionWriter(tmp_path / "s.json", tasks)
    with pytest.raises(KeyError, match="nope"):
        w.update("nope", [[]])
    with pytest.raises(ValueError, match="task01: 1 answer lists for 2 test inputs"):
        w.update("task01", [[]])
    with pytest.raises(ValueError, match="task00: test 0: attempt_2: colour 12 at row 0, column 1"):
        w.update("task00", [[[[1]], [[1, 12]]]])
    with pytest.raises(ValueError, match="size limit"):
        w.update("task00", [[np.zeros((31, 1), np.uint8)]])
    with pytest.raises(ValueError, match="appears twice"):
        SubmissionWriter(tmp_path / "d.json", tasks + tasks[:1])


def write(path, obj):
    path.write_text(json.dumps(obj))


def test_validate_reports_every_problem_precisely(tmp_path):
    tasks = make_tasks(4)
    ok = {"attempt_1": [[1]], "attempt_2": [[2]]}
    path = tmp_path / "s.json"
    write(path, {
        "task00": [{"attempt_1": [[1, 2], [3]], "attempt_2": [[1]]}],
        "task01": [ok],                                          # needs 2 entries
        "task02": [{"attempt_1": [[1, 10]], "extra": 1}],
        # task03 missing
        "zzz": [ok],
    })
    with pytest.raises(SubmissionError) as e:
        validate_submission(path, tasks)
    probs = e.value.problems
    assert "task zzz: not one of the 4 expected tasks" in probs
    assert "task task03: missing" in probs
    assert "task task01: 1 test entries, the task has 2 test inputs" in probs
    assert "task task00: test 0: attempt_1: row 1 has 1 cells, row 0 has 2" in probs
    assert "task task02: test 0: attempt_1: row 0, column 1: 10 is not a colour 0-9" in probs
    assert "task task02: test 0: missing attempt_2" in probs
    assert "task task02: test 0: unexpected key 'extra'" in probs
    assert len(probs) == 7
    assert str(path) in str(e.value)


@pytest.mark.parametrize("grid,msg", [
    ([], "empty grid"),
    ([[]], "row 0 must be a non-empty list"),
    ([[True]], "True is not a colour"),
    ([[1.0]], "1.0 is not a colour"),
    ("11", "must be a list of rows, got str"),
    ([[0]] * 31, "31 rows, more than 30"),
    ([[0] * 31], "31 cells, more than 30"),
])
def test_validate_bad_grids(tmp_path, grid, msg):
    tasks = make_tasks(1)
    path = tmp_path / "s.json"
    write(path, {"task00": [{"attempt_1": [[0]], "attempt_2": grid}]})
    with pytest.raises(SubmissionError, match=msg):
        validate_submission(path, tasks)


def test_validate_unreadable_files(tmp_path):
    tasks = make_tasks(1)
    with pytest.raises(SubmissionError, match="does not exist"):
        validate_submission(tmp_path / "none.json", tasks)
    (tmp_path / "cut.json").write_text('{"task00": [{"attempt_1": [[0')
    with pytest.raises(SubmissionError, match="not valid JSON"):
        validate_submission(tmp_path / "cut.json", tasks)
    write(tmp_path / "l.json", [])
    with pytest.raises(SubmissionError, match="top level must be an object"):
        validate_submission(tmp_path / "l.json", tasks)
