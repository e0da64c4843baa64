"""Augmentations: the C++ transforms equal the numpy reference, and every inverse undoes its forward."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcfast.arc import augment
from arcfast.arc.augment import COMPOSITION_KINDS, INVERSE_TRANSFORM, AugmentConfig, Augmentation, Composition
from arcfast.reference import pipeline as R
from arcfast.arc.task import Pair, Task

NUMPY_DIHEDRAL = (
    lambda g: g,
    lambda g: np.rot90(g, 1),
    lambda g: np.rot90(g, 2),
    lambda g: np.rot90(g, 3),
    lambda g: g.T,
    lambda g: np.fliplr(g),
    lambda g: np.flipud(g),
    lambda g: np.rot90(g, 2).T,
)


@st.composite
def grids(draw, max_side=9):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 10, (h, w), dtype=np.uint8)


@st.composite
def permutations(draw):
    return tuple(draw(st.permutations(range(10))))


@st.composite
def compositions(draw, side=None):
    kind = draw(st.sampled_from(COMPOSITION_KINDS))
    side = side or draw(st.sampled_from(("input", "output")))
    if kind == "geometric":
        a, b = draw(st.integers(1, 7)), 0
    elif kind == "pad":
        a, b = draw(st.integers(1, 5)), draw(st.integers(0, 9))
    elif kind == "upscale":
        a, b = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    else:
        a, b = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    return Composition(side, kind, a, b)


def test_dihedral_table_matches_numpy_and_its_inverses():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10
    for t in range(8):
        aug = Augmentation(transform=t)
        assert np.array_equal(aug.apply_grid(g), NUMPY_DIHEDRAL[t](g)), t
        assert np.array_equal(NUMPY_DIHEDRAL[INVERSE_TRANSFORM[t]](NUMPY_DIHEDRAL[t](g)), g), t
    # the eight are distinct on an asymmetric grid
    assert len({Augmentation(transform=t).apply_grid(g).tobytes() + bytes(Augmentation(transform=t).apply_grid(g).shape)
                for t in range(8)}) == 8


@settings(max_examples=150, deadline=None)
@given(grids(), st.integers(0, 7), permutations())
def test_inverse_of_apply_is_identity_for_all_transforms_and_permutations(g, t, colors):
    aug = Augmentation(transform=t, colors=colors)
    out = aug.apply_grid(g, "output")
    assert out.dtype == np.uint8
    assert np.array_equal(out, R.augment_grid(g, 1, t, colors, None))
    back = aug.invert_grid(out)
    assert back is not None and back.dtype == np.uint8
    assert np.array_equal(back, g)


@settings(max_examples=200, deadline=None)
@given(grids(max_side=7), st.integers(0, 7), permutations(), compositions())
def test_compositions_match_reference_and_output_side_inverts(g, t, colors, comp):
    aug = Augmentation(transform=t, colors=colors, composition=comp)
    for role, side in (("input", 0), ("output", 1)):
        got = aug.apply_grid(g, role)
        assert np.array_equal(got, R.augment_grid(g, side, t, colors, comp.to_core())), (role, comp)
    pred = aug.apply_grid(g, "output")
    back = aug.invert_grid(pred)
    assert back is not None and np.array_equal(back, g), comp
    ref = R.invert_output(pred, t, colors, comp.to_core())
    assert ref is not None and np.array_equal(ref, g)


@settings(max_examples=150, deadline=None)
@given(grids(max_side=12), st.integers(0, 7), permutations(), compositions(side="output"))
def test_invert_agrees_with_reference_on_arbitrary_predictions(pred, t, colors, comp):
    # a prediction is anything the model wrote: the inverse either maps it back or refuses, and C++
    # and the reference agree on which
    aug = Augmentation(transform=t, colors=colors, composition=comp)
    got = aug.invert_grid(pred)
    ref = R.invert_output(pred, t, colors, comp.to_core())
    assert (got is None) == (ref is None)
    if got is not None:
        assert np.array_equal(got, ref)
        assert np.array_equal(aug.apply_grid(got, "output"), pred)


def test_inverse_refuses_inconsistent_predictions():
    up = Augmentation(composition=Composition("output", "upscale", 2, 3))
    g = np.array([[1, 2], [3, 4]], np.uint8)
    big = up.apply_grid(g, "output")
    assert big.shape == (4, 6)
    assert np.array_equal(up.invert_grid(big), g)
    assert up.invert_grid(big[:3]) is None  # rows not a multiple of 2
    bad = big.copy()
    bad[0, 1] = 9  # a non-uniform block
    assert up.invert_grid(bad) is None

    pad = Augmentation(composition=Composition("output", "pad", 1, 5))
    p = pad.apply_grid(g, "output")
    assert p.shape == (4, 4) and (p[0] == 5).all()
    bad = p.copy()
    bad[3, 3] = 0
    assert pad.invert_grid(bad) is None
    assert pad.invert_grid(np.full((2, 2), 5, np.uint8)) is None  # nothing inside the border

    mir = Augmentation(composition=Composition("output", "mirror", 1, 1))
    m = mir.apply_grid(g, "output")
    assert np.array_equal(m, np.array([[2, 1, 1, 2], [4, 3, 3, 4]]))
    bad = m.copy()
    bad[0, 0] = 7
    assert mir.invert_grid(bad) is None
    assert mir.invert_grid(m[:, :3]) is None


def test_input_side_composition_leaves_outputs_and_their_inverse_alone():
    aug = Augmentation(transform=5, colors=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9),
                       composition=Composition("input", "upscale", 3, 3))
    g = np.array([[1, 2, 0]], np.uint8)
    assert aug.apply_grid(g, "input").shape == (3, 9)
    out = aug.apply_grid(g, "output")
    assert np.array_equal(out, [[0, 1, 2]])
    assert np.array_equal(aug.invert_grid(out), g)


def test_colour_map_direction():
    aug = Augmentation(colors=(3, 1, 2, 0, 4, 5, 6, 7, 8, 9))
    assert np.array_equal(aug.apply_grid(np.array([[0, 3, 1]], np.uint8)), [[3, 0, 1]])
    assert aug.inverse_colors == (3, 1, 2, 0, 4, 5, 6, 7, 8, 9)


def _task():
    rng = np.random.default_rng(0)
    pairs = [Pair(rng.integers(0, 10, (3, 4), dtype=np.uint8), rng.integers(0, 10, (2, 5), dtype=np.uint8))
             for _ in range(4)]
    return Task("t0", pairs[:3], [pairs[3], Pair(pairs[0].input, None)], source="mem")


def test_apply_task_reorders_and_augments_every_grid():
    task = _task()
    aug = Augmentation(transform=1, colors=tuple(reversed(range(10))), order=(2, 0, 1),
                       composition=Composition("output", "pad", 2, 7))
    out = aug.apply_task(task)
    assert out.id == task.id and len(out.train) == 3 and len(out.test) == 2
    for k, i in enumerate((2, 0, 1)):
        assert np.array_equal(out.train[k].input, aug.apply_grid(task.train[i].input, "input"))
        assert np.array_equal(out.train[k].output, aug.apply_grid(task.train[i].output, "output"))
        assert np.array_equal(aug.invert_grid(out.train[k].output), task.train[i].output)
    assert out.train[0].output.shape == (9, 6)
    assert out.test[1].output is None
    with pytest.raises(ValueError, match="size limit"):
        Augmentation(composition=Composition("input", "upscale", 4, 4)).apply_task(
            Task("big", [Pair(np.zeros((8, 8), np.uint8), np.zeros((1, 1), np.uint8))], []))
    with pytest.raises(ValueError, match="order names train pair 5"):
        Augmentation(order=(5,)).apply_task(task)


def test_bad_records_and_grids_are_refused():
    with pytest.raises(ValueError, match="transform"):
        Augmentation(transform=8)
    with pytest.raises(ValueError, match="permutation"):
        Augmentation(colors=(0,) * 10)
    with pytest.raises(ValueError, match="kind"):
        Composition("input", "shear", 1)
    with pytest.raises(ValueError, match="parameters"):
        Composition("output", "geometric", 0)
    with pytest.raises(ValueError, match="colour 12 at row 0, column 1"):
        Augmentation().invert_grid(np.array([[1, 12]]))
    with pytest.raises(ValueError, match="2-D"):
        Augmentation().apply_grid(np.zeros(3, np.uint8))
    with pytest.raises(ValueError):
        AugmentConfig(transforms=())
    with pytest.raises(ValueError):
        AugmentConfig(keep_zero_prob=1.5)


def test_test_time_augmentations_are_deterministic_and_cover_the_group():
    task = _task()
    augs = augment.test_time_augmentations(task, 16, seed=3)
    assert augs[0] == Augmentation()
    assert [a.transform for a in augs[1:]] == [i % 8 for i in range(1, 16)]
    assert all(a.composition is None and sorted(a.order) == [0, 1, 2] for a in augs[1:])
    assert augs == augment.test_time_augmentations(task, 16, seed=3)
    assert augs != augment.test_time_augmentations(task, 16, seed=4)
    assert len({a.colors for a in augs[1:]}) > 10
    for a in augs:
        for p in task.train:
            assert np.array_equal(a.invert_grid(a.apply_grid(p.output, "output")), p.output)
