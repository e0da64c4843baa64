"""Shipped checkpoints load by name, from inside the package, and say so when absent."""
import pytest
import torch

from arcfast.model.checkpoint import load_model, save_model
from arcfast.model.config import preset
from arcfast.model.decoder import build_model
from arcfast import models


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    ckpt = tmp_path / "pkg" / "models" / "starter"
    m = build_model(preset("tiny"), seed=3)
    save_model(m, ckpt)
    monkeypatch.setitem(models.SHIPPED, "starter", ckpt)
    return ckpt, m


def test_a_shipped_model_loads_by_name_from_anywhere(shipped, tmp_path, monkeypatch):
    ckpt, ref = shipped
    monkeypatch.chdir(tmp_path)
    assert models.shipped_model("starter") == ckpt
    got = load_model("starter")
    x = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(got(x), ref(x))
    assert got.config.name == str(ckpt.resolve())


def test_a_directory_of_that_name_wins(shipped, tmp_path, monkeypatch):
    local = tmp_path / "work" / "starter"
    save_model(build_model(preset("tiny"), seed=9), local)
    monkeypatch.chdir(tmp_path / "work")
    assert load_model("starter").config.name == str(local.resolve())


def test_a_shipped_model_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(models.SHIPPED, "starter", tmp_path / "missing")
    monkeypatch.chdir(tmp_path)
    assert models.shipped_model("starter") is None
    with pytest.raises(FileNotFoundError, match="shipped model 'starter' is not installed"):
        load_model("starter")
