"""Greedy generation for judge models: transformers (batched) or vLLM (separate optional install)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from harness.models.memory import register_idle, resident

JUDGE_TOX_ENV = "judge"


class JudgeBackendMissing(ImportError):
    """The judge's inference backend is not installed here; the message names the tox env that has it."""


def library_versions(backend: str) -> dict[str, str | None]:
    """Versions of the libraries that compute a model judge's outputs (greedy decoding can change with them)."""
    import transformers

    versions: dict[str, str | None] = {"torch": torch.__version__, "transformers": transformers.__version__}
    if backend == "vllm":
        try:
            versions["vllm"] = importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:
            versions["vllm"] = None
    return versions


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def require_vllm(judge: str) -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise JudgeBackendMissing(
            f"judge {judge!r} needs the `vllm` backend, which is not installed in this environment; "
            f"run it in the tox env that has it: `tox -e {JUDGE_TOX_ENV}`"
        )
    import vllm

    return vllm


def hf_load(model_id: str, revision: str | None, dtype: str = "bfloat16") -> tuple[Any, Any]:
    """The judge model through the project's one loader: pinned revision, safetensors only."""
    from harness.config import ModelConfig
    from harness.models.loading import load_model

    return load_model(ModelConfig(id=model_id, revision=revision, dtype=dtype, device_map="auto"))


def hf_model(model_id: str, revision: str | None, build_model: Callable[[], Any] | None,
             tokenizer: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a judge on the transformers backend, made at its first call: `build_model()` beside the
    tokenizer the judge was given (a rehearsal's random weights), else `hf_load` of the pinned model."""
    model, tokenizer = (build_model(), tokenizer) if build_model is not None else hf_load(model_id, revision)
    register_idle(model)  # between batches it may leave the GPU to a generation that ran out (hf_greedy brings it back)
    return model, tokenizer


@torch.inference_mode()
def hf_greedy(
    model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, batch_size: int, add_special_tokens: bool
) -> list[str]:
    """Greedy continuations of `texts`, left-padded in batches of similar length (longest first, so an
    out-of-memory shows at once); only the new tokens are decoded, and they come back in the order given."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    outputs: list[str] = [""] * len(texts)
    device = next(resident(model).parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
        ).to(device)
        generated = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )  # [batch, prompt_len + new]
        new = generated[:, batch["input_ids"].shape[1] :]
        for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outputs[i] = text
    return outputs


def vllm_greedy(llm: Any, prompts: list[Any], max_new_tokens: int) -> list[str]:
    """Greedy vLLM generation; prompts are strings or {"prompt_token_ids": [...]}."""
    vllm = require_vllm("vllm")
    params = vllm.SamplingParams(temperature=0, n=1, max_tokens=max_new_tokens)
    return [out.outputs[0].text for out in llm.generate(prompts, params)]
