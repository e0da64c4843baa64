"""Selection of candidates: vote, product of experts, NVARC's count + mean log-probability."""
import math

import numpy as np
import pytest

from arcfast.answers.select import SELECTORS, ranks, select, selection_score
from arcfast.answers.vote import Prediction, vote


def _grid(k: int) -> np.ndarray:
    return np.full((2, 2), k, np.uint8)


def _candidates(counts, logprobs):
    """Voted candidates with ``counts[i]`` predictions of grid i (first appearance in order), the
    i-th carrying ``logprobs[i]`` (None: unscored)."""
    preds = [Prediction(_grid(i), logprob=-1.0, n_tokens=5) for i, n in enumerate(counts) for _ in range(n)]
    cands = vote(preds, top_k=None)
    assert [int(c.grid[0, 0]) for c in cands] == sorted(range(len(counts)), key=lambda i: -counts[i])
    from dataclasses import replace

    by_grid = {int(c.grid[0, 0]): c for c in cands}
    scored = {i: replace(by_grid[i], logprobs=None if lp is None else tuple(lp)) for i, lp in enumerate(logprobs)}
    return [scored[int(c.grid[0, 0])] for c in cands]


def _ids(cands):
    return [int(c.grid[0, 0]) for c in cands]


def test_each_selector_ranks_by_its_own_score():
    # Grid 0: found 5 times, unlikely from one viewpoint. Grid 1: found twice, likely everywhere.
    # Grid 2: found 4 times, fairly likely.
    cands = _candidates([5, 2, 4], [(-0.1, -9.0), (-1.0, -1.0), (-2.5, -2.5)])
    assert _ids(select(cands, "vote")) == [0, 2, 1]
    # poe: sums -9.1, -2.0, -5.0
    assert _ids(select(cands, "poe")) == [1, 2, 0]
    assert [c.score for c in select(cands, "poe")] == pytest.approx([-2.0, -5.0, -9.1])
    # nvarc: 5 - 4.55 = 0.45, 2 - 1 = 1.0, 4 - 2.5 = 1.5
    assert _ids(select(cands, "nvarc")) == [2, 1, 0]
    assert [c.score for c in select(cands, "nvarc")] == pytest.approx([1.5, 1.0, 0.45])
    assert _ids(select(cands, "nvarc", top_k=2)) == [2, 1]
    assert selection_score("vote", cands[0]) is None
    assert selection_score("poe", cands[1]) == pytest.approx(-5.0)   # voting order: grid 2 second
    assert all(c.score is None for c in select(cands, "vote"))


def test_unscored_candidates_follow_the_scored_ones_in_voting_order():
    cands = _candidates([6, 5, 4, 3], [None, (-3.0,), None, (-1.0,)])
    assert _ids(select(cands, "poe")) == [3, 1, 0, 2]
    assert _ids(select(cands, "nvarc")) == [1, 3, 0, 2]   # 5 - 3 = 3 - 1: the tie keeps voting order
    none = _candidates([2, 3], [None, None])
    for s in SELECTORS:
        assert _ids(select(none, s)) == _ids(none)


def test_ties_keep_the_voting_order():
    cands = _candidates([3, 2, 1], [(-1.0, -1.0), (-0.5, -1.5), (-2.0, 0.0)])
    assert _ids(select(cands, "poe")) == [0, 1, 2]


def test_ranks_give_each_candidate_its_place_under_every_selector():
    cands = _candidates([5, 2, 4], [(-0.1, -9.0), (-1.0, -1.0), (-2.5, -2.5)])
    got = ranks(cands)
    assert [r["vote"] for r in got] == [0, 1, 2]
    for s in SELECTORS:
        order = sorted(range(len(cands)), key=lambda i: got[i][s])
        assert _ids([cands[i] for i in order]) == _ids(select(cands, s))
    assert ranks(cands, ("vote",)) == [{"vote": 0}, {"vote": 1}, {"vote": 2}]


