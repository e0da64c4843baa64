"""The command line end to end on the CPU: tiny model, bundled tasks, real budgets."""
import json
import time

import numpy as np
import pytest

from arcfast import load_tasks
from arcfast.cli import main
from arcfast.answers.submission import validate_submission
from scripted import ScriptedGenerator, turn


def test_validate_bundled_set(capsys):
    assert main(["validate", "arc1:eval[:20]"]) == 0
    out = capsys.readouterr().out
    assert "20 tasks" in out and "round-trip failures: 0" in out


def test_validate_reports_bad_task_and_loads_the_rest(tmp_path, capsys):
    d = tmp_path / "tasks"
    d.mkdir()
    good = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]], "output": [[4]]}]}
    bad = {"train": [{"input": [[1, 10]], "output": [[2]]}], "test": [{"input": [[3]]}]}
    (d / "good.json").write_text(json.dumps(good))
    (d / "bad.json").write_text(json.dumps(bad))
    assert main(["validate", str(d)]) == 0
    out = capsys.readouterr().out
    assert "1 tasks" in out
    assert "bad.json" in out and "task bad" in out and "row 0" in out


@pytest.mark.slow
def test_ttft_finishes_inside_a_60s_budget_with_complete_outputs(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["ttft", "--tasks", "arc1:eval[:3]", "--model", "tiny", "--budget", "60s", "--out", str(out),
               "--steps", "4", "--predictions", "2", "--row-len", "4096", "--max-len", "4096", "-q"])
    wall = time.monotonic() - t0
    assert rc == 0
    assert wall < 60, f"ran {wall:.1f}s for a 60s budget"
    tasks = load_tasks("arc1:eval[:3]")
    validate_submission(out / "submission.json", tasks)
    for t in tasks:
        adapter = out / "adapters" / t.id
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        rec = json.loads((out / "tasks" / f"{t.id}.json").read_text())
        assert rec["steps"] >= 1 and rec["train_tokens"] > 0
        assert rec["predictions"] == [2] * len(t.test)
    report = json.loads((out / "report.json").read_text())
    assert {r["task_id"] for r in report["tasks"]} == {t.id for t in tasks}
    assert (out / "report.png").stat().st_size > 1000
    steps = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert any(s.get("event") == "step" and s["tokens_per_s"] > 0 for s in steps)


def _results(out) -> dict:
    """Every per-task result of a run (tasks/*.json), by the task id each file holds."""
    recs = [json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")]
    by_id = {r["task_id"]: r for r in recs}
    assert len(by_id) == len(recs)
    return by_id


def _scripted_entry(test_input, rec_attempts) -> dict:
    """The submission entry of one test input of a run with the scripted generator (rule ``turn``):
    its answer where the task's result holds one, the fallback (the input itself) elsewhere."""
    fallback = test_input.tolist()
    answer = turn(test_input).tolist()
    assert answer != fallback   # else the answer could not be told from the fallback
    assert rec_attempts in ([], [answer])   # one grid from every augmentation, or none parsed
    return {"attempt_1": rec_attempts[0] if rec_attempts else fallback, "attempt_2": fallback}


@pytest.mark.slow
def test_ttft_cut_short_still_leaves_a_valid_submission(tmp_path, monkeypatch):
    """A budget too small to train everything: every task and test input is still answered, with
    the model's answer where the run got to predict it and the fallback elsewhere. The scripted
    generator's answers are known, so the submission is checked grid by grid."""
    import arcfast.infer.generate

    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["ttft", "--tasks", "arc1:eval[:10]", "--model", "tiny", "--budget", "15s", "--out", str(out), "--steps", "50",
               "--tasks-per-group", "2", "--predictions", "2", "--row-len", "4096", "--max-len", "4096", "-q"])
    assert rc == 0
    assert time.monotonic() - t0 < 15
    tasks = load_tasks("arc1:eval[:10]")
    sub = validate_submission(out / "submission.json", tasks)
    results = _results(out)
    assert set(results) <= {t.id for t in tasks}
    # Cut short: no task got its 50 steps.
    assert all(r["steps"] < 50 for r in results.values())
    answered = 0
    for t in tasks:
        attempts = results[t.id]["attempts"] if t.id in results else []
        assert attempts == [] or len(attempts) == len(t.test)
        for i, q in enumerate(t.test):
            rec = attempts[i] if attempts else []
            assert sub[t.id][i] == _scripted_entry(q.input, rec), (t.id, i)
            answered += bool(rec)
    # The file was rewritten with predictions after the model ran, not only the initial fallbacks.
    assert answered >= 1


