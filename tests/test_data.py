"""arcfast.arc.loading: every loader on real data, every kind of bad input under both policies."""
import json
import logging
import pickle
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcfast.arc.parse import BUNDLED, TaskLoadError, _check_grid_plain, _GridError, _to_grid
from arcfast.arc.sources import bundled_path, list_bundled
from arcfast.arc.loading import load_tasks, save_tasks_kaggle


def raw_split(name, split):
    return json.loads(bundled_path(name).read_bytes())[split]


@pytest.fixture(scope="module")
def arc1_eval_raw():
    return raw_split("arc1", "eval")


@pytest.fixture(scope="module")
def arc1_eval():
    return load_tasks("arc1:eval")


def same_tasks(a, b, outputs=True):
    assert [t.id for t in a] == [t.id for t in b]
    for x, y in zip(a, b):
        assert len(x.train) == len(y.train) and len(x.test) == len(y.test)
        for p, q in zip(x.train + x.test, y.train + y.test):
            assert np.array_equal(p.input, q.input)
        for p, q in zip(x.train, y.train):
            assert np.array_equal(p.output, q.output)
        if outputs:
            for p, q in zip(x.test, y.test):
                assert np.array_equal(p.output, q.output)


# ------------------------------------------------------------------------------------------
# bundled sets


@pytest.mark.parametrize("name,split,count", [("arc1", "train", 400), ("arc1", "eval", 400),
                                              ("arc2", "train", 1000), ("arc2", "eval", 120)])
def test_bundled_set_matches_its_file(name, split, count):
    raw = raw_split(name, split)
    tasks = load_tasks(f"{name}:{split}")
    assert len(raw) == count == len(tasks)
    assert [t.id for t in tasks] == sorted(raw)
    for t in tasks:
        r = raw[t.id]
        assert t.source == f"{name}:{split}" and t.has_solutions
        assert (len(t.train), len(t.test)) == (len(r["train"]), len(r["test"]))
        for p, rp in zip(t.train + t.test, r["train"] + r["test"]):
            for g, rg in ((p.input, rp["input"]), (p.output, rp["output"])):
                assert g.dtype == np.uint8 and g.ndim == 2 and g.flags.c_contiguous
                assert g.tolist() == rg


def test_bundled_names():
    names = list_bundled()
    assert {"arc1:train", "arc1:eval", "arc2:train", "arc2:eval"} <= set(names)
    for name in BUNDLED:
        assert bundled_path(name).is_file()
    # long split names are the same sets
    assert [t.id for t in load_tasks("arc1-2019:evaluation")] == sorted(raw_split("arc1-2019", "eval"))


@pytest.fixture(scope="module")
def small_kaggle(tmp_path_factory, arc1_eval):
    """The first 12 tasks of arc1:eval as a Kaggle pair (cheaper to load again and again)."""
    d = tmp_path_factory.mktemp("small")
    ch = d / "small_challenges.json"
    save_tasks_kaggle(arc1_eval[:12], ch, d / "small_solutions.json")
    return str(ch)


def test_subsets(arc1_eval, small_kaggle):
    ids = [t.id for t in arc1_eval]
    # on a bundled set, "00576224" is an id (all digits), "3" an index; ids keep the order given
    got = load_tasks(f"arc1:eval[{ids[390]}, 00576224,3]")
    assert [t.id for t in got] == [ids[390], "00576224", ids[3]]
    same_tasks(got, [arc1_eval[390], arc1_eval[0], arc1_eval[3]])
    assert [t.id for t in load_tasks("arc1:eval[-3:]")] == ids[-3:]
    # the same selections on a file
    ch, ids = small_kaggle, ids[:12]
    assert [t.id for t in load_tasks(f"{ch}[:10]")] == ids[:10]
    assert [t.id for t in load_tasks(f"{ch}[5:20:5]")] == ids[5:20:5]
    assert [t.id for t in load_tasks(f"{ch}[::-4]")] == ids[::-4]
    assert [t.id for t in load_tasks(f"{ch}[7]")] == [ids[7]]
    assert [t.id for t in load_tasks(f"{ch}[-1]")] == [ids[-1]]
    assert [t.id for t in load_tasks(ch, select=slice(2, 4))] == ids[2:4]
    assert [t.id for t in load_tasks(ch, select=[ids[1], 0])] == [ids[1], ids[0]]
    assert [t.id for t in load_tasks(ch, select=ids[5])] == [ids[5]]
    assert [t.id for t in load_tasks(ch, select=6)] == [ids[6]]
    assert all(t.has_solutions for t in load_tasks(f"{ch}[3:5]"))