def test_candidates_must_be_scored_alike():
    with pytest.raises(ValueError, match="different numbers of augmentations"):
        select(_candidates([2, 1], [(-1.0,), (-1.0, -2.0)]), "poe")
    with pytest.raises(ValueError, match="NaN"):
        select(_candidates([2, 1], [(-1.0,), (math.nan,)]), "nvarc")
    with pytest.raises(ValueError, match="unknown selector"):
        select(_candidates([1], [None]), "best")


def test_score_jobs_give_every_candidate_its_scores_in_order():
    from arcfast.infer.rescore import RescoreJob, rank_jobs, score_jobs
    from arcfast.arc.task import Pair, Task

    task = Task("t", [Pair(_grid(1), _grid(2))], [Pair(_grid(1))])
    cands = _candidates([3, 2, 1], [None, None, None])
    jobs = [RescoreJob(task, 0, cands, ["a", "b"]), RescoreJob(task, 0, cands[:2], ["a", "b"])]
    scores = np.array([-1, -2, -3, -4, -5, -6, -7, -8, -9, np.nan], np.float64)
    got = score_jobs(jobs, scores)
    assert [c.logprobs for c in got[0]] == [(-1, -2), (-3, -4), (-5, -6)]
    assert _ids(got[0]) == _ids(cands) and got[1] is None
    ranked = rank_jobs(jobs[:1], scores[:6])[0]
    assert _ids(ranked) == _ids(cands) and [c.score for c in ranked] == [-3, -7, -11]
    assert ranked[2].logprobs == (-5, -6)


def test_judge_scores_each_selector_on_the_same_candidates():
    from arcfast.answers.select import judge

    # Test input 0: voting puts grid 0 first, poe grid 1, nvarc grid 2; the solution is grid 1.
    # Test input 1: one candidate, unscored, right under every selector.
    first = _candidates([5, 2, 4], [(-0.1, -9.0), (-1.0, -1.0), (-2.5, -2.5)])
    second = _candidates([1], [None])
    got = judge([_grid(1), _grid(0)], [first, second], ("vote", "poe", "nvarc"))
    assert got == {"vote": {"vote_1": 0.5, "vote_2": 0.5},    # grids 0, 2 submitted for input 0
                   "poe": {"vote_1": 1.0, "vote_2": 1.0},
                   "nvarc": {"vote_1": 0.5, "vote_2": 1.0}}   # grids 2, 1
    # A solution of another shape with the same cells is no hit.
    assert judge([np.full((1, 4), 1, np.uint8)], [first], ("poe",)) == {"poe": {"vote_1": 0.0, "vote_2": 0.0}}
    with pytest.raises(ValueError, match="2 solutions for 1 test inputs"):
        judge([_grid(1), _grid(0)], [first])


def test_verify_selectors_rank_by_the_verdicts():
    from dataclasses import replace

    cands = _candidates([5, 2, 4, 1], [None, None, None, None])
    verdicts = {0: (0.2, 0.4), 1: (0.9,), 2: (0.5, 0.5, 0.8), 3: None}
    cands = [replace(c, verdicts=verdicts[int(c.grid[0, 0])]) for c in cands]
    # verify: means 0.3, 0.9, 0.6; grid 3 unverified, last.
    assert _ids(select(cands, "verify")) == [1, 2, 0, 3]
    # vote+verify: 5 * 0.3 = 1.5, 2 * 0.9 = 1.8, 4 * 0.6 = 2.4.
    assert _ids(select(cands, "vote+verify")) == [2, 1, 0, 3]
    assert [c.score for c in select(cands, "vote+verify")][:3] == pytest.approx([2.4, 1.8, 1.5])
    assert _ids(select(cands, "poe")) == _ids(cands)   # no log-probabilities: voting order
    with pytest.raises(ValueError, match="verdicts must be probabilities"):
        select([replace(cands[0], verdicts=(1.5,))], "verify")
