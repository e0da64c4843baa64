"""Shipped checkpoints load by name, from inside the package, and say so when absent."""
import pytest
import torch

from arcfast.model import decoder as M
from arcfast import models


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    ckpt = tmp_path / "pkg" / "models" / "starter"
    m = M.build_model(M.preset("tiny"), seed=3)
    M.save_model(m, ckpt)
    monkeypatch.setitem(models.SHIPPED, "starter", ckpt)
    return ckpt, m


def test_a_shipped_model_loads_by_name_from_anywhere(shipped, tmp_path, monkeypatch):
    ckpt, ref = shipped
    monkeypatch.chdir(tmp_path)
    assert models.shipped_model("starter") == ckpt
    got = M.load_model("starter")
    x = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(got(x), ref(x))
    assert got.config.name == str(ckpt.resolve())


def test_a_directory_of_that_name_wins(shipped, tmp_path, monkeypatch):
    local = tmp_path / "work" / "starter"
    M.save_model(M.build_model(M.preset("tiny"), seed=9), local)
    monkeypatch.chdir(tmp_path / "work")
    assert M.load_model("starter").config.name == str(local.resolve())


def test_a_shipped_model_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(models.SHIPPED, "starter", tmp_path / "missing")
    monkeypatch.chdir(tmp_path)
    assert models.shipped_model("starter") is None
    with pytest.raises(FileNotFoundError, match="shipped model 'starter' is not installed"):
        M.load_model("starter")
