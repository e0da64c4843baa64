"""Training objectives `input` and `verify` beside `output` (docs/FORMAT.md, "Objectives"): C++ ==
reference byte for byte, layouts and loss positions, verify labels and candidates, corruptions,
mixture shares, listed wrong predictions, objective ids of packed batches, verification prompts."""
import hashlib
from collections import Counter

import numpy as np
import pytest

from arcfast import _core
from arcfast.arc import vocab as T
from arcfast.arc.augment import AugmentConfig, Augmentation, Composition
from arcfast.samples.packing import PackedStream
from arcfast.samples.prompts import build_inference_prompts, build_verify_prompts
from arcfast.reference import pipeline as R
from arcfast.samples.sampling import (
    CANDIDATE_KINDS,
    CORRUPTIONS,
    OBJECTIVES,
    SampleConfig,
    make_samples,
    pool_inputs,
    pool_pairs,
    task_store,
)
from arcfast.arc.task import Pair, Task
from test_prompts import _read_grid

MIX = (("output", 1.0), ("input", 0.5), ("verify", 0.5))


@pytest.fixture(scope="module")
def arc_tasks():
    from arcfast.arc.loading import load_tasks

    return load_tasks("arc1:train[:40]")


def _grid(rng, h, w, colors=10):
    return rng.integers(0, colors, (h, w), dtype=np.uint8)


def _task(task_id="obj", n_train=4, n_test=2, known=True, seed=0, size=(3, 4)):
    rng = np.random.default_rng(seed)
    train = [Pair(_grid(rng, *size), _grid(rng, *size)) for _ in range(n_train)]
    test = [Pair(_grid(rng, *size), _grid(rng, *size) if known else None) for _ in range(n_test)]
    return Task(task_id, train, test, source="mem")


def _wrong_for(tasks, seed=0, every=2):
    """Listed wrong predictions for every `every`-th task: per pair, a corruption of its output, the
    output itself (must be ignored) and another pair's output."""
    rng = np.random.default_rng(seed)
    wrong = {}
    for k, t in enumerate(tasks[::every]):
        pairs = list(t.train) + list(t.test)
        per = {}
        for i, p in enumerate(pairs):
            if p.output is None or rng.random() < 0.3:
                continue
            bad = p.output.copy()
            bad[0, 0] = (bad[0, 0] + 1) % 10
            other = pairs[(i + 1) % len(pairs)].output
            per[i] = [bad, p.output.copy(), bad if other is None else other]
        wrong[t.id] = per
    return wrong


def _parse(ids):
    """[(marker, grid, (start, end) of the grid's tokens)] of a prompt, and what follows the last grid."""
    ids = [int(x) for x in ids]
    assert ids[0] == T.BOS
    i, out = 1, []
    while i < len(ids) and ids[i] in (T.INPUT, T.OUTPUT, T.CANDIDATE):
        marker = ids[i]
        g, end = _read_grid(ids, i + 1)
        out.append((marker, g, (i + 1, end)))
        i = end
    return out, ids[i:]


# ------------------------------------------------------------------------------------------------
# the default stays what it was

# sha256 (first 32 hex digits) of each sample's input_ids then labels bytes, recorded before the
# objectives existed (arc1:train[:40], 5 slots per task, seed 7); and of 5 flat-stream batches.
BEFORE = {
    "default": (200, "f8c8f9055b28aa5dea53f624d4355e69"),
    "pretrain-outputs-comp": (198, "e4cbdde06985aba5883c5a69a993503a"),
    "skip": (160, "0e88f6925d94f7a48297d8aa0b9df45f"),
}


def _digest(samples):
    m = hashlib.sha256()
    for s in samples:
        m.update(s.input_ids.tobytes())
        m.update(s.labels.tobytes())
    return m.hexdigest()[:32]


