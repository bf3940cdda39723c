"""Equivalence with a published run: two one-sided tests (TOST) on paired per-question scores
or mean differences, and the reference comparison records the claims report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize as _sp_opt
from scipy import stats as _sp

from harness.stats.proportions import as_bool, cohen_kappa, newcombe_paired_interval, paired_difference, z_value


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of |true difference| < margin: equivalent when the `confidence` interval of the
    difference lies strictly inside (-margin, +margin), i.e. both one-sided nulls are rejected at
    alpha = (1 - confidence) / 2 (a bound met with zero margin is not met). Proportion units, not pp."""

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    p_lower: float  # one-sided p of H0: difference <= -margin
    p_upper: float  # one-sided p of H0: difference >= +margin
    method: str

    @property
    def p_value(self) -> float:
        """The TOST p: the larger one-sided p; below alpha exactly when the interval lies inside the margins."""
        return max(self.p_lower, self.p_upper)

    @property
    def equivalent(self) -> bool:
        return -self.margin < self.ci_low and self.ci_high < self.margin


P_FLOOR = 1e-12  # one-sided p-values of an inverted interval are resolved down to this, and reported as it below


def _inverted_p(limits: Callable[[float], tuple[float, float]], estimate: float, bound: float, side: str) -> float:
    """One-sided p of H0: difference <= bound (side "lower") or >= bound (side "upper"), from an interval family:
    the alpha at which the near end of the (1 - 2 alpha) interval touches `bound`. Past alpha = 1/2 the near end
    continues as the far end of the (2 alpha - 1) interval, so a p on the null side of the estimate exceeds 1/2;
    the end is monotone in alpha, which makes the p consistent with the interval by construction."""
    near, far = (0, 1) if side == "lower" else (1, 0)

    def end(alpha: float) -> float:
        if alpha < 0.5:
            return limits(1.0 - 2.0 * alpha)[near]
        if alpha > 0.5:
            return limits(2.0 * alpha - 1.0)[far]
        return estimate

    def gap(alpha: float) -> float:
        return end(alpha) - bound

    lo, hi = P_FLOOR, 1.0 - P_FLOOR
    if gap(lo) * gap(hi) > 0:  # the bound lies beyond every interval resolved: p at the floor or the ceiling
        return lo if (gap(lo) > 0) == (side == "lower") else hi
    return float(_sp_opt.brentq(gap, lo, hi, xtol=1e-14))


def paired_equivalence(reference: Sequence[bool] | np.ndarray, ours: Sequence[bool] | np.ndarray, margin: float,
                       confidence: float = 0.90) -> Equivalence:
    """TOST of ours - reference on paired binary outcomes (the same questions), from Newcombe's paired interval
    (`newcombe_paired_interval`); the one-sided p-values invert that interval, so `p_value < (1 - confidence) / 2`
    exactly when `equivalent`."""
    if not 0.0 < margin < 1.0:
        raise ValueError(f"paired_equivalence: margin must lie strictly between 0 and 1 (a proportion), got {margin!r}")
    x = as_bool(reference, "reference")
    y = as_bool(ours, "ours")
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"reference and ours must be paired and non-empty, got {x.size} and {y.size}")
    cells = (int(np.sum(x & y)), int(np.sum(~x & y)), int(np.sum(x & ~y)), int(np.sum(~x & ~y)))

    def limits(conf: float) -> tuple[float, float]:
        return newcombe_paired_interval(*cells, confidence=conf)

    estimate = float(y.mean() - x.mean())
    low, high = limits(confidence)
    return Equivalence(estimate=estimate, ci_low=low, ci_high=high, confidence=confidence, margin=margin,
                       p_lower=_inverted_p(limits, estimate, -margin, "lower"),
                       p_upper=_inverted_p(limits, estimate, margin, "upper"), method="newcombe")


