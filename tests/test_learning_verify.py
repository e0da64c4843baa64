"""A verifier learnt here, from scratch: the tiny preset, grown to the objectives' ids, trained on the
``verify`` objective alone, tells the right outputs of new tasks from wrong ones.

The tasks paint every non-zero cell of the input with the task's colour ``k``; a task's grids are
all 2x3 or all 3x2. The training samples come from the sampler (``make_samples``): demonstrations,
an input, a candidate (the right output half of the time, else a seeded corruption of it, of any
kind) and the verdict, every sample augmented (dihedral transforms, colours, order), the candidate
as the outputs. Held-out tasks are judged by :func:`arcfast.infer.verify.verify_jobs` under two test-time
augmentations (the identity, then a quarter turn with permuted colours): each test input's right
output against the output turned a quarter (its shape transposed) and against the output with a
row added. Both are shape kinds, the easy ones at this scale: a right candidate has the test
input's shape in the frame the prompt shows.

The bar has two parts: the verdicts rank right above wrong (AUC >= ``MIN_AUC``) and they separate
them, the mean verdict of the right outputs above the wrong ones' by ``MIN_GAP`` (a probability).
Two controls train the same way on broken samples and must miss it, so the test can fail: verdict
labels flipped (YES for wrong), and the candidate left in the task's original frame while the rest
of the prompt is augmented (a right candidate then has the input's shape or its transpose, as a
turned one has, so the shape tells nothing in training).

Measured on the 2-core CPU, one torch thread, ~20 s per training, seeds 0-4: AUC 1.0 on both kinds,
a turned output's mean verdict 0.001-0.003 against 0.69-0.72 for the right one (gap about 0.7);
flipped labels AUC 0.0. The unaugmented candidate's verdicts barely depend on it: right and turned
within 0.035 of each other (0.66 against 0.62 at seed 0, within 0.003 at seeds 1-4), so it
misses the gap; its AUC on the turned kind is only the sign of that negligible difference (0.88,
1.0, 0.48, 0.0, 0.19 at seeds 0-4: at judging time the frame is consistent, so any shape bias, of
either sign, ranks perfectly), which is why the gap is the control's criterion and not the AUC.
The added row needs no frame: AUC 1.0 everywhere. What this scale does not learn reliably: telling the right colour
from another (1x1 outputs of colour ``k`` against another colour): one run of seven reached AUC
0.98 by step 750; the others stayed at 0.50-0.68 after 1,000-2,000 steps, a wider model (hidden
128) and the ``output`` objective mixed in included.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arcfast.arc import augment, vocab as T
from arcfast.samples.mixture import shared_adapter
from arcfast.arc.formats import encode
from arcfast.model.decoder import build_model, grow_vocab
from arcfast.model.config import preset
from arcfast.samples.packing import pack
from arcfast.samples.sampling import SampleConfig, make_samples
from arcfast.arc.task import Pair, Task
from arcfast.train.trainer import FullTrainer, TrainConfig
from arcfast.infer.verify import VerifyConfig, VerifyJob, verify_jobs
from arcfast.answers.vote import Candidate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEED = 0
TASKS = 1000
SAMPLES_PER_TASK = 48
ROW_LEN = 1024
STEPS = 1000
HELD_OUT = 40
MIN_AUC = 0.8
MIN_GAP = 0.5      # mean verdict of the right outputs less that of the wrong ones
SHAPES = ((2, 3), (3, 2))
AUGMENTATIONS = 2   # the identity, then a quarter turn (transform 1) with permuted colours
MODEL = preset("tiny")


def task(rng: np.random.Generator, task_id: str) -> Task:
    """Three pairs (two demonstrations, one test) of one shape, 2x3 or 3x2: random inputs of zeros
    and at least two other colours, each output the input with every non-zero cell painted ``k``."""
    k = int(rng.integers(1, 10))
    shape = SHAPES[int(rng.integers(0, 2))]
    inputs = []
    while len(inputs) < 3:
        g = np.where(rng.random(shape) < 0.3, 0, rng.integers(1, 10, shape)).astype(np.uint8)
        if (g == 0).any() and len(np.unique(g[g > 0])) >= 2:
            inputs.append(g)
    pairs = [Pair(g, np.where(g > 0, k, 0).astype(np.uint8)) for g in inputs]
    return Task(id=task_id, train=pairs[:2], test=pairs[2:])


def auc(pos, neg) -> float:
    """P(a random right candidate scores above a random wrong one), ties counting half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def flip_verdict(s):
    """The sample with its verdict inverted (a right candidate labelled NO, a wrong one YES)."""
    v = int(s.input_ids[-1])
    assert v in (T.YES, T.NO)
    s.input_ids = s.input_ids.copy()
    s.labels = s.labels.copy()
    s.input_ids[-1] = s.labels[-1] = T.NO if v == T.YES else T.YES
    return s


