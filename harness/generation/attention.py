"""Attention kernels the static backend switches in for decode.

Grouped/multi-query SDPA without repeated K/V, and on CUDA gpt-oss's sink attention over the shared K/V;
the CPU keeps the model's own modules where noted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from harness.generation.common import text_config
from harness.models.arch import input_device
from harness.models.kernels import SINK_SDPA, sink_attention

GROUPED_SDPA = "harness_grouped_sdpa"
DECODE_MATMUL = True


def _decode_scores(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """fp32 scores `[b, kv, group, s]` from `q: [b, kv, group, d]` and `key: [b, kv, s, d]`.

    Accumulated and returned in fp32 like SDPA's fused kernels: a bf16 matmul output rounds the scores
    before the softmax, which moved greedy bf16 decoding off plain `generate` more than eager vs sdpa.
    """
    if q.dtype == torch.float32:
        return torch.matmul(q, key.transpose(-1, -2))
    if q.is_cuda:
        b, kv, group, _ = q.shape
        k_t = key.transpose(-1, -2).flatten(0, 1)  # [b*kv, d, s]
        return torch.bmm(q.flatten(0, 1), k_t, out_dtype=torch.float32).view(b, kv, group, -1)
    return torch.matmul(q.float(), key.float().transpose(-1, -2))  # CPU has no bmm out_dtype


def _grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for grouped/multi-query attention without materialising repeated K/V.

    transformers' sdpa path repeats K/V per query head whenever a mask is given; for a 2B MQA model at
    batch 100 that copies ~16 GB per decode step. Folding the query heads of a group into the query
    axis (`[b, kv, group*q, d]`) attends to the shared K/V directly.
    `query: [b, heads, q, d]`, `key/value: [b, kv_heads, s, d]`, `attention_mask: [b, 1, q, s]`.
    """
    b, heads, q_len, d = query.shape
    key, value = _masked_slots(key, value, attention_mask)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = query.reshape(b, kv_heads, group * q_len, d)
    mask = attention_mask[..., : key.shape[-2]]
    if q_len == 1 and DECODE_MATMUL:
        # One query per row: two batched matmuls spread the K/V reads over the whole chip, where the
        # fused SDPA kernels run one thread block per (row, kv head), too few for 2B-class decode.
        scores = _decode_scores(q, key) * (scaling if scaling is not None else d**-0.5) + mask.float()
        out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # [b, kv, group, d]
        return out.reshape(b, heads, q_len, -1).transpose(1, 2).contiguous(), None
    if q_len > 1 and group > 1:
        mask = mask[:, :, None].expand(b, 1, group, q_len, mask.shape[-1]).reshape(b, 1, group * q_len, -1)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, q_len, -1).transpose(1, 2).contiguous(), None