@pytest.mark.parametrize("threads", [1, 2])
def test_default_config_gives_the_samples_of_before(arc_tasks, threads):
    cases = {
        "default": (SampleConfig(), AugmentConfig()),
        "pretrain-outputs-comp": (SampleConfig(mode="pretrain", loss_on="outputs", max_len=2048),
                                  AugmentConfig(composition_prob=0.5)),
        "skip": (SampleConfig(max_len=1500, on_too_long="skip"), AugmentConfig()),
    }
    for name, (sc, ac) in cases.items():
        got = make_samples(arc_tasks, 5, seed=7, config=sc, augment=ac, threads=threads)
        assert (len(got), _digest(got)) == BEFORE[name], name
        assert all(s.objective == "output" and s.candidate is None for s in got)
        assert got.stats.objective_output == len(got) and got.stats.objective_verify == 0
        # output alone, however spelled, is the same draw
        same = make_samples(arc_tasks[:5], 5, seed=7, config=SampleConfig(
            mode=sc.mode, loss_on=sc.loss_on, max_len=sc.max_len, on_too_long=sc.on_too_long,
            objectives={"output": 3.0, "verify": 0.0}), augment=ac, threads=threads)
        assert [s.input_ids.tolist() for s in same] == [s.input_ids.tolist() for s in got.samples[:len(same)]]
    m = hashlib.sha256()
    with PackedStream(arc_tasks, seed=3, rows=4, threads=threads, batches=5) as st:
        for b in st:
            for f in ("input_ids", "labels", "position_ids", "sample_ids", "adapter_ids", "cu_seqlens"):
                m.update(getattr(b, f).tobytes())
    assert m.hexdigest()[:32] == "8b4231812539164a16d07896b3c28e6c"


# ------------------------------------------------------------------------------------------------
# C++ == reference

def _check_equal(got, ref, cnt, sc):
    assert len(got) == len(ref) > 0
    for s, (p, ids, labels) in zip(got, ref):
        where = (s.task_id, s.index)
        assert (s.task_index, s.index, s.attempt, s.target) == (p.task, p.index, p.attempt, p.target), where
        assert s.objective == OBJECTIVES[p.objective], where
        assert list(s.demos) == p.pairs[:-1], where
        assert s.augmentation.transform == p.transform and list(s.augmentation.colors) == p.colors, where
        comp = s.augmentation.composition
        assert (None if comp is None else comp.to_core()) == p.comp, where
        assert s.dropped_demos == p.dropped, where
        if p.objective == 2:
            assert s.candidate == CANDIDATE_KINDS[p.cand_kind], where
            assert s.candidate_grid.dtype == np.uint8 and np.array_equal(s.candidate_grid, p.candidate), where
        else:
            assert s.candidate is None and s.candidate_grid is None, where
        assert s.input_ids.dtype == np.int32 and s.labels.dtype == np.int32
        assert s.input_ids.tolist() == ids, where
        assert s.labels.tolist() == labels, where
        assert len(s) <= sc.max_len
    assert got.stats.as_dict() == cnt.__dict__


@pytest.mark.parametrize("objectives", [(("input", 1.0),), (("verify", 1.0),), MIX,
                                        (("output", 0.2), ("verify", 0.8))])
@pytest.mark.parametrize("mode, loss_on, comp", [("ttft", "target", 0.0), ("pretrain", "outputs", 0.6),
                                                 ("ttft", "outputs", 0.6)])
@pytest.mark.parametrize("listed", [False, True])
def test_cpp_samples_equal_the_reference(arc_tasks, objectives, mode, loss_on, comp, listed):
    sc = SampleConfig(mode=mode, loss_on=loss_on, objectives=objectives, max_len=4096, verify_right=0.4)
    ac = AugmentConfig(composition_prob=comp)
    wrong = _wrong_for(arc_tasks, seed=len(objectives)) if listed else None
    got = make_samples(arc_tasks, 3, seed=17 + len(objectives), config=sc, augment=ac, threads=2, wrong=wrong)
    ref, cnt = R.make_samples(arc_tasks, 3, 17 + len(objectives), sc, ac, wrong)
    _check_equal(got, ref, cnt, sc)


