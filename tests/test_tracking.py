"""``--report-to tensorboard|wandb`` (arcfast.run.tracking): real ttft and train runs whose event files,
read back with TensorBoard's own reader, hold what their log.jsonl says; W&B through a stand-in
module (and for real, offline, where it is installed); a missing package refused before any work;
a tracker that raises dropped without failing the run."""
from __future__ import annotations

import json
import logging
import sys
import types

import pytest

from arcfast.cli import main
from arcfast.files import JsonLog
from arcfast.run import tracking
from arcfast.run.config import TTFTConfig
from arcfast.run.tracking import TrackedLog, open_log, report_to_names

pytestmark = pytest.mark.usefixtures("one_thread")

TTFT = ["--tasks", "arc1:eval[:2]", "--model", "tiny", "--budget", "60s", "--steps", "2", "--predictions", "2",
        "--save-adapters", "none", "--row-len", "2048", "--max-len", "2048", "--device", "cpu", "--dtype", "float32",
        "--objective", "output=1", "--objective", "input=1", "-q"]
TRAIN = ["--data", "arc1:train[:4]", "--val", "arc1:eval[:2]", "--val-batches", "1", "--model", "tiny", "--steps", "4",
         "--save-every", "0", "--val-every", "2", "--log-every", "1", "--rank", "4", "--alpha", "8", "--row-len", "1024",
         "--max-len", "1024", "--threads", "1", "--device", "cpu", "--dtype", "float32",
         "--objective", "output=1", "--objective", "input=1", "-q"]


def events(out) -> list:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def scalars(out) -> dict:
    """{tag: [(step, value)]} of the TensorBoard event files under ``out/tensorboard``, read by
    TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def close(pairs, want):
    """``pairs`` ((step, value), TensorBoard's float32) equal ``want`` ((step, value))."""
    assert [s for s, _ in pairs] == [s for s, _ in want]
    assert [v for _, v in pairs] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-6)


def numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ----------------------------------------------------------------------------------------------
# TensorBoard: real runs, their event files against their log

def test_ttft_tensorboard_holds_the_log_s_metrics(tmp_path):
    out = tmp_path / "run"
    assert main(["ttft", *TTFT, "--out", str(out), "--report-to", "tensorboard"]) == 0
    log = events(out)
    steps = [e for e in log if e["event"] == "step"]
    tasks = [e for e in log if e["event"] == "task"]
    end = next(e for e in log if e["event"] == "end")
    assert len(steps) >= 2 and len(tasks) == 2 and end["metrics"]
    got = scalars(out)
    # Every step of every group on one axis: the steps taken so far.
    at = range(1, len(steps) + 1)
    close(got["train/loss"], list(zip(at, [e["loss"] for e in steps])))
    close(got["train/learning_rate"], list(zip(at, [e["lr"] for e in steps])))
    close(got["train/tokens_per_s"], list(zip(at, [e["tokens_per_s"] for e in steps])))
    for name in ("output", "input"):
        want = [(i, e["objective_loss"][name]) for i, e in zip(at, steps) if name in e.get("objective_loss", {})]
        assert want, name
        close(got[f"train/loss_{name}"], want)
    # One point per finished task, the count of tasks finished as its step.
    for field in ("final_loss", "steps", "seconds"):
        close(got[f"task/{field}"], [(i, e[field]) for i, e in enumerate(tasks, 1)])
    for metric in ("vote_1", "vote_2", "pass_n"):
        close(got[f"task/{metric}"], [(i, e["metrics"][metric]) for i, e in enumerate(tasks, 1)])
    # The run's own numbers and its metrics, once, at the last step.
    for k, v in {**numbers({k: v for k, v in end.items() if k != "time"}), **end["metrics"]}.items():
        close(got[f"run/{k}"], [(len(steps), v)])
    assert {t.split("/")[0] for t in got} == {"train", "task", "run"}


def test_train_tensorboard_holds_the_log_s_metrics(tmp_path):
    out = tmp_path / "train"
    assert main(["train", *TRAIN, "--out", str(out), "--report-to", "tensorboard"]) == 0
    log = events(out)
    train = [e for e in log if e["event"] == "train"]
    val = [e for e in log if e["event"] == "val"]
    end = next(e for e in log if e["event"] == "end")
    assert [e["step"] for e in train] == [1, 2, 3, 4] and [e["step"] for e in val] == [0, 2, 4]
    got = scalars(out)
    close(got["train/loss"], [(e["step"], e["loss"]) for e in train])
    close(got["train/learning_rate"], [(e["step"], e["lr"]) for e in train])
    close(got["train/tokens_per_s"], [(e["step"], e["tokens_per_s"]) for e in train])
    for name in ("output", "input"):
        close(got[f"train/loss_{name}"], [(e["step"], e["objective_loss"][name]) for e in train
                                          if name in e["objective_loss"]])
    close(got["val/loss"], [(e["step"], e["loss"]) for e in val])
    for k in ("steps", "seconds", "train_loss", "val_loss", "tokens_per_s"):
        close(got[f"run/{k}"], [(4, end[k])])
    assert not any(t.startswith("task/") for t in got)


