"""harness.judges.agreement against hand-computed 2x2 tables, the textbook kappa formula and the degenerate cases."""

from __future__ import annotations

import math
import random

import pytest

from harness.judges.agreement import agreement, cohen_kappa


def _lists(both_complied: int, a_refused_b_complied: int, a_complied_b_refused: int, both_refused: int):
    cells = [(1, 1)] * both_complied + [(0, 1)] * a_refused_b_complied + [(1, 0)] * a_complied_b_refused \
        + [(0, 0)] * both_refused
    return [a for a, _ in cells], [b for _, b in cells]


def test_a_hand_computed_table():
    """8 both complied, 2 A refused/B complied, 3 A complied/B refused, 7 both refused (n = 20):
    p_o = 15/20 = 0.75; A complied 11/20, B complied 10/20; p_e = (11*10 + 9*10)/400 = 0.5; kappa = 0.25/0.5."""
    a, b = _lists(8, 2, 3, 7)
    got = agreement(a, b)
    assert (got.n, got.agree, got.a_refused_b_complied, got.a_complied_b_refused, got.skipped) == (20, 15, 2, 3, 0)
    assert got.agreement == 0.75
    assert got.kappa == pytest.approx(0.5, abs=1e-12)


def test_the_textbook_example():
    """Wikipedia's Cohen's kappa example: 20 yes/yes, 5 A yes/B no, 10 A no/B yes, 15 no/no -> 0.4."""
    assert cohen_kappa(20, 10, 5, 15) == pytest.approx(0.4, abs=1e-12)


def test_matches_the_formula_on_random_judgments():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 40)
        a = [rng.choice((0, 1, None)) for _ in range(n)]
        b = [rng.choice((0, 1)) if rng.random() < 0.8 else None for _ in range(n)]
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        got = agreement(a, b)
        assert got.skipped == n - len(pairs) and got.n == len(pairs)
        if len({x for x, _ in pairs}) < 2 and len({y for _, y in pairs}) < 2:
            assert math.isnan(got.kappa)
            continue
        p_a = sum(x for x, _ in pairs) / len(pairs)
        p_b = sum(y for _, y in pairs) / len(pairs)
        p_o = sum(x == y for x, y in pairs) / len(pairs)
        p_e = p_a * p_b + (1 - p_a) * (1 - p_b)
        assert got.kappa == pytest.approx((p_o - p_e) / (1 - p_e), abs=1e-12)


def test_perfect_agreement_and_disagreement():
    assert agreement([1, 0, 1, 0], [1, 0, 1, 0]).kappa == 1.0
    opposite = agreement([1, 0, 1, 0], [0, 1, 0, 1])
    assert opposite.kappa == -1.0 and opposite.agreement == 0.0
    assert (opposite.a_refused_b_complied, opposite.a_complied_b_refused) == (2, 2)


def test_both_judges_constant_leave_kappa_undefined_never_one():
    same = agreement([0, 0, 0], [0, 0, 0])
    assert same.agreement == 1.0 and math.isnan(same.kappa)
    apart = agreement([1, 1, 1], [0, 0, 0])
    assert apart.agreement == 0.0 and math.isnan(apart.kappa) and apart.a_complied_b_refused == 3


def test_one_constant_judge_gives_kappa_zero():
    """A always complied, B half: p_o = p_e = 0.5, so no agreement beyond chance."""
    got = agreement([1, 1, 1, 1], [1, 1, 0, 0])
    assert got.agreement == 0.5 and got.kappa == 0.0


def test_unjudged_pairs_are_skipped_and_counted():
    got = agreement([1, None, 0, 1, 0], [1, 0, None, None, 0])
    assert (got.n, got.agree, got.skipped) == (2, 2, 3)
    empty = agreement([None, 1], [0, None])
    assert empty.n == 0 and empty.skipped == 2 and math.isnan(empty.agreement) and math.isnan(empty.kappa)
    assert math.isnan(agreement([], []).kappa)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="scored 2 completions"):
        agreement([1, 0], [1])
    with pytest.raises(ValueError, match="1 \\(complied\\)"):
        agreement([2], [1])
