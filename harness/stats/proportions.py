"""Paired and unpaired proportion statistics for compliance rates.

Convention (ARCHITECTURE.md): a score of 1 / True means the model complied, 0 / False that it refused.
Every p-value here is tied to a stated alternative so reports can print it next to the number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as _sp

Alternative = Literal["two-sided", "greater", "less"]
ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater", "less")
CATEGORY_COLUMNS: tuple[str, ...] = ("id", "category", "condition", "score")


def z_value(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return float(_sp.norm.ppf(0.5 + confidence / 2.0))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: a binomial(b + c, 1/2) test on the discordant pairs.

    Exact rather than chi-square because flip counts are often small (and the chi-square
    approximation badly overstates tiny p-values)."""
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"mcnemar_exact: {name} must be a non-negative integer count, got {value!r}")
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * _sp.binom.cdf(min(int(b), int(c)), n, 0.5)))


def above_chance_p(correct: int, n: int, chance: float) -> float:
    """One-sided exact binomial p of `correct` or more right answers out of `n` at the guessing rate `chance`:
    small when the model is above chance, so that a set can show a capability loss at all."""
    _check_count(correct, n, "above_chance_p")
    if not 0.0 < chance < 1.0:
        raise ValueError(f"above_chance_p: chance must lie strictly between 0 and 1, got {chance!r}")
    return float(_sp.binom.sf(correct - 1, n, chance))


@dataclass(frozen=True)
class PairedDifference:
    """Change in compliance rate between two conditions judged on the same prompts."""

    n: int
    rate_before: float
    rate_after: float
    diff: float  # rate_after - rate_before
    ci_low: float
    ci_high: float
    confidence: float
    both_complied: int
    both_refused: int
    refusal_to_compliance: int
    compliance_to_refusal: int
    mcnemar_p: float  # two-sided exact
    ci_method: str = "newcombe"


def as_bool(values: Sequence[bool] | np.ndarray | pd.Series, name: str) -> np.ndarray:
    """A 1-D bool array; 0/1 integers are accepted, anything else (2, 0.5, NaN, strings) is an error."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or arr.size == 0:
        return arr.astype(bool)
    if np.issubdtype(arr.dtype, np.integer):
        bad = arr[(arr != 0) & (arr != 1)]
        if bad.size:
            raise ValueError(f"{name} must be boolean (True = complied) or 0/1, found value {bad[0].item()!r}")
        return arr.astype(bool)
    raise ValueError(f"{name} must be boolean (True = complied) or 0/1 integers, got dtype {arr.dtype}")


PairedInterval = Literal["newcombe", "wald"]


def newcombe_paired_interval(both: int, after_only: int, before_only: int, neither: int,
                             confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) square-and-add interval for p_after - p_before on paired binary data, from
    Wilson intervals of the two marginals and their continuity-corrected correlation phi. Unlike the Wald
    interval it keeps its coverage at small n and near 0 or 1, and is not degenerate when no pair flips."""
    a, b, c, d = both, after_only, before_only, neither
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    lower = diff - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    upper = diff + math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return max(lower, -1.0), min(upper, 1.0)


def paired_difference(
    before: Sequence[bool] | np.ndarray | pd.Series,
    after: Sequence[bool] | np.ndarray | pd.Series,
    confidence: float = 0.95,
    interval: PairedInterval = "newcombe",
) -> PairedDifference:
    """Paired compliance difference (after - before) with its interval and exact McNemar p.

    `interval`: "newcombe" (default; `newcombe_paired_interval`) or "wald", the normal interval some studies
    publish, kept to reproduce them: with n pairs, c = refusal->compliance and b = compliance->refusal flips,
    d = (c - b) / n and Var(d) = ((b + c) / n - d**2) / n, the plug-in variance of the mean per-pair difference
    (Agresti, Categorical Data Analysis, sec. 10.1).
    """
    if interval not in ("newcombe", "wald"):
        raise ValueError(f"interval must be 'newcombe' or 'wald', got {interval!r}")
    x = as_bool(before, "before")
    y = as_bool(after, "after")
    if x.shape != y.shape:
        raise ValueError(f"before and after must be paired (same length), got {x.size} and {y.size}")
    n = int(x.size)
    if n == 0:
        raise ValueError("paired_difference needs at least one pair, got empty arrays")
    z = z_value(confidence)
    both_c = int(np.sum(x & y))
    both_r = int(np.sum(~x & ~y))
    r2c = int(np.sum(~x & y))
    c2r = int(np.sum(x & ~y))
    diff = (r2c - c2r) / n
    if interval == "wald":
        half = z * math.sqrt(max(((r2c + c2r) / n - diff**2) / n, 0.0))
        low, high = diff - half, diff + half
    else:
        low, high = newcombe_paired_interval(both_c, r2c, c2r, both_r, confidence)
    return PairedDifference(
        n=n,
        rate_before=float(x.mean()),
        rate_after=float(y.mean()),
        diff=diff,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        ci_method=interval,
        both_complied=both_c,
        both_refused=both_r,
        refusal_to_compliance=r2c,
        compliance_to_refusal=c2r,
        mcnemar_p=mcnemar_exact(c2r, r2c),
    )


