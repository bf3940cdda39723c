"""harness.stats.proportions against a published result and against scipy / first-principles algebra."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from harness.stats.proportions import (
    PairedDifference,
    category_table,
    fisher_exact,
    mcnemar_exact,
    paired_difference,
    wilson_interval,
)

# Published (gemma4_policy_reference, SOURCE.md): SORRY-Bench 202503, official judge, 440 paired questions.
N, BASE_K, EDIT_K, R2C, C2R = 440, 94, 337, 247, 4
JUDGMENTS = Path("gemma4_policy_reference/results/sorry_bench_official_judgments.csv")


def _arrays_from_flip_table(n: int, base_k: int, edit_k: int, r2c: int, c2r: int) -> tuple[np.ndarray, np.ndarray]:
    both_c = base_k - c2r
    both_r = n - both_c - r2c - c2r
    assert both_c >= 0 and both_r >= 0 and both_c + r2c == edit_k
    before = np.array([True] * both_c + [False] * both_r + [False] * r2c + [True] * c2r)
    after = np.array([True] * both_c + [False] * both_r + [True] * r2c + [False] * c2r)
    order = np.random.default_rng(0).permutation(n)  # pairing, not order, must matter
    return before[order], after[order]


def _check_published(result: PairedDifference) -> None:
    assert result.n == N
    assert round(result.rate_before * N) == BASE_K and round(result.rate_after * N) == EDIT_K
    assert (result.refusal_to_compliance, result.compliance_to_refusal) == (R2C, C2R)
    assert f"{100 * result.diff:+.1f}" == "+55.2"
    assert (f"{100 * result.ci_low:.1f}", f"{100 * result.ci_high:.1f}") == ("50.4", "60.0")
    assert f"{result.mcnemar_p:.2e}" == "9.07e-68"


def test_published_result_from_flip_table() -> None:
    before, after = _arrays_from_flip_table(N, BASE_K, EDIT_K, R2C, C2R)
    result = paired_difference(before, after, interval="wald")
    _check_published(result)
    assert result.both_complied == BASE_K - C2R
    assert result.both_refused == N - EDIT_K - C2R


def test_published_result_from_official_judgments() -> None:
    data_dir = os.environ.get("HARNESS_DATA_DIR")
    if not data_dir:
        pytest.skip("HARNESS_DATA_DIR is not set; the official per-question judgments are not available")
    path = Path(data_dir) / JUDGMENTS
    if not path.is_file():
        pytest.skip(f"{path} is absent (HARNESS_DATA_DIR={data_dir})")
    frame = pd.read_csv(path, usecols=["question_id", "condition", "score"])
    wide = frame.pivot(index="question_id", columns="condition", values="score")
    assert len(wide) == N and not wide[["baseline", "edited"]].isna().any().any()
    _check_published(paired_difference(wide["baseline"].to_numpy(), wide["edited"].to_numpy(), interval="wald"))


def test_paired_difference_is_paired() -> None:
    # Same margins, different pairing: only the flip table (and so p and the interval) changes.
    x = np.array([True, True, False, False])
    a = paired_difference(x, np.array([True, True, False, False]), interval="wald")
    b = paired_difference(x, np.array([False, False, True, True]), interval="wald")
    assert a.diff == b.diff == 0.0
    assert (a.ci_low, a.ci_high, a.mcnemar_p) == (0.0, 0.0, 1.0)
    assert b.ci_low < 0 < b.ci_high and b.refusal_to_compliance == b.compliance_to_refusal == 2
    # Newcombe's interval is not degenerate where no pair flips: four agreeing pairs do not prove "no change".
    n = paired_difference(x, np.array([True, True, False, False]))
    assert n.ci_method == "newcombe" and n.ci_low < 0 < n.ci_high
    assert paired_difference(x, np.array([False, False, True, True])).ci_high - b.ci_high < 0.5


def test_newcombe_matches_the_published_example() -> None:
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8, as tested in their
    R package contingencytables: the paired table [[59, 6], [16, 80]] gives -0.0621 (-0.1186 to -0.0046)."""
    from harness.stats.proportions import newcombe_paired_interval

    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (f"{low:.4f}", f"{high:.4f}") == ("-0.1186", "-0.0046")
    before, after = _arrays_from_flip_table(161, 75, 65, 6, 16)
    result = paired_difference(before, after)
    assert (f"{result.diff:.4f}", f"{result.ci_low:.4f}", f"{result.ci_high:.4f}") == ("-0.0621", "-0.1186", "-0.0046")


