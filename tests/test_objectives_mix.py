"""Objective mixtures as the flags give them, and the wrong predictions read from eval records."""
import json

import numpy as np
import pytest

from arcfast.samples.objectives import format_objectives, parse_objectives
from arcfast.run.records import read_wrong_predictions
from arcfast.run.outdir import OutDir
from arcfast.arc.task import Pair, Task


def test_parse_objectives():
    assert parse_objectives(None) == (("output", 1.0),)
    assert parse_objectives(["output=1", "input=0.5", "verify"]) == (("output", 1.0), ("input", 0.5), ("verify", 1.0))
    assert parse_objectives("output=2,verify=0.25") == (("output", 2.0), ("verify", 0.25))
    assert parse_objectives({"input": 1}) == (("input", 1.0),)
    assert format_objectives(parse_objectives(["output=1", "input=0.5"])) == "output=1 input=0.5"
    for bad, msg in ((["outputs=1"], "unknown"), (["output=1", "output=2"], "twice"), (["input=x"], "not a number"),
                     (["input=-1"], ">= 0"), (["input=nan"], ">= 0"), (["output=0"], "sum to 0")):
        with pytest.raises(ValueError, match=msg):
            parse_objectives(bad)


def _grid(*rows):
    return np.array(rows, np.uint8)


def _task(tid="t1"):
    return Task(tid, [Pair(_grid([1]), _grid([2])), Pair(_grid([3]), _grid([4]))],
                [Pair(_grid([5, 5]), _grid([6, 6])), Pair(_grid([7]), _grid([8]))], source="mem")


def _write(run, task, **rec):
    path = OutDir(run).task_file(task.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task_id": task.id, "fingerprint": task.fingerprint(), **rec}))


def test_wrong_predictions_are_the_candidates_that_differ_from_the_solution(tmp_path):
    t = _task()
    cand = lambda g: {"grid": g, "count": 1}
    _write(tmp_path / "a", t, candidates=[[cand([[6, 6]]), cand([[6, 7]]), cand([[6], [6]])], [cand([[8]])]])
    # An older record (attempts only), the same wrong grid again and a new one; a record of a
    # changed task; a record of a task not asked for; an unreadable file.
    _write(tmp_path / "b", t, attempts=[[[[6, 7]], [[1, 1]]], []])
    changed = Task(t.id, t.train[:1] + [Pair(_grid([3]), _grid([9]))], t.test)
    _write(tmp_path / "c", changed, candidates=[[cand([[0, 0]])], []])
    _write(tmp_path / "c", _task("other"), candidates=[[cand([[0]])], []])
    (tmp_path / "c" / "tasks" / "junk.json").write_text("{")
    stats = {}
    got = read_wrong_predictions([tmp_path / "a", tmp_path / "b" / "tasks", tmp_path / "c"], [t], stats=stats)
    assert list(got) == ["t1"] and list(got["t1"]) == [2]   # test input 0 is pool pair 2 (after 2 train pairs)
    assert [g.tolist() for g in got["t1"][2]] == [[[6, 7]], [[6], [6]], [[1, 1]]]
    assert all(g.dtype == np.uint8 for g in got["t1"][2])
    assert stats == {"records": 2, "grids": 3, "skipped_unknown_task": 1, "skipped_changed": 1,
                     "skipped_unreadable": 1}
    assert read_wrong_predictions([tmp_path / "a"], [t], mode="ttft") == {}
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        read_wrong_predictions([tmp_path / "nowhere"], [t])


def test_packed_batches_say_each_samples_objective():
    from arcfast.arc import vocab as T
    from arcfast.arc.loading import load_tasks
    from arcfast.samples.packing import PackedStream, pack
    from arcfast.samples.sampling import SampleConfig, make_samples

    tasks = load_tasks("arc1:train[:4]")
    cfg = SampleConfig(mode="pretrain", max_len=4096, objectives=(("output", 1.0), ("input", 1.0), ("verify", 1.0)))

    def kind(b, k):   # read from the tokens: verify holds CANDIDATE, input no OUTPUT
        toks = b.input_ids[b.sample_ids == k]
        return 2 if (toks == T.CANDIDATE).any() else 0 if (toks == T.OUTPUT).any() else 1

    batch = pack(list(make_samples(tasks, 3, config=cfg)), row_len=8192)
    seen = [kind(batch, k) for k in range(batch.n_samples)]
    assert batch.objective_ids.tolist() == seen and set(seen) == {0, 1, 2}
    with PackedStream(tasks, 0, row_len=4096, samples_per_task=2, config=cfg, batches=3) as stream:
        for b in stream:
            assert b.objective_ids.tolist() == [kind(b, k) for k in range(b.n_samples)]
            assert b.widen(4608).objective_ids is b.objective_ids
