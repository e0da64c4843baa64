"""TTFT's gain, end to end: a tiny model pretrained here answers held-out tasks of rules it never
saw only after `arcfast ttft`'s own run fine-tunes an adapter per task on the task's demonstrations.

The regime is the one `arcfast bench -k ttft-ablations` measures (see its module docstring): the
model is pretrained on ``paint`` tasks (foreground cells become the task's colour k, background
stays 0), read k from the demonstrations in context, and answers new paint tasks. The held-out
tasks follow ``invert`` (background becomes k, foreground 0) and ``fill`` (background becomes k,
foreground keeps its colour),
in turn: as given, the model paints them, and no answer is right (asserted). After TTFT, through
:class:`arcfast.run.ttft.TTFTRun` (every held-out task in one packed batch, a rank-16 LoRA each, 100
steps, 8 test-time augmentations, voting), almost all are.

The test fails, each checked by a deliberate break in a throwaway copy of the engine:
- the per-task adapter not applied at inference (predictions from the base model): 0 of 12 right;
- the adapters of the tasks packed in one batch mixed up (each task's samples train its
  neighbour's adapter, an invert adapter learning fill and the reverse): 7 of 12 right, 2 of the 6
  fill tasks (an adapter of either rule learns "background becomes k", which both rules share);
- the leave-one-out sampler never making some pair a target (the C++ sampler's pair n-1 replaced
  by pair 0): 8 of 12 right, and the run's own record of the targets trained, which must give
  every train pair its equal turn, fails too.

Measured on a 2-core CPU with one torch thread: pretraining about 34 s, TTFT of the 12 tasks about
10 s (10 of 12 right, 0 before), about 50 s in all.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from arcfast.bench import bench_ttft_ablations as A
from arcfast.model.checkpoint import save_model
from arcfast.run.config import TTFTConfig
from arcfast.run.ttft import TTFTRun

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEED = 0
PRETRAIN_TASKS = 2000
PRETRAIN_STEPS = 800
HELD_OUT = 12
RULES = ("invert", "fill")
N_TRAIN = 4
STEPS = 100
MIN_RIGHT = 9          # of HELD_OUT after TTFT (either attempt)
MAX_RIGHT_BASE = 1     # of HELD_OUT without it


def _right(out, held) -> list:
    sub = json.loads((out / "submission.json").read_text())
    return [t.test[0].output.tolist() in (sub[t.id][0]["attempt_1"], sub[t.id][0]["attempt_2"]) for t in held]


def _config(tmp_path, name, train: bool) -> TTFTConfig:
    return TTFTConfig(tasks=str(tmp_path / "held"), model=str(tmp_path / "model"), out=str(tmp_path / name),
                      budget=600.0, device="cpu", dtype="float32", seed=SEED, rank=16, alpha=32.0, lr=3e-3,
                      steps=STEPS, train=train, tasks_per_group=HELD_OUT, row_len=2048, max_len=2048,
                      predictions=8, save_adapters="none", progress=False)


def test_ttft_turns_wrong_answers_on_unseen_rules_into_right_ones(tmp_path):
    rng = np.random.default_rng(SEED)
    pre = [A.rule_task(rng, f"pre-{i}", "paint", N_TRAIN) for i in range(PRETRAIN_TASKS)]
    held = A.held_out_tasks(rng, HELD_OUT, RULES, N_TRAIN)
    model, losses = A.pretrain_model(pre, PRETRAIN_STEPS, SEED)
    assert np.mean(losses[-50:]) < 0.2, f"pretraining did not converge: {np.mean(losses[-50:]):.3f}"
    save_model(model, tmp_path / "model")
    A.write_tasks(held, tmp_path / "held")

    base = TTFTRun(_config(tmp_path, "base", train=False)).run()
    base_right = _right(tmp_path / "base", held)
    assert base["trained"] == 0
    assert sum(base_right) <= MAX_RIGHT_BASE, f"the pretrained model already answers {sum(base_right)} of {HELD_OUT}"

    run = TTFTRun(_config(tmp_path, "ttft", train=True))
    summary = run.run()
    right = _right(tmp_path / "ttft", held)
    numbers = (f"without TTFT {sum(base_right)} of {HELD_OUT} right, with it {sum(right)} "
               f"({', '.join(f'{t.id}: {ok}' for t, ok in zip(held, right))}); accuracy of predictions "
               f"{base['metrics']['accuracy']:.0%} -> {summary['metrics']['accuracy']:.0%}")
    print(numbers)
    assert summary["trained"] == HELD_OUT and not summary["failed"], summary
    assert sum(right) >= MIN_RIGHT, numbers
    for rule in RULES:   # each rule learned by most of its tasks, not one rule everywhere
        assert sum(ok for t, ok in zip(held, right) if t.id.startswith(rule)) > HELD_OUT // len(RULES) // 2, numbers

    # Leave-one-out, as the run trained it (its record in tasks/<id>.json): every train pair took its
    # turn as the target, equally often, over the STEPS samples of its task.
    for t in held:
        record = json.loads((tmp_path / "ttft" / "tasks" / f"{t.id}.json").read_text())
        targets = record["targets"]
        assert record["steps"] == STEPS and len(targets) == N_TRAIN and sum(targets) == STEPS, (t.id, record)
        assert max(targets) - min(targets) <= 1, f"{t.id}: train pairs taken as targets {targets} times"
