import numpy as np
import pytest

from arcfast.answers.metrics import METRICS, mean_metrics, score_task, score_tasks, score_test
from arcfast.arc.task import Pair, Task
from arcfast.answers.vote import Candidate, Prediction

S = np.array([[1, 2], [3, 4]], dtype=np.uint8)
NEAR = np.array([[1, 2], [3, 0]], dtype=np.uint8)  # 3 of 4 cells right
WIDE = np.array([[1, 2, 3]], dtype=np.uint8)
ZERO = np.zeros((2, 2), dtype=np.uint8)  # right shape, no cell right


def P(grid, logprob=-1.0, n=10):
    return Prediction(grid, logprob=logprob, n_tokens=n if grid is not None else 0)


def task(tid, outputs, source="mem.json"):
    return Task(tid, train=[Pair(S, S)], test=[Pair(np.zeros((1, 1), np.uint8), o) for o in outputs], source=source)


def test_hand_computed_mixed():
    preds = [P(S), P(NEAR), P(S), P(WIDE), P(None), P(ZERO)]
    m = score_test(preds, S)
    assert set(m) == set(METRICS)
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["correct_pixels"] == pytest.approx((1 + 0.75 + 1 + 0) / 6)
    assert m["correct_size"] == pytest.approx(4 / 6)
    assert m["pass_n"] == 1.0
    assert m["vote_1"] == 1.0 and m["vote_2"] == 1.0
    assert m["unanswered"] == pytest.approx(1 / 6)


def test_vote_1_vs_vote_2_vs_pass_n():
    second = [P(NEAR), P(NEAR), P(S)]
    m = score_test(second, S)
    assert (m["vote_1"], m["vote_2"], m["pass_n"]) == (0.0, 1.0, 1.0)
    # S is third: counts 2, 2, 1
    third = [P(NEAR), P(NEAR), P(ZERO), P(ZERO), P(S)]
    m = score_test(third, S)
    assert (m["vote_1"], m["vote_2"], m["pass_n"]) == (0.0, 0.0, 1.0)
    assert m["accuracy"] == pytest.approx(1 / 5)
    # a tie on count goes to the better per-token log-probability
    tie = [P(NEAR, -9.0), P(S, -1.0)]
    assert score_test(tie, S)["vote_1"] == 1.0
    assert score_test(tie[::-1], S)["vote_1"] == 1.0


def test_given_candidates_decide_the_vote():
    preds = [P(NEAR), P(NEAR), P(S)]
    rescored = [Candidate(S, 1, -1.0, 1 / 3), Candidate(NEAR, 2, -1.0, 2 / 3)]
    m = score_test(preds, S, candidates=rescored)
    assert m["vote_1"] == 1.0
    assert m["accuracy"] == pytest.approx(1 / 3)  # per-prediction metrics ignore the ranking
    assert score_test(preds, S, candidates=[])["vote_2"] == 0.0
    # only the top two count, however many candidates are given
    three = [Candidate(NEAR, 2, -1.0, 0.5), Candidate(ZERO, 1, -1.0, 0.25), Candidate(S, 1, -1.0, 0.25)]
    m = score_test(preds + [P(ZERO)], S, candidates=three)
    assert (m["vote_2"], m["pass_n"]) == (0.0, 1.0)


def test_no_predictions_and_all_unparsed():
    m = score_test([], S)
    assert m == {k: (1.0 if k == "unanswered" else 0.0) for k in METRICS}
    m = score_test([P(None), Prediction(None, status="ragged")], S)
    assert m == {k: (1.0 if k == "unanswered" else 0.0) for k in METRICS}


def test_wrong_shapes_only():
    m = score_test([P(WIDE), P(WIDE.T.copy())], S)
    assert m["correct_size"] == 0.0 and m["correct_pixels"] == 0.0 and m["unanswered"] == 0.0
    assert m["vote_1"] == 0.0


def test_transposed_solution_is_not_a_match():
    sq = np.array([[1, 2, 3]], np.uint8)
    m = score_test([P(sq.reshape(3, 1))], sq)
    assert m["accuracy"] == 0.0 and m["correct_size"] == 0.0


def test_task_mean_over_tests_then_run_mean_over_tasks():
    t1 = task("t1", [S, S])
    t2 = task("t2", [S])
    preds = {
        "t1": [[P(S), P(NEAR)], []],          # test 0: acc .5, pix .875; test 1: unanswered
        "t2": [[P(None), P(None), P(S), P(S)]],  # acc .5, unanswered .5
    }
    per_task, overall = score_tasks([t1, t2], preds)
    assert list(per_task) == ["t1", "t2"]
    assert per_task["t1"]["accuracy"] == pytest.approx(0.25)
    assert per_task["t1"]["correct_pixels"] == pytest.approx(0.875 / 2)
    assert per_task["t1"]["unanswered"] == pytest.approx(0.5)
    assert per_task["t1"]["pass_n"] == pytest.approx(0.5)
    assert per_task["t2"]["accuracy"] == pytest.approx(0.5)
    assert per_task["t2"]["unanswered"] == pytest.approx(0.5)
    assert per_task["t2"]["vote_1"] == 1.0
    # tasks weigh equally whatever their number of test inputs
    assert overall["accuracy"] == pytest.approx((0.25 + 0.5) / 2)
    assert overall["vote_1"] == pytest.approx((0.5 + 1.0) / 2)


def test_task_never_reached_scores_unanswered():
    t1, t2 = task("t1", [S]), task("t2", [S, S])
    per_task, overall = score_tasks([t1, t2], {"t1": [[P(S)]]})
    assert per_task["t2"]["unanswered"] == 1.0 and per_task["t2"]["accuracy"] == 0.0
    assert overall["accuracy"] == pytest.approx(0.5)


def test_errors_name_task_and_place():
    t = task("abc", [S, None], source="eval.json")
    with pytest.raises(ValueError, match=r"eval.json: task abc: test 1 has no known output"):
        score_task(t, [[P(S)], [P(S)]])
    with pytest.raises(ValueError, match=r"task abc: 1 prediction lists for 2 test inputs"):
        score_task(t, [[P(S)]])
    bad = Task("bad", train=[], test=[Pair(S, np.array([[1, 11]]))], source="x.json")
    with pytest.raises(ValueError, match=r"x.json: task bad: test 0: solution: colour 11 at row 0, column 1"):
        score_task(bad, [[P(S)]])
    with pytest.raises(ValueError, match="unknown task"):
        score_tasks([task("a", [S])], {"zzz": [[]]})
    with pytest.raises(ValueError, match="nothing to average"):
        mean_metrics([])