def test_subset_of_unknown_ids(small_kaggle):
    ch = small_kaggle
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(f"{ch}[00576224,nosuchid]")
    assert str(ei.value) == f"{ch}: task nosuchid: [00576224,nosuchid]: no such task"
    problems = []
    got = load_tasks(f"{ch}[00576224,nosuchid,12]", on_error="skip", problems=problems)
    assert [t.id for t in got] == ["00576224"]
    assert [str(p) for p in problems] == [
        f"{ch}: task nosuchid: [00576224,nosuchid,12]: no such task",
        f"{ch}: [00576224,nosuchid,12]: index 12 is out of range (12 tasks)"]
    assert {p.action for p in problems} == {"ignored"}


def test_fast_grid_path_equals_plain_reference_on_arc(arc1_eval_raw):
    grids = [g for name in ("arc1", "arc2") for t in raw_split(name, "eval").values()
             for p in t["train"] + t["test"] for g in (p["input"], p["output"])]
    assert len(grids) > 4000
    for g in grids:
        fast = _to_grid(g, 30, bools_possible=False)
        plain = np.array(_check_grid_plain(g, 30), dtype=np.uint8)
        assert fast.dtype == np.uint8 and fast.flags.c_contiguous
        assert np.array_equal(fast, plain) and fast.shape == plain.shape


cell = st.one_of(st.integers(0, 9), st.integers(0, 9), st.integers(-3, 300), st.integers(2**62, 2**70),
                 st.booleans(), st.floats(0, 9), st.just(float("nan")), st.just("3"), st.none())
row = st.one_of(st.lists(cell, min_size=0, max_size=5), st.lists(st.integers(0, 9), min_size=0, max_size=5),
                cell, st.lists(st.lists(st.integers(0, 9), max_size=2), max_size=3))
good_grid = st.integers(1, 6).flatmap(lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w),
                                                          min_size=1, max_size=6))


@st.composite
def one_bad_cell(draw):
    """A good grid but for one cell: the case the vectorised check must not wave through."""
    g = draw(good_grid)
    r = draw(st.integers(0, len(g) - 1))
    g[r][draw(st.integers(0, len(g[0]) - 1))] = draw(cell)
    return g


