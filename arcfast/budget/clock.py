"""Time budgets: parse "11h"/"30m"/"90s", keep the deadline, and plan training steps to fit it.

The budget is a promise: a run given ``--budget 30m`` ends, everything written, before 30 minutes
have passed. :class:`Deadline` holds the clock; :class:`arcfast.budget.steps.StepPlanner` turns measured step times
into a number of steps per group of tasks so that training, the time reserved for inference and
the safety margin all fit.
"""
from __future__ import annotations

import math
import os
import re
import time
from typing import Optional

# Work is started before a deadline only when it ends by then at its measured rate times this
# (generation's prefill and decode chunks, scoring and verification batches, the DFS's steps).
DEADLINE_SAFETY = 1.1



def fits(now: float, seconds: float, deadline: float) -> bool:
    """Whether work predicted (at a measured rate) to take ``seconds``, started at ``now``, ends by
    ``deadline`` with the safety factor: the one question every stage asks before it starts."""
    return now + DEADLINE_SAFETY * seconds <= deadline


def how_many(now: float, each: float, deadline: float) -> int:
    """How many pieces of work of ``each`` seconds fit between ``now`` and ``deadline`` (safety
    factor included); 0 when none does."""
    left = deadline - now
    return int(left // (DEADLINE_SAFETY * each)) if left > 0 else 0


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|hr|min|m|sec|s)?", re.IGNORECASE)


def parse_duration(text) -> float:
    """Seconds in a duration such as ``"11h"``, ``"1h30m"``, ``"90s"``, ``"2.5m"`` or ``"600"``.

    A bare number is seconds. Raises ``ValueError`` naming the text when it does not parse or is
    not positive.
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(s):
            m = _PART.match(s, pos)
            if not m or m.end() == pos:
                raise ValueError(f"cannot parse duration {text!r} (expected e.g. 11h, 30m, 1h30m, 90s)")
            seconds += float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
            pos = m.end()
        if not s:
            raise ValueError("empty duration")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def process_start(clock=time.monotonic) -> float:
    """The instant this process started, on ``clock`` (``time.monotonic``): a budget counts from
    there, interpreter start-up and imports included. Read from ``/proc/self/stat`` (Linux; its
    start time is on the boot-time clock, in clock ticks); elsewhere, or when it cannot be read,
    the current instant."""
    now = clock()
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: count from its last ')'.
        start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0.0 <= age < 86400.0 * 365 else now


def default_margin(budget: float) -> float:
    """The safety margin of a ``budget`` when none is given: 3% of it, at least 10 s and at most
    5 min (the report and its plot take seconds)."""
    return min(300.0, max(10.0, 0.03 * float(budget)))


class Deadline:
    """A wall-clock deadline ``budget`` seconds after ``start`` (``time.monotonic`` by default).

    ``margin`` is kept back from every answer (``remaining()`` already excludes it), so work
    planned against ``remaining()`` leaves time to write results.
    """

    def __init__(self, budget: float, margin: Optional[float] = None, start: Optional[float] = None,
                 clock=time.monotonic):
        self.clock = clock
        self.start = clock() if start is None else start
        self.budget = float(budget)
        self.margin = default_margin(self.budget) if margin is None else float(margin)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left before the deadline less the safety margin (may be negative)."""
        return self.budget - self.margin - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def __repr__(self) -> str:
        return f"Deadline(budget={self.budget:.0f}s, elapsed={self.elapsed():.1f}s, margin={self.margin:.0f}s)"


class Rate:
    """Seconds per unit of work (a training token, a step), measured, following the machine.

    The estimate is the larger of the last measurement and the mean over the last ``window``
    ones: a machine that slows down (another process starts computing) shows at the next
    measurement, one that speeds up within ``window`` of them. A run-long mean would take the
    whole run to notice either.

    :meth:`seconds` predicts a piece of work with a safety factor that grows with how much the
    recent measurements disagree: ``1 + 2 * (their coefficient of variation)``, between 1 and
    ``max_safety``; ``first_safety`` while fewer than two were made.
    """

    def __init__(self, window: int = 5, first_safety: float = 1.25, max_safety: float = 2.0):
        self.window, self.first_safety, self.max_safety = int(window), float(first_safety), float(max_safety)
        self._seen: list = []   # (seconds, units) of the recent measurements, oldest first

    def record(self, seconds: float, units: float) -> None:
        if units <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        self._seen = (self._seen + [(float(seconds), float(units))])[-self.window:]

    @property
    def per_unit(self) -> Optional[float]:
        """Seconds per unit (None before any measurement)."""
        if not self._seen:
            return None
        last = self._seen[-1][0] / self._seen[-1][1]
        mean = sum(s for s, _ in self._seen) / sum(u for _, u in self._seen)
        return max(last, mean)

    @property
    def safety(self) -> float:
        if len(self._seen) < 2:
            return self.first_safety
        per = [s / u for s, u in self._seen]
        mean = sum(per) / len(per)
        cv = math.sqrt(sum((p - mean) ** 2 for p in per) / len(per)) / mean if mean > 0 else 0.0
        return min(self.max_safety, 1.0 + 2.0 * cv)

    def seconds(self, units: float) -> Optional[float]:
        """Predicted seconds of ``units`` units, safety included (None before any measurement)."""
        per = self.per_unit
        return None if per is None else per * units * self.safety

    def __repr__(self) -> str:
        per = self.per_unit
        return f"Rate({'unmeasured' if per is None else f'{per:.3g} s/unit'}, safety {self.safety:.2f})"


