"""Prompt layout (docs/FORMAT.md, "Prompts"): tokens, loss positions, inference prompts."""
import numpy as np
import pytest

from arcfast.arc import vocab as T
from arcfast.arc.augment import AugmentConfig, Augmentation, Composition
from arcfast.samples.prompts import build_inference_prompt, build_inference_prompts, build_training_prompt
from arcfast.reference import pipeline as R
from arcfast.samples.sampling import SampleConfig, make_samples, pool_pairs
from arcfast.arc.task import Pair, Task


def _task(task_id="p", n_train=4, n_test=2, seed=0):
    rng = np.random.default_rng(seed)

    def g():
        return rng.integers(0, 10, tuple(rng.integers(1, 8, 2)), dtype=np.uint8)

    return Task(task_id, [Pair(g(), g()) for _ in range(n_train)], [Pair(g(), g()) for _ in range(n_test)], "mem")


def _read_grid(ids, i):
    """The grid starting at ids[i] and the index after its EOG."""
    rows, row = [], []
    while ids[i] != T.EOG:
        if ids[i] == T.ROW:
            rows.append(row)
            row = []
        else:
            assert 0 <= ids[i] <= 9
            row.append(ids[i])
        i += 1
    assert row == []
    return np.array(rows, np.uint8), i + 1


def _parse(ids):
    """[(input grid, output grid or None, (start, end) of the output grid's tokens)] of a prompt."""
    ids = list(ids)
    assert ids[0] == T.BOS
    i, pairs = 1, []
    while i < len(ids):
        assert ids[i] == T.INPUT
        gi, i = _read_grid(ids, i + 1)
        assert ids[i] == T.OUTPUT
        if i + 1 == len(ids):
            pairs.append((gi, None, None))
            break
        start = i + 1
        go, i = _read_grid(ids, start)
        pairs.append((gi, go, (start, i)))
    return pairs


@pytest.mark.parametrize("loss_on", ["target", "outputs"])
def test_training_prompt_layout_and_loss_positions(loss_on):
    task = _task()
    sc = SampleConfig(loss_on=loss_on, mode="pretrain")
    samples = make_samples([task], 40, seed=1, config=sc, augment=AugmentConfig(composition_prob=0.5))
    pool = pool_pairs(task, "pretrain")
    for s in samples:
        pairs = _parse(s.input_ids)
        order = list(s.demos) + [s.target]
        assert len(pairs) == len(order) == len(pool)
        want_loss = np.zeros(len(s), bool)
        for k, ((gi, go, (a, b)), p) in enumerate(zip(pairs, order)):
            assert np.array_equal(gi, s.augmentation.apply_grid(pool[p].input, "input"))
            assert np.array_equal(go, s.augmentation.apply_grid(pool[p].output, "output"))
            if k == len(order) - 1 or (loss_on == "outputs" and k > 0):
                want_loss[a:b] = True  # the output grid's cells, ROWs and EOG; not its OUTPUT marker
        assert np.array_equal(s.labels != T.IGNORE_INDEX, want_loss)
        assert np.array_equal(s.labels[want_loss], s.input_ids[want_loss])  # HF-aligned: the token itself
        # the target's output is recovered by the inverse augmentation
        gi, go, _ = pairs[-1]
        assert np.array_equal(s.augmentation.invert_grid(go), pool[s.target].output)


def test_training_prompt_of_explicit_pairs_equals_the_sampled_one_and_the_reference():
    task = _task()
    s = make_samples([task], 5, seed=3, augment=AugmentConfig(composition_prob=1.0))[4]
    ids, labels = build_training_prompt(task, s.target, s.demos, s.augmentation)
    assert np.array_equal(ids, s.input_ids) and np.array_equal(labels, s.labels)
    aug = Augmentation(transform=6, colors=(0, 9, 8, 7, 6, 5, 4, 3, 2, 1),
                       composition=Composition("output", "mirror", 0, 1))
    ids, labels = build_training_prompt(task, 5, [4, 0, 2], aug, mode="pretrain", loss_on="outputs")
    plan = R.Plan(0, 0, 0, 5, [4, 0, 2, 5], 6, list(aug.colors), aug.composition.to_core())
    pool = R.pool_pairs(task, "pretrain")
    plan.composed = [R.compose(4, 0, 1, pool[i][1]) for i in plan.pairs]
    ref_ids, ref_labels = R.write_plan(task, plan, SampleConfig(mode="pretrain", loss_on="outputs"))
    assert ids.tolist() == ref_ids and labels.tolist() == ref_labels
    with pytest.raises(ValueError, match="pool index 6 out of range"):
        build_training_prompt(task, 6, [0], mode="pretrain")


