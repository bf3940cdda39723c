"""Generation backends behind one interface.

`generate` returns completions (prompt and special tokens stripped; a tokenizer whose `ChatFormat`
has reasoning keeps special tokens so `harness.reasoning` can split them) in input order, batched over
prompts sorted by length, optionally through an `ItemStore` so a killed run resumes, halving the
batch on CUDA out-of-memory.

Backends:
- "transformers": plain `model.generate` (dynamic cache).
- "static": our own greedy/sampling loop over a static KV cache. On CUDA the one-token decode step
  (model forward with the intervention's hooks, argmax, bookkeeping) is captured once per batch into
  a CUDA graph and replayed, which removes the per-kernel launch cost that dominates batched decode of
  2B-class models; `compile_step=True` additionally fuses the step with `torch.compile` first. Hooks
  are active at capture time, so they are part of the graph; they must not sync with the host. On CUDA, gpt-oss
  decode steps run dense experts (`harness.moe`) and sink attention over the shared K/V (`_sink_decode_sdpa`);
  prefill and the CPU keep the model's own modules.
- "vllm": for weight-edited models saved to disk and for judges (no hooks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.cache import compute_missing
from harness.moe import dense_decode_experts

if TYPE_CHECKING:
    from harness.config import GenerationConfig

Intervention = Callable[[], AbstractContextManager]


class GenerationError(RuntimeError):
    """A generation request that cannot be served; the message names the setting at fault."""


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
    before its completions.
    """
    from harness.chat import format_instructions

    instructions = list(instructions)
    if ids is not None and len(ids) != len(instructions):
        raise GenerationError(f"ids has {len(ids)} entries for {len(instructions)} instructions")
    if settings.backend == "vllm":
        if intervention is not None:
            raise GenerationError(
                "backend 'vllm' cannot run hook interventions; use backend 'transformers' or 'static', "
                "or save a weight-edited model and generate from it"
            )
        model = _vllm_engine(model, tensor_parallel_size)

    # Generation prompts stop at the generation prompt: a reasoning model writes its reasoning first.
    prompts = format_instructions(tokenizer, instructions, system=settings.system_prompt, answer_prefix=False)
    item_ids = list(ids) if ids is not None else [prompt_id(p, settings) for p in prompts]
    by_id = dict(zip(item_ids, instructions))
    by_prompt = dict(zip(item_ids, prompts))
    lengths = {i: len(tokenizer(p, add_special_tokens=False).input_ids) for i, p in zip(item_ids, prompts)}
    ordered = sorted(dict.fromkeys(item_ids), key=lambda i: -lengths[i])

    def run_batch(batch_ids: list[str]) -> list[str]:
        if settings.backend == "vllm":
            texts, counts = _vllm_complete(model, [by_prompt[i] for i in batch_ids], settings,
                                           _keeps_special_tokens(tokenizer))
        else:
            texts, counts = _complete(model, tokenizer, [by_id[i] for i in batch_ids], settings, intervention,
                                      compile_step)
        if token_counts is not None:
            token_counts.save(dict(zip(batch_ids, counts)))
        return texts

    compute = store.compute if store is not None else in_memory_compute()
    bar = _progress_bar(settings.backend) if progress else None
    values = compute_halving_on_oom(compute, ordered, run_batch, settings.batch_size, bar)
    done = dict(zip(ordered, values))
    return [done[i] for i in item_ids]


