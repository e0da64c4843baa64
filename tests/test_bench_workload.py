"""The whole-workload benchmark, the step profiler and the results chart, on the CPU."""
import json
from pathlib import Path

import pytest

from arcfast.bench import bench_workload, plot, profile_step, runner
from arcfast.bench.runner import Context, Row

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SMALL = ["--set", "tasks=2", "--set", "samples=2", "--set", "predictions=3", "--set", "hf_steps=1",
         "--set", "hf_prompts=2", "--set", "max_new=12"]


def test_quick_workload_through_the_runner(tmp_path):
    from arcfast.arc.loading import load_tasks
    from arcfast.answers.submission import validate_submission

    run_dir = tmp_path / "run"
    rc = runner.main(["--quick", "-k", "workload", "--device", "cpu", "--out", str(tmp_path / "res"),
                      *SMALL, "--set", f"out={run_dir}"])
    assert rc == 0
    doc = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert doc["errors"] == {}
    searched = [r for r in doc["rows"] if r["case"].startswith("--search dfs")]
    queued = [r for r in doc["rows"] if "shared queue vs static sharding" in r["case"]]
    doc["rows"] = [r for r in doc["rows"] if r not in searched and r not in queued]
    rows = {r["case"].split(": ")[-1] if r["case"].endswith("wall time") else r["case"]: r for r in doc["rows"]}
    assert len(doc["rows"]) == 7 and all(r["bench"] == "workload" for r in doc["rows"])
    whole = rows["wall time"]
    x = whole["extra"]
    # The engine did exactly the workload: 2 samples (steps of one) per task, 3 predictions per input.
    tasks = load_tasks("arc1:eval[:2]")
    assert x["complete"] and x["tasks"] == 2 and x["steps_per_task"] == 2 and x["samples"] == 4
    assert x["predictions"] == 3 * sum(len(t.test) for t in tasks)
    assert x["short_steps"] == [] and x["cut_events"] == {}
    validate_submission(run_dir / "submission.json", tasks)
    for name in ("report.json", "report.md", "report.png", "run.json"):
        assert (run_dir / name).stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == sorted(t.id for t in tasks)
    # Phases inside the wall time; every value positive; the hf estimate present and made of parts.
    assert 0 < rows["training phase"]["value"] + rows["inference phase"]["value"] <= whole["value"]
    for r in doc["rows"]:
        assert r["value"] > 0 and r["baseline_value"] > 0, r["case"]
    hf = x["hf"]
    assert hf["train_s"] == pytest.approx(hf["train"]["s_per_sample"] * 4)
    assert hf["inference_s"] == pytest.approx(hf["generate"]["s_per_prediction"] * x["predictions"])
    assert whole["baseline_value"] == pytest.approx(hf["train_s"] + hf["inference_s"])
    assert hf["generate"]["new_tokens"] == round(x["generated_tokens"] / x["predictions"])
    assert 1 <= hf["generate"]["new_tokens"] <= 12
    # The search case: the same workload with DFS and NVARC selection, against greedy + vote.
    by = {r["case"].split(": ")[-1]: r for r in searched}
    assert sorted(by) == ["distinct candidates per test input", "inference phase", "vote_2", "wall time"]
    assert searched[0]["case"].startswith("--search dfs --min-prob 0.1 --select nvarc --rescore 2")
    d = by["wall time"]["extra"]
    # Every augmented prompt searched (a random model ends no grid inside 12 tokens: no completion).
    assert d["complete"] and d["search_stats"]["prompts"] == 3 * sum(len(t.test) for t in tasks)
    assert d["predictions"] >= 3 * sum(len(t.test) for t in tasks)
    grids = by["distinct candidates per test input"]
    assert grids["value"] >= 0 and grids["baseline_value"] == x["candidates"] / sum(len(t.test) for t in tasks)
    assert by["wall time"]["baseline_value"] == whole["value"]
    assert set(d["selection"]) == {"vote", "poe", "nvarc"} and by["vote_2"]["value"] == d["metrics"]["vote_2"]
    bar = [r for r in doc["rows"] if r["baseline"] == "30 minutes"][0]
    assert bar["baseline_value"] == 1800.0 and bar["bar"] is None   # not the full workload: no promise
    # The queue case: two workers finish the same unbalanced task set, each task once.
    (q,) = queued
    qx, sx = q["extra"]["queue"], q["extra"]["static"]
    assert q["value"] > 0 and q["baseline_value"] > 0 and len(q["extra"]["order"]) == 6
    assert sum(qx["tasks_per_worker"]) == sum(sx["tasks_per_worker"]) == 6 and sx["tasks_per_worker"] == [3, 3]
    assert qx["trained"] == sx["trained"] == 6


