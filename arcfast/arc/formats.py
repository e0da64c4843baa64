"""Grid formats: grids to compact token ids or text, and model outputs back to grids.

The work is done by the C++ core (``csrc/formats.h``); ``arcfast.reference.formats`` is the plain
Python version the tests hold it equal to. ``docs/FORMAT.md`` is the spec of every format.

Formats (``FORMATS``), shown for the grid ``[[1, 2], [3, 0]]``:

- ``compact``: int32 token ids, one per cell (id == colour), ``ROW`` (10) after every row, ``EOG``
  (13) after the grid: ``[1, 2, 10, 3, 0, 10, 13]``.
- ``minimal``: ``"12\\n30"``
- ``row-number``: ``"1 12\\n2 30"``
- ``code-block``: ``"```grid\\n12\\n30\\n```"``
- ``shape-row-number``: ``"```grid shape: 2x2\\n1 12\\n2 30\\n```"`` (rows x columns)

Grids are 2-D arrays of colours 0-9; anything array-like is accepted on the way in (uint8 numpy
arrays are the fast path) and decoded grids come back as C-contiguous ``uint8`` arrays ``[h, w]``.
Encoding an invalid grid raises ``ValueError`` saying what is wrong and where (0-based row and
column). Decoding never raises on bad model output: it returns ``(None, status)``. It raises only
on inputs of the wrong type (``TypeError``: e.g. a str for ``compact``, floats for token ids) or
shape (``ValueError``: e.g. a 2-D array given to ``decode``).

Batch calls take their inputs out of the Python objects with the GIL held (validating grids;
immutable str/bytes and contiguous numpy arrays of the usual dtypes are then read in place, with a
reference held, as numpy does; anything else is copied), release the GIL, work on ``threads``
std::threads (0 = all cores; small batches stay on one thread), then build the outputs. As with
numpy, changing an array from another thread while a call reads it gives unspecified results.
"""
from __future__ import annotations

import enum
from typing import Any, Sequence, Union

import numpy as np

from .. import _core
from .vocab import MAX_SIZE

__all__ = [
    "FORMATS",
    "DecodeStatus",
    "encode",
    "decode",
    "encode_batch",
    "decode_batch",
    "encode_compact_flat",
]

FORMATS: tuple[str, ...] = ("compact", "minimal", "row-number", "code-block", "shape-row-number")
TEXT_FORMATS: tuple[str, ...] = FORMATS[1:]


class DecodeStatus(str, enum.Enum):
    """What decoding found. A ``str`` enum: ``DecodeStatus.OK == "ok"``.

    Member order is the C++ code order (``csrc/formats.h``).
    """

    OK = "ok"                          # a valid grid
    BAD_SYMBOL = "bad_symbol"          # a token or character that has no place there
    RAGGED = "ragged"                  # rows of different lengths
    EMPTY = "empty"                    # no cells
    TOO_BIG = "too_big"                # more rows or columns than max_size (declared or read)
    SHAPE_MISMATCH = "shape_mismatch"  # a declared shape or row number disagrees with the rows
    UNTERMINATED = "unterminated"      # ends before its end marker (EOG, closing fence)

    def __str__(self) -> str:
        return self.value


Grid = Any  # 2-D array-like of ints 0-9: numpy array, nested lists, ...
Encoded = Union[np.ndarray, str]
Decoded = tuple  # (np.ndarray uint8 [h, w] | None, DecodeStatus)

assert tuple(s.value for s in DecodeStatus) == _core.STATUS_NAMES
assert FORMATS == _core.FORMAT_NAMES


def encode(grid: Grid, fmt: str = "compact", max_size: int = MAX_SIZE) -> Encoded:
    """Encodes one grid.

    ``grid``: 2-D array-like ``[h, w]`` of ints 0-9, ``1 <= h, w <= max_size``.
    Returns an int32 array ``[h * (w + 1) + 1]`` for ``compact``, a ``str`` for text formats.
    Raises ``ValueError`` for an invalid grid (what and where) or an unknown format.
    """
    return _core.encode(grid, fmt, max_size)


def decode(data: Union[Sequence[int], np.ndarray, str, bytes], fmt: str = "compact",
           max_size: int = MAX_SIZE) -> Decoded:
    """Decodes one model output into ``(grid, status)``.

    ``data``: for ``compact``, a 1-D sequence of token ids (any integer numpy dtype, list of ints,
    or anything ``numpy.asarray`` turns into one; read up to its first ``EOG``, the rest ignored);
    for text formats, a ``str`` or UTF-8 ``bytes``.
    Returns ``(np.ndarray uint8 [h, w], DecodeStatus.OK)`` or ``(None, <the first problem met>)``
    (``h, w <= max_size``); see docs/FORMAT.md for the exact rules.
    """
    return _core.decode(data, fmt, max_size)


def encode_batch(grids: Sequence[Grid], fmt: str = "compact", threads: int = 0,
                 max_size: int = MAX_SIZE) -> list:
    """Encodes many grids: a list of what ``encode`` gives for each, in order.

    ``grids``: a sequence of grids (e.g. a list of uint8 arrays, or a uint8 array ``[n, h, w]``).
    Raises ``ValueError`` naming the index of the first invalid grid.
    """
    return _core.encode_batch(grids, fmt, threads, max_size)


def decode_batch(items: Union[Sequence, np.ndarray], fmt: str = "compact", threads: int = 0,
                 max_size: int = MAX_SIZE) -> list:
    """Decodes many model outputs: a list of ``(grid or None, DecodeStatus)``, one per item.

    ``items``: a sequence of what ``decode`` takes; for ``compact`` also a 2-D integer array
    ``[n, length]`` with one output per row (padding after each row's ``EOG`` is never read).
    Never raises on bad model output; raises ``TypeError`` only for items of the wrong type.
    """
    return _core.decode_batch(items, fmt, threads, max_size)


def encode_compact_flat(grids: Sequence[Grid], threads: int = 0,
                        max_size: int = MAX_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Encodes many grids into one buffer, with no per-grid Python object.

    Returns ``(ids, offsets)``: ``ids`` int32 ``[total]`` holds every grid's compact ids back to
    back, ``offsets`` int64 ``[n + 1]`` bounds them: grid ``i`` is ``ids[offsets[i]:offsets[i+1]]``.
    The throughput path for samplers and packers; same validation as ``encode_batch``.
    """
    return _core.encode_compact_flat(grids, threads, max_size)
