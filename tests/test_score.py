"""arcfast.score against its references: each sequence alone through the model's own forward, and
the log-probabilities generation records for its own outputs."""
import numpy as np
import pytest

from arcfast import tokens as T
from arcfast.augment import Augmentation
from arcfast.augment import test_time_augmentations as tta
from arcfast.generate import GenerationConfig, generate
from arcfast.predict import predict_tasks
from arcfast.prompts import build_inference_prompts
from arcfast.reference.score import score_item_reference, target_logprobs_reference
from arcfast.score import (RescoreJob, ScoreItem, Sequences, build_sequences, rank_jobs, rescore_items,
                           rescore_predictions, score_candidates, score_sequences, target_logprobs)
from arcfast.task import Task
from arcfast.vote import Prediction, vote
from test_generate import _lora, _model, _task

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-3  # a sum of up to ~40 fp32 log-probabilities


def _trains(task: Task, n: int) -> Task:
    """``task`` with ``n`` demonstrations (its own, repeated): prompts of other lengths."""
    return Task(task.id, (task.train * n)[:n], task.test, source=task.source)


def _grids(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 10, size=(int(rng.integers(1, 4)), int(rng.integers(1, 5)))).astype(np.uint8)
            for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def lora(model):
    return _lora(model, 3, seed=5)


@pytest.fixture(scope="module")
def items():
    tasks = [_task("a", 1), _trains(_task("b", 2), 3), _trains(_task("c", 3), 1)]
    out = []
    for k, t in enumerate(tasks):
        augs = tta(t, 3, seed=k)
        for ti in range(len(t.test)):
            for gi, g in enumerate(_grids(10 * k + ti, 3)):
                out.append(ScoreItem(t, ti, g, augs[(gi + ti) % 3], (gi + k) % 4 - 1))
    return out


def _reference(model, lora, items):
    return [score_item_reference(model, it.task, it.test_index, it.grid, it.augmentation, it.adapter, lora)
            for it in items]


def test_packed_scores_equal_the_reference(model, lora, items):
    # Sequences of 34-89 tokens, 300 a batch in rows of 160: five batches of one to six sequences
    # of mixed lengths and adapters (the base model among them), most rows holding two.
    assert len({it.adapter for it in items}) == 4
    got = score_candidates(model, lora, items, batch_tokens=300, row_len=160)
    assert got.dtype == np.float64 and got.shape == (len(items),)
    np.testing.assert_allclose(got, _reference(model, lora, items), rtol=0, atol=ATOL)
    assert np.all(got < 0)
    # One adapter beside the base model in every batch.
    pair = [it._replace(adapter=i % 2 - 1) for i, it in enumerate(items)]
    np.testing.assert_allclose(score_candidates(model, lora, pair, batch_tokens=300, row_len=160),
                               _reference(model, lora, pair), rtol=0, atol=ATOL)
    # Per token too, and the adapters matter.
    seqs = build_sequences(items)
    per_token = target_logprobs(model, lora, seqs, batch_tokens=300, row_len=160)
    for i, (p, t, a) in enumerate(zip(seqs.prompts, seqs.targets, seqs.adapters)):
        assert per_token[i].dtype == np.float32 and per_token[i].shape == t.shape
        np.testing.assert_allclose(per_token[i], target_logprobs_reference(model, p, t, lora, int(a)), atol=2e-4)
        assert t[-1] == T.EOG
    base = score_candidates(model, None, [it._replace(adapter=-1) for it in items])
    assert np.abs(base - got)[seqs.adapters >= 0].min() > 1e-3


def test_score_is_invariant_to_batching_and_order(model, lora, items):
    one_each = score_candidates(model, lora, items, batch_tokens=1)
    all_in_one = score_candidates(model, lora, items, batch_tokens=100_000, row_len=4096)
    np.testing.assert_allclose(one_each, all_in_one, rtol=0, atol=1e-4)
    perm = np.random.default_rng(0).permutation(len(items))
    shuffled = score_candidates(model, lora, [items[i] for i in perm], batch_tokens=200)
    np.testing.assert_allclose(shuffled, all_in_one[perm], rtol=0, atol=1e-4)