# ----------------------------------------------------------------------------------------------
# refusals, before any work

@pytest.mark.parametrize("command", ["ttft", "train"])
def test_a_missing_package_is_refused_before_any_work(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)   # `import tensorboard` fails
    out = tmp_path / "run"
    argv = TTFT if command == "ttft" else TRAIN
    assert main([command, *argv, "--out", str(out), "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert ("--report-to tensorboard: the tensorboard package is not installed "
            "(pip install 'arcfast[tensorboard]')") in err
    assert not (out / "log.jsonl").exists()


def test_a_package_that_fails_to_import_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    """Found, but its import fails (a broken install): the same refusal, before a task is loaded."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(["ttft", *TTFT, "--out", str(out), "--report-to", "tensorboard"]) == 2
    assert "--report-to tensorboard: the tensorboard package is not installed" in capsys.readouterr().err
    assert not (out / "submission.json").exists()


def test_names_are_checked(tmp_path, capsys):
    assert report_to_names("none") == () and report_to_names(None) == ()
    assert report_to_names(["wandb", "tensorboard", "wandb"]) == ("wandb", "tensorboard")
    with pytest.raises(ValueError, match="'mlflow' is not one of tensorboard, wandb, none"):
        report_to_names(["mlflow"])
    assert main(["ttft", "--out", str(tmp_path / "r"), "--report-to", "none", "tensorboard", "-q"]) == 2
    assert "'none' reports nowhere; it cannot go with tensorboard" in capsys.readouterr().err


def test_only_rank_0_reports(tmp_path, monkeypatch):
    cfg = TTFTConfig(out=str(tmp_path), report_to=("tensorboard",))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    log = open_log(tmp_path / "log.rank1.jsonl", cfg)
    log(event="step", step=0, loss=1.0)
    log.close()
    assert type(log) is JsonLog and not (tmp_path / "tensorboard").exists()
    assert type(open_log(tmp_path / "log.jsonl", TTFTConfig(out=str(tmp_path)))) is JsonLog


# ----------------------------------------------------------------------------------------------
# a tracker that raises

def test_a_tracker_that_raises_mid_run_is_dropped_and_the_run_finishes(tmp_path, monkeypatch, caplog):
    calls = []
    write = tracking.TensorBoard.write

    def flaky(self, values, step, axis):
        calls.append(step)
        if len(calls) == 2:
            raise OSError("disk full")
        write(self, values, step, axis)

    monkeypatch.setattr(tracking.TensorBoard, "write", flaky)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="arcfast.run.tracking"):
        assert main(["ttft", *TTFT, "--out", str(out), "--report-to", "tensorboard"]) == 0
    assert len(calls) == 2   # never called again
    warned = [r.getMessage() for r in caplog.records if r.name == "arcfast.run.tracking"]
    assert len(warned) == 1 and "--report-to tensorboard: OSError: disk full" in warned[0]
    log = events(out)
    assert log[-1]["event"] == "end" and (out / "submission.json").exists()
    first = next(e for e in log if e["event"] == "step")
    want = {"train/loss": first["loss"], "train/learning_rate": first["lr"], "train/tokens_per_s": first["tokens_per_s"],
            **{f"train/loss_{k}": v for k, v in first.get("objective_loss", {}).items()}}
    got = scalars(out)   # only what was written before it raised
    assert set(got) == set(want)
    for tag, v in want.items():
        close(got[tag], [(1, v)])


def test_a_tracker_that_fails_to_close_does_not_fail_the_log(tmp_path, caplog):
    class Broken:
        name = "broken"

        def write(self, values, step, axis):
            raise RuntimeError("gone")

        def close(self):
            raise RuntimeError("also gone")

    log = TrackedLog(tmp_path / "log.jsonl", [Broken()])
    with caplog.at_level(logging.WARNING, logger="arcfast.run.tracking"):
        log(event="step", step=0, loss=1.0)
        log(event="step", step=1, loss=2.0)
        log.close()
    assert [e["loss"] for e in events(tmp_path)] == [1.0, 2.0]
    assert len([r for r in caplog.records if r.name == "arcfast.run.tracking"]) == 1


# ----------------------------------------------------------------------------------------------
# W&B

class FakeRun:
    def __init__(self, **kw):
        self.init = kw
        self.metrics, self.logged, self.summary, self.finished = [], [], {}, 0

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, values):
        self.logged.append(dict(values))

    def finish(self):
        self.finished += 1


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording its runs; no W&B environment of the caller's."""
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kw):
        module.runs.append(FakeRun(**kw))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return module


