"""Which judges run and the question each answers (refusal, fulfilment, harm), with the headline per question."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Revision, Strict

JudgeName = Literal["substring", "llamaguard2", "llamaguard3", "sorry-bench"]
Question = Literal["refusal", "fulfilment", "harm"]

JUDGE_QUESTION: dict[str, Question] = {
    "substring": "refusal",
    "sorry-bench": "fulfilment",
    "llamaguard2": "harm",
    "llamaguard3": "harm",
}
"""The question each judge answers. `refusal`: did the model decline (0 = refused, 1 = complied); `fulfilment`:
did the answer fulfil a potentially unsafe request (SORRY-Bench's official judge; harmful prompts only; 0 = not
fulfilled, counted as a refusal); `harm`: is the answer unsafe (Llama Guard; 0 = safe, 1 = unsafe). A harm judge's
"safe" is never a refusal: a helpful answer to a harmless prompt is safe."""

MEASURE: dict[Question, str] = {"refusal": "refusal rate", "fulfilment": "refusal rate", "harm": "unsafe rate"}
"""The rate each question's claims and tables report: the share scored 0 for refusal/fulfilment, 1 for harm."""

HeadlineKey = Literal["refusal", "harm"]
HEADLINE_QUESTIONS: dict[str, tuple[Question, ...]] = {"refusal": ("refusal", "fulfilment"), "harm": ("harm",)}
DEFAULT_HEADLINE_ORDER: dict[str, tuple[Question, ...]] = {"refusal": ("fulfilment", "refusal"), "harm": ("harm",)}


def judge_question(name: str) -> Question:
    """The question judge `name` answers (JUDGE_QUESTION), with an error naming the known judges."""
    if name not in JUDGE_QUESTION:
        raise ValueError(f"unknown judge {name!r}; known: {', '.join(JUDGE_QUESTION)}")
    return JUDGE_QUESTION[name]


def meaningful(judge: str, which: str) -> bool:
    """Whether a judge's rate on a prompt set means something: the fulfilment judge is defined on potentially
    unsafe requests only, so its rate on harmless prompts is not reported."""
    return not (judge_question(judge) == "fulfilment" and which == "harmless")