def test_inference_prompt_is_the_training_prompt_cut_after_the_output_marker():
    task = _task(n_train=3, n_test=2)
    n = len(task.train)
    for j in range(2):
        for aug in (Augmentation(), Augmentation(transform=3, colors=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9), order=(2, 0)),
                    Augmentation(transform=7, order=(1, 2, 0), composition=Composition("input", "pad", 2, 4))):
            ids = build_inference_prompt(task, j, aug)
            assert ids.dtype == np.int32 and ids[-1] == T.OUTPUT
            order = list(range(n)) if aug.order is None else list(aug.order)
            train_ids, _ = build_training_prompt(task, n + j, order, aug, mode="pretrain")
            cut = len(train_ids) - T.grid_len(*aug.apply_grid(task.test[j].output, "output").shape)
            assert np.array_equal(ids, train_ids[:cut])
            ref, used = R.inference_prompt(task, j, aug.transform, aug.colors,
                                           None if aug.composition is None else aug.composition.to_core(),
                                           order, 0)
            assert ids.tolist() == ref and used == order
            pairs = _parse(ids)
            assert pairs[-1][1] is None and len(pairs) == len(order) + 1


def test_inference_prompt_length_limit_drops_demonstrations_from_the_end():
    task = _task(n_train=4, n_test=1, seed=5)
    full = build_inference_prompt(task, 0)
    demo_lens = [2 + T.grid_len(*p.input.shape) + T.grid_len(*p.output.shape) for p in task.train]
    limit = len(full) - demo_lens[3] - 1  # without the last demonstration still one token too long
    cut = build_inference_prompt(task, 0, max_len=limit)
    assert len(cut) == len(full) - demo_lens[3] - demo_lens[2]
    assert np.array_equal(cut, build_inference_prompt(task, 0, Augmentation(order=(0, 1))))
    assert len(build_inference_prompt(task, 0, max_len=limit + 1)) == len(full) - demo_lens[3]
    ref, used = R.inference_prompt(task, 0, 0, range(10), None, range(4), limit)
    assert cut.tolist() == ref
    tiny = 1 + demo_lens[0] + 2 + T.grid_len(*task.test[0].input.shape)
    assert len(build_inference_prompt(task, 0, max_len=tiny)) == tiny
    with pytest.raises(ValueError, match="with one demonstration, over max_len"):
        build_inference_prompt(task, 0, max_len=tiny - 1)
    with pytest.raises(ValueError, match="test index 3 out of range"):
        build_inference_prompt(task, 3)
    augs = [Augmentation(transform=t) for t in range(8)]
    many = build_inference_prompts(task, 0, augs)
    assert [len(x) for x in many] == [len(full)] * 8 and not np.array_equal(many[0], many[1])


def test_the_documented_example():
    # docs/FORMAT.md, "Prompts": demonstration [[1,2]] -> [[3]], target [[0]] -> [[5,5]]
    task = Task("doc", [Pair(np.array([[1, 2]], np.uint8), np.array([[3]], np.uint8)),
                        Pair(np.array([[0]], np.uint8), np.array([[5, 5]], np.uint8))],
                [Pair(np.array([[0]], np.uint8), None)], "doc")
    ids, labels = build_training_prompt(task, target=1, demos=[0])
    assert ids.tolist() == [14, 11, 1, 2, 10, 13, 12, 3, 10, 13, 11, 0, 10, 13, 12, 5, 5, 10, 13]
    assert labels.tolist() == [-100] * 15 + [5, 5, 10, 13]
    _, out_labels = build_training_prompt(task, target=1, demos=[0], loss_on="outputs")
    assert out_labels.tolist() == labels.tolist()  # the first demonstration's output never carries loss
    assert build_inference_prompt(task, 0, Augmentation(order=(0,))).tolist() == ids[:15].tolist()


def test_prompt_grids_are_the_compact_encoder_s_and_decode_back():
    from arcfast.arc.formats import decode, encode

    task = _task(seed=9)
    aug = Augmentation(transform=1, colors=(0, 3, 2, 1, 4, 5, 6, 7, 8, 9))
    ids = build_inference_prompt(task, 1, aug)
    want = [T.BOS]
    for p in task.train:
        want += [T.INPUT, *encode(aug.apply_grid(p.input)), T.OUTPUT, *encode(aug.apply_grid(p.output, "output"))]
    want += [T.INPUT, *encode(aug.apply_grid(task.test[1].input)), T.OUTPUT]
    assert ids.tolist() == want
    # what a model would write after the prompt decodes and inverts to the true output
    written = encode(aug.apply_grid(task.test[1].output, "output"))
    grid, status = decode(written)
    assert str(status) == "ok" and np.array_equal(aug.invert_grid(grid), task.test[1].output)
