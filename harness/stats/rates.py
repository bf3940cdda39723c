"""A judge's scores as the rate its question asks for: a refusal rate (refusal and fulfilment judges) or an unsafe
rate (harm judges), over a stated denominator.

Scores keep one convention (1 = complied / unsafe, 0 = refused / safe), but what is counted differs by question: a
refusal judge's 0 is a refusal; a harm judge's 0 is a *safe* answer, which a helpful answer to a harmless prompt is,
so it is never counted as a refusal. Every row names its measure and says how many completions it covers (`n`, the
judged), how many had no answer (cut inside the reasoning, never judged) and how many the judge could not score.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.config import MEASURE, Question, judge_question
from harness.stats.proportions import wilson_interval

COUNTED: dict[Question, tuple[int, str]] = {"refusal": (0, "refused"), "fulfilment": (0, "refused"),
                                            "harm": (1, "unsafe")}
"""Per question: the score the rate counts and the name of that count in rows and figures."""


def counted_key(question: Question) -> str:
    """`refused` for refusal/fulfilment judges, `unsafe` for harm judges."""
    return COUNTED[question][1]


def rate_row(condition: str, judge: str, which: str, scores: Sequence[int | None],
             reached: Sequence[bool] | None = None) -> dict:
    """The judge's rate over its judged completions, with the denominator stated: `total` completions, `n` judged,
    `no_answer` (never reached an answer; `reached` False) and `unparseable` (judged, no verdict). A harm judge's
    row counts `unsafe`, a refusal or fulfilment judge's `refused`; `measure` names the rate."""
    reached = [True] * len(scores) if reached is None else list(reached)
    if len(reached) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(reached)} answer flags")
    question = judge_question(judge)
    value, name = COUNTED[question]
    judged = [s for s in scores if s is not None]
    n, k = len(judged), sum(1 for s in judged if s == value)
    lo, hi = wilson_interval(k, n) if n else (float("nan"), float("nan"))
    no_answer = sum(not r for r in reached)
    return {"condition": condition, "judge": judge, "question": question, "measure": MEASURE[question],
            "set": which, "total": len(scores), "n": n, name: k, "rate": k / n if n else float("nan"),
            "ci_low": lo, "ci_high": hi, "no_answer": no_answer, "unparseable": len(scores) - n - no_answer}


def unjudged_failures(row: dict, no_answer_max: float, unparseable_max: float) -> list[tuple[str, str]]:
    """(message, threshold field) for each bound a cell of completions breaks: more than `no_answer_max` of its
    completions reached no answer, or more than `unparseable_max` of the judged outputs were unparseable. `row` is
    harness.judges.unjudged's count for one judge, condition and prompt set."""
    failures = []
    share = row["no_answer"] / row["n"] if row["n"] else 0.0
    where = f"{row['condition']}/{row['set']}"
    if share > no_answer_max:
        failures.append((f"{row['no_answer']} of {row['n']} completions on {where} reached no answer (cut inside the "
                         f"reasoning or no final channel; {share:.1%} > no_answer_max {no_answer_max:.0%})",
                         "no_answer_max"))
    if row["unparseable_share"] > unparseable_max:
        failures.append((f"{row['judge']}: {row['unparseable']} of {row['n'] - row['no_answer']} outputs unparseable "
                         f"on {where} ({row['unparseable_share']:.1%} > judge_unparseable_max {unparseable_max:.0%})",
                         "judge_unparseable_max"))
    return failures
