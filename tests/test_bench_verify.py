"""The verify benchmark runs both TTFT runs end to end on the CPU at a tiny size, reads their
generation and verification times and selections from the runs' own logs, and reports them."""
from __future__ import annotations

import pytest

from arcfast.bench import bench_verify
from arcfast.bench.runner import Context
from test_cli import _bigram_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_verify_bench_tiny_cpu(tmp_path):
    # The bigram model answers every prompt (a 1x1 grid in the prompt's frame), so colour-permuted
    # predictions give each test input several distinct candidates: there is something to verify.
    model = _bigram_checkpoint(tmp_path / "bigram")
    rows = bench_verify.run(Context(quick=True, device="cpu", threads=1, options={
        "model": str(model), "source": "arc1:train", "out": str(tmp_path / "runs")}))
    times = [r for r in rows if r.case.startswith("verification vs generation")]
    assert len(times) == 2
    assert "TTFT output x" in times[0].case and "TTFT output+input+verify x" in times[1].case
    for t in times:
        e = t.extra
        assert (t.unit, t.bar, t.higher_is_better, t.baseline) == ("s", 10.0, False, "generation")
        assert t.value == e["verify_s"] > 0 and t.baseline_value == e["generation_s"] > 0
        assert e["predictions"] >= 4 * e["tasks"]   # 4 per test input
        assert e["verified_inputs"] > 0 and e["candidates"] >= 2 * e["verified_inputs"]
        assert 0 < e["verifications"] <= 2 * e["candidates"]
        assert set(e["selection"]) == {"vote", "verify", "vote+verify"}
    everything = [r for r in rows if r.case.startswith("every distinct candidate verified x2")]
    assert len(everything) == 2
    for t, e in zip(times, everything):
        x = e.extra
        assert e.value > 0 and e.baseline_value == t.baseline_value and e.bar == 10.0
        assert x["all_candidates"] >= t.extra["candidates"] and x["all_verifications"] == 2 * x["all_candidates"]
    selections = [r for r in rows if "vote_2" in r.case]
    assert [r.case.split(" vote_2")[0] for r in selections] == ["verify", "vote+verify"] * 2
    for r in selections:
        assert r.baseline == "vote" and 0.0 <= r.value <= 1.0 and r.baseline_value is not None
    # the runs are kept where asked, each with its log
    assert (tmp_path / "runs" / "output" / "log.jsonl").is_file()
    assert (tmp_path / "runs" / "output-input-verify" / "log.jsonl").is_file()
    # reuse=1 reads those runs back instead of running them: the same rows, no wall time
    again = bench_verify.run(Context(quick=True, device="cpu", threads=1, options={
        "model": str(model), "source": "arc1:train", "out": str(tmp_path / "runs"), "reuse": "1"}))
    assert [r.case for r in again] == [r.case for r in rows]
    assert [r.baseline_value for r in again] == [r.baseline_value for r in rows]
    assert all(r.extra.get("wall_s", None) is None for r in again if "wall_s" in r.extra)


def test_verify_bench_options_are_checked():
    with pytest.raises(ValueError, match="predictions >= 2"):
        bench_verify.run(Context(quick=True, device="cpu", options={"predictions": "1"}))
