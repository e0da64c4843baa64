"""The ARC task record every part of arcfast passes around."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def id_bytes(text: str) -> bytes:
    """A task id (or any name from a task file) as bytes: UTF-8, where a lone surrogate, which
    JSON's ``\\ud800`` escapes can put in a Python string, is kept as its 3-byte form instead of
    raising. Seeds, hashes, file names and the C++ core all read ids through it."""
    return text.encode("utf-8", "surrogatepass")


def _grids_equal(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a, b))  # shapes first, then cells


def _grid_key(g: Optional[np.ndarray]):
    """What a grid's hash is computed from: its shape and cells, whatever the dtype (grids compare
    by value, so a uint8 grid and its int64 or float copy must hash alike)."""
    if g is None:
        return None
    g = np.asarray(g)
    if g.dtype.kind not in "biuf":  # not numbers: the shape alone still hashes equal grids alike
        return g.shape
    cells = np.ascontiguousarray(g, dtype=np.float64) + 0.0  # + 0.0: -0.0 is 0.0, as == says
    return g.shape, cells.tobytes()


@dataclass(frozen=True, eq=False)
class Pair:
    """One input/output example. Grids are 2-D ``uint8`` arrays of colours 0-9 (C-contiguous).

    ``output`` is ``None`` for a test pair whose solution is unknown.

    Pairs compare by value: equal when their inputs have the same shape and cells and so do their
    outputs (an unknown output equals only an unknown output), whatever the arrays' dtypes.
    The hash agrees, so pairs can be set members and dict keys; like any key, a pair must not have
    its grids changed in place while it is one.
    """

    input: np.ndarray
    output: Optional[np.ndarray] = None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Pair):
            return NotImplemented
        return self is other or (_grids_equal(self.input, other.input)
                                 and _grids_equal(self.output, other.output))

    def __hash__(self) -> int:
        return hash((_grid_key(self.input), _grid_key(self.output)))


@dataclass
class Task:
    """An ARC task: its id, its demonstration (train) pairs and its test pairs.

    ``source`` names where it was loaded from (a file path or a bundled set such as ``arc1:eval``)
    so that any later error can point back at it.

    Tasks compare by value, field by field (pairs as :class:`Pair` does); a task is mutable, so it
    has no hash (:meth:`fingerprint` is a digest of its content).
    """

    id: str
    train: list[Pair]
    test: list[Pair]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def has_solutions(self) -> bool:
        return all(p.output is not None for p in self.test)

    def grids(self):
        """Every grid of the task (inputs and known outputs), in file order."""
        for p in list(self.train) + list(self.test):
            yield p.input
            if p.output is not None:
                yield p.output

    def to_json(self) -> dict:
        """The task in the original ARC JSON layout (test outputs only where known)."""
        def pair(p: Pair, with_output: bool) -> dict:
            d = {"input": p.input.tolist()}
            if with_output and p.output is not None:
                d["output"] = p.output.tolist()
            return d

        return {"train": [pair(p, True) for p in self.train], "test": [pair(p, True) for p in self.test]}

    def fingerprint(self) -> str:
        """A digest of everything that decides the task's answers: its id, every train pair and
        every test input and known output (shapes and cells). Equal tasks have equal
        fingerprints; a resumed run redoes a task whose fingerprint changed."""
        h = hashlib.sha256(id_bytes(self.id))
        for part, pairs in (("train", self.train), ("test", self.test)):
            h.update(f"|{part}:{len(pairs)}".encode())
            for p in pairs:
                for g in (p.input, p.output):
                    if g is None:
                        h.update(b"-")
                    else:
                        g = np.ascontiguousarray(g, dtype=np.uint8)
                        h.update(f"{g.shape[0]}x{g.shape[1]}:".encode())
                        h.update(g.tobytes())
        return h.hexdigest()[:32]

    def __repr__(self) -> str:
        return f"Task({self.id!r}, train={len(self.train)}, test={len(self.test)}, source={self.source!r})"
