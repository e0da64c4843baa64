"""What a new user installs: the sdist, the wheel built from it, and arcfast without Triton.

- the sdist carries what the docstrings and the tests point to (docs/FORMAT.md, tests/*.py), the
  C++ headers and the licence, and its metadata states the licence and keeps Triton optional;
- with Triton not importable every module imports and a CPU run trains, predicts and writes its
  submission;
- ``python -m arcfast`` is the command line, exit status included;
- (slow) the wheel, built from that sdist and installed into an empty directory, runs the commands a
  user runs from a directory outside the checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import pytest

import arcfast

ROOT = Path(__file__).resolve().parent.parent


def _not_source(directory: str, names: list) -> set:
    """For copying the checkout: what a clean clone lacks (build outputs, environments, caches, run
    directories) and what no sdist carries (the top-level dot-directories)."""
    skip = {n for n in names if n == "__pycache__" or n.endswith((".so", ".pyc", ".egg-info"))}
    if Path(directory) == ROOT:
        skip |= {n for n in names if n.startswith(".") or n in ("build", "dist", "venv", "runs", "bench-results")}
    return skip

# Run first in a child process: the path finder stops finding triton, as if it were not installed
# (importlib.util.find_spec("triton") is None and `import triton` raises ModuleNotFoundError).
HIDE_TRITON = textwrap.dedent('''
    import importlib.machinery, sys

    class _NoTriton(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                return None
            return super().find_spec(name, path, target)

    assert "triton" not in sys.modules, "triton was imported before it could be hidden"
    sys.meta_path[:] = [_NoTriton if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
''')


def _env(pythonpath: Optional[Path]) -> dict:
    """This environment, importing from ``pythonpath`` (and site-packages) only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def _run(args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(got: subprocess.CompletedProcess, what: str) -> str:
    assert got.returncode == 0, f"{what}: exit {got.returncode}\n{got.stdout[-3000:]}\n{got.stderr[-3000:]}"
    return got.stdout


def build_sdist(tmp: Path) -> Path:
    """The sdist of a copy of the checkout (so nothing is written into the checkout), in ``tmp``."""
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_not_source)
    out = tmp / "dist"
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    name = _ok(_run([sys.executable, "-c", code], src, _env(None)), "building the sdist").strip().splitlines()[-1]
    return out / name


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    return build_sdist(tmp_path_factory.mktemp("sdist"))


