import json

from benchmarks import runner
from benchmarks.runner import Context, Row, format_table, write_results


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
    assert doc["command"] == "python -m benchmarks --quick"
    assert doc["machine"]["python"] and doc["date"]
    assert doc["rows"][0]["ratio"] == 3.0
    assert not list(tmp_path.glob("*.tmp"))


def test_runner_reports_a_broken_benchmark_and_keeps_going(tmp_path, monkeypatch, capsys):
    import types, sys

    good = types.ModuleType("benchmarks.bench_zz_good")
    good.run = lambda ctx: [Row("good", "case", 1.0, "u")]
    bad = types.ModuleType("benchmarks.bench_zz_bad")

    def boom(ctx):
        raise RuntimeError("kaput")

    bad.run = boom
    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_good", good)
    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_bad", bad)
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
        mod = types.ModuleType(f"benchmarks.{name}")
        mod.run = lambda ctx, name=name: ran.append(name) or [Row(name, "case", 1.0, "u")]
        monkeypatch.setitem(sys.modules, f"benchmarks.{name}", mod)
    monkeypatch.setattr(runner, "discover", lambda: ["bench_zz_keep", "bench_zz_workload"])
    assert runner.main(["--device", "cpu", "--no-save", "-x", "workload"]) == 0
    assert ran == ["bench_zz_keep"]
    assert runner.main(["--device", "cpu", "--no-save", "-k", "zz", "-x", "keep", "-x", "nothing"]) == 0
    assert ran == ["bench_zz_keep", "bench_zz_workload"]
