"""Packed forward passes: many short prompts in one row, each attending only to itself and the prefix they all share.

A left-padded batch of prompts of uneven length spends FLOPs on its padding (40% of the Arditi validation prompts'
batch under Qwen3's template), and a shared chat-template prefix (a system turn) is recomputed per prompt. Packed,
a row holds the shared prefix once and then each prompt's rest; a block mask lets each prompt's tokens see the prefix
and their own earlier tokens only, at the positions the prompt has alone (sliding windows count those positions), so
each prompt's last-token logits are the function a batch computes, at about its real tokens' cost. Attention-only
models: a recurrent (linear-attention) layer would carry state from one prompt into the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.models.arch import layer_windows, masks_by_layer_type
from harness.models.prefix import common_prefix_len

PACK_TOKENS = 2048
"""Tokens per packed row: the masked attention is computed densely over the row, so its FLOPs grow with the row's
square (~7% beside a 4k-wide model's other FLOPs at 2048 tokens, far more on a narrow one: the 576-wide demo model's
capability scoring ran 40% slower packed than with its shared-prefix cache, so only selection packs)."""
FORWARD_TOKENS = 8192
"""Tokens per forward (rows x width): several rows go through one forward where they fit."""


@dataclass(frozen=True)
class Pack:
    """One forward of packed rows. `input_ids`, `position_ids`, `segment`: `[rows, width]` on the CPU (`segment`: -1
    for the shared prefix, the prompt's index for its own tokens, -2 for right padding); `ends`: (row, column) of
    each packed prompt's last token, in prompt order."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    ends: list[tuple[int, int]]


def pack(seqs: Sequence[Sequence[int]], pad_id: int, *, shared: int | None = None, row_tokens: int = PACK_TOKENS,
         forward_tokens: int = FORWARD_TOKENS) -> list[Pack]:
    """Token rows `seqs` packed for forward passes: each row is the shared prefix (its first `shared` tokens; by
    default as many as every sequence shares, each keeping one of its own) then whole sequences in order, up to
    `row_tokens` (a longer sequence gets a row of its own); rows go together into forwards of up to `forward_tokens`.
    The packs' prompts, in order, are `seqs` in order."""
    if not seqs:
        raise ValueError("pack needs at least one sequence")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("pack cannot place an empty sequence")
    limit = min(common_prefix_len(seqs), min(map(len, seqs)) - 1)
    shared = limit if shared is None else shared
    if not 0 <= shared <= limit:
        raise ValueError(f"shared prefix of {shared} tokens; these sequences share at most {limit} with one left each")
    rows: list[list[int]] = []  # sequence indices per row
    used = row_tokens
    for i, seq in enumerate(seqs):
        rest = len(seq) - shared
        if rows and used + rest <= row_tokens:
            rows[-1].append(i)
            used += rest
        else:
            rows.append([i])
            used = shared + rest
    widths = [shared + sum(len(seqs[i]) - shared for i in row) for row in rows]
    packs, start = [], 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop + 1 - start) * max(widths[start : stop + 1]) <= forward_tokens:
            stop += 1
        packs.append(_pack_rows(rows[start:stop], seqs, shared, pad_id, max(widths[start:stop])))
        start = stop
    return packs


def _pack_rows(rows: list[list[int]], seqs: Sequence[Sequence[int]], shared: int, pad_id: int, width: int) -> Pack:
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -2, dtype=torch.long)
    ends = []
    for r, row in enumerate(rows):
        ids[r, :shared] = torch.tensor(list(seqs[row[0]][:shared]), dtype=torch.long)
        pos[r, :shared] = torch.arange(shared)
        seg[r, :shared] = -1
        col = shared
        for i in row:
            n = len(seqs[i]) - shared
            ids[r, col : col + n] = torch.tensor(list(seqs[i][shared:]), dtype=torch.long)
            pos[r, col : col + n] = torch.arange(shared, len(seqs[i]))
            seg[r, col : col + n] = i
            col += n
            ends.append((r, col - 1))
    return Pack(ids, pos, seg, ends)


def pack_mask(config, p: Pack, dtype: torch.dtype, device) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive attention masks `[rows, 1, width, width]` for `p`: a token sees the shared prefix and its own
    prompt's earlier tokens (a padding token sees itself, so no row of the softmax is empty), and a sliding-window
    layer only those within its window by position. Keyed by layer type where the model's config names them."""
    seg = p.segment.to(device)
    pos = p.position_ids.to(device)
    same = (seg[:, :, None] == seg[:, None, :]) | ((seg[:, None, :] == -1) & (seg[:, :, None] >= 0))
    dist = pos[:, :, None] - pos[:, None, :]  # [rows, q, k]
    causal = same & (dist >= 0)
    eye = torch.eye(seg.shape[1], dtype=torch.bool, device=device)[None]
    neg = torch.finfo(dtype).min

    def additive(window: int | None) -> torch.Tensor:
        allowed = (causal if window is None else causal & (dist < window)) | eye
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), neg)[:, None]

    return masks_by_layer_type(config, layer_windows(config), additive)


def pack_kwargs(model, p: Pack) -> dict:
    """What the model is called with for `p`, on its device."""
    device = model.device
    dtype = model.get_input_embeddings().weight.dtype
    return {"input_ids": p.input_ids.to(device), "position_ids": p.position_ids.to(device),
            "attention_mask": pack_mask(model.config, p, dtype, device)}


def packed_last_logits(model, packs: Sequence[Pack], kwargs: Sequence[dict] | None = None,
                       copies: int = 1) -> torch.Tensor:
    """Next-token logits at each packed prompt's last token -> `[copies * n, vocab]` float32 on the model's device, in
    prompt order across `packs` (each `Pack`'s prompts in order, packs in order). `kwargs`: precomputed `pack_kwargs`.
    `copies` > 1 runs each pack's rows that many times over in one forward (copy-major: copy c of a pack's row r is
    row c * rows + r, where `ablate_rows` can give each copy its own direction); copy c's logits are rows c * n to
    (c + 1) * n of the result."""
    out = []  # per pack: [copies, n_pack, vocab]
    for k, p in enumerate(packs):
        kw = kwargs[k] if kwargs is not None else pack_kwargs(model, p)
        if copies > 1:
            kw = {name: _repeat_rows(value, copies) for name, value in kw.items()}
        n_rows = p.input_ids.shape[0]
        rows = torch.tensor([r for r, _ in p.ends])
        cols = torch.tensor([c for _, c in p.ends])
        kept = torch.unique(cols)  # sorted: the positions whose logits are computed
        logits = model(**kw, use_cache=False, logits_to_keep=kept.to(model.device)).logits  # [copies*rows, kept, vocab]
        index = torch.searchsorted(kept, cols).to(logits.device)
        every = (torch.arange(copies)[:, None] * n_rows + rows[None]).to(logits.device)  # [copies, n_pack]
        out.append(logits[every, index[None].expand_as(every)].float())
    return torch.cat(out, dim=1).flatten(0, 1)


def _repeat_rows(value, copies: int):
    """A forward argument (a `[rows, ...]` tensor, or a dict of them: masks by layer type) with its rows repeated."""
    if isinstance(value, dict):
        return {name: _repeat_rows(v, copies) for name, v in value.items()}
    return value.repeat(copies, *([1] * (value.ndim - 1)))
