"""Split a raw completion into reasoning and answer.

Reasoning models write a chain of thought before the answer: Qwen3 inside `<think>...</think>`,
gpt-oss in harmony channels (`analysis`/`commentary` before `final`). Judges must see the answer
only, and a completion cut off while still reasoning has no answer at all, which is different from a
refusal or a compliance. The kind comes from the tokenizer's `ChatFormat.reasoning`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("none", "think", "harmony")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# ChatML markers that decoding with special tokens may leave in a Qwen answer.
_CHATML = re.compile(r"<\|(?:im_start|im_end|endoftext)\|>")

# Harmony: `[<|start|>ROLE][<|channel|>CHANNEL[ to=...][<|constrain|>...]]<|message|>TEXT` ended by
# <|end|>, <|return|>, <|call|>, the next header or the end of the text (a cut-off completion). A header without a
# channel tag (`<|start|>assistant<|message|>`, or a bare `<|message|>` right after the generation prompt's
# `<|start|>assistant`) is an assistant message with no channel: its text is the answer.
_HEADER = re.compile(
    r"(?:<\|start\|>(?P<role>(?:(?!<\|).)*))?(?:<\|channel\|>(?P<header>(?:(?!<\|message\|>).)*?))?<\|message\|>",
    re.S,
)
_STOP = re.compile(r"<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|<\|channel\|>")
_LEAD_STOP = re.compile(_STOP.pattern + r"|<\|message\|>")
_HARMONY_SPECIAL = re.compile(
    r"<\|(?:start|end|message|channel|constrain|return|call|startoftext|endoftext|endofprompt|reserved_\d+)\|>"
)
_ANSWER_CHANNEL = "final"


@dataclass(frozen=True)
class Parsed:
    answer: str
    reasoning: str
    reached_answer: bool


def parse_completion(raw: str, kind: str, *, prompt_ends_in_answer: bool = False) -> Parsed:
    """Answer and reasoning of `raw` (decoded WITH special tokens for "harmony").

    `prompt_ends_in_answer`: the prompt already opened the answer (e.g. ended in gpt-oss's
    `<|channel|>final<|message|>`), so text before any channel header is answer text.
    """
    if kind == "none":
        return Parsed(answer=raw, reasoning="", reached_answer=True)
    if kind == "think":
        return _parse_think(raw)
    if kind == "harmony":
        return _parse_harmony(raw, prompt_ends_in_answer)
    raise ValueError(f"unknown completion kind {kind!r}; expected one of {', '.join(KINDS)}")


def _parse_think(raw: str) -> Parsed:
    """`<think>R</think>A`; an opened but never closed block reached no answer; no tags: all answer."""
    body = raw.lstrip()
    opened = body.startswith(THINK_OPEN)
    if opened:
        body = body[len(THINK_OPEN) :]
    if THINK_CLOSE in body:
        reasoning, answer = body.split(THINK_CLOSE, 1)
        return Parsed(answer=_CHATML.sub("", answer.lstrip("\n")), reasoning=reasoning.strip(), reached_answer=True)
    if opened:
        return Parsed(answer="", reasoning=body.strip(), reached_answer=False)
    return Parsed(answer=_CHATML.sub("", raw), reasoning="", reached_answer=True)


def _harmony_segments(raw: str, prompt_ends_in_answer: bool) -> list[tuple[str, str]]:
    """(channel, text) per message, in order; headerless leading text is "final" when the prompt
    ended in the answer prefix (even if empty: the model answered nothing), else channel ""
    (unknown, never the answer). A completion that opens with a channel header has no such text."""
    segments: list[tuple[str, str]] = []
    pos = 0
    lead = _LEAD_STOP.search(raw)
    lead_end = lead.start() if lead else len(raw)
    if lead_end > 0 or (prompt_ends_in_answer and not _HEADER.match(raw)):
        segments.append((_ANSWER_CHANNEL if prompt_ends_in_answer else "", raw[:lead_end]))
        pos = lead_end
    for header in _HEADER.finditer(raw, pos):
        if header.start() < pos:
            continue
        channel = _channel(header)
        stop = _STOP.search(raw, header.end())
        end = stop.start() if stop else len(raw)
        segments.append((channel, raw[header.end() : end]))
        pos = end
    return segments


def _channel(header: re.Match) -> str:
    """The header's channel; a header without one is an assistant message's answer ("final") unless it names
    another role."""
    if header.group("header") is not None:
        return re.split(r"\s|<\|", header.group("header").strip(), maxsplit=1)[0]
    role = (header.group("role") or "assistant").strip()
    return _ANSWER_CHANNEL if role.split(" ", 1)[0] == "assistant" else ""


def _clean(parts: list[str]) -> str:
    return "\n\n".join(p for p in (_HARMONY_SPECIAL.sub("", part).strip() for part in parts) if p)


def _parse_harmony(raw: str, prompt_ends_in_answer: bool) -> Parsed:
    """Final-channel text is the answer; analysis/commentary (and unknown) text is reasoning."""
    segments = _harmony_segments(raw, prompt_ends_in_answer)
    finals = [text for channel, text in segments if channel == _ANSWER_CHANNEL]
    others = [text for channel, text in segments if channel != _ANSWER_CHANNEL]
    return Parsed(answer=_clean(finals), reasoning=_clean(others), reached_answer=bool(finals))