@pytest.mark.parametrize("sc, ac", [
    (SampleConfig(objectives=MIX, max_len=600, max_demos=3), AugmentConfig(composition_prob=1.0,
                                                                          composition_sides=("output",))),
    (SampleConfig(objectives=MIX, max_len=500, on_too_long="skip", max_attempts=3, verify_right=0.0),
     AugmentConfig(permute_colors=False, shuffle_demos=False, composition_prob=0.5,
                   composition_kinds=("upscale", "mirror"))),
    (SampleConfig(mode="pretrain", objectives=(("verify", 1.0), ("input", 1.0)), verify_right=1.0),
     AugmentConfig(transforms=(0, 4), keep_zero_prob=0.0, composition_prob=0.5, composition_sides=("input",))),
])
def test_cpp_equals_the_reference_on_small_grids_length_limits_and_edge_settings(sc, ac):
    tasks = [_task(f"e{i}", n_train=2 + i % 4, n_test=1 + i % 2, seed=i, size=(1 + i % 9, 1 + (3 * i) % 8))
             for i in range(16)]
    got = make_samples(tasks, 12, seed=5, config=sc, augment=ac, threads=2, wrong=_wrong_for(tasks, every=3))
    ref, cnt = R.make_samples(tasks, 12, 5, sc, ac, _wrong_for(tasks, every=3))
    _check_equal(got, ref, cnt, sc)


@pytest.mark.parametrize("per_task, rows", [(2, None), (None, 3)])
def test_stream_batches_equal_the_reference_and_carry_each_sample_s_objective(arc_tasks, per_task, rows):
    tasks = arc_tasks[:12]
    sc = SampleConfig(objectives=MIX, max_len=4096, loss_on="outputs")
    ac = AugmentConfig(composition_prob=0.5)
    wrong = _wrong_for(tasks)
    st = _core.PackedStream(task_store(tasks, wrong), 21, sc.to_core(), ac.to_core(), 4096, rows or 0,
                            per_task or 0, 24, 2, 2, 2)
    ref = R.stream(tasks, 21, sc, ac, 4096, rows or 0, per_task or 0, 24, 2, wrong)
    seen = Counter()
    for i in range(6):
        b, want = st.next(), next(ref)
        for f in ("input_ids", "labels", "position_ids", "sample_ids", "adapter_ids", "cu_seqlens", "objective_ids"):
            assert np.array_equal(b[f], want[f]), (i, f)
        stats = b["stats"]
        assert {k: stats[k] for k in want["stats"]} == want["stats"]
        ob = b["objective_ids"]
        assert ob.dtype == np.int32 and len(ob) == b["sample_ids"].max() + 1
        # each sample's layout says its objective
        for k, o in enumerate(ob.tolist()):
            ids = b["input_ids"][b["sample_ids"] == k]
            assert (T.OUTPUT in ids) == (o != 1) and (T.CANDIDATE in ids) == (o == 2), (i, k, o)
            seen[OBJECTIVES[o]] += 1
    st.close()
    assert set(seen) == set(OBJECTIVES)
    # PackedStream (Python) passes the mixture through to the core: the same token arrays without `wrong`
    ref = R.stream(tasks, 21, sc, ac, 4096, rows or 0, per_task or 0, 24, 2)
    with PackedStream(tasks, 21, row_len=4096, samples_per_task=per_task, rows=rows, window=24, max_wait=2,
                      config=sc, augment=ac, batches=3) as ps:
        for b in ps:
            want = next(ref)
            assert np.array_equal(b.input_ids, want["input_ids"]) and np.array_equal(b.labels, want["labels"])
    assert ps.stats.objective_output + ps.stats.objective_input + ps.stats.objective_verify == ps.stats.drawn


def test_pack_returns_objective_ids_in_batch_numbering():
    tasks = [_task(f"p{i}", seed=i) for i in range(5)]
    samples = make_samples(tasks, 6, seed=2, config=SampleConfig(objectives=MIX, max_len=1024))
    ids = np.concatenate([s.input_ids for s in samples])
    labels = np.concatenate([s.labels for s in samples])
    lens = [len(s) for s in samples]
    obj = [s.objective_id for s in samples]
    d = _core.pack(ids, labels, lens, [s.task_index for s in samples], 1024, 0, objective_ids=obj)
    ref = R.pack([(s.input_ids.tolist(), s.labels.tolist(), s.task_index, s.objective_id) for s in samples], 1024)
    for f in ("input_ids", "labels", "sample_ids", "objective_ids"):
        assert np.array_equal(d[f], ref[f]), f
    assert sorted(d["objective_ids"].tolist()) == sorted(obj)
    assert "objective_ids" not in _core.pack(ids, labels, lens, [0] * len(lens), 1024, 0)


