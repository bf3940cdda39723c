"""Packed forward passes: many short sequences in one row, each attending only to itself and the prefix it shares.

A left-padded batch of prompts of uneven length spends FLOPs on its padding (40% of the Arditi validation prompts'
batch under Qwen3's template), and a prefix shared by many prompts (a chat template's system turn, an MMLU subject's
five shots, an ARC question before its answer choices) is recomputed per prompt. Packed, a row holds each group's
shared prefix once and then the group's sequences (their rest after the prefix); a block mask lets a sequence's tokens
see its group's prefix and its own earlier tokens only, at the positions it has alone (sliding windows count those
positions), so each sequence's logits are the function a padded batch computes, at about its real tokens' cost.
Attention-only models: a recurrent (linear-attention) layer would carry state from one sequence into the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.models.arch import layer_windows

PACK_TOKENS = 2048
"""Tokens per packed row: the masked attention is computed densely over the row, so its FLOPs grow with the row's
square (~7% beside a 4k-wide model's other FLOPs at 2048 tokens)."""
FORWARD_TOKENS = 8192
"""Tokens per forward (rows x width): several rows go through one forward where they fit."""

def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != first[k] for s in seqs[1:]):
            return k
    return n


Group = tuple[Sequence[int], Sequence[Sequence[int]]]
"""(shared prefix, the sequences' rests after it)."""


@dataclass(frozen=True)
class Pack:
    """One forward of packed rows. `input_ids`, `position_ids`, `group`, `segment`: `[rows, width]` on the CPU (`group`:
    the group's index, -1 for right padding; `segment`: -1 on a group's prefix, the sequence's index on its own tokens,
    -2 on padding). `spans`: (row, start, stop) columns of each packed sequence's own tokens, in sequence order."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    group: torch.Tensor
    segment: torch.Tensor
    spans: list[tuple[int, int, int]]

    @property
    def ends(self) -> list[tuple[int, int]]:
        """(row, column) of each sequence's last token."""
        return [(r, stop - 1) for r, _, stop in self.spans]


def pack(seqs: Sequence[Sequence[int]], pad_id: int, *, shared: int | None = None, row_tokens: int = PACK_TOKENS,
         forward_tokens: int = FORWARD_TOKENS) -> list[Pack]:
    """Token rows `seqs` as one group: the prefix is their first `shared` tokens (by default as many as every sequence
    shares, each keeping one of its own), see `pack_groups`."""
    if not seqs:
        raise ValueError("pack needs at least one sequence")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("pack cannot place an empty sequence")
    limit = min(common_prefix_len(seqs), min(map(len, seqs)) - 1)
    shared = limit if shared is None else shared
    if not 0 <= shared <= limit:
        raise ValueError(f"shared prefix of {shared} tokens; these sequences share at most {limit} with one left each")
    return pack_groups([(seqs[0][:shared], [s[shared:] for s in seqs])], pad_id, row_tokens=row_tokens,
                       forward_tokens=forward_tokens)


def pack_groups(groups: Sequence[Group], pad_id: int, *, row_tokens: int = PACK_TOKENS,
                forward_tokens: int = FORWARD_TOKENS) -> list[Pack]:
    """`groups` packed for forward passes: rows of up to `row_tokens` (a longer block gets a row of its own), each a run
    of blocks "group prefix, then some of the group's sequences in order" (a group that does not fit goes on in the next
    row with its prefix again); rows go together into forwards of up to `forward_tokens`. The packs' sequences, in
    order, are the groups' sequences in order."""
    if not groups or any(not rests for _, rests in groups):
        raise ValueError("pack_groups needs groups of at least one sequence")
    if any(len(rest) == 0 for _, rests in groups for rest in rests):
        raise ValueError("pack cannot place an empty sequence")
    rows: list[list[tuple[int, list[int]]]] = []  # per row: (group, its sequences' global indices) blocks
    used, index = row_tokens, 0
    for g, (prefix, rests) in enumerate(groups):
        open_here = False  # whether this group has a block in the current row
        for rest in rests:
            need = len(rest) + (0 if open_here else len(prefix))
            if not rows or used + need > row_tokens:
                rows.append([])
                used, open_here, need = 0, False, len(rest) + len(prefix)
            if not open_here:
                rows[-1].append((g, []))
                open_here = True
            rows[-1][-1][1].append(index)
            used += need
            index += 1
    rests_of = [rest for _, rests in groups for rest in rests]
    widths = [sum(len(groups[g][0]) + sum(len(rests_of[i]) for i in members) for g, members in row) for row in rows]
    packs, start = [], 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop + 1 - start) * max(widths[start : stop + 1]) <= forward_tokens:
            stop += 1
        packs.append(_pack_rows(rows[start:stop], groups, rests_of, pad_id))
        start = stop
    return packs