def test_a_run_cut_by_its_budget_is_reported_incomplete(tmp_path):
    s = bench_workload._options(Context(quick=True, options={"tasks": "2", "budget": "5s"}))
    a = bench_workload.run_arcfast(s, "cpu", tmp_path / "run")
    # 5 s is inside the 10 s safety margin: no task trains, every task keeps its fallback answer.
    assert not a["complete"] and a["cut_events"].get("out_of_time") == 1
    assert len(a["short_steps"]) == 2 and a["samples"] == 0
    from arcfast.arc.loading import load_tasks
    from arcfast.answers.submission import validate_submission

    tasks = load_tasks("arc1:eval[:2]")
    sub = validate_submission(tmp_path / "run" / "submission.json", tasks)
    assert sub == {t.id: [{"attempt_1": q.input.tolist(), "attempt_2": q.input.tolist()} for q in t.test]
                   for t in tasks}


def test_options_and_the_bar():
    full = bench_workload._options(Context(device="cuda"))
    assert (full["tasks"], full["samples"], full["predictions"], full["model"]) == (400, 300, 96, "qwen2.5-0.5b")
    assert bench_workload._is_full(full, "cuda") and not bench_workload._is_full(full, "cpu")
    part = bench_workload._options(Context(device="cuda", options={"tasks": "100"}))
    assert not bench_workload._is_full(part, "cuda")
    cpu = bench_workload._options(Context(device="cpu"))
    assert cpu["model"] == "tiny" and cpu["tasks"] < 10
    with pytest.raises(ValueError, match="multiple of per_step"):
        bench_workload._options(Context(options={"samples": "5", "per_step": "2"}))
    assert bench_workload.task_spec(part) == "arc1:eval[:100]"
    spread = bench_workload._options(Context(device="cuda", options={"tasks": "50", "spread": "1"}))
    assert bench_workload.task_spec(spread) == "arc1:eval[::8]" and not bench_workload._is_full(spread, "cuda")
    from arcfast.arc.loading import load_tasks

    assert len(load_tasks(bench_workload.task_spec(spread))) == 50
    assert bench_workload._spread(400, 4) == [0, 100, 200, 300]
    assert bench_workload._spread(2, 5) == [0, 1, 0, 1, 0]


def test_profile_step_on_the_cpu_writes_traces_and_tables(tmp_path):
    out = tmp_path / "prof"
    rc = profile_step.main(["--device", "cpu", "--model", "tiny", "--tasks-per-step", "2", "--steps", "1",
                            "--warmup", "1", "--prompts", "2", "--new", "3", "--row-len", "1024", "--threads", "1",
                            "--out", str(out)])
    assert rc == 0
    for part in ("train", "decode"):
        trace = json.loads((out / f"{part}_trace.json").read_text())
        assert any(str(e.get("name", "")).startswith("aten::") for e in trace["traceEvents"])
    text = (out / "profile.txt").read_text()
    assert "== train: per step" in text and "== decode: per step" in text and "aten::mm" in text
    s = json.loads((out / "summary.json").read_text())
    tr, de = s["train"], s["decode"]
    assert tr["steps"] == 1 and tr["wall_ms"] > 0 and tr["aten_ops"] > 0 and tr["tasks"] == 2
    assert tr["device_busy_ms"] is None and tr["launches"] == 0   # no device on the CPU
    # 3 new tokens: the first comes from the prefill, then one decode step each (sync_every=1 on the CPU).
    assert de["steps"] == 2 and de["prompts"] == 2 and de["adapters"] == 2 and de["aten_ops"] > 0


