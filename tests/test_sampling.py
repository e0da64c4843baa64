"""Leave-one-out sampling: target frequencies, determinism, length limits, and C++ == reference."""
from collections import Counter

import numpy as np
import pytest

from arcfast.arc.augment import AugmentConfig
from arcfast.reference import pipeline as R
from arcfast.samples.sampling import SampleConfig, make_samples, pool_pairs
from arcfast.arc.task import Pair, Task


def _grid(rng, h, w):
    return rng.integers(0, 10, (h, w), dtype=np.uint8)


def _task(task_id="loo", n_train=5, n_test=3, known=True, seed=0, size=(3, 4)):
    rng = np.random.default_rng(seed)
    train = [Pair(_grid(rng, *size), _grid(rng, *size)) for _ in range(n_train)]
    test = [Pair(_grid(rng, *size), _grid(rng, *size) if known else None) for _ in range(n_test)]
    return Task(task_id, train, test, source="mem")


def _pair_key(p: Pair) -> bytes:
    return p.input.tobytes() + p.output.tobytes()


@pytest.mark.parametrize("mode, n_train, n_test", [("ttft", 5, 3), ("pretrain", 5, 3), ("ttft", 7, 2),
                                                    ("pretrain", 4, 3)])
def test_every_pair_is_the_target_equally_often_and_never_a_demonstration(mode, n_train, n_test):
    task = _task(n_train=n_train, n_test=n_test)
    n = n_train + (n_test if mode == "pretrain" else 0)
    samples = make_samples([task], 10_000, seed=11, config=SampleConfig(mode=mode), augment=AugmentConfig.none())
    assert len(samples) == 10_000
    pool = pool_pairs(task, mode)
    assert len(pool) == n
    keys = [_pair_key(p) for p in pool]
    counts = Counter(s.target for s in samples)
    assert sorted(counts) == list(range(n))
    for pair, c in counts.items():
        assert abs(c / 10_000 - 1 / n) <= 0.002, (pair, c)  # balanced: off by at most one per pair
    test_keys = {_pair_key(p) for p in task.test}
    for s in samples:
        assert s.target not in s.demos
        assert sorted(s.demos + (s.target,)) == list(range(n))  # all the rest are demonstrations
        if mode == "ttft":
            assert not test_keys & {keys[i] for i in s.demos + (s.target,)}
    # the target really is the last pair of the prompt: the untransformed grids say so
    for s in samples.samples[:50]:
        tgt = pool[s.target]
        tail = np.concatenate([[11], R.encode(tgt.input), [12], R.encode(tgt.output)])
        assert np.array_equal(s.input_ids[-len(tail):], tail)


@pytest.mark.parametrize("mode, n_train, n_test", [("ttft", 4, 1), ("ttft", 2, 1), ("pretrain", 3, 2)])
def test_swap_bug_ablation_never_makes_the_last_pair_a_target(mode, n_train, n_test):
    task = _task(n_train=n_train, n_test=n_test)
    n = n_train + (n_test if mode == "pretrain" else 0)
    cfg = SampleConfig(mode=mode, swap_bug=True)
    samples = make_samples([task], 3_000, seed=11, config=cfg, augment=AugmentConfig.none())
    counts = Counter(s.target for s in samples)
    assert sorted(counts) == list(range(n - 1))          # pair n - 1 never: the bug
    for c in counts.values():
        assert abs(c / 3_000 - 1 / (n - 1)) <= 0.002     # the others, equally often
    assert all(n - 1 in s.demos for s in samples)        # it is always shown as a demonstration
    windows = [s.target for s in samples]
    assert all(sorted(windows[i:i + n - 1]) == list(range(n - 1)) for i in range(0, 300, n - 1))
    # the input objective is untouched: every input is a target
    inputs = make_samples([task], 600, seed=11, config=SampleConfig(mode=mode, swap_bug=True, objectives={"input": 1}),
                          augment=AugmentConfig.none())
    assert len(Counter(s.target for s in inputs)) == n_train + n_test
    assert SampleConfig().swap_bug is False


def test_targets_are_also_balanced_with_augmentation_and_in_every_window_of_n():
    task = _task(n_train=6, n_test=0)
    samples = make_samples([task], 600, seed=5, augment=AugmentConfig(composition_prob=0.5))
    targets = [s.target for s in samples]
    for e in range(100):
        assert sorted(targets[6 * e:6 * e + 6]) == list(range(6))


