"""The statistics of a sweep summary: Student t intervals of a mean, and paired differences between arms.

Runs of different subjects are not exchangeable draws, so read an interval as the spread a reader should
expect when repeating the sweep on these subjects, not as a population claim (`collect`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .results import RunRow

# Two-sided 95 % Student t quantiles by degrees of freedom; beyond the table the next lower listed df is
# used (slightly wider: conservative).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
_T95 |= {10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    """The two-sided 95 % Student t quantile for `df` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return _T95[max(k for k in _T95 if k <= df)]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and the 95 % interval half-width of the values that exist."""

    n: int
    mean: float | None
    std: float | None
    ci95: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        have = [v for v in values if v is not None]
        n = len(have)
        if n == 0:
            return cls(0, None, None, None)
        mean = sum(have) / n
        if n == 1:
            return cls(1, mean, None, None)
        std = math.sqrt(sum((v - mean) ** 2 for v in have) / (n - 1))
        return cls(n, mean, std, t95(n - 1) * std / math.sqrt(n))


def paired_differences(
    rows: Sequence[RunRow], variants: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """For every variant after the first: per metric, the Spread of (variant - first variant) over the
    (subject, seed) pairs both have. Pairing removes the subject-to-subject spread that the per-arm
    intervals carry, so smaller differences stand out of the noise."""
    if len(variants) < 2:
        return []
    by = {(r.variant, r.subject, r.seed): r for r in rows}
    out = []
    for variant in variants[1:]:
        keys = [
            (r.subject, r.seed)
            for r in rows
            if r.variant == variant and (variants[0], r.subject, r.seed) in by
        ]
        if not keys:
            continue
        entry: dict[str, Any] = {"variant": variant, "pairs": len(keys)}
        for m in metrics:
            deltas = []
            for subject, seed in keys:
                a, b = (
                    by[(variant, subject, seed)].values.get(m),
                    by[(variants[0], subject, seed)].values.get(m),
                )
                deltas.append(None if a is None or b is None else a - b)
            entry[m] = Spread.of(deltas)
        out.append(entry)
    return out
