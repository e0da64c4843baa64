"""arcfast.infer.decoder.Decoder: one object for prediction, scoring and verification, each task's
adapter found by its id. Its answers are those of the functions it calls with the slots spelled
out, and the tasks' slots are what decides which adapter answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast.answers.vote import Prediction, vote
from arcfast.arc.augment import test_time_augmentations as tta
from arcfast.arc.loading import load_tasks
from arcfast.infer.decoder import Decoder
from arcfast.infer.decoding import GenerationConfig
from arcfast.infer.logprobs import build_sequences, score_sequences
from arcfast.infer.predict import predict_tasks
from arcfast.infer.rescore import RescoreJob, rescore_items
from arcfast.lora.multi import LoRAConfig, MultiLoRA
from arcfast.model.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model = load_model("tiny", seed=0)
    lora = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0), n_adapters=3)
    with torch.no_grad():
        lora.weight.copy_(torch.randn(lora.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    return model, lora, load_tasks("arc1:eval[:2]")


def _outputs(preds):
    """Every prediction as (grid, status, log-probability, tokens, adapter label)."""
    return [[[(None if p.grid is None else p.grid.tolist(), str(p.status), p.logprob, p.n_tokens, p.adapter)
              for p in per_test] for per_test in per_task] for per_task in preds]


def test_predict_uses_each_task_s_own_slot(setup):
    model, lora, tasks = setup
    cfg = GenerationConfig(max_new_tokens=12)
    slot_of = {tasks[0].id: 2, tasks[1].id: 0}
    dec = Decoder(model, lora, slot_of)
    got = dec.predict(tasks, n_predictions=2, config=cfg)
    want = predict_tasks(model, tasks, [2, 0], lora, n_predictions=2, config=cfg)
    assert _outputs(got) == _outputs(want)
    # The slots decide: the same tasks with their slots swapped decode with other adapters.
    swapped = Decoder(model, lora, {tasks[0].id: 0, tasks[1].id: 2}).predict(tasks, n_predictions=2, config=cfg)
    logps = lambda preds: [p.logprob for per_task in preds for per_test in per_task for p in per_test]  # noqa: E731
    assert all(a != b for a, b in zip(logps(swapped), logps(got)))
    assert dec.slot("not-a-task") == -1


def test_the_generator_is_kept_for_one_table_and_rebuilt_for_another(setup):
    model, lora, tasks = setup
    dec = Decoder(model, lora, {tasks[0].id: 1})
    g = dec.gen()
    dec.use(lora, {tasks[0].id: 0})
    assert dec.gen() is g and dec.slot(tasks[0].id) == 0
    other = MultiLoRA(model, LoRAConfig(r=4, alpha=8.0), n_adapters=1)
    dec.use(other, {tasks[0].id: 0})
    assert dec.gen() is not g and dec.gen().lora is other
    dec.reset()
    assert dec.generator is None


def test_score_reads_the_same_adapters(setup):
    model, lora, tasks = setup
    t = tasks[0]
    dec = Decoder(model, lora, {t.id: 1})
    cands = vote([Prediction(np.asarray(t.test[0].input, np.uint8), logprob=-1.0, n_tokens=3),
                  Prediction(np.zeros((2, 2), np.uint8), logprob=-2.0, n_tokens=3)], top_k=None)
    jobs = [RescoreJob(t, 0, cands, tta(t, 2, seed=1), dec.slot(t.id))]
    seqs = build_sequences(rescore_items(jobs))
    np.testing.assert_array_equal(dec.score(seqs), score_sequences(model, lora, seqs))
