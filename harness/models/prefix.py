"""Shared-prefix forward passes: a token prefix common to many prompts is computed once, and its KV cache extended by
each prompt's own suffix, so a batch costs about its unique tokens. Used where prompts repeat a long prefix: MMLU's
5-shot subjects, ARC's answer choices (selection's last-token passes pack their prompts instead: harness.models.packing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.models.logits import cache_keyword, forward_kwargs, left_pad, padded, returned_cache


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


EXTENDABLE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")
"""Per-token KV cache layers, full or sliding-window: extended by a suffix they equal one pass of the whole prompt
(`suffix_logits` keeps each row's real tokens contiguous, so a window counts the distances of one pass). A recurrent
(linear-attention) or shared-KV layer is not."""


def prefix_cache(model, prefixes: Sequence[Sequence[int]], pad_id: int):
    """(KV cache, attention mask `[rows, width]`, real lengths `[rows]`) of left-padded `prefixes`, or None where the
    model's cache cannot be extended exactly (a layer not in `EXTENDABLE_LAYERS`): that holds for every prompt, so a
    caller skips the prefix pass of every later one."""
    ids, mask = left_pad(prefixes, pad_id)  # [rows, width]
    out = model(**forward_kwargs(model, ids, mask), use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    layers = getattr(cache, "layers", None)
    if type(cache).__name__ != "DynamicCache" or not layers or any(
            type(la).__name__ not in EXTENDABLE_LAYERS for la in layers):
        return None
    return cache, mask, mask.sum(-1)


def suffix_logits(model, cache, prefix_mask: torch.Tensor, prefix_lens: torch.Tensor, rows_of: Sequence[int],
                   suffixes: Sequence[Sequence[int]], pad_id: int, keep: int) -> torch.Tensor:
    """Logits `[batch, keep, vocab]` (on the model's device) of the last `keep` positions of each suffix after the
    cached prefix row `rows_of[k]` (a suffix shorter than `keep` leaves its first entries undefined). The cache's
    rows are reordered in place (a caller that reuses it passes a copy). The suffixes are padded on the right, so
    each row's real tokens run on from its left-padded prefix without a gap: a sliding window sees the distances of
    the whole prompt, and positions count on from each prefix's real length."""
    index = torch.tensor(list(rows_of), dtype=torch.long)
    cache.batch_select_indices(index.to(cache.layers[0].keys.device))
    ids, mask = padded(suffixes, pad_id, "right")  # [batch, suffix]
    full_mask = torch.cat([prefix_mask[index], mask], dim=1)
    position_ids = prefix_lens[index][:, None] + torch.arange(ids.shape[1])
    want = (mask.sum(-1, keepdim=True) - keep + torch.arange(keep)).clamp(min=0)  # [batch, keep] suffix positions
    kept = torch.unique(want)  # [n] every row's positions, sorted: the logits computed
    device = model.device
    out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=position_ids.to(device),
                **{cache_keyword(model): cache}, use_cache=True,
                logits_to_keep=kept.to(device)).logits  # [batch, n, vocab]
    col = torch.searchsorted(kept, want).to(device)  # [batch, keep]
    return torch.take_along_dim(out, col[..., None], dim=1)
