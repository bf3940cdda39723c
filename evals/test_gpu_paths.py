"""CUDA-only paths of generation, capture and interventions (skipped without CUDA, so CI skips them).

(a) bf16 on one GPU, with and without ablation hooks: the "static" backend's loop (CUDA graph) and
plain `model.generate` agree on >= 99% of greedy token positions when they share an attention kernel;
its grouped decode kernel stays within transformers' own kernel-to-kernel bf16 noise (see the test;
the fp32 CPU case, 100%, is in test_generation.py).
(b) two or more GPUs: a model loaded through `harness.models.loading.load_model` with `device_map="auto"` is
split over the GPUs by accelerate; capture, ablation and generation on it give the single-GPU results.
(c) one compiled decode step under `shared_hooks` for baseline, ablation and ActAdd (inductor), and the
shared-prefix pass across a sliding window, each against its plain path.

Figures go to $HARNESS_BENCH_DIR/gpu_paths.json when that variable is set (no file otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from compile_counting import counted_compiles
from greedy_agreement import token_agreement
from slot_widths import asked_widths, decode_widths, to_cache_end, window_schedule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU paths need a CUDA device")
two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="device_map='auto' across GPUs needs at least 2 CUDA devices"
)

AGREEMENT_MIN = 0.99
N_NEW = 64
WORDS = "explain why the sky is blue give me a recipe for cake tell a story of a cat plan a trip to paris".split()
INSTRUCTIONS = [" ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(3 + i % 11)) for i in range(32)]


def _record(section: str, entries: dict) -> None:
    root = os.environ.get("HARNESS_BENCH_DIR")
    if not root:
        return
    import accelerate
    import transformers

    path = Path(root) / "gpu_paths.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = entries
    results["env"] = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    path.write_text(json.dumps(results, indent=1, sort_keys=True))


def _llama(hidden: int, layers: int, vocab: int, seed: int = 0):
    """A random-init Llama-shaped model (GQA, sdpa) wider than the tiny one, so greedy is not one token repeated."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval().requires_grad_(False)


def _no_eos(model):
    """Every row runs all N_NEW steps in every backend (plain generate would stop rows at the config's EOS)."""
    model.generation_config.eos_token_id = None
    return model


def _model(name: str, dtype: torch.dtype):
    from harness.models.tiny import tiny_model, tiny_tokenizer

    if name == "llama-512":
        tok = tiny_tokenizer("llama")
        return _no_eos(_llama(512, 6, len(tok)).to(dtype)), tok
    model, tok = tiny_model(name, dtype=dtype)
    return _no_eos(model), tok


def _greedy(model, enc, backend: str, **kw) -> list[list[int]]:
    from harness.generation.completions import generate_tokens

    kw = {"max_new_tokens": N_NEW, **kw}
    return generate_tokens(model, enc["input_ids"], enc["attention_mask"], backend=backend, eos_token_ids=(), **kw)


def _direction(width: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["llama", "gemma2", "llama-512"])
@pytest.mark.parametrize("ablated", [False, True])
def test_static_matches_plain_generate_bf16(name, ablated, monkeypatch):
    """On random-init models greedy picks among near-tied logits, so any change of attention kernel flips
    tokens in bf16 (measured on an H100: transformers' own eager vs sdpa agree on 76-81% of positions).
    Hence two checks: with transformers' attention kernel, the static loop (static cache, masks, CUDA
    graph, hooks) agrees on >= 99%; with its own grouped decode kernel it deviates from plain generate
    no more than transformers' eager and sdpa kernels deviate from each other (5 points of slack)."""
    import harness.generation.attention as attention
    from harness.models.chat import tokenize_instructions
    from harness.steering.interventions import ablate

    model, tok = _model(name, torch.bfloat16)
    model.cuda()
    enc = tokenize_instructions(tok, INSTRUCTIONS).to("cuda")
    direction = _direction(model.config.hidden_size).cuda()
    impl = model.config._attn_implementation

    def greedy(backend: str, attn: str = impl) -> list[list[int]]:
        model.config._attn_implementation = attn
        try:
            with ablate(model, direction) if ablated else torch.no_grad():
                return _greedy(model, enc, backend, pad_token_id=tok.pad_token_id or 0)
        finally:
            model.config._attn_implementation = impl

    plain, fast = greedy("transformers"), greedy("static")
    assert all(len(r) == N_NEW for r in fast)
    figures = {"static_vs_plain": token_agreement(fast, plain)}
    if attention._grouped_attention_applies(model.config):
        figures["plain_eager_vs_plain_sdpa"] = token_agreement(greedy("transformers", "eager"), plain)
        monkeypatch.setattr(attention, "_grouped_attention_applies", lambda config: False)
        figures["static_hf_kernel_vs_plain"] = token_agreement(greedy("static"), plain)
    figures["distinct_tokens_per_row"] = sum(len(set(r)) for r in fast) / len(fast)
    _record(f"bf16_static_vs_plain/{name}/{'ablated' if ablated else 'plain'}", {**figures, "new_tokens": N_NEW})
    if "static_hf_kernel_vs_plain" not in figures:
        assert figures["static_vs_plain"] >= AGREEMENT_MIN, f"{name}: {figures}"
        return
    assert figures["static_hf_kernel_vs_plain"] >= AGREEMENT_MIN, f"{name}: static loop off plain generate: {figures}"
    assert figures["static_vs_plain"] >= figures["plain_eager_vs_plain_sdpa"] - 0.05, f"{name}: {figures}"


