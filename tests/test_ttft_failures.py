"""A group that fails does not end the run: out of memory splits it, anything else leaves its tasks
with fallback answers (retried by --resume), and every other task is trained and answered."""
from __future__ import annotations

import json

import pytest
import torch

from arcfast.train.backends.native import NativeBackend
from arcfast.arc.loading import load_tasks
from arcfast.answers.submission import validate_submission
from arcfast.run.config import TTFTConfig
from arcfast.run.ttft import TTFTRun
from scripted import ScriptedGenerator, turn

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = "arc1:eval[:4]"


def _cfg(out, **kw):
    # No max_new_tokens: the scripted generator's answers (the `scripted` fixture) are never cut.
    base = dict(tasks=TASKS, model="tiny", budget=120.0, out=str(out), steps=2, tasks_per_group=4, predictions=1,
                row_len=4096, max_len=4096, progress=False)
    return TTFTConfig(**{**base, **kw})


def _events(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _result_ids(out) -> set:
    """The task ids of the per-task results written (read from each file, not its name)."""
    return {json.loads(p.read_text())["task_id"] for p in (out / "tasks").glob("*.json")}


def _entries(task, answered: bool) -> list:
    """The submission entries of ``task`` in a run with the scripted generator (rule ``turn``):
    its known answer first when ``answered``, else the fallback (the test input) twice."""
    out = []
    for q in task.test:
        fallback = q.input.tolist()
        assert turn(q.input).tolist() != fallback   # the answer can be told from the fallback
        out.append({"attempt_1": turn(q.input).tolist() if answered else fallback, "attempt_2": fallback})
    return out


@pytest.fixture
def scripted(monkeypatch):
    """Every generator the run builds answers with the scripted rule (tests/scripted.py), so the
    answers in the submission are known."""
    import arcfast.infer.generate

    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)


def test_out_of_memory_splits_the_group_until_it_fits(tmp_path, monkeypatch, scripted):
    real = NativeBackend.step
    seen = []

    def step(self, batch, gate=None):
        tasks = len(set(batch.adapter_ids[batch.adapter_ids >= 0].tolist()))
        seen.append(tasks)
        if tasks > 1:
            # A backward cut short leaves a partial gradient: recover() must drop it.
            self.lora.weight.grad = torch.ones_like(self.lora.weight)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, batch, gate=gate)

    monkeypatch.setattr(NativeBackend, "step", step)
    out, six = tmp_path / "run", "arc1:eval[:6]"
    summary = TTFTRun(_cfg(out, tasks=six)).run()   # groups of 4 and 2
    splits = [e for e in _events(out) if e["event"] == "oom_split"]
    # 4 fails: every group is cut to 2 (the queued one too); 2 fails: to 1. Nothing fails twice.
    assert [e["tasks_per_group"] for e in splits] == [2, 1]
    assert seen.count(4) == 1 and seen.count(2) == 1
    assert summary["trained"] == 6 and summary["answered"] == 6 and summary["failed"] == []
    sub = validate_submission(out / "submission.json", load_tasks(six))
    assert sub == {t.id: _entries(t, answered=True) for t in load_tasks(six)}   # every task predicted
    assert _result_ids(out) == {t.id for t in load_tasks(six)}
    # The split run's adapters are those of a run one task per group from the start: nothing the
    # failed steps left behind (a partial gradient) reached them.
    monkeypatch.setattr(NativeBackend, "step", real)
    alone = tmp_path / "alone"
    TTFTRun(_cfg(alone, tasks=six, tasks_per_group=1)).run()
    from safetensors.torch import load_file

    for t in load_tasks(six):
        a = load_file(str(out / "adapters" / t.id / "adapter_model.safetensors"))
        b = load_file(str(alone / "adapters" / t.id / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), t.id


def test_a_failing_group_keeps_fallbacks_and_is_retried_on_resume(tmp_path, monkeypatch, scripted):
    from arcfast.run.answer import GroupInference

    real = GroupInference.run
    bad = load_tasks(TASKS)[1].id

    def predict(self, backend, group, runs, planner, slot_of):
        if any(t.id == bad for t in group):
            raise ValueError("a prompt builder bug")
        return real(self, backend, group, runs, planner, slot_of)

    monkeypatch.setattr(GroupInference, "run", predict)
    out = tmp_path / "run"
    tasks = load_tasks(TASKS)
    summary = TTFTRun(_cfg(out, tasks_per_group=2)).run()
    assert summary["failed"] == sorted(t.id for t in tasks[:2])
    assert summary["answered"] == 2
    failed = [e for e in _events(out) if e["event"] == "group_failed"]
    assert len(failed) == 1 and "a prompt builder bug" in failed[0]["error"]
    sub = validate_submission(out / "submission.json", tasks)
    # The failed group's tasks keep their fallbacks; the other group's carry the model's answers.
    assert sub == {t.id: _entries(t, answered=i >= 2) for i, t in enumerate(tasks)}
    assert _result_ids(out) == {t.id for t in tasks[2:]}

    monkeypatch.setattr(GroupInference, "run", real)
    again = TTFTRun(_cfg(out, tasks_per_group=2, resume=True)).run()
    assert again["failed"] == [] and again["answered"] == 4
    # The retried tasks are answered now, and the kept ones still are.
    sub = validate_submission(out / "submission.json", tasks)
    assert sub == {t.id: _entries(t, answered=True) for t in tasks}
    assert _result_ids(out) == {t.id for t in tasks}


def test_a_full_disk_is_said_in_the_summary_and_the_exit_status(tmp_path, monkeypatch, scripted, capsys):
    """Adapters that cannot be written (no space left) lose no answer, but the run does not end as
    if all went well: the summary names how many and why, and the exit status is 3."""
    import errno

    from arcfast.cli import EXIT_NOT_WRITTEN, main

    real = NativeBackend.save_adapter

    def save(self, i, path, **kw):
        if i > 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, i, path, **kw)

    monkeypatch.setattr(NativeBackend, "save_adapter", save)
    out = tmp_path / "run"
    rc = main(["ttft", "--tasks", TASKS, "--model", "tiny", "--budget", "120s", "--out", str(out), "--steps", "2",
               "--tasks-per-group", "4", "--predictions", "1", "--row-len", "4096", "--max-len", "4096", "-q"])
    printed = capsys.readouterr().out
    assert rc == EXIT_NOT_WRITTEN == 3
    assert "3 of 4 adapters not saved: " in printed and "No space left on device" in printed
    summary = json.loads((out / "run.json").read_text())
    tasks = load_tasks(TASKS)
    assert summary["adapters_not_saved"] == sorted(t.id for t in tasks[1:]) and summary["adapters_saved"] == 1
    assert "No space left on device" in summary["write_error"]
    sub = validate_submission(out / "submission.json", tasks)
    assert all(sub[t.id] == _entries(t, answered=True) for t in tasks)   # every answer is in it
    assert {e["task"] for e in _events(out) if e["event"] == "adapter_not_saved"} == {t.id for t in tasks[1:]}