# ------------------------------------------------------------------------------------------------
# layouts and loss positions

@pytest.mark.parametrize("loss_on", ["target", "outputs"])
@pytest.mark.parametrize("mode", ["ttft", "pretrain"])
def test_input_objective_layout_pool_and_loss(loss_on, mode):
    task = _task(n_train=3, n_test=2, known=mode == "pretrain")
    sc = SampleConfig(mode=mode, loss_on=loss_on, objectives=(("input", 1.0),))
    samples = make_samples([task], 50, seed=4, config=sc, augment=AugmentConfig(composition_prob=0.5))
    pool = pool_inputs(task)
    assert len(pool) == 5  # the test inputs join the train inputs in both modes
    for s in samples:
        grids, rest = _parse(s.input_ids)
        assert rest == [] and all(m == T.INPUT for m, _, _ in grids)
        order = list(s.demos) + [s.target]
        assert len(grids) == len(order) == 5
        want = np.zeros(len(s), bool)
        for k, ((_, g, (a, b)), p) in enumerate(zip(grids, order)):
            assert np.array_equal(g, s.augmentation.apply_grid(pool[p], "input"))
            if k == len(order) - 1 or (loss_on == "outputs" and k > 0):
                want[a:b] = True
        assert np.array_equal(s.labels != T.IGNORE_INDEX, want)
        assert np.array_equal(s.labels[want], s.input_ids[want])
    # balanced targets over the input pool: every pair once in each run of 5 slots
    targets = [s.target for s in samples]
    assert all(sorted(targets[5 * e:5 * e + 5]) == list(range(5)) for e in range(10))


def test_output_and_verify_share_the_balanced_targets():
    task = _task(n_train=5, n_test=1)
    sc = SampleConfig(objectives=(("output", 1.0), ("verify", 1.0), ("input", 1.0)))
    samples = make_samples([task], 3000, seed=8, config=sc, augment=AugmentConfig.none())
    pairs = {}
    for s in samples:
        key = "input" if s.objective == "input" else "pairs"
        pairs.setdefault(key, {})[s.index] = s.target
    # slots i..i+4 of the pair pool: each pair once as a target over output and verify slots together
    for e in range(600):
        got = [pairs["pairs"][i] for i in range(5 * e, 5 * e + 5) if i in pairs["pairs"]]
        assert len(set(got)) == len(got)
    counts = Counter(s.target for s in samples if s.objective != "input")
    n = sum(counts.values())
    assert sorted(counts) == list(range(5)) and all(abs(c / n - 0.2) < 0.01 for c in counts.values())
    counts = Counter(s.target for s in samples if s.objective == "input")
    n = sum(counts.values())
    assert sorted(counts) == list(range(6)) and all(abs(c / n - 1 / 6) < 0.03 for c in counts.values())


