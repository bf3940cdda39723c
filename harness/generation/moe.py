"""Mixture-of-experts decode: every expert on every token in one batched matmul, for small token counts.

transformers' gpt-oss experts run one matmul per hit expert with a gather per token ("eager", a Python loop
with a host sync) or one CUTLASS grouped matmul over expert-sorted tokens ("grouped_mm"). At decode, a batch
of 100 rows touches every expert, so the step must read every expert's weights anyway: multiplying all
tokens through all experts in one `bmm` per projection reads each weight once, costs E/k times the
selected FLOPs (8x for gpt-oss-20b: ~4 TFLOP per step, under the weight read at the H200's rates) and needs
no sort, no gather and no host sync, so it is captured in a CUDA graph as is. Unselected experts get
routing weight 0; the result is the same function as the stock module (per expert: matmul, bias, gate,
matmul, bias, times the routing weight; summed over experts), summed in another order.

Used for decode steps only (`DENSE_MAX_TOKENS`): at prefill the E/k extra FLOPs would dominate, so larger
inputs go to the implementation the model was loaded with.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from harness.generation.common import text_config
from harness.models.arch import input_device

DENSE_DECODE = "harness_dense_decode"
DENSE_MAX_TOKENS = 256  # decode batch sizes; prefill of a whole batch is far above


def dense_experts_forward(
    module: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """`hidden_states: [tokens, d]`, `top_k_index/top_k_weights: [tokens, k]` -> `[tokens, d]`, for experts
    stored transposed with biases (`gate_up_proj: [E, d, 2*inter]`, `down_proj: [E, inter, d]`, gpt-oss)."""
    n_experts = module.gate_up_proj.shape[0]
    tokens = hidden_states.shape[0]
    x = hidden_states.to(module.gate_up_proj.dtype).expand(n_experts, tokens, -1)  # [E, tokens, d]
    gate_up = torch.bmm(x, module.gate_up_proj) + module.gate_up_proj_bias[:, None, :]  # [E, tokens, 2*inter]
    out = torch.bmm(module._apply_gate(gate_up), module.down_proj) + module.down_proj_bias[:, None, :]  # [E, tokens, d]
    weights = torch.zeros(tokens, n_experts, dtype=top_k_weights.dtype, device=top_k_weights.device)
    weights.scatter_(1, top_k_index, top_k_weights)  # [tokens, E]; 0 where an expert was not selected
    weighted = out * weights.t()[:, :, None].to(out.dtype)  # [E, tokens, d]
    return weighted.sum(0, dtype=torch.float32).to(hidden_states.dtype)


@functools.cache
def compiled_dense_experts() -> Callable:
    """`dense_experts_forward` under torch.compile, made on first use. The experts are an argument, not a guarded
    constant, and the token count is symbolic, so every layer and every batch size replays one compile."""
    fused = torch.compile(dense_experts_forward)

    def forward(module, hidden_states, top_k_index, top_k_weights):
        for t in (hidden_states, top_k_index, top_k_weights):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        return fused(module, hidden_states, top_k_index, top_k_weights)

    return forward


@functools.cache
def _routed_forward(fallback: str, compiled: bool):
    """One function per fallback for the whole process: a compiled step guards on the function it traced."""

    def forward(module, hidden_states, top_k_index, top_k_weights):
        if hidden_states.shape[0] <= DENSE_MAX_TOKENS:
            dense = compiled_dense_experts() if compiled else dense_experts_forward
            return dense(module, hidden_states, top_k_index, top_k_weights)
        return _implementation(fallback, module)(module, hidden_states, top_k_index, top_k_weights)

    return forward


def _implementation(name: str, module: torch.nn.Module):
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if name == "eager":
        return type(module).forward.__wrapped__
    return ALL_EXPERTS_FUNCTIONS[name]


def dense_decode_applies(model: Any, on_cpu: bool = False) -> bool:
    """Transposed, biased, gated experts behind transformers' experts interface (gpt-oss), on CUDA (or on
    the CPU when asked: tests compare it there with the stock module; generation on the CPU keeps the stock
    implementation, so CPU completions are exactly today's)."""
    cfg = text_config(model.config)
    if getattr(cfg, "model_type", None) != "gpt_oss" or not hasattr(model, "set_experts_implementation"):
        return False
    return on_cpu or input_device(model).type == "cuda"


@contextmanager
def dense_decode_experts(model: Any, on_cpu: bool = False, compiled: bool = False) -> Iterator[None]:
    """Route small-token forwards (decode steps) through `dense_experts_forward` for the duration; larger
    inputs keep the model's own implementation. A no-op where `dense_decode_applies` is false.

    `compiled`: through `compiled_dense_experts`, which fuses the elementwise work around the two batched matmuls
    (biases, gate, routing weights, the sum over experts) for a compile of one layer's experts instead of the
    whole decode step's."""
    if not dense_decode_applies(model, on_cpu):
        if compiled and input_device(model).type == "cuda":
            warnings.warn(f"compile_experts has no effect on {type(model).__name__}: only gpt-oss's experts decode "
                          "densely; its step runs as an uncompiled CUDA graph (compile_step compiles a whole step)",
                          stacklevel=3)
        yield
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    before = model.get_experts_implementation()
    fallback = before.get("") or "eager"
    name = f"{DENSE_DECODE}_{fallback}" + ("_compiled" if compiled else "")
    ALL_EXPERTS_FUNCTIONS.register(name, _routed_forward(fallback, compiled))
    model.set_experts_implementation({k: name for k in before})
    try:
        yield
    finally:
        model.set_experts_implementation(before)