def forward_seconds(s_per_token: float, measured_len: Optional[int], n: int) -> float:
    """Predicted seconds of a forward over a sequence of ``n`` tokens (a prefill) at
    ``s_per_token``, measured on sequences of ``measured_len`` tokens (None: on ``n``): its
    per-token cost grown by sqrt(2) per doubling of length beyond the measured one (attention: a
    long sequence's token costs more than a short one's), never shrunk below it."""
    return s_per_token * max(1.0, math.sqrt(n / max(1, measured_len or n))) * n


class InferenceRates:
    """What a run's inference measured, kept for the groups after: seconds per scored token (the
    last re-scoring call's; verification plans with it too), and the most re-scoring and
    verification took per task of a group, which the next group's generation leaves time for."""

    def __init__(self):
        self.score_s_per_token = 0.0
        self.rescore_s_per_task = 0.0
        self.verify_s_per_task = 0.0

    def scoring_rate(self, prefill_s_per_token: float = 0.0) -> Optional[float]:
        """Seconds per scored token to plan with: the last measured, else the generator's prefill
        rate (a scoring forward is a prefill), else None (unplanned)."""
        return self.score_s_per_token or prefill_s_per_token or None

    def after_generation(self, n_tasks: int, rescore: bool, verify: bool) -> float:
        """Seconds re-scoring and verification of ``n_tasks`` tasks are expected to take."""
        return ((self.rescore_s_per_task if rescore else 0.0) + (self.verify_s_per_task if verify else 0.0)) * n_tasks

    def record_rescore(self, seconds: float, n_tasks: int, s_per_token: float) -> None:
        if s_per_token > 0:
            self.score_s_per_token = s_per_token
        self.rescore_s_per_task = max(self.rescore_s_per_task, seconds / n_tasks)

    def record_verify(self, seconds: float, n_tasks: int) -> None:
        self.verify_s_per_task = max(self.verify_s_per_task, seconds / n_tasks)


class DecodeRates:
    """A generator's measured rates, kept between its calls: seconds per prefill token (and the
    padded length it was measured on), per decode step by batch bucket, and per graph capture."""

    def __init__(self):
        self.prefill: Optional[float] = None
        self.prefill_len: Optional[int] = None
        self.steps: dict = {}
        self.capture: Optional[float] = None

    def record_prefill(self, s_per_token: float, length: int) -> None:
        self.prefill, self.prefill_len = s_per_token, int(length)

    def prime(self, prefill_s_per_token: Optional[float]) -> None:
        """Plan the first prefill from ``prefill_s_per_token`` (e.g. a training step's seconds per
        token, which a forward alone never exceeds) until a prefill is measured."""
        if self.prefill is None and prefill_s_per_token:
            self.prefill = float(prefill_s_per_token)

    def prefill_seconds(self, L: int) -> Optional[float]:
        """Predicted seconds to prefill one prompt padded to ``L`` tokens (:func:`forward_seconds`);
        None before any measurement."""
        if self.prefill is None:
            return None
        return forward_seconds(self.prefill, self.prefill_len, L)

    def step_seconds(self, B: int) -> Optional[float]:
        """Estimated seconds of one decode step at batch bucket ``B``: the latest measurement at
        that size, else at the next larger measured size (a larger batch is not faster), else the
        largest measured size scaled by ``B`` over it; None before any measurement."""
        r = self.steps
        if B in r:
            return r[B]
        larger = [b for b in r if b > B]
        if larger:
            return r[min(larger)]
        if r:
            b = max(r)
            return r[b] * B / b
        return None