def _candidate_from_prompt(s):
    grids, rest = _parse(s.input_ids)
    assert grids[-1][0] == T.CANDIDATE and rest[:1] == [T.VERDICT] and len(rest) == 2
    assert [m for m, _, _ in grids[:-2]] == [T.INPUT, T.OUTPUT] * (len(grids[:-2]) // 2)
    assert grids[-2][0] == T.INPUT
    return grids[-1][1], rest[1]


@pytest.mark.parametrize("mode, comp_sides", [("ttft", ("output",)), ("pretrain", ("input", "output"))])
def test_verify_label_is_yes_exactly_when_the_candidate_is_the_augmented_right_output(arc_tasks, mode, comp_sides):
    sc = SampleConfig(mode=mode, objectives=(("verify", 1.0),), verify_right=0.5)
    ac = AugmentConfig(composition_prob=0.7, composition_sides=comp_sides)
    samples = make_samples(arc_tasks, 12, seed=3, config=sc, augment=ac, wrong=_wrong_for(arc_tasks))
    labels = Counter()
    for s in samples:
        pool = pool_pairs(arc_tasks[s.task_index], mode)
        cand, verdict = _candidate_from_prompt(s)
        right = s.augmentation.apply_grid(pool[s.target].output, "output")
        assert verdict == (T.YES if np.array_equal(cand, right) else T.NO)
        assert (verdict == T.YES) == (s.candidate == "right")
        # the loss is on the label alone, the last position
        assert np.flatnonzero(s.labels != T.IGNORE_INDEX).tolist() == [len(s) - 1]
        assert s.labels[-1] == s.input_ids[-1] == verdict
        # the target input is the pool's, augmented
        grids, _ = _parse(s.input_ids)
        assert np.array_equal(grids[-2][1], s.augmentation.apply_grid(pool[s.target].input, "input"))
        labels[verdict] += 1
    assert abs(labels[T.YES] / len(samples) - 0.5) < 0.06


@pytest.mark.parametrize("comp_sides", [("output",), ("input",)])
def test_the_candidate_goes_through_the_outputs_augmentation(arc_tasks, comp_sides):
    sc = SampleConfig(objectives=(("verify", 1.0),), verify_right=0.2)
    ac = AugmentConfig(composition_prob=1.0, composition_sides=comp_sides)
    samples = make_samples(arc_tasks, 10, seed=12, config=sc, augment=ac)
    composed = 0
    for s in samples:
        cand, _ = _candidate_from_prompt(s)
        assert np.array_equal(cand, s.augmentation.apply_grid(s.candidate_grid, "output"))
        back = s.augmentation.invert_grid(cand)
        assert back is not None and np.array_equal(back, s.candidate_grid)
        right = pool_pairs(arc_tasks[s.task_index])[s.target].output
        assert np.array_equal(s.candidate_grid, right) == (s.candidate == "right")
        composed += s.augmentation.composition is not None
    assert composed > len(samples) // 3


# ------------------------------------------------------------------------------------------------
# corruptions

def _shapes():
    rng = np.random.default_rng(0)
    grids = [np.array([[c]], np.uint8) for c in (0, 7)]                          # 1x1
    grids += [np.full((30, 30), 4, np.uint8), _grid(rng, 30, 30), _grid(rng, 30, 30, colors=2)]  # at the limit
    grids += [np.full((3, 3), 5, np.uint8), np.full((1, 6), 2, np.uint8), np.full((5, 1), 9, np.uint8)]
    grids += [np.array([[1, 2], [2, 1]], np.uint8), np.array([[1, 1], [1, 1]], np.uint8)]  # symmetric
    grids += [_grid(rng, int(h), int(w), colors=1 + int(c) % 10) for h, w, c in rng.integers(1, 12, (12, 3))]
    return grids


def test_corruptions_never_equal_the_right_output_and_equal_the_reference():
    applied = Counter()
    for gi, right in enumerate(_shapes()):
        inputs = [right, right.T.copy(), np.zeros((2, 2), np.uint8)]
        for kind_id, kind in enumerate(CORRUPTIONS, start=2):
            for seed in range(40):
                inp = inputs[seed % 3]
                state = (gi * 1000 + kind_id * 100 + seed) * 0x9E3779B97F4A7C15 % 2 ** 64
                got = _core.corrupt(right, inp, kind_id, 30, state)
                want = R.corrupt(kind_id, right, inp, 30, R.Rng(state))
                assert (got is None) == (want is None), (gi, kind, seed)
                if got is None:
                    continue
                applied[kind] += 1
                assert np.array_equal(got, want), (gi, kind, seed)
                assert got.dtype == np.uint8 and 1 <= min(got.shape) and max(got.shape) <= 30
                assert not np.array_equal(got, right), (gi, kind, seed)
                h, w = right.shape
                if kind == "cells":
                    n = int((got != right).sum())
                    assert 1 <= n <= max(1, h * w // 10)
                if kind in ("add_row", "drop_row", "add_col", "drop_col"):
                    dh, dw = {"add_row": (1, 0), "drop_row": (-1, 0), "add_col": (0, 1), "drop_col": (0, -1)}[kind]
                    assert got.shape == (h + dh, w + dw)
                if kind == "swap_colors":
                    assert got.shape == right.shape and len(set(zip(right.ravel(), got.ravel()))) == len(
                        set(right.ravel().tolist()))
    assert set(applied) == set(CORRUPTIONS)
    # what cannot apply: nothing to add at the limit, nothing to drop from one row, a grid no
    # transform changes, an input equal to the output
    full, one = np.full((30, 30), 4, np.uint8), np.array([[3]], np.uint8)
    assert _core.corrupt(full, full, 4, 30, 1) is None and _core.corrupt(full, full, 6, 30, 1) is None
    assert _core.corrupt(one, one, 5, 30, 1) is None and _core.corrupt(one, one, 7, 30, 1) is None
    assert _core.corrupt(one, one, 8, 30, 1) is None and _core.corrupt(one, one, 9, 30, 1) is None
    with pytest.raises(ValueError, match="corruption id"):
        _core.corrupt(one, one, 1, 30, 1)


def test_verify_candidates_are_never_the_right_output_when_labelled_no_and_every_kind_occurs():
    rng = np.random.default_rng(5)
    tasks = []
    for i, right in enumerate(_shapes()):
        # pairs whose outputs are the edge grids: 1x1, 30x30, single-colour, symmetric
        train = [Pair(_grid(rng, *right.shape) if i % 2 else right.copy(), right.copy())]
        train += [Pair(_grid(rng, 2, 2), _grid(rng, 2, 3)) for _ in range(2)]
        tasks.append(Task(f"edge{i}", train, [], source="mem"))
    sc = SampleConfig(objectives=(("verify", 1.0),), verify_right=0.1, max_len=8192)
    wrong = {t.id: {1: [t.train[1].output, np.array([[9]], np.uint8)]} for t in tasks[::2]}
    got = make_samples(tasks, 120, seed=1, config=sc, augment=AugmentConfig(composition_prob=0.3), wrong=wrong)
    assert got.stats.empty_slots == 0
    for s in got:
        right = tasks[s.task_index].train[s.target].output
        assert np.array_equal(s.candidate_grid, right) == (s.candidate == "right"), (s.task_id, s.index)
        if s.candidate == "prediction":
            assert s.target == 1 and np.array_equal(s.candidate_grid, [[9]])  # the right one is never listed
    kinds = Counter(s.candidate for s in got)
    assert set(kinds) == set(CANDIDATE_KINDS), kinds
    assert got.stats.candidates == {k: kinds[k] for k in CANDIDATE_KINDS}
    assert got.stats.candidate_fallbacks > 0  # symmetric and 1x1 grids: transform, drop_* cannot apply
    ref, cnt = R.make_samples(tasks, 120, 1, sc, AugmentConfig(composition_prob=0.3), wrong)
    _check_equal(got, ref, cnt, sc)


# ------------------------------------------------------------------------------------------------
# the mixture and listed predictions

def test_mixture_shares_and_verify_right_are_met(arc_tasks):
    sc = SampleConfig(objectives=MIX, verify_right=0.3)
    got = make_samples(arc_tasks, 150, seed=2, config=sc, augment=AugmentConfig(), wrong=_wrong_for(arc_tasks, every=1))
    n = len(got)
    shares = {k: v / n for k, v in got.stats.objectives.items()}
    assert abs(shares["output"] - 0.5) < 0.02 and abs(shares["input"] - 0.25) < 0.02
    assert abs(shares["verify"] - 0.25) < 0.02
    assert Counter(s.objective for s in got) == Counter(got.stats.objectives)
    v = got.stats.objective_verify
    assert abs(got.stats.candidate_right / v - 0.3) < 0.03
    # about half of the wrong candidates of pairs with listed predictions are listed ones
    with_list = [s for s in got if s.objective == "verify" and s.candidate != "right"
                 and s.target in _wrong_for(arc_tasks, every=1)[s.task_id]]
    assert abs(sum(s.candidate == "prediction" for s in with_list) / len(with_list) - 0.5) < 0.06
    # each corruption about equally often among the synthetic ones
    synth = Counter(s.candidate for s in got if s.candidate in CORRUPTIONS)
    assert set(synth) == set(CORRUPTIONS)
    # a slot's objective depends on (seed, task id, slot) only
    other = make_samples(arc_tasks[::-1][:10], 150, seed=2, config=sc, threads=1)
    by_slot = {(s.task_id, s.index): s.objective for s in got}
    assert all(by_slot[(s.task_id, s.index)] == s.objective for s in other)


def test_listed_wrong_predictions_equal_to_the_right_output_are_ignored():
    task = _task("w", n_train=3, n_test=1)
    sc = SampleConfig(objectives=(("verify", 1.0),), verify_right=0.0)
    same = {"w": {i: [p.output.copy()] for i, p in enumerate(task.train)}}
    got = make_samples([task], 300, seed=0, config=sc, wrong=same)
    assert got.stats.candidate_prediction == 0 and got.stats.candidate_right == 0
    assert all(s.candidate in CORRUPTIONS for s in got)
    bad = np.zeros((2, 2), np.uint8)
    listed = {"w": {0: [bad]}, "not-a-task": {9: [bad]}}  # ids not among the tasks are ignored
    got = make_samples([task], 300, seed=0, config=sc, wrong=listed)
    preds = [s for s in got if s.candidate == "prediction"]
    assert preds and all(s.target == 0 and np.array_equal(s.candidate_grid, bad) for s in preds)
    assert all(s.input_ids[-1] == T.NO for s in got)
    # pretrain: a known test pair is pair n_train + k
    got = make_samples([task], 300, seed=0, config=SampleConfig(mode="pretrain", objectives=(("verify", 1.0),),
                                                                verify_right=0.0), wrong={"w": {3: [bad]}})
    assert {s.target for s in got if s.candidate == "prediction"} == {3}
    with pytest.raises(ValueError, match=r"task w \(mem\): wrong predictions for pair 4, out of range"):
        make_samples([task], 1, wrong={"w": {4: [bad]}})
    unknown = _task("u", n_train=3, n_test=1, known=False)
    with pytest.raises(ValueError, match=r"pair 3 \(test\[0\]\), whose output is unknown"):
        make_samples([unknown], 1, wrong={"u": {3: [bad]}})
    with pytest.raises(ValueError, match=r"wrong prediction 1 of train\[0\]: colour 11"):
        make_samples([task], 1, wrong={"w": {0: [bad, np.array([[11]])]}})


def test_length_limit_applies_to_the_new_layouts():
    task = _task("long", n_train=6, n_test=2, size=(9, 9))  # 91 tokens a grid
    for obj in ("input", "verify"):
        sc = SampleConfig(objectives=((obj, 1.0),), max_len=450)
        got = make_samples([task], 40, seed=1, config=sc, augment=AugmentConfig.none())
        assert len(got) == 40 and all(len(s) <= 450 for s in got)
        assert got.stats.trimmed == 40 and all(s.dropped_demos > 0 and len(s.demos) >= 1 for s in got)
        full = make_samples([task], 40, seed=1, config=SampleConfig(objectives=((obj, 1.0),)),
                            augment=AugmentConfig.none())
        assert all(a.demos == b.demos[:len(a.demos)] for a, b in zip(got, full))
        skip = make_samples([task], 10, seed=1, config=SampleConfig(objectives=((obj, 1.0),), max_len=150,
                                                                    on_too_long="skip", max_attempts=2))
        assert len(skip) == 0 and skip.stats.empty_slots == 10 and skip.stats.skipped == 20


def test_config_and_pool_errors():
    with pytest.raises(ValueError, match="unknown objective 'outputs'"):
        SampleConfig(objectives=(("outputs", 1.0),))
    with pytest.raises(ValueError, match="at least one weight"):
        SampleConfig(objectives=(("output", 0.0),))
    with pytest.raises(ValueError, match="given twice"):
        SampleConfig(objectives=(("input", 1.0), ("input", 2.0)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        SampleConfig(objectives=(("input", -1.0),))
    with pytest.raises(ValueError, match="verify_right"):
        SampleConfig(verify_right=1.5)
    assert SampleConfig(objectives={"verify": 1, "output": 2}).objectives == (("output", 2.0), ("verify", 1.0))
    assert SampleConfig().objectives == (("output", 1.0),) and SampleConfig().weights == (1.0, 0.0, 0.0)
    # ttft with one train pair: output and verify have nothing to leave out, input has the test input
    solo = _task("solo", n_train=1, n_test=1, known=False)
    with pytest.raises(ValueError, match=r"task solo \(mem\): 1 usable pair\(s\); leave-one-out sampling "
                                         r"\(the verify objective\)"):
        make_samples([solo], 1, config=SampleConfig(objectives=(("verify", 1.0),)))
    assert len(make_samples([solo], 4, config=SampleConfig(objectives=(("input", 1.0),)))) == 4
    lonely = Task("lonely", [Pair(np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8))], [], "mem")
    with pytest.raises(ValueError, match=r"task lonely \(mem\): 1 input grid\(s\); the input objective"):
        make_samples([lonely], 1, config=SampleConfig(objectives=(("input", 1.0),)))


# ------------------------------------------------------------------------------------------------
# verification prompts at inference

def test_verify_prompts_are_the_inference_prompts_with_the_candidate(arc_tasks):
    from arcfast.arc.augment import test_time_augmentations

    task = arc_tasks[3]
    augs = test_time_augmentations(task, 5, seed=2) + [
        Augmentation(transform=5, order=(1, 0), composition=Composition("output", "pad", 1, 3))]
    right = task.test[0].output
    cands = [right, np.rot90(right).copy(), np.zeros((2, 3), np.uint8)]
    got = build_verify_prompts(task, 0, cands, augs)
    inf = build_inference_prompts(task, 0, augs)
    assert len(got) == len(cands) * len(augs)
    for c, cand in enumerate(cands):
        for a, aug in enumerate(augs):
            p = got[c * len(augs) + a]
            assert p.dtype == np.int32 and p[-1] == T.VERDICT
            n = len(inf[a]) - 1  # the inference prompt up to its final OUTPUT marker
            assert np.array_equal(p[:n], inf[a][:n]) and p[n] == T.CANDIDATE
            g, end = _read_grid(p.tolist(), n + 1)
            assert end == len(p) - 1 and np.array_equal(g, aug.apply_grid(cand, "output"))
            assert np.array_equal(aug.invert_grid(g), cand)
            order = list(range(len(task.train))) if aug.order is None else list(aug.order)
            comp = None if aug.composition is None else aug.composition.to_core()
            ref, used = R.verify_prompt(task, 0, cand, aug.transform, aug.colors, comp, order, 0)
            assert p.tolist() == ref and used == order


def test_verify_prompt_length_limit_and_errors():
    task = _task("v", n_train=4, n_test=1, seed=5)
    cand = np.ones((2, 2), np.uint8)
    full = build_verify_prompts(task, 0, [cand], [Augmentation()])[0]
    demo_lens = [2 + T.grid_len(*p.input.shape) + T.grid_len(*p.output.shape) for p in task.train]
    limit = len(full) - demo_lens[3] - 1
    cut = build_verify_prompts(task, 0, [cand], [Augmentation()], max_len=limit)[0]
    assert len(cut) == len(full) - demo_lens[3] - demo_lens[2]
    assert np.array_equal(cut, build_verify_prompts(task, 0, [cand], [Augmentation(order=(0, 1))])[0])
    ref, used = R.verify_prompt(task, 0, cand, 0, range(10), None, range(4), limit)
    assert cut.tolist() == ref and used == [0, 1]
    tiny = 1 + demo_lens[0] + 1 + T.grid_len(*task.test[0].input.shape) + 1 + T.grid_len(2, 2) + 1
    assert len(build_verify_prompts(task, 0, [cand], [Augmentation()], max_len=tiny)[0]) == tiny
    with pytest.raises(ValueError, match="with one demonstration, over max_len"):
        build_verify_prompts(task, 0, [cand], [Augmentation()], max_len=tiny - 1)
    with pytest.raises(ValueError, match=r"task v: test 0: candidate 1: colour 12 at row 0, column 1"):
        build_verify_prompts(task, 0, [cand, np.array([[1, 12]])], [Augmentation()])
    with pytest.raises(ValueError, match="over the size limit"):
        build_verify_prompts(task, 0, [np.ones((12, 12), np.uint8)],
                             [Augmentation(composition=Composition("output", "upscale", 3, 3))])
    with pytest.raises(ValueError, match="test index 2 out of range"):
        build_verify_prompts(task, 2, [cand], [Augmentation()])
