"""The seeded random streams every augmentation and sample draw uses (splitmix64, all arithmetic
mod 2**64), the same in Python and in the C++ core (csrc/augment.h): a draw is a pure function of
(seed, task id, what is drawn, index), so a run is reproduced draw for draw.

    mix(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^ (z >> 31)
    combine(h, v) = mix(h ^ mix(v + 0x9E3779B97F4A7C15))
    Rng(s).next() = s += 0x9E3779B97F4A7C15; mix(s)
    below(n)      = (next() * n) >> 64              uniform(): (next() >> 11) * 2**-53
    shuffle(xs)   = for i from len-1 down to 1: swap xs[i], xs[below(i + 1)]

A task is keyed by ``fnv1a64(task.id)``. How the sampler's draws use these streams is specified in
arcfast/reference/pipeline.py.
"""
from __future__ import annotations

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def combine(h: int, v: int) -> int:
    return mix64((h & MASK) ^ mix64((v + GOLDEN) & MASK))


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8", "surrogatepass"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


class Rng:
    """One stream: ``next()`` 64 bits, ``below(n)`` an int in [0, n), ``uniform()`` a float in [0, 1)."""

    def __init__(self, state: int):
        self.state = state & MASK

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK
        return mix64(self.state)

    def below(self, n: int) -> int:
        return (self.next() * n) >> 64

    def uniform(self) -> float:
        return (self.next() >> 11) * (2.0 ** -53)


def shuffle(xs: list, rng: Rng) -> None:
    """Fisher-Yates in place, from the back (the C++ core's order)."""
    for i in range(len(xs) - 1, 0, -1):
        j = rng.below(i + 1)
        xs[i], xs[j] = xs[j], xs[i]


__all__ = ["MASK", "GOLDEN", "mix64", "combine", "fnv1a64", "Rng", "shuffle"]