def _masked_slots(key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V cut to the cache slots `attention_mask` covers (`key/value: [b, kv, s, d]`, mask `[b, 1, q, <= s]`).

    A prefill into a fresh static cache fills its first slots only, a decode step those up to its query's;
    `static_generate` hands these kernels a mask over those (a decode step's rounded up, `static._slot_width`), so
    they never read the empty rest (a prefill of gpt-oss-20b at 232 rows x 1,152 slots: ~9 GiB of per-head K/V
    copies a layer in `sink_attention`, with the whole model resident; an 80 GB card ran out of memory there)."""
    if attention_mask is None:
        return key, value
    return key[:, :, : attention_mask.shape[-1]], value[:, :, : attention_mask.shape[-1]]


def reads_masked_slots_only(config: Any) -> bool:
    """Whether the attention in use for `config` is one of these kernels, which read only the slots their mask
    covers (`_masked_slots`); transformers' own kernels cut the mask to the keys instead and need it full width."""
    return text_config(config)._attn_implementation in (GROUPED_SDPA, SINK_DECODE)


@contextmanager
def _attention_implementation(config: Any, name: str) -> Iterator[None]:
    """The model's (and its text config's) attention implementation set to registered `name` for the duration,
    restored on exit."""
    configs = {id(c): c for c in (config, text_config(config))}.values()
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = name
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl


def _grouped_attention_applies(config: Any) -> bool:
    """Plain-softmax SDPA models only: soft-capping (Gemma 2) and attention sinks (gpt-oss) keep their own kernel."""
    cfg = text_config(config)
    return (
        cfg._attn_implementation == "sdpa"
        and getattr(cfg, "attn_logit_softcapping", None) is None
        and cfg.model_type != "gpt_oss"
    )


@contextmanager
def grouped_attention(config: Any) -> Iterator[None]:
    """Switch the model's attention to `_grouped_sdpa` for the duration (restored on exit)."""
    if not _grouped_attention_applies(config):
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
    with _attention_implementation(config, GROUPED_SDPA):
        yield


SINK_DECODE = "harness_sink_decode"


def _sink_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """gpt-oss attention with sinks: one-query decode steps as two batched matmuls over the shared K/V
    (no repeat per query head, fp32 scores like `_grouped_sdpa`); longer queries (prefill) go through SDPA with the
    sink as one more key (`harness.models.kernels.sink_attention`, what a CUDA run's every other pass uses).

    The sink is one extra logit per head that takes part in the softmax and is dropped after it. A sliding layer
    reads only its window's slots of a longer (static) cache (`_window_slots`).
    `query: [b, heads, 1, d]`, `key/value: [b, kv_heads, s, d]`, `attention_mask: [b, 1, 1, s]`.
    """
    b, heads, q_len, d = query.shape
    key, value = _masked_slots(key, value, attention_mask)
    if q_len != 1:
        return sink_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    mask = attention_mask[..., : key.shape[-2]] if attention_mask is not None else None
    window = getattr(module, "sliding_window", None)
    if window is not None and mask is not None and key.shape[-2] > window:
        key, value, mask = _window_slots(key, value, mask, window)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = query.reshape(b, kv_heads, group, d)
    scores = _decode_scores(q, key) * (scaling if scaling is not None else d**-0.5)  # [b, kv, group, s]
    if mask is not None:
        scores = scores + mask.float()
    sinks = module.sinks.float().reshape(1, kv_heads, group, 1).expand(b, -1, -1, -1)
    combined = torch.cat([scores, sinks], dim=-1)
    probs = (combined - combined.amax(-1, keepdim=True)).softmax(-1)[..., :-1]
    out = torch.matmul(probs.to(value.dtype), value)  # [b, kv, group, d]
    return out.reshape(b, heads, 1, d).transpose(1, 2).contiguous(), None


def _window_slots(key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                  window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K/V `[b, kv, window, d]` and additive mask `[b, 1, 1, window]` of the `window` cache slots ending at the
    query's: a sliding layer attends to no others, so a decode step reads them, not the whole static cache (gpt-oss
    at 232 rows: ~5.8 of the ~55 GB a step reads). The query's slot is the last one row 0's mask allows (rows are
    left-padded, so every row's query sits there); found on the device, so the step stays capturable. Slots before
    the cache's first are masked."""
    slots = torch.arange(key.shape[-2], device=key.device)
    current = torch.where(mask[0, 0, 0] == 0, slots, 0).amax()
    idx = current - window + 1 + torch.arange(window, device=key.device)  # [window]
    before = idx < 0
    idx = idx.clamp(min=0)
    mask = mask.index_select(-1, idx).masked_fill(before, torch.finfo(mask.dtype).min)
    return key.index_select(2, idx), value.index_select(2, idx), mask


@contextmanager
def sink_decode_attention(model: Any, on_cpu: bool = False) -> Iterator[None]:
    """On CUDA, switch gpt-oss's eager attention to `_sink_decode_sdpa` for the duration: eager attention
    repeats K/V per query head (8x for gpt-oss-20b) on every decode step. The CPU keeps the stock path."""
    config = model.config
    cfg = text_config(config)
    if cfg.model_type != "gpt_oss" or cfg._attn_implementation not in ("eager", SINK_SDPA) or not (
        on_cpu or input_device(model).type == "cuda"
    ):
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(SINK_DECODE, _sink_decode_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SINK_DECODE, eager_mask)  # masks built by transformers: eager's
    with _attention_implementation(config, SINK_DECODE):
        yield
