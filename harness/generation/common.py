"""What every generation backend shares: the error, the stop tokens, cutting rows at a stop token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

Intervention = Callable[[], AbstractContextManager]


class GenerationError(RuntimeError):
    """A generation request that cannot be served; the message names the setting at fault."""


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the generation config's EOS ids and the tokenizer's."""
    found: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for tok in value if isinstance(value, (list, tuple)) else [value]:
            if tok is not None and int(tok) not in found:
                found.append(int(tok))
    return found


def text_config(config: Any) -> Any:
    """The decoder's text config of a (possibly multimodal) model config."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def cut_at_eos(rows: list[list[int]], eos: Sequence[int]) -> list[list[int]]:
    stops = set(eos)
    out = []
    for row in rows:
        end = next((k for k, tok in enumerate(row) if tok in stops), len(row))
        out.append(row[:end])
    return out
