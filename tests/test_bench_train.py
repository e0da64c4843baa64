"""The training benchmark's cases run end to end on the CPU (tiny model) and report what they say."""
from __future__ import annotations

from arcfast.bench import bench_train
from arcfast.bench.runner import Context


def test_train_benchmark_quick_cpu():
    rows = bench_train.run(Context(quick=True, device="cpu", threads=1,
                                   options={"cases": "hf,hf-batch,native,native-graphs,many", "tasks": "2",
                                            "adapters": "3"}))
    by_case = {r.case.split(":")[0]: r for r in rows if r.unit == "tokens/s"}
    assert set(by_case) == {"hf", "hf-batch", "native", "native-graphs (skipped)", "many"}
    assert by_case["hf-batch"].extra["desc"].startswith("hf-batch: batch 2 (padded), vocab 16")
    bars = [r for r in rows if r.case.startswith("bar:")]
    assert [(r.case, r.bar) for r in bars] == [("bar: native vs hf, samples/s", 4.0)]
    assert bars[0].value > 0 and bars[0].baseline_value > 0
    assert by_case["native"].value > 0 and by_case["native"].baseline_value == by_case["hf"].value
    many = by_case["many"]
    assert many.bar == 0.9 and many.value > 0 and many.baseline_value > 0
    assert many.extra["single"]["tokens"] == many.extra["tokens"]   # the very same batches
    assert "GPU" in by_case["native-graphs (skipped)"].extra["reason"]


def test_train_benchmark_recipe_cases_run_nvarcs_lora_with_embedding_and_head_rows():
    """The -nvarc cases: r=256, rsLoRA, each task's own embedding and head rows, held against the
    same recipe in transformers+PEFT (hf-nvarc)."""
    rows = bench_train.run(Context(quick=True, device="cpu", threads=1,
                                   options={"cases": "hf-nvarc,native1-nvarc,native-nvarc,native-graphs-nvarc",
                                            "tasks": "2", "steps": "2", "hf_steps": "2", "max_len": "256"}))
    by_case = {r.case.split(":")[0]: r for r in rows if r.unit == "tokens/s"}
    assert set(by_case) == {"hf-nvarc", "native1-nvarc", "native-nvarc", "native-graphs-nvarc (skipped)"}
    for name in ("hf-nvarc", "native1-nvarc", "native-nvarc"):
        r = by_case[name]
        assert r.value > 0 and r.extra["lora"] == {"r": 256, "alpha": 32.0, "rslora": True,
                                                   "tokens": ["embed_tokens", "lm_head"]}
        assert "r=256 alpha 32 rsLoRA + embedding and head rows" in r.extra["desc"]
    assert by_case["hf-nvarc"].baseline_value is None
    assert by_case["native-nvarc"].baseline_value == by_case["hf-nvarc"].value
    assert ", vocab 16," in by_case["hf-nvarc"].extra["desc"] + ","