def unaugmented_candidate(s):
    """The sample with its candidate shown in the task's original frame, the rest as drawn."""
    cut = int(np.flatnonzero(s.input_ids == T.CANDIDATE)[-1]) + 1
    tail = np.concatenate([encode(s.candidate_grid), [T.VERDICT, s.input_ids[-1]]]).astype(np.int32)
    s.input_ids = np.concatenate([s.input_ids[:cut], tail])
    s.labels = np.concatenate([np.full(len(s.input_ids) - 1, T.IGNORE_INDEX, np.int32), s.input_ids[-1:]])
    return s


def batches(samples, row_len: int):
    """The samples in order, packed into one-row batches of at most ``row_len`` tokens."""
    chunk, used = [], 0
    for s in samples:
        if used + len(s) > row_len:
            yield shared_adapter(pack(chunk, row_len, rows=1))
            chunk, used = [], 0
        chunk.append(s)
        used += len(s)


def train_verifier(tasks, edit=None):
    """The tiny model trained for STEPS steps on verify samples of ``tasks`` (each passed through
    ``edit`` first, when given)."""
    samples = make_samples(tasks, SAMPLES_PER_TASK, SEED,
                           SampleConfig(mode="pretrain", max_len=ROW_LEN, objectives=(("verify", 1.0),)))
    assert samples.stats.candidates["right"] > 0.4 * len(samples)
    order = np.random.default_rng(SEED).permutation(len(samples))
    stream = (edit(samples[i]) if edit else samples[i] for i in order)
    model = grow_vocab(build_model(MODEL, dtype=torch.float32, device="cpu", seed=SEED))
    trainer = FullTrainer(model, TrainConfig(lr=2e-3, steps=STEPS, warmup_ratio=0.05))
    n = 0
    for n, batch in enumerate(batches(stream, ROW_LEN), 1):
        trainer.step(batch)
        if n == STEPS:
            break
    assert n == STEPS, f"only {n} batches of samples"
    return model.eval()


def judge(model, tasks) -> tuple[dict, dict]:
    """``(aucs, gaps)``: the AUC of the right output against each wrong candidate kind, and the
    right outputs' mean verdict less the kind's, over the held-out tasks."""

    def cand(g):
        return Candidate(grid=np.asarray(g, np.uint8), count=1, mean_logprob=0.0, share=1.0, members=(0,))

    jobs = []
    for t in tasks:
        right = t.test[0].output
        jobs.append(VerifyJob(t, 0, [cand(right), cand(np.rot90(right)), cand(np.vstack([right, right[:1]]))],
                              augment.test_time_augmentations(t, AUGMENTATIONS, seed=SEED), -1))
    with torch.no_grad():
        out = verify_jobs(model, None, jobs, VerifyConfig(augmentations=AUGMENTATIONS, per_round=AUGMENTATIONS, max_candidates=3))
    assert all(len(c.verdicts) == AUGMENTATIONS for cands in out for c in cands)
    scores = np.array([[np.mean(c.verdicts) for c in cands] for cands in out])
    kinds = {"turned": 1, "row_added": 2}
    return ({k: auc(scores[:, 0], scores[:, j]) for k, j in kinds.items()},
            {k: float(scores[:, 0].mean() - scores[:, j].mean()) for k, j in kinds.items()})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(SEED)
    return [task(rng, f"v-{i}") for i in range(TASKS)], [task(rng, f"h-{i}") for i in range(HELD_OUT)]


def test_verifier_learnt_at_small_scale_separates_right_from_wrong(data):
    train, held = data
    aucs, gaps = judge(train_verifier(train), held)
    print(f"verify AUC on held-out tasks: {aucs}, verdict gaps {gaps}")
    assert min(aucs.values()) >= MIN_AUC, aucs
    assert min(gaps.values()) >= MIN_GAP, gaps


def test_verifier_control_flipped_labels_miss_the_bar(data):
    train, held = data
    aucs, gaps = judge(train_verifier(train, flip_verdict), held)
    print(f"verify AUC, labels flipped: {aucs}, verdict gaps {gaps}")
    assert max(aucs.values()) < MIN_AUC, aucs
    assert max(gaps.values()) < MIN_GAP, gaps


def test_verifier_control_unaugmented_candidate_misses_the_bar(data):
    train, held = data
    aucs, gaps = judge(train_verifier(train, unaugmented_candidate), held)
    print(f"verify AUC, candidate not augmented: {aucs}, verdict gaps {gaps}")
    assert gaps["turned"] < MIN_GAP, (aucs, gaps)