def mean_equivalence(differences: Sequence[float] | np.ndarray, margin: float, confidence: float = 0.90) -> Equivalence:
    """TOST of the mean of per-item differences (Student t, n - 1 degrees of freedom). Used for the paired change,
    whose per-question run-minus-reference differences take the values -2..2. With zero spread (every difference
    equal) the interval is the point itself."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or d.size < 2 or not np.isfinite(d).all():
        raise ValueError(f"mean_equivalence: need a 1-D array of at least 2 finite differences, got shape {d.shape}")
    if margin <= 0:
        raise ValueError(f"mean_equivalence: margin must be positive, got {margin!r}")
    z_value(confidence)
    n, mean = d.size, float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        return Equivalence(estimate=mean, ci_low=mean, ci_high=mean, confidence=confidence, margin=margin,
                           p_lower=0.0 if mean > -margin else 1.0, p_upper=0.0 if mean < margin else 1.0,
                           method="t (no spread)")
    t = float(_sp.t.ppf(0.5 + confidence / 2.0, n - 1))
    return Equivalence(
        estimate=mean, ci_low=mean - t * se, ci_high=mean + t * se, confidence=confidence, margin=margin,
        p_lower=float(_sp.t.sf((mean + margin) / se, n - 1)), p_upper=float(_sp.t.cdf((mean - margin) / se, n - 1)),
        method="t")


@dataclass(frozen=True)
class ReferenceComparison:
    """This run's per-question judgments against a published run's, on the questions both judged."""

    n: int
    compliant: int
    reference_compliant: int
    diff_pp: float  # (this run's compliance rate - the reference's) in percentage points
    agreement: float  # share of questions judged alike
    kappa: float  # Cohen's kappa, this run vs the reference
    only_ours: int  # complied here, refused in the reference
    only_reference: int  # refused here, complied in the reference
    mcnemar_p: float  # two-sided exact, this run vs the reference on the same questions
    equivalence: Equivalence  # TOST of the rate difference against +/- the margin


def _common(ours: dict[str, int | None], theirs: dict[str, int | None]) -> list[str]:
    return [q for q in ours if q in theirs and ours[q] in (0, 1) and theirs[q] in (0, 1)]


def compare_to_reference(ours: dict[str, int | None], theirs: dict[str, int | None], margin_pp: float,
                         confidence: float = 0.90) -> ReferenceComparison | None:
    """Per-question comparison over ids judged 0/1 in both (None where there are none); 1 = complied. The claim is
    `equivalence.equivalent`: the difference is shown to lie within +/- `margin_pp`, not merely not shown to differ."""
    common = _common(ours, theirs)
    if not common:
        return None
    mine = np.array([int(ours[q]) for q in common], dtype=bool)
    pub = np.array([int(theirs[q]) for q in common], dtype=bool)
    flips = paired_difference(pub, mine)
    return ReferenceComparison(
        n=len(common), compliant=int(mine.sum()), reference_compliant=int(pub.sum()),
        diff_pp=100 * float(mine.mean() - pub.mean()), agreement=float((mine == pub).mean()),
        kappa=cohen_kappa(mine, pub), only_ours=flips.refusal_to_compliance, only_reference=flips.compliance_to_refusal,
        mcnemar_p=flips.mcnemar_p, equivalence=paired_equivalence(pub, mine, margin_pp / 100.0, confidence),
    )


@dataclass(frozen=True)
class ChangeComparison:
    """This run's paired change (after - before) against a published run's, on the questions judged in all four."""

    n: int
    change_pp: float  # this run's compliance change in pp
    reference_change_pp: float
    diff_pp: float  # change_pp - reference_change_pp
    agreement: float  # share of questions whose change (-1, 0, +1) is the same here and in the reference
    equivalence: Equivalence  # TOST of the mean per-question change difference (t interval)


def compare_change_to_reference(ours_before: dict[str, int | None], ours_after: dict[str, int | None],
                                theirs_before: dict[str, int | None], theirs_after: dict[str, int | None],
                                margin_pp: float, confidence: float = 0.90) -> ChangeComparison | None:
    """The paired change tested for equivalence with the published one, question by question: each question's
    change here (after - before, in -1..1) minus its change in the reference gives one difference in -2..2; their
    mean is the change difference, and its t interval keeps the pairing of both runs on the same questions (a
    run that reproduces each question's flip has zero spread). None when fewer than 2 questions are judged in all
    four cells."""
    common = [q for q in _common(ours_before, ours_after) if q in _common(theirs_before, theirs_after)]
    if len(common) < 2:
        return None

    def change(before: dict, after: dict) -> np.ndarray:
        return np.array([int(after[q]) - int(before[q]) for q in common], dtype=float)

    mine, pub = change(ours_before, ours_after), change(theirs_before, theirs_after)
    return ChangeComparison(
        n=len(common), change_pp=100 * float(mine.mean()), reference_change_pp=100 * float(pub.mean()),
        diff_pp=100 * float((mine - pub).mean()), agreement=float((mine == pub).mean()),
        equivalence=mean_equivalence(mine - pub, margin_pp / 100.0, confidence),
    )
