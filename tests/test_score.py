"""arcfast.infer.rescore against its references: each sequence alone through the model's own forward, and
the log-probabilities generation records for its own outputs."""
import numpy as np
import pytest
import torch

from arcfast.arc import vocab as T
from arcfast.arc.augment import Augmentation, test_time_augmentations as tta
from arcfast.infer.decoding import GenerationConfig
from arcfast.infer.generate import generate
from arcfast.infer.predict import predict_tasks
from arcfast.samples.prompts import build_inference_prompts
from arcfast.reference.score import score_item_reference, target_logprobs_reference
from arcfast.infer.rescore import RescoreJob, rank_jobs, rescore_items, rescore_predictions
from arcfast.infer.logprobs import (
    ScoreItem,
    ScoreStats,
    Sequences,
    build_sequences,
    plan_tokens,
    score_candidates,
    score_sequences,
    target_logprobs,
)
from arcfast.arc.task import Task
from arcfast.answers.vote import Prediction, vote
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

    from arcfast.model.decoder import build_model, init_weights
    from arcfast.model.config import preset

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


# ----------------------------------------------------------------------------------------------
# Prefix-shared scoring: a prompt computed once for all the candidates that share it

def _shared_items(tasks, n_cands: int, n_augs: int, adapters):
    """Rescoring-shaped items: per (task, test input), candidates of different shapes, each under
    the same ``n_augs`` augmentations (candidate-major, so prompts recur apart), through
    ``adapters[k]`` for the k-th (task, test input)."""
    out, k = [], 0
    for t in tasks:
        augs = tta(t, n_augs, seed=k)
        for ti in range(len(t.test)):
            grids = _grids(100 + k, n_cands)
            out += [ScoreItem(t, ti, g, a, adapters[k % len(adapters)]) for g in grids for a in augs]
            k += 1
    return out


def _layout_counter(monkeypatch):
    """Forward positions (non-padding segment positions) of every attention built, and whether
    it was a tree."""
    import arcfast.model.attention as A

    seen = []

    class Tree(A.TreeAttention):
        def __init__(self, segment_ids, branch_ids, *a, **kw):
            seen.append(("tree", int((np.asarray(segment_ids) >= 0).sum())))
            super().__init__(segment_ids, branch_ids, *a, **kw)

    class Packed(A.PackedAttention):
        def __init__(self, sample_ids, *a, **kw):
            seen.append(("packed", int((sample_ids >= 0).sum())))
            super().__init__(sample_ids, *a, **kw)

    monkeypatch.setattr(A, "TreeAttention", Tree)
    monkeypatch.setattr(A, "PackedAttention", Packed)
    return seen


@pytest.mark.parametrize("row_len", [4096, 100])
def test_prefix_shared_scores_equal_whole_packing_and_the_reference(model, lora, row_len, monkeypatch):
    # 2 tasks x 2 test inputs x 3 augmentations = 12 prompts of 52-76 tokens, 4 candidates of 4-17
    # tokens each, through the base model and three adapters; the first (task, test input) again
    # through another adapter: the same prompts, which must not be shared across adapters. Rows of
    # 100 tokens split most groups into several trees, the prompt repeated.
    tasks = [_task("s1", 21), _trains(_task("s2", 22), 3)]
    items = _shared_items(tasks, 4, 3, [-1, 0, 1, 2])
    twin = [it._replace(adapter=2) for it in items[:12]]
    items = items + twin
    seqs = build_sequences(items)
    assert len({len(t) for t in seqs.targets}) >= 4 and len({len(p) for p in seqs.prompts}) >= 3
    seen = _layout_counter(monkeypatch)
    st = ScoreStats()
    shared = score_candidates(model, lora, items, batch_tokens=600, row_len=row_len, stats=st)
    assert any(kind == "tree" for kind, _ in seen)        # the shared path ran
    assert st.tokens == sum(n for _, n in seen) == sum(plan_tokens(seqs, 600, row_len))
    assert st.whole_tokens == seqs.n_tokens and st.tokens < st.whole_tokens / 2
    if row_len < 4096:
        assert st.tokens > sum(plan_tokens(seqs, 600, 4096)) + 8 * 50    # 8 prompts repeated
    whole = score_candidates(model, lora, items, batch_tokens=600, row_len=row_len, prefix_share=False)
    np.testing.assert_allclose(shared, whole, rtol=0, atol=1e-4)
    np.testing.assert_allclose(shared, _reference(model, lora, items), rtol=0, atol=ATOL)
    # Through the other adapter the twins score otherwise: shared across adapters they would not.
    assert np.abs(shared[:12] - shared[-12:]).min() > 1e-3
    # Per token too.
    per_token = target_logprobs(model, lora, seqs, batch_tokens=600, row_len=row_len)
    for i in range(0, len(seqs), 5):
        want = target_logprobs_reference(model, seqs.prompts[i], seqs.targets[i], lora, int(seqs.adapters[i]))
        np.testing.assert_allclose(per_token[i], want, atol=2e-4)