def test_wandb_gets_the_config_and_the_log_s_metrics_offline(tmp_path, fake_wandb):
    out = tmp_path / "run"
    assert main(["ttft", *TTFT, "--out", str(out), "--report-to", "wandb"]) == 0
    (run,) = fake_wandb.runs
    assert run.init["mode"] == "offline" and run.init["project"] == "arcfast" and run.init["dir"] == str(out)
    assert run.init["config"]["steps"] == 2 and run.init["config"]["report_to"] == ("wandb",)
    assert ("train/*", "train/step") in run.metrics and ("task/*", "task/finished") in run.metrics
    assert run.finished == 1
    log = events(out)
    steps = [e for e in log if e["event"] == "step"]
    tasks = [e for e in log if e["event"] == "task"]
    train = [d for d in run.logged if "train/step" in d]
    assert [d["train/step"] for d in train] == list(range(1, len(steps) + 1))
    assert [d["train/loss"] for d in train] == [e["loss"] for e in steps]
    assert [d["train/learning_rate"] for d in train] == [e["lr"] for e in steps]
    done = [d for d in run.logged if "task/finished" in d]
    assert [d["task/finished"] for d in done] == [1, 2]
    assert [d["task/final_loss"] for d in done] == [e["final_loss"] for e in tasks]
    assert [d["task/vote_1"] for d in done] == [e["metrics"]["vote_1"] for e in tasks]
    end = log[-1]
    assert run.summary == {**{f"run/{k}": v for k, v in end["metrics"].items()},
                           **{f"run/{k}": end[k] for k in ("seconds", "tasks", "trained")}}


@pytest.mark.parametrize("env, mode", [({"WANDB_API_KEY": "k"}, "online"), ({"WANDB_MODE": "disabled"}, None),
                                       ({"WANDB_MODE": "online"}, None)])
def test_wandb_mode_follows_the_environment(env, mode, tmp_path, fake_wandb, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    log = open_log(tmp_path / "log.jsonl", TTFTConfig(out=str(tmp_path), report_to=("wandb",)))
    log.close()
    assert fake_wandb.runs[0].init.get("mode") == mode   # None: the user's WANDB_MODE, read by wandb


def test_wandb_that_fails_to_start_leaves_the_run_to_go_on(tmp_path, fake_wandb, caplog):
    def refuse(**kw):
        raise ConnectionError("no network")

    fake_wandb.init = refuse
    with caplog.at_level(logging.WARNING, logger="arcfast.run.tracking"):
        log = open_log(tmp_path / "log.jsonl", TTFTConfig(out=str(tmp_path), report_to=("wandb", "tensorboard")))
    assert [t.name for t in log.trackers] == ["tensorboard"] and "--report-to wandb could not start" in caplog.text
    log(event="step", step=0, loss=1.5)
    log.close()
    assert scalars(tmp_path) == {"train/loss": [(1, 1.5)]}


def test_wandb_for_real_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "train"
    assert main(["train", *TRAIN, "--out", str(out), "--report-to", "wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_a_train_run_that_raises_still_finishes_its_wandb_run(tmp_path, fake_wandb, monkeypatch):
    import arcfast.run.train as train

    def broken(*a, **k):
        raise RuntimeError("the model could not be loaded")

    monkeypatch.setattr(train, "_train", broken)
    with pytest.raises(RuntimeError):
        train.run_train(train.FinetuneConfig(out=str(tmp_path / "t"), steps=1,
                                             report_to=("wandb",)))
    (run,) = fake_wandb.runs
    assert run.finished == 1


def test_a_resumed_ttft_run_goes_on_along_the_axes(tmp_path):
    """--resume appends to the log: its steps and finished tasks continue the earlier run's axes,
    and the tasks it keeps from before are not reported twice."""
    out = tmp_path / "run"
    args = ["ttft", *TTFT, "--tasks-per-group", "1", "--out", str(out), "--report-to", "tensorboard"]
    assert main(args) == 0
    first = [p for p in (out / "tasks").glob("*.json")]
    first[0].unlink()   # one task to do again
    assert main(args + ["--resume"]) == 0
    got = scalars(out)
    steps = [s for s, _ in got["train/loss"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 3 * 2   # 2 tasks, then 1, 2 steps each
    close(got["train/loss"], [(i + 1, e["loss"]) for i, e in enumerate(e for e in events(out) if e["event"] == "step")])
    assert [s for s, _ in got["task/steps"]] == [1, 2, 3]
