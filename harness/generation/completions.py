"""Completions for instructions, whichever backend serves them.

`generate` returns completions (prompt and special tokens stripped; a tokenizer whose `ChatFormat`
has reasoning keeps special tokens so `harness.generation.reasoning` can split them) in input order, batched over
prompts sorted by length, optionally through an `ItemStore` so a killed run resumes, halving the
batch (and the rows a compiled step is padded to) on CUDA out-of-memory. `generate_tokens` picks the backend for a
token batch.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from harness.generation.moe import dense_decode_experts
from harness.run.cache import in_memory_compute

if TYPE_CHECKING:
    from harness.config import GenerationConfig
from harness.generation.attention import grouped_attention, sink_decode_attention
from harness.generation.common import GenerationError, Intervention, cut_at_eos, eos_token_ids
from harness.generation.projections import fused_projections
from harness.generation.static import static_generate
from harness.generation.transformers_backend import hf_generate
from harness.generation.vllm_backend import vllm_complete, vllm_engine
from harness.models.arch import input_device
from harness.models.memory import offload_idle
from harness.steering.interventions import shared_hooks


def prompt_id(prompt: str, settings: GenerationConfig) -> str:
    """Stable id of one completion: the formatted prompt plus every setting that changes its text."""
    blob = json.dumps(
        {"prompt": prompt, "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def generate(
    model: Any,
    tokenizer: Any,
    instructions: Sequence[str],
    settings: GenerationConfig,
    *,
    intervention: Intervention | None = None,
    store: Any = None,
    progress: bool = True,
    ids: Sequence[str] | None = None,
    compile_step: bool = False,
    tensor_parallel_size: int = 1,
    token_counts: Any = None,
) -> list[str]:
    """Completions for `instructions`, in input order.

    `intervention` is a zero-argument callable returning a context manager (e.g.
    `lambda: ablate(model, r_hat)`) entered around each batch. `store` (an `ItemStore`) makes the run
    resumable; `ids` overrides the default ids (a hash of the formatted prompt and settings; callers
    must make them depend on the model and intervention themselves, e.g. through the store's key).
    For the "vllm" backend `model` is a saved model directory or a `vllm.LLM`. `token_counts` (an `ItemStore`,
    by the same ids) receives each completion's number of new tokens, its stop token not counted, so
    max_new_tokens means the budget cut it (the text alone cannot say); each batch's counts are saved just
    before its completions. `compile_step` compiles the static backend's decode step; with `settings.hooked_step`
    "shared" each batch runs inside `shared_hooks`, so one compiled step serves the baseline and the interventions.
    """
    from harness.models.chat import format_instructions

    instructions = list(instructions)
    if ids is not None and len(ids) != len(instructions):
        raise GenerationError(f"ids has {len(ids)} entries for {len(instructions)} instructions")
    if settings.backend == "vllm":
        if intervention is not None:
            raise GenerationError(
                "backend 'vllm' cannot run hook interventions; use backend 'transformers' or 'static', "
                "or save a weight-edited model and generate from it"
            )
        model = vllm_engine(model, tensor_parallel_size)

    # Generation prompts stop at the generation prompt: a reasoning model writes its reasoning first.
    prompts = format_instructions(tokenizer, instructions, system=settings.system_prompt, answer_prefix=False)
    item_ids = list(ids) if ids is not None else [prompt_id(p, settings) for p in prompts]
    by_id = dict(zip(item_ids, instructions))
    by_prompt = dict(zip(item_ids, prompts))
    lengths = dict(zip(item_ids, map(len, tokenizer(prompts, add_special_tokens=False).input_ids)))
    ordered = sorted(dict.fromkeys(item_ids), key=lambda i: -lengths[i])

    rows = settings.compiled_rows if compile_step else None  # what a compiled step's batches are padded to

    def run_batch(batch_ids: list[str]) -> list[str]:
        if settings.backend == "vllm":
            texts, counts = vllm_complete(model, [by_prompt[i] for i in batch_ids], settings,
                                           _keeps_special_tokens(tokenizer))
        else:
            texts, counts = _complete(model, tokenizer, [by_id[i] for i in batch_ids], settings, intervention,
                                      compile_step, rows)
        if token_counts is not None:
            token_counts.save(dict(zip(batch_ids, counts)))
        return texts

    compute = store.compute if store is not None else in_memory_compute()
    bar = _progress_bar(settings.backend) if progress else None

    def halved(batch_size: int) -> None:
        nonlocal rows
        if rows is not None:  # padded back to compiled_rows, a halved batch would run out again
            warnings.warn(f"generation ran out of GPU memory with batches padded to {rows} rows (compiled_rows); "
                          f"going on with {batch_size}, a new compiled step (lower compiled_rows and the batch sizes "
                          "in the experiment's TOML for this GPU)", stacklevel=2)
            rows = batch_size

    values = compute_halving_on_oom(compute, ordered, run_batch, settings.batch_size, bar, halved)
    done = dict(zip(ordered, values))
    return [done[i] for i in item_ids]


def compute_halving_on_oom(
    compute: Callable[..., list[Any]],
    ids: Sequence[str],
    fn: Callable[[list[str]], list[Any]],
    batch_size: int,
    progress: Callable | None = None,
    on_halve: Callable[[int], None] | None = None,
) -> list[Any]:
    """`compute(ids, fn, batch_size, progress)`, retried on out-of-memory: first at the same batch size once idle
    models (a judge between its batches, harness.models.memory) have left the GPU, then with half the batch size.

    `compute` is an `ItemStore.compute` or `in_memory_compute(...)`: both keep every finished batch, so
    a retry generates only what is missing and nothing finished is lost. `on_halve(new_batch_size)` runs before
    each halved retry (a batch padded to a fixed row count must shrink that count too).
    """
    while True:
        try:
            return compute(ids, fn, batch_size, progress)
        except torch.OutOfMemoryError as err:
            why = " ".join(str(err).split(" If reserved")[0].split()) or "no message"  # asked, free, reserved unused
            moved = offload_idle()
            if moved:
                warnings.warn(f"generation ran out of GPU memory at batch size {batch_size} ({why}); moved idle "
                              f"models ({moved / 2**30:.1f} GiB) to the CPU and tried again", stacklevel=2)
            elif batch_size == 1:
                raise
            else:
                warnings.warn(f"generation ran out of GPU memory at batch size {batch_size} ({why}); halving it",
                              stacklevel=2)
                batch_size = max(1, batch_size // 2)
                if on_halve is not None:
                    on_halve(batch_size)
        if torch.cuda.is_available():  # outside the handler: its traceback no longer holds the failed batch's tensors
            torch.cuda.empty_cache()


def _progress_bar(desc: str) -> Callable:
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=f"generate[{desc}]", unit="batch")


def _complete(
    model: Any,
    tokenizer: Any,
    instructions: list[str],
    settings: GenerationConfig,
    intervention: Intervention | None,
    compile_step: bool,
    rows: int | None,
) -> tuple[list[str], list[int]]:
    """Texts and new-token counts (stop token excluded); `rows`: see `static_generate`."""
    from harness.models.chat import tokenize_instructions

    enc = tokenize_instructions(tokenizer, instructions, system=settings.system_prompt, answer_prefix=False)
    device = input_device(model)
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos = eos_token_ids(model, tokenizer)
    share = compile_step and settings.shares_step(intervention is not None)
    with shared_hooks(model) if share else nullcontext(), intervention() if intervention is not None else nullcontext():
        new_tokens = generate_tokens(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            eos_token_ids=eos,
            backend=settings.backend,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0],
            compile_step=compile_step,
            compile_experts=settings.compile_experts,
            rows=rows,
        )
    return _decode(tokenizer, new_tokens), [len(row) for row in new_tokens]


def _keeps_special_tokens(tokenizer: Any) -> bool:
    """Reasoning formats keep special tokens, so `harness.generation.reasoning` sees the channel markers."""
    from harness.models.chat import chat_format

    return chat_format(tokenizer).reasoning != "none"


def _decode(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """Completion texts of EOS-cut token rows; with special tokens kept, pad tokens are dropped."""
    if not _keeps_special_tokens(tokenizer):
        return tokenizer.batch_decode(rows, skip_special_tokens=True)
    pad = tokenizer.pad_token_id
    return tokenizer.batch_decode([[t for t in row if t != pad] for row in rows], skip_special_tokens=False)


def generate_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_token_ids: Sequence[int] = (),
    backend: str = "static",
    pad_token_id: int = 0,
    compile_step: bool = False,
    compile_experts: bool = False,
    rows: int | None = None,
) -> list[list[int]]:
    """New token ids per row of a left-padded batch (`input_ids: [batch, prompt]`), cut before the first EOS.
    `rows` (static backend): the batch is padded to that many rows for the decode step, see `static_generate`;
    `compile_experts`: see `harness.generation.moe.dense_decode_experts`."""
    if attention_mask[:, -1].min() == 0:
        raise GenerationError("generate_tokens needs a left-padded batch (attention_mask[:, -1] has zeros)")
    with torch.inference_mode():
        if backend == "transformers":
            if rows is not None:
                raise GenerationError("padding a batch to `rows` is the static backend's (a compiled step's shape)")
            new = hf_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos_token_ids, pad_token_id)
        elif backend == "static":
            with grouped_attention(model.config), sink_decode_attention(model), \
                    dense_decode_experts(model, compiled=compile_experts), fused_projections(model):
                new = static_generate(
                    model, input_ids, attention_mask, max_new_tokens, temperature, eos_token_ids, compile_step,
                    rows=rows,
                )
        else:
            raise GenerationError(f"generation backend {backend!r} is not one of 'transformers', 'static', 'vllm'")
    return cut_at_eos(new.tolist(), eos_token_ids)
