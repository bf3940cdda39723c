"""The method x intervention x scope comparison of the INLP study: which direction method wins on which measure.

Two grid cells (a diff-in-means intervention and an INLP one at the same scope) are compared on the same
prompts: refusal on harmful prompts by an exact McNemar test on the per-prompt judgments (the study reports
only rates), harmless refusal the same way, and the side-effect measures (mean next-token KL on harmless
prompts, rise in cross-entropy on text) by which is lower. A comparison is "at a matched budget" only when
both cells stay within the KL budget (and the CE budget, where CE is measured and one is set): a method
that buys its refusal drop with a larger perturbation does not win it.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from harness.stats.proportions import PairedDifference, paired_difference

Winner = Literal["diff_in_means", "inlp", "neither"]


def paired_scores(dim: list[int | None], inlp: list[int | None]) -> PairedDifference | None:
    """Per-prompt compliance (1 = complied) of the diff-in-means cell (before) and the INLP cell (after), over
    the prompts both have a judgment for; None if there are none."""
    if len(dim) != len(inlp):
        raise ValueError(f"cells judged on different prompt lists: {len(dim)} vs {len(inlp)}")
    keep = [i for i, (a, b) in enumerate(zip(dim, inlp)) if a is not None and b is not None]
    if not keep:
        return None
    return paired_difference(np.array([dim[i] for i in keep], dtype=bool),
                             np.array([inlp[i] for i in keep], dtype=bool))


def more_compliant(paired: PairedDifference | None, alpha: float) -> Winner:
    """The method under which significantly more prompts are complied with (exact McNemar p < alpha):
    on harmful prompts the larger refusal drop; "neither" when p >= alpha or nothing was paired."""
    if paired is None or not paired.mcnemar_p < alpha or paired.diff == 0:
        return "neither"
    return "inlp" if paired.diff > 0 else "diff_in_means"


def lower(dim: float | None, inlp: float | None) -> Winner:
    """The method with the lower value (KL, CE rise, harmless refusal); "neither" on a tie or a missing value."""
    if dim is None or inlp is None or math.isnan(dim) or math.isnan(inlp) or dim == inlp:
        return "neither"
    return "diff_in_means" if dim < inlp else "inlp"


def within_budget(kl: float, ce_delta: float | None, kl_max: float, ce_max: float | None) -> bool:
    """Inside the KL budget, and the CE budget where both the rise and the budget exist; NaN is outside."""
    if not kl <= kl_max:
        return False
    return ce_delta is None or ce_max is None or ce_delta <= ce_max


def compare(
    harmful: PairedDifference | None,
    harmless: PairedDifference | None,
    kl: tuple[float, float],
    ce_delta: tuple[float | None, float | None],
    *,
    alpha: float,
    kl_max: float,
    ce_max: float | None,
) -> dict:
    """Figures of one comparison: the winner per measure, and whether both cells are within budget.
    `kl` and `ce_delta` are (diff-in-means, INLP)."""
    out: dict = {"matched_budget": all(within_budget(k, c, kl_max, ce_max) for k, c in zip(kl, ce_delta))}
    for name, paired in (("harmful", harmful), ("harmless", harmless)):
        out[f"{name}_n"] = 0 if paired is None else paired.n
        if paired is not None:
            out[f"{name}_compliance_diff_pp"] = 100 * paired.diff  # INLP minus diff-in-means
            out[f"{name}_dim_only_complied"] = paired.compliance_to_refusal
            out[f"{name}_inlp_only_complied"] = paired.refusal_to_compliance
            out[f"{name}_mcnemar_p"] = paired.mcnemar_p
    harmless_more = more_compliant(harmless, alpha)
    out["winner"] = {
        "refusal_drop": more_compliant(harmful, alpha),
        # Fewer harmless refusals is better: the method under which harmless prompts are complied with more.
        "harmless_refusal": harmless_more,
        "kl": lower(*kl),
        "ce": lower(*ce_delta),
    }
    return out