grid_like = st.one_of(st.lists(row, min_size=0, max_size=5), good_grid, one_bad_cell(), one_bad_cell(),
                      cell, st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def _has_bool(obj):
    if isinstance(obj, bool):
        return True
    return isinstance(obj, list) and any(_has_bool(x) for x in obj)


@settings(max_examples=300, deadline=None)
@given(grid_like, st.sampled_from([None, 2, 4, 30]))
def test_fast_grid_path_equals_plain_reference_on_anything(obj, max_size):
    def outcome(fn):
        try:
            return ("ok", fn().tolist())
        except _GridError as e:
            return ("error", e.place, e.detail)

    plain = outcome(lambda: np.array(_check_grid_plain(obj, max_size), dtype=np.uint8))
    fast = outcome(lambda: _to_grid(obj, max_size, bools_possible=_has_bool(obj)))
    assert fast == plain
    if plain[0] == "ok":  # everything accepted really is a small grid of colours
        a = np.array(plain[1])
        assert a.ndim == 2 and a.size and a.min() >= 0 and a.max() <= 9
        assert max_size is None or max(a.shape) <= max_size


# ------------------------------------------------------------------------------------------
# Kaggle files


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_kaggle_round_trip_with_solutions_beside(tmp_path, arc1_eval):
    tasks = arc1_eval[:5]
    ch = tmp_path / "arc-agi_evaluation_challenges.json"
    save_tasks_kaggle(tasks, ch, tmp_path / "arc-agi_evaluation_solutions.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arc-agi_evaluation_challenges.json",
                                                          "arc-agi_evaluation_solutions.json"]
    assert all("output" not in p for t in json.loads(ch.read_text()).values() for p in t["test"])
    got = load_tasks(ch)
    same_tasks(got, tasks)
    assert all(t.has_solutions and t.source == str(ch) for t in got)
    # the same file without looking for solutions, then with them named explicitly
    bare = load_tasks(ch, solutions=False)
    same_tasks(bare, tasks, outputs=False)
    assert not any(p.output is not None for t in bare for p in t.test)
    other = tmp_path / "answers.json"
    (tmp_path / "arc-agi_evaluation_solutions.json").rename(other)
    assert not any(t.has_solutions for t in load_tasks(ch))  # nothing beside it any more
    same_tasks(load_tasks(str(ch), solutions=other), tasks)
    # a file of the same layout under any name is detected from its contents
    plain = tmp_path / "mine.json"
    plain.write_bytes(ch.read_bytes())
    same_tasks(load_tasks(plain, solutions=other), tasks)
    with pytest.raises(ValueError, match="is a solutions file"):
        load_tasks(_copy(other, tmp_path / "x_solutions.json"))
    with pytest.raises(ValueError, match="looks like a solutions file"):
        load_tasks(other)
    with pytest.raises(ValueError, match="holds Kaggle files"):
        load_tasks(tmp_path)


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def grid(h=4, w=6, base=0):
    return [[(base + r * w + c) % 10 for c in range(w)] for r in range(h)]


def task_dict(base=0, test_output=False):
    t = {"train": [{"input": grid(base=base), "output": grid(base=base + 1)},
                   {"input": grid(base=base + 2), "output": grid(base=base + 3)}],
         "test": [{"input": grid(base=base + 4)}]}
    if test_output:
        t["test"][0]["output"] = grid(base=base + 5)
    return t


def setitem(path, value):
    def mutate(t):
        obj = t
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mutate


def delitem(path):
    def mutate(t):
        obj = t
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return mutate


BIG = [[1] * 31 for _ in range(31)]
BAD_TASKS = [
    ("ragged row", setitem(["train", 1, "output", 3], [1, 2, 3, 4, 5]),
     "train[1].output row 3", "expected 6 cells, found 5"),
    ("colour 10", setitem(["train", 0, "input", 1, 2], 10), "train[0].input row 1 col 2", "colour 10 is outside 0-9"),
    ("colour -1", setitem(["test", 0, "input", 0, 5], -1), "test[0].input row 0 col 5", "colour -1 is outside 0-9"),
    ("float", setitem(["train", 0, "output", 2, 0], 1.5), "train[0].output row 2 col 0",
     "expected a colour 0-9, found 1.5"),
    ("float that is whole", setitem(["train", 0, "output", 2, 0], 1.0), "train[0].output row 2 col 0",
     "expected a colour 0-9, found 1.0"),
    ("bool", setitem(["train", 1, "input", 3, 1], True), "train[1].input row 3 col 1",
     "expected a colour 0-9, found true"),
    ("string", setitem(["train", 1, "input", 0, 0], "3"), "train[1].input row 0 col 0",
     'expected a colour 0-9, found string "3"'),
    ("null cell", setitem(["train", 1, "input", 0, 4], None), "train[1].input row 0 col 4",
     "expected a colour 0-9, found null"),
    ("empty grid", setitem(["test", 0, "input"], []), "test[0].input", "empty grid (no rows)"),
    ("empty row", setitem(["test", 0, "input"], [[]]), "test[0].input row 0", "empty row (no cells)"),
    ("row not a list", setitem(["train", 0, "input", 2], 7), "train[0].input row 2",
     "expected a list of cells, found 7"),
    ("grid not a list", setitem(["train", 0, "input"], "0123"), "train[0].input",
     'expected a grid (a list of rows), found string "0123"'),
    ("too big", setitem(["train", 0, "input"], BIG), "train[0].input", "31x31 grid is over the size limit 30x30"),
    ("too wide", setitem(["test", 0, "input"], [[0] * 31]), "test[0].input", "1x31 grid is over the size limit 30x30"),
    ("missing train", delitem(["train"]), "", "missing key 'train'"),
    ("missing test", delitem(["test"]), "", "missing key 'test'"),
    ("missing output", delitem(["train", 1, "output"]), "train[1]", "missing key 'output'"),
    ("null output", setitem(["train", 1, "output"], None), "train[1].output", "expected a grid, found null"),
    ("missing input", delitem(["test", 0, "input"]), "test[0]", "missing key 'input'"),
    ("train not a list", setitem(["train"], {}), "train", "expected a list of pairs, found an object"),
    ("no train pairs", setitem(["train"], []), "train", "no pairs"),
    ("no test pairs", setitem(["test"], []), "test", "no pairs"),
    ("pair not an object", setitem(["train", 0], 3), "train[0]",
     'expected a pair {"input": grid, "output": grid}, found 3'),
]


@pytest.mark.parametrize("name,mutate,where,detail", BAD_TASKS, ids=[b[0] for b in BAD_TASKS])
def test_bad_task_in_kaggle_file(tmp_path, caplog, name, mutate, where, detail):
    bad = task_dict(base=3)
    mutate(bad)
    ch = write_json(tmp_path / "arc-agi_evaluation_challenges.json",
                    {"aaaa0001": task_dict(), "bbbb0002": bad, "cccc0003": task_dict(base=7)})
    write_json(tmp_path / "arc-agi_evaluation_solutions.json",
               {"aaaa0001": [grid(base=5)], "bbbb0002": [grid(base=8)], "cccc0003": [grid(base=9)]})
    expected = f"{ch}: task bbbb0002: " + (f"{where}: " if where else "") + detail
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(str(ch))
    e = ei.value
    assert str(e) == expected
    assert (e.file, e.task_id, e.where, e.detail, e.action) == (str(ch), "bbbb0002", where, detail, None)
    # skip: the other two load, with their solutions; the problem is reported and logged
    problems = []
    with caplog.at_level(logging.WARNING, logger="arcfast.arc.loading"):
        got = load_tasks(str(ch), on_error="skip", problems=problems)
    assert [t.id for t in got] == ["aaaa0001", "cccc0003"]
    assert all(t.has_solutions for t in got)
    assert got[1].test[0].output.tolist() == grid(base=9)
    assert [str(p) for p in problems] == [expected]
    assert problems[0].action == "skipped task"
    assert [r.getMessage() for r in caplog.records if r.name == "arcfast.arc.loading" and r.levelno == logging.WARNING] \
        == [expected + " [skipped task]"]


def test_size_limit_is_configurable(tmp_path):
    t = task_dict()
    t["train"][0]["input"] = BIG
    f = write_json(tmp_path / "t.json", t)
    assert load_tasks(f, max_size=31)[0].train[0].input.shape == (31, 31)
    t["test"][0]["input"] = [[2] * 45] * 40
    write_json(f, t)
    assert load_tasks(f, max_size=None)[0].test[0].input.shape == (40, 45)
    with pytest.raises(TaskLoadError, match=r"t: test\[0\].input: 40x45 grid is over the size limit 31x31"):
        load_tasks(f, max_size=31)
    with pytest.raises(TaskLoadError, match=r"train\[0\].input: 31x31 grid is over the size limit 6x6"):
        load_tasks(f, max_size=6)


def test_booleans_are_caught_in_rows_that_mix_them_with_integers(tmp_path):
    t = task_dict()
    t["train"][0]["output"][1][1] = False  # np.array would read [.., False, ..] as 0
    f = write_json(tmp_path / "t.json", t)
    with pytest.raises(TaskLoadError, match=r"train\[0\].output row 1 col 1: expected a colour 0-9, found false"):
        load_tasks(f)
    # a file whose text says "true" elsewhere takes the careful path and still loads
    t = task_dict(test_output=True)
    t["note"] = "true story"
    f2 = write_json(tmp_path / "u.json", t)
    assert load_tasks(f2)[0].test[0].output.tolist() == grid(base=5)


def test_malformed_json(tmp_path, small_kaggle):
    ch = tmp_path / "x_challenges.json"
    ch.write_text('{"aaaa0001": {"train": [\n  {"input": [[1]], "output": [[2]]},\n  ]}}')
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(ch)
    assert str(ei.value) == f"{ch}: line 3 col 3: invalid JSON: Expecting value"
    assert (ei.value.task_id, ei.value.where) == (None, "line 3 col 3")
    # skip: the whole file is skipped, the next source still loads
    problems = []
    got = load_tasks([ch, f"{small_kaggle}[:2]"], on_error="skip", problems=problems)
    assert [t.source for t in got] == [small_kaggle] * 2
    assert [p.action for p in problems] == ["skipped file"]
    # not UTF-8
    ch.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(TaskLoadError, match="not UTF-8 text"):
        load_tasks(ch)
    # the top level is not a mapping of tasks
    ch.write_text("[1, 2]")
    with pytest.raises(TaskLoadError, match="expected an object mapping task ids to tasks, found a list"):
        load_tasks(ch)


# ------------------------------------------------------------------------------------------
# solutions that do not match their challenges


@pytest.fixture
def kaggle_pair(tmp_path):
    ch = write_json(tmp_path / "arc-agi_training_challenges.json",
                    {"aaaa0001": task_dict(), "bbbb0002": task_dict(base=3), "cccc0003": task_dict(base=7)})
    sols = {"aaaa0001": [grid(base=5)], "bbbb0002": [grid(base=8)], "cccc0003": [grid(base=9)]}
    return ch, tmp_path / "arc-agi_training_solutions.json", sols


SOLUTION_PROBLEMS = [
    ("missing task", lambda s: s.pop("bbbb0002"), "bbbb0002", "",
     "no solution for this task, which arc-agi_training_challenges.json has"),
    ("too many outputs", lambda s: s["bbbb0002"].append(grid()), "bbbb0002", "",
     "2 test output(s) for 1 test input(s)"),
    ("no outputs", lambda s: s.__setitem__("aaaa0001", []), "aaaa0001", "", "0 test output(s) for 1 test input(s)"),
    ("not a list", lambda s: s.__setitem__("cccc0003", {"a": 1}), "cccc0003", "",
     "expected a list of test output grids, found an object"),
    ("bad colour", setitem(["bbbb0002", 0, 2, 3], 11), "bbbb0002", "test[0].output row 2 col 3",
     "colour 11 is outside 0-9"),
    ("ragged", setitem(["cccc0003", 0, 1], [1]), "cccc0003", "test[0].output row 1", "expected 6 cells, found 1"),
]


@pytest.mark.parametrize("name,mutate,task_id,where,detail", SOLUTION_PROBLEMS, ids=[s[0] for s in SOLUTION_PROBLEMS])
def test_solutions_that_do_not_match(kaggle_pair, name, mutate, task_id, where, detail):
    ch, sp, sols = kaggle_pair
    mutate(sols)
    write_json(sp, sols)
    expected = f"{sp}: task {task_id}: " + (f"{where}: " if where else "") + detail
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(ch)
    assert str(ei.value) == expected and ei.value.file == str(sp)
    problems = []
    got = load_tasks(ch, on_error="skip", problems=problems)
    # the task still loads (it can still be predicted), without test outputs
    assert [t.id for t in got] == ["aaaa0001", "bbbb0002", "cccc0003"]
    assert {t.id for t in got if not t.has_solutions} == {task_id}
    assert [(str(p), p.action) for p in problems] == [(expected, "loaded without solutions")]


def test_solutions_for_tasks_the_challenges_lack(kaggle_pair):
    ch, sp, sols = kaggle_pair
    sols["zzzz9999"] = [grid()]
    write_json(sp, sols)
    expected = f"{sp}: task zzzz9999: not a task of arc-agi_training_challenges.json"
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(ch)
    assert str(ei.value) == expected
    problems = []
    got = load_tasks(ch, on_error="skip", problems=problems)
    assert len(got) == 3 and all(t.has_solutions for t in got)
    assert [(str(p), p.action) for p in problems] == [(expected, "ignored")]
    # a subset is not expected to use every solution
    assert [t.id for t in load_tasks(f"{ch}[bbbb0002]")] == ["bbbb0002"]


def test_unreadable_solutions_file(kaggle_pair):
    ch, sp, _ = kaggle_pair
    sp.write_text('{"aaaa0001": [[[1]]],')
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(ch)
    assert str(ei.value).startswith(f"{sp}: line 1 col 22: invalid JSON: ")
    problems = []
    got = load_tasks(ch, on_error="skip", problems=problems)
    assert len(got) == 3 and not any(t.has_solutions for t in got)
    assert [p.action for p in problems] == ["loaded without solutions"]
    with pytest.raises(FileNotFoundError):
        load_tasks(ch, solutions=sp.with_name("nope.json"))


def test_solutions_that_disagree_with_outputs_in_the_challenges(tmp_path):
    f = write_json(tmp_path / "abcd1234.json", task_dict(test_output=True))
    sp = write_json(tmp_path / "sols.json", {"abcd1234": [grid(base=6)]})
    with pytest.raises(TaskLoadError, match=r"sols.json: task abcd1234: test\[0\].output: differs from the test "
                                            r"output in abcd1234.json"):
        load_tasks(f, solutions=sp)
    write_json(sp, {"abcd1234": [grid(base=5)]})
    assert load_tasks(f, solutions=sp)[0].has_solutions


# ------------------------------------------------------------------------------------------
# directories and single task files


def test_task_directory(tmp_path, arc1_eval):
    tasks = arc1_eval[10:16]
    d = tmp_path / "evaluation"
    d.mkdir()
    for t in reversed(tasks):
        write_json(d / f"{t.id}.json", t.to_json())
    (d / "README.md").write_text("not a task")
    got = load_tasks(d)
    same_tasks(got, tasks)
    assert [t.source for t in got] == [str(d / f"{t.id}.json") for t in tasks]
    same_tasks(load_tasks(d / f"{tasks[2].id}.json"), [tasks[2]])
    same_tasks(load_tasks(f"{d}[1:3]"), tasks[1:3])
    # the ARC repository layout one level up: subdirectories need recursive=True
    t2 = tmp_path / "training"
    t2.mkdir()
    write_json(t2 / "zzzz0000.json", task_dict(test_output=True))
    with pytest.raises(ValueError, match="subdirectories evaluation, training hold some.*recursive=True"):
        load_tasks(tmp_path)
    got = load_tasks(tmp_path, recursive=True)
    assert [t.id for t in got] == [t.id for t in tasks] + ["zzzz0000"]


def test_directory_with_bad_files(tmp_path, arc1_eval):
    for t in arc1_eval[:3]:
        write_json(tmp_path / f"{t.id}.json", t.to_json())
    (tmp_path / "0bad.json").write_text('{"train": [\n{"input": [[1]], "output": [[1]]}\n"test": []}')
    bad2 = task_dict()
    bad2["train"][0]["input"][0][0] = 12
    write_json(tmp_path / "1bad.json", bad2)
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(tmp_path)
    assert str(ei.value) == f"{tmp_path / '0bad.json'}: task 0bad: line 3 col 1: invalid JSON: Expecting ',' delimiter"
    problems = []
    got = load_tasks(tmp_path, on_error="skip", problems=problems)
    same_tasks(got, arc1_eval[:3])
    assert [str(p) for p in problems] == [
        f"{tmp_path / '0bad.json'}: task 0bad: line 3 col 1: invalid JSON: Expecting ',' delimiter",
        f"{tmp_path / '1bad.json'}: task 1bad: train[0].input row 0 col 0: colour 12 is outside 0-9"]
    assert [p.action for p in problems] == ["skipped task", "skipped task"]


def test_directory_with_solutions_file(tmp_path, arc1_eval):
    tasks = arc1_eval[:3]
    d = tmp_path / "test"
    d.mkdir()
    ch = tmp_path / "all_challenges.json"
    save_tasks_kaggle(tasks, ch, tmp_path / "all_solutions.json")
    for tid, t in json.loads(ch.read_text()).items():
        write_json(d / f"{tid}.json", t)
    assert not any(t.has_solutions for t in load_tasks(d))
    same_tasks(load_tasks(d, solutions=tmp_path / "all_solutions.json"), tasks)


# ------------------------------------------------------------------------------------------
# BARC jsonl


def barc_line(task, **fields):
    ex = [[p.input.tolist(), p.output.tolist()] for p in task.train + task.test]
    return json.dumps({"examples": ex, **fields})


def test_barc_jsonl(tmp_path, arc1_eval):
    tasks = arc1_eval[:4]
    f = tmp_path / "gen.jsonl"
    f.write_text("\n".join([barc_line(tasks[0], uid="first"), barc_line(tasks[1]), "",
                            barc_line(tasks[2], seeds=["x.py"]), barc_line(tasks[3], id=17)]) + "\n")
    got = load_tasks(f)
    assert [t.id for t in got] == ["first", "gen:2", "gen:4", "17"]
    assert [t.meta["line"] for t in got] == [1, 2, 4, 5]
    for t, ref in zip(got, tasks):
        pairs = ref.train + ref.test
        assert len(t.test) == 1 and len(t.train) == len(pairs) - 1
        for p, q in zip(t.train + t.test, pairs):
            assert np.array_equal(p.input, q.input) and np.array_equal(p.output, q.output)
    capped = load_tasks(f, max_examples=3, n_test=2)
    assert [(len(t.train), len(t.test)) for t in capped] == [(1, 2)] * 4
    assert np.array_equal(capped[1].train[0].output, tasks[1].train[0].output)
    assert np.array_equal(capped[1].test[1].input, tasks[1].train[2].input)  # example 2 of 5
    assert [t.id for t in load_tasks(f"{f}[1:3]")] == ["gen:2", "gen:4"]
    assert [t.id for t in load_tasks(f, select=["17", "first"])] == ["17", "first"]


def test_barc_bad_lines(tmp_path, arc1_eval):
    t = arc1_eval[0]
    bad_cell = json.loads(barc_line(t, uid="badcell"))
    bad_cell["examples"][1][1][0][0] = 10
    f = tmp_path / "gen.jsonl"
    f.write_text("\n".join([barc_line(t), '{"examples": [[[[1]], [[2]]],', json.dumps(bad_cell),
                            json.dumps({"examples": [[[[1]], [[2]]]]}), json.dumps({"uid": "x"}),
                            barc_line(arc1_eval[1])]))
    expected = [
        f"{f}: task gen:2: line 2 col 30: invalid JSON: Expecting value",
        f"{f}: task badcell: line 3, examples[1].output row 0 col 0: colour 10 is outside 0-9",
        f"{f}: task gen:4: line 4, examples: needs at least 2 examples (1 test + 1 train), found 1",
        f"{f}: task x: line 5: missing key 'examples'",
    ]
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(f)
    assert str(ei.value) == expected[0]
    problems = []
    got = load_tasks(f, on_error="skip", problems=problems)
    assert [x.id for x in got] == ["gen:1", "gen:6"]
    assert [str(p) for p in problems] == expected


# ------------------------------------------------------------------------------------------
# RE-ARC generated pairs


def rearc_pairs(tasks, n):
    pairs = [{"input": p.input.tolist(), "output": p.output.tolist()} for t in tasks for p in t.train + t.test]
    return (pairs * (n // len(pairs) + 1))[:n]


def test_rearc_directory(tmp_path, arc1_eval):
    d = tmp_path / "tasks"
    d.mkdir()
    files = {"k1": rearc_pairs(arc1_eval[0:3], 12), "k2": rearc_pairs(arc1_eval[3:6], 9),
             "k0": rearc_pairs(arc1_eval[6:9], 20)}
    for k, pairs in files.items():
        write_json(d / f"{k}.json", pairs)
    got = load_tasks(d, n_train=3, n_test=1, tasks_per_file=2)
    assert [t.id for t in got] == ["k0.0", "k0.1", "k1.0", "k1.1", "k2.0", "k2.1"]
    for t in got:
        key = t.meta["generator"]
        idx = t.meta["pairs"]
        assert (len(t.train), len(t.test)) == (3, 1) and len(set(idx)) == 4
        for p, i in zip(t.train + t.test, idx):
            assert p.input.tolist() == files[key][i]["input"] and p.output.tolist() == files[key][i]["output"]
    for k in files:  # a generator's tasks never share a pair
        a, b = (t.meta["pairs"] for t in got if t.meta["generator"] == k)
        assert not set(a) & set(b)
    # deterministic per seed, independent of the other files, different for another seed
    again = load_tasks(d / "k1.json", n_train=3, n_test=1, tasks_per_file=2)
    assert [t.meta["pairs"] for t in again] == [t.meta["pairs"] for t in got[2:4]]
    other = load_tasks(d, n_train=3, tasks_per_file=2, seed=1)
    assert [t.meta["pairs"] for t in other] != [t.meta["pairs"] for t in got]
    # one file mapping keys to pair lists gives the same tasks
    mapping = write_json(tmp_path / "all.json", files)
    assert [(t.id, t.meta["pairs"]) for t in load_tasks(mapping, tasks_per_file=2)] == \
        [(t.id, t.meta["pairs"]) for t in got]
    assert [t.id for t in load_tasks(f"{d}[k2.1,k0.0]", tasks_per_file=2)] == ["k2.1", "k0.0"]


def test_rearc_problems(tmp_path, arc1_eval):
    d = tmp_path / "tasks"
    d.mkdir()
    write_json(d / "a.json", rearc_pairs(arc1_eval[:2], 10))
    bad = rearc_pairs(arc1_eval[:2], 5)
    for p in bad:
        p["input"][0][0] = 10
    write_json(d / "b.json", bad)
    # the documented seeding: b's pairs shuffled by a generator seeded with (seed, crc32("b"))
    first = int(np.random.default_rng([0, zlib.crc32(b"b")]).permutation(5)[0])
    expected = [f"{d / 'a.json'}: task a.2: task 2 needs 15 pairs (3 task(s) of 4 train + 1 test), found 10",
                f"{d / 'b.json'}: task b.0: pairs[{first}].input row 0 col 0: colour 10 is outside 0-9"]
    with pytest.raises(TaskLoadError) as ei:
        load_tasks(d, n_train=4, tasks_per_file=3)
    assert str(ei.value) == expected[0]
    problems = []
    got = load_tasks(d, n_train=4, tasks_per_file=3, on_error="skip", problems=problems)
    assert [t.id for t in got] == ["a.0", "a.1"]
    # b.0 hits the bad pair it samples first; b.1 and b.2 lack pairs
    assert [str(p) for p in problems][:2] == expected
    assert len(problems) == 4


# ------------------------------------------------------------------------------------------
# several sources, the call itself, the error type, writing


def test_duplicate_ids_across_sources(small_kaggle):
    ch = small_kaggle
    with pytest.raises(TaskLoadError) as ei:
        load_tasks([f"{ch}[:2]", f"{ch}[1:3]"])
    assert str(ei.value) == f"{ch}: task 009d5c81: duplicate task id (first loaded from {ch})"
    problems = []
    got = load_tasks([f"{ch}[:2]", f"{ch}[1:3]"], on_error="skip", problems=problems)
    assert [t.id for t in got] == ["00576224", "009d5c81", "00dbd492"]
    assert [(p.task_id, p.action) for p in problems] == [("009d5c81", "skipped task")]


def test_mistakes_in_the_call(tmp_path, kaggle_pair):
    ch = kaggle_pair[0]
    with pytest.raises(ValueError, match="on_error must be"):
        load_tasks("arc1:eval", on_error="ignore")
    with pytest.raises(ValueError, match="unknown bundled set 'arc3'"):
        load_tasks("arc3:eval")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_tasks("arc1:test")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_tasks(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="n_train= applies to rearc sources"):
        load_tasks(ch, n_train=2)
    with pytest.raises(ValueError, match="max_examples= applies to barc"):
        load_tasks("arc1:eval", max_examples=3)
    with pytest.raises(ValueError, match="select= applies to a single source"):
        load_tasks(["arc1:eval", "arc2:eval"], select=slice(3))
    with pytest.raises(ValueError, match="max_size must be"):
        load_tasks("arc1:eval", max_size=0)
    with pytest.raises(ValueError, match="fmt must be one of"):
        load_tasks(ch, fmt="csv")
    with pytest.raises(ValueError, match="solutions= applies to Kaggle"):
        load_tasks("arc1:eval", solutions=ch)
    with pytest.raises(ValueError, match="slice step cannot be zero"):
        load_tasks("arc1:eval[::0]")
    # fmt= overrides the detection
    with pytest.raises(TaskLoadError, match="missing key 'train'"):
        load_tasks(ch, fmt="arc")


def test_error_pickles_with_its_fields():
    e = TaskLoadError("f.json", "abc", "train[0].input", "empty grid (no rows)", action="skipped task")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.task_id, e2.where, e2.detail, e2.action, str(e2)) == \
        ("f.json", "abc", "train[0].input", "empty grid (no rows)", "skipped task",
         "f.json: task abc: train[0].input: empty grid (no rows)")
    assert isinstance(e2, ValueError)


def test_save_tasks_kaggle(tmp_path, arc1_eval):
    tasks = arc1_eval[:2]
    ch, sp = tmp_path / "a_challenges.json", tmp_path / "a_solutions.json"
    ch.write_text("old")
    save_tasks_kaggle(tasks, ch)
    assert not sp.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_challenges.json"]
    assert list(json.loads(ch.read_text())) == [t.id for t in tasks]
    bare = load_tasks(ch)
    with pytest.raises(ValueError, match=f"task {tasks[0].id} has no output for test\\[0\\]"):
        save_tasks_kaggle(bare, tmp_path / "b_challenges.json", tmp_path / "b_solutions.json")
    assert not (tmp_path / "b_challenges.json").exists()
    with pytest.raises(ValueError, match="duplicate task id"):
        save_tasks_kaggle([tasks[0], tasks[0]], ch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_challenges.json"]  # no temporary files left


def test_grids_are_independent_arrays(arc1_eval, small_kaggle):
    t = load_tasks(f"{small_kaggle}[0]")[0]
    t.train[0].input[0, 0] = 9 - t.train[0].input[0, 0]
    assert not np.array_equal(t.train[0].input, arc1_eval[0].train[0].input)
    assert np.array_equal(load_tasks(f"{small_kaggle}[0]")[0].train[0].input, arc1_eval[0].train[0].input)


def test_lists_of_sources_keep_their_order(arc1_eval, small_kaggle):
    got = load_tasks([f"{small_kaggle}[3:5]", "arc1:eval[0]"])
    assert [t.id for t in got] == [arc1_eval[3].id, arc1_eval[4].id, arc1_eval[0].id]
