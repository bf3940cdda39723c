"""Reference prompt filtering (Arditi et al. 2024): fit and select the direction only on harmful prompts
the unmodified model refuses (refusal score > 0) and harmless prompts it answers (score < 0)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.steering.selection import refusal_score


class FilterError(ValueError):
    """Filtering left a set empty; the message gives the counts."""


@dataclass(frozen=True)
class Filtered:
    kept: list[str]
    n_before: int

    @property
    def n_after(self) -> int:
        return len(self.kept)


def filter_prompts(model, tokenizer, prompts: Sequence[str], refusal_ids: Sequence[int], *, keep: str,
                   batch_size: int = 32, system: str | None = None) -> Filtered:
    """`keep="refused"`: prompts with refusal score > 0; `keep="answered"`: score < 0 (the base model)."""
    if keep not in ("refused", "answered"):
        raise ValueError(f"keep must be 'refused' or 'answered', got {keep!r}")
    prompts = list(prompts)
    if not prompts:
        return Filtered([], 0)
    scores = refusal_score(model, tokenizer, prompts, refusal_ids, batch_size=batch_size, system=system)
    mask = scores > 0 if keep == "refused" else scores < 0
    return Filtered([p for p, m in zip(prompts, mask.tolist()) if m], len(prompts))


def require_nonempty(counts: dict[str, Filtered]) -> None:
    empty = [name for name, f in counts.items() if f.n_before and not f.n_after]
    if empty:
        detail = ", ".join(f"{name} {counts[name].n_before} -> 0" for name in empty)
        raise FilterError(f"reference filtering removed every prompt of {detail}; the base model does not "
                          "refuse harmful / answer harmless prompts as the filter expects (data.filter_prompts)")
