"""Pair and Task compare by value (shapes and cells), and a Pair's hash agrees with that."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from arcfast.arc.task import Pair, Task


def grid(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


A = [[1, 2, 3], [4, 5, 6]]


def test_equal_pairs_are_equal_and_hash_alike():
    p, q = Pair(grid(A), grid([[7]])), Pair(grid(A), grid([[7]]))
    assert p.input is not q.input
    assert p == q and not (p != q)
    assert hash(p) == hash(q)
    assert p == p and hash(p) == hash(p)


@pytest.mark.parametrize("other", [
    Pair(grid([[1, 2, 3], [4, 5, 0]]), grid([[7]])),        # one input cell
    Pair(grid([[1, 2], [3, 4], [5, 6]]), grid([[7]])),      # same cells, other shape
    Pair(grid([[1, 2, 3, 4, 5, 6]]), grid([[7]])),          # same bytes, other shape
    Pair(grid(A), grid([[8]])),                             # the output
    Pair(grid(A), grid([[7, 7]])),                          # the output's shape
    Pair(grid(A), None),                                    # unknown output
    Pair(grid([[7]]), grid(A)),                             # input and output swapped
])
def test_pairs_that_differ_are_unequal(other):
    p = Pair(grid(A), grid([[7]]))
    assert p != other and other != p
    assert not (p == other)
    assert len({p, other}) == 2


def test_unknown_output_equals_only_unknown_output():
    p, q = Pair(grid(A)), Pair(grid(A), None)
    assert p == q and hash(p) == hash(q)
    assert p != Pair(grid(A), grid(A))
    assert Pair(grid(A), grid(A)) != p


def test_value_not_dtype():
    """Cells compare by value: the uint8 grid and an int64 copy (a hand-built pair) are the same grid."""
    p, q = Pair(grid(A), grid([[7]])), Pair(np.array(A, np.int64), np.array([[7]], np.int32))
    assert p == q and hash(p) == hash(q)
    f = Pair(np.array(A, np.float32), np.array([[7.0]]))
    assert f == p and hash(f) == hash(p)
    zero, minus_zero = Pair(np.zeros((1, 1))), Pair(-np.zeros((1, 1)))
    assert zero == minus_zero and hash(zero) == hash(minus_zero)
    # a non-contiguous view with the same cells is the same grid too
    wide = grid([[1, 9, 2, 9, 3], [4, 9, 5, 9, 6]])[:, ::2]
    assert not wide.flags.c_contiguous
    assert Pair(wide, grid([[7]])) == p and hash(Pair(wide, grid([[7]]))) == hash(p)


def test_set_membership_and_dict_keys():
    pairs = [Pair(grid(A), grid([[7]])), Pair(grid(A), None), Pair(grid([[0]]), grid([[0]]))]
    copies = [Pair(p.input.copy(), None if p.output is None else p.output.copy()) for p in pairs]
    s = set(pairs)
    assert len(s) == 3
    assert all(c in s for c in copies)
    assert Pair(grid([[5]])) not in s
    s.update(copies)
    assert len(s) == 3
    d = {p: i for i, p in enumerate(pairs)}
    assert [d[c] for c in copies] == [0, 1, 2]
    d[copies[0]] = "replaced"
    assert len(d) == 3 and d[pairs[0]] == "replaced"


def test_pair_stays_frozen_and_compares_with_other_types():
    p = Pair(grid(A))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.output = grid(A)
    assert p != (p.input, None) and p != "pair" and p is not None
    assert p.__eq__(object()) is NotImplemented


def test_tasks_compare_by_value():
    def make(out=7, source="mem"):
        return Task("t1", [Pair(grid(A), grid([[out]]))], [Pair(grid([[1]]))], source=source)

    assert make() == make()
    assert make() != make(out=8)
    assert make() != make(source="other.json")
    assert make().fingerprint() == make().fingerprint()
    with pytest.raises(TypeError):
        hash(make())  # mutable: no hash (fingerprint() is its content digest)
