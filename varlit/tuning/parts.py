"""Small plumbing of `SubjectTuningModule`: per-step seeds and attributes forwarded to its parts."""

from __future__ import annotations


class Forward:
    """An attribute that reads and writes an attribute of one of the module's parts, so callers keep the
    names they used before the teacher, the bank and validation moved into parts of their own."""

    def __init__(self, part: str, name: str):
        self.part, self.name = part, name

    def __get__(self, module, owner=None):
        return self if module is None else getattr(getattr(module, self.part), self.name)

    def __set__(self, module, value) -> None:
        setattr(getattr(module, self.part), self.name, value)


def step_seed(seed: int, step: int, stream: int, rank: int = 0) -> int:
    """The seed of one random stream (flips, teacher samples, dropout) at one step on one rank: resumed
    runs draw exactly what uninterrupted ones drew."""
    return (seed * 1_000_003 + step * 7_919 + stream * 101 + rank * 1_000_000_007) % (2**63 - 1)