def test_teacher_forced_score_of_greedy_output_equals_its_logprob(model, lora):
    task = _task("g", 7)
    augs = tta(task, 4)
    prompts = build_inference_prompts(task, 1, augs)
    adapters = [-1, 0, 1, 2]
    gens = generate(model, prompts, adapters, lora=lora, max_new_tokens=15)
    seqs = Sequences(prompts, [g.tokens for g in gens], np.array(adapters))
    scores = score_sequences(model, lora, seqs, batch_tokens=128)
    np.testing.assert_allclose(scores, [g.logprob for g in gens], rtol=0, atol=ATOL)
    for lp, g in zip(target_logprobs(model, lora, seqs), gens):
        np.testing.assert_allclose(lp, g.logprobs, rtol=0, atol=2e-4)


def test_score_of_a_parsed_prediction_equals_its_logprob():
    """Through the whole path: a prediction decoded and un-augmented, then re-encoded under
    its augmentation and scored, gets back the log-probability its generation recorded."""
    m = _model(eog_boost=2.5)
    lora = _lora(m, 2, seed=8)
    tasks = [_task(f"t{s}", s) for s in range(4)]
    preds = predict_tasks(m, tasks, [1] * 4, lora, n_predictions=8, config=GenerationConfig(max_new_tokens=40))
    items, want = [], []
    for t, per_test in zip(tasks, preds):
        augs = tta(t, 8)
        for ti, plist in enumerate(per_test):
            for ai, p in enumerate(plist):
                if p.grid is not None:
                    items.append(ScoreItem(t, ti, p.grid, augs[ai], 1))
                    want.append(p.logprob)
    assert len(items) >= 4  # this model and adapter parse a few outputs (5 of 64)
    np.testing.assert_allclose(score_candidates(m, lora, items), want, rtol=0, atol=ATOL)


def test_rescoring_prefers_the_model_favourite_over_more_votes(model, lora):
    task = _task("r", 11)
    augs = tta(task, 4, seed=99)
    grids = _grids(12, 5)
    sums = score_candidates(model, lora, [ScoreItem(task, 0, g, a, 1) for g in grids for a in augs]
                            ).reshape(len(grids), len(augs)).sum(axis=1)
    best, worst = int(np.argmax(sums)), int(np.argmin(sums))
    # The model's least likely grid gets three votes, its favourite one vote.
    preds = [Prediction(grids[worst], logprob=-1.0, n_tokens=5)] * 3 + \
            [Prediction(grids[i], logprob=-1.0, n_tokens=5) for i in range(len(grids)) if i != worst]
    cands = vote(preds, top_k=None)
    assert np.array_equal(cands[0].grid, grids[worst]) and cands[0].count == 3
    ranked = rescore_predictions(model, lora, task, 0, cands, augs, adapter=1)
    assert np.array_equal(ranked[0].grid, grids[best]) and ranked[0].count == 1
    assert np.array_equal(ranked[-1].grid, grids[worst]) and ranked[-1].count == 3
    order = np.argsort(-sums, kind="stable")
    assert [c.score for c in ranked] == pytest.approx(sums[order].tolist(), abs=ATOL)
    assert all(np.array_equal(c.grid, grids[i]) for c, i in zip(ranked, order))


def test_rank_jobs_leaves_cut_jobs_in_voting_order(model, lora):
    task = _task("d", 13)
    augs = tta(task, 2)
    cands = vote([Prediction(g, logprob=-1.0, n_tokens=3) for g in _grids(14, 3)], top_k=None)
    jobs = [RescoreJob(task, 0, cands, augs, 0), RescoreJob(task, 1, cands[:2], augs, -1),
            RescoreJob(task, 1, [], augs, 0)]
    items = rescore_items(jobs)
    assert len(items) == 3 * 2 + 2 * 2
    scores = score_candidates(model, lora, items)
    ranked = rank_jobs(jobs, scores)
    assert [len(r) for r in ranked] == [3, 2, 0]
    for r, j in zip(ranked[:2], jobs):
        assert [c.score for c in r] == sorted((c.score for c in r), reverse=True)
        assert {c.count for c in r} == {c.count for c in j.candidates}
    scores[-1] = np.nan  # the last item unscored: only its job is left unranked
    assert rank_jobs(jobs, scores)[1] is None and len(rank_jobs(jobs, scores)[0]) == 3
    # A deadline already passed scores nothing.
    assert np.isnan(score_candidates(model, lora, items, deadline=0.0)).all()
    with pytest.raises(ValueError, match="scores for 10 items"):
        rank_jobs(jobs, scores[:-1])


