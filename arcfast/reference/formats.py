"""Plain-Python grid formats: the semantics ``arcfast.arc.formats`` (C++) must match, byte for byte.

Loops and string joins only; numpy is used just to turn inputs into lists and results into
arrays. Same signatures, results, statuses and error messages as ``arcfast.arc.formats``.
"""
from __future__ import annotations

import operator

import numpy as np

from ..arc.formats import FORMATS, DecodeStatus
from ..arc.vocab import EOG, MAX_SIZE, ROW

S = DecodeStatus
_WS = " \t\n\r\x0b\x0c"  # ASCII whitespace only: str.strip() would take Unicode spaces too
_NUMBER_CAP = 1 << 40     # the C++ side saturates numbers here; any size limit is far below


def _check_format(fmt) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return str(fmt)


def _check_max_size(max_size: int) -> None:
    if not 1 <= max_size <= 65535:
        raise ValueError(f"max_size must be in 1..65535, got {max_size}")


# -- reading grids -------------------------------------------------------------------------------

def _shape_str(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _size_error(h: int, w: int, max_size: int) -> str:
    return f"grid is {h}x{w}, over the {max_size}x{max_size} size limit"


def _colour_error(value, r: int, c: int) -> str:
    return f"value {value} at row {r}, column {c} is not a colour 0-9"


def _list_rows(grid, max_size: int) -> list[list[int]]:
    h = len(grid)
    if h == 0:
        raise ValueError("grid is empty (no rows)")
    w = len(grid[0])
    for r in range(1, h):
        if len(grid[r]) != w:
            raise ValueError(f"row {r} has {len(grid[r])} cells but row 0 has {w}")
    if w == 0:
        raise ValueError(f"grid is empty (shape ({h}, 0))")
    if h > max_size or w > max_size:
        raise ValueError(_size_error(h, w, max_size))
    rows = []
    for r in range(h):
        row = []
        for c in range(w):
            v = grid[r][c]
            try:
                x = operator.index(v)
            except TypeError:
                raise ValueError(f"{v!r} at row {r}, column {c} is not an integer") from None
            if not 0 <= x <= 9:
                raise ValueError(_colour_error(x, r, c))
            row.append(x)
        rows.append(row)
    return rows


def _array_rows(arr: np.ndarray, max_size: int) -> list[list[int]]:
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grid, got shape {_shape_str(arr.shape)}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"grid has dtype {arr.dtype}, not an integer type")
    h, w = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f"grid is empty (shape {_shape_str(arr.shape)})")
    if h > max_size or w > max_size:
        raise ValueError(_size_error(h, w, max_size))
    rows = arr.tolist()
    for r in range(h):
        for c in range(w):
            v = int(rows[r][c])
            if not 0 <= v <= 9:
                raise ValueError(_colour_error(v, r, c))
            rows[r][c] = v
    return rows


def grid_rows(grid, max_size: int = MAX_SIZE) -> list[list[int]]:
    """The grid as a list of rows of ints 0-9; ``ValueError`` (what and where) if it is not one."""
    if isinstance(grid, np.ndarray):
        return _array_rows(grid, max_size)
    if isinstance(grid, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in grid):
        return _list_rows(grid, max_size)
    try:
        arr = np.asarray(grid)
    except Exception as exc:
        raise ValueError(f"grid is not a rectangular array: {exc}") from None
    return _array_rows(arr, max_size)


# -- encoding ------------------------------------------------------------------------------------

def _encode_rows(rows: list[list[int]], fmt: str):
    if fmt == "compact":
        ids = []
        for row in rows:
            for v in row:
                ids.append(v)
            ids.append(ROW)
        ids.append(EOG)
        return np.array(ids, dtype=np.int32)
    lines = ["".join(str(v) for v in row) for row in rows]
    if fmt in ("row-number", "shape-row-number"):
        lines = [f"{i + 1} {line}" for i, line in enumerate(lines)]
    body = "\n".join(lines)
    if fmt == "code-block":
        return "```grid\n" + body + "\n```"
    if fmt == "shape-row-number":
        return f"```grid shape: {len(rows)}x{len(rows[0])}\n{body}\n```"
    return body


def encode(grid, fmt: str = "compact", max_size: int = MAX_SIZE):
    """Same as ``arcfast.arc.formats.encode``."""
    fmt = _check_format(fmt)
    _check_max_size(max_size)
    try:
        rows = grid_rows(grid, max_size)
    except ValueError as exc:
        raise ValueError(f"invalid grid: {exc}") from None
    return _encode_rows(rows, fmt)


def encode_batch(grids, fmt: str = "compact", threads: int = 0, max_size: int = MAX_SIZE) -> list:
    """Same as ``arcfast.arc.formats.encode_batch`` (``threads`` is accepted and ignored)."""
    fmt = _check_format(fmt)
    _check_max_size(max_size)
    rows = []
    for i, grid in enumerate(grids):
        try:
            rows.append(grid_rows(grid, max_size))
        except ValueError as exc:
            raise ValueError(f"invalid grid at index {i}: {exc}") from None
    return [_encode_rows(r, fmt) for r in rows]


# -- decoding ------------------------------------------------------------------------------------

def _token_ids(data, what: str) -> list[int]:
    """Token ids as Python ints, up to and including the first EOG."""
    if isinstance(data, (str, bytes, bytearray)):
        raise TypeError(f"{what}: the compact format decodes token ids, got {type(data).__name__}")
    if not isinstance(data, (np.ndarray, list, tuple)):
        try:
            data = np.asarray(data)
        except Exception as exc:
            raise TypeError(f"{what}: not a sequence of token ids: {exc}") from None
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D sequence of token ids, got shape {_shape_str(data.shape)}")
        if data.dtype.kind not in "iub":
            raise TypeError(f"{what}: token ids must be integers, got dtype {data.dtype}")
        data = data.tolist()
    ids = []
    for i, v in enumerate(data):
        try:
            x = operator.index(v)
        except TypeError:
            raise TypeError(f"{what}: token {i} is {v!r}, not an integer") from None
        ids.append(x)
        if x == EOG:
            break
    return ids