class JudgeConfig(Strict):
    substring: bool = True
    refusal_substrings: list[str] | None = None
    model: Literal["llamaguard2", "llamaguard3", "sorry-bench"] | None = None
    model_id: str | None = None
    revision: Revision = None
    evaluator_commit: Revision = None
    headline: dict[HeadlineKey, JudgeName] = Field(
        default_factory=dict,
        description="one headline judge per question, e.g. { refusal = \"substring\", harm = \"llamaguard2\" }: "
        "refusal claims are asserted on the `refusal` headline (a refusal or fulfilment judge), unsafe-rate claims "
        "on the `harm` headline (a harm judge); the others are reported beside them. Defaults: the fulfilment judge, "
        "else substring, for refusal; the harm judge, where one is configured, for harm",
    )
    short_response_words: int | None = Field(
        None, ge=1, description="Llama Guard: a response with fewer words is not counted as unsafe (the "
        "reference implementation uses 15, counting on the stripped response split on single spaces)"
    )
    batch_size: int | None = Field(
        None, ge=1, description="completions per batch for a model judge on the transformers backend (default: "
        "the judge's own, 16 for Llama Guard, 8 for SORRY-Bench); larger on a GPU"
    )
    harmless_judges: list[JudgeName] | None = Field(
        None, description="the judges that read completions to harmless prompts (default: every configured judge "
        "defined there; the fulfilment judge never is). It must hold the over-refusal judge. Arditi et al.'s pipeline "
        "judges harmless completions by substring matching only (its refusal_eval_methodologies); a harm judge's "
        "unsafe rate there is a report figure that no claim asserts"
    )

    @field_validator("headline", mode="before")
    @classmethod
    def _headline_form(cls, value: object) -> object:
        if isinstance(value, str):
            key = "harm" if JUDGE_QUESTION.get(value) == "harm" else "refusal"
            raise ValueError(f"headline is one judge per question, not one judge for all: write "
                             f"headline = {{ {key} = \"{value}\" }} (keys: refusal, harm)")
        return value

    @model_validator(mode="after")
    def _headline(self) -> "JudgeConfig":
        configured = self._configured()
        for key, name in self.headline.items():
            if name not in configured:
                raise ValueError(f"headline.{key} judge {name!r} is not configured; configured: {configured}")
            if JUDGE_QUESTION[name] not in HEADLINE_QUESTIONS[key]:
                raise ValueError(f"headline.{key} = {name!r}, but {name} answers the {JUDGE_QUESTION[name]!r} "
                                 f"question; a {key} headline must be a judge of "
                                 f"{' or '.join(HEADLINE_QUESTIONS[key])}")
        if not any(JUDGE_QUESTION[n] in HEADLINE_QUESTIONS["refusal"] for n in configured):
            raise ValueError(f"no refusal judge configured ({configured} answer only the harm question): refusal "
                             "claims need `substring = true` or the sorry-bench fulfilment judge")
        if self.short_response_words is not None and self.model not in ("llamaguard2", "llamaguard3"):
            raise ValueError("short_response_words applies to a Llama Guard `model` only")
        if self.harmless_judges is not None:
            for name in self.harmless_judges:
                if name not in configured:
                    raise ValueError(f"harmless_judges names {name!r}, which is not configured; configured: "
                                     f"{configured}")
                if not meaningful(name, "harmless"):
                    raise ValueError(f"harmless_judges names {name!r}, a {JUDGE_QUESTION[name]} judge: it is "
                                     "defined on potentially unsafe requests only")
            over = self.over_refusal_judge()
            if over not in self.harmless_judges:
                raise ValueError(f"harmless_judges must hold the over-refusal judge {over!r} (over-refusal claims "
                                 f"read it on harmless prompts); got {self.harmless_judges}")
        return self

    def _configured(self) -> list[str]:
        names = ([self.model] if self.model else []) + (["substring"] if self.substring else [])
        if not names:
            raise ValueError("no judge configured: set `substring = true` or a `model`")
        return names

    def names(self) -> list[str]:
        """Every configured judge: the refusal headline first, then the harm headline, then the rest."""
        names = self._configured()
        heads = [h for h in (self.headline_for("refusal"), self.headline_for("harm")) if h]
        return heads + [n for n in names if n not in heads]

    def reads(self, name: str, which: str) -> bool:
        """Whether judge `name` scores the completions to prompt set `which` ("harmful" or "harmless") in this
        experiment: where its rate means something (`meaningful`) and, for harmless prompts, `harmless_judges`
        names it (all, by default)."""
        if not meaningful(name, which):
            return False
        return which != "harmless" or self.harmless_judges is None or name in self.harmless_judges

    def headline_for(self, key: HeadlineKey) -> str | None:
        """The headline judge of `key` ("refusal" or "harm"): the configured one, else the default (refusal: the
        fulfilment judge, else substring; harm: the harm judge); None where no judge answers it."""
        if key in self.headline:
            return self.headline[key]
        names = self._configured()
        for question in DEFAULT_HEADLINE_ORDER[key]:
            for name in names:
                if JUDGE_QUESTION[name] == question:
                    return name
        return None

    @property
    def headline_name(self) -> str:
        """The refusal headline: every refusal claim is asserted on it."""
        return self.names()[0]

    @property
    def harm_headline(self) -> str | None:
        """The harm headline (unsafe-rate claims), None where no harm judge is configured."""
        return self.headline_for("harm")

    def over_refusal_judge(self) -> str:
        """The judge of over-refusal on harmless prompts: a `refusal` judge only (a harm judge calls a helpful
        answer "safe", and the fulfilment judge is defined on potentially unsafe requests only)."""
        head = self.headline_name
        if JUDGE_QUESTION[head] == "refusal":
            return head
        for name in self.names():
            if JUDGE_QUESTION[name] == "refusal":
                return name
        raise ValueError(f"over-refusal on harmless prompts needs a refusal judge (substring); configured: "
                         f"{self.names()}")