def test_prefix_shared_scores_on_a_full_vocabulary_model():
    m = _full_vocab_model(seed=6)
    lora = _lora(m, 2, seed=7)
    items = _shared_items([_task("fv", 31)], 3, 2, [1, -1, 0])
    st = ScoreStats()
    shared = score_candidates(m, lora, items, batch_tokens=400, stats=st)
    assert st.tokens < st.whole_tokens
    np.testing.assert_allclose(shared, score_candidates(m, lora, items, batch_tokens=400, prefix_share=False),
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(shared, _reference(m, lora, items), rtol=0, atol=ATOL)


def test_prefix_shared_tokens_are_what_the_layout_says(model, monkeypatch):
    rng = np.random.default_rng(41)
    p1 = rng.integers(0, 13, size=30).astype(np.int32)
    p2 = rng.integers(0, 13, size=25).astype(np.int32)
    t = [rng.integers(0, 11, size=n).astype(np.int32) for n in (10, 20, 5, 15, 8, 4)]
    # Interleaved: p1 with targets of 10, 20, 5 and 15 tokens, p2 with 8 and 4: two groups.
    seqs = Sequences([p1, p2, p1, p1, p2, p1], [t[0], t[4], t[1], t[2], t[5], t[3]], np.full(6, -1))
    seen = _layout_counter(monkeypatch)
    st = ScoreStats()
    score_sequences(model, None, seqs, batch_tokens=1000, row_len=60, stats=st)
    # Rows of 60: p1's trees [10, 20] (30 + 30) and [5, 15] (30 + 20); p2's [8, 4] (25 + 12).
    assert plan_tokens(seqs, 1000, 60) == [60 + 50 + 37]
    assert st.tokens == sum(n for _, n in seen) == 147 and st.batches == 1
    assert st.whole_tokens == seqs.n_tokens == 4 * 30 + 2 * 25 + 62
    # Whole-sequence packing computes every prompt and target.
    assert plan_tokens(seqs, 1000, 60, prefix_share=False) == [seqs.n_tokens]
    # One tree a batch when a batch holds no more.
    assert plan_tokens(seqs, 60, 60) == [60, 50, 37]
    # A sequence longer than a row is a tree alone (a batch alone when longer than a batch), in
    # group order; distinct prompts share nothing.
    assert plan_tokens(seqs, 40, 20) == [40, 50, 35, 45, 33, 29]
    assert plan_tokens(seqs, 1000, 20) == [seqs.n_tokens]
    alone = Sequences([p1, p2], [t[0], t[1]], np.array([-1, -1]))
    assert plan_tokens(alone, 1000) == [alone.n_tokens]


def test_a_deadline_cuts_whole_groups_from_the_end(model, lora, monkeypatch):
    """Groups are scored in the order of their first item: a cut leaves the last jobs unscored."""
    import arcfast.infer.logprobs as S

    task = _task("dl", 51)
    augs = tta(task, 3)
    cands = vote([Prediction(g, logprob=-1.0, n_tokens=3) for g in _grids(52, 3)], top_k=None)
    jobs = [RescoreJob(task, 0, cands, augs, 0), RescoreJob(task, 1, cands, augs, 1)]
    items = rescore_items(jobs)
    full = score_candidates(model, lora, items, batch_tokens=120)
    assert len(plan_tokens(build_sequences(items), 120)) == 6     # one (job, augmentation) a batch
    clock = iter(range(100))
    monkeypatch.setattr(S.time, "monotonic", lambda: float(next(clock)))
    st = ScoreStats()
    got = score_candidates(model, lora, items, batch_tokens=120, deadline=3.5, stats=st)   # 4 batches
    assert st.batches == 4 and st.scored == 12 and st.cut_by_deadline == 6
    done = ~np.isnan(got)
    assert done[:9].all() and done[9:].sum() == 3     # job 0 whole, job 1's first augmentation
    np.testing.assert_allclose(got[done], full[done], rtol=0, atol=1e-6)
    ranked = rank_jobs(jobs, got)
    assert ranked[0] is not None and ranked[1] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefix_shared_scores_on_cuda_equal_the_cpu(model, lora, items):
    want = score_candidates(model, lora, items)
    gpu_model = _model().to("cuda")   # the same weights as ``model``
    gpu_lora = _lora(gpu_model, 3, seed=5)
    shared = score_candidates(gpu_model, gpu_lora, items)
    whole = score_candidates(gpu_model, gpu_lora, items, prefix_share=False)
    np.testing.assert_allclose(shared, want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(whole, want, rtol=0, atol=ATOL)