def _decode_compact(ids: list[int], max_size: int):
    cells: list[list[int]] = []
    row: list[int] = []
    w = -1
    for t in ids:
        if 0 <= t <= 9:
            row.append(t)
            if len(row) > max_size:
                return None, S.TOO_BIG
        elif t == ROW:
            if w < 0:
                w = len(row)
            elif len(row) != w:
                return None, S.RAGGED
            cells.append(row)
            row = []
            if len(cells) > max_size:
                return None, S.TOO_BIG
        elif t == EOG:
            if row:
                return None, S.RAGGED
            if not cells or w == 0:
                return None, S.EMPTY
            return np.array(cells, dtype=np.uint8), S.OK
        else:
            return None, S.BAD_SYMBOL
    return None, S.UNTERMINATED


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _decode_row(line: str, numbered: bool, index: int, max_size: int):
    """One row line (no newline): (status, cells)."""
    j = 0
    if numbered:
        num = 0
        while j < len(line) and _is_digit(line[j]):
            num = min(num * 10 + ord(line[j]) - 48, _NUMBER_CAP)
            j += 1
        if j == 0 or j == len(line) or line[j] != " ":
            return S.BAD_SYMBOL, None
        if num != index + 1:
            return S.SHAPE_MISMATCH, None
        j += 1
    row = []
    for ch in line[j:]:
        if not _is_digit(ch):
            return S.BAD_SYMBOL, None
        row.append(ord(ch) - 48)
        if len(row) > max_size:
            return S.TOO_BIG, None
    return S.OK, row


class _Header:
    """Reads a code block's header line char by char."""

    def __init__(self, s: str):
        self.s, self.pos = s, 0

    def literal(self, lit: str):
        for ch in lit:
            if self.pos == len(self.s):
                return S.UNTERMINATED
            if self.s[self.pos] != ch:
                return S.BAD_SYMBOL
            self.pos += 1
        return S.OK

    def number(self):
        if self.pos == len(self.s):
            return S.UNTERMINATED, 0
        if not _is_digit(self.s[self.pos]):
            return S.BAD_SYMBOL, 0
        x = 0
        while self.pos < len(self.s) and _is_digit(self.s[self.pos]):
            x = min(x * 10 + ord(self.s[self.pos]) - 48, _NUMBER_CAP)
            self.pos += 1
        return S.OK, x


def _decode_text(text: str, fmt: str, max_size: int):
    numbered = fmt in ("row-number", "shape-row-number")
    fenced = fmt in ("code-block", "shape-row-number")
    declared = None
    if fenced:
        s = text.lstrip(_WS)
        if not s:
            return None, S.EMPTY
        hd = _Header(s)
        st = hd.literal("```grid")
        if st == S.OK and fmt == "shape-row-number":
            st = hd.literal(" shape: ")
            if st == S.OK:
                st, dh = hd.number()
            if st == S.OK:
                st = hd.literal("x")
            if st == S.OK:
                st, dw = hd.number()
            declared = (dh, dw) if st == S.OK else None
        if st == S.OK:
            if hd.pos < len(s) and s[hd.pos] == "\r":
                hd.pos += 1
            st = hd.literal("\n")
        if st != S.OK:
            return None, st
        if declared is not None and (declared[0] > max_size or declared[1] > max_size):
            return None, S.TOO_BIG
        lines = s[hd.pos:].split("\n")
    else:
        s = text.strip(_WS)
        if not s:
            return None, S.EMPTY
        lines = s.split("\n")
    rows: list[list[int]] = []
    w = -1
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if fenced:
            if line.startswith("```"):
                break
            if last:  # the text ends without the closing fence
                return None, S.UNTERMINATED
        if line.endswith("\r"):
            line = line[:-1]
        st, row = _decode_row(line, numbered, len(rows), max_size)
        if st != S.OK:
            return None, st
        if w < 0:
            w = len(row)
        elif len(row) != w:
            return None, S.RAGGED
        rows.append(row)
        if len(rows) > max_size:
            return None, S.TOO_BIG
    if not rows or w == 0:
        return None, S.EMPTY
    if declared is not None and declared != (len(rows), w):
        return None, S.SHAPE_MISMATCH
    return np.array(rows, dtype=np.uint8), S.OK


def _text(data, fmt: str, what: str) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray)):
        # Undecodable bytes become lone surrogates: not digits, so bad symbols where they stand.
        return bytes(data).decode("utf-8", "surrogateescape")
    raise TypeError(f"{what}: the {fmt} format decodes str or bytes, got {type(data).__name__}")


def _decode(data, fmt: str, max_size: int, what: str):
    if fmt == "compact":
        return _decode_compact(_token_ids(data, what), max_size)
    return _decode_text(_text(data, fmt, what), fmt, max_size)


def decode(data, fmt: str = "compact", max_size: int = MAX_SIZE):
    """Same as ``arcfast.arc.formats.decode``."""
    fmt = _check_format(fmt)
    _check_max_size(max_size)
    return _decode(data, fmt, max_size, "data")


def decode_batch(items, fmt: str = "compact", threads: int = 0, max_size: int = MAX_SIZE) -> list:
    """Same as ``arcfast.arc.formats.decode_batch`` (``threads`` is accepted and ignored)."""
    fmt = _check_format(fmt)
    _check_max_size(max_size)
    return [_decode(item, fmt, max_size, f"items[{i}]") for i, item in enumerate(items)]
