"""`arcfast train`: mixture proportions, deterministic batches, resume == uninterrupted, budget, outputs,
and --full (a transformers checkpoint out, exact resume, a LoRA adapter merged in first)."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest
import torch

from arcfast.budget.clock import Deadline
from arcfast.arc.loading import load_tasks
from arcfast.train.checkpoints import CHECKPOINT as CHECKPOINT_DIR, find_checkpoint, load_checkpoint
from arcfast.run.train import FinetuneConfig, run_train
from arcfast.samples.mixture import MixtureStream, parse_mixture, source_schedule
from arcfast.cli.train import add_train_parser, cmd_train
from arcfast.lora.multi import LoRAConfig
from arcfast.model.checkpoint import load_model
from arcfast.samples.sampling import SampleConfig
from arcfast.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = 1024
SMALL = dict(model="tiny", rank=4, alpha=8.0, lr=3e-3, row_len=ROW, max_len=ROW, rows=1, warmup_ratio=0.2,
             val_batches=2, log_every=2, threads=1, progress=False, device="cpu", dtype="float32")


def parser():
    p = argparse.ArgumentParser(prog="arcfast")
    add_train_parser(p.add_subparsers(dest="command"))
    return p


def adapter_tensors(path):
    from arcfast.lora.adapters import load_adapter

    return load_adapter(path)[1]


def assert_adapters_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def test_parse_mixture():
    assert parse_mixture(["arc1:train=1.0", "barc.jsonl=0.5", "some/dir"]) == \
        [("arc1:train", 1.0), ("barc.jsonl", 0.5), ("some/dir", 1.0)]
    assert parse_mixture(["a=b=2"]) == [("a=b", 2.0)]
    for bad in (["x=abc"], ["x=0"], ["x=-1"], ["=1"], ["x=nan"], []):
        with pytest.raises(ValueError):
            parse_mixture(bad)


def test_source_schedule_proportions():
    # Realised shares over many segments match the weights (binomial: sd of the share ~0.006 here).
    w = [3.0, 1.0, 0.5]
    draws = np.concatenate([source_schedule(7, seg, 500, w) for seg in range(10)])
    share = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(share, np.array(w) / sum(w), atol=0.025)
    np.testing.assert_array_equal(source_schedule(7, 3, 500, w), source_schedule(7, 3, 500, w))
    assert not np.array_equal(source_schedule(7, 3, 500, w), source_schedule(7, 4, 500, w))


def test_mixture_stream_shares_determinism_and_skip_ahead():
    a = load_tasks("arc1:train[:6]")
    b = load_tasks("arc1:eval[:4]")
    cfg = SampleConfig(mode="pretrain", max_len=ROW)
    kw = dict(row_len=ROW, rows=1, segment_len=8, config=cfg)
    with MixtureStream([a, b], [3.0, 1.0], seed=5, **kw) as s:
        full = [next(s) for _ in range(200)]
        counts = s.counts.copy()
    ks = np.array([k for k, _ in full])
    np.testing.assert_array_equal(np.bincount(ks, minlength=2), counts)
    assert abs(counts[0] / 200 - 0.75) < 0.1          # sd of the share: 0.031
    for _, batch in full[:20]:
        assert set(np.unique(batch.adapter_ids)) <= {-1, 0} and (batch.adapter_ids == 0).any()
    # Restarting at step 13 (mid-segment) gives exactly the batches of the uninterrupted stream.
    with MixtureStream([a, b], [3.0, 1.0], seed=5, start_step=13, **kw) as s:
        for j in range(13, 30):
            k, batch = next(s)
            assert k == full[j][0]
            np.testing.assert_array_equal(batch.input_ids, full[j][1].input_ids)
            np.testing.assert_array_equal(batch.labels, full[j][1].labels)
    with MixtureStream([a, b], [3.0, 1.0], seed=6, **kw) as s:
        other = [next(s) for _ in range(10)]
    assert any(not np.array_equal(x[1].input_ids, y[1].input_ids) for x, y in zip(full, other))


def synthetic_source(name, side, n):
    """n tasks of 3 train + 1 test pairs whose grids are all side x side: every sample of the
    source has the same length, which tells the source apart from one of another side."""
    from arcfast.arc.task import Pair, Task

    rng = np.random.default_rng(side)
    def pair():
        return Pair(rng.integers(0, 10, (side, side)).astype(np.uint8), rng.integers(0, 10, (side, side)).astype(np.uint8))
    return [Task(f"{name}{i}", [pair() for _ in range(3)], [pair()]) for i in range(n)]


def test_batches_hold_only_their_source_tasks():
    a, b = synthetic_source("a", 2, 5), synthetic_source("b", 5, 5)
    cfg = SampleConfig(mode="pretrain", max_len=256)
    lengths = {}
    with MixtureStream([a, b], [1.0, 1.0], seed=1, row_len=256, segment_len=7, config=cfg) as s:
        for _ in range(30):
            k, batch = next(s)
            for sid in range(batch.n_samples):
                lengths.setdefault(k, set()).add(int((batch.sample_ids == sid).sum()))
    assert set(lengths) == {0, 1}
    assert len(lengths[0]) == 1 and len(lengths[1]) == 1 and lengths[0] != lengths[1]


def _cfg(tmp_path, name, **kw):
    kw = {"data": ["arc1:train[:8]=2", "arc1:eval[:4]=1"], "val": "arc1:eval[4:7]", **SMALL, **kw}
    return FinetuneConfig(out=str(tmp_path / name), **kw)


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    steps, every = 8, 3
    full = run_train(_cfg(tmp_path, "full", steps=steps, save_every=every))
    assert full["steps"] == steps and full["stopped"] == "steps"

    class Crash(RuntimeError):
        pass

    def crash(step, stats):
        if step == 7:   # after the checkpoint at 6; step 7 is lost
            raise Crash
        return False

    with pytest.raises(Crash):
        run_train(_cfg(tmp_path, "part", steps=steps, save_every=every), on_step=crash)
    ck = find_checkpoint(tmp_path / "part")
    assert ck is not None and load_checkpoint(ck)["step"] == 6
    assert not (tmp_path / "part" / "adapter").exists()

    # Resume through the command line, as a user would.
    args = parser().parse_args(["train", "--data", "arc1:train[:8]=2", "--data", "arc1:eval[:4]=1",
                                "--val", "arc1:eval[4:7]", "--out", str(tmp_path / "part"), "--resume",
                                "--steps", str(steps), "--save-every", str(every), "--model", "tiny",
                                "--rank", "4", "--alpha", "8", "--lr", "3e-3", "--row-len", str(ROW),
                                "--max-len", str(ROW), "--warmup-ratio", "0.2", "--val-batches", "2",
                                "--log-every", "2", "--threads", "1", "--device", "cpu", "--dtype", "float32",
                                "-q"])
    assert args.func is cmd_train
    assert cmd_train(args) == 0
    resumed = json.loads((tmp_path / "part" / "run.json").read_text())
    assert resumed["start_step"] == 6 and resumed["steps"] == steps

    a_full = adapter_tensors(tmp_path / "full" / "adapter")
    assert_adapters_close(adapter_tensors(tmp_path / "part" / "adapter"), a_full)
    # The adapter moved away from its start (B starts at zero), so the comparison means something.
    assert max(float(b.abs().max()) for _, b in a_full.values()) > 1e-4
    # A different seed gives a different adapter (the test can fail).
    other = run_train(_cfg(tmp_path, "other", steps=steps, save_every=every, seed=1))
    with pytest.raises(AssertionError):
        assert_adapters_close(adapter_tensors(other["adapter"]), a_full)

    # The log: train lines with loss and throughput, val lines at 0, 3, 6 and the end.
    lines = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    vals = [x["step"] for x in lines if x["event"] == "val"]
    assert vals == [0, 3, 6, 8]
    train = [x for x in lines if x["event"] == "train"]
    assert [x["step"] for x in train] == [2, 4, 6, 8]
    assert all(np.isfinite(x["loss"]) and x["tokens_per_s"] > 0 for x in train)
    assert sum(train[-1]["source_batches"]) == steps
    assert np.isfinite(full["val_loss"])


def test_final_adapter_loads_into_trainer_and_matches(tmp_path):
    s = run_train(_cfg(tmp_path, "a", steps=3, save_every=0, val=None))
    model = load_model("tiny", dtype=torch.float32, device="cpu")
    tr = Trainer(model, LoRAConfig(r=4, alpha=8.0), TrainConfig(steps=5), n_adapters=2)
    tr.load_adapter([1], s["adapter"])
    saved = adapter_tensors(s["adapter"])
    got = tr.lora.get(1)
    assert_adapters_close({k: tuple(t.float() for t in v) for k, v in got.items()}, saved)
    # And training can continue from it (--adapter): the run starts from those weights.
    s2 = run_train(_cfg(tmp_path, "b", steps=1, save_every=0, val=None, adapter=s["adapter"], lr=0.0))
    assert_adapters_close(adapter_tensors(s2["adapter"]), saved)


def test_resume_refuses_other_batch_settings(tmp_path):
    run_train(_cfg(tmp_path, "r", steps=2, save_every=1, val=None))
    with pytest.raises(ValueError, match="seed"):
        run_train(_cfg(tmp_path, "r", steps=4, save_every=1, val=None, seed=3, resume=True))


def test_budget_stops_saves_and_resumes(tmp_path):
    # A fake clock advanced 1 s per step: a 10 s budget with no margin stops after a few steps.
    now = [0.0]
    deadline = Deadline(10.0, margin=0.0, start=0.0, clock=lambda: now[0])

    def tick(step, stats):
        now[0] += 1.0
        return False

    s = run_train(_cfg(tmp_path, "b", steps=100, save_every=50, val=None), deadline=deadline, on_step=tick)
    assert s["stopped"] == "budget" and 3 <= s["steps"] <= 10   # 1 s of fake time per step
    assert load_checkpoint(find_checkpoint(tmp_path / "b"))["step"] == s["steps"]
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").exists()

    # Resume from that mid-segment step and stop at n + 3: the same adapter as one run stopped there.
    n = s["steps"]
    r = run_train(_cfg(tmp_path, "b", steps=100, save_every=50, val=None, resume=True),
                  on_step=lambda step, st: step >= n + 3)
    assert r["start_step"] == n and r["steps"] == n + 3 and r["stopped"] == "requested"
    one = run_train(_cfg(tmp_path, "one", steps=100, save_every=50, val=None), on_step=lambda step, st: step >= n + 3)
    assert_adapters_close(adapter_tensors(r["adapter"]), adapter_tensors(one["adapter"]))


def test_cli_budget_wall_time(tmp_path):
    # Real clock: the run (loading included) ends, everything written, before the budget.
    args = parser().parse_args(["train", "--data", "arc1:train[:6]", "--out", str(tmp_path / "w"), "--steps",
                                "100000", "--save-every", "1000", "--budget", "14s", "--model", "tiny",
                                "--rank", "4", "--alpha", "8", "--row-len", "512", "--max-len", "512",
                                "--threads", "1", "--device", "cpu", "--dtype", "float32", "-q"])
    t0 = time.monotonic()
    assert cmd_train(args) == 0
    assert time.monotonic() - t0 < 14.0
    s = json.loads((tmp_path / "w" / "run.json").read_text())
    assert s["stopped"] == "budget" and s["steps"] > 0
    assert (tmp_path / "w" / "adapter" / "adapter_config.json").exists()


# ----------------------------------------------------------------------------------------------
# --full: every weight trained, a transformers checkpoint out

def model_weights(path):
    """The weights of the checkpoint directory ``path`` as load_model reads them (fp32, CPU)."""
    return load_model(str(path), dtype=torch.float32, device="cpu").state_dict()


def assert_weights_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def test_full_run_writes_a_transformers_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = run_train(_cfg(tmp_path, "f", full=True, steps=3, save_every=2, val_batches=1))
    out = tmp_path / "f"
    assert s["model"] == str(out / "model") and "adapter" not in s
    assert json.loads((out / "run.json").read_text())["model"] == s["model"]
    assert not (out / "adapter").exists() and not (out / CHECKPOINT_DIR / "adapter").exists()
    assert (out / CHECKPOINT_DIR / "model" / "config.json").exists()
    assert np.isfinite(s["val_loss"]) and s["steps"] == 3

    # load_model reads back the trained weights: the checkpoint's fp32 masters, moved from the start.
    state = load_checkpoint(find_checkpoint(out))
    assert state["step"] == 3 and state["settings"]["full"] is True and "rank" not in state["settings"]
    trained = model_weights(s["model"])
    assert_weights_close(trained, state["trainer"]["weights"], atol=0)
    start = load_model("tiny", dtype=torch.float32, device="cpu").state_dict()
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-3

    # transformers reads it as it is (compact tokenizer included) and computes the same logits.
    ours = load_model(s["model"], dtype=torch.float32, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(s["model"])
    tok = AutoTokenizer.from_pretrained(s["model"])
    ids = torch.as_tensor([[1] + tok.encode("120\n305\n", add_special_tokens=False)])
    assert ids[0, 1:4].tolist() == [1, 2, 0]
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours.logits(ours(ids)), rtol=1e-4, atol=1e-5)


def test_full_resume_equals_uninterrupted_and_keeps_its_mode(tmp_path):
    kw = dict(full=True, steps=6, save_every=2, val=None)
    straight = run_train(_cfg(tmp_path, "u", **kw))
    part = run_train(_cfg(tmp_path, "p", **kw), on_step=lambda step, st: step >= 3)
    assert part["stopped"] == "requested" and part["steps"] == 3
    assert load_checkpoint(find_checkpoint(tmp_path / "p"))["step"] == 3    # mid-segment
    at3 = model_weights(part["model"])
    resumed = run_train(_cfg(tmp_path, "p", resume=True, **kw))
    assert resumed["start_step"] == 3 and resumed["steps"] == 6
    final = model_weights(resumed["model"])
    assert_weights_close(final, model_weights(straight["model"]))
    assert max(float((final[k] - at3[k]).abs().max()) for k in final) > 1e-4   # steps 4-6 did train

    # A full checkpoint is not resumed as a LoRA run.
    with pytest.raises(ValueError, match="full run and cannot be resumed without --full"):
        run_train(_cfg(tmp_path, "p", resume=True, **{**kw, "full": False}))


def test_resume_refuses_a_lora_checkpoint_with_full(tmp_path):
    run_train(_cfg(tmp_path, "l", steps=2, save_every=1, val=None))
    with pytest.raises(ValueError, match=r"LoRA run and cannot be resumed with --full.*--full --adapter"):
        run_train(_cfg(tmp_path, "l", steps=4, save_every=1, val=None, full=True, resume=True))


def test_full_from_a_lora_adapter_starts_from_the_merged_weights(tmp_path):
    from arcfast.lora.adapters import merge_adapter

    lora = run_train(_cfg(tmp_path, "lora", steps=3, save_every=0, val=None, lr=1e-2))
    s = run_train(_cfg(tmp_path, "full", steps=1, save_every=0, val=None, full=True, adapter=lora["adapter"],
                       lr=0.0))
    merged = load_model("tiny", dtype=torch.float32, device="cpu")
    plain = {k: v.clone() for k, v in merged.state_dict().items()}
    merge_adapter(merged, lora["adapter"])
    got = model_weights(s["model"])
    assert_weights_close(got, merged.state_dict())
    assert max(float((got[k] - plain[k]).abs().max()) for k in got) > 1e-4   # the adapter was not a no-op


def test_cli_full_train_then_ttft_on_its_model(tmp_path, capsys):
    from arcfast.cli import main
    from arcfast.answers.submission import validate_submission

    out = tmp_path / "pre"
    assert main(["train", "--full", "--data", "arc1:train[:4]", "--out", str(out), "--steps", "2",
                 "--save-every", "0", "--model", "tiny", "--row-len", "1024", "--max-len", "1024",
                 "--threads", "1", "--device", "cpu", "--dtype", "float32", "-q"]) == 0
    printed = capsys.readouterr().out
    assert f"model: {out / 'model'}" in printed and "adapter:" not in printed
    run = tmp_path / "ttft"
    assert main(["ttft", "--tasks", "arc1:eval[:1]", "--model", str(out / "model"), "--budget", "40s",
                 "--out", str(run), "--steps", "1", "--predictions", "1", "--max-new-tokens", "8",
                 "--row-len", "4096", "--max-len", "4096", "-q"]) == 0
    assert "random weights" not in capsys.readouterr().out     # it ran the trained checkpoint
    validate_submission(run / "submission.json", load_tasks("arc1:eval[:1]"))


def test_keep_snapshots_keeps_the_weights_of_every_checkpoint(tmp_path):
    s = run_train(_cfg(tmp_path, "k", full=True, steps=5, save_every=2, val=None, keep_snapshots=True))
    snaps = tmp_path / "k" / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["step-2", "step-4", "step-5"]
    # The last snapshot is the final model; the earlier ones differ from it (training moved them).
    final = model_weights(s["model"])
    assert_weights_close(model_weights(snaps / "step-5"), final, atol=0)
    assert max(float((model_weights(snaps / "step-2")[k] - final[k]).abs().max()) for k in final) > 1e-4
    assert load_model(str(snaps / "step-2"), dtype=torch.float32, device="cpu") is not None
    # Without the flag there are none.
    run_train(_cfg(tmp_path, "n", full=True, steps=2, save_every=1, val=None))
    assert not (tmp_path / "n" / "snapshots").exists()


def test_train_with_the_verify_objective_and_wrong_predictions(tmp_path):
    """--objective verify on a 16-id model grows it; --wrong-from feeds an eval run's wrong
    predictions to the sampler (counted in the log); a resume needs the same objectives."""
    from arcfast.run.outdir import OutDir

    tasks = load_tasks("arc1:train[:3]")
    run = OutDir(tmp_path / "eval")
    for t in tasks:   # each test input answered wrongly once: its input
        path = run.task_file(t.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task_id": t.id, "fingerprint": t.fingerprint(),
                                    "candidates": [[{"grid": q.input.tolist()}] for q in t.test]}))
    cfg = _cfg(tmp_path, "v", steps=6, save_every=3, val=None, data=["arc1:train[:3]=1"], full=True, log_every=1,
               objectives=(("output", 1.0), ("verify", 1.0)), wrong_from=(str(tmp_path / "eval"),))
    run_train(cfg)
    events = [json.loads(line) for line in (tmp_path / "v" / "log.jsonl").read_text().splitlines()]
    (wrong,) = [e for e in events if e.get("event") == "wrong_predictions"]
    assert wrong["records"] == 3 and wrong["grids"] == sum(len(t.test) for t in tasks)
    assert [e["vocab_size"] for e in events if e.get("event") == "grow_vocab"] == [20]
    # each objective's loss logged apart; the interval's loss lies between its objectives' losses
    train = [e for e in events if e.get("event") == "train"]
    assert {o for e in train for o in e["objective_loss"]} == {"output", "verify"}, train
    for e in train:
        lo, hi = min(e["objective_loss"].values()), max(e["objective_loss"].values())
        assert lo - 1e-5 <= e["loss"] <= hi + 1e-5
    model = load_model(str(tmp_path / "v" / "model"), device="cpu", dtype=torch.float32)
    assert model.config.vocab_size == 20 and model.config.has_objective_ids
    with pytest.raises(ValueError, match="objectives"):
        run_train(_cfg(tmp_path, "v", steps=4, save_every=1, val=None, data=["arc1:train[:3]=1"], full=True,
                       resume=True))


def test_rslora_flag_reaches_the_config():
    from arcfast.cli.train import config_from_args

    assert config_from_args(parser().parse_args(["train", "--rank", "256", "--rslora"])).rslora is True
    assert config_from_args(parser().parse_args(["train", "--rank", "256"])).rslora is False


def test_rslora_reaches_the_adapter_and_a_resume_keeps_it(tmp_path):
    assert run_train(_cfg(tmp_path, "rs", steps=2, save_every=1, val=None, rslora=True))["steps"] == 2
    cfg = json.loads((tmp_path / "rs" / "adapter" / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is True and cfg["r"] == 4
    with pytest.raises(ValueError, match="rslora: True -> False"):
        run_train(_cfg(tmp_path, "rs", steps=3, save_every=1, val=None, resume=True))
    assert "rslora" not in FinetuneConfig(full=True).batch_settings()    # no LoRA in a full run


def test_train_tokens_reach_the_adapter_and_a_full_run_merges_them(tmp_path):
    """`train --train-tokens both`: the adapter carries its own embedding and head rows (PEFT's
    modules_to_save), a resume keeps the setting, and `--full --adapter` starts from them merged
    (the tied head untied: the saved model has its own lm_head)."""
    from arcfast.cli.train import config_from_args

    args = parser().parse_args(["train", "--train-tokens", "both", "--embedding-lr", "1e-3"])
    assert config_from_args(args).tokens == ("embed_tokens", "lm_head") and config_from_args(args).embedding_lr == 1e-3
    s = run_train(_cfg(tmp_path, "tok", steps=2, save_every=1, val=None, lr=1e-2, tokens=("embed_tokens", "lm_head")))
    cfg = json.loads((tmp_path / "tok" / "adapter" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["embed_tokens", "lm_head"]
    with pytest.raises(ValueError, match="tokens"):
        run_train(_cfg(tmp_path, "tok", steps=3, save_every=1, val=None, resume=True))
    full = run_train(_cfg(tmp_path, "full", steps=1, save_every=0, val=None, full=True, adapter=s["adapter"], lr=0.0))
    got = model_weights(full["model"])
    base = load_model("tiny", dtype=torch.float32, device="cpu")
    assert "lm_head.weight" in got and not torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])
    assert (got["model.embed_tokens.weight"] - base.model.embed_tokens.weight).abs().max() > 1e-4
