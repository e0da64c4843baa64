"""Packing and the streaming sampler: PackedBatch invariants, fill, determinism, C++ == reference."""
import numpy as np
import pytest

from arcfast.arc import vocab as T
from arcfast.arc.augment import AugmentConfig
from arcfast.samples.batch import PackedBatch
from arcfast.samples.packing import PackedStream, best_fit_decreasing, pack, padded_fill
from arcfast.reference import pipeline as R
from arcfast.samples.sampling import SampleConfig, make_samples
from arcfast.arc.task import Pair, Task

FIELDS = ("input_ids", "labels", "position_ids", "sample_ids", "adapter_ids", "cu_seqlens")


@pytest.fixture(scope="module")
def eval_tasks():
    from arcfast.arc.loading import load_tasks

    return load_tasks("arc1:eval")


def _tasks(n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        def g():
            return rng.integers(0, 10, tuple(rng.integers(1, 12, 2)), dtype=np.uint8)

        out.append(Task(f"k{i}", [Pair(g(), g()) for _ in range(2 + i % 4)], [Pair(g(), g())], "mem"))
    return out


def check_batch(b: PackedBatch, lengths_by_sample=None):
    """Every PackedBatch convention (arcfast/samples/batch.py), checked position by position."""
    R_, L = b.shape
    for f in FIELDS[:-1]:
        assert getattr(b, f).dtype == np.int32 and getattr(b, f).shape == (R_, L), f
    assert b.cu_seqlens.dtype == np.int32
    pad = b.sample_ids < 0
    assert (b.input_ids[pad] == T.PAD).all() and (b.labels[pad] == T.IGNORE_INDEX).all()
    assert (b.position_ids[pad] == 0).all() and (b.adapter_ids[pad] == -1).all()
    assert not (b.input_ids[~pad] == T.PAD).any()
    lab = b.labels != T.IGNORE_INDEX
    assert np.array_equal(b.labels[lab], b.input_ids[lab])  # HF alignment: the label is the token
    bounds = [0]
    expect_sid = 0
    for r in range(R_):
        sid = b.sample_ids[r]
        c = 0
        while c < L and sid[c] >= 0:
            s = sid[c]
            assert s == expect_sid  # row-major numbering
            n = int((sid == s).sum())
            assert (sid[c:c + n] == s).all()  # contiguous, never straddling rows
            assert (b.sample_ids == s).sum() == n
            assert np.array_equal(b.position_ids[r, c:c + n], np.arange(n))  # restart per sample
            assert b.input_ids[r, c] == T.BOS and b.labels[r, c] == T.IGNORE_INDEX
            assert len(set(b.adapter_ids[r, c:c + n].tolist())) == 1
            if lengths_by_sample is not None:
                lengths_by_sample.append(n)
            c += n
            bounds.append(r * L + c)
            expect_sid += 1
        assert (sid[c:] == -1).all()  # only padding after the last sample
        if c < L:
            bounds.append(r * L + L)
    assert b.cu_seqlens.tolist() == bounds
    assert b.n_samples == expect_sid


def test_best_fit_decreasing_equals_the_reference():
    rng = np.random.default_rng(0)
    for trial in range(30):
        lens = rng.integers(1, 120, rng.integers(1, 60)).tolist()
        for rows in (None, 1, 3):
            row, off, n = best_fit_decreasing(lens, 128, rows)
            ref = R.best_fit_decreasing(lens, list(range(len(lens))), 128, rows or 0)
            assert row.tolist() == ref[0] and off.tolist() == ref[1] and n == ref[2]
            used = np.zeros(n, int)
            for i in range(len(lens)):
                if row[i] >= 0:
                    used[row[i]] += lens[i]
            assert (used <= 128).all()
            if rows is None:
                assert (row >= 0).all() and n >= -(-sum(lens) // 128)
            else:
                # a sample left out fits in no row's free space
                assert all(lens[i] > 128 - used.min() for i in range(len(lens)) if row[i] < 0)


def test_best_fit_decreasing_picks_the_tightest_row():
    row, off, n = best_fit_decreasing([6, 5, 4, 3], 10)
    # 6 -> row 0; 5 -> row 1; 4 fits row 0 (free 4, tightest); 3 -> row 1 (free 5)
    assert row.tolist() == [0, 1, 0, 1] and off.tolist() == [0, 0, 6, 5] and n == 2


def test_pack_invariants_and_reference():
    tasks = _tasks()
    samples = make_samples(tasks, 6, seed=1, config=SampleConfig(max_len=1024),
                           augment=AugmentConfig(composition_prob=0.5))
    b = pack(samples, row_len=1024)
    lens = []
    check_batch(b, lens)
    assert sorted(lens) == sorted(len(s) for s in samples) and b.n_tokens == sum(lens)
    # each sample's tokens and labels are intact, under its task's adapter id
    for s in samples.samples[:10]:
        hits = [(r, c) for r in range(b.shape[0]) for c in np.flatnonzero(b.position_ids[r] == 0)
                if b.sample_ids[r, c] >= 0 and (b.sample_ids[r] == b.sample_ids[r, c]).sum() == len(s)
                and np.array_equal(b.input_ids[r, c:c + len(s)], s.input_ids)]
        assert hits
        r, c = hits[0]
        assert np.array_equal(b.labels[r, c:c + len(s)], s.labels)
        assert (b.adapter_ids[r, c:c + len(s)] == s.task_index).all()
    ref = R.pack([(s.input_ids.tolist(), s.labels.tolist(), s.task_index) for s in samples], 1024)
    for f in FIELDS:
        assert np.array_equal(getattr(b, f), ref[f]), f
    fixed = pack(samples, row_len=1024, rows=b.shape[0] + 2)
    check_batch(fixed)
    assert fixed.shape[0] == b.shape[0] + 2 and (fixed.sample_ids[-2:] == -1).all()
    with pytest.raises(ValueError, match="rows"):
        pack(samples, row_len=1024, rows=1)
    with pytest.raises(ValueError, match="rows hold 64"):
        pack(samples, row_len=64)


def test_fill_bar_on_arc1_eval_ttft_samples(eval_tasks):
    samples = make_samples(eval_tasks, 2, seed=0)
    assert len(samples) == 800 and samples.stats.empty_slots == 0
    b = pack(samples, row_len=8192)
    check_batch(b)
    assert b.fill >= 0.97, b.fill
    assert padded_fill([len(s) for s in samples]) < 0.5  # what padding to the longest would waste
    # the same bar for per-task stream batches (one sample of every task per step)
    with PackedStream(eval_tasks, seed=0, samples_per_task=1, threads=1, batches=2) as st:
        for batch in st:
            assert batch.fill >= 0.97 and batch.n_samples == 400
    assert st.stats.fill >= 0.97 and st.stats.batches == 2


@pytest.mark.parametrize("per_task, rows, threads", [(2, None, 1), (1, 6, 2), (None, 2, 1), (None, 3, 3)])
def test_stream_equals_the_reference_on_any_thread_count(per_task, rows, threads):
    tasks = _tasks(10, seed=4)
    sc = SampleConfig(max_len=900, loss_on="outputs")
    ac = AugmentConfig(composition_prob=0.5)
    st = PackedStream(tasks, seed=77, row_len=1024, samples_per_task=per_task, rows=rows, window=24, max_wait=2,
                      config=sc, augment=ac, threads=threads, queue_size=2)
    ref = R.stream(tasks, 77, sc, ac, 1024, rows or 0, per_task or 0, 24, 2)
    total = dict(samples=0, tokens=0)
    ref_stats = {}
    for i in range(12):
        b = next(st)
        want = next(ref)
        check_batch(b)
        for f in FIELDS:
            assert np.array_equal(getattr(b, f), want[f]), (i, f)
        if per_task:
            # exactly k samples of every task: count samples (not tokens) per adapter
            starts = (b.position_ids == 0) & (b.sample_ids >= 0)
            assert np.bincount(b.adapter_ids[starts], minlength=10).tolist() == [per_task] * 10
        if rows:
            assert b.shape[0] == rows
        total["samples"] += b.n_samples
        total["tokens"] += b.n_tokens
        for k, v in want["stats"].items():
            ref_stats[k] = ref_stats.get(k, 0) + v
    st.close()
    assert st.stats.batches == 12 and st.stats.samples == total["samples"] and st.stats.tokens == total["tokens"]
    assert {k: getattr(st.stats, k) for k in ref_stats} == ref_stats
    with pytest.raises(RuntimeError, match="closed"):
        next(st)


def test_flat_stream_keeps_rows_full_and_serves_every_task_evenly(eval_tasks):
    tasks = eval_tasks[:40]

    def counts(max_wait):
        seen = np.zeros(40, int)
        with PackedStream(tasks, seed=3, rows=4, max_wait=max_wait, threads=2, batches=60) as st:
            for b in st:
                check_batch(b)
                starts = (b.position_ids == 0) & (b.sample_ids >= 0)
                seen += np.bincount(b.adapter_ids[starts], minlength=40)
        return seen, st.stats

    seen, stats = counts(8)
    assert stats.fill >= 0.97 and stats.samples == seen.sum()
    # slots go round-robin over the tasks and none waits much longer than max_wait batches
    # (~8 x 23 samples) behind the window (64): tasks stay within a few samples of each other
    assert seen.max() - seen.min() <= 6, seen
    # by length alone, short samples are passed over again and again
    unaged, _ = counts(10**6)
    assert unaged.max() - unaged.min() > 2 * (seen.max() - seen.min())


def test_stream_errors_and_settings():
    tasks = _tasks(4)
    with pytest.raises(ValueError, match="exceeds row_len"):
        PackedStream(tasks, row_len=512)
    st = PackedStream(tasks, row_len=1024, samples_per_task=3, rows=1, config=SampleConfig(max_len=1024))
    with pytest.raises(RuntimeError, match=r"batch 0 needs \d+ rows of 1024 tokens but rows=1"):
        next(st)
    st.close()
    with pytest.raises(ValueError, match="usable pair"):
        PackedStream([Task("one", [Pair(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))], [])],
                     row_len=8192)
    with PackedStream(tasks, row_len=1024, rows=2, config=SampleConfig(max_len=1024), batches=3) as st:
        assert len(list(st)) == 3
    # dropping a stream with batches still queued stops its threads
    st = PackedStream(tasks, row_len=1024, rows=2, config=SampleConfig(max_len=1024), threads=2, queue_size=8)
    next(st)
    del st
