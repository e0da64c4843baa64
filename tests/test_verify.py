"""arcfast.infer.verify against its reference (each prompt alone through the model's own forward), and
the rounds that stop candidates out of reach of the top two."""
import numpy as np
import pytest
import torch

from arcfast.arc.augment import test_time_augmentations as tta
from arcfast.model.decoder import build_model, grow_vocab
from arcfast.model.config import preset
from arcfast.reference.verify import verdict_reference
from arcfast.infer.verify import VerifyConfig, VerifyJob, VerifyStats, still_running, verify_jobs, wilson
from arcfast.answers.vote import Prediction, vote
from test_generate import _lora, _task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    m = build_model(preset("tiny"), device="cpu", dtype=torch.float32, seed=4)
    return grow_vocab(m).eval()


def _cands(seed, n, counts=None):
    rng = np.random.default_rng(seed)
    grids = [rng.integers(0, 10, size=(int(rng.integers(1, 4)), int(rng.integers(1, 4)))).astype(np.uint8)
             for _ in range(n)]
    counts = counts or list(range(n, 0, -1))
    preds = [Prediction(g, logprob=-1.0, n_tokens=3) for g, c in zip(grids, counts) for _ in range(c)]
    return vote(preds, top_k=None)


def test_verdicts_equal_the_reference(model):
    lora = _lora(model, n=2, seed=3)
    tasks = [_task("v1", 1), _task("v2", 2)]
    jobs = [VerifyJob(tasks[0], 0, _cands(1, 3), tta(tasks[0], 4, seed=1), 0),
            VerifyJob(tasks[1], 0, _cands(2, 4), tta(tasks[1], 4, seed=2), 1),
            VerifyJob(tasks[1], 0, _cands(3, 1), tta(tasks[1], 4, seed=2), -1)]   # one candidate: nothing to do
    st = VerifyStats()
    # A confidence this close to 1 keeps every candidate running: all get 4 verdicts.
    out = verify_jobs(model, lora, jobs, VerifyConfig(augmentations=4, per_round=2, confidence=1 - 1e-12),
                      stats=st, batch_tokens=700)
    assert st.rounds == 2 and st.verifications == 4 * 7 and st.stopped == 0 and st.cut_by_deadline == 0
    assert 0 < st.tokens < st.whole_tokens            # each test input's prompt shared by its candidates
    assert out[2][0].verdicts is None
    for job, cands in zip(jobs[:2], out[:2]):
        assert [c.members for c in cands] == [c.members for c in job.candidates]   # order kept
        for c in cands:
            want = [verdict_reference(model, job.task, 0, c.grid, a, lora, job.adapter) for a in job.augmentations]
            np.testing.assert_allclose(c.verdicts, want, atol=1e-4)
    # The adapters matter: the same candidates through the base model give other verdicts.
    base = verify_jobs(model, None, [VerifyJob(jobs[0].task, 0, jobs[0].candidates, jobs[0].augmentations, -1)],
                       VerifyConfig(augmentations=4, confidence=1 - 1e-12))[0]
    assert max(abs(a - b) for c, d in zip(base, out[0]) for a, b in zip(c.verdicts, d.verdicts)) > 1e-4
    # min_candidates=1: a lone candidate is verified too, with the verdicts of the reference.
    st1 = VerifyStats()
    (lone,) = verify_jobs(model, lora, jobs[2:], VerifyConfig(augmentations=4, min_candidates=1), stats=st1)[0]
    assert st1.verifications == 4 and st1.candidates == 1
    want = [verdict_reference(model, jobs[2].task, 0, lone.grid, a, lora, -1) for a in jobs[2].augmentations]
    np.testing.assert_allclose(lone.verdicts, want, atol=1e-4)


def test_rounds_stop_candidates_out_of_reach():
    z = 1.96
    lo, hi = wilson(0.5, 4, z)
    assert 0 < lo < 0.5 < hi < 1 and wilson(0.5, 0, z) == (0.0, 1.0)
    sure = [[0.95] * 6, [0.9] * 6, [0.05] * 6, [0.5, 0.6]]
    # Candidate 2 is far below the second best's lower bound; 3 is uncertain (2 trials): it goes on.
    assert still_running(sure, [0, 1, 2, 3], 2, z) == [0, 1, 3]
    assert still_running(sure, [0, 1], 2, z) == [0, 1]
    assert still_running([[0.1] * 20, [0.2] * 20, [0.9] * 20], [0, 1, 2], 1, z) == [2]
    assert still_running([[0.1] * 6, [0.2] * 6, [0.9] * 6], [0, 1, 2], 1, z) == [0, 1, 2]   # 6 trials: too few to tell


def test_deadline_and_a_model_without_the_ids(model):
    task = _task("v3", 3)
    job = VerifyJob(task, 0, _cands(4, 3), tta(task, 4), -1)
    st = VerifyStats()
    out = verify_jobs(model, None, [job], VerifyConfig(augmentations=4), deadline=0.0, stats=st)
    assert all(c.verdicts is None for c in out[0]) and st.cut_by_deadline == 3 * 2 and st.verifications == 0
    small = build_model(preset("tiny"), device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="no ids for the verify objective"):
        verify_jobs(small, None, [job])
    with pytest.raises(ValueError, match="2 augmentations for 4 verifications"):
        verify_jobs(model, None, [VerifyJob(task, 0, job.candidates, tta(task, 2), -1)], VerifyConfig(augmentations=4))