def test_augmentation_draw_frequencies():
    task = _task(n_train=3, n_test=0)
    samples = make_samples([task], 10_000, seed=2)
    zero_kept = np.mean([s.augmentation.colors[0] == 0 for s in samples])
    # 0.9 kept by rule, plus 1 in 10 of the full permutations that happen to fix 0
    assert abs(zero_kept - 0.91) < 0.015
    tf = Counter(s.augmentation.transform for s in samples)
    assert sorted(tf) == list(range(8)) and all(abs(c / 10_000 - 1 / 8) < 0.015 for c in tf.values())
    first = Counter(s.demos[0] for s in samples if s.target == 0)
    assert sorted(first) == [1, 2] and abs(first[1] / sum(first.values()) - 0.5) < 0.05


def test_same_seed_same_samples_any_thread_count_and_any_task_list():
    tasks = [_task(f"t{i}", n_train=3 + i % 3, n_test=1, seed=i) for i in range(6)]
    aug = AugmentConfig(composition_prob=0.3)
    a = make_samples(tasks, 20, seed=9, augment=aug, threads=1)
    b = make_samples(tasks, 20, seed=9, augment=aug, threads=3)
    c = make_samples(tasks[::-1], 20, seed=9, augment=aug, threads=2)
    d = make_samples(tasks, 20, seed=10, augment=aug, threads=1)
    assert len(a) == len(b) == len(c) == 120
    by_slot = {(s.task_id, s.index): s for s in c}
    for x, y in zip(a, b):
        assert np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.labels, y.labels)
        assert x.augmentation == y.augmentation and x.target == y.target
        z = by_slot[(x.task_id, x.index)]  # a task's samples depend on its id, not its place
        assert np.array_equal(x.input_ids, z.input_ids) and x.task_index == 5 - z.task_index
    assert a.stats == b.stats == c.stats
    assert sum(not np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, d)) > 100


@pytest.mark.parametrize("sc, ac", [
    (SampleConfig(), AugmentConfig()),
    (SampleConfig(mode="pretrain", loss_on="outputs"), AugmentConfig(composition_prob=0.7)),
    (SampleConfig(max_demos=2, max_len=700), AugmentConfig(transforms=(0, 4), keep_zero_prob=0.0,
                                                           composition_prob=1.0,
                                                           composition_kinds=("upscale", "mirror"))),
    (SampleConfig(max_len=600, on_too_long="skip", max_attempts=3),
     AugmentConfig(permute_colors=False, shuffle_demos=False, composition_prob=0.5,
                   composition_sides=("output",))),
    (SampleConfig(swap_bug=True, max_len=600, max_attempts=3), AugmentConfig()),
    (SampleConfig(swap_bug=True, mode="pretrain", objectives={"output": 1, "input": 1, "verify": 1}),
     AugmentConfig(composition_prob=0.3)),
])
def test_cpp_samples_equal_the_reference(sc, ac):
    tasks = [_task(f"r{i}", n_train=2 + i % 4, n_test=1 + i % 2, seed=i, size=(2 + i % 7, 3 + i % 5))
             for i in range(12)]
    got = make_samples(tasks, 6, seed=123, config=sc, augment=ac, threads=2)
    ref, cnt = R.make_samples(tasks, 6, 123, sc, ac)
    assert len(got) == len(ref) > 0
    for s, (p, ids, labels) in zip(got, ref):
        assert (s.task_index, s.index, s.attempt, s.target) == (p.task, p.index, p.attempt, p.target)
        assert list(s.demos) == p.pairs[:-1]
        assert s.augmentation.transform == p.transform and list(s.augmentation.colors) == p.colors
        comp = s.augmentation.composition
        assert (None if comp is None else comp.to_core()) == p.comp
        assert s.dropped_demos == p.dropped
        assert s.input_ids.dtype == np.int32 and s.labels.dtype == np.int32
        assert s.input_ids.tolist() == ids and s.labels.tolist() == labels
        assert len(s) <= sc.max_len
    assert got.stats.as_dict() == cnt.__dict__