def test_sdist_carries_docs_tests_headers_and_license(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"{sdist.name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    want = {"docs/FORMAT.md", "LICENSE", "README.md", "Makefile", "pyproject.toml", "setup.py", "MANIFEST.in"}
    want |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/*.py")}   # conftest.py, scripted.py...
    want |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob("csrc/*.[ch]*")}  # .h and .cpp
    assert {"tests/conftest.py", "tests/scripted.py", "csrc/grid.h"} <= want
    assert not want - names, f"missing from the sdist: {sorted(want - names)}"
    assert not [n for n in names if n.endswith((".so", ".pyc"))], "build outputs in the sdist"

    # PEP 639 licence fields; Triton only through the extras.
    lines = pkg_info.splitlines()
    assert "License-Expression: Apache-2.0" in lines and "License-File: LICENSE" in lines
    triton = [ln for ln in lines if ln.startswith("Requires-Dist: triton")]
    assert triton and all('extra == "triton"' in ln for ln in triton), triton
    assert "Provides-Extra: triton" in lines


def test_license_is_the_apache_license_2_0():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 the arcfast authors" in text


def test_without_triton_every_module_imports_and_a_cpu_run_trains_and_predicts(tmp_path):
    out = tmp_path / "run"
    code = HIDE_TRITON + textwrap.dedent(f'''
        import importlib, importlib.util, json, pkgutil
        assert importlib.util.find_spec("triton") is None
        try:
            import triton
        except ImportError:
            pass
        else:
            raise AssertionError("triton is still importable")

        import arcfast
        # Every module, except the __main__ modules, which run their command when imported.
        names = sorted(m.name for m in pkgutil.walk_packages(arcfast.__path__, "arcfast.")
                       if m.name.rsplit(".", 1)[-1] != "__main__")
        for name in names:
            importlib.import_module(name)
        from arcfast.kernels._common import HAS_TRITON
        assert not HAS_TRITON

        import torch
        from arcfast.model.config import preset
        from arcfast.model.decoder import build_model

        model = build_model(preset("tiny"), device="cpu").eval()
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            plain = model.logits(model(ids))
            model.set_ops("triton")   # the kernels' entry points, which run their references here
            fused = model.logits(model(ids))
        assert plain.shape == (2, 16, model.config.vocab_size) and torch.isfinite(plain).all()
        torch.testing.assert_close(fused, plain)

        from arcfast.cli import main
        rc = main(["ttft", "--tasks", "arc1:eval[:1]", "--model", "tiny", "--budget", "40s", "--steps", "1",
                   "--predictions", "1", "--max-new-tokens", "8", "--out", {str(out)!r}, "-q"])
        assert rc == 0, rc
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "triton")
        assert not leaked, leaked
        print(json.dumps({{"modules": names}}))
    ''')
    got = _run([sys.executable, "-c", code], tmp_path, _env(Path(arcfast.__file__).parent.parent))
    names = json.loads(_ok(got, "arcfast without triton").strip().splitlines()[-1])["modules"]
    assert {"arcfast.kernels.lora", "arcfast.kernels.rmsnorm", "arcfast.train.trainer", "arcfast.infer.generate",
            "arcfast.cli"} <= set(names)
    submission = json.loads((out / "submission.json").read_text())
    assert len(submission) == 1 and all(submission.values())


def test_python_m_arcfast_is_the_command_line(tmp_path):
    env = _env(Path(arcfast.__file__).parent.parent)
    got = _run([sys.executable, "-m", "arcfast", "--help"], tmp_path, env)
    assert _ok(got, "python -m arcfast --help").startswith("usage: arcfast")
    got = _run([sys.executable, "-m", "arcfast"], tmp_path, env)   # no command: help, and main()'s 2
    assert got.returncode == 2 and got.stdout.startswith("usage: arcfast"), (got.returncode, got.stderr)


# ----------------------------------------------------------------------------------------------
# The wheel, installed outside the checkout


@pytest.fixture(scope="module")
def installed(sdist, tmp_path_factory):
    """The wheel built from the sdist (the C++ core compiled, in parallel), installed with
    ``pip install --target``: (site directory, environment that imports arcfast from there only,
    an empty working directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    env = _env(None)
    t0 = time.perf_counter()
    _ok(_run(pip + ["wheel", str(sdist), "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "wheels")], tmp, env, timeout=900), "pip wheel")
    built_s = time.perf_counter() - t0
    wheels = list((tmp / "wheels").glob("arcfast-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    _ok(_run(pip + ["install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheels[0])],
             tmp, env), "pip install --target")
    print(f"wheel built from the sdist in {built_s:.1f} s: {wheels[0].name}")
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return site, _env(site), cwd


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_runs_the_commands(installed):
    site, env, cwd = installed
    assert list(site.glob("arcfast/_core*.so")), "no compiled core in the wheel"
    assert list(site.glob("arcfast-*.dist-info/licenses/LICENSE"))
    where = _ok(_run([sys.executable, "-c", "import arcfast, arcfast._core; print(arcfast.__file__); "
                                            "print(arcfast._core.__file__)"], cwd, env), "import arcfast")
    for line in where.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), f"{line} is not from the installed wheel"

    def arcfast_cmd(*args) -> str:
        return _ok(_run([sys.executable, "-m", "arcfast", *args], cwd, env), "arcfast " + " ".join(args))

    assert arcfast_cmd("--help").startswith("usage: arcfast")
    assert "3 tasks" in arcfast_cmd("validate", "arc1:eval[:3]")   # the bundled sets load from the install
    out = cwd / "out"
    # --max-new-tokens: the random tiny model never stops by itself; 8 tokens keep the run to seconds.
    arcfast_cmd("ttft", "--tasks", "arc1:eval[:2]", "--model", "tiny", "--budget", "40s", "--steps", "1",
                "--predictions", "1", "--max-new-tokens", "8", "--out", str(out), "-q")
    assert len(json.loads((out / "submission.json").read_text())) == 2
    arcfast_cmd("eval", "--tasks", "arc1:eval[:1]", "--model", "tiny", "--budget", "40s", "--predictions", "1",
                "--max-new-tokens", "8", "--out", str(cwd / "eval"), "-q")
    assert json.loads((cwd / "eval" / "run.json").read_text())["metrics"] is not None
    arcfast_cmd("train", "--data", "arc1:train[:2]=1", "--model", "tiny", "--steps", "2", "--row-len", "4096",
                "--max-len", "4096", "--out", str(cwd / "pre"), "-q")
    assert (cwd / "pre" / "adapter" / "adapter_model.safetensors").is_file()
    assert f"arcfast {arcfast.__version__}" in arcfast_cmd("info")
    assert arcfast_cmd("--version").strip() == f"arcfast {arcfast.__version__}"


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "arcfast" / "bench").is_dir(),
                    reason="the benchmark suite is not in the package yet (arcfast/bench/ does not exist)")
def test_wheel_installed_outside_the_checkout_runs_bench_help(installed):
    site, env, cwd = installed
    got = _run([sys.executable, "-m", "arcfast", "bench", "--help"], cwd, env)
    assert "usage:" in _ok(got, "arcfast bench --help")


def test_threads_zero_means_the_cores_this_process_may_use():
    """threads=0 (every parallel loop of the C++ core) follows the CPU affinity, as a job pinned to
    some cores of a large machine (taskset, a container's cpuset) needs: here pinned to one core."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPU affinity and two cores")
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from arcfast import _core; import numpy as np; "
            "g = [np.ones((3, 3), np.uint8)] * 5000; "
            "same = [a.tolist() for a in _core.encode_batch(g, 'compact', 0, 30)] == "
            "[a.tolist() for a in _core.encode_batch(g, 'compact', 1, 30)]; "
            "print(_core.available_cores(), len(os.sched_getaffinity(0)), same)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "True"]
    assert _available_cores() == len(os.sched_getaffinity(0))


def _available_cores():
    from arcfast import _core

    return _core.available_cores()
