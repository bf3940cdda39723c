"""The one chat-format function: every prompt goes through the tokenizer's own chat template.

A tokenizer may carry a pinned `ChatFormat` (`set_chat_format`): template kwargs (e.g. Qwen3's
`enable_thinking=False`), the date every `strftime_now` in the template sees (so a prompt does not
change with the clock), the answer prefix written after the generation prompt (so activations and
refusal scores are taken at the first token of the ANSWER, not of a reasoning channel) and how
completions are parsed (`harness.generation.reasoning`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from transformers import BatchEncoding, PreTrainedTokenizerBase

from harness.models.arch import FAMILIES, UnsupportedArchitecture

SENTINEL = "Hello"
DEFAULT_DATE = "2026-01-01"
REASONING_KINDS: tuple[str, ...] = ("none", "think", "harmony")
HARMONY_FINAL = "<|channel|>final<|message|>"
_FORMAT_ATTR = "harness_chat_format"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Set by format_instructions itself, never by a format.
_RESERVED_KWARGS = frozenset({"messages", "add_generation_prompt", "strftime_now", "chat_template", "tokenize"})


class ChatTemplateError(ValueError):
    """A tokenizer that cannot format chats (no template, or a template that hides the instruction)."""


@dataclass(frozen=True)
class ChatFormat:
    """How one model's prompts are formatted and its completions parsed; hashable, repr-stable.

    `template_kwargs` may be given as a mapping; it is stored as sorted (name, value) pairs.
    """

    template_kwargs: tuple[tuple[str, Any], ...] = ()
    date: str = DEFAULT_DATE
    answer_prefix: str = ""
    reasoning: Literal["none", "think", "harmony"] = "none"

    def __post_init__(self) -> None:
        pairs = self.template_kwargs.items() if isinstance(self.template_kwargs, Mapping) else self.template_kwargs
        pairs = tuple(sorted((str(k), v) for k, v in pairs))
        for key, value in pairs:
            if key in _RESERVED_KWARGS:
                raise ValueError(f"ChatFormat.template_kwargs: {key!r} is set by format_instructions itself")
            try:
                hash(value)
            except TypeError:
                raise ValueError(f"ChatFormat.template_kwargs[{key!r}] = {value!r} is not hashable") from None
        object.__setattr__(self, "template_kwargs", pairs)
        if not isinstance(self.date, str) or not _ISO_DATE.match(self.date):
            raise ValueError(f"ChatFormat.date {self.date!r} is not an ISO date (YYYY-MM-DD)")
        try:
            dt.date.fromisoformat(self.date)
        except ValueError as exc:  # e.g. 2026-02-30
            raise ValueError(f"ChatFormat.date {self.date!r}: {exc}") from None
        if self.reasoning not in REASONING_KINDS:
            raise ValueError(f"ChatFormat.reasoning {self.reasoning!r} is not one of {REASONING_KINDS}")

    def kwargs(self) -> dict[str, Any]:
        return dict(self.template_kwargs)

    def describe(self) -> dict[str, Any]:
        """Plain JSON for reports."""
        return {
            "template_kwargs": self.kwargs(),
            "date": self.date,
            "answer_prefix": self.answer_prefix,
            "reasoning": self.reasoning,
        }


# Per family, after Arditi et al.'s reference implementation (andyrdt/refusal_direction): refusal
# openings "I" everywhere, "I"/"As" for Qwen; Qwen3 scored without thinking; gpt-oss at low effort,
# scored at the final channel.
_FAMILY_CHAT: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "gemma": {},
    "gemma2": {},
    "gemma3": {},
    "gemma4": {},
    "qwen2": {"refusal_tokens": ("I", "As")},
    "qwen3": {"refusal_tokens": ("I", "As"), "template_kwargs": {"enable_thinking": False}, "reasoning": "think"},
    "qwen3_5": {"refusal_tokens": ("I", "As"), "template_kwargs": {"enable_thinking": False}, "reasoning": "think"},
    "gpt_oss": {"template_kwargs": {"reasoning_effort": "low"}, "reasoning": "harmony", "answer_prefix": HARMONY_FINAL},
}
_FAMILY_DEFAULTS: dict[str, Any] = {
    "refusal_tokens": ("I",), "template_kwargs": {}, "reasoning": "none", "answer_prefix": ""
}


def family_chat_defaults(family: str) -> dict[str, Any]:
    """{"refusal_tokens", "template_kwargs", "reasoning", "answer_prefix"} for an `harness.models.arch` family."""
    if family not in FAMILIES:
        raise UnsupportedArchitecture(f"family {family!r} has no chat defaults; known: {', '.join(FAMILIES)}")
    merged = _FAMILY_DEFAULTS | _FAMILY_CHAT[family]
    return merged | {"template_kwargs": dict(merged["template_kwargs"])}


def family_chat_format(family: str, date: str = DEFAULT_DATE) -> ChatFormat:
    """The family's default `ChatFormat` (refusal tokens are not part of it)."""
    d = family_chat_defaults(family)
    return ChatFormat(d["template_kwargs"], date=date, answer_prefix=d["answer_prefix"], reasoning=d["reasoning"])