def test_bad_items_are_named(model, lora):
    task = _task("bad", 15)
    g = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match="task bad has 2 test inputs, no test input 5"):
        build_sequences([ScoreItem(task, 5, g, Augmentation())])
    with pytest.raises(ValueError, match=r"task bad \(test\), test input 1, item 1: colour 12 at row 0"):
        build_sequences([ScoreItem(task, 0, g, Augmentation()), ScoreItem(task, 1, np.array([[12]]), Augmentation())])
    with pytest.raises(ValueError, match="sequence 0: adapter id 3 is invalid"):
        score_candidates(model, lora, [ScoreItem(task, 0, g, Augmentation(), 3)])
    with pytest.raises(ValueError, match=r"task bad \(test\), test input 0: "):
        build_sequences([ScoreItem(task, 0, g, Augmentation())], max_prompt_len=10)


def _full_vocab_model(seed: int = 2):
    """A tiny model with 40 token ids whose compact ids map to scattered ones (as a real
    tokenizer's '0'..'9', newline and markers do)."""
    import dataclasses

    import torch

    from arcfast.model import build_model, init_weights, preset

    ids = tuple(int(i) for i in np.random.default_rng(3).permutation(40)[:T.VOCAB_SIZE])
    cfg = dataclasses.replace(preset("tiny"), vocab_size=40, token_ids=ids)
    return init_weights(build_model(cfg, dtype=torch.float32, device="cpu"), seed=seed, std=0.3).eval()


def test_full_vocabulary_model_scores_through_its_token_ids(items):
    m = _full_vocab_model()
    six = [it._replace(adapter=-1) for it in items[:6]]
    got = score_candidates(m, None, six, batch_tokens=200)
    np.testing.assert_allclose(got, _reference(m, None, six), rtol=0, atol=ATOL)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_and_scoring_agree_on_a_full_vocabulary_model(temperature):
    m = _full_vocab_model()
    lora = _lora(m, 2, seed=4)
    task = _task("f", 3)
    augs = tta(task, 4)
    prompts = build_inference_prompts(task, 0, augs)
    adapters = [-1, 0, 1, -1]
    gens = generate(m, prompts, adapters, lora=lora, max_new_tokens=12, temperature=temperature, seed=1)
    for g in gens:   # compact ids out, whatever the model's own ids are
        assert len(g.tokens) and all(0 <= int(t) < T.VOCAB_SIZE for t in g.tokens)
    seqs = Sequences(prompts, [g.tokens for g in gens], np.array(adapters))
    np.testing.assert_allclose(score_sequences(m, lora, seqs, batch_tokens=128), [g.logprob for g in gens],
                               rtol=0, atol=ATOL)
    for lp, g in zip(target_logprobs(m, lora, seqs), gens):
        np.testing.assert_allclose(lp, g.logprobs, rtol=0, atol=2e-4)


def test_greedy_generation_on_a_full_vocabulary_model_equals_a_plain_loop():
    """The reference: the model's own forward over the whole sequence in its own ids, the argmax
    among the compact ids' columns, its log-softmax over all 40 ids."""
    import torch

    m = _full_vocab_model(seed=5)
    task = _task("p", 4)
    prompt = build_inference_prompts(task, 0, [Augmentation()])[0]
    table = np.asarray(m.config.token_ids)
    seq, want_tok, want_lp = list(prompt), [], []
    with torch.no_grad():
        for _ in range(10):
            logits = m.logits(m(torch.as_tensor(table[seq])[None]))[0, -1].float()
            c = int(torch.argmax(logits[torch.as_tensor(table)]))
            want_tok.append(c)
            want_lp.append(float(torch.log_softmax(logits, -1)[table[c]]))
            seq.append(c)
            if c == T.EOG:
                break
    g = generate(m, [prompt], max_new_tokens=10)[0]
    assert [int(t) for t in g.tokens] == want_tok
    np.testing.assert_allclose(g.logprobs, want_lp, rtol=0, atol=2e-5)
