"""The "static" backend: our own greedy/sampling loop over a static KV cache.

On CUDA the one-token decode step (model forward with the intervention's hooks, argmax, bookkeeping) is
captured into CUDA graphs and replayed, which removes the per-kernel launch cost that dominates batched decode of
2B-class models: one graph a batch, or over the harness's attention kernels one per slot window (`_slot_width`; a
compiled step's windows share one compile, `COMPILED_SLOT_WINDOWS`).
`compile_step=True` fuses the step with `torch.compile` first (`compile_experts` instead compiles only a MoE model's
experts, `harness.generation.moe`, inside the uncompiled step).
Hooks are active at capture time, so they are part of the graph; they must not sync with the host. Dynamo compiles
once per hook set, so `harness.steering.interventions.shared_hooks` gives every condition the same hooks. Its attention
kernels are `harness.generation.attention`, its MoE decode `harness.generation.moe`.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.generation.attention import reads_masked_slots_only
from harness.generation.common import GenerationError, text_config
from harness.models.arch import NotAttentionOnly, layer_windows, masks_by_layer_type
from harness.models.logits import cache_keyword


def _layer_windows(config: Any) -> list[int | None]:
    try:
        return layer_windows(config)
    except NotAttentionOnly as err:
        raise GenerationError(
            f"backend 'static' supports full and sliding attention layers only; {err}; use backend 'transformers'"
        ) from err


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

    return masks_by_layer_type(config, windows, additive)


COMPILE_LEN_BUCKET = 64
SLOT_WINDOW = 128
COMPILED_SLOT_WINDOWS = True
"""Whether a compiled step reads slot windows too, every window through one compile with a symbolic width (models
with sliding layers keep the whole cache: a sliding layer's test of that width against its window would split the
compile in two). On since one H100 timed it (2026-12-07, `evals/test_bench_generation.py`, generation_h100.json): the
compiled ablated Gemma bench 1.77 -> 1.73 s, greedy tokens agreeing 0.9991 with the whole cache's in bf16, no
recompile; its checks: evals/test_generation.py (CPU: one compile, the window schedule to the cache's end, the
uncompiled step's tokens) and evals/test_gpu_paths.py (the windows captured through one compile, on an H100)."""


def _slot_width(slot: int, max_len: int, windowed: bool) -> int:
    """Cache slots a decode step at query `slot` hands attention: the first whole multiple of `SLOT_WINDOW` past it.

    The empty slots after the query's are masked anyway; attention kernels that read only the slots their mask
    covers (`reads_masked_slots_only`) then skip them, so a step's K/V read grows with the tokens made, not with the
    cache (qwen3-8b at 232 rows x 640 slots: K/V is ~21 GB a step beside 16 GB of weights)."""
    return min(max_len, (slot // SLOT_WINDOW + 1) * SLOT_WINDOW) if windowed else max_len


def _new_static_cache(config: Any, max_len: int):
    from transformers.cache_utils import Cache, StaticLayer

    n = (text_config(config)).num_hidden_layers
    return Cache(layers=[StaticLayer(max_cache_len=max_len) for _ in range(n)])


def _pick(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Next token per row from `logits: [batch, vocab]`; sampling by Gumbel-max keeps it graph-capturable."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(min=1e-20)
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def static_generate(model, input_ids, attention_mask, max_new_tokens, temperature, eos, compile_step,
                    rows: int | None = None) -> torch.Tensor:
    """`[batch, max_new_tokens]` new tokens; after a row's EOS its tokens are junk that the caller cuts.

    `rows`: a narrower batch is padded to that many rows with copies of its first row, decoded and dropped, so a
    compiled step made for `rows` serves it (dynamo compiles once per shape: a 100-row set after a 200-row one
    would cost a second compile of about a minute on gpt-oss-20b, more than decoding 100 extra rows)."""
    real = input_ids.shape[0]
    if rows is not None and rows < real:
        raise ValueError(f"static_generate: a batch of {real} rows cannot be padded to {rows}")
    if rows is not None and rows > real:
        input_ids = torch.cat([input_ids, input_ids[:1].expand(rows - real, -1)])
        attention_mask = torch.cat([attention_mask, attention_mask[:1].expand(rows - real, -1)])
    batch, prompt_len = input_ids.shape
    max_len = prompt_len + max_new_tokens
    if compile_step:
        # Cache slots past the last token are masked like future ones; a bucketed cache length lets
        # batches of nearby prompt lengths reuse one compiled step (dynamo recompiles per shape).
        max_len = -(-max_len // COMPILE_LEN_BUCKET) * COMPILE_LEN_BUCKET
    windowed = reads_masked_slots_only(model.config) and (
        not compile_step or (COMPILED_SLOT_WINDOWS and not any(_layer_windows(model.config)))
    )
    # A compiled step's widest window must still be a strict slice of the cache and of `valid`: the whole tensor is
    # contiguous where a narrower slice is not, and that change of layout fails the compile's guards (a recompile,
    # inside a graph capture an error). One spare slot, never in any window, keeps every window a strict slice.
    cache_len = max_len + 1 if compile_step and windowed else max_len
    device = input_ids.device
    dtype = model.get_input_embeddings().weight.dtype
    cache = _new_static_cache(model.config, cache_len)
    valid = torch.ones(batch, cache_len, dtype=torch.bool, device=device)
    valid[:, :prompt_len] = attention_mask.bool()
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    # The prefill fills slots [0, prompt_len); kernels that read only the slots their mask covers get a mask over
    # those alone (harness.generation.attention._masked_slots), not the empty rest of the cache.
    seen = valid[:, :prompt_len] if reads_masked_slots_only(model.config) else valid
    prefill_mask = _static_masks(model.config, seen, torch.arange(prompt_len, device=device), dtype)
    cache_kw = cache_keyword(model)
    logits = model(
        input_ids=input_ids,
        attention_mask=prefill_mask,
        position_ids=positions,
        **{cache_kw: cache},
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
    out[:, 0] = _pick(logits, temperature)
    if max_new_tokens == 1:
        return out[:real]

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
            input_ids=tok, attention_mask=mask, position_ids=pos, **{cache_kw: cache}, use_cache=True
        ).logits[:, -1]
        nxt = _pick(logits, temperature)
        out.index_copy_(1, step_idx, nxt[:, None])
        tok.copy_(nxt[:, None])
        pos.add_(1)
        step_idx.add_(1)

    fn = step
    if compile_step:
        # By default dynamo does not guard on module hooks: code compiled without the intervention's
        # hooks would be silently reused with them (or the reverse). Guard on them. With windows the slot width
        # (marked in `args`) is the one symbolic size: no other shape turns dynamic on a recompile.
        guard_hooks = torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, automatic_dynamic_shapes=False)
        fn = guard_hooks(torch.compile(step, dynamic=None if windowed else False))
    n_steps = max_new_tokens - 1
    eos_t = torch.tensor(list(eos) or [-1], device=device)
    check_every = 32

    def args(k: int) -> tuple:
        """The step's arguments at loop step `k`, whose query sits in cache slot `prompt_len + k`."""
        seen = valid[:, : _slot_width(prompt_len + k, max_len, windowed)]
        if compile_step and windowed:
            torch._dynamo.maybe_mark_dynamic(seen, 1)
        return state["tok"], state["pos"], state["step"], seen, out, cache

    if device.type != "cuda" or _spans_devices(model):
        # A CUDA graph is captured on one device's stream: a model dispatched over several GPUs
        # (device_map="auto") runs the same step eagerly.
        for k in range(n_steps):
            fn(*args(k))
            if (k + 1) % check_every == 0 and _all_finished(out[:real, : k + 2], eos_t):
                break
        return out[:real]

    def reset():
        for name, value in start.items():
            state[name].copy_(value)
        for layer in cache.layers:
            layer.cumulative_length.fill_(prompt_len)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for k in _warm_steps(prompt_len, max_len, n_steps, compile_step, windowed):
            fn(*args(k))
            reset()
    torch.cuda.current_stream().wait_stream(side)
    # One graph per slot width, each captured when decoding first reaches it (a capture runs nothing), all in one
    # memory pool: they replay one at a time and keep nothing of theirs alive between steps.
    pool = torch.cuda.graph_pool_handle()
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    for k in range(n_steps):
        width = _slot_width(prompt_len + k, max_len, windowed)
        if width not in graphs:
            graphs[width] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[width], pool=pool):
                fn(*args(k))
        graphs[width].replay()
        if (k + 1) % check_every == 0 and _all_finished(out[:real, : k + 2], eos_t):
            break
    return out[:real]


def _warm_steps(prompt_len: int, max_len: int, n_steps: int, compile_step: bool, windowed: bool) -> list[int]:
    """Loop steps run (and undone) before any graph capture: the first step two or, compiled, three times; a windowed
    compiled step also the first step of every wider window, so that should a window's layout ever fail the
    compile's guards, the recompile happens there and not inside that window's capture, where it is an error."""
    warm = [0] * (3 if compile_step else 2)
    if compile_step and windowed:
        firsts: dict[int, int] = {}
        for k in range(n_steps):
            firsts.setdefault(_slot_width(prompt_len + k, max_len, windowed), k)
        warm += sorted(firsts.values())[1:]
    return warm


def _spans_devices(model: Any) -> bool:
    return len({p.device for p in model.parameters()}) > 1


def _all_finished(out: torch.Tensor, eos: torch.Tensor) -> bool:
    return bool(torch.isin(out, eos).any(-1).all())
