"""A generator whose every output is known in advance, for the tests of what comes after the logits.

:class:`ScriptedGenerator` is an :class:`arcfast.infer.generate.Generator` whose ``generate`` does not
run the model: it reads each prompt the way docs/FORMAT.md lays it out, takes the prompt's target
input (in the prompt's augmented frame) and answers ``rule(target input)`` in the compact format,
``-0.05`` of log-probability per token. Everything downstream is the real code: strict decoding,
the augmentation undone (:meth:`arcfast.arc.augment.Augmentation.invert_grid`), voting and the
submission. (The generator's own decoding is held to the model's full forward elsewhere.)

The default rule is :func:`turn`, a half turn (``np.rot90(x, 2)``). It commutes with every
dihedral transform (a half turn is the centre of the group) and with every colour permutation
(it moves cells, never changes one), so whatever augmentation a prompt was built under, its
answer, un-augmented, is the half turn of the task's original test input: known before the run,
and different from the test input itself (the submission's fallback) unless that input is
symmetric under a half turn. A broken inverse (none, or the forward map instead of the inverse)
turns it into another grid.

The other helpers are numpy twins, independent of the C++ core, of what a test needs to predict
the answers: the compact encoding of a grid (:func:`encode`), a prompt read back into grids
(:func:`read_prompt`) and an augmentation applied to a grid (:func:`augment`).

In-process, a test puts the scripted generator in place of the real one with
``monkeypatch.setattr(arcfast.infer.generate, "Generator", ScriptedGenerator)`` (``predict_tasks`` and
``arcfast ttft`` look the class up there when they build one), or passes one as ``generator=``.
For a subprocess (torchrun) this file is also a script: ``python tests/scripted.py ttft ...``
runs the ``arcfast`` command line with the scripted generator in place.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from arcfast.arc import vocab as T
from arcfast.infer.decoding import Generation, GenerationConfig, GenerationStats
from arcfast.infer.generate import Generator

TOKEN_LOGPROB = -0.05

# The dihedral transforms by id, as the table in arcfast/arc/augment.py numbers them.
DIHEDRAL = (
    lambda g: g,
    lambda g: np.rot90(g, 1),
    lambda g: np.rot90(g, 2),
    lambda g: np.rot90(g, 3),
    lambda g: g.T,
    np.fliplr,
    np.flipud,
    lambda g: np.rot90(g, 2).T,
)


def turn(grid: np.ndarray) -> np.ndarray:
    """The default rule: a half turn of the grid."""
    return np.ascontiguousarray(np.rot90(grid, 2))


def augment(grid, transform: int = 0, colors: Sequence[int] = tuple(range(10))) -> np.ndarray:
    """``grid`` under a dihedral transform and a colour map (colour ``c`` becomes ``colors[c]``):
    uint8 [h', w']. The two commute, so the order docs/FORMAT.md gives does not matter here."""
    g = np.asarray(colors, dtype=np.uint8)[np.asarray(grid, dtype=np.int64)]
    return np.ascontiguousarray(DIHEDRAL[int(transform)](g), dtype=np.uint8)


def augment_like(grid, aug) -> np.ndarray:
    """:func:`augment` with the dihedral transform and colours of an ``arcfast.arc.augment.Augmentation``."""
    return augment(grid, aug.transform, aug.colors)


def encode(grid) -> np.ndarray:
    """The compact tokens of a grid: each row's colours and ROW, then EOG (int32)."""
    g = np.asarray(grid)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"not a non-empty 2-D grid: shape {g.shape}")
    out = []
    for row in g.tolist():
        out += [int(c) for c in row] + [T.ROW]
    return np.array(out + [T.EOG], dtype=np.int32)


def _read_grid(cells: list, where: str) -> np.ndarray:
    rows, cur = [], []
    for c in cells:
        if c == T.ROW:
            rows.append(cur)
            cur = []
        elif 0 <= c <= 9:
            cur.append(c)
        else:
            raise ValueError(f"{where}: token {c} inside a grid")
    if cur or not rows or any(len(r) != len(rows[0]) for r in rows) or not rows[0]:
        raise ValueError(f"{where}: not a rectangular grid")
    return np.array(rows, dtype=np.uint8)