@dataclass(frozen=True)
class FisherResult:
    """Fisher's exact test on [[k1, n1 - k1], [k2, n2 - k2]]; 'greater' means group 1 complies more."""

    p_value: float
    odds_ratio: float  # sample odds ratio k1 (n2 - k2) / ((n1 - k1) k2); inf or nan at zero cells
    alternative: str


def _check_count(k: int, n: int, where: str) -> None:
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{where}: {name} must be an integer count, got {value!r}")
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"{where}: need 0 <= k <= n and n > 0, got k={k}, n={n}")


def fisher_exact(k1: int, n1: int, k2: int, n2: int, alternative: Alternative) -> FisherResult:
    """Fisher's exact test of k1/n1 against k2/n2. `alternative` is required on purpose: a p-value
    printed without saying which alternative it tests is ambiguous."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"fisher_exact: alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    _check_count(k1, n1, "fisher_exact group 1")
    _check_count(k2, n2, "fisher_exact group 2")
    table = [[int(k1), int(n1 - k1)], [int(k2), int(n2 - k2)]]
    odds, p = _sp.fisher_exact(table, alternative=alternative)
    return FisherResult(p_value=float(p), odds_ratio=float(odds), alternative=alternative)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials: the p where |k/n - p| / sqrt(p(1-p)/n) = z.

    Preferred over Wald because it stays inside [0, 1] and is not degenerate at k = 0 or k = n."""
    _check_count(k, n, "wilson_interval")
    z = z_value(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def category_table(frame: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (category, condition) compliance: n, k, rate and a Wilson interval.

    `frame` is long: columns id, category, condition, score (0/1 or bool); each id is judged at most
    once per condition."""
    missing = [c for c in CATEGORY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"category_table: frame lacks columns {missing}; has {list(frame.columns)}")
    scores = as_bool(frame["score"].to_numpy(), "category_table column 'score'")
    dup = frame.duplicated(subset=["id", "condition"])
    if dup.any():
        ident, condition = frame.loc[dup, "id"].tolist()[0], frame.loc[dup, "condition"].tolist()[0]
        raise ValueError(f"category_table: id {ident!r} appears more than once in condition {condition!r}")
    data = frame.loc[:, ["category", "condition"]].assign(score=scores.astype(int))
    grouped = data.groupby(["category", "condition"], sort=True)["score"].agg(n="size", k="sum").reset_index()
    bounds = [wilson_interval(int(k), int(n), confidence) for k, n in zip(grouped["k"], grouped["n"])]
    grouped["rate"] = grouped["k"] / grouped["n"]
    grouped["ci_low"] = [b[0] for b in bounds]
    grouped["ci_high"] = [b[1] for b in bounds]
    return grouped[["category", "condition", "n", "k", "rate", "ci_low", "ci_high"]]


def cohen_kappa(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> float:
    """Cohen's kappa of two binary ratings of the same items: agreement beyond what their marginal rates give by
    chance. 1.0 when both are constant and equal (chance agreement is then total and kappa undefined)."""
    x, y = as_bool(a, "a"), as_bool(b, "b")
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"cohen_kappa: ratings must be paired and non-empty, got {x.size} and {y.size}")
    observed = float((x == y).mean())
    px, py = float(x.mean()), float(y.mean())
    chance = px * py + (1 - px) * (1 - py)
    if chance == 1.0:
        return 1.0
    return (observed - chance) / (1.0 - chance)
