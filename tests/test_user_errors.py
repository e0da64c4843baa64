"""Bad input gets one clear line, never a traceback: ``arcfast <cmd>: error: ...`` on stderr naming
the file (and what is wrong), exit code 2. The load functions raise the same message as a
ValueError (:class:`arcfast.model.config.CheckpointError`) for Python callers."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from arcfast.lora.adapters import load_adapter, save_adapter
from arcfast.cli import main
from arcfast.lora.multi import LoRAConfig
from arcfast.model.config import CheckpointError
from arcfast.model.checkpoint import load_model, save_model
from arcfast.run.config import TTFTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--tasks", "arc1:eval[:1]", "--budget", "20s", "--steps", "1", "--predictions", "1",
       "--max-new-tokens", "4", "-q"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint (save_model) and a rank-4 adapter of it (save_adapter), both intact."""
    root = tmp_path_factory.mktemp("saved")
    model = load_model("tiny", device="cpu")
    save_model(model, root / "ckpt")
    names = [n for n, _ in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    tensors = {n: (torch.randn(64, 4), torch.randn(4, 64 if n.endswith("q_proj") else 32)) for n in names}
    save_adapter(root / "adapter", tensors, LoRAConfig(r=4, alpha=8.0, targets=("q_proj", "v_proj")))
    return root


def _copy(saved, which, tmp_path) -> Path:
    dst = tmp_path / which
    shutil.copytree(saved / which, dst)
    return dst


def _truncate(path: Path, keep=None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 if keep is None else keep])


