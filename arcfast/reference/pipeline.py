"""Plain-Python reference of the data pipeline (C++: csrc/augment.h, sampler.h, packing.h, pipeline.cpp).

Readable and slow: numpy for grid transforms, Python lists for encoding. Tests hold the C++ core
equal to this module exactly, so the formulas below are the specification of what a sample is:

Random streams (splitmix64, all arithmetic mod 2**64)::

    mix(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
    combine(h, v) = mix(h ^ mix(v + 0x9E3779B97F4A7C15))
    Rng(s).next() = s += 0x9E3779B97F4A7C15; mix(s)
    below(n)      = (next() * n) >> 64              uniform(): (next() >> 11) * 2**-53
    shuffle(xs)   = for i from len-1 down to 1: swap xs[i], xs[below(i + 1)]

A task is keyed by ``fnv1a64(task.id)``; with ``tk = combine(seed, key)``, slot ``index`` of a task,
draw ``attempt``, uses ``Rng(combine(combine(combine(tk, 1), index), attempt))``. Stream tags: 1 a
draw, 2 the target epochs of the output/verify pool, 3 test-time augmentations (arcfast.arc.augment),
4 the objective of a slot, 5 the target epochs of the input pool.

Drawing one sample (``draw_plan``), in this order:

0. the objective (once per slot, the same for every attempt): with ``w`` the weights of
   ``("output", "input", "verify")`` (ids 0, 1, 2), the only one with ``w > 0`` when there is one
   (nothing drawn); else ``x = Rng(combine(combine(tk, 4), index)).uniform() * sum(w)`` and the first
   ``j`` with ``w[j] > 0`` and ``x < w[0] + ... + w[j]`` (sums in id order, in doubles);
1. the pool: for ``output`` and ``verify``, the task's train pairs (``ttft``), plus its test pairs with
   known outputs (``pretrain``); for ``input``, every pair's input, train then test, in both modes;
2. the target: at attempt 0, ``perm[index % n]`` where ``perm`` is ``range(n)`` shuffled by
   ``Rng(combine(combine(tk, e), index // n))``, ``e = 2`` (output, verify) or ``5`` (input): each run
   of n slots of one pool has every pair as target once; at a later attempt, ``below(n)``. Under the
   ``swap_bug`` ablation, for output and verify (n >= 2), every ``n`` here is ``n - 1``: the pool's
   last pair is never the target;
3. demonstrations: the other pairs in pool order, shuffled (``shuffle_demos``), cut to ``max_demos``;
4. the dihedral transform: ``transforms[below(len(transforms))]``;
5. colours (``permute_colors``): ``uniform() < keep_zero_prob`` keeps 0 and shuffles 1-9, else all ten are shuffled;
6. (``verify`` only) the candidate, in the task's original frame (``draw_candidate``):
   ``uniform() < verify_right``: the right output (label YES); else, when the target pair has listed
   wrong predictions, ``below(2) == 0`` takes one of them, ``below(count)`` (label NO); else a
   corruption of kind ``2 + below(8)`` of ``CANDIDATE_KINDS`` (label NO), whose own draws follow
   (``corrupt``). A kind that cannot apply (a side at ``max_size`` or 1, a grid no dihedral transform
   changes, an input equal to the output) draws nothing and ``cells`` is drawn instead; no
   corruption ever equals the right output;
7. a composition, when ``composition_prob > 0`` and ``uniform() < composition_prob``: side, kind, then
   geometric ``1 + below(7)``; pad ``1 + below(5)``, colour ``below(10)``; upscale ``same = below(2) == 0``,
   ``fy = 2 + below(3)``, ``fx = fy if same else 2 + below(3)``; mirror axis ``below(2)``, flip-first ``below(2)``.
   Dropped when a grid the prompt shows on its side would exceed ``max_size`` (for verify, the
   candidate stands for the target's output; an input sample shows no output, so an output-side
   composition is kept and composes nothing);
8. the length limit: drop demonstrations from the end until the prompt fits (keeping one) or reject the
   draw; a rejected draw is retried at ``attempt + 1``, up to ``max_attempts``.

Every grid of a prompt, the verify candidate included (as an output grid), is augmented as
``dihedral(colors[compose(g)])``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from ..arc import vocab as T
from ..arc.rng import Rng, combine, fnv1a64, shuffle

TAG_SAMPLE, TAG_EPOCH, TAG_OBJECTIVE, TAG_EPOCH_INPUT = 1, 2, 4, 5

OBJECTIVES = ("output", "input", "verify")
CANDIDATE_KINDS = ("right", "prediction", "cells", "swap_colors", "add_row", "drop_row", "add_col", "drop_col",
                   "transform", "input")
FIRST_CORRUPTION = 2

KIND_IDS = {"geometric": 1, "pad": 2, "upscale": 3, "mirror": 4}
SIDE_IDS = {"input": 0, "output": 1}


# ------------------------------------------------------------------------------------------------
# grid transforms

def dihedral(g: np.ndarray, t: int) -> np.ndarray:
    """Transform t of the 8 (0 id, 1 rot90, 2 rot180, 3 rot270, 4 transpose, 5 fliplr, 6 flipud, 7 anti-transpose)."""
    ops = (
        lambda a: a,
        lambda a: np.rot90(a, 1),
        lambda a: np.rot90(a, 2),
        lambda a: np.rot90(a, 3),
        lambda a: a.T,
        lambda a: np.fliplr(a),
        lambda a: np.flipud(a),
        lambda a: np.rot90(a, 2).T,
    )
    return np.ascontiguousarray(ops[t](g))


def dihedral_inverse(t: int) -> int:
    return {1: 3, 3: 1}.get(t, t)


def compose_shape(kind: int, a: int, b: int, h: int, w: int) -> tuple[int, int]:
    if kind == 1:
        return (w, h) if a in (1, 3, 4, 7) else (h, w)
    if kind == 2:
        return h + 2 * a, w + 2 * a
    if kind == 3:
        return h * a, w * b
    if kind == 4:
        return (2 * h, w) if a == 0 else (h, 2 * w)
    return h, w


def compose(kind: int, a: int, b: int, g: np.ndarray) -> np.ndarray:
    if kind == 1:
        return dihedral(g, a)
    if kind == 2:
        return np.pad(g, a, mode="constant", constant_values=b).astype(np.uint8)
    if kind == 3:
        return np.repeat(np.repeat(g, a, axis=0), b, axis=1)
    if kind == 4:
        flipped = np.flipud(g) if a == 0 else np.fliplr(g)
        halves = (flipped, g) if b == 1 else (g, flipped)
        return np.ascontiguousarray(np.concatenate(halves, axis=a))
    return g


def decompose(kind: int, a: int, b: int, g: np.ndarray) -> Optional[np.ndarray]:
    """The inverse of ``compose`` on a predicted grid, or None when the grid cannot have come from it."""
    h, w = g.shape
    if kind == 1:
        return dihedral(g, dihedral_inverse(a))
    if kind == 2:
        if h <= 2 * a or w <= 2 * a:
            return None
        inner = g[a:h - a, a:w - a]
        if not np.array_equal(compose(2, a, b, inner), g):
            return None
        return np.ascontiguousarray(inner)
    if kind == 3:
        if h % a or w % b:
            return None
        small = np.ascontiguousarray(g[::a, ::b])
        return small if np.array_equal(compose(3, a, b, small), g) else None
    if kind == 4:
        n = h if a == 0 else w
        if n % 2:
            return None
        half = n // 2
        first, second = (g[:half], g[half:]) if a == 0 else (g[:, :half], g[:, half:])
        orig = second if b == 1 else first
        orig = np.ascontiguousarray(orig)
        return orig if np.array_equal(compose(4, a, b, orig), g) else None
    return g


def augment_grid(g: np.ndarray, side: int, transform: int, colors: Sequence[int],
                 comp: Optional[tuple[int, int, int, int]]) -> np.ndarray:
    """Composition (when on ``side``), colour map, dihedral: uint8 [h', w']."""
    g = np.asarray(g, dtype=np.uint8)
    if comp is not None and comp[0] == side:
        g = compose(comp[1], comp[2], comp[3], g)
    lut = np.asarray(colors, dtype=np.uint8)
    return dihedral(lut[g], transform)


def invert_output(g: np.ndarray, transform: int, colors: Sequence[int],
                  comp: Optional[tuple[int, int, int, int]]) -> Optional[np.ndarray]:
    inv = np.zeros(10, dtype=np.uint8)
    inv[np.asarray(colors, dtype=np.int64)] = np.arange(10, dtype=np.uint8)
    g = inv[dihedral(np.asarray(g, dtype=np.uint8), dihedral_inverse(transform))]
    if comp is not None and comp[0] == 1:
        return decompose(comp[1], comp[2], comp[3], g)
    return np.ascontiguousarray(g)


def encode(g: np.ndarray) -> list[int]:
    out: list[int] = []
    for row in g.tolist():
        out.extend(row)
        out.append(T.ROW)
    out.append(T.EOG)
    return out


# ------------------------------------------------------------------------------------------------
# sampling

def pool_pairs(task, mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [(p.input, p.output) for p in task.train]
    if mode == "pretrain":
        pairs += [(p.input, p.output) for p in task.test if p.output is not None]
    return pairs


def pool_pair_index(task, mode: str) -> list[int]:
    """The pair index (train i: i, test k: n_train + k) of each pool index of output / verify."""
    n = len(task.train)
    out = list(range(n))
    if mode == "pretrain":
        out += [n + k for k, p in enumerate(task.test) if p.output is not None]
    return out


def input_pool(task) -> list[tuple[np.ndarray, None]]:
    """The input objective's pool: every pair's input, train then test (any mode)."""
    return [(p.input, None) for p in task.train] + [(p.input, None) for p in task.test]


def objective_pool(task, mode: str, objective: int) -> list:
    return input_pool(task) if objective == 1 else pool_pairs(task, mode)


def objective_weights(sc) -> list[float]:
    w = dict(getattr(sc, "objectives", (("output", 1.0),)))
    return [float(w.get(k, 0.0)) for k in OBJECTIVES]


def wrong_lists(task, wrong) -> dict[int, list[np.ndarray]]:
    """The task's listed wrong predictions by pair index, minus any equal to the pair's output."""
    pairs = list(task.train) + list(task.test)
    out = {}
    for k, grids in ((wrong or {}).get(task.id) or {}).items():
        right = pairs[int(k)].output
        out[int(k)] = [np.asarray(g, dtype=np.uint8) for g in grids
                       if not np.array_equal(np.asarray(g, dtype=np.uint8), right)]
    return out


@dataclass
class Plan:
    task: int
    index: int
    attempt: int
    target: int
    pairs: list  # pool indices: demonstrations, then the target
    transform: int
    colors: list
    comp: Optional[tuple[int, int, int, int]]
    composed: list = field(default_factory=list)
    length: int = 0
    dropped: int = 0
    seq: int = 0
    born: int = 0
    objective: int = 0                      # id in OBJECTIVES
    cand_kind: int = -1                     # verify: id in CANDIDATE_KINDS
    candidate: Optional[np.ndarray] = None  # verify: the candidate, original frame
    cand_fallback: bool = False


@dataclass
class Counters:
    drawn: int = 0
    skipped: int = 0
    dropped_demos: int = 0
    trimmed: int = 0
    empty_slots: int = 0
    compositions: int = 0
    compositions_dropped: int = 0
    objective_output: int = 0
    objective_input: int = 0
    objective_verify: int = 0
    candidate_right: int = 0
    candidate_prediction: int = 0
    candidate_cells: int = 0
    candidate_swap_colors: int = 0
    candidate_add_row: int = 0
    candidate_drop_row: int = 0
    candidate_add_col: int = 0
    candidate_drop_col: int = 0
    candidate_transform: int = 0
    candidate_input: int = 0
    candidate_fallbacks: int = 0

    def count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def add(self, o: "Counters") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(o, k))


def _glen(g: np.ndarray, t: int) -> int:
    h, w = g.shape
    if t in (1, 3, 4, 7):
        h, w = w, h
    return T.grid_len(h, w)


def _grids(pool, plan: Plan, i: int):
    """(input, output) grids prompt pair i shows, before colours and dihedral: composed on the
    composition's side; a verify target's output is its candidate; an input sample has no output."""
    pin, pout = pool[plan.pairs[i]]
    if plan.objective == 2 and i == len(plan.pairs) - 1:
        pout = plan.candidate
    if plan.comp is not None and plan.composed:
        if plan.comp[0] == 0:
            pin = plan.composed[i]
        else:
            pout = plan.composed[i]
    return pin, pout


def _length(pool, plan: Plan) -> int:
    n = 1
    for i in range(len(plan.pairs)):
        gi, go = _grids(pool, plan, i)
        n += 1 + _glen(gi, plan.transform)
        if plan.objective != 1:
            n += 1 + _glen(go, plan.transform)
    return n + (2 if plan.objective == 2 else 0)


def draw_objective(tk: int, index: int, sc) -> int:
    """Step 0 of the module docstring: the objective id of slot ``index``."""
    w = objective_weights(sc)
    positive = [j for j in range(len(w)) if w[j] > 0]
    if len(positive) <= 1:
        return positive[0] if positive else 0
    total = 0.0
    for j in positive:
        total += w[j]
    x = Rng(combine(combine(tk, TAG_OBJECTIVE), index)).uniform() * total
    acc = 0.0
    for j in positive:
        acc += w[j]
        if x < acc:
            return j
    return positive[-1]


def corrupt(kind: int, right: np.ndarray, inp: np.ndarray, max_size: int, rng: Rng) -> Optional[np.ndarray]:
    """A corruption of ``right`` of kind ``CANDIDATE_KINDS[kind]``, or None (nothing drawn) when the
    kind cannot apply. The draws of each kind:

    - ``cells``: ``k = 1 + below(max(1, h*w // 10))`` distinct cells, each picked by a step of a
      forward partial Fisher-Yates over the positions ``0 .. h*w-1`` (``swap(pos[j], pos[j +
      below(h*w - j)])``) and given colour ``(old + 1 + below(9)) % 10``;
    - ``swap_colors``: the colours present, ascending; with 2 or more, ``a = below(n)``, ``b =
      below(n - 1)`` (plus one when ``>= a``), the two swapped everywhere; with one, it becomes
      ``(c + 1 + below(9)) % 10``;
    - ``add_row`` (``h < max_size``): insert at ``r = below(h + 1)``; ``below(2) == 0`` copies a
      neighbour (row 0 when ``r == 0``, row ``h - 1`` when ``r == h``, else row ``r - 1 + below(2)``),
      otherwise ``w`` colours ``below(10)``, left to right; ``add_col`` the same on columns (top to
      bottom);
    - ``drop_row`` (``h > 1``): remove row ``below(h)``; ``drop_col`` the same on columns;
    - ``transform``: among the dihedral transforms 1-7 whose image differs from ``right``, the
      ``below(count)``-th;
    - ``input``: the pair's input grid, when it differs from ``right`` (no draw).
    """
    right = np.asarray(right, dtype=np.uint8)
    h, w = right.shape
    name = CANDIDATE_KINDS[kind]
    if name == "cells":
        out = right.copy().reshape(-1)
        n = h * w
        k = 1 + rng.below(max(1, n // 10))
        pos = list(range(n))
        flat = right.reshape(-1)
        for j in range(k):
            s = j + rng.below(n - j)
            pos[j], pos[s] = pos[s], pos[j]
            out[pos[j]] = (int(flat[pos[j]]) + 1 + rng.below(9)) % 10
        return out.reshape(h, w)
    if name == "swap_colors":
        present = sorted(set(right.reshape(-1).tolist()))
        lut = np.arange(10, dtype=np.uint8)
        if len(present) >= 2:
            ai = rng.below(len(present))
            bi = rng.below(len(present) - 1)
            if bi >= ai:
                bi += 1
            a, b = present[ai], present[bi]
            lut[a], lut[b] = b, a
        else:
            lut[present[0]] = (present[0] + 1 + rng.below(9)) % 10
        return lut[right]
    if name in ("add_row", "add_col"):
        g = right if name == "add_row" else right.T
        side, across = g.shape
        if side >= max_size:
            return None
        at = rng.below(side + 1)
        if rng.below(2) == 0:
            src = 0 if at == 0 else side - 1 if at == side else at - 1 + rng.below(2)
            line = g[src].copy()
        else:
            line = np.array([rng.below(10) for _ in range(across)], dtype=np.uint8)
        out = np.concatenate([g[:at], line[None, :], g[at:]], axis=0)
        return np.ascontiguousarray(out if name == "add_row" else out.T)
    if name in ("drop_row", "drop_col"):
        axis = 0 if name == "drop_row" else 1
        if right.shape[axis] <= 1:
            return None
        return np.ascontiguousarray(np.delete(right, rng.below(right.shape[axis]), axis=axis))
    if name == "transform":
        ok = [t for t in range(1, 8) if not np.array_equal(dihedral(right, t), right)]
        if not ok:
            return None
        return dihedral(right, ok[rng.below(len(ok))])
    if name == "input":
        inp = np.asarray(inp, dtype=np.uint8)
        return None if np.array_equal(inp, right) else np.ascontiguousarray(inp)
    raise ValueError(f"not a corruption kind: {kind}")


def draw_candidate(right: np.ndarray, inp: np.ndarray, listed: list, verify_right: float, max_size: int,
                   rng: Rng) -> tuple[np.ndarray, int, bool]:
    """Step 6 of the module docstring: (candidate, kind id, fell back to cells)."""
    if rng.uniform() < verify_right:
        return np.asarray(right, dtype=np.uint8), 0, False
    if listed and rng.below(2) == 0:
        return listed[rng.below(len(listed))], 1, False
    kind = FIRST_CORRUPTION + rng.below(len(CANDIDATE_KINDS) - FIRST_CORRUPTION)
    cand = corrupt(kind, right, inp, max_size, rng)
    if cand is None or np.array_equal(cand, right):
        return corrupt(2, right, inp, max_size, rng), 2, True
    return cand, kind, False


def draw_plan(task, task_idx: int, index: int, attempt: int, seed: int, sc, ac, cnt: Counters,
              wrong=None) -> Optional[Plan]:
    """One draw of a slot; None when it cannot fit ``sc.max_len`` (counted by the caller)."""
    tk = combine(seed, fnv1a64(task.id))
    obj = draw_objective(tk, index, sc)
    pool = objective_pool(task, sc.mode, obj)
    n = len(pool)
    nt = n - 1 if sc.swap_bug and obj != 1 and n > 1 else n   # pairs that can be targets
    rng = Rng(combine(combine(combine(tk, TAG_SAMPLE), index), attempt))
    if attempt == 0:
        perm = list(range(nt))
        shuffle(perm, Rng(combine(combine(tk, TAG_EPOCH_INPUT if obj == 1 else TAG_EPOCH), index // nt)))
        target = perm[index % nt]
    else:
        target = rng.below(nt)
    demos = [i for i in range(n) if i != target]
    if ac.shuffle_demos:
        shuffle(demos, rng)
    if sc.max_demos > 0:
        demos = demos[: sc.max_demos]
    transforms = list(ac.transforms)
    transform = transforms[rng.below(len(transforms))]
    colors = list(range(10))
    if ac.permute_colors:
        if rng.uniform() < ac.keep_zero_prob:
            rest = colors[1:]
            shuffle(rest, rng)
            colors = [0] + rest
        else:
            shuffle(colors, rng)
    plan = Plan(task_idx, index, attempt, target, demos + [target], transform, colors, None, objective=obj)
    if obj == 2:
        pair = pool_pair_index(task, sc.mode)[target]
        pin, pout = pool[target]
        listed = wrong_lists(task, wrong).get(pair, [])
        plan.candidate, plan.cand_kind, plan.cand_fallback = draw_candidate(
            pout, pin, listed, getattr(sc, "verify_right", 0.5), ac.max_size, rng)
    comp_dropped = False
    if ac.composition_prob > 0 and rng.uniform() < ac.composition_prob:
        sides = [SIDE_IDS[s] for s in ac.composition_sides]
        kinds = [KIND_IDS[k] for k in ac.composition_kinds]
        side = sides[rng.below(len(sides))]
        kind = kinds[rng.below(len(kinds))]
        a = b = 0
        if kind == 1:
            a = 1 + rng.below(7)
        elif kind == 2:
            a = 1 + rng.below(5)
            b = rng.below(10)
        elif kind == 3:
            same = rng.below(2) == 0
            a = 2 + rng.below(3)
            b = a if same else 2 + rng.below(3)
        elif kind == 4:
            a = rng.below(2)
            b = rng.below(2)
        if obj == 1 and side == 1:
            grids = []  # an input sample shows no output grid
        else:
            grids = [pool[i][side] for i in plan.pairs]
            if obj == 2 and side == 1:
                grids[-1] = plan.candidate
        if all(max(compose_shape(kind, a, b, *g.shape)) <= ac.max_size for g in grids):
            plan.comp = (side, kind, a, b)
            plan.composed = [compose(kind, a, b, g) for g in grids]
        else:
            comp_dropped = True
    length = _length(pool, plan)
    dropped = 0
    if length > sc.max_len:
        if sc.on_too_long == "skip":
            return None
        while length > sc.max_len and len(plan.pairs) > 2:
            del plan.pairs[-2]
            if plan.composed:
                del plan.composed[-2]
            dropped += 1
            length = _length(pool, plan)
        if length > sc.max_len:
            return None
    plan.length = length
    plan.dropped = dropped
    cnt.drawn += 1
    cnt.dropped_demos += dropped
    cnt.trimmed += dropped > 0
    cnt.compositions += plan.comp is not None
    cnt.compositions_dropped += comp_dropped
    cnt.count("objective_" + OBJECTIVES[obj])
    if obj == 2:
        cnt.count("candidate_" + CANDIDATE_KINDS[plan.cand_kind])
        cnt.candidate_fallbacks += plan.cand_fallback
    return plan


def plan_slot(task, task_idx: int, index: int, seed: int, sc, ac, cnt: Counters, wrong=None) -> Optional[Plan]:
    for attempt in range(sc.max_attempts):
        plan = draw_plan(task, task_idx, index, attempt, seed, sc, ac, cnt, wrong)
        if plan is not None:
            return plan
        cnt.skipped += 1
    cnt.empty_slots += 1
    return None


def write_plan(task, plan: Plan, sc) -> tuple[list[int], list[int]]:
    """(ids, HF-aligned labels) of a plan's prompt (layouts and loss: docs/FORMAT.md, "Objectives")."""
    pool = objective_pool(task, sc.mode, plan.objective)
    ids = [T.BOS]
    labels = [T.IGNORE_INDEX]
    last = len(plan.pairs) - 1
    verify = plan.objective == 2
    for i in range(len(plan.pairs)):
        gi, go = _grids(pool, plan, i)
        gi = augment_grid(gi, -1, plan.transform, plan.colors, None)
        loss = (i == last or (sc.loss_on == "outputs" and i > 0)) and not verify
        if plan.objective == 1:
            body = encode(gi)
            ids += [T.INPUT] + body
            labels += [T.IGNORE_INDEX] + (body if loss else [T.IGNORE_INDEX] * len(body))
            continue
        go = augment_grid(go, -1, plan.transform, plan.colors, None)
        head = [T.INPUT] + encode(gi) + [T.CANDIDATE if verify and i == last else T.OUTPUT]
        body = encode(go)
        ids += head + body
        labels += [T.IGNORE_INDEX] * len(head)
        labels += body if loss else [T.IGNORE_INDEX] * len(body)
    if verify:
        verdict = T.YES if plan.cand_kind == 0 else T.NO
        ids += [T.VERDICT, verdict]
        labels += [T.IGNORE_INDEX, verdict]
    return ids, labels


def make_samples(tasks, n_per_task: int, seed: int, sc, ac, wrong=None) -> tuple[list[tuple[Plan, list, list]], Counters]:
    cnt = Counters()
    out = []
    for t, task in enumerate(tasks):
        for i in range(n_per_task):
            plan = plan_slot(task, t, i, seed, sc, ac, cnt, wrong)
            if plan is not None:
                ids, labels = write_plan(task, plan, sc)
                out.append((plan, ids, labels))
    return out, cnt


def inference_prompt(task, test_index: int, transform: int, colors, comp, order, max_len: int,
                     candidate=None) -> tuple[list[int], list[int]]:
    """(ids, demonstrations used): BOS, demonstrations, the test input, then OUTPUT; with a
    ``candidate`` (original frame), CANDIDATE, the candidate augmented as an output grid, VERDICT."""
    order = list(order)

    def grid(g, side):
        return augment_grid(g, side, transform, colors, comp)

    def demo(i):
        p = task.train[i]
        return [T.INPUT] + encode(grid(p.input, 0)) + [T.OUTPUT] + encode(grid(p.output, 1))

    tail = [T.INPUT] + encode(grid(task.test[test_index].input, 0))
    if candidate is None:
        tail += [T.OUTPUT]
    else:
        tail += [T.CANDIDATE] + encode(grid(np.asarray(candidate, dtype=np.uint8), 1)) + [T.VERDICT]
    demos = [demo(i) for i in order]
    while max_len > 0 and 1 + sum(map(len, demos)) + len(tail) > max_len and len(demos) > 1:
        demos.pop()
        order.pop()
    ids = [T.BOS] + [x for d in demos for x in d] + tail
    if max_len > 0 and len(ids) > max_len:
        raise ValueError(f"task {task.id}: test {test_index}: the prompt takes {len(ids)} tokens "
                         f"with one demonstration, over max_len {max_len}")
    return ids, order


def verify_prompt(task, test_index: int, candidate, transform: int, colors, comp, order,
                  max_len: int) -> tuple[list[int], list[int]]:
    """(ids, demonstrations used) of the verification prompt: ends with VERDICT."""
    return inference_prompt(task, test_index, transform, colors, comp, order, max_len, candidate)


# ------------------------------------------------------------------------------------------------
# packing

def best_fit_decreasing(lens: Sequence[int], keys: Sequence[int], row_len: int, rows: int,
                        urgent: Optional[Sequence[bool]] = None):
    """(row of each sample or -1, offset of each, rows used); rows <= 0 opens rows as needed.

    Urgent samples go first, in key order; then the rest by decreasing length, ties by key.
    """
    urgent = urgent or [False] * len(lens)
    order = sorted(range(len(lens)), key=lambda i: (0, 0, keys[i]) if urgent[i] else (1, -lens[i], keys[i]))
    used = [0] * max(rows, 0)
    row_of = [-1] * len(lens)
    off_of = [0] * len(lens)
    for i in order:
        L = lens[i]
        best, best_free = -1, row_len + 1
        for r, u in enumerate(used):
            free = row_len - u
            if L <= free < best_free:
                best, best_free = r, free
        if best < 0:
            if rows > 0 or L > row_len:
                continue
            best = len(used)
            used.append(0)
        row_of[i], off_of[i] = best, used[best]
        used[best] += L
    return row_of, off_of, len(used)


def lay_out(items: Sequence[tuple], row_of, off_of, rows: int, row_len: int) -> dict:
    """Arrays of a PackedBatch from placed (ids, labels, adapter) items (conventions: arcfast/samples/batch.py).

    Items of four, (ids, labels, adapter, objective id), also give ``objective_ids``: int32
    [n_samples], the objective of each sample in the batch's numbering (``sample_ids``)."""
    shape = (rows, row_len)
    ids = np.full(shape, T.PAD, np.int32)
    labels = np.full(shape, T.IGNORE_INDEX, np.int32)
    pos = np.zeros(shape, np.int32)
    sid = np.full(shape, -1, np.int32)
    aid = np.full(shape, -1, np.int32)
    placed = sorted((i for i in range(len(items)) if row_of[i] >= 0), key=lambda i: (row_of[i], off_of[i]))
    with_objectives = bool(items) and all(len(it) > 3 for it in items)
    objective_ids = [items[i][3] for i in placed] if with_objectives else None
    cu = [0]
    k = 0
    for r in range(rows):
        end = 0
        while k < len(placed) and row_of[placed[k]] == r:
            i = placed[k]
            x, y, a = items[i][:3]
            o, L = off_of[i], len(x)
            ids[r, o:o + L] = x
            labels[r, o:o + L] = y
            labels[r, o] = T.IGNORE_INDEX
            pos[r, o:o + L] = np.arange(L)
            sid[r, o:o + L] = k
            aid[r, o:o + L] = a
            end = o + L
            cu.append(r * row_len + end)
            k += 1
        if end < row_len:
            cu.append(r * row_len + row_len)
    out = {"input_ids": ids, "labels": labels, "position_ids": pos, "sample_ids": sid,
           "adapter_ids": aid, "cu_seqlens": np.asarray(cu, np.int32)}
    if objective_ids is not None:
        out["objective_ids"] = np.asarray(objective_ids, np.int32)
    return out


def pack(items: Sequence[tuple], row_len: int, rows: int = 0) -> dict:
    """Packs (ids, labels, adapter[, objective]) items by best-fit-decreasing (ties by list order)."""
    lens = [len(it[0]) for it in items]
    row_of, off_of, need = best_fit_decreasing(lens, list(range(len(items))), row_len, 0)
    if rows > 0 and need > rows:
        raise ValueError(f"the samples need {need} rows of {row_len} tokens but rows={rows}")
    return lay_out(items, row_of, off_of, rows if rows > 0 else need, row_len)


def stream(tasks, seed: int, sc, ac, row_len: int, rows: int, samples_per_task: int, window: int,
           max_wait: int, wrong=None) -> Iterator[dict]:
    """The batches of arcfast.samples.packing.PackedStream, one after another (arrays, "objective_ids" and "stats")."""
    T_ = len(tasks)
    b = 0
    q = 0
    pending: list[Plan] = []
    while True:
        cnt = Counters()
        if samples_per_task > 0:
            k = samples_per_task
            plans = []
            for t, task in enumerate(tasks):
                for j in range(k):
                    p = plan_slot(task, t, b * k + j, seed, sc, ac, cnt, wrong)
                    if p is not None:
                        p.seq = (b * T_ + t) * k + j
                        plans.append(p)
            row_of, off_of, need = best_fit_decreasing([p.length for p in plans], [p.seq for p in plans], row_len, 0)
            if rows > 0 and need > rows:
                raise ValueError(f"batch {b} needs {need} rows of {row_len} tokens but rows={rows}")
            n_rows = rows if rows > 0 else need
        else:
            while len(pending) < window:
                t = q % T_
                p = plan_slot(tasks[t], t, q // T_, seed, sc, ac, cnt, wrong)
                if p is not None:
                    p.seq = q
                    p.born = b
                    pending.append(p)
                q += 1
            row_of, off_of, _ = best_fit_decreasing([p.length for p in pending], [p.seq for p in pending],
                                                    row_len, rows, [b - p.born >= max_wait for p in pending])
            keep = [i for i in range(len(pending)) if row_of[i] >= 0]
            plans = [pending[i] for i in keep]
            pending = [pending[i] for i in range(len(pending)) if row_of[i] < 0]
            row_of = [row_of[i] for i in keep]
            off_of = [off_of[i] for i in keep]
            n_rows = rows
        items = []
        for p in plans:
            ids, labels = write_plan(tasks[p.task], p, sc)
            items.append((ids, labels, p.task, p.objective))
        batch = lay_out(items, row_of, off_of, n_rows, row_len)
        batch.setdefault("objective_ids", np.zeros(0, np.int32))
        stats = dict(cnt.__dict__)
        stats.update(samples=len(plans), tokens=sum(p.length for p in plans), positions=n_rows * row_len)
        batch["stats"] = stats
        yield batch
        b += 1
