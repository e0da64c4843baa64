"""Training steps under a deadline: each step's cost planned from measured seconds per token by sample length, cut into micro-batches of whole samples, and a piece that would not fit never started."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional
from .clock import Deadline, Rate


class StepAbandoned(RuntimeError):
    """A training step stopped between its micro-batches because the rest of it would not end in
    time: no update was applied, the adapters are those of the last whole step."""

    def __init__(self, tokens_done: int, tokens: int, seconds: float, predicted: Optional[float], left: float):
        self.tokens_done, self.tokens, self.seconds = tokens_done, tokens, seconds
        self.predicted, self.left = predicted, left
        pred = f"{predicted:.1f} s" if predicted is not None else "unknown"
        super().__init__(f"step abandoned after {tokens_done} of {tokens} tokens ({seconds:.1f} s): the rest "
                         f"would take {pred}, {max(0.0, left):.1f} s left")


class SampleRates:
    """Seconds per trained token, by sample length: one :class:`Rate` per length class (powers of
    two from 256 tokens), since attention makes a token of a long sample dearer than one of a short
    sample, and not smoothly (the CPU's flash-attention backward in a 1.5M-parameter model: 0.85 s
    for a 4,096-token sample, 3.7 s for 5,593).

    A piece of work (one or more whole samples) is recorded under its longest sample's class. A
    class not yet measured is predicted from the nearest measured class below it, the per-token
    cost growing by sqrt(2) per doubling of length (cost ~ n^1.5, between the linear layers and the
    attention's n^2), with that class's first-measurement safety; from the nearest class above,
    unchanged. The first piece of a long class is thus planned, and measured before a second one.
    """

    BASE = 256

    def __init__(self, window: int = 5):
        self.window = window
        self.rates: dict = {}

    @classmethod
    def length_class(cls, n: int) -> int:
        return max(0, math.ceil(math.log2(max(int(n), 1) / cls.BASE)))

    @property
    def measured(self) -> bool:
        return any(r.per_unit is not None for r in self.rates.values())

    def record(self, seconds: float, lengths) -> None:
        lengths = [int(n) for n in lengths]
        if not lengths:
            return
        c = self.length_class(max(lengths))
        self.rates.setdefault(c, Rate(self.window)).record(seconds, sum(lengths))

    def per_token(self, n: int) -> Optional[tuple]:
        """(seconds per token, safety) for a sample of ``n`` tokens; None before any measurement."""
        c = self.length_class(n)
        known = {k: r for k, r in self.rates.items() if r.per_unit is not None}
        if c in known:
            return known[c].per_unit, known[c].safety
        below = [k for k in known if k < c]
        if below:
            k = max(below)
            return known[k].per_unit * math.sqrt(2.0) ** (c - k), known[k].first_safety * known[k].safety
        above = [k for k in known if k > c]
        if above:
            k = min(above)
            return known[k].per_unit, known[k].safety
        return None

    def seconds(self, lengths) -> Optional[float]:
        """Predicted seconds of samples of ``lengths`` tokens, safety included (None unmeasured)."""
        total = 0.0
        for n in lengths:
            got = self.per_token(n)
            if got is None:
                return None
            total += got[0] * got[1] * int(n)
        return total

    @property
    def slowest(self) -> Optional[float]:
        """The highest measured seconds per token of any class (None before any)."""
        per = [r.per_unit for r in self.rates.values() if r.per_unit is not None]
        return max(per) if per else None


class StepGate:
    """Lets a training step through in micro-batches while its rest still ends before ``stop_at``
    (a ``clock`` instant) at the measured ``rates`` (:class:`SampleRates`).

    A micro-batch holds consecutive whole samples up to ``piece_seconds`` of predicted work (one
    sample at least); while nothing was measured, the first sample of the step is measured first
    on a probe of ``calibration_tokens`` of it (:meth:`pieces_of`), and its rate sizes the rest.
    Before each piece :meth:`admit` is asked with the samples of the whole rest of the step, and
    each finished piece is recorded. A step refused part way is abandoned whole
    (:class:`StepAbandoned`).
    """

    def __init__(self, stop_at: float, rates: SampleRates, piece_seconds: float = 2.0, calibration_tokens: int = 512,
                 clock=time.monotonic):
        self.stop_at, self.rates, self.clock = stop_at, rates, clock
        self.piece_seconds, self.calibration_tokens = float(piece_seconds), int(calibration_tokens)
        self.pieces = 0          # micro-batches run through this gate
        self.seconds = 0.0       # their time, probes included
        self.warmup_tokens = min(32, self.calibration_tokens)

    def left(self) -> float:
        return self.stop_at - self.clock()

    def admit(self, lengths) -> bool:
        """Whether samples of ``lengths`` tokens end before ``stop_at`` (unmeasured: whether
        ``stop_at`` has not passed; :meth:`pieces_of` measures before it asks)."""
        left = self.left()
        need = self.rates.seconds(lengths)
        return left > 0 and (need is None or need <= left)

    def record(self, seconds: float, lengths) -> None:
        self.rates.record(seconds, lengths)
        self.pieces += 1
        self.seconds += seconds

    def pieces_of(self, batch, probe=None, sync=None):
        """The micro-batches of ``batch`` (an :class:`arcfast.samples.batch.PackedBatch`) this gate admits,
        as batches of consecutive whole samples, for the caller to run one by one: each is timed
        from when it is handed out until the caller asks for the next (``sync()``, when given, is
        called first: a device's queued work belongs to the piece). Raises :class:`StepAbandoned`
        before a piece when the rest of the step does not fit.

        Calibration: while nothing is measured and the first sample is longer than
        ``calibration_tokens``, ``probe(prefix)`` (a forward and backward whose gradient the caller
        drops) is run on a few of its tokens (a warm-up, untimed), then timed on its first
        ``calibration_tokens``: a step whose first sample alone would outlast the time left is then
        refused before it starts, not found out after."""
        lengths = [int(n) for n in batch.sample_lengths()]
        n, i, done, t_step = len(lengths), 0, 0, time.perf_counter()
        if probe is not None and not self.rates.measured and n and lengths[0] > self.calibration_tokens:
            first = batch.samples(0, 1)
            # Untimed first: a process's first forward and backward pays one-time costs (kernel
            # selection, allocations) that are not the rate.
            probe(first.prefix(self.warmup_tokens))
            if sync is not None:
                sync()
            t = time.perf_counter()
            probe(first.prefix(self.calibration_tokens))
            if sync is not None:
                sync()
            dt = time.perf_counter() - t
            self.rates.record(dt, [self.calibration_tokens])
            self.seconds += dt

        def fits(ls) -> bool:   # a piece of ``piece_seconds`` (unmeasured: of calibration_tokens)
            sec = self.rates.seconds(ls)
            return sum(ls) <= self.calibration_tokens if sec is None else sec <= self.piece_seconds

        while i < n:
            j = i + 1
            while j < n and fits(lengths[i:j + 1]):
                j += 1
            if not self.admit(lengths[i:]):
                raise StepAbandoned(done, sum(lengths), time.perf_counter() - t_step,
                                    self.rates.seconds(lengths[i:]), self.left())
            t = time.perf_counter()
            yield batch.samples(i, j)
            if sync is not None:
                sync()
            self.record(time.perf_counter() - t, lengths[i:j])
            done += sum(lengths[i:j])
            i = j


@dataclass
class StepPlanner:
    """Plans how many optimizer steps each group of tasks gets so that the run fits its deadline.

    Tasks are trained in groups (one packed multi-adapter batch per step trains every task of the
    group), then predicted. The planner owns every reservation, and recomputes each from the
    groups still to run whenever it is asked, so a change of plan (:meth:`plan`, e.g. a group
    split in halves after running out of memory) changes them all at once:

    - **inference**: time kept for predicting every task not yet predicted. Before any inference
      was measured, ``inference_share`` of the time left when the planner was made, spread over
      the tasks then planned (a fixed number of seconds per task: it does not shrink while the
      first group trains); after :meth:`record_inference`, ``inference_safety`` times the
      measured seconds per task;
    - **overhead**: ``overhead_per_group`` seconds per group still to run (loading, saving);
    - **training**: what is left, divided evenly over the groups still to train, in steps of the
      measured seconds per step (a recent-window :class:`Rate` of :meth:`record`;
      ``first_step_seconds`` before any measurement), capped at the recipe's ``max_steps``. The
      group's share is also a time limit (``share_slack`` times it, from when
      :meth:`steps_for_next_group` planned the group): :meth:`may_step` refuses a step past it,
      so a group whose steps were planned blind, or that slows down, leaves the later groups
      their time.

    Steps are admitted one by one: :meth:`may_step` refuses one whose predicted time (from its
    samples' lengths at the measured :attr:`sample_rates` when given, else the step rate, with the
    rates' safety factors) does not fit, and :meth:`gate` hands a step the :class:`StepGate` that
    cuts it into micro-batches checked against the same limit (and measures ``sample_rates``).

    ``groups`` lists the number of tasks of each group not yet finished, in run order; the first
    is the group in progress once :meth:`steps_for_next_group` has been asked for it.
    """

    deadline: Deadline
    max_steps: int
    groups: list = field(default_factory=lambda: [1])
    inference_share: float = 0.0
    inference_safety: float = 1.25
    first_step_seconds: Optional[float] = None
    overhead_per_group: float = 0.0
    groups_done: int = 0
    share_slack: float = 1.1
    steps_rate: Rate = field(default_factory=Rate, repr=False)    # seconds per step
    overhead_rate: Rate = field(default_factory=Rate, repr=False)  # seconds per step outside its gate
    sample_rates: SampleRates = field(default_factory=SampleRates, repr=False)   # seconds per token, by length
    _infer_per_task: Optional[float] = field(default=None, repr=False)
    _share_per_task: float = field(default=0.0, repr=False)
    _train_until: Optional[float] = field(default=None, repr=False)

    def __post_init__(self):
        self.plan(self.groups)
        self._share_per_task = self.inference_share * max(0.0, self.deadline.remaining()) / max(1, sum(self.groups))

    def plan(self, groups) -> None:
        """Replace the groups still to run (tasks per group, in order, the current one first)."""
        groups = [int(g) for g in groups]
        if any(g < 1 for g in groups):
            raise ValueError(f"every group needs at least one task, got {groups}")
        self.groups = groups

    @property
    def n_groups(self) -> int:
        """Groups not yet finished."""
        return len(self.groups)

    @property
    def step_time(self) -> Optional[float]:
        """Measured seconds per step (``first_step_seconds`` before any measurement)."""
        per = self.steps_rate.per_unit
        return per if per is not None else self.first_step_seconds

    def step_seconds(self, lengths=None) -> Optional[float]:
        """Predicted seconds of the next step, safety included: of samples of ``lengths`` tokens
        at the measured :attr:`sample_rates` when both are known, else at the seconds per step."""
        if lengths is not None and self.sample_rates.measured:
            # The samples' work, and what a step does besides (its batch, the optimizer, the log).
            return self.sample_rates.seconds(lengths) + (self.overhead_rate.per_unit or 0.0)
        if self.steps_rate.per_unit is not None:
            return self.steps_rate.seconds(1)
        return self.first_step_seconds

    @property
    def inference_per_task(self) -> Optional[float]:
        """Measured inference seconds per task (an exponential average), None before any."""
        return self._infer_per_task

    def record(self, seconds: float, steps: int = 1, gated: Optional[float] = None) -> None:
        """Tell the planner ``steps`` steps took ``seconds`` in all, ``gated`` of them inside their
        :meth:`gate` (which measured their samples there: the rest is the steps' overhead)."""
        self.steps_rate.record(seconds, steps)
        if gated is not None:
            self.overhead_rate.record(max(0.0, seconds - gated), steps)

    def record_inference(self, seconds: float, tasks: int) -> None:
        """Tell the planner predicting ``tasks`` tasks took ``seconds``."""
        if tasks <= 0:
            return
        per = seconds / tasks
        # The larger of the last measurement and the average: a slower machine shows at once.
        self._infer_per_task = per if self._infer_per_task is None else max(per, 0.7 * self._infer_per_task + 0.3 * per)

    def record_group_overhead(self, seconds: float) -> None:
        """Per-group time that is not training steps nor inference (loading, saving)."""
        self.overhead_per_group = max(self.overhead_per_group * 0.7 + 0.3 * seconds, 0.0) \
            if self.overhead_per_group else seconds

    def inference_reserve(self, include_current: bool = True) -> float:
        """Seconds kept for the inference of the groups still to run (``include_current=False``:
        of the groups after the current one)."""
        tasks = sum(self.groups if include_current else self.groups[1:])
        if tasks == 0:
            return 0.0
        if self._infer_per_task is not None:
            return self.inference_safety * self._infer_per_task * tasks
        return self._share_per_task * tasks

    def reserve_after_current(self) -> float:
        """Everything the groups after the current one are owed: their inference and overhead."""
        return self.inference_reserve(include_current=False) + self.overhead_per_group * max(0, self.n_groups - 1)

    def steps_for_next_group(self) -> int:
        """Steps for the group about to train (the first of ``groups``); also starts its time
        limit (see the class docstring)."""
        left_groups = max(1, self.n_groups)
        time_left = self.deadline.remaining() - self.inference_reserve() - left_groups * self.overhead_per_group
        share = time_left / left_groups
        self._train_until = self.deadline.clock() + self.share_slack * max(0.0, share)
        if time_left <= 0:
            return 0
        if self.step_time is None:
            return self.max_steps
        steps = int(share / max(self.step_time, 1e-9))
        return max(0, min(self.max_steps, steps))

    def train_stop(self, reserve_after: float = 0.0) -> float:
        """The ``deadline.clock`` instant the current group's training must end by: before the
        deadline, with the inference of every group not yet predicted (this one included), the
        overhead of the later groups and ``reserve_after`` seconds kept back; and inside the
        group's time limit when :meth:`steps_for_next_group` set one."""
        keep = self.inference_reserve() + self.overhead_per_group * max(0, self.n_groups - 1) + reserve_after
        stop = self.deadline.clock() + self.deadline.remaining() - keep
        return min(stop, self._train_until) if self._train_until is not None else stop

    def may_step(self, reserve_after: float = 0.0, lengths=None) -> bool:
        """Whether one more training step of the current group (of samples of ``lengths`` tokens,
        when known) ends by :meth:`train_stop` at its predicted time (:meth:`step_seconds`; 0 before
        any measurement: a first step runs through a :meth:`gate`, which measures it small first)."""
        st = self.step_seconds(lengths) or 0.0
        return self.deadline.clock() + st <= self.train_stop(reserve_after)

    def gate(self, reserve_after: float = 0.0, piece_seconds: Optional[float] = None) -> StepGate:
        """A :class:`StepGate` for the next step: micro-batches while it still ends by
        :meth:`train_stop`, at :attr:`sample_rates`. A piece is planned at ``piece_seconds``
        (default: a quarter of the deadline's margin, between 0.25 s and 30 s), so a piece that
        runs slower than planned overruns by a fraction of the margin at most."""
        if piece_seconds is None:
            piece_seconds = min(30.0, max(0.25, self.deadline.margin / 4))
        return StepGate(self.train_stop(reserve_after), self.sample_rates, piece_seconds=piece_seconds,
                        clock=self.deadline.clock)

    def inference_seconds(self) -> float:
        """Seconds the current group's inference may take: the time left less what the later
        groups are owed (may be <= 0)."""
        return self.deadline.remaining() - self.reserve_after_current()

    def group_done(self) -> None:
        self.groups_done += 1
        self._train_until = None
        if self.groups:
            self.groups.pop(0)