def test_counts_keep_to_the_named_ranges():
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.ones(4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("mine"):
                for _ in range(3):
                    torch.add(x, x)
        torch.mul(x, x)   # outside: not counted
    c = profile_step.counts(prof, "mine")
    assert c["aten_ops"] == 6 and c["launches"] == 0 and c["device_busy_us"] == 0 and c["cpu_us"] > 0
    with pytest.raises(RuntimeError, match="no range named 'other'"):
        profile_step.counts(prof, "other")


def test_per_step_splits_host_and_device():
    total = {"device_busy_us": 3000.0, "kernels": 60, "host_blocked_us": 1000.0, "launches": 40,
             "graph_launches": 2, "aten_ops": 80, "cpu_us": 500.0}
    s = profile_step.per_step(total, wall_s=0.010, steps=2, cuda=True)
    assert s["wall_ms"] == pytest.approx(5.0) and s["device_busy_ms"] == pytest.approx(1.5)
    assert s["host_blocked_ms"] == pytest.approx(0.5) and s["host_busy_ms"] == pytest.approx(4.5)
    assert s["launches"] == 20 and s["kernels"] == 30 and s["device_utilisation"] == pytest.approx(0.3)


def test_plot_of_the_committed_results(tmp_path):
    files = sorted(RESULTS.glob("*.json"))
    assert files
    png = tmp_path / "tps.png"
    assert plot.main([str(f) for f in files] + ["-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bars = plot.collect(plot.load(files))
    for f in files:
        for r in json.loads(f.read_text())["rows"]:
            if r["unit"] not in plot.UNITS or r["value"] <= 0:
                assert not any(b.label.startswith(f"{r['bench']}: {r['case']}") for b in bars)
                continue
            mine = [b for b in bars if b.label.startswith(f"{r['bench']}: {r['case']}") and b.value == r["value"]]
            assert len(mine) == 1, r["case"]
            if r["baseline_value"]:   # its baseline is drawn, as a grey bar
                assert any(b.unit == r["unit"] and b.baseline and b.value == r["baseline_value"] for b in bars)
    assert len({(b.unit, b.label, b.value) for b in bars}) == len(bars)


def test_plot_collects_baselines_once_and_skips_other_units(tmp_path):
    rows = [Row("train", "hf", 10.0, "tokens/s"),
            Row("train", "fast", 100.0, "tokens/s", "hf", 10.0),
            Row("gen", "fast", 50.0, "generated tok/s", "generate", 5.0),
            Row("gen", "fast 2", 40.0, "generated tok/s", "generate", 5.0),
            Row("train", "skipped", 0.0, "tokens/s"),
            Row("workload", "wall", 3.0, "s", "hf", 30.0, higher_is_better=False)]
    path = runner.write_results(rows, Context(), [], {}, out_dir=tmp_path)
    bars = plot.collect(plot.load([tmp_path]))
    got = [(b.unit, b.label, b.value, b.baseline) for b in bars]
    assert got == [("tokens/s", "train: hf", 10.0, True), ("tokens/s", "train: fast", 100.0, False),
                   ("generated tok/s", "gen: fast", 50.0, False), ("generated tok/s", "gen: generate", 5.0, True),
                   ("generated tok/s", "gen: fast 2", 40.0, False)]
    assert plot.plot(bars, tmp_path / "x.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no rows with units"):
        plot.plot([], tmp_path / "y.png")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a benchmark results file"):
        plot.load([bad])
    assert path.exists()


def test_one_demonstration_bound_is_the_longest_prompt_the_sampler_can_need():
    import numpy as np

    from arcfast.samples.sampling import SampleConfig, make_samples
    from arcfast.arc.task import Pair, Task

    big = np.zeros((30, 30), np.uint8)
    task = Task("big", [Pair(big, big) for _ in range(3)], [Pair(big, None)])
    fits = make_samples([task], 6, config=SampleConfig(max_len=bench_workload.ONE_DEMO_MAX))
    assert len(fits) == 6 and {len(s) for s in fits} == {bench_workload.ONE_DEMO_MAX}
    assert len(make_samples([task], 6, config=SampleConfig(max_len=bench_workload.ONE_DEMO_MAX - 1))) == 0


def test_the_unbalanced_order_puts_the_large_half_on_static_worker_zero(tmp_path):
    from arcfast.bench.bench_workload import unbalanced_tasks
    from arcfast.arc.loading import load_tasks

    root, order = unbalanced_tasks({"source": "arc1:eval[:20]", "queue_tasks": 7, "slow_tests": 3}, tmp_path / "t")
    cells = lambda t: sum(p.input.size + (p.output.size if p.output is not None else 0) for p in [*t.train, *t.test])
    assert len(order) == 7 and len({t.id for t in order}) == 7
    assert min(cells(t) for t in order[0::2][:3]) > max(cells(t) for t in order[1::2])
    full = {t.id: t for t in load_tasks("arc1:eval[:20]")}
    assert all(len(t.test) == 3 * len(full[t.id].test) for t in order[0::2][:3])   # the slow half
    assert all(len(t.test) == len(full[t.id].test) for t in order[1::2])
    loaded = load_tasks(str(root))   # the directory reads back in that order
    assert [t.id for t in loaded] == [f"{k:03d}-{t.id}" for k, t in enumerate(order)]
    assert [len(t.test) for t in loaded] == [len(t.test) for t in order]
