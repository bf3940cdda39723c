"""Residual-stream captures: streaming means over many prompts, and per-prompt vectors.

Activations at layer `l` are the residual stream entering block `l`, read by a forward pre-hook; per-prompt
captures can read each layer's output instead (`read_point="layer_output"`), as transformers reports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from harness.models.arch import input_device
from harness.models.arch import layers as block_list
from harness.models.chat import post_instruction_tokens, tokenize_instructions
from harness.models.hooks import add_hooks, block_input, with_block_input


def _batches(items: Sequence[str], batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _forward(model, batch) -> None:
    batch = {k: v.to(input_device(model)) for k, v in batch.items()}
    model(**batch, use_cache=False, logits_to_keep=1)


@torch.no_grad()
def mean_activations(
    model,
    tokenizer,
    instructions: Sequence[str],
    *,
    positions: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    system: str | None = None,
) -> torch.Tensor:
    """Mean residual stream `[n_layer, n_pos, d_model]` (float32) at the last `n_pos` prompt
    positions (default: the post-instruction tokens), accumulated batch by batch in float64 so
    memory does not grow with the number of prompts."""
    if len(instructions) == 0:
        raise ValueError("mean_activations needs at least one instruction")
    n_pos = len(post_instruction_tokens(tokenizer, system)) if positions is None else positions
    if n_pos < 1:
        raise ValueError(f"positions must be >= 1, got {n_pos}")
    blocks = block_list(model)
    sums: list[torch.Tensor | None] = [None] * len(blocks)  # each [n_pos, d_model]

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            x = block_input(args, kwargs)[:, -n_pos:, :].to(torch.float64).sum(dim=0)
            sums[layer] = x if sums[layer] is None else sums[layer] + x.to(sums[layer].device)

        return hook

    pre_hooks = [(block, make_hook(i)) for i, block in enumerate(blocks)]
    n_batches = -(-len(instructions) // batch_size)
    with add_hooks(pre_hooks=pre_hooks):
        for chunk in tqdm(_batches(instructions, batch_size), total=n_batches, disable=not progress, desc="mean acts"):
            batch = tokenize_instructions(tokenizer, chunk, system)
            if batch["input_ids"].shape[1] < n_pos:
                raise ValueError(f"prompts of {batch['input_ids'].shape[1]} tokens are shorter than positions={n_pos}")
            _forward(model, batch)
    return torch.stack([s.cpu() for s in sums]).div_(len(instructions)).float()


READ_POINTS = ("block_input", "layer_output")


def _layer_outputs(model, batch, chosen: list[int], pos: int) -> torch.Tensor:
    """`[batch, len(chosen), d_model]`: `hidden_states[1:]` of an `output_hidden_states` forward, i.e. each
    block's output, the last one after the final norm (transformers ties it to `last_hidden_state`)."""
    batch = {k: v.to(input_device(model)) for k, v in batch.items()}
    out = model(**batch, use_cache=False, logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[1:]  # n_layer x [batch, seq, d_model]
    if len(hidden) != len(block_list(model)):
        raise ValueError(f"{type(model).__name__} reported {len(hidden)} layer outputs for {len(block_list(model))} blocks")
    return torch.stack([hidden[layer][:, pos, :].float().cpu() for layer in chosen], dim=1)


@torch.no_grad()
def prompt_activations(
    model,
    tokenizer,
    instructions: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    pos: int = -1,
    batch_size: int = 32,
    system: str | None = None,
    read_point: str = "block_input",
) -> torch.Tensor:
    """Per-prompt residual stream `[n_prompts, n_layer, d_model]` (float32) at prompt position
    `pos` (negative, from the end) entering each block in `layers` (default: all), or, with
    `read_point="layer_output"`, leaving it (see `_layer_outputs`)."""
    if read_point not in READ_POINTS:
        raise ValueError(f"read_point must be one of {READ_POINTS}, got {read_point!r}")
    if pos >= 0:
        raise ValueError(f"pos counts from the end of the prompt and must be negative, got {pos}")
    blocks = block_list(model)
    chosen = list(range(len(blocks))) if layers is None else list(layers)
    for layer in chosen:
        if not 0 <= layer < len(blocks):
            raise IndexError(f"layer {layer} out of range for a model with {len(blocks)} blocks")
    out: list[torch.Tensor] = []  # each [batch, n_layer, d_model]
    if read_point == "layer_output":
        for chunk in _batches(instructions, batch_size):
            out.append(_layer_outputs(model, tokenize_instructions(tokenizer, chunk, system), chosen, pos))
        return torch.cat(out)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            captured[layer] = block_input(args, kwargs)[:, pos, :].float().cpu()

        return hook

    with add_hooks(pre_hooks=[(blocks[layer], make_hook(layer)) for layer in chosen]):
        for chunk in _batches(instructions, batch_size):
            captured.clear()
            _forward(model, tokenize_instructions(tokenizer, chunk, system))
            out.append(torch.stack([captured[layer] for layer in chosen], dim=1))
    return torch.cat(out)


# --- resuming a forward pass at a block -----------------------------------------------------------


class ResumeError(ValueError):
    """A model whose forward pass cannot start at a later block."""


class _Stop(Exception):
    """Ends a forward pass once the wanted block inputs are captured."""


def can_resume(model) -> bool:
    """Whether blocks may be skipped: not where later layers reuse earlier layers' keys and values
    (Gemma 3n / Gemma 4 KV sharing), since a skipped layer would leave them missing."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return not getattr(config, "num_kv_shared_layers", 0)


@torch.no_grad()
def block_inputs(model, layer_ids: Sequence[int], **forward_kwargs) -> dict[int, torch.Tensor]:
    """Residual stream entering each block of `layer_ids` -> {layer: [batch, seq, d_model]} in the
    model's dtype and device, from one forward pass that stops before the block after the last one."""
    blocks = block_list(model)
    wanted = sorted(set(layer_ids))
    if not wanted or not 0 <= wanted[0] <= wanted[-1] < len(blocks):
        raise IndexError(f"layers {list(layer_ids)} out of range for a model with {len(blocks)} blocks")
    got: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            got[layer] = block_input(args, kwargs).detach().clone()
            if layer == wanted[-1]:
                raise _Stop

        return hook

    try:
        with add_hooks(pre_hooks=[(blocks[layer], make_hook(layer)) for layer in wanted]):
            model(**forward_kwargs, use_cache=False)
    except _Stop:
        pass
    return got


@contextmanager
def resume_at(model, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Forward passes inside the block skip blocks `< layer` and give block `layer` the residual
    `hidden` [batch, seq, d_model] (from `block_inputs` on the same batch) instead.

    Work that repeats an unchanged lower part of the model (a fine-tune of upper layers, an
    intervention that starts at `layer`) then pays for the upper part only. Other hooks on block
    `layer` registered inside the block see `hidden`.
    """
    if not can_resume(model):
        raise ResumeError(f"{type(model).__name__} shares keys and values across layers; its blocks cannot be skipped")
    blocks = block_list(model)
    if not 0 <= layer < len(blocks):
        raise IndexError(f"layer {layer} out of range for a model with {len(blocks)} blocks")
    skipped = list(blocks)[:layer]

    def passthrough(*args, **kwargs):
        return block_input(args, kwargs)

    def feed(module, args, kwargs):
        return with_block_input(args, kwargs, hidden)

    for block in skipped:
        block.forward = passthrough
    try:
        with add_hooks(pre_hooks=[(blocks[layer], feed)]):
            yield
    finally:
        for block in skipped:
            del block.forward
