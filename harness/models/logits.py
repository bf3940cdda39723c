"""Forward passes that return logits: left-padded batches of token rows, the last position's logits, next-token KL
between two models' distributions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence

import torch


def padded(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [batch, seq], attention_mask [batch, seq], padded on `side` ("left" or "right")."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, cols] = 1
    return ids, mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [batch, seq], attention_mask [batch, seq], padded on the left."""
    return padded(sequences, pad_id, "left")


def pad_token_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token")
    return pad


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, last_only: bool,
                   on_cpu: bool = True) -> torch.Tensor:
    """Logits of a left-padded batch: [batch, vocab] if `last_only` else [batch, seq, vocab], float32, on CPU
    (or left on the model's device, for a caller that reduces them there)."""
    kwargs = {"logits_to_keep": 1} if last_only else {}
    out = model(**forward_kwargs(model, input_ids, attention_mask), use_cache=False, **kwargs)
    logits = (out.logits[:, -1] if last_only else out.logits).float()
    return logits.cpu() if on_cpu else logits


LOGPROB_ELEMENTS = 1 << 28  # float32 log-softmax elements per chunk (1 GiB): bounds its memory on a large vocabulary
LOGPROB_ROWS = 8  # at most this many rows per chunk


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) -> [batch, n] float32 on CPU, from `logits: [batch, n, vocab]` (any dtype, left where the model
    put them) and `targets: [batch, n]`. The float32 log-softmax runs a few rows at a time on the logits' device and
    only the picked values leave it: a [batch, n, vocab] float32 copy of a 200k vocabulary would not fit beside it."""
    if logits.dim() != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"target_logprobs needs logits [batch, n, vocab] and targets [batch, n], got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    rows = max(1, min(LOGPROB_ROWS, LOGPROB_ELEMENTS // max(1, logits.shape[1] * logits.shape[2])))
    targets = targets.to(logits.device)
    parts = []
    for k in range(0, logits.shape[0], rows):
        logprobs = torch.log_softmax(logits[k : k + rows].float(), dim=-1)  # [rows, n, vocab]
        parts.append(logprobs.gather(-1, targets[k : k + rows, :, None])[..., 0])
    return torch.cat(parts).cpu()


def index_batches(n: int, batch_size: int) -> Iterator[range]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield range(start, min(start + batch_size, n))


def next_token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of next-token logits [n, vocab] -> [n] float64 (nats).

    The project's one KL: p is the reference (baseline model), q the intervened model, as in the
    KL filter of Arditi et al.'s direction selection. Computed with float64 log-softmax; vocabulary
    entries where p is exactly zero (logit -inf) contribute zero.
    """
    if logits_p.shape != logits_q.shape or logits_p.dim() != 2:
        raise ValueError(
            f"next_token_kl needs two [n, vocab] tensors of equal shape, got {tuple(logits_p.shape)} "
            f"and {tuple(logits_q.shape)}"
        )
    log_p = torch.log_softmax(logits_p.double(), dim=-1)
    log_q = torch.log_softmax(logits_q.double(), dim=-1)
    terms = torch.where(log_p > -torch.inf, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).clamp(min=0.0)


def prompt_batches(
    tokenizer, prompts: list[str], *, chat: bool = True, system: str | None = None, batch_size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Left-padded (input_ids, attention_mask) batches `[batch, seq]`, in prompt order.

    With `chat`, prompts are instructions formatted by `harness.models.chat.tokenize_instructions`
    (the model's own template); otherwise they are tokenized as plain text.
    """
    if not prompts:
        raise ValueError("prompt_batches needs at least one prompt")
    if not chat and system is not None:
        raise ValueError("a system prompt needs chat=True")
    pad_id = pad_token_id(tokenizer)
    out = []
    for batch in index_batches(len(prompts), batch_size):
        chunk = [prompts[i] for i in batch]
        if chat:
            from harness.models.chat import tokenize_instructions

            enc = tokenize_instructions(tokenizer, chunk, system=system)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            if bool((mask[:, -1] == 0).any()):
                raise ValueError("harness.models.chat.tokenize_instructions returned a right-padded batch; need left padding")
        else:
            ids, mask = left_pad([tokenizer(p)["input_ids"] for p in chunk], pad_id)
        out.append((ids, mask.long()))
    return out


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_keyword(model) -> str:
    """The keyword a model's `forward` takes its KV cache by: `cache` from transformers 5.24 (where `past_key_values`
    is a deprecated alias, to be removed in 5.40, after which the old name would no longer reach the model),
    `past_key_values` before."""
    return _cache_keyword(type(model))


def returned_cache(out):
    """The KV cache a forward returned under either name (`cache` from transformers 5.24, `past_key_values` before),
    None where it returned none."""
    return out.get("cache", out.get("past_key_values"))


def forward_kwargs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the model is called with for a left-padded batch, on its device.

    Position ids are counted from each row's first real token, so a left-padded row sees the positions
    it would see alone (RoPE is shift-invariant anyway; absolute-position models are not).
    """
    device = model.device
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "position_ids": position_ids.to(device)}


@torch.inference_mode()
def last_position_logits(
    model,
    tokenizer,
    prompts: list[str],
    *,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Next-token logits at the last prompt token -> [n, vocab] float32 on CPU (batches: `prompt_batches`)."""
    if not prompts:
        raise ValueError("last_position_logits needs at least one prompt")
    batches = prompt_batches(tokenizer, prompts, chat=chat, system=system, batch_size=batch_size)
    return torch.cat([forward_logits(model, ids, mask, last_only=True) for ids, mask in batches])
