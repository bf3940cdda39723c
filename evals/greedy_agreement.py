"""How far two greedy decodes agree, for the GPU tests and benchmarks that compare a fast path with a plain one (not
collected: no test here)."""

from __future__ import annotations


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of positions (over the longer row of each pair) where the two greedy rows hold the same token."""
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return same / max(1, sum(max(len(ra), len(rb)) for ra, rb in zip(a, b)))
