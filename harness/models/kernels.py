"""Kernel choices for a model's forwards, made once where it is loaded: a contiguous read-out input on every device;
where a run picks CUDA, process-wide attention backends and gpt-oss's attention with sinks through SDPA.

cuDNN's fused attention builds an execution graph for every new problem shape (batch, query and key lengths):
tens of milliseconds of host time each, which recent PyTorch pays first on Hopper, where it ranks cuDNN above
flash and memory-efficient attention. A harness run changes shape on nearly every call (capability batches,
packed selection rows, each judge batch and each of its decode steps), so the host sat in attention for ~30 s of a
cold gemma-2b-it rehearsal on an H100. Without cuDNN, SDPA takes flash attention (no mask) or the
memory-efficient kernel (a mask), neither of which plans per shape.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from harness.models.arch import input_device, unembedding


def configure_cuda_kernels() -> None:
    """Leave cuDNN's SDPA out of the backends scaled_dot_product_attention chooses from (for this process)."""
    torch.backends.cuda.enable_cudnn_sdp(False)


SINK_SDPA = "harness_sink_sdpa"


def sink_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   **kwargs) -> tuple[torch.Tensor, None]:
    """gpt-oss attention with sinks (one extra logit per head in the softmax, dropped after it) through SDPA.

    The sink becomes one more key whose value is zero: queries and keys get 8 more dimensions (the fused kernels'
    alignment), zero for the real keys; the query's first extra one is 1/scale and the sink key's is the head's
    sink, so the sink key scores exactly the sink. A padding query that sees no real key puts all its weight on the
    sink and returns zeros, as eager attention does. The stock eager path materializes [batch, heads, q, keys]
    scores in the model's dtype several times; the fused kernel never does.
    `query: [b, heads, q, d]`, `key/value: [b, kv_heads, s, d]`, `attention_mask: [b, 1, q, >= s]` additive.
    """
    b, heads, q_len, d = query.shape
    s = key.shape[-2]
    group = heads // key.shape[1]
    scale = scaling if scaling is not None else d**-0.5
    key = key.repeat_interleave(group, dim=1) if group > 1 else key  # [b, heads, s, d]
    value = value.repeat_interleave(group, dim=1) if group > 1 else value
    extra = query.new_zeros(b, heads, q_len, 8)
    extra[..., 0] = 1.0 / scale
    q = torch.cat([query, extra], dim=-1)  # [b, heads, q, d + 8]
    sink_key = key.new_zeros(b, heads, 1, d + 8)
    sink_key[..., d] = module.sinks.to(key.dtype).reshape(1, heads, 1)
    k = torch.cat([torch.cat([key, key.new_zeros(b, heads, s, 8)], dim=-1), sink_key], dim=2)  # [b, heads, s+1, d+8]
    # Values padded alike (every fused kernel takes equal head sizes); the sink's value is zero.
    v = torch.nn.functional.pad(value, (0, 8, 0, 1))  # [b, heads, s + 1, d + 8]
    mask = None
    if attention_mask is not None:
        visible = True if attention_mask.dtype == torch.bool else 0.0  # the sink is visible to every query
        mask = torch.nn.functional.pad(attention_mask[..., :s], (0, 1), value=visible)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [b, heads, q, d+8]
    return out[..., :d].transpose(1, 2).contiguous(), None


def _contiguous_input(module, args: tuple) -> tuple | None:
    hidden = args[0]
    return None if hidden.is_contiguous() else (hidden.contiguous(), *args[1:])


def contiguous_readout(model) -> None:
    """Give the unembedding a contiguous copy of its input (once per model; a copy of the model keeps it).

    `logits_to_keep=n` (every last-position pass, each prefill of a generation, a judge's `generate`) hands the
    read-out a slice of `[batch, seq, d_model]` hidden states whose rows lie `seq * d_model` apart, and cuBLAS runs
    that matmul with a kernel far off the weight read: on an H100, Qwen3-8B's 152k x 4096 read-out of 32 rows sliced
    from 150 positions took 13.0 ms against 0.44 ms contiguous, 232 rows 94.6 against 0.48 ms, with equal outputs
    (the CPU's matmul too: SmolLM2's 49k x 576 read-out of 32 such rows 157 against 25 ms)."""
    head = unembedding(model)
    if _contiguous_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_input)


COMPILED_GROUPED = "harness_compiled_grouped_mm"


@functools.cache
def compiled_grouped_experts() -> Callable:
    """transformers' `grouped_mm` experts function under torch.compile, made on first use, every shape symbolic: the
    experts are an argument, not a guarded constant, so every layer and every token count replays one compile.
    It fuses the elementwise work around the two grouped matmuls (token sort and gather, biases, gate, routing
    weights, scatter back), ~a quarter of a gpt-oss-20b prefill forward left unfused."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return torch.compile(ALL_EXPERTS_FUNCTIONS["grouped_mm"], dynamic=True)


def _grouped_experts_forward(module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                             top_k_weights: torch.Tensor) -> torch.Tensor:
    """`hidden_states: [tokens, d]` as a tensor of its own: dynamo guards on a view's base (the layer's
    `[batch, seq, d]`), whose batch axis of 1 would specialize into a second compile."""
    return compiled_grouped_experts()(module, hidden_states.clone(), top_k_index, top_k_weights)


def compile_grouped_experts(model: Any) -> None:
    """Route `model`'s experts through `compiled_grouped_experts` (every pass; a dense decode step,
    `harness.generation.moe.dense_decode_experts`, still takes its own path and falls back to this one). A model
    without experts, or experts loaded with another implementation, warn that the setting does nothing: it changes
    speed, never what is computed, so a run goes on without it."""
    if not type(model)._can_set_experts_implementation():  # transformers: a class with experts behind its interface
        warnings.warn(f"compile_grouped_experts has no effect on {type(model).__name__}: it has no experts",
                      stacklevel=2)
        return
    loaded = model.get_experts_implementation()
    if set(loaded.values()) - {"grouped_mm", COMPILED_GROUPED}:
        warnings.warn(f"compile_grouped_experts compiles transformers' grouped_mm experts; {type(model).__name__} "
                      f"runs {loaded} (grouped_mm needs torch >= 2.9), left as loaded", stacklevel=2)
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(COMPILED_GROUPED, _grouped_experts_forward)
    model.set_experts_implementation({k: COMPILED_GROUPED for k in loaded})


def configure_model_kernels(model, on_cpu: bool = False, grouped_experts_compiled: bool = False) -> None:
    """The kernel choices for `model`: a contiguous read-out input (`contiguous_readout`) wherever it sits (on the
    CPU too: the demo ran 939 -> 870 s on 2 cores, its snapshots unchanged); where it sits on CUDA, the process-wide
    ones (`configure_cuda_kernels`), gpt-oss's eager attention (the only stock one with sinks) run as
    `sink_attention` in every pass of the run, and with `grouped_experts_compiled` (`[model]
    compile_grouped_experts`) the experts through `compile_grouped_experts`. The CPU keeps the stock kernels unless
    `on_cpu` (tests)."""
    contiguous_readout(model)
    on_cuda = input_device(model).type == "cuda"
    if on_cuda:
        configure_cuda_kernels()
    if not (on_cuda or on_cpu):
        return
    if grouped_experts_compiled:
        compile_grouped_experts(model)
    config = model.config
    text = config.get_text_config()
    if text.model_type != "gpt_oss" or text._attn_implementation != "eager":
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(SINK_SDPA, sink_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SINK_SDPA, eager_mask)  # additive masks, as eager attention reads them
    for c in {id(c): c for c in (config, text)}.values():
        c._attn_implementation = SINK_SDPA
