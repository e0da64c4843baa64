"""``--report-to tensorboard|wandb``: the run's metrics also written through each library's own
writer, as transformers' ``TrainingArguments.report_to`` does.

Every metric a run has already goes to its JSON-lines log (:class:`arcfast.files.JsonLog`).
:class:`TrackedLog` is that log, writing each line exactly as before, and mirroring the events that
hold metrics to the trackers (:func:`open_log` builds it from a run's config):

- ``step`` (ttft, eval: one per training step of a group) and ``train`` (train: every
  ``log_every`` steps): ``train/loss``, ``train/learning_rate``, ``train/tokens_per_s`` and one
  ``train/loss_<objective>`` per objective, at the training step; a ttft run's steps start again
  at 0 with every group, so its step axis is a count of the steps taken so far in this process;
- ``val`` (train): ``val/loss`` at its training step;
- ``task`` (ttft, eval: a task finished): ``task/final_loss``, ``task/steps``, ``task/seconds``
  and ``task/<metric>`` of its metrics (vote_1, vote_2, pass_n, ...) when known, the number of
  tasks finished so far as the step;
- ``end``: ``run/<field>`` of its numbers and ``run/<metric>`` of its ``metrics`` (eval's scores),
  at the last training step.

TensorBoard's event files go under ``<out>/tensorboard/``; W&B's run under ``<out>/wandb/``
(project "arcfast", the run's config), offline unless ``WANDB_MODE`` says otherwise or
``WANDB_API_KEY`` is set. Only rank 0 of several workers reports. A tracker that raises is logged
once and dropped: it never takes the run down.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

from ..files import JsonLog
from ..runtime import dist

log = logging.getLogger("arcfast.run.tracking")

TRACKERS = ("tensorboard", "wandb")
# Each tracker's Python package: what must be installed for it.
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def report_to_names(value: Union[str, tuple, list, None]) -> tuple:
    """The trackers of ``--report-to`` / ``report_to`` (a name or a sequence of them): a tuple of
    :data:`TRACKERS`, each once, in the order given; ``none`` alone (or nothing) is no tracker.
    ValueError for any other name, or ``none`` beside a tracker."""
    names = (value,) if isinstance(value, str) else tuple(value or ())
    for n in names:
        if n not in TRACKERS + ("none",):
            raise ValueError(f"report_to: {n!r} is not one of {', '.join(TRACKERS + ('none',))}")
    if "none" in names and len(set(names)) > 1:
        raise ValueError(f"report_to: 'none' reports nowhere; it cannot go with {', '.join(n for n in names if n != 'none')}")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def _installed(package: str) -> bool:
    if package in sys.modules:   # imported already, or blocked (None)
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def _not_installed(name: str) -> str:
    return f"--report-to {name}: the {_PACKAGES[name]} package is not installed (pip install 'arcfast[{name}]')"


def check_installed(names) -> None:
    """ValueError naming the first tracker of ``names`` whose package is not installed (found
    without importing it: a config check stays fast)."""
    for n in names:
        if not _installed(_PACKAGES[n]):
            raise ValueError(_not_installed(n))


def _number(v) -> Optional[float]:
    """``v`` as a float when it is a finite number (numpy's included; not a bool or a string), else None."""
    if v is None or isinstance(v, (bool, str, bytes)):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _scalars(prefix: str, values: dict) -> dict:
    """``{prefix + key: value}`` of the finite numbers of ``values``."""
    out = {}
    for k, v in (values or {}).items():
        x = _number(v)
        if x is not None:
            out[f"{prefix}{k}"] = x
    return out


# ----------------------------------------------------------------------------------------------
# the trackers: one per library, each writing {tag: value} at a step on one axis

class TensorBoard:
    """Event files under ``<out>/tensorboard/`` through ``torch.utils.tensorboard.SummaryWriter``."""
    name = "tensorboard"

    def __init__(self, out: Path, config: dict):
        try:
            # torch.utils.tensorboard imports the optional tensorboard package.
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(f"{_not_installed(self.name)}: {e}") from None
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"), flush_secs=30)

    def write(self, values: dict, step: int, axis: str) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)

    def summary(self, values: dict, step: int) -> None:
        self.write(values, step, "train")

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run in ``<out>/wandb/``, project "arcfast", with the run's config; each axis (train
    steps, tasks finished) its own step metric, so that both grow monotonically."""
    name = "wandb"
    # axis -> its step metric; the tags of an axis begin with its name (val/ is on the train axis)
    STEP = {"train": "train/step", "task": "task/finished"}

    def __init__(self, out: Path, config: dict):
        try:
            import wandb   # optional package
        except ImportError as e:
            raise ValueError(f"{_not_installed(self.name)}: {e}") from None
        kw = {}
        if not os.environ.get("WANDB_MODE"):   # the user's choice stands; else no network without a key
            kw["mode"] = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(project="arcfast", dir=str(out), name=Path(out).name, config=config, **kw)
        for axis, metric in self.STEP.items():
            self.run.define_metric(metric)
            self.run.define_metric(f"{axis}/*", step_metric=metric)
        self.run.define_metric("val/*", step_metric=self.STEP["train"])

    def write(self, values: dict, step: int, axis: str) -> None:
        self.run.log({**values, self.STEP[axis]: step})

    def summary(self, values: dict, step: int) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


_KINDS = {"tensorboard": TensorBoard, "wandb": WandB}


# ----------------------------------------------------------------------------------------------
# the log that mirrors its events to them

def _counts(path: Path) -> tuple:
    """(ttft steps, tasks finished) already in the log at ``path``: the axes' start for a run
    that appends to it (0, 0 for a new log)."""
    steps = tasks = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            steps += e.get("event") == "step"
            tasks += e.get("event") == "task" and not e.get("resumed")
    return steps, tasks


class TrackedLog(JsonLog):
    """The run's JSON-lines log (each line written as by :class:`JsonLog`), its metric events also
    written to ``trackers`` (see the module docstring for which, under which tags)."""

    def __init__(self, path: Path, trackers: list):
        # A resumed run appends to its log: its axes go on from where the log's earlier runs left them.
        self.step, self.tasks = _counts(Path(path))
        super().__init__(path)
        self.trackers = list(trackers)

    def __call__(self, **event) -> None:
        super().__call__(**event)
        if self.trackers:
            self._mirror(event)

    def _mirror(self, e: dict) -> None:
        kind = e.get("event")
        if kind in ("step", "train"):
            if kind == "step":
                self.step += 1
            else:
                self.step = int(e.get("step", self.step))
            values = _scalars("train/", {"loss": e.get("loss"), "learning_rate": e.get("lr"),
                                         "tokens_per_s": e.get("tokens_per_s")})
            values.update(_scalars("train/loss_", e.get("objective_loss") or {}))
            self._write(values, self.step, "train")
        elif kind == "val":
            self._write(_scalars("val/", {"loss": e.get("loss")}), int(e.get("step", self.step)), "train")
        elif kind == "task":
            if e.get("resumed"):   # finished by an earlier run of this directory, reported then
                return
            self.tasks += 1
            values = _scalars("task/", {k: e.get(k) for k in ("final_loss", "steps", "seconds")})
            values.update(_scalars("task/", e.get("metrics") or {}))
            self._write(values, self.tasks, "task")
        elif kind == "end":
            values = _scalars("run/", {k: v for k, v in e.items() if k not in ("event", "time", "metrics")})
            values.update(_scalars("run/", e.get("metrics") or {}))
            self._each("summary", values, self.step)

    def _write(self, values: dict, step: int, axis: str) -> None:
        if values:
            self._each("write", values, step, axis)

    def _each(self, method: str, *args) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:   # a tracker must never take the run down
                self._drop(t, e)

    def _drop(self, tracker, e: Exception) -> None:
        log.warning("--report-to %s: %s: %s; not reporting to it for the rest of the run",
                    tracker.name, type(e).__name__, e)
        self.trackers.remove(tracker)
        try:
            tracker.close()
        except Exception:
            pass

    def close(self) -> None:
        super().close()
        for t in list(self.trackers):
            try:
                t.close()
            except Exception as e:
                self._drop(t, e)
        self.trackers = []


def open_log(path: Union[str, Path], cfg) -> JsonLog:
    """The JSON-lines log of the run of ``cfg`` (a :class:`arcfast.run.config.RecipeConfig`) at
    ``path``, mirrored to its ``report_to`` trackers (under ``cfg.out``) on rank 0; the plain log
    where there are none. ValueError when a tracker's package cannot be imported."""
    names = report_to_names(cfg.report_to)
    if not names or dist()[0] != 0:
        return JsonLog(path)
    trackers = []
    for n in names:
        try:
            trackers.append(_KINDS[n](cfg.out_dir, asdict(cfg)))
        except ValueError:   # its package cannot be imported: refused, as a missing one is
            for t in trackers:
                t.close()
            raise
        except Exception as e:   # e.g. wandb.init failing: the run goes on without that tracker
            log.warning("--report-to %s could not start: %s: %s; the run goes on without it",
                        n, type(e).__name__, e)
    return TrackedLog(path, trackers)


__all__ = ["TRACKERS", "report_to_names", "check_installed", "TrackedLog", "open_log"]
