"""Where a run writes: the layout of ``--out``, and file names made from task ids.

A task id comes from an input file, so it is untrusted: ``../../x``, ``/abs/x``, ``.``, a NUL byte
or 300 characters are all ids a JSON file can hold. No path is ever built from a raw id. Each
per-task file or directory is named by :func:`task_filename`, an encoding that is

- **safe**: the name is one path component of ``[A-Za-z0-9._%~-]`` only, never ``.`` or ``..``,
  never starting with ``.`` (so never hidden and never one of the run's own temporary files),
  at most :data:`MAX_NAME` characters (a file system allows 255 bytes; ``.json`` and the
  temporary-file affixes of :func:`arcfast.files.atomic_write` must still fit);
- **unique**: different ids give different names (percent-encoding is injective; an id too long
  to encode in full gets a prefix of its encoding plus ``~`` and a SHA-256 digest of the id, and
  ``~`` never appears in a fully encoded name);
- **reversible**: :func:`task_id_from_filename` gives the id back from any name that is not a
  digest name; every per-task file also holds its id inside it (``task_id`` in
  ``tasks/<name>.json``, ``task`` in the adapter's metadata), which is what readers trust.

Ordinary ARC ids (``00576224``, ``re_arc.3``, ``seed-12``) are their own names.

The layout under ``--out``::

    submission.json      the Kaggle submission (complete from the first second of the run)
    run.json             the run summary; report.json, report.md, report.png; log.jsonl
    tasks/<name>.json    one task's result (arcfast.run.records.TaskRun), written when the task is finished
    adapters/<name>/     one task's adapter, PEFT format
    parts/rank<k>.json   under torchrun: rank k's answers
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Optional, Union

from ..arc.task import id_bytes
from ..files import fresh_dir

MAX_NAME = 160
_DIGEST = 16                      # hex characters of SHA-256 kept in a digest name
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def task_filename(task_id: str) -> str:
    """A safe, unique file name for ``task_id`` (see the module docstring).

    Bytes outside ``[A-Za-z0-9_.-]`` are written ``%XX`` (UTF-8, upper-case hex), as is a leading
    ``.``; the empty id is ``%``. Longer than :data:`MAX_NAME`: the first characters of that
    encoding, ``~``, and 16 hex digits of the id's SHA-256.
    """
    if not isinstance(task_id, str):
        raise TypeError(f"a task id is a str, not {type(task_id).__name__}")
    raw = id_bytes(task_id)
    if not raw:
        return "%"
    out = []
    for i, b in enumerate(raw):
        out.append(chr(b) if b in _SAFE and not (i == 0 and b == 0x2E) else f"%{b:02X}")
    name = "".join(out)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST]
    head = name[:MAX_NAME - _DIGEST - 1]
    head = head[:head.rfind("%")] if "%" in head[-2:] else head   # never half an escape
    return f"{head}~{digest}"


def task_id_from_filename(name: str) -> Optional[str]:
    """The task id whose :func:`task_filename` is ``name``, or None when ``name`` is a digest name
    (its id is read from inside the file) or is not such a name at all."""
    if name == "%":
        return ""
    if "~" in name or not name or any(ord(c) >= 128 for c in name):
        return None
    try:
        raw = bytes(int(m, 16) if len(m) == 2 else ord(m) for m in _tokens(name))
        task_id = raw.decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeDecodeError):
        return None
    return task_id if task_filename(task_id) == name else None


def _tokens(name: str):
    i = 0
    while i < len(name):
        if name[i] == "%":
            m = _ESCAPE.match(name, i)
            if not m:
                raise ValueError(name)
            yield m.group(1)
            i += 3
        else:
            yield name[i]
            i += 1


class OutDir:
    """The paths of one run's output directory; every per-task path is checked to lie inside it."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    def _inside(self, path: Path) -> Path:
        # task_filename() already makes this true; the check keeps it true whatever changes later.
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root or real == root:
            raise ValueError(f"{path}: outside the output directory {self.root}")
        return path

    @property
    def submission(self) -> Path:
        return self.root / "submission.json"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    def task_file(self, task_id: str) -> Path:
        """``tasks/<name>.json``: the result of one task."""
        return self._inside(self.tasks_dir / f"{task_filename(task_id)}.json")

    def adapter_dir(self, task_id: str) -> Path:
        """``adapters/<name>/``: the adapter of one task."""
        return self._inside(self.adapters_dir / task_filename(task_id))

    def part(self, rank: int) -> Path:
        return self.root / "parts" / f"rank{int(rank)}.json"

    def remove_stale_temporaries(self, older_than: Optional[float] = None) -> list[Path]:
        """Delete what an interrupted atomic write left behind: temporary files (``.<name>.*.tmp``)
        beside the run's files, and hidden directories under ``adapters/`` (a per-task name never
        starts with ``.``, so each is an adapter half written or half replaced). Only entries last
        modified before the ``time.time()`` instant ``older_than`` when it is given. Returns what
        was removed."""
        def stale(p: Path) -> bool:
            try:
                return older_than is None or p.lstat().st_mtime < older_than
            except OSError:
                return False

        removed = []
        for d in (self.root, self.tasks_dir, self.root / "parts"):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    if p.is_file() and not p.is_symlink() and stale(p):
                        try:
                            p.unlink()
                            removed.append(p)
                        except OSError:
                            pass
        if self.adapters_dir.is_dir():
            for p in self.adapters_dir.glob(".*"):
                if p.is_dir() and not p.is_symlink() and stale(p):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed


__all__ = ["MAX_NAME", "OutDir", "fresh_dir", "task_filename", "task_id_from_filename"]
