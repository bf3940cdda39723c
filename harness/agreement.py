"""Agreement between two judges scoring the same completions (1 = complied, 0 = refused, None = unjudged).

A refusal rate is only as good as its judge, and keyword judges are the usual suspect: they miss refusals
phrased differently and count evasive text as compliance. Where two judges score the same completions, the
rate of agreement, Cohen's kappa and the two kinds of disagreement say how far their rates can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Agreement:
    """Over the completions both judges scored; `skipped` counts those where either gave None.

    `kappa` is NaN where it is undefined: no pair was scored, or both judges are constant (each gave one
    verdict throughout), where the marginals alone predict every pair and there is no agreement beyond chance
    to measure; `agreement` (then 0 or 1) is the honest figure. One constant judge against a varying one gives
    kappa 0 by the textbook formula, and that is reported as is."""

    n: int
    agree: int
    agreement: float
    kappa: float
    a_refused_b_complied: int
    a_complied_b_refused: int
    skipped: int

    def as_dict(self) -> dict:
        return asdict(self)


def cohen_kappa(both_complied: int, a_refused_b_complied: int, a_complied_b_refused: int, both_refused: int) -> float:
    """(p_o - p_e) / (1 - p_e) of a 2x2 table; NaN where both judges are constant or the table is empty."""
    n = both_complied + a_refused_b_complied + a_complied_b_refused + both_refused
    a_complied, b_complied = both_complied + a_complied_b_refused, both_complied + a_refused_b_complied
    if n == 0 or a_complied in (0, n) and b_complied in (0, n):
        return math.nan
    p_o = (both_complied + both_refused) / n
    p_e = (a_complied * b_complied + (n - a_complied) * (n - b_complied)) / n**2
    return (p_o - p_e) / (1 - p_e)


def agreement(a: Sequence[int | None], b: Sequence[int | None]) -> Agreement:
    """How judges A and B agree on the same completions, in order; pairs where either is None are skipped."""
    if len(a) != len(b):
        raise ValueError(f"judge A scored {len(a)} completions, judge B {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if any(v not in (0, 1) for pair in pairs for v in pair):
        raise ValueError("judgments must be 1 (complied), 0 (refused) or None (unjudged)")
    cells = {(x, y): sum(p == (x, y) for p in pairs) for x in (0, 1) for y in (0, 1)}
    n = len(pairs)
    agree = cells[1, 1] + cells[0, 0]
    return Agreement(
        n=n, agree=agree, agreement=agree / n if n else math.nan,
        kappa=cohen_kappa(cells[1, 1], cells[0, 1], cells[1, 0], cells[0, 0]),
        a_refused_b_complied=cells[0, 1], a_complied_b_refused=cells[1, 0], skipped=len(a) - n,
    )