def compute_halving_on_oom(
    compute: Callable[..., list[Any]],
    ids: Sequence[str],
    fn: Callable[[list[str]], list[Any]],
    batch_size: int,
    progress: Callable | None = None,
) -> list[Any]:
    """`compute(ids, fn, batch_size, progress)`, retried with half the batch size on out-of-memory.

    `compute` is an `ItemStore.compute` or `in_memory_compute(...)`: both keep every finished batch, so
    a retry generates only what is missing and nothing finished is lost.
    """
    while True:
        try:
            return compute(ids, fn, batch_size, progress)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def in_memory_compute(done: dict[str, Any] | None = None) -> Callable[..., list[Any]]:
    """An `ItemStore.compute` stand-in over a dict that outlives retries (items in `done` are skipped)."""
    done = {} if done is None else done

    def compute(ids, fn, batch_size, progress=None):
        return compute_missing(done, ids, fn, batch_size, progress)

    return compute


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
) -> tuple[list[str], list[int]]:
    """Texts and new-token counts (stop token excluded)."""
    from harness.chat import tokenize_instructions

    enc = tokenize_instructions(tokenizer, instructions, system=settings.system_prompt, answer_prefix=False)
    device = _input_device(model)
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    eos = eos_token_ids(model, tokenizer)
    with intervention() if intervention is not None else nullcontext():
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
        )
    return _decode(tokenizer, new_tokens), [len(row) for row in new_tokens]


def _keeps_special_tokens(tokenizer: Any) -> bool:
    """Reasoning formats keep special tokens, so `harness.reasoning` sees the channel markers."""
    from harness.chat import chat_format

    return chat_format(tokenizer).reasoning != "none"


