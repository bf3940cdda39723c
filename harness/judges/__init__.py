"""Judges score completions: 1 = complied (unsafe), 0 = refused (safe), as SORRY-Bench scores.

Each judge answers one question (`question`, harness.config.JUDGE_QUESTION): `refusal` (substring: did the model
decline), `fulfilment` (the SORRY-Bench judge: did the answer fulfil a potentially unsafe request) or `harm` (Llama
Guard: is the answer unsafe). A harm judge's 0 means safe, never refused; harness.stats.rates counts each
question's rate.

Every judge is callable `judge(prompts, completions) -> list[int | None]`: 1 = complied (unsafe),
0 = refused (safe), None = the judge's own output could not be parsed (a model judge that answered
something other than a verdict). One odd output never aborts a run; callers count None as "unjudged"
and model judges keep the raw outputs of their last call in `last_outputs` for diagnosis.
Each judge carries `name` and `revision` for reports, and `cache_identity()`: a JSON-able dict of
everything that determines its scores (model pin, variant options, prompt hash, code fingerprint,
library versions), which judgment caches are keyed by.

Judgments stage. Owns the judges (substring, Llama Guard, SORRY-Bench official, rehearsal stand-ins), their
backends, agreement between judges and late refusals (`truncation`).
May import: config, run, data, models, steering, generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from harness.config import JudgeConfig
from harness.judges.backends import JUDGE_TOX_ENV, JudgeBackendMissing
from harness.judges.substring import REFUSAL_SUBSTRINGS, SubstringJudge, is_refusal

JUDGE_NAMES = ("substring", "llamaguard2", "llamaguard3", "sorry-bench")


class Judge(Protocol):
    name: str
    question: str
    revision: str | None

    def __call__(self, prompts: list[str], completions: list[str]) -> list[int | None]: ...

    def cache_identity(self) -> dict[str, Any]: ...


def unjudged(reached: Sequence[bool], scores: Sequence[int | None]) -> dict[str, float]:
    """Counts of completions without a score: `no_answer` (cut inside the reasoning, never judged) and
    `unparseable` (judged, but the judge's output had no verdict), and the unparseable share of the judged."""
    if len(reached) != len(scores):
        raise ValueError(f"{len(reached)} completions but {len(scores)} scores")
    answered = sum(bool(r) for r in reached)
    bad = sum(1 for r, s in zip(reached, scores) if r and s is None)
    return {"n": len(scores), "no_answer": len(scores) - answered, "unparseable": bad,
            "unparseable_share": bad / answered if answered else 0.0}


def get_judge(cfg: JudgeConfig | str, **kw: Any) -> Judge:
    """A judge by name, or the model judge of a JudgeConfig (its substring judge when it names no model).

    `kw` goes to the judge's constructor (e.g. substrings=, backend=, model=, tokenizer=). A config's
    `short_response_words` (Llama Guard only) reaches the judge unless `kw` sets it.
    """
    if isinstance(cfg, JudgeConfig):
        if cfg.model is None:
            return SubstringJudge(kw.pop("substrings", cfg.refusal_substrings))
        name = cfg.model
        kw.setdefault("model_id", cfg.model_id)
        kw.setdefault("revision", cfg.revision)
        if name == "sorry-bench":
            kw.setdefault("evaluator_commit", cfg.evaluator_commit)
        if getattr(cfg, "batch_size", None) is not None and name != "substring":
            kw.setdefault("batch_size", cfg.batch_size)
        short = getattr(cfg, "short_response_words", None)
        if short is not None:
            if name not in ("llamaguard2", "llamaguard3"):
                raise ValueError(f"short_response_words={short} applies to the Llama Guard judges, not {name!r}")
            kw.setdefault("short_response_words", short)
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
    "unjudged",
    "is_refusal",
]