def _edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def _error(capsys, argv) -> str:
    """Run the CLI in-process; it must exit 2 with one ``error:`` line and no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    line = [l for l in err.splitlines() if l.startswith(f"arcfast {argv[0]}: error: ")]
    assert len(line) == 1, err
    return line[0]


# ----------------------------------------------------------------------------------------------
# a corrupt checkpoint or adapter: the message names the file

def _break_model(kind: str, d: Path) -> str:
    """Damage checkpoint ``d``; returns the file the message must name."""
    if kind == "truncated weights":
        _truncate(d / "model.safetensors")
        return "model.safetensors"
    if kind == "empty weights":
        _truncate(d / "model.safetensors", keep=0)
        return "model.safetensors"
    if kind == "garbage config":
        (d / "config.json").write_text("{not json")
        return "config.json"
    if kind == "config not an object":
        (d / "config.json").write_text("[1, 2]")
        return "config.json"
    if kind == "config field missing":
        _edit_json(d / "config.json", lambda c: c.pop("hidden_size"))
        return "config.json"
    if kind == "config field of the wrong type":
        _edit_json(d / "config.json", lambda c: c.update(num_attention_heads="4"))
        return "config.json"
    if kind == "config that does not fit the weights":
        _edit_json(d / "config.json", lambda c: c.update(intermediate_size=256))
        return str(d)
    raise AssertionError(kind)


MODEL_CASES = {
    "truncated weights": "truncated or corrupt safetensors",
    "empty weights": "truncated or corrupt safetensors",
    "garbage config": "line 1 column 2: not valid JSON",
    "config not an object": "a JSON object",
    "config field missing": "'hidden_size' is missing",
    "config field of the wrong type": "'num_attention_heads' is the string '4'",
    "config that does not fit the weights": "weights do not match config.json",
}


@pytest.mark.parametrize("kind", list(MODEL_CASES))
def test_load_model_names_the_broken_file(saved, tmp_path, kind):
    d = _copy(saved, "ckpt", tmp_path)
    name = _break_model(kind, d)
    with pytest.raises(CheckpointError, match=MODEL_CASES[kind]) as e:
        load_model(str(d), device="cpu")
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(str(d / name) if name != str(d) else str(d))


@pytest.mark.parametrize("kind", ["truncated weights", "garbage config", "config field missing"])
def test_ttft_with_a_broken_model_is_one_error_line(saved, tmp_path, capsys, kind):
    d = _copy(saved, "ckpt", tmp_path)
    name = _break_model(kind, d)
    line = _error(capsys, ["ttft", "--model", str(d), "--out", str(tmp_path / "run"), *RUN])
    assert str(d / name) in line and MODEL_CASES[kind] in line


def test_train_with_a_broken_model_is_one_error_line(saved, tmp_path, capsys):
    d = _copy(saved, "ckpt", tmp_path)
    _break_model("config field of the wrong type", d)
    line = _error(capsys, ["train", "--model", str(d), "--data", "arc1:train[:1]", "--steps", "1", "-q",
                           "--out", str(tmp_path / "run")])
    assert str(d / "config.json") in line and "num_attention_heads" in line


def _break_adapter(kind: str, d: Path) -> str:
    if kind == "truncated weights":
        _truncate(d / "adapter_model.safetensors")
        return "adapter_model.safetensors"
    if kind == "garbage config":
        (d / "adapter_config.json").write_text("")
        return "adapter_config.json"
    if kind == "config field missing":
        _edit_json(d / "adapter_config.json", lambda c: c.pop("r"))
        return "adapter_config.json"
    if kind == "config field of the wrong type":
        _edit_json(d / "adapter_config.json", lambda c: c.update(lora_alpha="eight"))
        return "adapter_config.json"
    if kind == "rank that does not fit the weights":
        _edit_json(d / "adapter_config.json", lambda c: c.update(r=8))
        return "adapter_model.safetensors"
    raise AssertionError(kind)


ADAPTER_CASES = {
    "truncated weights": "truncated or corrupt safetensors",
    "garbage config": "empty file",
    "config field missing": "'r' is missing",
    "config field of the wrong type": "'lora_alpha' is the string 'eight'",
    "rank that does not fit the weights": "has rank 4, adapter_config.json says r=8",
}


@pytest.mark.parametrize("kind", list(ADAPTER_CASES))
def test_load_adapter_names_the_broken_file(saved, tmp_path, kind):
    d = _copy(saved, "adapter", tmp_path)
    name = _break_adapter(kind, d)
    with pytest.raises(CheckpointError, match=ADAPTER_CASES[kind]) as e:
        load_adapter(d)
    assert str(e.value).startswith(str(d / name))


def test_intact_files_still_load(saved):
    cfg, tensors = load_adapter(saved / "adapter")
    assert cfg.r == 4 and len(tensors) == 4
    assert load_model(str(saved / "ckpt"), device="cpu").config.hidden_size == 64


@pytest.mark.parametrize("kind", ["truncated weights", "config field missing"])
def test_ttft_and_eval_with_a_broken_adapter_are_one_error_line(saved, tmp_path, capsys, kind):
    d = _copy(saved, "adapter", tmp_path)
    name = _break_adapter(kind, d)
    line = _error(capsys, ["ttft", "--model", "tiny", "--adapter", str(d), "--rank", "4", "--out", str(tmp_path / "a"), *RUN])
    assert str(d / name) in line and ADAPTER_CASES[kind] in line
    line = _error(capsys, ["eval", "--model", "tiny", "--adapter", str(d), "--rank", "4", "--out", str(tmp_path / "b"), *RUN])
    assert str(d / name) in line


# ----------------------------------------------------------------------------------------------
# --out that cannot be written: refused before any work

def test_out_that_is_an_existing_file_is_refused(tmp_path, capsys):
    f = tmp_path / "results.json"
    f.write_text("{}")
    for cmd in (["ttft", *RUN], ["eval", *RUN], ["train", "--data", "arc1:train[:1]", "--steps", "1", "-q"]):
        line = _error(capsys, [*cmd, "--out", str(f)])
        assert f"--out {f}: an existing file" in line
    assert f.read_text() == "{}"


def test_out_under_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    line = _error(capsys, ["ttft", *RUN, "--out", str(f / "run" / "x")])
    assert str(f) in line and "is a file" in line


@pytest.mark.parametrize("exists", [True, False])
def test_out_on_a_read_only_file_system_is_refused(tmp_path, capsys, monkeypatch, exists):
    # Root ignores permission bits, so a read-only mount is simulated: nothing can be created
    # under tmp_path/ro, as os.mkdir answers there on a read-only file system.
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(p, *a, **kw):
        if str(p).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
        return real_mkdir(p, *a, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    out = ro if exists else ro / "run"
    line = _error(capsys, ["ttft", *RUN, "--out", str(out)])
    assert str(out) in line and "not writable" in line and "Read-only file system" in line
    assert list(ro.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# numeric flags that would run all-fallback, silently fall back to a default, or crash mid-run

@pytest.mark.parametrize("flag,value,name", [
    ("--predictions", "0", "predictions"),
    ("--predictions", "-2", "predictions"),
    ("--steps", "-1", "steps"),
    ("--rank", "0", "rank"),
    ("--max-new-tokens", "0", "max_new_tokens"),
    ("--samples-per-task", "0", "samples_per_task"),
    ("--tasks-per-group", "-1", "tasks_per_group"),
    ("--row-len", "0", "row_len"),
    ("--lr", "-1", "lr"),
])
def test_ttft_refuses_meaningless_numbers_before_any_work(tmp_path, capsys, flag, value, name):
    out = tmp_path / "run"
    line = _error(capsys, ["ttft", *RUN, flag, value, "--out", str(out)])
    assert f"error: {name} must be" in line and f"got {value}" in line
    assert not out.exists()


def test_eval_refuses_zero_predictions(tmp_path, capsys):
    out = tmp_path / "run"
    line = _error(capsys, ["eval", *RUN, "--predictions", "0", "--out", str(out)])
    assert "predictions must be >= 1" in line
    assert not out.exists()


def test_meaningful_edge_values_are_kept():
    cfg = TTFTConfig(steps=0, tasks_per_group=0, max_new_tokens=None, lr=0.0)   # predict without training
    assert cfg.steps == 0
    with pytest.raises(ValueError, match="predictions must be >= 1"):
        TTFTConfig(predictions=0)


# ----------------------------------------------------------------------------------------------
# `arcfast validate` that loads nothing fails

@pytest.mark.parametrize("content,why", [("", "1 skipped"), ("{}", "holds no task"), ("[]", "1 skipped"),
                                         ('{"a": {"train": [], "test": []}}', "1 skipped")])
def test_validate_with_no_task_loaded_fails(tmp_path, capsys, content, why):
    f = tmp_path / "tasks.json"
    f.write_text(content)
    line = _error(capsys, ["validate", str(f)])
    assert f"{f}: no task was loaded" in line and why in line