def test_too_long_prompts_drop_demonstrations_or_are_skipped_and_counted():
    # 9x9 grids: 2 + 2*91 = 184 tokens a pair; 6 pairs = 1105 tokens with BOS
    task = _task("long", n_train=6, n_test=0, size=(9, 9))
    drop = make_samples([task], 50, seed=1, config=SampleConfig(max_len=600), augment=AugmentConfig.none())
    assert len(drop) == 50
    assert all(len(s) <= 600 and len(s.demos) == 2 and s.dropped_demos == 3 for s in drop)
    assert drop.stats.trimmed == 50 and drop.stats.dropped_demos == 150 and drop.stats.skipped == 0
    # the kept demonstrations are the first of the shuffled order
    full = make_samples([task], 50, seed=1, config=SampleConfig(max_len=8192), augment=AugmentConfig.none())
    assert all(a.demos == b.demos[:2] for a, b in zip(drop, full))

    skip = make_samples([task], 20, seed=1, config=SampleConfig(max_len=600, on_too_long="skip", max_attempts=4))
    assert len(skip) == 0 and skip.stats.skipped == 80 and skip.stats.empty_slots == 20

    # one demonstration never fits: every draw is rejected, every slot left empty
    none = make_samples([task], 5, seed=1, config=SampleConfig(max_len=300, max_attempts=2))
    assert len(none) == 0 and none.stats.skipped == 10 and none.stats.empty_slots == 5


def test_skip_redraws_keep_only_fitting_samples():
    rng = np.random.default_rng(3)
    small = [Pair(_grid(rng, 2, 2), _grid(rng, 2, 2)) for _ in range(3)]
    big = Pair(_grid(rng, 12, 12), _grid(rng, 12, 12))
    task = Task("mixed", small + [big], [], source="mem")
    # the big pair alone is 2 + 2*157 = 316 tokens: any prompt holding it is too long. Demonstrations
    # stay in pool order and are cut to one, so only drawing pair 3 as the target fails: exactly a
    # quarter of the first draws (balanced targets), and a quarter of the redraws
    sc = SampleConfig(max_len=200, on_too_long="skip", max_demos=1)
    got = make_samples([task], 400, seed=4, config=sc, augment=AugmentConfig.none())
    assert all(3 not in s.demos and s.target != 3 for s in got)
    assert len(got) + got.stats.empty_slots == 400 and got.stats.empty_slots <= 1
    assert sum(s.attempt == 0 for s in got) == 300
    assert 100 < got.stats.skipped < 170 and got.stats.skipped == sum(s.attempt for s in got)
    ref, cnt = R.make_samples([task], 400, 4, sc, AugmentConfig.none())
    assert cnt.__dict__ == got.stats.as_dict()
    assert [s.input_ids.tolist() for s in got] == [ids for _, ids, _ in ref]


def test_compositions_over_the_size_limit_are_dropped_not_truncated():
    task = _task("wide", n_train=3, n_test=0, size=(16, 16))  # any upscale exceeds 30
    ac = AugmentConfig(composition_prob=1.0, composition_kinds=("upscale",))
    got = make_samples([task], 200, seed=0, augment=ac)
    assert got.stats.compositions == 0 and got.stats.compositions_dropped == 200
    ac = AugmentConfig(composition_prob=1.0, composition_kinds=("pad",), max_size=30)
    got = make_samples([task], 200, seed=0, augment=ac)
    assert got.stats.compositions == 200
    assert all(s.augmentation.composition.kind == "pad" for s in got)


def test_bad_tasks_are_named():
    with pytest.raises(ValueError, match=r"task solo \(mem\): 1 usable pair"):
        make_samples([_task("solo", n_train=1, n_test=1, known=False)], 1)
    # pretrain mode counts known test pairs, so the same task works there
    assert len(make_samples([_task("solo", n_train=1, n_test=1)], 3, config=SampleConfig(mode="pretrain"))) == 3
    bad = _task("bad", n_train=2)
    bad.train[1] = Pair(bad.train[1].input, np.array([[1, 10]]))
    with pytest.raises(ValueError, match=r"task bad \(mem\): train\[1\]\.output: colour 10 at row 0, column 1"):
        make_samples([bad], 1)
    with pytest.raises(ValueError, match="mode"):
        SampleConfig(mode="train")
