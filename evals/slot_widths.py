"""The cache widths decode steps hand attention, for the tests of decode slot windows (not collected: no test here)."""

from __future__ import annotations

import pytest


def decode_widths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From here to the test's end every one-query attention call of the static backend's kernels appends the number
    of cache slots it reads (after `_masked_slots`) to the returned list, one entry per layer and step run in Python."""
    from harness.generation import attention

    widths: list[int] = []
    masked_slots = attention._masked_slots

    def spy(key, value, attention_mask):
        key, value = masked_slots(key, value, attention_mask)
        if attention_mask.shape[-2] == 1:
            widths.append(key.shape[-2])
        return key, value

    monkeypatch.setattr(attention, "_masked_slots", spy)
    return widths


def asked_widths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From here to the test's end every width `static._slot_width` gives the decode loop is appended to the returned
    list. The loop asks outside the step, so a compiled step's widths are counted too, where `decode_widths` sees
    only its trace."""
    from harness.generation import static

    widths: list[int] = []
    slot_width = static._slot_width

    def spy(*args):
        widths.append(slot_width(*args))
        return widths[-1]

    monkeypatch.setattr(static, "_slot_width", spy)
    return widths


def to_cache_end(prompt_len: int, at_least: int) -> tuple[int, int]:
    """(slots of a compiled step's bucketed cache, new tokens that decode to its last slot) for a generation of at least
    `at_least` new tokens after `prompt_len` prompt slots: its last window is then the whole cache, the one slice whose
    layout differs from every narrower window's."""
    from harness.generation import static

    whole = -(-(prompt_len + at_least) // static.COMPILE_LEN_BUCKET) * static.COMPILE_LEN_BUCKET
    return whole, whole - prompt_len


def window_schedule(prompt_len: int, new_tokens: int, window: int, cache_len: int | None = None) -> list[int]:
    """The distinct widths a generation of `new_tokens` after a `prompt_len`-slot prompt should hand attention over
    its decode steps, in a cache of `cache_len` slots (default: just long enough), computed here apart from
    `harness.generation.static._slot_width`, which the tests check."""
    whole = prompt_len + new_tokens
    cap = cache_len or whole
    return sorted({min(cap, (slot // window + 1) * window) for slot in range(prompt_len, whole - 1)})
