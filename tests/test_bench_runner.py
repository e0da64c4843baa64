import json
import os
import subprocess
import sys
from pathlib import Path

import arcfast.bench
from arcfast.bench import runner
from arcfast.bench.runner import Context, Row, format_table, write_results


def test_row_ratio_both_directions():
    fast = Row("x", "throughput", value=500.0, unit="grids/s", baseline="ref", baseline_value=10.0, bar=30)
    assert fast.ratio == 50.0 and fast.meets_bar is True
    slow = Row("x", "latency", value=2.0, unit="s", baseline="ref", baseline_value=8.0,
               higher_is_better=False, bar=5)
    assert slow.ratio == 4.0 and slow.meets_bar is False
    alone = Row("x", "no baseline", value=1.0, unit="s")
    assert alone.ratio is None and alone.meets_bar is None


def test_table_shows_ratio_and_bar():
    rows = [Row("encode", "compact 1 thread", 2.0e6, "grids/s", "python reference", 1.0e4, bar=50)]
    table = format_table(rows)
    assert "200.0x" in table and ">=50x ok" in table and "2.00M" in table
    rows[0].baseline_value = 1.0e5
    assert "MISSED" in format_table(rows)


def test_results_file_is_stamped(tmp_path):
    rows = [Row("encode", "c", 3.0, "grids/s", "ref", 1.0)]
    path = write_results(rows, Context(quick=True), ["--quick"], {}, out_dir=tmp_path)
    doc = json.loads(path.read_text())
    assert doc["command"] == "arcfast bench --quick"
    assert doc["machine"]["python"] and doc["date"]
    assert doc["rows"][0]["ratio"] == 3.0
    assert not list(tmp_path.glob("*.tmp"))


def test_runner_reports_a_broken_benchmark_and_keeps_going(tmp_path, monkeypatch, capsys):
    import types, sys

    good = types.ModuleType("arcfast.bench.bench_zz_good")
    good.run = lambda ctx: [Row("good", "case", 1.0, "u")]
    bad = types.ModuleType("arcfast.bench.bench_zz_bad")

    def boom(ctx):
        raise RuntimeError("kaput")

    bad.run = boom
    monkeypatch.setitem(sys.modules, "arcfast.bench.bench_zz_good", good)
    monkeypatch.setitem(sys.modules, "arcfast.bench.bench_zz_bad", bad)
    monkeypatch.setattr(runner, "discover", lambda: ["bench_zz_bad", "bench_zz_good"])
    rc = runner.main(["--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 1
    assert "good" in out.out and "kaput" in out.err
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["errors"] == {"bench_zz_bad": "RuntimeError: kaput"}


def test_exclude_skips_matching_benchmarks(tmp_path, monkeypatch, capsys):
    import types, sys

    ran = []
    for name in ("bench_zz_keep", "bench_zz_workload"):
        mod = types.ModuleType(f"arcfast.bench.{name}")
        mod.run = lambda ctx, name=name: ran.append(name) or [Row(name, "case", 1.0, "u")]
        monkeypatch.setitem(sys.modules, f"arcfast.bench.{name}", mod)
    monkeypatch.setattr(runner, "discover", lambda: ["bench_zz_keep", "bench_zz_workload"])
    assert runner.main(["--device", "cpu", "--no-save", "-x", "workload"]) == 0
    assert ran == ["bench_zz_keep"]
    assert runner.main(["--device", "cpu", "--no-save", "-k", "zz", "-x", "keep", "-x", "nothing"]) == 0
    assert ran == ["bench_zz_keep", "bench_zz_workload"]
    # a benchmark is named as its option reads, with hyphens: -k zz-keep is bench_zz_keep
    assert runner.main(["--device", "cpu", "--no-save", "-k", "zz-keep"]) == 0
    assert runner.main(["--device", "cpu", "--no-save", "-k", "zz", "-x", "zz-keep"]) == 0
    assert ran == ["bench_zz_keep", "bench_zz_workload", "bench_zz_keep", "bench_zz_workload"]


def test_suite_is_discovered_inside_the_package():
    assert {"bench_encode", "bench_kernels", "bench_train", "bench_workload", "bench_ttft_ablations"} <= set(runner.discover())
    assert Path(runner.__file__).resolve().parent == Path(arcfast.bench.__file__).resolve().parent


def test_results_go_to_the_working_directory_not_the_package(tmp_path, monkeypatch, capsys):
    import types

    mod = types.ModuleType("arcfast.bench.bench_zz_one")
    mod.run = lambda ctx: [Row("one", "case", 2.0, "u", "ref", 1.0)]
    monkeypatch.setitem(sys.modules, "arcfast.bench.bench_zz_one", mod)
    monkeypatch.setattr(runner, "discover", lambda: ["bench_zz_one"])
    package = Path(runner.__file__).resolve().parent
    files = lambda: sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)
    before = files()
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--device", "cpu"]) == 0
    (default,) = (tmp_path / "bench-results").glob("*.json")
    assert json.loads(default.read_text())["rows"][0]["ratio"] == 2.0
    assert runner.main(["--device", "cpu", "--out", "elsewhere/res"]) == 0
    (given,) = (tmp_path / "elsewhere" / "res").glob("*.json")
    assert json.loads(given.read_text())["command"] == "arcfast bench --device cpu --out elsewhere/res"
    assert f"results: {Path('elsewhere/res') / given.name}" in capsys.readouterr().out
    assert files() == before


def test_python_m_benchmarks_still_runs_from_the_source_tree():
    import benchmarks

    assert benchmarks.main is runner.main
    root = Path(__file__).resolve().parent.parent
    got = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("usage: python -m benchmarks")
    text = " ".join(got.stdout.split())
    assert "--out DIR" in text and "(default: bench-results/ under the current directory)" in text