def _pack_rows(rows: list[list[tuple[int, list[int]]]], groups: Sequence[Group], rests_of: list[Sequence[int]],
               pad_id: int) -> Pack:
    width = max(sum(len(groups[g][0]) + sum(len(rests_of[i]) for i in members) for g, members in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    grp = torch.full((len(rows), width), -1, dtype=torch.long)
    seg = torch.full((len(rows), width), -2, dtype=torch.long)
    spans = []
    for r, row in enumerate(rows):
        col = 0
        for g, members in row:
            prefix = list(groups[g][0])
            ids[r, col : col + len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            pos[r, col : col + len(prefix)] = torch.arange(len(prefix))
            grp[r, col : col + len(prefix)] = g
            seg[r, col : col + len(prefix)] = -1
            col += len(prefix)
            for i in members:
                rest = list(rests_of[i])
                ids[r, col : col + len(rest)] = torch.tensor(rest, dtype=torch.long)
                pos[r, col : col + len(rest)] = torch.arange(len(prefix), len(prefix) + len(rest))
                grp[r, col : col + len(rest)] = g
                seg[r, col : col + len(rest)] = i
                spans.append((r, col, col + len(rest)))
                col += len(rest)
    return Pack(ids, pos, grp, seg, spans)


def pack_mask(config, p: Pack, dtype: torch.dtype, device) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive attention masks `[rows, 1, width, width]` for `p`: a token sees its group's prefix and its own
    sequence's earlier tokens (a padding token sees itself, so no row of the softmax is empty), and a sliding-window
    layer only those within its window by position. Keyed by layer type where the model's config names them."""
    seg, grp, pos = p.segment.to(device), p.group.to(device), p.position_ids.to(device)
    same_group = (grp[:, :, None] == grp[:, None, :]) & (grp[:, :, None] >= 0)
    same = same_group & ((seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == -1))
    dist = pos[:, :, None] - pos[:, None, :]  # [rows, q, k]
    causal = same & (dist >= 0)
    eye = torch.eye(seg.shape[1], dtype=torch.bool, device=device)[None]
    neg = torch.finfo(dtype).min

    def additive(window: int | None) -> torch.Tensor:
        allowed = (causal if window is None else causal & (dist < window)) | eye
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=device), neg)[:, None]

    windows = layer_windows(config)
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(cfg, "layer_types", None) is None:
        return additive(windows[0])
    kinds = {"full_attention": None} if None in windows else {}
    sliding = next((w for w in windows if w is not None), None)
    if sliding is not None:
        kinds["sliding_attention"] = sliding
    return {name: additive(w) for name, w in kinds.items()}


def pack_kwargs(model, p: Pack) -> dict:
    """What the model is called with for `p`, on its device."""
    device = model.device
    dtype = model.get_input_embeddings().weight.dtype
    return {"input_ids": p.input_ids.to(device), "position_ids": p.position_ids.to(device),
            "attention_mask": pack_mask(model.config, p, dtype, device)}


def packed_tail_logits(model, p: Pack, keep: int, kwargs: dict | None = None) -> torch.Tensor:
    """Logits `[n, keep, vocab]` (the model's dtype, on its device) at the last `keep` tokens of each of `p`'s
    sequences; a sequence shorter than `keep` leaves its first entries undefined."""
    rows = torch.tensor([r for r, _, _ in p.spans])
    want = torch.stack([(torch.arange(stop - keep, stop)).clamp(min=start) for _, start, stop in p.spans])  # [n, keep]
    kept = torch.unique(want)  # sorted: the columns whose logits are computed
    logits = model(**(kwargs if kwargs is not None else pack_kwargs(model, p)), use_cache=False,
                   logits_to_keep=kept.to(model.device)).logits  # [rows, n_kept, vocab]
    index = torch.searchsorted(kept, want)
    return logits[rows.to(logits.device)[:, None], index.to(logits.device)]


def packed_last_logits(model, packs: Sequence[Pack], kwargs: Sequence[dict] | None = None) -> torch.Tensor:
    """Next-token logits at each packed sequence's last token -> `[n, vocab]` float32 on the model's device, in
    sequence order across `packs`. `kwargs`: precomputed `pack_kwargs`, one per pack."""
    return torch.cat([packed_tail_logits(model, p, 1, kwargs[k] if kwargs is not None else None)[:, 0].float()
                      for k, p in enumerate(packs)])
