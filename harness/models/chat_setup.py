"""An experiment's `[chat]` section resolved against its model family's defaults: the pinned chat
format (template variables, date, answer prefix, how completions are read) and the refusal openings."""

from __future__ import annotations

from dataclasses import dataclass

from harness.config import ChatConfig
from harness.models.chat import ChatFormat, family_chat_defaults


@dataclass(frozen=True)
class ChatSetup:
    format: ChatFormat
    refusal_tokens: tuple[str, ...]
    family: str

    def describe(self) -> dict:
        return {"family": self.family, "refusal_tokens": list(self.refusal_tokens), **self.format.describe()}


def chat_setup(cfg: ChatConfig, family: str) -> ChatSetup:
    """Each field the experiment leaves unset takes the family default (Arditi et al.'s refusal tokens,
    Qwen3 without thinking, gpt-oss at a pinned reasoning effort scored at its final channel)."""
    defaults = family_chat_defaults(family)
    kwargs = dict(defaults["template_kwargs"] if cfg.template_kwargs is None else cfg.template_kwargs)
    fmt = ChatFormat(
        template_kwargs=kwargs,
        date=cfg.date,
        answer_prefix=defaults["answer_prefix"] if cfg.answer_prefix is None else cfg.answer_prefix,
        reasoning=defaults["reasoning"] if cfg.reasoning is None else cfg.reasoning,
    )
    tokens = tuple(defaults["refusal_tokens"] if cfg.refusal_tokens is None else cfg.refusal_tokens)
    return ChatSetup(fmt, tokens, family)