def test_ttft_resume_keeps_finished_tasks(tmp_path, monkeypatch):
    """A resumed run re-runs nothing and submits the answers the first run found (the scripted
    generator's; the resumed run's generator would answer otherwise)."""
    from functools import partial

    import arcfast.infer.generate

    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    out = tmp_path / "run"
    args = ["ttft", "--tasks", "arc1:eval[:2]", "--model", "tiny", "--budget", "40s", "--out", str(out), "--steps", "1",
            "--predictions", "1", "--row-len", "4096", "--max-len", "4096", "-q"]
    assert main(args) == 0
    tasks = load_tasks("arc1:eval[:2]")
    want = {t.id: [_scripted_entry(q.input, [turn(q.input).tolist()]) for q in t.test] for t in tasks}
    assert json.loads((out / "submission.json").read_text()) == want
    first = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    assert len(first) == 2
    monkeypatch.setattr(arcfast.infer.generate, "Generator", partial(ScriptedGenerator, rule=lambda x: x))
    assert main(args + ["--resume"]) == 0
    again = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    assert again == first   # nothing re-run, nothing rewritten
    run = json.loads((out / "run.json").read_text())
    assert run["trained"] == 2 and run["tasks_this_rank"] == 2
    assert json.loads((out / "submission.json").read_text()) == want   # the kept answers, not fallbacks


