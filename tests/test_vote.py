import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcfast.answers.vote import Candidate, Prediction, check_grid, grid_key, rescore, vote

A = np.array([[1, 2], [3, 4]], dtype=np.uint8)
B = np.array([[5, 5], [5, 5]], dtype=np.uint8)
C = np.array([[1, 2, 3, 4]], dtype=np.uint8)  # A's bytes in another shape


def P(grid, logprob=-1.0, n=10, aug=""):
    return Prediction(grid=None if grid is None else np.array(grid, dtype=np.uint8), logprob=logprob,
                      n_tokens=n if grid is not None else 0, augmentation=aug)


def test_ranked_by_count():
    preds = [P(B, -0.1), P(A, -5.0), P(A, -5.0), P(None), P(None), P(None)]
    cands = vote(preds)
    assert [c.count for c in cands] == [2, 1]
    assert np.array_equal(cands[0].grid, A) and np.array_equal(cands[1].grid, B)
    assert cands[0].members == (1, 2) and cands[1].members == (0,)
    assert cands[0].share == pytest.approx(2 / 6)  # failed parses count in the denominator


def test_tie_broken_by_mean_logprob_per_token():
    # A: per token -0.5 and -0.3 -> mean -0.4; B: -0.8 and -0.2 -> mean -0.5
    preds = [P(B, -8.0, 10), P(A, -5.0, 10), P(A, -3.0, 10), P(B, -0.2, 1)]
    cands = vote(preds)
    assert [c.count for c in cands] == [2, 2]
    assert np.array_equal(cands[0].grid, A)
    assert cands[0].mean_logprob == pytest.approx(-0.4)
    assert cands[1].mean_logprob == pytest.approx(-0.5)
    # by total log-probability B (-2.0) would beat A (-3.0); per token A (-0.3) beats B (-1.0)
    preds2 = [P(B, -2.0, 2), P(A, -3.0, 10)]
    assert np.array_equal(vote(preds2)[0].grid, A)


def test_full_tie_keeps_first_appearance():
    preds = [P(B, -1.0, 10), P(A, -1.0, 10)]
    assert np.array_equal(vote(preds)[0].grid, B)
    assert np.array_equal(vote(preds[::-1])[0].grid, A)


def test_failed_never_win_and_all_failed_gives_nothing():
    assert vote([P(None)] * 5) == []
    assert vote([]) == []
    cands = vote([P(None)] * 50 + [P(A)])
    assert len(cands) == 1 and cands[0].count == 1 and cands[0].share == pytest.approx(1 / 51)


def test_same_bytes_other_shape_are_distinct():
    assert grid_key(A) != grid_key(C)
    cands = vote([P(A), P(C), P(A)])
    assert [c.grid.shape for c in cands] == [(2, 2), (1, 4)]


def test_top_k():
    preds = [P(A), P(B), P(C), P(A)]
    assert len(vote(preds, top_k=1)) == 1
    assert len(vote(preds, top_k=None)) == 3
    with pytest.raises(ValueError, match="top_k"):
        vote(preds, top_k=0)


def test_unrecorded_logprob_left_out_of_mean():
    preds = [Prediction(A), P(A, -2.0, 4), Prediction(B)]
    cands = vote(preds)
    assert cands[0].mean_logprob == pytest.approx(-0.5)
    assert cands[1].mean_logprob == -math.inf


def test_prediction_validation():
    with pytest.raises(ValueError, match="colour 10 at row 1, column 0"):
        Prediction(np.array([[1], [10]]), augmentation="rot90")
    with pytest.raises(ValueError, match="rot90"):
        Prediction(np.zeros((0, 3), np.uint8), augmentation="rot90")
    with pytest.raises(ValueError, match="status 'ragged'"):
        Prediction(A, status="ragged")
    with pytest.raises(ValueError, match="no grid"):
        Prediction(None, status="ok")
    with pytest.raises(ValueError, match="NaN"):
        Prediction(A, logprob=float("nan"), n_tokens=3)
    p = Prediction(None, status="unterminated")
    assert not p.parsed and p.status == "unterminated"
    assert Prediction(None).status == "unparsed"
    q = Prediction([[1, 2]], logprob=-3.0, n_tokens=4)
    assert q.grid.dtype == np.uint8 and q.status == "ok" and q.logprob_per_token == -0.75


