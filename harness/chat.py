"""The one chat-format function: every prompt goes through the tokenizer's own chat template."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import BatchEncoding, PreTrainedTokenizerBase

SENTINEL = "Hello"


class ChatTemplateError(ValueError):
    """A tokenizer that cannot format chats (no template, or a template that hides the instruction)."""


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def format_instructions(
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    system: str | None = None,
    **template_kwargs,
) -> list[str]:
    """Each instruction as one user turn (after an optional system turn), ending in the
    generation prompt, exactly as the model's chat template writes it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"tokenizer {_name(tokenizer)!r} has no chat template; cannot format instructions")
    if isinstance(instructions, str):
        raise TypeError("instructions must be a sequence of strings, got a single str")
    out = []
    for text in instructions:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": text}
        ]
        out.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
        )
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
    **template_kwargs,
) -> BatchEncoding:
    """Formatted, LEFT-padded batch, so position -1 is every prompt's last token.

    A tokenizer without a pad token gets its EOS token as pad (mutates the tokenizer).
    """
    formatted = format_instructions(tokenizer, instructions, system, **template_kwargs)
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


def post_instruction_tokens(tokenizer: PreTrainedTokenizerBase, system: str | None = None, **template_kwargs) -> list[int]:
    """Token ids the template puts after the user's instruction (end-of-turn up to the
    generation prompt), found by formatting a sentinel instruction and taking what follows it."""
    text = format_instructions(tokenizer, [SENTINEL], system, **template_kwargs)[0]
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