def _decode(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """Completion texts of EOS-cut token rows; with special tokens kept, pad tokens are dropped."""
    if not _keeps_special_tokens(tokenizer):
        return tokenizer.batch_decode(rows, skip_special_tokens=True)
    pad = tokenizer.pad_token_id
    return tokenizer.batch_decode([[t for t in row if t != pad] for row in rows], skip_special_tokens=False)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the generation config's EOS ids and the tokenizer's."""
    found: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for tok in value if isinstance(value, (list, tuple)) else [value]:
            if tok is not None and int(tok) not in found:
                found.append(int(tok))
    return found


def _input_device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


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
) -> list[list[int]]:
    """New token ids per row of a left-padded batch (`input_ids: [batch, prompt]`), cut before the first EOS."""
    if attention_mask[:, -1].min() == 0:
        raise GenerationError("generate_tokens needs a left-padded batch (attention_mask[:, -1] has zeros)")
    with torch.inference_mode():
        if backend == "transformers":
            new = _hf_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos_token_ids, pad_token_id)
        elif backend == "static":
            with _grouped_attention(model.config), _sink_decode_attention(model), dense_decode_experts(model):
                new = _static_generate(
                    model, input_ids, attention_mask, max_new_tokens, temperature, eos_token_ids, compile_step
                )
        else:
            raise GenerationError(f"generation backend {backend!r} is not one of 'transformers', 'static', 'vllm'")
    return _cut_at_eos(new.tolist(), eos_token_ids)


def _cut_at_eos(rows: list[list[int]], eos: Sequence[int]) -> list[list[int]]:
    stops = set(eos)
    out = []
    for row in rows:
        end = next((k for k, tok in enumerate(row) if tok in stops), len(row))
        out.append(row[:end])
    return out


def _hf_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos, pad_token_id) -> torch.Tensor:
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
        "do_sample": False
    }
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos) or None,
        pad_token_id=pad_token_id,
        **sampling,
    )
    return out[:, input_ids.shape[1] :]


# ---- static backend -------------------------------------------------------------------------------


def _layer_windows(config: Any) -> list[int | None]:
    """Per decoder layer: the sliding window, or None for full attention."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if types is None:
        uses = window is not None and getattr(cfg, "use_sliding_window", True)
        return [window if uses else None] * n
    bad = sorted({t for t in types if t not in ("full_attention", "sliding_attention")})
    if bad:
        raise GenerationError(
            f"backend 'static' supports full and sliding attention layers only; {cfg.model_type} has {bad}; "
            "use backend 'transformers'"
        )
    return [window if t == "sliding_attention" else None for t in types[:n]]


def _static_masks(
    config: Any, valid: torch.Tensor, q_slots: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive attention masks `[batch, 1, q, max_len]` over cache slots.

    `valid: [batch, max_len]` marks non-pad slots; `q_slots: [q]` are the query slots. Left padding keeps
    each row's real tokens contiguous, so slot distance equals position distance for sliding windows.
    A finite minimum (not -inf) keeps fully masked pad-query rows finite.
    """
    windows = _layer_windows(config)
    k_slots = torch.arange(valid.shape[1], device=valid.device)
    dist = q_slots[:, None] - k_slots[None, :]  # [q, max_len]
    base = valid[:, None, None, :] & (dist >= 0)[None, None]
    neg = torch.finfo(dtype).min

    def additive(window: int | None) -> torch.Tensor:
        allowed = base if window is None else base & (dist < window)[None, None]
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=valid.device), neg)

    full = next((w for w in windows if w is None), "none")
    sliding = next((w for w in windows if w is not None), None)
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(cfg, "layer_types", None) is None:
        return additive(windows[0])
    masks = {}
    if full != "none":
        masks["full_attention"] = additive(None)
    if sliding is not None:
        masks["sliding_attention"] = additive(sliding)
    return masks


GROUPED_SDPA = "harness_grouped_sdpa"
DECODE_MATMUL = True
COMPILE_LEN_BUCKET = 64


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


def _grouped_attention_applies(config: Any) -> bool:
    """Plain-softmax SDPA models only: soft-capping (Gemma 2) and attention sinks (gpt-oss) keep their own kernel."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return (
        cfg._attn_implementation == "sdpa"
        and getattr(cfg, "attn_logit_softcapping", None) is None
        and cfg.model_type != "gpt_oss"
    )


@contextmanager
def _grouped_attention(config: Any) -> Iterator[None]:
    """Switch the model's attention to `_grouped_sdpa` for the duration (restored on exit)."""
    if not _grouped_attention_applies(config):
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
    configs = {id(c): c for c in (config, config.get_text_config(decoder=True))}.values()
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = GROUPED_SDPA
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl


SINK_DECODE = "harness_sink_decode"


def _sink_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """gpt-oss attention with sinks: one-query decode steps as two batched matmuls over the shared K/V
    (no repeat per query head, fp32 scores like `_grouped_sdpa`); longer queries use the model's own eager
    attention, so prefill is unchanged.

    The sink is one extra logit per head that takes part in the softmax and is dropped after it.
    `query: [b, heads, 1, d]`, `key/value: [b, kv_heads, s, d]`, `attention_mask: [b, 1, 1, s]`.
    """
    b, heads, q_len, d = query.shape
    if q_len != 1:
        import sys

        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = query.reshape(b, kv_heads, group, d)
    scores = _decode_scores(q, key) * (scaling if scaling is not None else d**-0.5)  # [b, kv, group, s]
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]].float()
    sinks = module.sinks.float().reshape(1, kv_heads, group, 1).expand(b, -1, -1, -1)
    combined = torch.cat([scores, sinks], dim=-1)
    probs = (combined - combined.amax(-1, keepdim=True)).softmax(-1)[..., :-1]
    out = torch.matmul(probs.to(value.dtype), value)  # [b, kv, group, d]
    return out.reshape(b, heads, 1, d).transpose(1, 2).contiguous(), None


@contextmanager
def _sink_decode_attention(model: Any, on_cpu: bool = False) -> Iterator[None]:
    """On CUDA, switch gpt-oss's eager attention to `_sink_decode_sdpa` for the duration: eager attention
    repeats K/V per query head (8x for gpt-oss-20b) on every decode step. The CPU keeps the stock path."""
    config = model.config
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if cfg.model_type != "gpt_oss" or cfg._attn_implementation != "eager" or not (
        on_cpu or _input_device(model).type == "cuda"
    ):
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(SINK_DECODE, _sink_decode_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SINK_DECODE, eager_mask)  # masks built by transformers: eager's
    configs = {id(c): c for c in (config, cfg)}.values()
    before = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = SINK_DECODE
        yield
    finally:
        for c, impl in zip(configs, before):
            c._attn_implementation = impl


