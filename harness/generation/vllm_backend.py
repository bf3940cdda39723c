"""The "vllm" backend: for weight-edited models saved to disk and for judges (no hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config import GenerationConfig
from harness.generation.common import GenerationError


def vllm_engine(model: Any, tensor_parallel_size: int) -> Any:
    """A `vllm.LLM` for a saved model directory (or the given engine); vllm is imported only here."""
    try:
        import vllm
    except ImportError as err:
        raise GenerationError(
            "backend 'vllm' needs the vllm package, which lives in the tox env `gpu` (tox -e gpu)"
        ) from err
    if isinstance(model, (str, Path)):
        return vllm.LLM(model=str(model), tensor_parallel_size=tensor_parallel_size, seed=0)
    if not isinstance(model, vllm.LLM):
        raise GenerationError(
            f"backend 'vllm' takes a saved model directory or a vllm.LLM, got {type(model).__name__}; "
            "save a weight-edited model with harness.steering.weights.save_model first"
        )
    return model


def vllm_complete(
    llm: Any, prompts: list[str], settings: GenerationConfig, keep_special: bool = False
) -> tuple[list[str], list[int]]:
    """Texts and new-token counts: max_new_tokens exactly where vLLM stopped on its budget (finish reason
    "length"); elsewhere its token ids may include the stop token, so the count is capped one below."""
    import vllm

    params = vllm.SamplingParams(
        temperature=settings.temperature, max_tokens=settings.max_new_tokens, skip_special_tokens=not keep_special
    )
    # The formatted prompt already carries the template's BOS: tokenizing it again must not add one.
    token_prompts = [{"prompt_token_ids": llm.get_tokenizer()(p, add_special_tokens=False).input_ids} for p in prompts]
    outputs = llm.generate(token_prompts, params, use_tqdm=False)
    counts = [settings.max_new_tokens if o.outputs[0].finish_reason == "length"
              else min(len(o.outputs[0].token_ids), settings.max_new_tokens - 1) for o in outputs]
    return [o.outputs[0].text for o in outputs], counts