def set_chat_format(tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat) -> None:
    """Pin `fmt` on the tokenizer, so every prompt formatted for it (and its completions' parsing) follows it."""
    if not isinstance(fmt, ChatFormat):
        raise TypeError(f"set_chat_format needs a ChatFormat, got {type(fmt).__name__}")
    setattr(tokenizer, _FORMAT_ATTR, fmt)


def chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """The tokenizer's pinned format, or the default `ChatFormat()`."""
    return getattr(tokenizer, _FORMAT_ATTR, None) or ChatFormat()


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


# transformers (5.x) rebuilds every render kwarg from plain JSON types, so a `strftime_now` callable
# passed to apply_chat_template arrives as the string "<function>". Instead the template itself gets
# a leading macro of that name, which shadows the environment's global for this render only; it
# looks the (pinned) dates up in a plain dict passed as a kwarg. `{{ '' }}` keeps trim_blocks from
# eating a newline the original template starts with.
_PIN_VAR = "harness_pinned_strftime"
_PIN_MACRO = (
    "{% macro strftime_now(format) %}{% if format in " + _PIN_VAR + " %}{{ " + _PIN_VAR + "[format] }}"
    "{% else %}{{ raise_exception('harness: the chat template calls strftime_now with ' ~ format ~ "
    "', which is not a literal format string the pinned date was rendered for') }}{% endif %}"
    "{% endmacro %}{{ '' }}"
)
_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")


def _pin_date(template: str, day: str) -> tuple[str, dict[str, Any]]:
    """(template, extra kwargs) under which every `strftime_now(fmt)` renders `day` at 00:00."""
    if "strftime_now" not in template:
        return template, {}
    moment = dt.datetime.combine(dt.date.fromisoformat(day), dt.time())
    formats = {m.group(2) for m in _STRFTIME_CALL.finditer(template)}
    return _PIN_MACRO + template, {_PIN_VAR: {f: moment.strftime(f) for f in sorted(formats)}}


def format_instructions(
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    system: str | None = None,
    *,
    answer_prefix: bool = True,
    **template_kwargs,
) -> list[str]:
    """Each instruction as one user turn (after an optional system turn), ending in the
    generation prompt, exactly as the model's chat template writes it under the tokenizer's
    `ChatFormat`: its template kwargs (explicit ones win), its pinned date, and with `answer_prefix`
    its answer prefix (prompts that are scored; generation passes False so the model reasons first)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {_name(tokenizer)!r} has no chat template; cannot format instructions")
    if isinstance(instructions, str):
        raise TypeError("instructions must be a sequence of strings, got a single str")
    if "strftime_now" in template_kwargs:
        raise TypeError("format_instructions: the date is pinned by the tokenizer's ChatFormat.date, not strftime_now")
    fmt = chat_format(tokenizer)
    kwargs = fmt.kwargs() | template_kwargs
    template, pin = _pin_date(tokenizer.get_chat_template(kwargs.pop("chat_template", None)), fmt.date)
    suffix = fmt.answer_prefix if answer_prefix else ""
    out = []
    for text in instructions:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": text}
        ]
        rendered = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True, **kwargs, **pin
        )
        out.append(rendered + suffix)
    return out


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _add_special(tokenizer: PreTrainedTokenizerBase, formatted: Sequence[str]) -> bool:
    """Let the tokenizer add BOS only when the template did not write it (no double BOS)."""
    bos = tokenizer.bos_token
    if not _adds_bos(tokenizer):
        return False
    return not all(bos and text.startswith(bos) for text in formatted)


def tokenize_instructions(
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    system: str | None = None,
    *,
    answer_prefix: bool = True,
    **template_kwargs,
) -> BatchEncoding:
    """Formatted, LEFT-padded batch, so position -1 is every prompt's last token (with
    `answer_prefix`, the token before the first answer token).

    A tokenizer without a pad token gets its EOS token as pad (mutates the tokenizer).
    """
    formatted = format_instructions(tokenizer, instructions, system, answer_prefix=answer_prefix, **template_kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ChatTemplateError(f"tokenizer {_name(tokenizer)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer(
        formatted,
        padding=True,
        add_special_tokens=_add_special(tokenizer, formatted),
        return_tensors="pt",
    )


def post_instruction_tokens(
    tokenizer: PreTrainedTokenizerBase,
    system: str | None = None,
    *,
    answer_prefix: bool = True,
    **template_kwargs,
) -> list[int]:
    """Token ids the template puts after the user's instruction (end-of-turn up to the
    generation prompt, and with `answer_prefix` the answer prefix), found by formatting a sentinel
    instruction and taking what follows it."""
    text = format_instructions(tokenizer, [SENTINEL], system, answer_prefix=answer_prefix, **template_kwargs)[0]
    end = text.rfind(SENTINEL)
    if end < 0:
        raise ChatTemplateError(f"tokenizer {_name(tokenizer)!r}: the chat template dropped the instruction text")
    end += len(SENTINEL)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [i for i, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"]) if start >= end]
        straddle = [i for i, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"]) if start < end < stop]
        if straddle:
            raise ChatTemplateError(
                f"tokenizer {_name(tokenizer)!r}: a token spans the end of the instruction and the template text"
            )
        return ids
    return tokenizer(text[end:], add_special_tokens=False)["input_ids"]
