"""Writing files so that nothing finished is lost: atomic replacement of a file or a directory, and
JSON (with numpy values) written atomically or appended line by line.

Every result the engine writes goes through here: ``submission.json``, ``tasks/<id>.json``,
``run.json``, reports, checkpoints and adapter directories. A reader (or a crash) sees the old
version or the new one, never a part.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Union

import numpy as np


def _new_temporary(path: Path) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` beside ``path``, opened for writing: (fd, its path).
    Created with mode 0o666 less the umask, as any file a program writes (``mkstemp``'s 0600
    would outlive the rename)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def atomic_write(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a part.

    Writes a temporary file beside ``path``, fsyncs it, ``os.replace``s it over ``path`` and
    fsyncs the directory (where the OS allows) so the rename itself survives a power loss. On any
    error the temporary file is removed and the old file is left as it was.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the data is already safe there
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def json_default(o):
    """``json.dumps``' ``default`` for numpy arrays and scalars."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Union[str, Path], obj, indent=1) -> None:
    """``obj`` as JSON at ``path`` (numpy values included), atomically; ``indent=None`` writes it
    compact."""
    seps = (",", ":") if indent is None else None
    atomic_write(path, json.dumps(obj, indent=indent, separators=seps, default=json_default))


def swap_in(tmp: Union[str, Path], final: Union[str, Path]) -> None:
    """Rename directory ``tmp`` to ``final``, replacing it: the old one is first renamed to
    ``.NAME.old`` beside it (what a crash in between leaves, for a reader to fall back on), then
    removed."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


class JsonLog:
    """Appends one JSON object per line (loss, throughput, events) and flushes each line."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def __call__(self, **kw) -> None:
        kw.setdefault("time", round(time.time(), 3))
        self.f.write(json.dumps(kw, default=json_default) + "\n")

    def close(self) -> None:
        self.f.close()


def fresh_dir(parent: Union[str, Path], prefix: str) -> Path:
    """A new, empty directory ``parent/<prefix><random>`` to build a result in before renaming it
    into place. Made by a plain ``mkdir``, so it has the mode any directory gets under the current
    umask (``tempfile.mkdtemp`` makes it 0700, which the finished directory would keep)."""
    parent = Path(parent)
    for _ in range(100):
        d = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            d.mkdir()
        except FileExistsError:
            continue
        return d
    raise FileExistsError(f"{parent}: no free temporary name {prefix}* after 100 tries")


__all__ = ["atomic_write", "write_json", "json_default", "swap_in", "fresh_dir", "JsonLog"]