def test_eval_scores_and_refuses_tasks_without_solutions(tmp_path, capsys, monkeypatch):
    """Scored against known answers: the scripted generator answers the half turn of every test
    input, right for one task and wrong (another shape) for the other, so each metric is 1/2 (0
    unanswered)."""
    import arcfast.infer.generate

    monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)
    solved = tmp_path / "solved"
    solved.mkdir()
    x = np.array([[1, 2, 3], [4, 5, 0]])
    train = [{"input": [[1, 2]], "output": [[2, 1]]}, {"input": [[3], [4]], "output": [[4], [3]]}]
    for name, solution in (("right", turn(x).tolist()), ("wrong", [[0]])):
        (solved / f"{name}.json").write_text(json.dumps({"train": train, "test": [{"input": x.tolist(),
                                                                                     "output": solution}]}))
    out = tmp_path / "eval"
    assert main(["eval", "--tasks", str(solved), "--model", "tiny", "--out", str(out), "--predictions", "4", "-q"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["trained"] == 0
    assert run["metrics"] == {"accuracy": 0.5, "correct_pixels": 0.5, "correct_size": 0.5, "pass_n": 0.5,
                              "vote_1": 0.5, "vote_2": 0.5, "unanswered": 0.0}
    results = _results(out)
    assert results["right"]["metrics"]["accuracy"] == 1.0 and results["wrong"]["metrics"]["accuracy"] == 0.0
    assert "| accuracy |" in capsys.readouterr().out
    assert not (out / "adapters").exists()   # nothing trained, nothing saved
    from arcfast.run.html import RunView   # eval's report.html: no group trained, every task scored

    view = RunView.read(out)
    assert (out / "report.html").is_file() and {r["id"]: r["status"] for r in view.rows()} == {
        "right": "solved", "wrong": "unsolved"}
    assert [p[0] for g in view.timeline()["groups"] for p in g["phases"]][:2] == ["train", "predict"]
    d = tmp_path / "nosol"
    d.mkdir()
    (d / "t.json").write_text(json.dumps({"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}))
    assert main(["eval", "--tasks", str(d), "--out", str(tmp_path / "e2")]) == 2
    assert "needs solutions" in capsys.readouterr().err


@pytest.mark.slow
def test_ttft_under_torchrun_shards_tasks_and_merges_the_submission(tmp_path):
    """Two CPU processes (gloo), each with the scripted generator, --sharding static: each trains
    and answers half the tasks; rank 0 merges one complete submission that holds every rank's
    (known) answers."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist"
    script = Path(__file__).with_name("scripted.py")   # the arcfast command line, scripted generator
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script), "ttft", "--tasks", "arc1:eval[:4]", "--model", "tiny", "--budget", "90s",
           "--out", str(out), "--steps", "2", "--predictions", "2", "--row-len", "4096", "--max-len", "4096",
           "--sharding", "static", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = load_tasks("arc1:eval[:4]")
    merged = validate_submission(out / "submission.json", tasks)
    ranks = [json.loads((out / f"run.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["tasks_this_rank"] for r in ranks] == [2, 2]
    assert [r["trained"] for r in ranks] == [4, 2]   # rank 0 speaks for the run once merged
    results = _results(out)
    assert set(results) == {t.id for t in tasks}
    assert len(list((out / "adapters").glob("*/adapter_model.safetensors"))) == len(tasks)
    report = json.loads((out / "report.json").read_text())
    assert {r["task_id"] for r in report["tasks"]} == {t.id for t in tasks}
    want = {}
    for t in tasks:
        # Every test input answered: the half turn of its input, from both augmentations.
        assert results[t.id]["attempts"] == [[turn(q.input).tolist()] for q in t.test], t.id
        assert results[t.id]["votes"] == [2] * len(t.test)
        want[t.id] = [_scripted_entry(q.input, a) for q, a in zip(t.test, results[t.id]["attempts"])]
    for r in (0, 1):   # each rank's part holds its own tasks, answered, and no other task
        part = json.loads((out / "parts" / f"rank{r}.json").read_text())
        assert part == {t.id: want[t.id] for t in tasks[r::2]}
    assert merged == want   # every rank's answers made it into the merged file


@pytest.mark.slow
def test_ttft_workers_pull_tasks_from_one_queue(tmp_path):
    """--workers 2 on the CPU: two processes wired as under torchrun take tasks from the shared
    queue (longest first, an even share per claim); every task is claimed once, trained once and
    answered once, and rank 0 merges one submission and speaks for the whole run."""
    import os
    import subprocess
    import sys

    from arcfast.run.queue import longest_first

    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "arcfast", "ttft", "--workers", "2", "--tasks", "arc1:eval[:6]", "--model", "tiny",
           "--budget", "3m", "--out", str(out), "--steps", "2", "--predictions", "2", "--max-new-tokens", "8", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = load_tasks("arc1:eval[:6]")
    validate_submission(out / "submission.json", tasks)
    claimed = {}
    for r in (0, 1):
        for line in (out / f"log.rank{r}.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e.get("event") == "claimed":
                claimed.setdefault(r, []).extend(e["tasks"])
    everything = claimed.get(0, []) + claimed.get(1, [])
    assert sorted(everything) == sorted(t.id for t in tasks)          # once each
    assert claimed.get(0) and claimed.get(1)                         # both worked
    order = [t.id for t in longest_first(tasks)]
    assert order[0] in (claimed[0][0], claimed[1][0])                 # ticket 0: the longest task
    ranks = [json.loads((out / f"run.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["sharding"] for r in ranks] == ["queue", "queue"]
    assert [r["tasks_this_rank"] for r in ranks] == [len(claimed[0]), len(claimed[1])]
    assert ranks[0]["trained"] == len(tasks) and ranks[1]["trained"] == len(claimed[1])
    assert set(_results(out)) == {t.id for t in tasks}
    # report.html, by rank 0, holds every task and each worker's groups on the time line.
    from arcfast.run.html import RunView

    assert (out / "report.html").is_file()
    view = RunView.read(out)
    assert sorted(view.records) == sorted(t.id for t in tasks) and not view.header()["interrupted"]
    groups = view.timeline()["groups"]
    assert sorted(t for g in groups for t in g["tasks"]) == sorted(everything)
    assert {g["label"].split(" group")[0] for g in groups} == {"rank 0", "rank 1"}


# -- re-scoring --------------------------------------------------------------------------------

def _bigram_checkpoint(path):
    """A model whose next token depends only on the current one: OUTPUT -> 3 -> ROW -> EOG (every
    other token -> EOG). Its every answer is the 1x1 grid [[3]] in the prompt's frame, so colour-
    permuted predictions invert to distinct grids: candidates for re-scoring, from a real forward."""
    import dataclasses

    import torch

    from arcfast.arc import vocab as T
    from arcfast.model.decoder import build_model
    from arcfast.model.config import preset
    from arcfast.model.checkpoint import save_model

    m = build_model(dataclasses.replace(preset("tiny"), tie_embeddings=False), dtype=torch.float32, device="cpu")
    nxt = {T.OUTPUT: 3, 3: T.ROW, T.ROW: T.EOG}
    with torch.no_grad():
        # Attention and MLP add nothing: the last hidden state is the current token's embedding.
        for blk in m.model.layers:
            blk.self_attn.o_proj.weight.zero_()
            blk.mlp.down_proj.weight.zero_()
        m.model.embed_tokens.weight.zero_()
        m.lm_head.weight.zero_()
        m.model.norm.weight.fill_(1.0)
        for t in range(T.VOCAB_SIZE):
            m.model.embed_tokens.weight[t, t] = 1.0
            m.lm_head.weight[nxt.get(t, T.EOG), t] = 2.0   # a logit margin of 16 after the norm
    return save_model(m, path)


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    return _bigram_checkpoint(tmp_path_factory.mktemp("bigram") / "model")


def _checked_rescore(rec, m: int, top: int = 8, chosen: str = "poe") -> int:
    """Asserts every test input's candidate records are well formed and that the submitted attempts
    are the ``chosen`` selector's first two; returns how many test inputs were scored."""
    n = 0
    for ti, cands in enumerate(rec["candidates"]):
        assert [c["rank"]["vote"] for c in cands] == list(range(len(cands)))   # records in voting order
        assert [c["count"] for c in cands] == sorted((c["count"] for c in cands), reverse=True)
        assert sum(c["count"] for c in cands) <= rec["predictions"][ti]
        scored = [c for c in cands if c["logprobs"] is not None]
        if not scored:
            continue
        n += 1
        assert len(cands) >= 2 and len(scored) == min(top, len(cands)) and scored == cands[:len(scored)]
        assert all(len(c["logprobs"]) == m and all(x <= 0 for x in c["logprobs"]) for c in scored)
        for s in ("vote", "poe", "nvarc"):
            assert sorted(c["rank"][s] for c in cands) == list(range(len(cands)))
        poe = sorted(scored, key=lambda c: c["rank"]["poe"])
        sums = [sum(c["logprobs"]) for c in poe]
        assert sums == sorted(sums, reverse=True)
        nv = sorted(scored, key=lambda c: c["rank"]["nvarc"])
        keys = [c["count"] + sum(c["logprobs"]) / m for c in nv]
        assert keys == sorted(keys, reverse=True)
        first = sorted(cands, key=lambda c: c["rank"][chosen])
        assert rec["attempts"][ti] == [c["grid"] for c in first[:2]]
        assert rec["votes"][ti] == first[0]["count"]
    return n


def test_ttft_rescore_writes_scores_to_the_task_results_and_report(tmp_path, bigram):
    out = tmp_path / "run"
    assert main(["ttft", "--tasks", "arc1:eval[:2]", "--model", str(bigram), "--budget", "40s", "--out", str(out),
                 "--steps", "1", "--predictions", "4", "--rescore", "2", "--rescore-top", "3",
                 "--row-len", "4096", "--max-len", "4096", "-q"]) == 0
    tasks = load_tasks("arc1:eval[:2]")
    validate_submission(out / "submission.json", tasks)
    sub = json.loads((out / "submission.json").read_text())
    rescored = 0
    for t in tasks:
        rec = json.loads((out / "tasks" / f"{t.id}.json").read_text())
        rescored += _checked_rescore(rec, m=2, top=3)
        for ti, attempts in enumerate(rec["attempts"]):
            assert attempts and sub[t.id][ti]["attempt_1"] == attempts[0]
        assert set(rec["selection"]) == {"vote", "poe", "nvarc"}   # arc1:eval ships its outputs
        assert all(set(c["found_by"]) == {"greedy"} for cands in rec["candidates"] for c in cands)
    assert rescored >= 2
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "rescore" and e["test_inputs"] == rescored for e in events)
    assert json.loads((out / "run.json").read_text())["select"] == "poe"


def test_eval_rescore_ranks_by_the_summed_teacher_forced_score(tmp_path, bigram):
    from arcfast.arc.augment import test_time_augmentations
    from arcfast.model.checkpoint import load_model
    from arcfast.reference.score import score_item_reference

    out = tmp_path / "eval"
    assert main(["eval", "--tasks", "arc1:train[:1]", "--model", str(bigram), "--out", str(out),
                 "--predictions", "4", "--rescore", "3", "-q"]) == 0
    (task,) = load_tasks("arc1:train[:1]")
    rec = json.loads((out / "tasks" / f"{task.id}.json").read_text())
    assert _checked_rescore(rec, m=3) >= 1 and rec["metrics"] is not None
    model = load_model(str(bigram))
    augs = test_time_augmentations(task, 3, seed=1)   # the run's seed 0, plus one
    for ti, cands in enumerate(rec["candidates"]):
        for c in cands:
            if c["logprobs"] is not None:   # each score recomputed alone
                want = [score_item_reference(model, task, ti, np.array(c["grid"]), a) for a in augs]
                assert c["logprobs"] == pytest.approx(want, abs=1e-3)


def test_ttft_rescore_with_nothing_parsed_keeps_the_fallbacks(tmp_path, bigram):
    from arcfast.answers.submission import fallback_grid

    out = tmp_path / "run"
    # Two tokens ("3", ROW) hold no grid: every prediction of every test input fails to parse.
    assert main(["ttft", "--tasks", "arc1:eval[:1]", "--model", str(bigram), "--budget", "30s", "--out", str(out),
                 "--steps", "1", "--predictions", "2", "--max-new-tokens", "2", "--rescore", "2",
                 "--row-len", "4096", "--max-len", "4096", "-q"]) == 0
    (task,) = load_tasks("arc1:eval[:1]")
    validate_submission(out / "submission.json", [task])
    rec = json.loads((out / "tasks" / f"{task.id}.json").read_text())
    assert rec["attempts"] == [[]] * len(task.test) and rec["candidates"] == [[]] * len(task.test)
    sub = json.loads((out / "submission.json").read_text())
    for ti in range(len(task.test)):
        assert sub[task.id][ti] == {"attempt_1": fallback_grid(task, ti), "attempt_2": fallback_grid(task, ti)}


def test_eval_dfs_nvarc_reports_every_selector_on_the_same_candidates(tmp_path, bigram, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--tasks", "arc1:train[:2]", "--model", str(bigram), "--out", str(out),
                 "--predictions", "3", "--search", "dfs", "--min-prob", "0.05", "--select", "nvarc",
                 "--rescore", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "nvarc (submitted)" in printed and "poe" in printed
    tasks = load_tasks("arc1:train[:2]")
    report = json.loads((out / "report.json").read_text())
    selections, scored = [], 0
    for t in tasks:
        rec = json.loads((out / "tasks" / f"{t.id}.json").read_text())
        scored += _checked_rescore(rec, m=2, chosen="nvarc")
        assert all(set(c["found_by"]) == {"dfs"} for cands in rec["candidates"] for c in cands)
        assert rec["candidates"] and all(rec["candidates"])
        # The selection written is what each selector's first two candidates score, from the records.
        want = {}
        for s in ("vote", "poe", "nvarc"):
            hits = [[c["grid"] == q.output.tolist() for c in sorted(cands, key=lambda c: c["rank"][s])[:2]]
                    for q, cands in zip(t.test, rec["candidates"])]
            want[s] = {"vote_1": sum(any(h[:1]) for h in hits) / len(hits),
                       "vote_2": sum(any(h) for h in hits) / len(hits)}
        assert rec["selection"] == want
        assert rec["metrics"]["vote_2"] == want["nvarc"]["vote_2"]   # the submitted attempts are nvarc's
        selections.append(want)
    assert report["selection"] == {s: {k: sum(x[s][k] for x in selections) / 2 for k in ("vote_1", "vote_2")}
                                   for s in ("vote", "poe", "nvarc")}
    assert scored >= 1 and "| nvarc (submitted) |" in (out / "report.md").read_text()
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    search = [e for e in events if e.get("event") == "search"]
    assert search and sum(e["prompts"] for e in search) == sum(3 * len(t.test) for t in tasks)


def test_resume_reads_task_records_of_earlier_versions(tmp_path, bigram):
    out = tmp_path / "run"
    args = ["ttft", "--tasks", "arc1:eval[:1]", "--model", str(bigram), "--budget", "30s", "--out", str(out),
            "--steps", "1", "--predictions", "2", "--row-len", "4096", "--max-len", "4096", "-q"]
    assert main(args) == 0
    (path,) = (out / "tasks").glob("*.json")
    rec = json.loads(path.read_text())
    old = {k: v for k, v in rec.items() if k not in ("candidates", "selection")}
    old["rescore"] = [None] * len(rec["attempts"])   # what earlier versions wrote in their place
    path.write_text(json.dumps(old))
    before = path.stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert path.stat().st_mtime_ns == before   # kept, not redone
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    (resume,) = [e for e in events if e.get("event") == "resume"]
    assert resume["kept"] == [rec["task_id"]] and resume["changed"] == []


def test_search_and_select_flags_are_checked(tmp_path, capsys):
    assert main(["ttft", "--select", "poe", "--rescore", "0", "--out", str(tmp_path / "a"), "-q"]) == 2
    assert "rescore must be >= 1" in capsys.readouterr().err
    assert main(["ttft", "--search", "dfs", "--min-prob", "0", "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "min_prob must be in (0, 1]" in capsys.readouterr().err
    assert main(["ttft", "--search", "sample", "--temperature", "-1", "--out", str(tmp_path / "c"), "-q"]) == 2
    assert "temperature must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ttft", "--search", "beam", "--out", str(tmp_path / "d"), "-q"])
    from arcfast.run.config import TTFTConfig

    assert (TTFTConfig().select, TTFTConfig().rescore) == ("vote", 0)
    assert (TTFTConfig(rescore=4).select, TTFTConfig(select="nvarc").rescore) == ("poe", 8)


def test_eval_verify_trains_the_verifier_and_ranks_by_its_verdicts(tmp_path, bigram):
    out = tmp_path / "eval"
    assert main(["eval", "--tasks", "arc1:train[:3]", "--model", str(bigram), "--out", str(out), "--ttft",
                 "--steps", "2", "--predictions", "4", "--objective", "output=1", "--objective", "verify=0.5",
                 "--verify", "2", "--select", "vote+verify", "-q"]) == 0
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["vocab_size"] for e in events if e.get("event") == "grow_vocab"] == [20]   # 16 ids, grown
    (ev,) = [e for e in events if e.get("event") == "verify"]
    steps = [e for e in events if e.get("event") == "step"]
    assert steps and all(set(e["objective_loss"]) <= {"output", "verify"} for e in steps)
    assert {o for e in steps for o in e["objective_loss"]} == {"output", "verify"}
    verified = 0
    for t in load_tasks("arc1:train[:3]"):
        rec = json.loads((out / "tasks" / f"{t.id}.json").read_text())
        assert set(rec["selection"]) == {"vote", "verify", "vote+verify"}
        assert set(rec["objective_losses"]) <= {"output", "verify"} and rec["objective_losses"]
        assert all(v > 0 for v in rec["objective_losses"].values())
        for ti, cands in enumerate(rec["candidates"]):
            if len(cands) < 2:
                assert all(c["verdicts"] is None for c in cands)
                continue
            verified += len(cands)
            assert all(len(c["verdicts"]) == 2 and all(0 <= v <= 1 for v in c["verdicts"]) for c in cands)
            means = [sum(c["verdicts"]) / 2 for c in sorted(cands, key=lambda c: c["rank"]["verify"])]
            assert means == sorted(means, reverse=True)
            keys = [c["count"] * sum(c["verdicts"]) / 2 for c in sorted(cands, key=lambda c: c["rank"]["vote+verify"])]
            assert keys == sorted(keys, reverse=True)
            first = sorted(cands, key=lambda c: c["rank"]["vote+verify"])
            assert rec["attempts"][ti] == [c["grid"] for c in first[:2]]
    assert verified >= 4 and ev["verifications"] == 2 * verified == 2 * ev["candidates"]


def test_rescore_flags_are_checked(tmp_path, capsys):
    assert main(["ttft", "--rescore", "-1", "--out", str(tmp_path / "a"), "-q"]) == 2
    assert "rescore must be >= 0" in capsys.readouterr().err
    assert main(["eval", "--tasks", "arc1:train[:1]", "--rescore", "2", "--rescore-top", "1",
                 "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "rescore_top must be >= 2" in capsys.readouterr().err


def test_ttft_bf16_saves_adapters_in_bf16(tmp_path):
    """Per-task adapters are saved in the model's half dtype (they serve inference in it)."""
    from safetensors import safe_open

    out = tmp_path / "run"
    assert main(["ttft", "--tasks", "arc1:eval[:1]", "--model", "tiny", "--budget", "40s", "--out", str(out), "--steps", "1",
                 "--dtype", "bfloat16", "--predictions", "1", "--max-new-tokens", "4", "--row-len", "4096",
                 "--max-len", "4096", "-q"]) == 0
    files = list((out / "adapters").glob("*/adapter_model.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}


def test_cuda_graphs_flag_reaches_the_trainer_and_the_log(tmp_path):
    import torch

    out = tmp_path / "run"
    assert main(["ttft", "--tasks", "arc1:eval[:1]", "--model", "tiny", "--budget", "40s", "--out", str(out), "--steps", "2",
                 "--cuda-graphs", "--predictions", "1", "--max-new-tokens", "4", "--row-len", "4096",
                 "--max-len", "4096", "-q"]) == 0
    start = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][0]
    assert start["event"] == "start" and "steps: " in start["message"]
    if not torch.cuda.is_available():
        assert "CUDA graphs need a CUDA device" in start["message"]
    validate_submission(out / "submission.json", load_tasks("arc1:eval[:1]"))


def test_bench_is_the_benchmark_runner(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # from anywhere: the suite ships inside the package
    assert main(["bench", "--quick", "-k", "kernels", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "kernels" in out and "ratio" in out


def test_loss_on_outputs_trains_on_every_demonstration_output(tmp_path):
    """--loss-on reaches the sampler: with ``outputs`` the same steps label more tokens (each
    prompt's demonstration outputs but the first) than with ``target`` (the left-out output only)."""
    labelled = {}
    for how in ("target", "outputs"):
        out = tmp_path / how
        assert main(["ttft", "--tasks", "arc1:train[:2]", "--model", "tiny", "--steps", "3", "--predictions", "1",
                     "--max-new-tokens", "3", "--budget", "120s", "--out", str(out), "-q", "--loss-on", how]) == 0
        events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        labelled[how] = [(e["step"], e["tokens"], e["label_tokens"]) for e in events if e.get("event") == "step"]
    assert len(labelled["target"]) == 3
    # The same samples (same seed): the same tokens per step, more of them labelled.
    assert [t for _, t, _ in labelled["target"]] == [t for _, t, _ in labelled["outputs"]]
    assert all(o > t for (_, _, t), (_, _, o) in zip(labelled["target"], labelled["outputs"]))
    with pytest.raises(SystemExit):
        main(["ttft", "--loss-on", "inputs"])


def test_rslora_flag_reaches_the_lora_config(tmp_path):
    """--rslora (parsed only, nothing trained) gives ttft and eval a LoRAConfig scaled by alpha/sqrt(r)."""
    from arcfast.cli.main import build_parser
    from arcfast.cli.run import _run_config
    from arcfast.model.checkpoint import load_model
    from arcfast.run.ttft import TTFTRun

    for argv in (["ttft"], ["eval", "--tasks", "arc1:eval[:1]", "--ttft"]):
        args = build_parser().parse_args(argv + ["--rank", "64", "--alpha", "16", "--rslora", "--backend", "native",
                                                 "--out", str(tmp_path / argv[0])])
        cfg = _run_config(args, argv[0])
        assert cfg.rslora is True and cfg.rank == 64
        backend, lora_cfg, _ = TTFTRun(cfg).make_backend(load_model("tiny"), 1)
        assert lora_cfg.rslora is True and lora_cfg.scaling == 2.0 and backend.lora_cfg.scaling == 2.0
        assert _run_config(build_parser().parse_args(argv), argv[0]).rslora is False


def test_a_recipe_sets_its_fields_and_flags_beside_it_win(capsys):
    from arcfast.cli.main import build_parser
    from arcfast.cli.run import _run_config
    from arcfast.run.recipes import RECIPES
    from arcfast.run.config import TTFTConfig

    def cfg(*argv):
        args = build_parser().parse_args(["ttft", "--out", "/tmp/unused", *argv])
        return _run_config(args, "ttft"), args

    plain, args = cfg()
    d = TTFTConfig()
    assert (plain.rank, plain.alpha, plain.rslora, plain.lr, plain.steps, plain.predictions) == \
        (d.rank, d.alpha, d.rslora, d.lr, d.steps, d.predictions) and args.recipe_line is None
    nv, args = cfg("--recipe", "nvarc")
    assert nv.recipe == "nvarc" and all(getattr(nv, k) == v for k, v in RECIPES["nvarc"].items())
    assert (nv.rank, nv.alpha, nv.rslora, nv.lr) == (256, 32.0, True, 5e-5)
    assert args.recipe_line.startswith("recipe nvarc: rank=256") and "overridden" not in args.recipe_line
    a24, args = cfg("--recipe", "arc24", "--steps", "20", "--rank", "128")
    assert (a24.rank, a24.steps, a24.predictions, a24.lr, a24.alpha) == (128, 20, 96, 8e-5, d.alpha)
    assert "overridden by flags: steps=20 (recipe 300)" in args.recipe_line   # --rank 128 is the recipe's own
    assert "rank=128 (recipe" not in args.recipe_line
    with pytest.raises(SystemExit):
        cfg("--recipe", "nope")
    with pytest.raises(ValueError, match="unknown recipe 'nope': one of arc24, nvarc"):
        TTFTConfig(recipe="nope")


def test_a_run_with_a_recipe_prints_and_logs_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["ttft", "--recipe", "nvarc", "--tasks", "arc1:eval[:1]", "--model", "tiny", "--rank", "8",
                 "--steps", "1", "--predictions", "2", "--max-new-tokens", "8", "--budget", "5m",
                 "--out", str(out), "-q"]) == 0
    assert "recipe nvarc: rank=256" in capsys.readouterr().out
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    (rec,) = [e for e in events if e.get("event") == "recipe"]
    assert rec["name"] == "nvarc" and rec["used"]["rank"] == 8 and rec["used"]["rslora"] is True
    (adapter,) = (out / "adapters").iterdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is True and cfg["r"] == 8 and cfg["lora_alpha"] == 32
    # NVARC trained each task's embedding and LM head: PEFT's whole modules of the compact vocabulary.
    assert cfg["modules_to_save"] == ["embed_tokens", "lm_head"]
    from arcfast.lora.adapters import load_adapter

    lcfg, tensors = load_adapter(adapter)
    assert lcfg.tokens == ("embed_tokens", "lm_head") and tensors["lm_head"].shape == (16, 64)
    assert json.loads((out / "submission.json").read_text())


def test_train_tokens_flags(tmp_path):
    from arcfast.cli.main import build_parser
    from arcfast.cli.run import _run_config

    parse = lambda *a: _run_config(build_parser().parse_args(["ttft", "--out", str(tmp_path / "x"), *a]), "ttft")
    assert parse().tokens == () and parse().embedding_lr is None
    assert parse("--train-tokens", "both", "--embedding-lr", "1e-5").tokens == ("embed_tokens", "lm_head")
    assert parse("--train-tokens", "head").tokens == ("lm_head",)
    assert parse("--train-tokens", "lm_head,embed_tokens").embedding_lr is None
    assert parse("--recipe", "nvarc", "--train-tokens", "none").tokens == ()
    with pytest.raises(SystemExit):
        parse("--train-tokens", "norm")


def test_max_task_seconds_stops_a_groups_training(tmp_path):
    """A cap far below what the steps take: every group trains one step (at least one), then stops
    with the reason "task cap"; the flag reaches the config, and nvarc's recipe sets 1200 s."""
    from arcfast.cli.main import build_parser
    from arcfast.cli.run import _run_config

    out = tmp_path / "cap"
    assert main(["ttft", "--tasks", "arc1:eval[:2]", "--model", "tiny", "--steps", "40", "--predictions", "2",
                 "--max-new-tokens", "8", "--max-task-seconds", "0.001", "--budget", "5m", "--out", str(out), "-q"]) == 0
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stops = [e for e in events if e.get("event") == "stop_early"]
    assert stops and all(e["reason"] == "task cap" and e["step"] == 1 for e in stops)
    assert len([e for e in events if e.get("event") == "step"]) == len(stops)
    parse = lambda *a: _run_config(build_parser().parse_args(["ttft", "--out", str(tmp_path / "x"), *a]), "ttft")
    assert parse().max_task_seconds is None and parse("--recipe", "nvarc").max_task_seconds == 1200.0
    assert parse("--recipe", "nvarc", "--max-task-seconds", "600").max_task_seconds == 600.0


@pytest.mark.slow
def test_a_killed_workers_tasks_are_finished_by_the_other(tmp_path):
    """Two workers on the queue (the environment torchrun or --workers gives them); worker 1 is
    killed as soon as it has claimed tasks. Its lease goes unrenewed, worker 0 takes its tasks over,
    and the run still ends with every task answered once and one merged submission."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "arcfast", "ttft", "--tasks", "arc1:eval[:6]", "--model", "tiny", "--steps", "4",
           "--predictions", "2", "--max-new-tokens", "8", "--budget", "3m", "--lease-seconds", "2",
           "--tasks-per-group", "1", "--out", str(out), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    log1 = out / "log.rank1.jsonl"
    stop = time.monotonic() + 120
    while time.monotonic() < stop and not (log1.is_file() and '"claimed"' in log1.read_text()):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    assert procs[1].wait(30) == -signal.SIGKILL
    assert procs[0].wait(240) == 0, procs[0].stderr.read()[-3000:]
    lost = [t for line in log1.read_text().splitlines() if (e := json.loads(line)).get("event") == "claimed"
            for t in e["tasks"]]
    assert lost
    events = [json.loads(line) for line in (out / "log.rank0.jsonl").read_text().splitlines()]
    taken = [t for e in events if e.get("event") == "claimed" for t in e["taken_over"]]
    assert sorted(taken) == sorted(lost)
    tasks = load_tasks("arc1:eval[:6]")
    validate_submission(out / "submission.json", tasks)
    assert set(_results(out)) == {t.id for t in tasks}
    assert json.loads((out / "run.rank0.json").read_text())["trained"] == len(tasks)


def test_sample_and_augmentation_flags_reach_the_recipe(tmp_path):
    from arcfast.arc.augment import AugmentConfig
    from arcfast.cli.main import build_parser
    from arcfast.cli.run import _run_config

    parse = lambda *a: _run_config(build_parser().parse_args(["ttft", "--out", str(tmp_path / "x"), *a]), "ttft")
    d = parse()
    assert (d.geometric_aug, d.color_aug, d.keep_zero_prob, d.max_demos, d.swap_bug) == (True, True, 0.9, 0, False)
    assert d.augment_config() == AugmentConfig() and d.sample_config().swap_bug is False
    cfg = parse("--no-geometric-aug", "--no-color-aug", "--keep-zero", "1", "--max-demos", "2", "--swap-bug")
    aug, sc = cfg.augment_config(), cfg.sample_config()
    assert aug.transforms == (0,) and not aug.permute_colors and aug.keep_zero_prob == 1.0
    assert sc.max_demos == 2 and sc.swap_bug and sc.max_len == min(cfg.max_len, cfg.row_len)
    assert parse("--keep-zero", "0.5").augment_config() == AugmentConfig(keep_zero_prob=0.5)
    for bad in (("--keep-zero", "1.5"), ("--max-demos", "-1")):
        with pytest.raises(ValueError):
            parse(*bad)


def test_a_run_records_the_targets_it_trained_and_the_swap_bug_drops_the_last_pair(tmp_path):
    """tasks/<id>.json says how many training samples took each train pair as the target: equal
    turns under leave-one-out, none for the last pair under --swap-bug."""
    import numpy as np

    from arcfast.bench.bench_ttft_ablations import held_out_tasks, write_tasks

    tasks = write_tasks(held_out_tasks(np.random.default_rng(0), 2, n_train=4), tmp_path / "tasks")
    records = {}
    for name, extra in (("loo", []), ("bug", ["--swap-bug"])):
        out = tmp_path / name
        assert main(["ttft", "--tasks", str(tasks), "--model", "tiny", "--steps", "12", "--predictions", "1",
                     "--row-len", "1024", "--max-len", "1024", "--max-new-tokens", "4", "--budget", "5m",
                     "--out", str(out), "-q", *extra]) == 0
        records[name] = [json.loads(p.read_text()) for p in sorted((out / "tasks").glob("*.json"))]
    assert len(records["loo"]) == len(records["bug"]) == 2
    for loo, bug in zip(records["loo"], records["bug"]):
        n = len(loo["targets"])
        assert n >= 2 and sum(loo["targets"]) == sum(bug["targets"]) == 12
        assert max(loo["targets"]) - min(loo["targets"]) <= 1
        assert bug["targets"][-1] == 0 and min(bug["targets"][:-1]) >= 12 // (n - 1)
