"""The budget is a promise on a slow machine too: `arcfast ttft` ends inside its budget with a
complete, valid submission when every training step, every decode step, every prefill and every
scoring batch is slowed on purpose (each sleeps before it runs, as on a machine whose cores are
shared with other work).

Without the deadline binding inside each phase, this run overruns: training alone asks for 400
steps of 0.1 s, generation for 8 predictions of up to 40 slowed decode steps per test input, and
re-scoring for batches of 0.1 s each.
"""
import json
import time

import pytest

import arcfast.infer.logprobs as score_mod
from arcfast.cli import main
from arcfast.arc.loading import load_tasks
from arcfast.infer.generate import Generator
from arcfast.answers.submission import validate_submission
from arcfast.train.trainer import Trainer
from slowed import slow_down

pytestmark = pytest.mark.usefixtures("one_thread")

UNIT = 0.1      # seconds each slowed unit of work sleeps first
DECODE = 0.3    # a decode step sleeps longer: a chunk of 8 steps run past the deadline is 2.4 s
TOL = DECODE    # allowed past the deadline: one slowed step


@pytest.mark.slow
def test_a_budgeted_run_on_a_slowed_machine_ends_inside_its_budget(tmp_path, monkeypatch):
    for owner, name, seconds in ((Trainer, "step", UNIT), (Generator, "_step", DECODE),
                                 (Generator, "_prefill_forward", UNIT), (score_mod, "_forward_batch", UNIT)):
        slow_down(monkeypatch, owner, name, seconds)
    # A tight margin (2 s for writing the results): the deadline must bind inside each phase.
    budget, margin = 20.0, 2.0
    out = tmp_path / "run"
    t0, wall0 = time.monotonic(), time.time()
    rc = main(["ttft", "--tasks", "arc1:eval[:4]", "--model", "tiny", "--budget", f"{budget:g}s", "--margin",
               f"{margin:g}s", "--out", str(out), "--steps", "400", "--tasks-per-group", "2", "--predictions", "8",
               "--max-new-tokens", "40", "--rescore", "2", "--row-len", "4096", "--max-len", "4096", "-q"])
    wall = time.monotonic() - t0
    assert rc == 0
    assert wall <= budget, f"ran {wall:.1f} s for a {budget:g} s budget"
    tasks = load_tasks("arc1:eval[:4]")
    validate_submission(out / "submission.json", tasks)   # every id, every test input, two attempts
    summary = json.loads((out / "run.json").read_text())
    assert summary["seconds"] <= budget and summary["tasks"] == 4
    # Every group was predicted in time: no group was left to fallbacks alone because an earlier
    # one took the time (the tiny model's random weights rarely give a grid that parses, so what
    # shows it is the tokens generated for each task).
    recs = {json.loads(p.read_text())["task_id"]: json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")}
    assert sorted(recs) == sorted(t.id for t in tasks)
    assert all(r["generated_tokens"] > 0 for r in recs.values()), {k: r["generated_tokens"] for k, r in recs.items()}
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # Training, generation and re-scoring all ended by the deadline less the margin (one slowed
    # step late at most); only the writing of the results is left to the margin.
    work = [e for e in events if e["event"] != "end"]
    late = [(e["event"], round(e["time"] - wall0 - (budget - margin), 2)) for e in work
            if e["time"] > wall0 + budget - margin + TOL]
    assert not late, f"work past the deadline (event, seconds late): {late}"
    steps = [e for e in events if e["event"] == "step"]
    assert 2 <= len(steps) < 2 * 400   # the slowed steps ran, far fewer than asked for


def test_the_report_plot_is_skipped_when_the_budget_has_no_room_for_it(tmp_path):
    from arcfast.budget.clock import Deadline
    from arcfast.run.ttft import PLOT_SECONDS, TTFTRun
    from arcfast.run.config import TTFTConfig

    cfg = TTFTConfig(tasks="arc1:eval[:2]", model="tiny", budget=30.0, out=str(tmp_path / "late"), steps=1,
                     predictions=1, max_new_tokens=4, progress=False)
    # Started long ago: the margin is all that is left, less than the plot needs.
    late = Deadline(30.0, margin=10.0, start=time.monotonic() - (30.0 - PLOT_SECONDS / 2))
    TTFTRun(cfg, deadline=late).run()
    out = tmp_path / "late"
    assert (out / "report.json").is_file() and (out / "report.md").is_file() and not (out / "report.png").exists()
    validate_submission(out / "submission.json", load_tasks("arc1:eval[:2]"))
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert "report_plot_skipped" in events
