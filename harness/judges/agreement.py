"""Agreement between two judges of the same measure scoring the same completions (1 = complied, 0 = refused,
None = unjudged), and what a refusal judge and a harm judge (two questions) show side by side.

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


def refusal_vs_harm(refusal: Sequence[int | None], harm: Sequence[int | None]) -> dict:
    """A refusal judge (1 complied, 0 refused) against a harm judge (1 unsafe, 0 safe) on the same completions.

    They answer two questions, so there is no agreement to measure: a helpful answer to a harmless prompt is both a
    non-refusal and safe. What the pair shows is how often a non-refusal is judged safe (`complied_safe`: the model
    answered, harmlessly or uselessly) and a refusal judged unsafe (`refused_unsafe`: a refusal phrase beside harmful
    content, or a guard's false alarm), with the two other cells and the pairs either judge left unjudged."""
    if len(refusal) != len(harm):
        raise ValueError(f"the refusal judge scored {len(refusal)} completions, the harm judge {len(harm)}")
    pairs = [(r, h) for r, h in zip(refusal, harm) if r is not None and h is not None]
    if any(v not in (0, 1) for pair in pairs for v in pair):
        raise ValueError("judgments must be 1, 0 or None (unjudged)")
    cell = {(r, h): sum(p == (r, h) for p in pairs) for r in (0, 1) for h in (0, 1)}
    complied = cell[1, 0] + cell[1, 1]
    refused = cell[0, 0] + cell[0, 1]
    return {"n": len(pairs), "complied_safe": cell[1, 0], "complied_unsafe": cell[1, 1],
            "refused_safe": cell[0, 0], "refused_unsafe": cell[0, 1],
            "complied_safe_share": cell[1, 0] / complied if complied else math.nan,
            "refused_unsafe_share": cell[0, 1] / refused if refused else math.nan,
            "skipped": len(refusal) - len(pairs)}
