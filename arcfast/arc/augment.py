"""Augmentations of ARC tasks and their inverses (C++ core: csrc/augment.h).

An :class:`Augmentation` is a record: a dihedral transform, a colour permutation, an order of the
demonstrations and, optionally, a task :class:`Composition`. It applies to a grid, to a whole task,
and inverts on an output grid predicted in the augmented frame.

The 8 dihedral transforms, numbered as numpy computes them:

====  ==================================  =========
 id   transform                           inverse
====  ==================================  =========
 0    identity                            0
 1    ``np.rot90(g, 1)`` (counter-clockwise)  3
 2    ``np.rot90(g, 2)``                  2
 3    ``np.rot90(g, 3)``                  1
 4    transpose ``g.T``                   4
 5    ``np.fliplr(g)``                    5
 6    ``np.flipud(g)``                    6
 7    anti-transpose ``np.rot90(g, 2).T``  7
====  ==================================  =========

A grid is augmented as ``dihedral(colors[compose(g)])``: the composition (only on its side) acts
in the original frame, then the colour map, then the dihedral transform. The inverse undoes them in
reverse order. Every dihedral transform and colour permutation is invertible; an output-side
composition inverts with a consistency check (an upscale's blocks must be uniform, a padding's
border must be its colour, a mirror's halves must be flips of each other, the shape must divide),
and a prediction failing it has no inverse (``None``). Input-side compositions change only inputs,
so they do not affect the inverse of an output. Test-time augmentation uses the dihedral, colour
and order parts only (:func:`test_time_augmentations`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _core
from .rng import Rng, combine, fnv1a64, shuffle
from .task import Pair, Task
from .vocab import MAX_SIZE

N_TRANSFORMS = 8
INVERSE_TRANSFORM = (0, 3, 2, 1, 4, 5, 6, 7)
COMPOSITION_KINDS = ("geometric", "pad", "upscale", "mirror")
SIDES = ("input", "output")
_KIND_ID = {k: i + 1 for i, k in enumerate(COMPOSITION_KINDS)}
_SIDE_ID = {s: i for i, s in enumerate(SIDES)}


@dataclass(frozen=True)
class Composition:
    """A task composition: one transform applied with the same parameters to every input
    (``side="input"``) or every output (``side="output"``) of a task.

    ``kind`` and its two parameters ``a``, ``b``:

    - ``"geometric"``: ``a`` = a dihedral transform 1-7 (``b`` unused);
    - ``"pad"``: a border of ``a`` cells (1-5) of colour ``b`` on all four sides;
    - ``"upscale"``: every cell becomes an ``a`` x ``b`` block (rows x columns, factors 2-4);
    - ``"mirror"``: the grid beside its flip along axis ``a`` (0: stacked vertically, flipped
      upside down; 1: side by side, flipped left-right); ``b == 1`` puts the flip first.
    """

    side: str
    kind: str
    a: int
    b: int = 0

    def __post_init__(self):
        if self.side not in _SIDE_ID:
            raise ValueError(f"composition side must be one of {SIDES}, got {self.side!r}")
        if self.kind not in _KIND_ID:
            raise ValueError(f"composition kind must be one of {COMPOSITION_KINDS}, got {self.kind!r}")
        ok = {
            "geometric": 1 <= self.a <= 7,
            "pad": 1 <= self.a and 0 <= self.b <= 9,
            "upscale": self.a >= 1 and self.b >= 1,
            "mirror": self.a in (0, 1) and self.b in (0, 1),
        }[self.kind]
        if not ok:
            raise ValueError(f"invalid parameters for a {self.kind} composition: a={self.a}, b={self.b}")

    def to_core(self) -> tuple[int, int, int, int]:
        return (_SIDE_ID[self.side], _KIND_ID[self.kind], int(self.a), int(self.b))

    @classmethod
    def from_core(cls, t) -> Optional["Composition"]:
        if t is None:
            return None
        side, kind, a, b = t
        return cls(SIDES[side], COMPOSITION_KINDS[kind - 1], int(a), int(b))


def _grid(g) -> np.ndarray:
    return np.ascontiguousarray(g, dtype=np.uint8) if not isinstance(g, np.ndarray) or g.dtype != np.uint8 else g


@dataclass(frozen=True)
class Augmentation:
    """One augmentation of a task.

    - ``transform``: dihedral transform id 0-7 (table in the module docstring);
    - ``colors``: tuple of 10 ints, a permutation; colour ``c`` becomes ``colors[c]``;
    - ``order``: demonstrations in prompt order, by index (train pairs for :meth:`apply_task`
      and inference; pool indices in a training sample); ``None`` keeps the file order;
    - ``composition``: an optional :class:`Composition`.
    """

    transform: int = 0
    colors: tuple = tuple(range(10))
    order: Optional[tuple] = None
    composition: Optional[Composition] = None

    def __post_init__(self):
        if not 0 <= int(self.transform) < N_TRANSFORMS:
            raise ValueError(f"transform must be 0-7, got {self.transform}")
        colors = tuple(int(c) for c in self.colors)
        if sorted(colors) != list(range(10)):
            raise ValueError(f"colors must be a permutation of 0-9, got {colors}")
        object.__setattr__(self, "colors", colors)
        if self.order is not None:
            object.__setattr__(self, "order", tuple(int(i) for i in self.order))

    @classmethod
    def identity(cls) -> "Augmentation":
        return cls()

    @property
    def inverse_colors(self) -> tuple:
        inv = [0] * 10
        for c, d in enumerate(self.colors):
            inv[d] = c
        return tuple(inv)

    def _comp(self):
        return None if self.composition is None else self.composition.to_core()

    def apply_grid(self, grid, role: str = "input", max_size: int = MAX_SIZE) -> np.ndarray:
        """The augmented grid: uint8 [h', w'] from a 2-D grid of colours 0-9.

        ``role`` ("input" or "output") says whether an input- or output-side composition applies.
        Raises ValueError when the composition would exceed ``max_size``.
        """
        if role not in _SIDE_ID:
            raise ValueError(f"role must be 'input' or 'output', got {role!r}")
        return _core.augment_grid(_grid(grid), _SIDE_ID[role], self.transform, list(self.colors), self._comp(),
                                  max_size)

    def invert_grid(self, grid) -> Optional[np.ndarray]:
        """An output grid predicted in the augmented frame, mapped back to the task's frame.

        ``grid``: 2-D colours 0-9. Returns uint8 [h, w], or ``None`` when the grid cannot be the image
        of any grid under this augmentation (only an output-side composition can refuse one).
        """
        return _core.invert_output(_grid(grid), self.transform, list(self.colors), self._comp())

    def apply_task(self, task: Task, max_size: int = MAX_SIZE) -> Task:
        """The task with every grid augmented and its train pairs in ``order`` (when given).

        Test outputs are augmented where known. Raises ValueError when the composition would exceed
        ``max_size`` on any grid.
        """
        order = range(len(task.train)) if self.order is None else self.order
        for i in order:
            if not 0 <= i < len(task.train):
                raise ValueError(f"task {task.id}: order names train pair {i}, the task has {len(task.train)}")

        def pair(p: Pair) -> Pair:
            out = None if p.output is None else self.apply_grid(p.output, "output", max_size)
            return Pair(self.apply_grid(p.input, "input", max_size), out)

        return Task(id=task.id, train=[pair(task.train[i]) for i in order], test=[pair(p) for p in task.test],
                    source=task.source, meta=dict(task.meta, augmentation=self))


@dataclass(frozen=True)
class AugmentConfig:
    """How training samples are augmented (each draw is seeded: arcfast.arc.rng; the draws are specified in arcfast.reference.pipeline).

    - ``transforms``: dihedral ids drawn uniformly (``(0,)`` turns geometry off);
    - ``permute_colors``: draw a colour permutation; with probability ``keep_zero_prob`` colour 0
      stays 0 and 1-9 are permuted, otherwise all ten are permuted;
    - ``shuffle_demos``: shuffle the demonstration order;
    - ``composition_prob``: probability of a task composition, of a kind from
      ``composition_kinds`` on a side from ``composition_sides`` (both uniform); a composition
      that would make any grid of the sample larger than ``max_size`` is dropped, never truncated.
    """

    transforms: tuple = tuple(range(N_TRANSFORMS))
    permute_colors: bool = True
    keep_zero_prob: float = 0.9
    shuffle_demos: bool = True
    composition_prob: float = 0.0
    composition_kinds: tuple = COMPOSITION_KINDS
    composition_sides: tuple = SIDES
    max_size: int = MAX_SIZE

    def __post_init__(self):
        if not self.transforms or any(not 0 <= int(t) < N_TRANSFORMS for t in self.transforms):
            raise ValueError(f"transforms must be a non-empty tuple of ids 0-7, got {self.transforms}")
        if not 0.0 <= self.keep_zero_prob <= 1.0 or not 0.0 <= self.composition_prob <= 1.0:
            raise ValueError("keep_zero_prob and composition_prob must lie in [0, 1]")
        if not self.composition_kinds or any(k not in _KIND_ID for k in self.composition_kinds):
            raise ValueError(f"composition_kinds must be a non-empty subset of {COMPOSITION_KINDS}")
        if not self.composition_sides or any(s not in _SIDE_ID for s in self.composition_sides):
            raise ValueError(f"composition_sides must be a non-empty subset of {SIDES}")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """No augmentation at all: identity geometry and colours, file order."""
        return cls(transforms=(0,), permute_colors=False, shuffle_demos=False, composition_prob=0.0)

    def to_core(self) -> dict:
        return {
            "transforms": [int(t) for t in self.transforms],
            "permute_colors": bool(self.permute_colors),
            "keep_zero_prob": float(self.keep_zero_prob),
            "shuffle_demos": bool(self.shuffle_demos),
            "composition_prob": float(self.composition_prob),
            "composition_kinds": [_KIND_ID[k] for k in self.composition_kinds],
            "composition_sides": [_SIDE_ID[s] for s in self.composition_sides],
            "max_size": int(self.max_size),
        }


def test_time_augmentations(task: Task, n: int, seed: int = 0, keep_zero_prob: float = 0.9) -> list[Augmentation]:
    """``n`` augmentations for predicting ``task``'s test outputs: dihedral, colour and order only.

    The first is the identity in file order; then augmentation ``i`` uses transform ``i % 8`` (so the
    dihedral group is covered evenly), a colour permutation keeping 0 with probability
    ``keep_zero_prob``, and a shuffled demonstration order. Deterministic in (task id, seed, i).
    """
    out = [Augmentation()]
    base = combine(combine(seed, fnv1a64(task.id)), 3)  # tag 3: inference, apart from training draws
    for i in range(1, n):
        rng = Rng(combine(base, i))
        colors = list(range(10))
        if rng.uniform() < keep_zero_prob:
            rest = colors[1:]
            shuffle(rest, rng)
            colors = [0] + rest
        else:
            shuffle(colors, rng)
        order = list(range(len(task.train)))
        shuffle(order, rng)
        out.append(Augmentation(transform=i % N_TRANSFORMS, colors=tuple(colors), order=tuple(order)))
    return out[:n]


__all__ = ["Augmentation", "AugmentConfig", "Composition", "test_time_augmentations", "N_TRANSFORMS",
           "INVERSE_TRANSFORM", "COMPOSITION_KINDS", "SIDES"]