def read_prompt(tokens) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """(demonstrations as (input, output) pairs, target input) of an inference prompt:
    ``BOS (INPUT <grid> OUTPUT <grid>)* INPUT <grid> OUTPUT``. ValueError when it is not one."""
    t = [int(x) for x in np.asarray(tokens).reshape(-1)]
    if len(t) < 2 or t[0] != T.BOS or t[-1] != T.OUTPUT:
        raise ValueError("an inference prompt starts with BOS and ends with OUTPUT")
    grids, i = [], 1
    while i < len(t) - 1:
        want = T.INPUT if len(grids) % 2 == 0 else T.OUTPUT
        if t[i] != want:
            raise ValueError(f"position {i}: expected {T.NAMES[want]}, got token {t[i]}")
        try:
            end = t.index(T.EOG, i + 1)
        except ValueError:
            raise ValueError(f"position {i}: grid without EOG") from None
        grids.append(_read_grid(t[i + 1:end], f"grid at position {i + 1}"))
        i = end + 1
    if len(grids) % 2 != 1:
        raise ValueError("the prompt does not end with a target input and OUTPUT")
    return list(zip(grids[:-1:2], grids[1:-1:2])), grids[-1]


class ScriptedGenerator(Generator):
    """A :class:`arcfast.infer.generate.Generator` that answers every prompt with ``rule(target input)``.

    rule:     target input (uint8 [h, w], the prompt's frame) -> a grid (2-D, encoded with EOG) or
              the raw tokens to emit (1-D: e.g. a grid cut short, to emit an output that does not
              parse). Default :func:`turn`.
    logprob:  log-probability of every emitted token.

    The generation config is honoured where it shapes the output: at most ``max_new_tokens``
    tokens, and nothing after the first EOG when ``stop_on_eog``. A ``deadline`` already passed
    gives empty outputs (counted in ``stats.cut_by_deadline``), as the real generator's prompts
    that never started. ``seen`` records, per prompt of every call, (target input, adapter id).
    """

    def __init__(self, model, lora=None, rule: Callable = turn, logprob: float = TOKEN_LOGPROB, **engine):
        super().__init__(model, lora, **engine)
        self.rule = rule
        self.token_logprob = float(logprob)
        self.seen: list[tuple[np.ndarray, int]] = []

    def generate(self, prompts: Sequence, adapter_ids: Optional[Sequence[int]] = None,
                 config: Optional[GenerationConfig] = None, keys: Optional[Sequence[int]] = None,
                 deadline: Optional[float] = None, **overrides) -> list[Generation]:
        cfg = config or GenerationConfig()
        if overrides:
            cfg = GenerationConfig(**{**cfg.__dict__, **overrides})
        n = len(prompts)
        adapters = [-1] * n if adapter_ids is None else [int(a) for a in adapter_ids]
        if len(adapters) != n:
            raise ValueError(f"{len(adapters)} adapter ids for {n} prompts")
        n_adapters = 0 if self.lora is None else int(self.lora.weight.shape[0])
        self.stats = st = GenerationStats(prompts=n, prompt_tokens=int(sum(len(p) for p in prompts)))
        out = []
        for i, (p, a) in enumerate(zip(prompts, adapters)):
            if not -1 <= a < n_adapters:
                raise ValueError(f"prompt {i}: adapter id {a} is invalid ({n_adapters} adapters)")
            _, target = read_prompt(p)
            self.seen.append((target, a))
            if deadline is not None and time.monotonic() >= deadline:
                st.cut_by_deadline += 1
                out.append(Generation(np.zeros(0, np.int32), np.zeros(0, np.float32)))
                continue
            answer = np.asarray(self.rule(target))
            toks = encode(answer) if answer.ndim == 2 else answer.astype(np.int32).reshape(-1)
            if cfg.stop_on_eog and T.EOG in toks:
                toks = toks[:int(np.flatnonzero(toks == T.EOG)[0]) + 1]
            toks = toks[:cfg.max_new_tokens]
            out.append(Generation(np.ascontiguousarray(toks, dtype=np.int32),
                                  np.full(toks.shape[0], self.token_logprob, dtype=np.float32)))
        st.generated_tokens = int(sum(g.n_tokens for g in out))
        return out


def main(argv: Optional[list] = None) -> int:
    """The ``arcfast`` command line with :class:`ScriptedGenerator` (rule :func:`turn`) in place of
    the generator."""
    import arcfast.infer.generate
    from arcfast.cli import main as cli_main

    arcfast.infer.generate.Generator = ScriptedGenerator
    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