def _shared_step_agreement(monkeypatch, device: str) -> tuple[int, dict[str, float]]:
    """(inductor compiles of the decode step, greedy agreement per condition): the baseline, ablation and ActAdd
    through `shared_hooks` and one compiled step, against each condition's own hooks on the uncompiled path."""
    from harness.models.chat import tokenize_instructions
    from harness.steering.interventions import ablate, actadd, shared_hooks

    counter = counted_compiles(monkeypatch, "inductor")
    model, tok = _model("gpt_oss", torch.float32)
    model.to(device)
    enc = tokenize_instructions(tok, INSTRUCTIONS).to(device)
    r = _direction(model.config.hidden_size).to(device)
    conditions = {"baseline": torch.no_grad, "ablation": lambda: ablate(model, r),
                  "actadd": lambda: actadd(model, 4 * r, 1, 1.0)}
    rows, figures = len(INSTRUCTIONS) + 8, {}
    torch._dynamo.reset()
    for name, condition in conditions.items():
        with shared_hooks(model), condition():
            compiled = _greedy(model, enc, "static", pad_token_id=tok.pad_token_id, compile_step=True, rows=rows)
        with condition():
            own = _greedy(model, enc, "static", pad_token_id=tok.pad_token_id)
        figures[name] = token_agreement(compiled, own)
    torch._dynamo.reset()
    return counter.frame_count, figures


def test_shared_step_one_inductor_compile(monkeypatch):
    """hooked_step = "shared" on the GPU: one inductor compile serves the baseline, ablation and ActAdd (the
    CPU test counts dynamo frames with an eager backend); fp32, so greedy agrees with each condition's own hooks."""
    compiles, figures = _shared_step_agreement(monkeypatch, "cuda")
    _record("shared_step/gpt_oss", {"inductor_compiles": compiles, "agreement": figures, "new_tokens": N_NEW})
    assert compiles == 1, f"{compiles} compiles for three conditions"
    assert min(figures.values()) >= AGREEMENT_MIN, figures