def test_newcombe_keeps_its_coverage_at_small_n_where_wald_does_not() -> None:
    """Simulated coverage of the 95% interval for 20 prompts judged twice, with few flips (a typical small claim
    subset): Newcombe stays near 95%, the Wald interval falls well short."""
    rng = np.random.default_rng(0)
    # cell probabilities: both complied, after only, before only, neither
    probs, n, reps = np.array([0.05, 0.10, 0.02, 0.83]), 20, 4000
    truth = probs[1] - probs[2]
    hits = {"newcombe": 0, "wald": 0}
    for counts in rng.multinomial(n, probs, size=reps):
        before = np.repeat([True, False, True, False], counts)
        after = np.repeat([True, True, False, False], counts)
        for method in hits:
            r = paired_difference(before, after, interval=method)
            hits[method] += r.ci_low <= truth <= r.ci_high
    assert hits["newcombe"] / reps >= 0.93
    assert hits["wald"] / reps < 0.90


@pytest.mark.parametrize(
    "before, after, fragment",
    [
        ([True, False], [True], "same length"),
        ([1, 2, 0], [1, 0, 0], "found value 2"),
        ([0.0, 1.0], [1.0, 0.0], "dtype float64"),
        (["yes", "no"], [True, False], "dtype <U3"),
        ([], [], "at least one pair"),
        ([[True]], [[False]], "1-D"),
    ],
)
def test_paired_difference_rejects_bad_input(before, after, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        paired_difference(before, after)


def test_paired_difference_accepts_zero_one_integers() -> None:
    a = paired_difference([0, 1, 1, 0], [1, 1, 1, 0])
    assert (a.refusal_to_compliance, a.both_complied, a.both_refused) == (1, 2, 1)


def test_paired_interval_matches_per_pair_differences() -> None:
    """The Wald interval equals mean +- z * sd(ddof=0)/sqrt(n) of the per-pair differences in {-1, 0, 1}."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        before = rng.random(n) < rng.random()
        after = rng.random(n) < rng.random()
        confidence = float(rng.choice([0.8, 0.9, 0.95, 0.99]))
        result = paired_difference(before, after, confidence, interval="wald")
        d = after.astype(float) - before.astype(float)
        z = sp.norm.ppf(1 - (1 - confidence) / 2)
        half = z * d.std() / math.sqrt(n)
        assert result.diff == pytest.approx(d.mean(), abs=1e-12)
        assert result.ci_low == pytest.approx(d.mean() - half, abs=1e-12)
        assert result.ci_high == pytest.approx(d.mean() + half, abs=1e-12)
        assert result.rate_after - result.rate_before == pytest.approx(result.diff, abs=1e-12)
        cells = (result.both_complied, result.both_refused, result.refusal_to_compliance, result.compliance_to_refusal)
        assert sum(cells) == n


def test_mcnemar_matches_scipy_binomtest() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        b, c = (int(v) for v in rng.integers(0, 120, size=2))
        if b + c == 0:
            assert mcnemar_exact(b, c) == 1.0
            continue
        expected = sp.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


@pytest.mark.parametrize("b, c", [(-1, 3), (2.5, 3), (True, 3)])
def test_mcnemar_rejects_bad_counts(b, c) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        mcnemar_exact(b, c)


def test_fisher_matches_scipy_and_hypergeometric_tails() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n1, n2 = (int(v) for v in rng.integers(1, 60, size=2))
        k1, k2 = int(rng.integers(0, n1 + 1)), int(rng.integers(0, n2 + 1))
        for alternative in ("two-sided", "greater", "less"):
            result = fisher_exact(k1, n1, k2, n2, alternative)
            odds, p = sp.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative=alternative)
            assert result.alternative == alternative
            assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
            if not math.isnan(odds):
                assert result.odds_ratio == pytest.approx(odds)
        # 'greater' = group 1 complies more: P(K1 >= k1) under the hypergeometric null.
        hyper = sp.hypergeom(n1 + n2, k1 + k2, n1)
        assert fisher_exact(k1, n1, k2, n2, "greater").p_value == pytest.approx(hyper.sf(k1 - 1), rel=1e-9, abs=1e-300)
        assert fisher_exact(k1, n1, k2, n2, "less").p_value == pytest.approx(hyper.cdf(k1), rel=1e-9, abs=1e-300)


def test_fisher_reproduces_the_qwen35_study_s_terminal_bench_p() -> None:
    """The Qwen3.5-4B abliteration study: terminal-bench-2 tasks solved 3/89 (base) -> 7/89 (abliterated), reported
    as Fisher exact p = 0.165. That is the ONE-sided test (abliterated solves more); two-sided it is 0.330."""
    one_sided = fisher_exact(7, 89, 3, 89, "greater")
    assert round(one_sided.p_value, 3) == 0.165
    assert fisher_exact(3, 89, 7, 89, "less").p_value == pytest.approx(one_sided.p_value, rel=1e-12)
    assert round(fisher_exact(7, 89, 3, 89, "two-sided").p_value, 3) == 0.330


def test_fisher_requires_alternative() -> None:
    with pytest.raises(TypeError):
        fisher_exact(3, 10, 7, 10)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="alternative must be one of"):
        fisher_exact(3, 10, 7, 10, "two_sided")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k=11, n=10"):
        fisher_exact(11, 10, 7, 10, "less")


def test_wilson_endpoints_have_score_statistic_z() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        n = int(rng.integers(1, 500))
        k = int(rng.integers(0, n + 1))
        confidence = float(rng.choice([0.8, 0.9, 0.95, 0.99]))
        z = sp.norm.ppf(1 - (1 - confidence) / 2)
        low, high = wilson_interval(k, n, confidence)
        assert 0.0 <= low <= k / n <= high <= 1.0
        for bound in (low, high):
            if 0.0 < bound < 1.0:
                score = abs(k / n - bound) / math.sqrt(bound * (1 - bound) / n)
                assert score == pytest.approx(z, rel=1e-9)
        assert (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)


def test_wilson_rejects_bad_counts() -> None:
    for k, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError, match=f"k={k}, n={n}"):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 5, confidence=95)


def test_category_table() -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3, 1, 2, 3, 4, 4],
            "category": ["a", "a", "b", "a", "a", "b", "b", "b"],
            "condition": ["base", "base", "base", "edit", "edit", "edit", "base", "edit"],
            "score": [0, 1, 0, 1, 1, 1, 0, 1],
        }
    )
    table = category_table(frame)
    assert list(table.columns) == ["category", "condition", "n", "k", "rate", "ci_low", "ci_high"]
    got = {(r.category, r.condition): (r.n, r.k) for r in table.itertuples()}
    assert got == {("a", "base"): (2, 1), ("a", "edit"): (2, 2), ("b", "base"): (2, 0), ("b", "edit"): (2, 2)}
    row = table[(table.category == "a") & (table.condition == "base")].iloc[0]
    assert row.rate == 0.5 and (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(1, 2))


def test_category_table_rejects_bad_frames() -> None:
    good = pd.DataFrame({"id": [1, 2], "category": ["a", "a"], "condition": ["x", "x"], "score": [0, 1]})
    with pytest.raises(ValueError, match="lacks columns \\['score'\\]"):
        category_table(good.drop(columns="score"))
    with pytest.raises(ValueError, match="found value 3"):
        category_table(good.assign(score=[0, 3]))
    with pytest.raises(ValueError, match="id 1 appears more than once in condition 'x'"):
        category_table(good.assign(id=[1, 1]))


def _reference_scores(condition: str) -> dict[str, int]:
    from harness.data.loading import load_dataset
    from harness.data.parsers import DatasetError

    try:
        frame = load_dataset("sorry_bench_reference_judgments")
    except DatasetError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(err))
    rows = frame[frame["condition"] == condition]
    return dict(zip(rows["question_id"].astype(str), rows["score"].astype(int)))


def test_compare_to_reference_reproduces_the_published_run() -> None:
    """gemma-4-e4b-it's reference claim: the published edited run against itself agrees exactly, and against
    the published baseline it shows the study's 337 vs 94 compliant and its McNemar p."""
    from harness.stats.equivalence import compare_to_reference

    base, edited = _reference_scores("baseline"), _reference_scores("edited")
    same = compare_to_reference(edited, edited, margin_pp=5.0)
    assert (same.n, same.diff_pp, same.agreement) == (N, 0.0, 1.0)
    moved = compare_to_reference(edited, base, margin_pp=5.0)
    assert (moved.n, moved.compliant, moved.reference_compliant) == (N, EDIT_K, BASE_K)
    assert f"{moved.diff_pp:.1f}" == "55.2" and moved.agreement == (N - R2C - C2R) / N
    assert f"{moved.mcnemar_p:.2e}" == "9.07e-68"
    # Unjudged questions (None) and questions the reference lacks are left out, not counted as refusals.
    partial = {**{q: None for q in list(edited)[:40]}, **{q: s for q, s in list(edited.items())[40:]}, "999999": 1}
    assert compare_to_reference(partial, edited, margin_pp=5.0).n == N - 40
    assert compare_to_reference({"1": None}, edited, margin_pp=5.0) is None


def _shifted(scores: dict[str, int], k: int, seed: int = 0) -> dict[str, int]:
    """A copy with `k` complied questions turned into refusals (a systematic shift, as issue 22 found)."""
    complied = sorted(q for q, s in scores.items() if s == 1)
    moved = set(np.random.default_rng(seed).choice(complied, size=k, replace=False).tolist())
    return {q: 0 if q in moved else s for q, s in scores.items()}


def test_equivalence_passes_on_the_reference_and_fails_on_a_shifted_copy() -> None:
    """The reference claim is an equivalence test: the published run against itself is equivalent within 5 pp in
    both conditions and in the paired change, a copy with 22 compliant questions turned to refusals (-5.0 pp, the
    shift the old |diff| <= 5 pp and agreement >= 0.8 test let through) is not."""
    from harness.stats.equivalence import compare_change_to_reference, compare_to_reference

    base, edited = _reference_scores("baseline"), _reference_scores("edited")
    for scores in (base, edited):
        same = compare_to_reference(scores, scores, margin_pp=5.0)
        assert same.equivalence.equivalent and same.kappa == 1.0 and same.mcnemar_p == 1.0
        assert same.equivalence.p_value < 0.05
    same_change = compare_change_to_reference(base, edited, base, edited, margin_pp=5.0)
    assert same_change.equivalence.equivalent and f"{same_change.reference_change_pp:.1f}" == "55.2"
    assert same_change.agreement == 1.0 and same_change.diff_pp == 0.0

    shifted = _shifted(edited, 22)
    cmp = compare_to_reference(shifted, edited, margin_pp=5.0)
    assert f"{cmp.diff_pp:+.1f}" == "-5.0" and cmp.agreement >= 0.8  # what the old test passed
    assert (cmp.only_ours, cmp.only_reference) == (0, 22) and f"{cmp.mcnemar_p:.1e}" == "4.8e-07"
    assert not cmp.equivalence.equivalent and cmp.equivalence.p_value >= 0.05
    change = compare_change_to_reference(base, shifted, base, edited, margin_pp=5.0)
    assert f"{change.diff_pp:+.1f}" == "-5.0" and not change.equivalence.equivalent
    # A smaller shift, well inside the margin, is shown equivalent; the same at a 1 pp margin is not.
    small = compare_to_reference(_shifted(edited, 4), edited, margin_pp=5.0)
    assert small.equivalence.equivalent
    assert not compare_to_reference(_shifted(edited, 4), edited, margin_pp=1.0).equivalence.equivalent


def test_paired_equivalence_p_values_invert_its_interval() -> None:
    """Each one-sided p is the alpha at which the (1 - 2 alpha) Newcombe interval touches the margin, so the TOST
    p crosses 0.05 exactly where the 90% interval crosses the margin; on the null side a p exceeds 1/2."""
    from harness.stats.equivalence import paired_equivalence
    from harness.stats.proportions import newcombe_paired_interval

    before, after = _arrays_from_flip_table(200, 60, 66, 14, 8)  # +3 pp, 22 discordant pairs
    cells = (int(np.sum(before & after)), int(np.sum(~before & after)), int(np.sum(before & ~after)),
             int(np.sum(~before & ~after)))
    for margin in (0.02, 0.05, 0.07, 0.10):
        eq = paired_equivalence(before, after, margin)
        assert math.isclose(eq.estimate, 0.03)
        low, _ = newcombe_paired_interval(*cells, confidence=1 - 2 * eq.p_lower)
        assert math.isclose(low, -margin, abs_tol=1e-9)
        if eq.estimate < margin:
            _, high = newcombe_paired_interval(*cells, confidence=1 - 2 * eq.p_upper)
            assert math.isclose(high, margin, abs_tol=1e-9)
        else:
            assert eq.p_upper > 0.5
        assert eq.equivalent == (eq.p_value < 0.05)
    assert paired_equivalence(before, after, 0.02).p_upper > 0.5  # estimate 0.03 is outside +0.02
    with pytest.raises(ValueError, match="margin must lie strictly between 0 and 1"):
        paired_equivalence(before, after, 5.0)


def test_mean_equivalence_is_a_t_tost() -> None:
    rng = np.random.default_rng(3)
    d = rng.choice([-2, -1, 0, 1, 2], p=[0.02, 0.08, 0.8, 0.08, 0.02], size=300).astype(float)
    from harness.stats.equivalence import mean_equivalence

    eq = mean_equivalence(d, 0.05)
    low_p = sp.ttest_1samp(d, -0.05, alternative="greater").pvalue
    high_p = sp.ttest_1samp(d, 0.05, alternative="less").pvalue
    assert math.isclose(eq.p_lower, low_p, rel_tol=1e-9) and math.isclose(eq.p_upper, high_p, rel_tol=1e-9)
    ci = sp.ttest_1samp(d, 0.0).confidence_interval(0.90)
    assert math.isclose(eq.ci_low, ci.low) and math.isclose(eq.ci_high, ci.high)
    assert eq.equivalent == (eq.p_value < 0.05)
    point = mean_equivalence(np.zeros(10), 0.05)
    assert point.equivalent and (point.ci_low, point.ci_high) == (0.0, 0.0)
    assert not mean_equivalence(np.full(10, 0.05), 0.05).equivalent  # zero margin is not met
    with pytest.raises(ValueError, match="at least 2 finite differences"):
        mean_equivalence(np.zeros(1), 0.05)


def test_cohen_kappa_by_hand() -> None:
    from harness.stats.proportions import cohen_kappa

    # 2x2 table a=20 (both 1), b=5, c=10, d=15: po = 0.7, pe = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    a = np.array([1] * 20 + [1] * 5 + [0] * 10 + [0] * 15)
    b = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15)
    assert math.isclose(cohen_kappa(a, b), 0.4)
    assert cohen_kappa(np.ones(5, dtype=int), np.ones(5, dtype=int)) == 1.0
    assert cohen_kappa(np.ones(5, dtype=int), np.zeros(5, dtype=int)) == 0.0
