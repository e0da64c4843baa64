"""Time budgets: parse "11h"/"30m"/"90s", keep the deadline, and plan training steps to fit it.

The budget is a promise: a run given ``--budget 30m`` ends, everything written, before 30 minutes
have passed. :class:`Deadline` holds the clock; :class:`StepPlanner` turns measured step times
into a number of steps per group of tasks so that training, the time reserved for inference and
the safety margin all fit.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

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
        # 3% of the budget, at least 10 s and at most 5 min: the report and its plot take seconds.
        self.margin = min(300.0, max(10.0, 0.03 * self.budget)) if margin is None else float(margin)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left before the deadline less the safety margin (may be negative)."""
        return self.budget - self.margin - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def __repr__(self) -> str:
        return f"Deadline(budget={self.budget:.0f}s, elapsed={self.elapsed():.1f}s, margin={self.margin:.0f}s)"


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
      measured seconds per step (an exponential average of :meth:`record`;
      ``first_step_seconds`` before any measurement), capped at the recipe's ``max_steps``. The
      group's share is also a time limit (``share_slack`` times it, from when
      :meth:`steps_for_next_group` planned the group): :meth:`may_step` refuses a step past it,
      so a group whose steps were planned blind, or that slows down, leaves the later groups
      their time.

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
    _step_time: Optional[float] = field(default=None, repr=False)
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
        return self._step_time if self._step_time is not None else self.first_step_seconds

    @property
    def inference_per_task(self) -> Optional[float]:
        """Measured inference seconds per task (an exponential average), None before any."""
        return self._infer_per_task

    def record(self, seconds: float, steps: int = 1) -> None:
        """Tell the planner ``steps`` steps took ``seconds`` in all."""
        if steps <= 0:
            return
        per = seconds / steps
        self._step_time = per if self._step_time is None else 0.7 * self._step_time + 0.3 * per

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

    def may_step(self, reserve_after: float = 0.0) -> bool:
        """Whether one more training step of the current group still fits: before the deadline,
        with the inference of every group not yet predicted (this one included), the overhead of
        the later groups and ``reserve_after`` seconds kept back; and inside the group's time
        limit when :meth:`steps_for_next_group` set one."""
        st = self.step_time or 0.0
        if self._train_until is not None and self.deadline.clock() + st > self._train_until:
            return False
        keep = self.inference_reserve() + self.overhead_per_group * max(0, self.n_groups - 1) + reserve_after
        return self.deadline.remaining() - keep - st > 0

    def inference_seconds(self) -> float:
        """Seconds the current group's inference may take: the time left less what the later
        groups are owed (may be <= 0)."""
        return self.deadline.remaining() - self.reserve_after_current()

    def group_done(self) -> None:
        self.groups_done += 1
        self._train_until = None
        if self.groups:
            self.groups.pop(0)