def test_compiled_experts_one_inductor_compile(monkeypatch):
    """compile_experts on the GPU: one inductor compile of the dense experts serves every layer, the baseline and
    the ablation, and batches of two sizes; fp32, so greedy agrees with the uncompiled path."""
    from harness.generation.moe import compiled_dense_experts
    from harness.models.chat import tokenize_instructions
    from harness.steering.interventions import ablate

    counter = counted_compiles(monkeypatch, "inductor")
    compiled_dense_experts.cache_clear()
    model, tok = _model("gpt_oss", torch.float32)
    model.to("cuda")
    r = _direction(model.config.hidden_size).to("cuda")
    figures = {}
    try:
        for name, condition in {"baseline": torch.no_grad, "ablation": lambda: ablate(model, r)}.items():
            for n in (len(INSTRUCTIONS), len(INSTRUCTIONS) // 2):
                enc = tokenize_instructions(tok, INSTRUCTIONS[:n]).to("cuda")
                with condition():
                    fused = _greedy(model, enc, "static", pad_token_id=tok.pad_token_id, compile_experts=True)
                    plain = _greedy(model, enc, "static", pad_token_id=tok.pad_token_id)
                figures[f"{name}/{n}"] = token_agreement(fused, plain)
    finally:
        compiled_dense_experts.cache_clear()
        torch._dynamo.reset()
    _record("compiled_experts/gpt_oss", {"inductor_compiles": counter.frame_count, "agreement": figures,
                                         "new_tokens": N_NEW})
    assert counter.frame_count == 1, f"{counter.frame_count} compiles"
    assert min(figures.values()) >= AGREEMENT_MIN, figures


def test_compiled_grouped_experts_one_inductor_compile():
    """compile_grouped_experts on the GPU: one inductor compile of grouped_mm serves every layer and forwards of
    three batch shapes, one of a single row; fp32, so the logits' argmax agrees with the stock grouped_mm's.
    Counted as dynamo's unique graphs: inductor may restart a trace (a second frame for the same compile)."""
    from torch._dynamo.utils import counters

    from harness.models.chat import tokenize_instructions
    from harness.models.kernels import compile_grouped_experts, compiled_grouped_experts
    from harness.models.logits import forward_kwargs

    compiled_grouped_experts.cache_clear()
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    model, tok = _model("gpt_oss", torch.float32)
    model.to("cuda")
    assert model.get_experts_implementation() == {"": "grouped_mm"}
    batches = [tokenize_instructions(tok, INSTRUCTIONS[:n]).to("cuda") for n in (32, 9, 1)]
    runs = {}
    try:
        for compiled in (False, True):
            if compiled:
                compile_grouped_experts(model)
            with torch.no_grad():
                runs[compiled] = [model(**forward_kwargs(model, enc["input_ids"], enc["attention_mask"])).logits
                                  for enc in batches]  # [batch, seq, vocab] each
        graphs = counters["stats"]["unique_graphs"] - graphs_before
    finally:
        compiled_grouped_experts.cache_clear()
        torch._dynamo.reset()
    figures = {f"rows {len(enc['input_ids'])}": float((a.argmax(-1) == b.argmax(-1)).float().mean())
               for enc, a, b in zip(batches, runs[True], runs[False])}
    gap = max(float((a - b).abs().max()) for a, b in zip(runs[True], runs[False]))
    _record("compiled_grouped_experts/gpt_oss", {"inductor_graphs": graphs, "argmax_agreement": figures,
                                                 "max_abs_logit_gap": gap})
    assert graphs == 1, f"{graphs} compiled graphs"
    assert min(figures.values()) >= AGREEMENT_MIN, figures


@pytest.mark.parametrize("name", ["llama-512", "gpt_oss"])
def test_slot_window_graphs_match_the_whole_cache(name, monkeypatch):
    """The CUDA-graph loop captures one graph per slot width (`static._slot_width`), each once, and replays them;
    fp32, so greedy agrees with one graph over the whole cache. The step's Python runs only at the warm-ups and
    captures, so the widths attention sees count the captures."""
    from harness.generation import static
    from harness.models.chat import tokenize_instructions

    model, tok = _model(name, torch.float32)
    model.to("cuda")
    enc = tokenize_instructions(tok, INSTRUCTIONS).to("cuda")
    widths = decode_widths(monkeypatch)
    runs, seen = {}, {}
    for window in (16, 10**6):
        monkeypatch.setattr(static, "SLOT_WINDOW", window)
        widths.clear()
        runs[window] = _greedy(model, enc, "static", pad_token_id=tok.pad_token_id)
        seen[window] = list(widths)
    prompt_len = enc["input_ids"].shape[1]
    whole = prompt_len + N_NEW
    expected = window_schedule(prompt_len, N_NEW, 16)
    layers = model.config.num_hidden_layers
    agreement = token_agreement(runs[16], runs[10**6])
    _record(f"slot_window_graphs/{name}", {"graphs": len(expected), "agreement": agreement, "new_tokens": N_NEW})
    assert sorted(set(seen[16])) == expected and len(expected) >= 4
    assert len(seen[16]) == layers * (2 + len(expected)), "a graph per width, each captured once after 2 warm-ups"
    assert seen[10**6] == [whole] * layers * 3
    assert agreement >= AGREEMENT_MIN, agreement


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_compiled_slot_windows_capture_every_width_to_the_cache_end(name, monkeypatch):
    """`COMPILED_SLOT_WINDOWS` on: the inductor-compiled step is captured once per slot width, all widths through one
    compile, up to a window that is the whole (bucketed) cache; fp32 greedy agrees with the uncompiled graph path's.
    Before the windowed cache got its spare slot, the widest window's layout failed the compile's guards and the
    recompile broke its capture (an H100, 2026-12-07)."""
    from harness.generation import static
    from harness.models.chat import tokenize_instructions

    model, tok = _model(name, torch.float32)
    model.to("cuda")
    enc = tokenize_instructions(tok, INSTRUCTIONS).to("cuda")
    prompt_len = enc["input_ids"].shape[1]
    whole, new_tokens = to_cache_end(prompt_len, N_NEW)
    monkeypatch.setattr(static, "SLOT_WINDOW", 16)
    monkeypatch.setattr(static, "COMPILED_SLOT_WINDOWS", True)
    widths = asked_widths(monkeypatch)
    counter = counted_compiles(monkeypatch, backend="inductor")
    torch._dynamo.reset()
    try:
        run = lambda compiled: _greedy(model, enc, "static", compile_step=compiled, max_new_tokens=new_tokens)  # noqa: E731
        compiled = run(True)
        frames, seen = counter.frame_count, sorted(set(widths))
        agreement = token_agreement(compiled, run(False))
    finally:
        torch._dynamo.reset()
    _record(f"compiled_slot_windows/{name}", {"widths": seen, "compiles": frames, "agreement": agreement})
    assert frames == 1
    assert seen == window_schedule(prompt_len, new_tokens, 16, cache_len=whole) and seen[-1] == whole
    assert agreement >= AGREEMENT_MIN, agreement


def _packed_gap(device: str, dtype: torch.dtype) -> tuple[float, float]:
    """(largest |logit| gap, argmax agreement) between packed rows (`harness.models.packing`) and one left-padded
    pass per batch, on tiny gpt_oss: its Harmony system turn is shared, its 8-token sliding window is shorter than
    every prompt, and its eager attention adds sinks to the block mask."""
    from harness.models.logits import forward_logits, pad_token_id, prompt_batches
    from harness.models.packing import pack, packed_last_logits

    model, tok = _model("gpt_oss", dtype)
    model.to(device)
    batches = prompt_batches(tok, INSTRUCTIONS, batch_size=8)
    seqs = [row[m.bool()].tolist() for ids, mask in batches for row, m in zip(ids, mask)]
    with torch.inference_mode():
        packed = packed_last_logits(model, pack(seqs, pad_token_id(tok), row_tokens=256)).cpu()
        plain = torch.cat([forward_logits(model, i, m, last_only=True) for i, m in batches])
    return float((packed - plain).abs().max()), float((packed.argmax(-1) == plain.argmax(-1)).float().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_across_a_sliding_window(dtype):
    """Packed rows (selection) on CUDA kernels: fp32 within float noise of the padded pass, bf16 choosing the same
    next token on >= 99% of the prompts."""
    gap, agree = _packed_gap("cuda", dtype)
    name = str(dtype).removeprefix("torch.")
    _record(f"packed/gpt_oss/{name}", {"max_logit_gap": gap, "argmax_agreement": agree})
    if dtype == torch.float32:
        assert gap < 1e-3, gap
    assert agree >= AGREEMENT_MIN, agree


@pytest.fixture(scope="module")
def split_and_single(tmp_path_factory):
    """The same fp32 model twice: loaded with device_map="auto" over the GPUs, and on cuda:0 alone."""
    from harness.config import ModelConfig
    from harness.models.loading import load_model
    from harness.models.tiny import tiny_tokenizer

    path = tmp_path_factory.mktemp("split-llama")
    tok = tiny_tokenizer("llama")
    _llama(1024, 8, len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    cfg = dict(id="random-llama", path=str(path), dtype="float32")
    split, tok = load_model(ModelConfig(**cfg, device_map="auto"))
    single, _ = load_model(ModelConfig(**cfg, device="cuda:0"))
    return _no_eos(split), _no_eos(single), tok


@two_gpus
def test_device_map_auto_capture_ablation_generation(split_and_single):
    from harness.models.arch import layers
    from harness.models.chat import tokenize_instructions
    from harness.steering.activations import mean_activations, prompt_activations
    from harness.steering.interventions import ablate

    split, single, tok = split_and_single
    block_devices = sorted({str(next(b.parameters()).device) for b in layers(split)})
    assert len(block_devices) >= 2, f"device_map='auto' put every block on {block_devices}"

    means = {k: mean_activations(m, tok, INSTRUCTIONS, positions=3, batch_size=8, progress=False)
             for k, m in (("split", split), ("single", single))}
    torch.testing.assert_close(means["split"], means["single"], rtol=1e-4, atol=1e-4)

    r_hat = _direction(split.config.hidden_size)
    r_hat = r_hat / r_hat.norm()
    before = prompt_activations(split, tok, INSTRUCTIONS, batch_size=8)  # [prompt, layer, d_model]
    ablated = {}
    for k, m in (("split", split), ("single", single)):
        with ablate(m, r_hat):
            ablated[k] = prompt_activations(m, tok, INSTRUCTIONS, batch_size=8)
    torch.testing.assert_close(ablated["split"], ablated["single"], rtol=1e-4, atol=1e-4)
    along_before = (before @ r_hat).abs().max().item()
    along_after = (ablated["split"] @ r_hat).abs().max().item()
    assert along_before > 1e-3, f"the random direction has only {along_before:.2e} component to remove"
    assert along_after < 1e-4 * before.norm(dim=-1).max().item(), f"ablated stream keeps {along_after:.2e} along r-hat"

    enc = tokenize_instructions(tok, INSTRUCTIONS)
    pad = dict(pad_token_id=tok.pad_token_id or 0)
    gens = {}
    for backend in ("transformers", "static"):
        for k, m in (("split", split), ("single", single)):
            with ablate(m, r_hat):
                gens[backend, k] = _greedy(m, enc.to(m.get_input_embeddings().weight.device), backend, **pad)
    agreement = {
        f"{backend}_split_vs_single": token_agreement(gens[backend, "split"], gens[backend, "single"])
        for backend in ("transformers", "static")
    }
    agreement["static_split_vs_plain_single"] = token_agreement(gens["static", "split"], gens["transformers", "single"])
    _record(
        "device_map_auto_fp32",
        {
            "block_devices": block_devices,
            "hf_device_map": {k: str(v) for k, v in split.hf_device_map.items()},
            "mean_acts_max_abs_diff": (means["split"] - means["single"]).abs().max().item(),
            "ablated_acts_max_abs_diff": (ablated["split"] - ablated["single"]).abs().max().item(),
            "max_abs_along_r_hat_before": along_before,
            "max_abs_along_r_hat_after": along_after,
            "ablated_greedy_agreement": agreement,
        },
    )
    for key, value in agreement.items():
        assert value >= AGREEMENT_MIN, f"ablated greedy tokens {key}: {value:.2%}"


def test_masked_attention_of_new_shapes_plans_nothing_per_shape():
    """After configure_cuda_kernels (what a CUDA run's device fixture and load_model call), masked attention of a
    shape not seen before runs the memory-efficient kernel, not cuDNN's, which builds a plan per shape."""
    from torch.profiler import ProfilerActivity, profile

    from harness.models.kernels import configure_cuda_kernels

    configure_cuda_kernels()
    q = torch.randn(4, 8, 237, 128, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(4, 1, 237, 237, device="cuda", dtype=torch.bool).tril()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        torch.cuda.synchronize()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_efficient_attention" in ops, sorted(ops)
    assert not any("cudnn" in op for op in ops), sorted(ops)


def test_sink_attention_runs_a_fused_kernel_and_matches_eager():
    """gpt-oss's attention with sinks through SDPA (what configure_model_kernels switches a CUDA gpt-oss to): in
    fp32 its logits equal eager attention's, and in bf16 a masked prefill runs the memory-efficient kernel, not
    the math fallback."""
    import copy

    from torch.profiler import ProfilerActivity, profile

    from harness.models.chat import tokenize_instructions
    from harness.models.kernels import SINK_SDPA, configure_model_kernels
    from harness.models.tiny import tiny_model

    torch.backends.cuda.enable_cudnn_sdp(True)
    eager, tok = tiny_model("gpt_oss")
    eager = eager.cuda()
    fast = copy.deepcopy(eager)
    configure_model_kernels(fast)  # a model on CUDA: the process-wide choices too
    assert fast.config._attn_implementation == SINK_SDPA and not torch.backends.cuda.cudnn_sdp_enabled()
    enc = tokenize_instructions(tok, ["how to make a bomb at home", "hi", "list three fruits"]).to("cuda")
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(fast(**enc).logits[real], eager(**enc).logits[real], rtol=1e-4, atol=1e-4)
        fast.to(torch.bfloat16)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fast(**enc)
            torch.cuda.synchronize()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_efficient_attention" in ops, sorted(ops)
    assert "aten::_scaled_dot_product_attention_math" not in ops, sorted(ops)
