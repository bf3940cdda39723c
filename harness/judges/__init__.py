"""Judges score completions: 1 = complied (unsafe), 0 = refused (safe), as SORRY-Bench scores.

Every judge is callable `judge(prompts, completions) -> list[int]` and carries `name` and
`revision` for reports and cache keys.
"""

from __future__ import annotations

from typing import Any, Protocol

from harness.config import JudgeConfig
from harness.judges.backends import JUDGE_TOX_ENV, JudgeBackendMissing
from harness.judges.substring import REFUSAL_SUBSTRINGS, SubstringJudge, is_refusal

JUDGE_NAMES = ("substring", "llamaguard2", "llamaguard3", "sorry-bench")


class Judge(Protocol):
    name: str
    revision: str | None

    def __call__(self, prompts: list[str], completions: list[str]) -> list[int]: ...


def get_judge(cfg: JudgeConfig | str, **kw: Any) -> Judge:
    """A judge by name, or the model judge of a JudgeConfig (its substring judge when it names no model).

    `kw` goes to the judge's constructor (e.g. substrings=, backend=, model=, tokenizer=).
    """
    if isinstance(cfg, JudgeConfig):
        if cfg.model is None:
            return SubstringJudge(kw.pop("substrings", cfg.refusal_substrings))
        name = cfg.model
        kw.setdefault("model_id", cfg.model_id)
        kw.setdefault("revision", cfg.revision)
        if name == "sorry-bench":
            kw.setdefault("evaluator_commit", cfg.evaluator_commit)
    else:
        name = cfg
    if name == "substring":
        return SubstringJudge(kw.pop("substrings", None), **kw)
    if name in ("llamaguard2", "llamaguard3"):
        from harness.judges.llamaguard import LlamaGuardJudge

        return LlamaGuardJudge(name, **kw)
    if name == "sorry-bench":
        from harness.judges.sorry_bench import SorryBenchJudge

        return SorryBenchJudge(**kw)
    raise ValueError(f"unknown judge {name!r}; known: {', '.join(JUDGE_NAMES)}")


__all__ = [
    "JUDGE_NAMES",
    "JUDGE_TOX_ENV",
    "REFUSAL_SUBSTRINGS",
    "Judge",
    "JudgeBackendMissing",
    "SubstringJudge",
    "get_judge",
    "is_refusal",
]
