"""Depth-first search: every completion of a prompt whose probability is at least ``min_prob``.

    found = dfs(model, prompts, adapter_ids, lora, SearchConfig(min_prob=0.1))
    found[i]              # list[Completion] of prompt i: the greedy one first, then by log-prob
    found[i][0].tokens    # int32 [n], ending with EOG; .logprobs float32 [n]; .greedy

A completion is a token sequence ending with ``EOG``; its probability is the product of its
tokens' probabilities under the prompt's adapter (fp32 log-softmax at temperature 1, as
:mod:`arcfast.infer.generate` and :mod:`arcfast.infer.rescore` compute them). A prefix whose probability is
already below ``min_prob`` cannot lead to a completion above it, so the search cuts it: it finds
every completion with probability >= P without enumerating the rest, as the ARChitects' and
NVARC's ARC solvers do (cutoffs of 10-20%).

How it runs: one search tree per prompt, all trees advanced together one token per step.

- **Frontier.** A tree's live nodes are the prefixes still above the cutoff. They all have the same
  length (every node advances one token per step), so they are disjoint events and at most
  ``floor(1/P)`` of them are alive at once: each tree gets a block of that many cache rows (plus one
  for the greedy node, below; at most ``max_live``).
- **One decode loop.** Each step runs the model's own forward (:meth:`arcfast.model.decoder.CausalLM.forward`)
  over one token of every live node of every tree — across prompts, augmentations, tasks and
  adapters (each node's adapter through :meth:`arcfast.lora.multi.MultiLoRA.begin`) — with
  :class:`arcfast.model.kv_cache.CacheDecode` reading the nodes' scattered rows.
- **Shared cache.** A node's first child continues in the node's own cache row; each further child
  gets a copy of it (:func:`arcfast.model.kv_cache.copy_rows`). Branching is rare (a tree has at most
  ``floor(1/P)`` leaves), so the prompt is prefilled once per tree and copied a few times.
- **The greedy path first.** The child of the greedy node with the highest probability is always
  kept, also below the cutoff, so the search returns the greedy completion too: ``dfs`` never
  answers less than greedy decoding does (``keep_greedy=False`` turns this off).
- **Caps.** A tree stops branching after ``max_candidates`` completions (by default never: at most
  ``floor(1/P)`` completions reach P, plus the greedy one) or ``max_seconds`` from its start (its
  greedy node still finishes); a ``deadline`` stops everything before a step that would end past it
  at the measured rate, and each tree returns what it found. Prompts are prefilled in
  micro-batches of ``prefill_tokens`` padded tokens, none started that would end past the
  deadline at the measured prefill rate (the first one measured on a short probe when no rate
  was given in ``stats.prefill_s_per_token``); a prompt too long for the time left is skipped and
  the shorter ones after it are still tried.

On a full-vocabulary model the search branches over the compact ids' columns only, with their
log-probabilities under the whole vocabulary (``ModelConfig.model_ids``), as the generator chooses.
The steps run eagerly (no CUDA graphs). The plain reference, a recursive search over full forwards
without a cache, is :func:`arcfast.reference.search.dfs_reference`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..arc import vocab as T
from ..budget.clock import fits, forward_seconds, how_many
from .decoding import MAX_NEW_TOKENS, PREFILL_PROBE_TOKENS, Generation, check_requests
from ..model.kv_cache import CacheDecode, CachePrefill, copy_rows
from ..model.decoder import FusedAddNormStep

SEARCHES = ("greedy", "sample", "dfs")


@dataclass
class SearchConfig:
    """Settings of a depth-first search.

    min_prob:       P in (0, 1]: completions of probability >= P are found.
    max_new_tokens: tokens per completion at most (EOG included); longer prefixes are dropped.
    max_candidates: completions per prompt after which its tree stops branching (None: the bound,
                    ``floor(1/P) + 1`` with the greedy one, which never cuts a completion).
    max_seconds:    wall seconds per prompt (from its tree's start) after which it stops branching.
    keep_greedy:    always follow the greedy path (its completion is returned also below P).
    max_live:       live nodes per tree at most (default ``floor(1/P) + 1``: the bound, never cut);
                    when a smaller cap is set, the least likely children beyond it are dropped.
    """

    min_prob: float = 0.1
    max_new_tokens: int = MAX_NEW_TOKENS
    max_candidates: Optional[int] = None
    max_seconds: Optional[float] = None
    keep_greedy: bool = True
    max_live: Optional[int] = None

    def __post_init__(self):
        if not (0.0 < float(self.min_prob) <= 1.0):
            raise ValueError(f"min_prob must be in (0, 1], got {self.min_prob}")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_candidates is not None and int(self.max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1 (or None: never cap), got {self.max_candidates}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (or None), got {self.max_seconds}")
        if self.max_live is not None and int(self.max_live) < 1:
            raise ValueError(f"max_live must be >= 1 (or None), got {self.max_live}")
        self.min_prob = float(self.min_prob)
        self.max_new_tokens = int(self.max_new_tokens)
        self.max_candidates = None if self.max_candidates is None else int(self.max_candidates)

    @property
    def above_cutoff(self) -> int:
        """The most completions of probability >= P one prompt has: distinct completions' probabilities
        sum to at most 1, so ``floor(1/P)``."""
        return int(math.floor(1.0 / self.min_prob + 1e-9))

    @property
    def candidate_cap(self) -> int:
        """Completions per tree after which it stops branching: ``max_candidates``, or the most a
        tree can find: :attr:`above_cutoff`, and the greedy one, which may lie below P."""
        if self.max_candidates is not None:
            return self.max_candidates
        return self.above_cutoff + 1

    @property
    def rows_per_tree(self) -> int:
        bound = self.above_cutoff + int(self.keep_greedy)
        return bound if self.max_live is None else min(bound, int(self.max_live))


@dataclass
class Completion(Generation):
    """One completion found by the search (a :class:`arcfast.infer.decoding.Generation` ending with EOG);
    ``greedy``: it is the greedy decoding's output."""

    greedy: bool = False


@dataclass
class SearchStats:
    """What a :func:`dfs` call did.

    prompts, completions:  trees searched, completions returned.
    steps, node_steps:     decode steps run, and live nodes summed over them (tokens decoded).
    forks:                 cache rows copied for a branch.
    dropped_length:        prefixes dropped at ``max_new_tokens`` without EOG.
    dropped_live:          children dropped by the ``max_live`` cap.
    capped:                trees stopped by ``max_candidates`` or ``max_seconds``.
    cut_by_deadline:       trees stopped by the deadline with live nodes (what they found is kept).
    prefill_s, decode_s:   wall seconds (device synchronised); ``s_per_node_step``: decode seconds
                           per live node, what a caller can plan the next call from.
    prefill_s_per_token:   the prefill rate: given, what the first micro-batch is planned with
                           (e.g. a generator's); after the call, the last one measured (0: none).
    """

    prompts: int = 0
    completions: int = 0
    steps: int = 0
    node_steps: int = 0
    forks: int = 0
    dropped_length: int = 0
    dropped_live: int = 0
    capped: int = 0
    cut_by_deadline: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_s_per_token: float = 0.0
    step_s: list = field(default_factory=list, repr=False)

    @property
    def s_per_node_step(self) -> float:
        return self.decode_s / self.node_steps if self.node_steps else 0.0


class _Node:
    __slots__ = ("tree", "row", "pos", "tokens", "lps", "cum", "greedy")

    def __init__(self, tree, row, pos, tokens, lps, cum, greedy):
        self.tree, self.row, self.pos = tree, row, pos      # pos: where tokens[-1] is fed
        self.tokens, self.lps, self.cum, self.greedy = tokens, lps, cum, greedy


class _Tree:
    __slots__ = ("index", "adapter", "block", "free", "live", "found", "t0", "capped")

    def __init__(self, index, adapter, block, rows, t0):
        self.index, self.adapter, self.block = index, adapter, block
        self.free = list(reversed(rows))
        self.live: list = []
        self.found: list = []
        self.t0 = t0
        self.capped = False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class _Search:
    def __init__(self, model, lora, cfg: SearchConfig, max_rows: Optional[int], deadline, stats: SearchStats):
        self.m, self.lora, self.cfg, self.stats = model, lora, cfg, stats
        self.device = model.device
        mc = model.config
        cols = mc.grid_columns()   # a grown compact model too: its ids 16-19 are never expanded
        self.vocab_map = None if cols is None else torch.as_tensor(cols, dtype=torch.int64, device=self.device)
        self.k = cfg.rows_per_tree
        cap = max_rows or (256 if self.device.type == "cuda" else 64)
        self.cap = max(cap, self.k)
        self.deadline = deadline
        self.log_p = math.log(cfg.min_prob)
        self.prefill_tokens = 32768 if self.device.type == "cuda" else 4096   # padded tokens per micro-batch
        self._rate_len: Optional[int] = None   # the padded length stats.prefill_s_per_token was measured on

    # -- the model -------------------------------------------------------------------------------
    def _ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.vocab_map is None else self.vocab_map[ids]

    def _logp(self, hidden: torch.Tensor, lora, adapters: np.ndarray) -> np.ndarray:
        """float32 [n, VOCAB_SIZE]: log-probabilities of the compact ids (whole-vocabulary softmax),
        through the head rows of each row's adapter (``adapters`` [n], -1: none) where they train them."""
        tokens = getattr(lora, "tokens", None)
        ad = torch.from_numpy(np.asarray(adapters, np.int64)).to(hidden.device) if tokens is not None else None
        logp = torch.log_softmax(self.m.logits(hidden, tokens, ad).float(), dim=-1)
        if self.vocab_map is not None:
            logp = logp[:, self.vocab_map]
        return logp.cpu().numpy()

    def _lora(self, adapters: np.ndarray):
        if self.lora is None or not (adapters >= 0).any():
            return None
        return self.lora.begin(adapters.astype(np.int32), self.m.dtype, training=False, base_tokens=True)

    # -- the search --------------------------------------------------------------------------------
    def run(self, prompts, adapters) -> list:
        cfg, st = self.cfg, self.stats
        n = len(prompts)
        results: list = [[] for _ in range(n)]
        if n == 0:
            return results
        S = _round_up(max(len(p) for p in prompts) + cfg.max_new_tokens, 64)
        mc = self.m.config
        self.kv = torch.zeros(mc.n_layers, 2, self.cap, mc.n_kv_heads, S, mc.head_dim, device=self.device,
                              dtype=self.m.dtype)
        self.span = torch.arange(S, device=self.device)
        n_blocks = self.cap // self.k
        free_blocks = list(range(n_blocks - 1, -1, -1))
        queue = sorted(range(n), key=lambda i: -len(prompts[i]))   # longest first
        trees: list = []
        qi = 0
        closed = False   # the deadline left no time to prefill another prompt
        while (qi < len(queue) and not closed) or trees:
            if self._out_of_time():
                break
            # Admit prompts into free blocks, prefilled in micro-batches planned against the deadline.
            while qi < len(queue) and free_blocks and not closed:
                L = len(prompts[queue[qi]])   # longest first: the first sets the padded length
                R = max(1, min(len(free_blocks), len(queue) - qi, self.prefill_tokens // max(L, 1)))
                if self.deadline is not None:
                    if not st.prefill_s_per_token and L > PREFILL_PROBE_TOKENS:
                        self._probe(prompts[queue[qi]], adapters[queue[qi]], free_blocks[-1])
                    now = time.monotonic()
                    if now >= self.deadline:
                        closed = True
                        break
                    per = forward_seconds(st.prefill_s_per_token, self._rate_len, L)
                    if not fits(now, per * R, self.deadline):
                        R = how_many(now, per, self.deadline)
                        if R < 1:   # this prompt does not fit: the shorter ones after it may
                            st.cut_by_deadline += 1
                            qi += 1
                            continue
                admit = [(queue[qi + j], free_blocks.pop()) for j in range(R)]
                qi += R
                t0 = time.perf_counter()
                trees += self._prefill(admit, prompts, adapters)
                st.prefill_s_per_token = (time.perf_counter() - t0) / (R * L)
                self._rate_len = L
            live = [nd for t in trees for nd in t.live]
            if live:
                self._step(live)
            # Trees with nothing left are done: their blocks go to the next prompts.
            still = []
            for t in trees:
                if t.live:
                    still.append(t)
                else:
                    results[t.index] = self._finish(t)
                    free_blocks.append(t.block)
            trees = still
        for t in trees:                       # stopped by the deadline: what they found is kept
            results[t.index] = self._finish(t)
        st.cut_by_deadline += len(trees) + len(queue) - qi
        st.prompts += n
        st.completions += sum(len(r) for r in results)
        del self.kv
        return results

    def _out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        now = time.monotonic()
        est = self.stats.step_s[-1] if self.stats.step_s else 0.0
        return not fits(now, est, self.deadline)

    def _probe(self, prompt, adapter: int, block: int) -> None:
        """Measure the prefill rate on the first ``PREFILL_PROBE_TOKENS`` tokens of ``prompt``, in
        the free block ``block`` (its prompt's own prefill overwrites it)."""
        for n in (16, PREFILL_PROBE_TOKENS):   # the first untimed: one-time costs are not the rate
            t0 = time.perf_counter()
            ids = torch.from_numpy(np.asarray(prompt[:n], np.int64)[None]).to(self.device)
            ad = np.full((1, ids.shape[1]), adapter, np.int64)
            rows = torch.tensor([block * self.k], device=self.device)
            with torch.inference_mode():
                self.m(self._ids(ids), attention=CachePrefill(self.kv, rows=rows),
                       step=FusedAddNormStep(self._lora(ad)), compiled=False)
            _sync(self.device)
        self.stats.prefill_s_per_token = (time.perf_counter() - t0) / ids.shape[1]
        self._rate_len = ids.shape[1]

    def _prefill(self, admit, prompts, adapters) -> list:
        t0 = time.perf_counter()
        L = max(len(prompts[i]) for i, _ in admit)
        R = len(admit)
        ids = np.full((R, L), T.PAD, np.int64)
        lens = np.array([len(prompts[i]) for i, _ in admit], np.int64)
        for j, (i, _) in enumerate(admit):
            ids[j, :lens[j]] = prompts[i]
        ad = np.repeat(np.array([adapters[i] for i, _ in admit], np.int64)[:, None], L, axis=1)
        rows = torch.tensor([b * self.k for _, b in admit], device=self.device)
        ids_t = torch.from_numpy(ids).to(self.device)
        with torch.inference_mode():
            lora = self._lora(ad)
            h = self.m(self._ids(ids_t), attention=CachePrefill(self.kv, rows=rows), step=FusedAddNormStep(lora),
                       compiled=False)
            lp = self._logp(h[torch.arange(R, device=self.device), torch.from_numpy(lens - 1).to(self.device)],
                            lora, ad[:, 0])
        _sync(self.device)
        self.stats.prefill_s += time.perf_counter() - t0
        now = time.monotonic()
        trees = []
        for j, (i, b) in enumerate(admit):
            t = _Tree(i, int(adapters[i]), b, list(range(b * self.k + 1, (b + 1) * self.k)), now)
            root = _Node(t, b * self.k, int(lens[j]) - 1, [], [], 0.0, True)
            self._expand(t, [root], lp[j:j + 1], now)
            trees.append(t)
        return trees

    def _step(self, live: list) -> None:
        t0 = time.perf_counter()
        B = len(live)
        dev = self.device
        tok = torch.tensor([nd.tokens[-1] for nd in live], device=dev, dtype=torch.int64)
        pos = torch.tensor([nd.pos for nd in live], device=dev, dtype=torch.int64)
        rows = torch.tensor([nd.row for nd in live], device=dev, dtype=torch.int64)
        S = _round_up(max(nd.pos for nd in live) + 1, 64)
        ad = np.array([[nd.tree.adapter] for nd in live], np.int64)
        with torch.inference_mode():
            lora = self._lora(ad)
            h = self.m(self._ids(tok)[:, None], pos[:, None], CacheDecode(self.kv, pos, S, rows, self.span, gather=True),
                       step=FusedAddNormStep(lora), compiled=False)
            lp = self._logp(h[:, 0], lora, ad[:, 0])
        _sync(dev)
        dt = time.perf_counter() - t0
        st = self.stats
        st.steps += 1
        st.node_steps += B
        st.decode_s += dt
        st.step_s.append(dt)
        now = time.monotonic()
        by_tree: dict = {}
        for j, nd in enumerate(live):
            by_tree.setdefault(id(nd.tree), (nd.tree, []))[1].append(j)
        for tree, js in by_tree.values():
            self._expand(tree, [live[j] for j in js], lp[js], now)

    def _expand(self, tree: _Tree, nodes: list, lp: np.ndarray, now: float) -> None:
        """Replace ``nodes`` (all the live nodes of ``tree``, fed) by their children: completions
        are recorded, prefixes below the cutoff cut, the rest take cache rows."""
        cfg, st = self.cfg, self.stats
        if not tree.capped and (len(tree.found) >= cfg.candidate_cap or
                                (cfg.max_seconds is not None and now - tree.t0 > cfg.max_seconds)):
            tree.capped = True
            st.capped += 1
        children = []           # (parent, token, greedy, cumulative log-prob, token log-prob)
        for nd, row_lp in zip(nodes, lp):
            g = int(np.argmax(row_lp))
            cum = nd.cum + row_lp.astype(np.float64)
            keep = cum >= self.log_p
            if tree.capped:
                keep[:] = False
            if nd.greedy and cfg.keep_greedy:
                keep[g] = True
            for t in np.flatnonzero(keep):
                t = int(t)
                children.append((nd, t, nd.greedy and t == g, float(cum[t]), float(row_lp[t])))
        # The greedy child first, then the most likely.
        children.sort(key=lambda c: (not c[2], -c[3]))
        grow = []
        for c in children:
            nd, t = c[0], c[1]
            if t == T.EOG:
                tree.found.append(Completion(np.array(nd.tokens + [t], np.int32),
                                             np.array(nd.lps + [c[4]], np.float32), greedy=c[2]))
            elif len(nd.tokens) + 1 >= cfg.max_new_tokens:
                st.dropped_length += 1
            elif len(grow) >= self.k:
                st.dropped_live += 1
            else:
                grow.append(c)
        # Rows: a parent's first child continues in the parent's row; a parent without children
        # frees its row; the other children copy their parent's row into a free one (after every
        # parent row is settled, so no copy reads a row already given to someone else).
        first = {}
        for c in grow:
            first.setdefault(id(c[0]), c)
        parents = {id(nd): nd for nd in nodes}
        for key, nd in parents.items():
            if key not in first:
                tree.free.append(nd.row)
        live = []
        for c in grow:
            nd, t, greedy, cum, lpt = c
            if first[id(nd)] is c:
                row = nd.row
            else:
                row = tree.free.pop()
                copy_rows(self.kv, torch.tensor([nd.row], device=self.device),
                          torch.tensor([row], device=self.device), nd.pos + 1)
                st.forks += 1
            live.append(_Node(tree, row, nd.pos + 1, nd.tokens + [t], nd.lps + [lpt], cum, greedy))
        tree.live = live

    def _finish(self, tree: _Tree) -> list:
        found = tree.found
        found.sort(key=lambda c: (not c.greedy, -c.logprob, c.tokens.tolist()))
        return found


def dfs(model, prompts: Sequence, adapter_ids: Optional[Sequence[int]] = None, lora=None,
        config: Optional[SearchConfig] = None, deadline: Optional[float] = None, max_rows: Optional[int] = None,
        stats: Optional[SearchStats] = None) -> list:
    """Every completion of probability >= ``config.min_prob`` for each prompt.

    model:       an :class:`arcfast.model.decoder.CausalLM` (any dtype/device; not modified).
    prompts:     compact token ids per prompt (int [P_i]), e.g. from
                 :func:`arcfast.samples.prompts.build_inference_prompts`.
    adapter_ids: per prompt, a row of ``lora`` (an :class:`arcfast.lora.multi.MultiLoRA`), -1 for the
                 base model (default: all -1).
    deadline:    ``time.monotonic()`` value; no step starts that would end past it at the
                 measured rate.
    max_rows:    cache rows (default 256 on CUDA, 64 on the CPU); trees run ``max_rows //
                 config.rows_per_tree`` at a time.
    Returns per prompt a list of :class:`Completion`: the greedy one first (when found), then by
    log-probability, highest first.
    """
    cfg = config or SearchConfig()
    ps, ids, _ = check_requests(prompts, adapter_ids, lora, T.VOCAB_SIZE, who="dfs: ")
    st = stats if stats is not None else SearchStats()
    return _Search(model, lora, cfg, max_rows, deadline, st).run(ps, ids)


__all__ = ["SEARCHES", "SearchConfig", "Completion", "SearchStats", "dfs"]
