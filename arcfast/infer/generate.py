"""Batched generation over many prompts and many LoRA adapters at once, with a static KV cache.

    gen = Generator(model, lora=multi_lora)                       # one per model; reuse it
    outs = gen.generate(prompts, adapter_ids)                     # list[Generation], input order
    outs[i].tokens, outs[i].logprobs                              # int32 [n], float32 [n]

Every prompt has its own adapter (``adapter_ids[i]``: a row of the :class:`arcfast.lora.multi.MultiLoRA`,
or -1 for the base model), and all of them decode in one batch.

How a call runs:

1. **Queue.** Prompts are sorted by length (longest first) and admitted into the cache's rows.
2. **Prefill.** Admitted prompts are run in micro-batches of at most ``prefill_tokens`` tokens,
   right-padded to the longest prompt of the micro-batch (similar lengths sit together after the
   sort, so little is padding). Padding sits after the real tokens, so causal attention never lets
   a real token see it; its keys and values land in cache slots that decoding overwrites before
   any query may read them. The prefill's LoRA is the trainer's :meth:`MultiLoRA.begin` step.
3. **Decode.** One token per row per step. Row ``b`` holds its token at position ``pos[b]`` (the
   cache slot equals the position), attends to slots ``<= pos[b]`` of its own row and writes its
   key and value at ``pos[b]``. Token choice, log-probability, the stop test and the bookkeeping
   all stay on the device, so the host only launches steps and reads the ``done`` flags every
   ``sync_every`` steps.
4. **Stop and compact.** A row is done after ``EOG`` (when ``stop_on_eog``) or ``max_new_tokens``.
   Done rows idle (masked) until the live rows drop into a smaller batch bucket; then finished
   outputs are copied out and the live rows are moved to the front of the cache (one gather), and
   the next steps run at the smaller size. Freed rows are refilled from the queue.
5. **Deadline.** Prefill micro-batches and decode chunks are timed as the call goes; with a
   ``deadline`` none is started that would end past it at the measured rate (a decode chunk runs
   fewer steps when only those fit), so the call returns by it also on a loaded machine. The rates
   are kept in :class:`GenerationStats` (and between calls) for a caller to plan with
   (:meth:`Generator.estimate_seconds`).

On CUDA each decode step is a CUDA graph, captured once per (batch bucket, attention span bucket,
LoRA mode, sampling settings) and replayed: the step is 800 to 2,000 small kernels for a 24-layer
model, by LoRA mode (counts below), which is where the 30-90 ms per step of the common stacks goes.
Graphs share one memory pool and read only static buffers (the cache, the row state,
compute-dtype copies of the adapters). ``cuda_graphs=False`` runs the very same step function
eagerly: that is the plain path the tests hold the graphs equal to, and the only path on the CPU.
Measured on one H100 (Qwen2.5-0.5B architecture, bf16, LoRA r=32, 96 prompts of ~1,500 tokens,
200 forced new tokens; python -m benchmarks -k generate), before the fused multi-adapter step
below: 6.5 ms per decode step and 10.2k generated tokens/s with one adapter, 10.9 ms and 7.2k with
16 adapters mixed, against 706 and 114 tokens/s for transformers ``generate`` + PEFT in the same
run. The weights and cache of such a step are read in ~1 ms, so the step is launch-bound.

Decode-time LoRA runs in one of several graph-safe modes chosen per step (merged, single,
grouped, segments, gather), fused across projections where several adapters share a batch: see
:mod:`arcfast.lora.decode`.

Log-probabilities are the log-softmax of the model's fp32 logits at temperature 1, also when
sampling. Sampling (``temperature > 0``, optional ``top_k``) uses Gumbel noise drawn from a hash of
(seed, the prompt's key, the token index, the vocabulary id), so a prompt's sample does not depend
on what else shares its batch, and graphs and eager agree.

Token ids in and out are the compact ones (prompts, generated tokens, ``EOG``), also on a
full-vocabulary model (``ModelConfig.token_ids``): its prompts and fed-back tokens are mapped to
its own ids by ``ModelConfig.model_ids`` (the mapping training and scoring use), each token is
chosen among the compact ids' columns of its logits, and its log-probability is the log-softmax
over the whole vocabulary, as :mod:`arcfast.infer.rescore` computes it.

:mod:`arcfast.infer.predict` wraps this for ARC: prompts under augmentations, strict decoding, the
augmentation undone, one :class:`arcfast.answers.vote.Prediction` per output.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Optional, Sequence

import numpy as np
import torch

from ..arc import vocab as T
from ..budget.clock import DEADLINE_SAFETY, DecodeRates, fits, how_many
from ..lora.decode import DecodeAdapters
from ..runtime import fast_path_of, out_of_memory, switch_off
from ..model.kv_cache import CacheDecode, CachePrefill
from ..model.decoder import FusedAddNormStep
from .decoding import (
    Generation, GenerationConfig, GenerationStats, LORA_MODES, PREFILL_PROBE_TOKENS, check_requests, choose_tokens,
)

log = logging.getLogger("arcfast.infer.generate")


# ----------------------------------------------------------------------------------------------
# The engine

def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class _CaptureFailed(RuntimeError):
    """A decode step that runs eagerly could not be captured as a CUDA graph."""


class Generator:
    """Batched multi-adapter generation for one model (and optionally one MultiLoRA).

    model:          an :class:`arcfast.model.decoder.CausalLM` (any dtype/device; not modified).
    lora:           an :class:`arcfast.lora.multi.MultiLoRA` of that model, or None (base model only).
                    Its current weights are read at every :meth:`generate` call.
    max_batch:      rows decoded at once (default: 256 on CUDA within ``kv_fraction`` of free
                    memory, 64 on the CPU).
    cuda_graphs:    capture decode steps as CUDA graphs (default: on CUDA).
    prefill_tokens: padded tokens per prefill micro-batch (default 32768 on CUDA, 4096 on the CPU).
    sync_every:     decode steps between two reads of the ``done`` flags (default 8 on CUDA, 1 on
                    the CPU, where a read costs nothing).
    lora_mode:      decode LoRA with several adapters: "auto" (grouped where available, else
                    gather), "grouped", "gather"; or "single" to refuse mixing.
    merge_single:   when every row of a decode batch uses the same adapter (or none), decode with it
                    merged into a copy of the projections, q/k/v and gate/up fused (mode "merged": no
                    LoRA kernels and fewer launches; costs one copy of the projection weights);
                    False keeps the model's own layers (modes "single" and "none").
    fuse_lora:      decode mixed adapters (modes "grouped" and "gather") with q/k/v and gate/up
                    fused and one LoRA delta per fused projection (:class:`arcfast.lora.decode._FusedRowLoRA`); False
                    runs the model's seven projections, each with its own delta (:class:`arcfast.lora.decode._RowLoRA`).
    kv_fraction:    at most this fraction of free CUDA memory goes to the KV cache.

    Buffers are allocated at the first call and grown when a later call needs longer rows; the
    captured graphs are kept between calls with the same sizes.
    """

    def __init__(self, model, lora=None, max_batch: Optional[int] = None, cuda_graphs: Optional[bool] = None,
                 prefill_tokens: Optional[int] = None, sync_every: Optional[int] = None,
                 lora_mode: str = "auto", kv_fraction: float = 0.5, merge_single: bool = True,
                 fuse_lora: bool = True):
        if lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode must be one of {LORA_MODES}, not {lora_mode!r}")
        if lora_mode == "segments" and not fuse_lora:
            raise ValueError("lora_mode='segments' runs on the fused adapter buffers: it needs fuse_lora=True")
        self.model = model
        self.lora = lora
        cfg = model.config
        self.cfg = cfg
        self.device = model.device
        # A full-vocabulary model reads and writes compact ids here as everywhere else: prompts
        # and the fed-back token are mapped to its own ids (ModelConfig.model_ids), tokens are
        # chosen among the grid ids' columns (ModelConfig.grid_columns; so also on a compact model
        # grown for the verify objective), log-probabilities are over its whole vocabulary (as the
        # scorer computes them).
        cols = cfg.grid_columns()   # a grown compact model too: its ids 16-19 are never chosen
        self.vocab_map = None if cols is None else torch.as_tensor(cols, dtype=torch.int64, device=self.device)
        self.dtype = model.dtype
        cuda = self.device.type == "cuda"
        self.cuda = cuda
        self.cuda_graphs = cuda if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs=True needs a model on a CUDA device")
        self.max_batch_req = max_batch
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.prefill_tokens = int(prefill_tokens or (32768 if cuda else 4096))
        self.sync_every = int(sync_every or (8 if cuda else 1))
        self.kv_fraction = kv_fraction
        self.s_block = 512 if cuda else 64  # attention-span bucket (graphs are keyed by it)
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.n_kv, self.head_dim = cfg.n_kv_heads, cfg.head_dim
        self.group = cfg.n_heads // cfg.n_kv_heads
        self.cap = 0
        self.s_alloc = 0
        self.max_new_alloc = 0
        self._graphs: dict = {}
        self._pool = None
        self.stats = GenerationStats()
        # Measured rates, kept between calls (see GenerationStats): the latest seconds per padded
        # prefill token, per decode step by batch bucket, and per graph capture.
        self.rates = DecodeRates()
        self.adapters = DecodeAdapters(model, lora, lora_mode=lora_mode, merge_single=merge_single,
                                       fuse_lora=fuse_lora)

    # -- buffers -----------------------------------------------------------------------------
    def _kv_row_bytes(self, s: int) -> int:
        return self.n_layers * 2 * self.n_kv * s * self.head_dim * torch.finfo(self.dtype).bits // 8

    def _ensure(self, s_need: int, max_new: int) -> None:
        s = _round_up(s_need, self.s_block)
        if s <= self.s_alloc and max_new <= self.max_new_alloc:
            return
        s = max(s, self.s_alloc)
        max_new = max(max_new, self.max_new_alloc)
        self._free()
        if self.max_batch_req is not None:
            cap = self.max_batch_req
        elif self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            cap = max(8, min(256, int(free * self.kv_fraction) // self._kv_row_bytes(s)))
        else:
            cap = 64
        dev = self.device
        self.cap, self.s_alloc, self.max_new_alloc = cap, s, max_new
        # Zeros, not empty: a masked slot gets weight 0, and 0 * NaN from stale memory is NaN.
        self.kv = torch.zeros(self.n_layers, 2, cap, self.n_kv, s, self.head_dim, device=dev, dtype=self.dtype)
        i64 = dict(device=dev, dtype=torch.int64)
        self.tok = torch.full((cap,), T.PAD, **i64)
        self.pos = torch.zeros(cap, **i64)
        self.ngen = torch.zeros(cap, **i64)
        self.keys = torch.zeros(cap, **i64)
        self.done = torch.ones(cap, device=dev, dtype=torch.bool)
        self.adapters.allocate(cap)
        self.rows = torch.arange(cap, **i64)
        self.span = torch.arange(s, **i64)
        # Column max_new is a sink for rows that are done (a write there is never read).
        self.out_tok = torch.zeros(cap, max_new + 1, device=dev, dtype=torch.int32)
        self.out_lp = torch.zeros(cap, max_new + 1, device=dev, dtype=torch.float32)
        self.max_new_t = torch.zeros((), **i64)
        self.stop_t = torch.zeros((), device=dev, dtype=torch.bool)

    def _free(self) -> None:
        self._graphs.clear()
        self._pool = None
        for name in ("kv", "out_tok", "out_lp"):
            if hasattr(self, name):
                delattr(self, name)
        if self.cuda:
            torch.cuda.empty_cache()

    def buckets(self) -> list[int]:
        """Batch sizes decode steps run at: 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x
        them, so at most a third of a step is padding) below the capacity, and the capacity."""
        out, b = [], 8
        while b < self.cap:
            out += [b] + ([b * 3 // 2] if b * 3 // 2 < self.cap else [])
            b *= 2
        return out + [self.cap]

    def _bucket(self, n: int) -> int:
        for b in self.buckets():
            if b >= n:
                return b
        return self.cap

    # -- the model, piece by piece -------------------------------------------------------------
    def _model_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Compact ids -> the model's own ids (the same tensor for a compact-vocabulary model)."""
        return ids if self.vocab_map is None else self.vocab_map[ids]

    def _choose(self, logits: torch.Tensor, keys, index, sampling: tuple, seed: int):
        """:func:`choose_tokens` in compact ids: on a full-vocabulary model the choice is among the
        compact ids' columns and its log-probability is under the whole vocabulary."""
        if self.vocab_map is None:
            return choose_tokens(logits, keys, index, sampling, seed)
        choice, _ = choose_tokens(logits[:, self.vocab_map], keys, index, sampling, seed)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return choice, logp.gather(1, self.vocab_map[choice][:, None])[:, 0]

    def _prefill_forward(self, ids: torch.Tensor, lens: torch.Tensor, r0: int, lora) -> torch.Tensor:
        """Run right-padded prompts ids int64 [R, L] (lengths ``lens`` int64 [R]) into cache rows
        r0..r0+R-1; returns the fp32 logits [R, V] at each prompt's last token."""
        m = self.model
        R = ids.shape[0]
        h = m(self._model_ids(ids), attention=CachePrefill(self.kv, r0), step=FusedAddNormStep(lora),
              compiled=False)
        last = h[torch.arange(R, device=ids.device), lens - 1]
        tokens = getattr(lora, "tokens", None)
        if tokens is None:
            return m.logits(last).float()
        return m.logits(last, tokens, tokens.adapter_ids.view(R, -1)[:, 0]).float()

    def _step(self, B: int, S: int, step, sampling: tuple, seed: int) -> None:
        """One decode step of rows 0..B-1 attending over cache slots 0..S-1; updates the row state
        and the output buffers in place (the body of a captured graph). ``step``: how the model's
        forward runs its projections (a :class:`_MergedLoRA`, a :class:`_FusedRowLoRA` or a
        :class:`arcfast.model.decoder.FusedAddNormStep` over a :class:`_RowLoRA`)."""
        m = self.model
        tok, pos, ngen, done = self.tok[:B], self.pos[:B], self.ngen[:B], self.done[:B]
        rows = self.rows[:B]
        tokens = self.adapters.token_step(B)
        h = m(self._model_ids(tok)[:, None], pos[:, None], CacheDecode(self.kv, pos, S, self.rows, self.span),
              step=step, compiled=False, tokens=tokens)                       # [B, 1, d]
        logits = m.logits(h[:, 0]) if tokens is None else m.logits(h[:, 0], tokens, self.adapters.row_adapter[:B])
        choice, lp = self._choose(logits, self.keys[:B], ngen, sampling, seed)
        active = ~done
        col = torch.where(active, ngen, self.out_tok.shape[1] - 1)
        self.out_tok[rows, col] = choice.to(torch.int32)
        self.out_lp[rows, col] = lp
        ngen_next = ngen + active.long()
        finished = active & (((choice == T.EOG) & self.stop_t) | (ngen_next >= self.max_new_t))
        self.ngen[:B] = ngen_next
        self.pos[:B] = pos + active.long()
        self.tok[:B] = torch.where(active, choice, tok)
        self.done[:B] = done | finished

    # -- graphs --------------------------------------------------------------------------------
    def _run_steps(self, n_steps: int, B: int, S: int, mode: str, sampling: tuple, seed: int) -> None:
        """``n_steps`` decode steps of rows 0..B-1 in ``mode``: replayed graphs, or eager. A fast
        path that raises (a graph capture, a fused or grouped LoRA step, a Triton kernel) is
        switched off for the run (:mod:`arcfast.runtime`) and the steps left run on the plain path;
        a failed step changes no row (its writes come last)."""
        lora = self.adapters.step(mode, B)
        done = 0
        while done < n_steps:
            try:
                if not self.cuda_graphs:
                    self._step(B, S, lora, sampling, seed)
                    done += 1
                    continue
                key = (B, S, mode, sampling, seed)
                g = self._graphs.get(key)
                if g is None:
                    g = self._capture(B, S, lora, sampling, seed)
                    self._graphs[key] = g
                g.replay()
                done += 1
            except Exception as e:
                name = None if out_of_memory(e) else self._failed_path(e, mode)
                if name is None or not switch_off(name, e):
                    raise
                if name == "cuda_graphs":
                    self.cuda_graphs = False
                    self._graphs.clear()
                else:
                    self.adapters.plain()
                    mode = "none" if self.lora is None else "gather"
                    lora = self.adapters.step(mode, B)

    def _failed_path(self, e: BaseException, mode: str) -> Optional[str]:
        """The fast path a decode step's exception belongs to (None: not a fast path's)."""
        if isinstance(e, _CaptureFailed):
            return "cuda_graphs"
        name = fast_path_of(e)
        if name is not None:
            return name
        if mode == "merged" or (mode in ("grouped", "gather", "segments") and self.adapters.fuse_lora):
            return "fused_decode"
        return "grouped_gemm" if mode == "grouped" else None

    def _capture(self, B, S, lora, sampling, seed):
        # Warm-up runs really step the rows: snapshot the row state and put it back afterwards.
        # (The cache slots and output columns they wrote are rewritten by the real steps.)
        # Timed, device synchronised, so a deadline can plan the next capture.
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        state = [t.clone() for t in (self.tok, self.pos, self.ngen, self.done)]
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step(B, S, lora, sampling, seed)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g, pool=self._pool):
                    self._step(B, S, lora, sampling, seed)
            except Exception as e:
                if out_of_memory(e):
                    raise
                raise _CaptureFailed(f"capturing a decode step: {type(e).__name__}: {e}") from e
        finally:
            for t, saved in zip((self.tok, self.pos, self.ngen, self.done), state):
                t.copy_(saved)
        torch.cuda.synchronize(self.device)
        self.rates.capture = time.perf_counter() - t0
        self.stats.graphs_captured += 1
        return g

    # -- measured rates ------------------------------------------------------------------------
    def estimate_seconds(self, n_prompts: int, prompt_tokens: int, new_tokens: int) -> Optional[float]:
        """Seconds a call would take at the measured rates: ``prompt_tokens`` of prefill and, per
        wave of at most the cache's rows, ``new_tokens`` decode steps at that wave's batch size
        (an upper bound when rows stop early on EOG; graph captures not included). None until
        both a prefill and a decode step have been measured."""
        if n_prompts <= 0:
            return 0.0
        if not self.cap:   # no call yet: nothing measured
            return None
        per_step = self.rates.step_seconds(self._bucket(min(n_prompts, self.cap)))
        if self.rates.prefill is None or per_step is None:
            return None
        waves = -(-n_prompts // self.cap)
        return prompt_tokens * self.rates.prefill + waves * new_tokens * per_step

    # -- the call ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence, adapter_ids: Optional[Sequence[int]] = None,
                 config: Optional[GenerationConfig] = None, keys: Optional[Sequence[int]] = None,
                 deadline: Optional[float] = None, **overrides) -> list[Generation]:
        """Generate for every prompt; results in input order.

        prompts:     sequence of 1-D int token-id arrays (compact ids; e.g. int32 from
                     ``arcfast.samples.prompts``), each non-empty.
        adapter_ids: int per prompt: a MultiLoRA row, or -1 for the base model (default all -1).
        config:      a :class:`GenerationConfig` (``overrides`` replace its fields).
        keys:        int per prompt naming its sampling noise (default: its index).
        deadline:    a ``time.monotonic()`` instant the call returns by, whatever the model does
                     or the machine's load. Each prefill micro-batch and each chunk of decode steps
                     is timed (:class:`GenerationStats` keeps the rates), and none is started that
                     would end past the deadline at the measured rate (times
                     ``DEADLINE_SAFETY``): a decode chunk that would cross it runs the steps that
                     fit, and when none fits, or a prefill micro-batch does not, the call ends.
                     Outputs finished by then are kept as they are; rows still in flight keep
                     the tokens they have, prompts not started get empty outputs (the decoder
                     reports both unterminated), and ``stats.cut_by_deadline`` counts them. The
                     first piece of work of a kind is unplanned until one is measured (rates are
                     kept between calls of one Generator); with a deadline each prefill
                     micro-batch synchronises the device to be timed. ``None`` (or a deadline
                     never reached) runs exactly the same steps as without one.
        """
        cfg = config or GenerationConfig()
        if overrides:
            cfg = GenerationConfig(**{**cfg.__dict__, **overrides})
        prompts, adapters, keys = check_requests(prompts, adapter_ids, self.lora, self.cfg.input_vocab, keys)
        n_req = len(prompts)
        self.stats = st = GenerationStats(prompts=n_req)
        if n_req == 0:
            return []
        lens = np.array([p.shape[0] for p in prompts], dtype=np.int64)
        st.prompt_tokens = int(lens.sum())
        max_new = cfg.max_new_tokens
        s_need = int(lens.max()) + max_new
        window = self.cfg.sliding_window
        if window is not None and s_need > window:
            raise ValueError(f"prompt of {int(lens.max())} tokens + {max_new} new exceeds the model's "
                             f"sliding window {window}, which this generator does not implement")
        self._ensure(s_need, max_new)
        slots = self.adapters.begin_call(adapters)
        self.max_new_t.fill_(max_new)
        self.stop_t.fill_(bool(cfg.stop_on_eog))
        sampling, seed = cfg.sampling, cfg.seed

        queue = deque(sorted(range(n_req), key=lambda i: -int(lens[i])))
        results: list[Optional[Generation]] = [None] * n_req
        row_req = np.full(self.cap, -1, dtype=np.int64)   # request held by each row
        done_h = np.ones(self.cap, dtype=bool)            # host view, refreshed at each sync
        pos_h = np.zeros(self.cap, dtype=np.int64)
        n = 0                                              # rows 0..n-1 in use
        refill_min = max(1, self.cap // 4)
        mode = None

        def sync():
            nonlocal done_h, pos_h
            both = torch.stack((self.done[:n].long(), self.pos[:n])).cpu().numpy()
            done_h = np.ones(self.cap, dtype=bool)
            done_h[:n] = both[0].astype(bool)
            pos_h = np.zeros(self.cap, dtype=np.int64)
            pos_h[:n] = both[1]

        admit = True          # False once the deadline leaves no time to start another prompt
        steady_s, steady_steps = 0.0, 0   # decode chunks that captured no graph (the rate's basis)

        def cut():
            # Stop every live row where it is; harvested below with the tokens it has.
            nonlocal admit
            admit = False
            st.cut_by_deadline += int((~done_h[:n]).sum())
            self.done[:n] = True
            sync()

        while (queue and admit) or n:
            if deadline is not None and time.monotonic() > deadline and (
                    (queue and admit) or not done_h[:n].all()):
                cut()
            n_alive = int((~done_h[:n]).sum())
            refill = bool(queue) and admit and (n_alive == 0 or self.cap - n_alive >= refill_min)
            shrink = n_alive < n and (n_alive == 0 or self._bucket(n_alive) < self._bucket(n))
            if refill or shrink:
                n = self._harvest_and_compact(n, done_h, pos_h, row_req, results)
                st.compactions += 1
                done_h[:] = True
                done_h[:n] = False
                pos_h[n:] = 0
                mode = None
            if refill:
                t0 = time.perf_counter()
                take = []
                while queue and n + len(take) < self.cap:
                    take.append(queue.popleft())
                placed, skipped, padded = self._prefill(n, take, prompts, lens, slots, keys, sampling, seed,
                                                        deadline)
                for q in skipped:   # no time left to start them: empty outputs
                    results[q] = Generation(np.zeros(0, np.int32), np.zeros(0, np.float32))
                st.cut_by_deadline += len(skipped)
                row_req[n:n + len(placed)] = placed
                n += len(placed)
                sync()
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                st.prefill_s += dt
                st.prefill_padded_tokens += padded
                if deadline is None and padded:
                    self.rates.record_prefill(dt / padded, int(lens[placed[0]]))
                mode = None
                continue
            if n == 0:
                continue
            t0 = time.perf_counter()
            B = self._bucket(n)
            if mode is None:
                self._pad_rows(n, B)
                mode = self.adapters.route(n, B, slots[row_req[:n]])
                self.stats.lora_modes[mode] = self.stats.lora_modes.get(mode, 0) + 1
                if deadline is not None and self.cuda:
                    torch.cuda.synchronize(self.device)   # the routing's copies stay out of the step rate
            steps = self.sync_every
            live_pos = pos_h[:n][~done_h[:n]]
            # The span is sized for a full chunk also when fewer steps run: same graph key.
            S = min(self.s_alloc, _round_up(int(live_pos.max()) + steps + 1, self.s_block))
            if deadline is not None:
                per_step = self.rates.step_seconds(B)
                if per_step is not None:
                    capture = 0.0
                    if self.cuda_graphs and (B, S, mode, sampling, seed) not in self._graphs:
                        capture = self.rates.capture or 0.0
                    fit = how_many(time.monotonic() + DEADLINE_SAFETY * capture, per_step, deadline)
                    if fit < 1:
                        cut()
                        st.decode_s += time.perf_counter() - t0
                        continue
                    steps = min(steps, fit)
            captured = st.graphs_captured
            t1 = time.perf_counter()
            self._run_steps(steps, B, S, mode, sampling, seed)
            st.decode_steps += steps
            st.row_steps += steps * B
            sync()
            t2 = time.perf_counter()
            st.decode_s += t2 - t0
            if st.graphs_captured == captured:
                self.rates.steps[B] = (t2 - t1) / steps
                steady_s += t2 - t1
                steady_steps += steps
        if queue:   # never started: the deadline closed admission
            st.cut_by_deadline += len(queue)
            empty = Generation(np.zeros(0, np.int32), np.zeros(0, np.float32))
            while queue:
                results[queue.popleft()] = empty
        st.prefill_s_per_token = (st.prefill_s / st.prefill_padded_tokens if st.prefill_padded_tokens
                                  else self.rates.prefill or 0.0)
        st.decode_s_per_step = steady_s / steady_steps if steady_steps else 0.0
        st.step_s_by_batch = dict(self.rates.steps)
        st.capture_s = self.rates.capture or 0.0
        st.generated_tokens = int(sum(r.n_tokens for r in results))
        return results

    def _pad_rows(self, n: int, B: int) -> None:
        # Rows n..B-1 run with the batch but hold nothing: done from the start, so they never
        # record a token; at position 0 they read and write slot 0 of a free row only.
        if B > n:
            self.done[n:B] = True
            self.pos[n:B] = 0
            self.tok[n:B] = T.PAD

    def _prefill(self, r0, take, prompts, lens, slots, keys, sampling, seed,
                 deadline: Optional[float] = None) -> tuple[list, list, int]:
        """Prefill prompts ``take`` (longest first) into rows r0.. in micro-batches; returns
        (the prompts prefilled, in row order; the prompts the deadline left out; padded tokens
        run). With a ``deadline``, each micro-batch is timed (device synchronised) and none is
        started that would end past it at the measured rate: a micro-batch that does not fit is
        cut to the prompts that do, and a prompt that does not fit alone is left out while the
        shorter ones after it are still tried."""
        dev = self.device
        i = padded = 0
        placed, skipped = [], []
        while i < len(take):
            # Longest first: the first prompt of a micro-batch sets its padded length.
            L = int(lens[take[i]])
            R = max(1, min(len(take) - i, self.prefill_tokens // max(L, 1)))
            if deadline is not None:
                if self.rates.prefill is None and L > PREFILL_PROBE_TOKENS:
                    self._probe_prefill(prompts[take[i]], r0 + len(placed), slots[take[i]])
                now = time.monotonic()
                if now >= deadline:
                    skipped += take[i:]
                    break
                per_prompt = self.rates.prefill_seconds(L)
                if per_prompt is not None and not fits(now, per_prompt * R, deadline):
                    R = how_many(now, per_prompt, deadline)
                    if R < 1:
                        skipped.append(take[i])
                        i += 1
                        continue
                t0 = time.perf_counter()
            group = take[i:i + R]
            row = r0 + len(placed)
            ids = np.full((R, L), T.PAD, dtype=np.int64)
            for j, q in enumerate(group):
                ids[j, :lens[q]] = prompts[q]
            lora = None
            if self.lora is not None:
                ad = np.array([slots[q] for q in group], dtype=np.int64)
                ad = np.where(ad == self.adapters.base, -1, ad)
                if (ad >= 0).any():
                    lora = self.lora.begin(np.repeat(ad[:, None], L, axis=1).astype(np.int32), self.dtype,
                                           training=False, base_tokens=True)
            ids_t = torch.from_numpy(ids).to(dev)
            lens_t = torch.from_numpy(lens[group]).to(dev)
            keys_t = torch.from_numpy(keys[group]).to(dev)
            logits = self._prefill_forward(ids_t, lens_t, row, lora)
            zero = torch.zeros(R, device=dev, dtype=torch.int64)
            choice, lp = self._choose(logits, keys_t, zero, sampling, seed)
            rows = slice(row, row + R)
            self.out_tok[rows, 0] = choice.to(torch.int32)
            self.out_lp[rows, 0] = lp
            self.tok[rows] = choice
            self.pos[rows] = lens_t
            self.ngen[rows] = 1
            self.keys[rows] = keys_t
            self.done[rows] = ((choice == T.EOG) & self.stop_t) | (self.max_new_t <= 1)
            if deadline is not None:
                if self.cuda:
                    torch.cuda.synchronize(self.device)
                self.rates.record_prefill((time.perf_counter() - t0) / (R * L), L)
            padded += R * L
            placed += group
            i += R
        return placed, skipped, padded

    def _probe_prefill(self, prompt, row: int, slot: int) -> None:
        """Measure the prefill rate on the first ``PREFILL_PROBE_TOKENS`` tokens of ``prompt``, into
        cache row ``row`` (free: the prompt's own prefill overwrites it), before a deadline-bound
        call's first micro-batch, which is then planned like the others instead of run blind."""
        for n in (16, PREFILL_PROBE_TOKENS):   # the first untimed: one-time costs are not the rate
            t0 = time.perf_counter()
            ids = torch.from_numpy(np.asarray(prompt[:n], np.int64)[None]).to(self.device)
            lens = torch.full((1,), ids.shape[1], dtype=torch.int64, device=self.device)
            lora = None
            if self.lora is not None and slot != self.adapters.base:
                lora = self.lora.begin(np.full((1, ids.shape[1]), slot, np.int32), self.dtype, training=False,
                                       base_tokens=True)
            self._prefill_forward(ids, lens, row, lora)
            if self.cuda:
                torch.cuda.synchronize(self.device)
        self.rates.record_prefill((time.perf_counter() - t0) / ids.shape[1], ids.shape[1])

    def _harvest_and_compact(self, n, done_h, pos_h, row_req, results) -> int:
        """Copy finished rows' outputs to ``results``, move live rows to the front (``row_req`` and
        ``pos_h`` follow them); returns their count."""
        fin = np.flatnonzero(done_h[:n])
        live = np.flatnonzero(~done_h[:n])
        if fin.size:
            idx = torch.from_numpy(fin).to(self.device)
            counts = self.ngen.index_select(0, idx).cpu().numpy()
            width = int(counts.max())
            toks = self.out_tok.index_select(0, idx)[:, :width].cpu().numpy()
            lps = self.out_lp.index_select(0, idx)[:, :width].cpu().numpy()
            for j, r in enumerate(fin):
                c = int(counts[j])
                results[int(row_req[r])] = Generation(tokens=toks[j, :c].copy(), logprobs=lps[j, :c].copy())
            row_req[fin] = -1
        if live.size and not np.array_equal(live, np.arange(live.size)):
            idx = torch.from_numpy(live).to(self.device)
            m = live.size
            # Slots below a row's position hold its context; the rest is written before it is read.
            span = int(pos_h[live].max())
            self.kv[:, :, :m, :, :span] = self.kv[:, :, :, :, :span].index_select(2, idx)
            for t in (self.tok, self.pos, self.ngen, self.done, self.keys, self.out_tok, self.out_lp):
                t[:m] = t.index_select(0, idx)
            row_req[:m] = row_req[live]
            row_req[m:n] = -1
            pos_h[:m] = pos_h[live]
        return int(live.size)


def generate(model, prompts: Sequence, adapter_ids: Optional[Sequence[int]] = None, lora=None,
             config: Optional[GenerationConfig] = None, keys: Optional[Sequence[int]] = None,
             **kwargs) -> list[Generation]:
    """One-shot :meth:`Generator.generate` (builds a Generator; reuse one to keep its CUDA graphs).
    ``kwargs`` go to :class:`GenerationConfig` when they name one of its fields, else to
    :class:`Generator`."""
    gen_fields = set(GenerationConfig.__dataclass_fields__)
    over = {k: v for k, v in kwargs.items() if k in gen_fields}
    eng = {k: v for k, v in kwargs.items() if k not in gen_fields}
    return Generator(model, lora=lora, **eng).generate(prompts, adapter_ids, config, keys=keys, **over)