def _new_static_cache(config: Any, max_len: int):
    from transformers.cache_utils import Cache, StaticLayer

    n = (config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config).num_hidden_layers
    return Cache(layers=[StaticLayer(max_cache_len=max_len) for _ in range(n)])


def _pick(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next token per row from `logits: [batch, vocab]`; sampling by Gumbel-max keeps it graph-capturable."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(min=1e-20)
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def _static_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos, compile_step) -> torch.Tensor:
    """`[batch, max_new_tokens]` new tokens; after a row's EOS its tokens are junk that the caller cuts."""
    batch, prompt_len = input_ids.shape
    max_len = prompt_len + max_new_tokens
    if compile_step:
        # Cache slots past the last token are masked like future ones; a bucketed cache length lets
        # batches of nearby prompt lengths reuse one compiled step (dynamo recompiles per shape).
        max_len = -(-max_len // COMPILE_LEN_BUCKET) * COMPILE_LEN_BUCKET
    device = input_ids.device
    dtype = model.get_input_embeddings().weight.dtype
    cache = _new_static_cache(model.config, max_len)
    valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
    valid[:, :prompt_len] = attention_mask.bool()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    prefill_mask = _static_masks(model.config, valid, torch.arange(prompt_len, device=device), dtype)
    logits = model(
        input_ids=input_ids,
        attention_mask=prefill_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
    out[:, 0] = _pick(logits, temperature)
    if max_new_tokens == 1:
        return out

    state = {
        "tok": out[:, :1].clone(),
        "pos": positions[:, -1:] + 1,  # [batch, 1]
        "step": torch.ones(1, dtype=torch.long, device=device),  # index into out of the token being made
    }
    start = {k: v.clone() for k, v in state.items()}
    first_slot = torch.full((1,), prompt_len - 1, dtype=torch.long, device=device)  # a tensor: no recompile per length

    def step(tok, pos, step_idx, valid, out, cache):
        mask = _static_masks(model.config, valid, step_idx + first_slot, dtype)
        logits = model(
            input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
        ).logits[:, -1]
        nxt = _pick(logits, temperature)
        out.index_copy_(1, step_idx, nxt[:, None])
        tok.copy_(nxt[:, None])
        pos.add_(1)
        step_idx.add_(1)

    fn = step
    if compile_step:
        # By default dynamo does not guard on module hooks: code compiled without the intervention's
        # hooks would be silently reused with them (or the reverse). Guard on them.
        guard_hooks = torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)
        fn = guard_hooks(torch.compile(step, dynamic=False))
    args = (state["tok"], state["pos"], state["step"], valid, out, cache)
    n_steps = max_new_tokens - 1
    eos_t = torch.tensor(list(eos) or [-1], device=device)
    check_every = 32

    if device.type != "cuda" or _spans_devices(model):
        # A CUDA graph is captured on one device's stream: a model dispatched over several GPUs
        # (device_map="auto") runs the same step eagerly.
        for k in range(n_steps):
            fn(*args)
            if (k + 1) % check_every == 0 and _all_finished(out[:, : k + 2], eos_t):
                break
        return out

    def reset():
        for name, value in start.items():
            state[name].copy_(value)
        for layer in cache.layers:
            layer.cumulative_length.fill_(prompt_len)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2 if not compile_step else 3):
            fn(*args)
            reset()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args)
    reset()
    for k in range(n_steps):
        graph.replay()
        if (k + 1) % check_every == 0 and _all_finished(out[:, : k + 2], eos_t):
            break
    return out


def _spans_devices(model: Any) -> bool:
    return len({p.device for p in model.parameters()}) > 1


def _all_finished(out: torch.Tensor, eos: torch.Tensor) -> bool:
    return bool(torch.isin(out, eos).any(-1).all())


# ---- vLLM backend ---------------------------------------------------------------------------------


def _vllm_engine(model: Any, tensor_parallel_size: int) -> Any:
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
            "save a weight-edited model with harness.weights.save_model first"
        )
    return model


def _vllm_complete(
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