def test_enum_status_is_named():
    import enum

    class S(enum.Enum):
        OK = 0
        RAGGED = 1

    assert Prediction(None, status=S.RAGGED).status == "ragged"
    assert Prediction(A, status=S.OK).status == "ok"


def test_check_grid_size_limit():
    with pytest.raises(ValueError, match="size limit 30"):
        check_grid(np.zeros((31, 2), np.uint8), "g", 30)
    assert check_grid(np.zeros((30, 2), np.int64), "g", 30).dtype == np.uint8


def test_rescore_by_summed_score():
    cands = vote([P(A), P(A), P(A), P(B), P(C)], top_k=None)
    assert np.array_equal(cands[0].grid, A)
    # score favours B under every augmentation; C only under one
    table = {(grid_key(A), "t0"): -5.0, (grid_key(A), "t1"): -5.0, (grid_key(A), "t2"): -5.0,
             (grid_key(B), "t0"): -1.0, (grid_key(B), "t1"): -2.0, (grid_key(B), "t2"): -1.0,
             (grid_key(C), "t0"): -0.1, (grid_key(C), "t1"): -20.0, (grid_key(C), "t2"): -0.1}
    calls = []

    def score_fn(grid, aug):
        calls.append(aug)
        return table[(grid_key(grid), aug)]

    out = rescore(cands, score_fn, ["t0", "t1", "t2"])
    assert [c.score for c in out] == pytest.approx([-4.0, -15.0, -20.2])
    assert np.array_equal(out[0].grid, B) and np.array_equal(out[1].grid, A)
    assert out[0].count == 1  # the voting fields are kept
    assert len(calls) == 9
    assert len(rescore(cands, score_fn, ["t0", "t1", "t2"], top_k=2)) == 2


def test_rescore_ties_keep_given_order_and_errors():
    cands = vote([P(A), P(A), P(B)], top_k=None)
    out = rescore(cands, lambda g, a: -1.0, [0, 1])
    assert np.array_equal(out[0].grid, A)
    with pytest.raises(ValueError, match="at least one augmentation"):
        rescore(cands, lambda g, a: 0.0, [])
    with pytest.raises(ValueError, match="candidate 1 under augmentation 0"):
        rescore(cands, lambda g, a: float("nan") if g[0, 0] == 5 else 0.0, ["x"])
    assert rescore([], lambda g, a: 0.0, [0]) == []


def _brute_vote(preds):
    """Grouping by pairwise np.array_equal and ranking by the documented rule, written plainly."""
    groups = []
    for i, p in enumerate(preds):
        if p.grid is None:
            continue
        for g in groups:
            if g[0].shape == p.grid.shape and np.array_equal(g[0], p.grid):
                g[1].append(i)
                break
        else:
            groups.append((p.grid, [i]))
    rows = []
    for order, (grid, members) in enumerate(groups):
        lps = [preds[i].logprob / preds[i].n_tokens for i in members if preds[i].n_tokens > 0]
        mean = sum(lps) / len(lps) if lps else -math.inf
        rows.append((-len(members), -mean, order, grid, members))
    rows.sort(key=lambda r: r[:3])
    return [(r[3], r[4]) for r in rows]


small_grid = st.sampled_from([None, [[0]], [[1]], [[0, 1]], [[0], [1]], [[1, 0]], [[1, 1], [0, 0]]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(small_grid, st.integers(-40, 0), st.integers(0, 5)), max_size=25))
def test_vote_matches_plain_definition(items):
    preds = [Prediction(None if g is None else np.array(g, np.uint8), logprob=float(lp),
                        n_tokens=n if g is not None else 0) for g, lp, n in items]
    got = vote(preds, top_k=None)
    want = _brute_vote(preds)
    assert len(got) == len(want)
    for c, (grid, members) in zip(got, want):
        assert isinstance(c, Candidate)
        assert np.array_equal(c.grid, grid) and c.grid.shape == grid.shape
        assert list(c.members) == members and c.count == len(members)
        assert c.share == pytest.approx(len(members) / len(preds))
    assert sum(c.count for c in got) == sum(p.parsed for p in preds)
