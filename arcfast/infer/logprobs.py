"""Log-probabilities of target grids under a model and its adapters: the sequences (prompt + target) batched into packed rows, prompts shared by several targets computed once (tree attention), every batch timed and none started past a deadline."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..arc import vocab as T
from ..arc.augment import Augmentation
from ..budget.clock import fits
from ..arc.task import Task
from ..answers.vote import check_grid


class ScoreItem(NamedTuple):
    """One grid to score: ``grid`` (uint8 [h, w], the task's original frame) as the answer to
    ``task.test[test_index]`` prompted under ``augmentation``, through MultiLoRA row ``adapter``
    (-1: the base model)."""

    task: Task
    test_index: int
    grid: np.ndarray
    augmentation: Augmentation
    adapter: int = -1


@dataclass
class Sequences:
    """Token sequences to score: ``prompts[i]`` (int32 [P_i], ending with OUTPUT) followed by
    ``targets[i]`` (int32 [G_i], the scored tokens), through adapter ``adapters[i]`` (int64 [n],
    -1: the base model)."""

    prompts: list
    targets: list
    adapters: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_tokens(self) -> int:
        """Tokens whole-sequence scoring runs over (every prompt and target); prefix-shared
        scoring runs over fewer (:func:`plan_tokens`)."""
        return int(sum(len(p) + len(t) for p, t in zip(self.prompts, self.targets)))


def _where(task: Task, test_index: int) -> str:
    return f"task {task.id} ({task.source or 'no source'}), test input {test_index}"


def build_sequences(items: Sequence, max_prompt_len: Optional[int] = None,
                    max_size: int = T.MAX_SIZE) -> Sequences:
    """The sequences of ``items`` (:class:`ScoreItem` or 5-tuples in its field order).

    Each (task, test input, augmentation) prompt is built once however many grids share it;
    ``max_prompt_len`` drops demonstrations as generation does (pass the same value). Raises
    ValueError naming the task, test input and item for a bad grid, index or prompt.
    """
    from ..arc.formats import encode_batch
    from ..samples.prompts import build_inference_prompts

    items = [ScoreItem(*it) for it in items]
    by_test: dict[tuple, list] = {}     # (task, test) -> distinct augmentations, first-seen order
    for k, it in enumerate(items):
        if not 0 <= int(it.test_index) < len(it.task.test):
            raise ValueError(f"item {k}: task {it.task.id} has {len(it.task.test)} test inputs, "
                             f"no test input {it.test_index}")
        augs = by_test.setdefault((id(it.task), int(it.test_index)), [])
        if it.augmentation not in augs:
            augs.append(it.augmentation)
    prompt_of: dict[tuple, np.ndarray] = {}
    tasks = {id(it.task): it.task for it in items}
    for (tid, ti), augs in by_test.items():
        try:
            built = build_inference_prompts(tasks[tid], ti, augs, max_len=max_prompt_len, max_size=max_size)
        except ValueError as e:
            raise ValueError(f"{_where(tasks[tid], ti)}: {e}") from None
        for a, p in zip(augs, built):
            prompt_of[(tid, ti, a)] = p
    grids = []
    for k, it in enumerate(items):
        where = f"{_where(it.task, it.test_index)}, item {k}"
        g = check_grid(it.grid, where, max_size)
        try:
            grids.append(it.augmentation.apply_grid(g, "output", max_size))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    targets = encode_batch(grids, "compact", max_size=max_size) if grids else []
    prompts = [prompt_of[(id(it.task), int(it.test_index), it.augmentation)] for it in items]
    adapters = np.array([int(it.adapter) for it in items], dtype=np.int64)
    return Sequences(prompts, [np.asarray(t, np.int32) for t in targets], adapters)


def _check(model, lora, seqs: Sequences) -> None:
    V = model.config.input_vocab
    if not (len(seqs.prompts) == len(seqs.targets) == len(seqs.adapters)):
        raise ValueError(f"{len(seqs.prompts)} prompts, {len(seqs.targets)} targets and "
                         f"{len(seqs.adapters)} adapter ids: one each per sequence")
    n_ad = 0 if lora is None else lora.n_adapters
    for i, (p, t, a) in enumerate(zip(seqs.prompts, seqs.targets, seqs.adapters)):
        for name, x in (("prompt", p), ("target", t)):
            x = np.asarray(x)
            if x.ndim != 1 or x.shape[0] == 0 or x.dtype.kind not in "iu":
                raise ValueError(f"sequence {i}: its {name} must be a non-empty 1-D integer array, "
                                 f"got shape {x.shape} dtype {x.dtype}")
            bad = np.flatnonzero((x < 0) | (x >= V))
            if bad.size:
                raise ValueError(f"sequence {i}: {name} token id {int(x[bad[0]])} at position {int(bad[0])} "
                                 f"is outside the vocabulary 0..{V - 1}")
        if not -1 <= int(a) < n_ad:
            have = "no LoRA was given" if lora is None else f"the LoRA holds adapters 0..{n_ad - 1}"
            raise ValueError(f"sequence {i}: adapter id {int(a)} is invalid ({have}; -1 = base model)")


def _batches(lens: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive runs of indices holding at most ``budget`` tokens each (a longer sequence alone)."""
    out, start, used = [], 0, 0
    for i, n in enumerate(lens.tolist()):
        if i > start and used + n > budget:
            out.append(np.arange(start, i))
            start, used = i, 0
        used += n
    if start < len(lens):
        out.append(np.arange(start, len(lens)))
    return out


@dataclass
class _Batch:
    """One forward, planned on the host: ``trees`` lists its segments, each the indices of the
    sequences sharing one laid-out prompt (the first one's); ``tokens`` the forward positions."""

    trees: list
    tokens: int

    @property
    def order(self) -> list:
        """The batch's sequences in the order of its log-probabilities."""
        return [i for tree in self.trees for i in tree]


def _plan_whole(seqs: Sequences, budget: int) -> list[_Batch]:
    """Today's layout: every sequence whole, in order, batch after batch."""
    lens = np.array([len(p) + len(t) for p, t in zip(seqs.prompts, seqs.targets)], dtype=np.int64)
    return [_Batch([[int(i)] for i in idx], int(lens[idx].sum())) for idx in _batches(lens, budget)]


def _plan_shared(seqs: Sequences, budget: int, row_len: int) -> list[_Batch]:
    """Sequences with the same prompt tokens and adapter grouped (groups in the order of their
    first sequence, sequences in order within a group), each group split greedily into trees of at
    most ``min(row_len, budget)`` tokens (the prompt repeated in each; a sequence longer than that
    alone), the trees then batched in order, at most ``budget`` tokens a batch."""
    cap = max(1, min(row_len, budget))
    groups: dict[tuple, list] = {}
    for i, (p, a) in enumerate(zip(seqs.prompts, seqs.adapters)):
        groups.setdefault((int(a), np.asarray(p, np.int64).tobytes()), []).append(i)
    trees, sizes = [], []
    for members in groups.values():
        P, first = len(seqs.prompts[members[0]]), len(trees)
        for i in members:
            G = len(seqs.targets[i])
            if len(trees) > first and sizes[-1] + G <= cap:
                trees[-1].append(i)
                sizes[-1] += G
            else:
                trees.append([i])
                sizes.append(P + G)
    out, cur, used = [], [], 0
    for tree, n in zip(trees, sizes):
        if cur and used + n > budget:
            out.append(_Batch(cur, used))
            cur, used = [], 0
        cur.append(tree)
        used += n
    if cur:
        out.append(_Batch(cur, used))
    return out


def plan_tokens(seqs: Sequences, batch_tokens: int, row_len: Optional[int] = None,
                prefix_share: bool = True) -> list[int]:
    """Forward positions (no padding) of each batch :func:`target_logprobs` runs over ``seqs`` with
    these settings: with ``prefix_share``, a tree's prompt once plus its candidates' targets."""
    rows = int(row_len or min(batch_tokens, 8192))
    plan = _plan_shared(seqs, batch_tokens, rows) if prefix_share else _plan_whole(seqs, batch_tokens)
    return [b.tokens for b in plan]


def _head_rows(vocab: int) -> int:
    # Logits of a full 152k vocabulary are 0.6 MB a position in fp32: bound them to ~256 MB a chunk.
    return max(1, (1 << 26) // vocab)


# FlexAttention is compiled per row shape: rounding tree rows up to this bounds the recompiles.
_FLEX_ROW_MULTIPLE = 256


def _forward_batch(model, lora, prompts, targets, adapters, trees, row_len: int, attention: str,
                   lora_path: str) -> np.ndarray:
    """Packed forward of one batch: float32 [sum of target lengths], the targets' log-probabilities
    in the order of ``trees`` (lists of sequence indices sharing the first one's prompt).

    Each tree is a segment of a packed row: the prompt (positions 0..P-1, branch 0), then each
    sequence's target (positions P..P+G-1, branches 1, 2, ...), all through the tree's adapter.
    The prompt's last position predicts every target's first token; a target's token g its token
    g+1. A batch of one-sequence trees is exactly whole-sequence packing
    (:class:`arcfast.model.attention.PackedAttention`); a batch with shared prompts runs
    :class:`arcfast.model.attention.TreeAttention`.
    """
    import torch

    from ..model.attention import PackedAttention, TreeAttention, choose_tree_impl
    from ..samples.packing import best_fit_decreasing

    branching = any(len(tree) > 1 for tree in trees)
    lens = np.array([len(prompts[tree[0]]) + sum(len(targets[i]) for i in tree) for tree in trees], dtype=np.int64)
    row, off, R = best_fit_decreasing(lens, max(int(row_len), int(lens.max())))
    # Rows as wide as the fullest one only: a padding column costs as much as a token.
    L = int((off + lens).max())
    tree_impl = choose_tree_impl(model.device) if attention == "auto" else attention
    if branching and tree_impl == "flex":
        L = -(-L // _FLEX_ROW_MULTIPLE) * _FLEX_ROW_MULTIPLE
    ids = np.full((R, L), T.PAD, np.int64)
    pos = np.zeros((R, L), np.int64)
    sid = np.full((R, L), -1, np.int32)
    br = np.zeros((R, L), np.int32)
    aid = np.full((R, L), -1, np.int32)
    used = np.zeros(R, np.int64)
    pred, tgt = [], []
    for j, tree in enumerate(trees):
        r, o, n = int(row[j]), int(off[j]), int(lens[j])
        p = prompts[tree[0]]
        P = len(p)
        ids[r, o:o + P] = p
        pos[r, o:o + P] = np.arange(P)
        c = o + P
        for b, i in enumerate(tree, start=1):
            t = targets[i]
            G = len(t)
            ids[r, c:c + G] = t
            pos[r, c:c + G] = P + np.arange(G)
            br[r, c:c + G] = b
            # The prompt's OUTPUT predicts target token 0, target token g predicts token g+1.
            pred.append(r * L + np.r_[o + P - 1, c + np.arange(G - 1)])
            tgt.append(t)
            c += G
        sid[r, o:o + n] = j
        aid[r, o:o + n] = adapters[tree[0]]
        used[r] = max(used[r], o + n)
    pred_np, tgt_np = np.concatenate(pred), np.concatenate(tgt).astype(np.int64)
    ids, tgt_np = model.config.model_ids(ids), model.config.model_ids(tgt_np)

    dev = model.device

    def t_(a, dtype):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev, dtype=dtype, non_blocking=True)

    with torch.inference_mode():
        if branching:
            att = TreeAttention(sid, br, tree_impl, device=dev)
        else:
            starts = [int(row[j]) * L + int(off[j]) for j in range(len(trees))]
            tails = [r * L + int(used[r]) for r in range(R) if used[r] < L]
            cu = np.array(sorted(set(starts + tails + [R * L])), dtype=np.int32)
            att = PackedAttention(t_(sid, torch.int32), attention, cu_seqlens=cu, dtype=model.dtype)
        step = lora.begin(aid, model.dtype, lora_path, training=False, base_tokens=True) \
            if lora is not None and (aid >= 0).any() else None
        hidden = model(t_(ids, torch.long), t_(pos, torch.long), att, step)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, t_(pred_np, torch.long))
        targets_t = t_(tgt_np, torch.long)
        tokens = getattr(step, "tokens", None)
        ad = t_(aid.reshape(-1)[pred_np], torch.long) if tokens is not None else None
        chunk = _head_rows(model.config.vocab_size)
        parts = []
        for c in range(0, h.shape[0], chunk):
            head = (tokens, ad[c:c + chunk]) if tokens is not None else ()
            logp = torch.log_softmax(model.logits(h[c:c + chunk], *head).float(), dim=-1)
            parts.append(logp.gather(1, targets_t[c:c + chunk, None])[:, 0])
        return torch.cat(parts).cpu().numpy()


def default_batch_tokens(device) -> int:
    """Tokens per scoring forward by default: 32768 on CUDA, 4096 on the CPU. Batches are planned
    against a deadline from their measured rate, but the first one of a call only when given a rate
    (``s_per_token``): unplanned, it must end well within the run's safety margin (4k tokens of the
    tiny model take about 0.4 s on one CPU core)."""
    import torch

    return 32768 if torch.device(device).type == "cuda" else 4096


@dataclass
class ScoreStats:
    """What a :func:`target_logprobs` call did (pass one as ``stats=`` to have it filled).

    sequences:       sequences asked for; ``scored``: those scored; ``cut_by_deadline``: those the
                     deadline left unscored (the last ones in scoring order).
    tokens:          forward positions the call computed (prompts and targets, no padding; a shared
                     prompt once per tree); ``whole_tokens``: what whole-sequence scoring of the same
                     scored sequences computes (each prompt and target); ``batches``: forwards run;
                     ``seconds``: their wall time (device synchronised).
    s_per_token:     the latest measured seconds per computed token of a batch (the ``s_per_token``
                     given when no batch ran; 0.0 when neither): what the next call can plan from.
    """

    sequences: int = 0
    scored: int = 0
    cut_by_deadline: int = 0
    tokens: int = 0
    whole_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    s_per_token: float = 0.0


def target_logprobs(model, lora, seqs: Sequences, batch_tokens: Optional[int] = None,
                    row_len: Optional[int] = None, attention: str = "auto", lora_path: str = "auto",
                    deadline: Optional[float] = None, s_per_token: Optional[float] = None,
                    stats: Optional[ScoreStats] = None, prefix_share: bool = True) -> list:
    """Per-token log-probabilities of every sequence's target given its prompt.

    model:        an :class:`arcfast.model.decoder.CausalLM` (any dtype/device).
    lora:         the :class:`arcfast.lora.multi.MultiLoRA` ``seqs.adapters`` index, or None.
    batch_tokens: forward positions per batch (default :func:`default_batch_tokens`; a longer
                  sequence runs alone).
    row_len:      tokens per packed row (default: ``min(batch_tokens, 8192)``, at least the longest
                  sequence of the batch).
    attention:    the attention impl: :class:`arcfast.model.attention.PackedAttention`'s for batches
                  without a shared prompt, :class:`arcfast.model.attention.TreeAttention`'s (auto, sdpa,
                  flex, loop) for the others; ``lora_path``: the LoRA path.
    prefix_share: sequences with the same prompt tokens and adapter are laid out as one tree, the
                  prompt computed once (see the module docstring); False packs every sequence whole.
                  The log-probabilities are the same either way.
    deadline:     a ``time.monotonic()`` instant the call returns by: each batch is timed, and none
                  is started that would end past the deadline at the measured seconds per token
                  (times ``DEADLINE_SAFETY``); it and the batches after it are not run.
    s_per_token:  seconds per computed token to plan the first batch with (e.g. a previous call's
                  ``stats.s_per_token``, or a generator's ``stats.prefill_s_per_token``); without
                  it the first batch is started whenever the deadline has not passed.
    stats:        a :class:`ScoreStats` filled in place (counts, seconds, the measured rate).

    Sequences are scored batch after batch in order; with ``prefix_share``, grouped by prompt, the
    groups in the order of their first sequence (so, when no two share a prompt, in order).
    Returns a list with, per sequence, float32 [G_i] (fp32 log-softmax, temperature 1), or ``None``
    for a sequence the deadline left unscored.
    """
    _check(model, lora, seqs)
    n = len(seqs)
    out: list = [None] * n
    st = stats if stats is not None else ScoreStats()
    vars(st).update(vars(ScoreStats(sequences=n, s_per_token=float(s_per_token or 0.0))))
    if n == 0:
        return out
    budget = int(batch_tokens or default_batch_tokens(model.device))
    if budget < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if prefix_share and attention == "varlen":
        raise ValueError("attention 'varlen' has no prefix-tree form: pass prefix_share=False, or "
                         "attention auto, sdpa, flex or loop")
    rows = int(row_len or min(budget, 8192))
    prompts = [np.asarray(p, np.int64) for p in seqs.prompts]
    targets = [np.asarray(t, np.int64) for t in seqs.targets]
    plan = _plan_shared(seqs, budget, rows) if prefix_share else _plan_whole(seqs, budget)
    rate = s_per_token if s_per_token and s_per_token > 0 else None
    for batch in plan:
        tokens = batch.tokens
        if deadline is not None:
            now = time.monotonic()
            if now >= deadline or (rate is not None and not fits(now, rate * tokens, deadline)):
                break
        t0 = time.perf_counter()
        lp = _forward_batch(model, lora, prompts, targets, seqs.adapters, batch.trees, rows, attention,
                            lora_path)   # on the host: synchronised
        dt = time.perf_counter() - t0
        rate = dt / tokens
        idx = batch.order
        st.batches += 1
        st.tokens += tokens
        st.whole_tokens += sum(len(prompts[i]) + len(targets[i]) for i in idx)
        st.seconds += dt
        st.scored += len(idx)
        st.s_per_token = rate
        ends = np.cumsum([len(targets[i]) for i in idx])[:-1]
        for i, x in zip(idx, np.split(lp, ends)):
            out[int(i)] = x
    st.cut_by_deadline = n - st.scored
    return out


def score_sequences(model, lora, seqs: Sequences, **kwargs) -> np.ndarray:
    """float64 [n]: each sequence's summed target log-probability (NaN where a ``deadline`` left it
    unscored). ``kwargs`` go to :func:`target_logprobs`."""
    lps = target_logprobs(model, lora, seqs, **kwargs)
    return np.array([math.nan if lp is None else float(np.sum(lp, dtype=np.float64)) for lp in lps],
                    dtype=np.float64)


def score_candidates(model, lora, items: Sequence, max_prompt_len: Optional[int] = None, **kwargs) -> np.ndarray:
    """float64 [n]: the teacher-forced log-probability of each item's grid, end-of-grid included
    (see the module docstring). ``items``: :class:`ScoreItem` (or 5-tuples ``(task, test_index,
    grid, augmentation, adapter)``); ``kwargs`` go to :func:`target_logprobs`."""
    return score_sequences(model, lora, build_sequences(items, max_prompt_len), **kwargs)
